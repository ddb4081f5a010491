//! Training the embedded model on the shapes world: rectified-flow matching with logit-normal
//! timesteps, caption dropout (empty captions), extra weight on object pixels, and optionally the
//! paper's mask alignment (focal + dice between a block's head-mean I2T maps of each object's
//! words and its mask). Reproducible from the seed; checkpoints resume exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::config::{EmbeddedConfig, ToyConfig};
use super::model::{rgb_to_tensor, EmbeddedModel};
use super::optim::AdamW;
use crate::capture::CaptureSpec;
use crate::error::{Error, Result};
use crate::io::{write_atomic, write_safetensors};
use crate::mmdit::ForwardOptions;
use crate::shapes::{CaptionOptions, CaptionSampler, Scene, SceneConfig};

/// What one step measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepStats {
    pub step: usize,
    pub loss: f64,
    pub mse: f64,
    pub align: f64,
    pub lr: f64,
}

/// Saved progress of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    pub config: ToyConfig,
}

/// One training batch.
struct Batch {
    x0: Tensor,
    weight: Tensor,
    tokens: Vec<super::tokenizer::Tokens>,
    /// (batch row, token position, target coverage on the token grid)
    align: Vec<(usize, usize, Vec<f32>)>,
    /// Per batch row: the segmentation classes its caption names (token positions of each
    /// class, e.g. the shape word and "background") and their coverage on the token grid.
    classes: Vec<Vec<(Vec<usize>, Vec<f32>)>>,
}

/// Deterministic seed for sample `i` of step `step`.
fn sample_seed(seed: u64, step: usize, i: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((step as u64) << 20) ^ i as u64
}

/// Coverage of a pixel mask on the `grid × grid` token grid (mean over each patch).
fn grid_coverage(mask: &[bool], size: usize, patch: usize) -> Vec<f32> {
    let g = size / patch;
    let mut out = vec![0f32; g * g];
    for y in 0..size {
        for x in 0..size {
            if mask[y * size + x] {
                out[(y / patch) * g + x / patch] += 1.0;
            }
        }
    }
    let area = (patch * patch) as f32;
    out.iter_mut().for_each(|v| *v /= area);
    out
}

/// The variables of a store, sorted by name (shared storage, not copies).
fn sorted_vars(vm: &VarMap) -> Result<Vec<(String, Var)>> {
    let d = vm
        .data()
        .lock()
        .map_err(|_| Error::Input("variable store poisoned".into()))?;
    let mut v: Vec<(String, Var)> = d.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// The variables the optimiser updates, named `transformer.…` / `text.…`.
fn trainable_vars(
    transformer: &VarMap,
    text: &VarMap,
    num_layers: usize,
) -> Result<Vec<(String, Var)>> {
    let mut out = vec![];
    for (prefix, vm) in [("transformer.", transformer), ("text.", text)] {
        for (n, var) in sorted_vars(vm)? {
            if prefix == "text." || !is_frozen(&n, num_layers) {
                out.push((format!("{prefix}{n}"), var));
            }
        }
    }
    Ok(out)
}

/// Re-initialises every variable from the seed (xavier-uniform linears, zero biases, zero
/// adaLN and output projections as in DiT, a fixed 2-D sin-cos position table).
fn init_vars(vm: &VarMap, seed: u64, embed_dim_for_pos: Option<usize>) -> Result<()> {
    for (k, (name, var)) in sorted_vars(vm)?.into_iter().enumerate() {
        let name = name.as_str();
        let shape = var.shape().dims().to_vec();
        let dev = var.device();
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (k as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let n: usize = shape.iter().product();
        let zero_init = name.ends_with("bias")
            || name.contains("norm1.linear")
            || name.contains("norm1_context.linear")
            || name.contains("norm_out.linear")
            || name.starts_with("proj_out");
        let values: Vec<f32> = if name == "pos_embed.pos_embed" {
            let d = embed_dim_for_pos.unwrap_or(shape[2]);
            sincos_2d(((shape[1] as f64).sqrt()) as usize, d)
        } else if zero_init {
            vec![0.0; n]
        } else if name.ends_with("ln1.weight")
            || name.ends_with("ln2.weight")
            || name.ends_with("final_norm.weight")
        {
            vec![1.0; n]
        } else if name.contains("embedding") {
            (0..n)
                .map(|_| 0.02 * rng.sample::<f32, _>(StandardNormal))
                .collect()
        } else {
            let fan_out = shape[0];
            let fan_in: usize = shape[1..].iter().product();
            let a = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
            (0..n).map(|_| rng.random_range(-a..a)).collect()
        };
        var.set(&Tensor::from_vec(values, shape, dev)?)?;
    }
    Ok(())
}

/// The 2-D sin-cos position table (`[1, m², d]`, row-major grid), as SD3 initialises it.
fn sincos_2d(m: usize, d: usize) -> Vec<f32> {
    let quarter = d / 4;
    let mut out = vec![0f32; m * m * d];
    for y in 0..m {
        for x in 0..m {
            let base = (y * m + x) * d;
            for (half, pos) in [(0, x as f64), (d / 2, y as f64)] {
                for i in 0..quarter {
                    let omega = 1.0 / 10000f64.powf(i as f64 / quarter as f64);
                    out[base + half + i] = (pos * omega).sin() as f32;
                    out[base + half + quarter + i] = (pos * omega).cos() as f32;
                }
            }
        }
    }
    out
}

/// Sets every variable of a store from safetensors bytes; a missing tensor or a wrong shape is
/// an error naming it.
fn set_vars(vm: &VarMap, bytes: &[u8], what: &str, device: &Device) -> Result<()> {
    let tensors = candle_core::safetensors::load_buffer(bytes, device)
        .map_err(|e| Error::Input(format!("initial {what} weights: {e}")))?;
    for (name, var) in sorted_vars(vm)? {
        let t = tensors.get(&name).ok_or_else(|| Error::MissingTensor {
            name: format!("{what}: {name}"),
        })?;
        if t.dims() != var.dims() {
            return Err(Error::WrongShape {
                name: format!("{what}: {name}"),
                expected: var.dims().to_vec(),
                got: t.dims().to_vec(),
            });
        }
        var.set(&t.to_dtype(DType::F32)?)?;
    }
    Ok(())
}

/// Variables that stay fixed: the position table (as in SD3), the pooled-text projection's
/// weight (its input is the constant zero pooled vector) and the last block's text queries (a
/// context-pre-only block discards its text outputs, so they never affect anything).
fn is_frozen(name: &str, num_layers: usize) -> bool {
    name == "pos_embed.pos_embed"
        || name == "time_text_embed.text_embedder.linear_1.weight"
        || name.starts_with(&format!(
            "transformer_blocks.{}.attn.add_q_proj.",
            num_layers - 1
        ))
}

/// A training run in progress.
pub struct Trainer {
    pub config: ToyConfig,
    transformer: VarMap,
    text: VarMap,
    model: EmbeddedModel,
    opt: AdamW,
    pub step: usize,
    sampler: CaptionSampler,
    device: Device,
}

impl Trainer {
    /// A fresh run. `config.train.init` may name a model folder to start from; an
    /// `embedded:` name must be resolved by the caller ([`Trainer::with_init_weights`]).
    pub fn new(config: ToyConfig, device: &Device) -> Result<Self> {
        let init = match config.train.init.as_deref() {
            None => None,
            Some(name) if name.starts_with("embedded:") => {
                return Err(Error::Config(format!(
                    "init {name:?}: an embedded model is only known to the application"
                )))
            }
            Some(dir) => {
                let dir = Path::new(dir);
                let read = |p: PathBuf| std::fs::read(&p).map_err(|e| Error::io(&p, e));
                Some((
                    read(dir.join("transformer/diffusion_pytorch_model.safetensors"))?,
                    read(dir.join("text_encoder.safetensors"))?,
                ))
            }
        };
        Self::build(config, device, init.as_ref().map(|(a, b)| (&a[..], &b[..])))
    }

    /// A fresh run starting from the given weights (safetensors bytes of the transformer and
    /// the text encoder, e.g. an embedded model's), fine-tuned with a fresh optimiser.
    pub fn with_init_weights(
        config: ToyConfig,
        device: &Device,
        transformer: &[u8],
        text: &[u8],
    ) -> Result<Self> {
        Self::build(config, device, Some((transformer, text)))
    }

    fn build(config: ToyConfig, device: &Device, init: Option<(&[u8], &[u8])>) -> Result<Self> {
        config.model.validate()?;
        let transformer = VarMap::new();
        let text = VarMap::new();
        let model = EmbeddedModel::from_varmaps(&config.model, &transformer, &text, device)?;
        init_vars(&transformer, config.train.seed, None)?;
        init_vars(&text, config.train.seed ^ 0x7e57, None)?;
        if let Some((tw, xw)) = init {
            set_vars(&transformer, tw, "transformer", device)?;
            set_vars(&text, xw, "text encoder", device)?;
        }
        let vars = trainable_vars(&transformer, &text, config.model.transformer.num_layers)?;
        let opt = AdamW::new(vars, config.train.weight_decay)?;
        let [sentence, class_list, colour_shape, empty] = config.train.caption_weights;
        let sampler = CaptionSampler {
            sentence,
            class_list,
            colour_shape,
            empty,
            options: CaptionOptions {
                shuffle_objects: false,
                word_dropout: 0.0,
            },
        };
        Ok(Self {
            config,
            transformer,
            text,
            model,
            opt,
            step: 0,
            sampler,
            device: device.clone(),
        })
    }

    /// Resumes from a run folder written by [`Trainer::save`].
    pub fn resume(dir: &Path, device: &Device) -> Result<Self> {
        let p = dir.join("train_state.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let state: TrainState = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
        let mut t = Self::build(state.config, device, None)?;
        let load = |vm: &mut VarMap, file: PathBuf| -> Result<()> {
            vm.load(&file)
                .map_err(|e| Error::Input(format!("{}: {e}", file.display())))
        };
        load(
            &mut t.transformer,
            dir.join("transformer/diffusion_pytorch_model.safetensors"),
        )?;
        load(&mut t.text, dir.join("text_encoder.safetensors"))?;
        let opt_state = crate::io::read_safetensors(&dir.join("optimizer.safetensors"), device)?;
        t.opt.load_state(&opt_state, state.step)?;
        t.step = state.step;
        Ok(t)
    }

    /// The model as trained so far (shares the variables).
    pub fn model(&self) -> &EmbeddedModel {
        &self.model
    }

    fn batch(&self, step: usize) -> Result<Batch> {
        let cfg = &self.config;
        let size = cfg.model.image_size;
        let patch = cfg.model.transformer.patch_size;
        let scene_cfg = SceneConfig::with_size(size);
        let (mut xs, mut ws, mut tokens, mut align, mut classes) =
            (vec![], vec![], vec![], vec![], vec![]);
        for i in 0..cfg.train.batch {
            let seed = sample_seed(cfg.train.seed, step, i);
            let scene =
                Scene::generate(&scene_cfg, seed).map_err(|e| Error::Input(e.to_string()))?;
            let mut rng = scene.caption_rng();
            let mut sampler = self.sampler.clone();
            sampler.options = CaptionOptions {
                shuffle_objects: rng.random_bool(cfg.train.shuffle_prob),
                word_dropout: cfg.train.word_dropout,
            };
            let caption = sampler.sample(&scene, &mut rng);
            let tok = self.model.tokenize(&caption.text)?;
            xs.push(rgb_to_tensor(&scene.rgb, size, &self.device)?);
            let w: Vec<f32> = scene
                .labels
                .iter()
                .map(|&c| {
                    if c > 0 {
                        1.0 + cfg.train.object_weight as f32
                    } else {
                        1.0
                    }
                })
                .collect();
            ws.push(Tensor::from_vec(w, (1, size, size), &self.device)?);
            // Alignment targets: each naming word → union of the masks of the objects it names.
            let mut targets: HashMap<usize, Vec<bool>> = HashMap::new();
            for co in &caption.objects {
                let mask = &scene.objects[co.object].mask;
                for &w in &co.words {
                    let t = targets
                        .entry(w + 1)
                        .or_insert_with(|| vec![false; size * size]);
                    t.iter_mut().zip(mask).for_each(|(a, b)| *a |= *b);
                }
            }
            let bg: Vec<bool> = scene.labels.iter().map(|&c| c == 0).collect();
            for &w in &caption.background_words {
                targets.insert(w + 1, bg.clone());
            }
            let mut keys: Vec<usize> = targets.keys().copied().collect();
            keys.sort();
            for pos in keys {
                align.push((i, pos, grid_coverage(&targets[&pos], size, patch)));
            }
            // Segmentation classes as a class prompt would name them: each shape word, and the
            // word "background".
            let mut groups: Vec<(Vec<usize>, Vec<f32>)> = vec![];
            for shape in crate::shapes::Shape::ALL {
                let pos: Vec<usize> = caption
                    .words
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| **w == shape.name())
                    .map(|(k, _)| k + 1)
                    .collect();
                let mask: Vec<bool> = scene.labels.iter().map(|&c| c == shape.class()).collect();
                if !pos.is_empty() && mask.iter().any(|&m| m) {
                    groups.push((pos, grid_coverage(&mask, size, patch)));
                }
            }
            let bg_pos: Vec<usize> = caption
                .words
                .iter()
                .enumerate()
                .filter(|(_, w)| **w == "background")
                .map(|(k, _)| k + 1)
                .collect();
            if !bg_pos.is_empty() {
                groups.push((bg_pos, grid_coverage(&bg, size, patch)));
            }
            classes.push(if groups.len() >= 2 { groups } else { vec![] });
            tokens.push(tok);
        }
        Ok(Batch {
            x0: Tensor::stack(&xs, 0)?,
            weight: Tensor::stack(&ws, 0)?,
            tokens,
            align,
            classes,
        })
    }

    /// Focal (α 0.25, γ 2) + dice between maps `p` and soft targets `y`, both `[P, N]` in [0, 1].
    fn focal_dice(p: &Tensor, y: &Tensor) -> Result<Tensor> {
        let p = p.clamp(1e-6f32, 1.0 - 1e-6)?;
        let one_minus_p = (1.0 - &p)?;
        let pos = ((y * one_minus_p.sqr()?)? * p.log()?)?;
        let neg = (((1.0 - y)? * p.sqr()?)? * one_minus_p.log()?)?;
        let focal = ((pos * -0.25)? - (neg * 0.75)?)?.mean_all()?;
        let inter = (&p * y)?.sum(D::Minus1)?;
        let denom = (p.sum(D::Minus1)? + y.sum(D::Minus1)?)?;
        let dice = (1.0 - (((inter * 2.0)? + 1.0)? / (denom + 1.0)?)?)?.mean_all()?;
        Ok((focal + dice)?)
    }

    /// One optimisation step.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let (loss, mut stats) = self.loss()?;
        let grads = loss.backward()?;
        self.opt.step(&grads, stats.lr)?;
        self.step += 1;
        stats.step = self.step;
        Ok(stats)
    }

    /// The loss of the current step's batch (a graph ready for `backward`) and its parts.
    pub fn loss(&self) -> Result<(Tensor, StepStats)> {
        let step = self.step;
        let tc = self.config.train.clone();
        let b = self.batch(step)?;
        let bsz = tc.batch;
        let dev = self.device.clone();
        let noise_seed = sample_seed(tc.seed ^ 0xA5A5, step, 0);
        let size = self.config.model.image_size;
        let eps = super::model::seeded_randn(&[bsz, 3, size, size], noise_seed, &dev)?;
        let u = super::model::seeded_randn(&[bsz], noise_seed ^ 1, &dev)?;
        let sigma = candle_nn::ops::sigmoid(&u)?;
        let s4 = sigma.reshape((bsz, 1, 1, 1))?;
        let xt = (s4.broadcast_mul(&eps)? + (1.0 - &s4)?.broadcast_mul(&b.x0)?)?;
        let target = (&eps - &b.x0)?;
        let toks: Vec<&super::tokenizer::Tokens> = b.tokens.iter().collect();
        let (ctx, pooled) = self.model.encode(&toks)?;
        // Alignment only where the image is still visible through the noise.
        let sigmas: Vec<f32> = sigma.to_vec1()?;
        let visible = |bi: usize| sigmas[bi] as f64 <= tc.mask_align_max_sigma;
        let b = Batch {
            align: b
                .align
                .into_iter()
                .filter(|(bi, _, _)| visible(*bi))
                .collect(),
            classes: b
                .classes
                .into_iter()
                .enumerate()
                .map(|(bi, g)| if visible(bi) { g } else { vec![] })
                .collect(),
            ..b
        };
        let align_layer = tc.mask_align_layer.filter(|_| {
            tc.mask_align_weight > 0.0 && step >= tc.mask_align_start && !b.align.is_empty()
        });
        let opts = ForwardOptions {
            capture: CaptureSpec {
                i2t: align_layer.is_some(),
                layers: align_layer.map(|l| vec![l]),
                ..CaptureSpec::default()
            },
            differentiable: true,
            ..Default::default()
        };
        let t = (&sigma * 1000.0)?;
        let out = self.model.mmdit.forward(&xt, &t, &ctx, &pooled, &opts)?;
        let diff = (out.sample - target)?.sqr()?;
        let w = b.weight.unsqueeze(1)?;
        let mse = (diff.broadcast_mul(&w)?.mean_all()? / w.mean_all()?.to_scalar::<f32>()? as f64)?;
        let mut loss = mse.clone();
        let mut align_v = 0.0;
        if let Some(l) = align_layer {
            let i2t = out.blocks[l]
                .attn
                .i2t
                .as_ref()
                .ok_or_else(|| Error::Input("no i2t captured".into()))?;
            // [B,H,N,L] → head mean → [B,L,N] → rows (b, token).
            let (_, _, n, lt) = i2t.dims4()?;
            let maps = i2t
                .mean(1)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((bsz * lt, n))?;
            let idx: Vec<u32> = b
                .align
                .iter()
                .map(|(bi, pos, _)| (bi * lt + pos) as u32)
                .collect();
            let rows = maps.index_select(&Tensor::new(idx, &dev)?, 0)?;
            let max = rows.max_keepdim(D::Minus1)?;
            let p = rows.broadcast_div(&(max + 1e-12)?)?;
            let y: Vec<f32> = b
                .align
                .iter()
                .flat_map(|(_, _, t)| t.iter().copied())
                .collect();
            let y = Tensor::from_vec(y, (b.align.len(), n), &dev)?;
            let mut a = Self::focal_dice(&p, &y)?;
            // Calibration across classes, as the argmax of segmentation needs: per-pixel
            // cross-entropy of the class maps (mean over each class's tokens), normalised over
            // the classes the caption names, against their coverage.
            let per_sample = maps.reshape((bsz, lt, n))?;
            let mut ce_terms = vec![];
            for (bi, groups) in b.classes.iter().enumerate() {
                if groups.is_empty() {
                    continue;
                }
                let mut agg = vec![0f32; lt * groups.len()];
                let mut cover = vec![0f32; n * groups.len()];
                for (c, (pos, cov)) in groups.iter().enumerate() {
                    for &p in pos {
                        agg[p * groups.len() + c] = 1.0 / pos.len() as f32;
                    }
                    for (k, v) in cov.iter().enumerate() {
                        cover[k * groups.len() + c] = *v;
                    }
                }
                let agg = Tensor::from_vec(agg, (lt, groups.len()), &dev)?;
                let y = Tensor::from_vec(cover, (n, groups.len()), &dev)?;
                let m = per_sample.get(bi)?.t()?.matmul(&agg)?; // [N, C]
                let logm = (m + 1e-12)?.log()?;
                let logz = logm.exp()?.sum_keepdim(D::Minus1)?.log()?;
                let logq = logm.broadcast_sub(&logz)?;
                let w = y.sum(D::Minus1)?.sum_all()?.to_scalar::<f32>()?.max(1e-6) as f64;
                ce_terms.push(((y * logq)?.sum_all()? * (-1.0 / w))?);
            }
            if !ce_terms.is_empty() {
                let count = ce_terms.len() as f64;
                let ce = (Tensor::stack(&ce_terms, 0)?.sum_all()? / count)?;
                a = (a + ce)?;
            }
            align_v = a.to_scalar::<f32>()? as f64;
            loss = (loss + (a * tc.mask_align_weight)?)?;
        }
        let stats = StepStats {
            step,
            loss: loss.to_scalar::<f32>()? as f64,
            mse: mse.to_scalar::<f32>()? as f64,
            align: align_v,
            lr: tc.lr_at(step),
        };
        Ok((loss, stats))
    }

    /// Writes the model (loadable by [`EmbeddedModel::load_dir`]) and the optimiser state.
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_model(
            &self.config.model,
            &self.transformer,
            &self.text,
            dir,
            DType::F32,
        )?;
        write_safetensors(&dir.join("optimizer.safetensors"), &self.opt.state())?;
        let state = TrainState {
            step: self.step,
            config: self.config.clone(),
        };
        write_atomic(
            &dir.join("train_state.json"),
            serde_json::to_string_pretty(&state)
                .map_err(|e| Error::Input(e.to_string()))?
                .as_bytes(),
        )
    }

    /// All trainable variables (for gradient checks).
    pub fn trainable(&self) -> Result<Vec<(String, Var)>> {
        trainable_vars(
            &self.transformer,
            &self.text,
            self.config.model.transformer.num_layers,
        )
    }
}

/// Saves a model folder: `model.json`, `transformer/{config.json, diffusion_pytorch_model.safetensors}`,
/// `text_encoder.safetensors`, with weights in `dtype`.
pub fn save_model(
    cfg: &EmbeddedConfig,
    transformer: &VarMap,
    text: &VarMap,
    dir: &Path,
    dtype: DType,
) -> Result<()> {
    let dump = |vm: &VarMap| -> Result<Vec<(String, Tensor)>> {
        sorted_vars(vm)?
            .into_iter()
            .map(|(k, var)| Ok((k, var.as_tensor().to_dtype(dtype)?)))
            .collect()
    };
    let tdir = dir.join("transformer");
    write_safetensors(
        &tdir.join("diffusion_pytorch_model.safetensors"),
        &dump(transformer)?,
    )?;
    let mut tcfg =
        serde_json::to_value(&cfg.transformer).map_err(|e| Error::Input(e.to_string()))?;
    tcfg["_class_name"] = "SD3Transformer2DModel".into();
    write_atomic(
        &tdir.join("config.json"),
        serde_json::to_string_pretty(&tcfg)
            .map_err(|e| Error::Input(e.to_string()))?
            .as_bytes(),
    )?;
    write_safetensors(&dir.join("text_encoder.safetensors"), &dump(text)?)?;
    write_atomic(
        &dir.join("model.json"),
        serde_json::to_string_pretty(cfg)
            .map_err(|e| Error::Input(e.to_string()))?
            .as_bytes(),
    )
}
