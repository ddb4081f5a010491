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

use super::config::{EmbeddedConfig, ToyConfig, TrainConfig};
use super::cpu_train::{CpuEngine, FlatAdamW, Params, SampleIn};
use super::model::{seeded_randn_vec, EmbeddedModel};
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

/// One training batch, with its noise: plain values, shared by both engines.
struct Batch {
    /// `[B, 3, S, S]` clean images in [-1, 1].
    x0: Vec<f32>,
    /// `[B, S, S]` per-pixel loss weight.
    weight: Vec<f32>,
    /// `[B, 3, S, S]` noise and `[B]` noise levels.
    eps: Vec<f32>,
    sigma: Vec<f32>,
    tokens: Vec<super::tokenizer::Tokens>,
    /// (batch row, token position, target coverage on the token grid)
    align: Vec<(usize, usize, Vec<f32>)>,
    /// Per batch row: the segmentation classes its caption names (token positions of each
    /// class, e.g. the shape word and "background") and their coverage on the token grid.
    classes: Vec<Vec<(Vec<usize>, Vec<f32>)>>,
}

/// Which implementation computes the gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// candle's autograd through the model's own modules (any device).
    Candle,
    /// The hand-written CPU engine ([`super::cpu_train`]): the same numbers, several times faster.
    Cpu,
}

/// The optimiser state of the engine in use.
enum Engine {
    Candle(AdamW),
    Cpu {
        engine: Box<CpuEngine>,
        opt: FlatAdamW,
    },
}

/// Deterministic seed for sample `i` of step `step`.
fn sample_seed(seed: u64, step: usize, i: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((step as u64) << 20) ^ i as u64
}

/// The world's scene settings for one training sample: at least two objects for a
/// `multi_object_share` of the samples (drawn from the sample's seed), area-matched sizes
/// when `area_matched`, else unchanged.
fn scene_config(base: &SceneConfig, train: &TrainConfig, seed: u64) -> SceneConfig {
    let mut c = base.clone();
    c.area_matched = train.area_matched;
    if train.multi_object_share > 0.0 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6D75_6C74_6921);
        if rng.random_bool(train.multi_object_share.clamp(0.0, 1.0)) {
            c.min_objects = c.max_objects.min(2);
        }
    }
    c
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
    engine: Engine,
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
        config.train.validate()?;
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
                absent_classes: 0.0,
            },
        };
        let mut t = Self {
            config,
            transformer,
            text,
            model,
            engine: Engine::Candle(opt),
            step: 0,
            sampler,
            device: device.clone(),
        };
        if device.is_cpu() {
            t.set_engine(EngineKind::Cpu)?;
        }
        Ok(t)
    }

    /// Resumes from a run folder written by [`Trainer::save`].
    pub fn resume(dir: &Path, device: &Device) -> Result<Self> {
        let p = dir.join("train_state.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let state: TrainState = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
        let mut t = Self::build(state.config, device, None)?;
        let kind = t.engine_kind();
        t.set_engine(EngineKind::Candle)?;
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
        if let Engine::Candle(opt) = &mut t.engine {
            opt.load_state(&opt_state, state.step)?;
        }
        t.step = state.step;
        t.set_engine(kind)?;
        Ok(t)
    }

    /// The engine computing gradients.
    pub fn engine_kind(&self) -> EngineKind {
        match self.engine {
            Engine::Candle(_) => EngineKind::Candle,
            Engine::Cpu { .. } => EngineKind::Cpu,
        }
    }

    /// Switches the engine, carrying the weights and the optimiser's moments over. The CPU
    /// engine needs the CPU and a model without qk-norm or `attn2` (the embedded model's).
    pub fn set_engine(&mut self, kind: EngineKind) -> Result<()> {
        if kind == self.engine_kind() {
            return Ok(());
        }
        let state = self.optimizer_state()?;
        let step = match &self.engine {
            Engine::Candle(o) => o.step,
            Engine::Cpu { opt, .. } => opt.step,
        };
        match kind {
            EngineKind::Candle => {
                let vars = self.trainable()?;
                let mut opt = AdamW::new(vars, self.config.train.weight_decay)?;
                let state: HashMap<String, Tensor> = state.into_iter().collect();
                opt.load_state(&state, step)?;
                self.engine = Engine::Candle(opt);
            }
            EngineKind::Cpu => {
                if !self.device.is_cpu() {
                    return Err(Error::Config(
                        "the CPU training engine runs on the CPU only".into(),
                    ));
                }
                let layers = self.config.model.transformer.num_layers;
                let params = Params::from_varmaps(
                    &[("transformer.", &self.transformer), ("text.", &self.text)],
                    |name| {
                        name.strip_prefix("transformer.")
                            .is_none_or(|n| !is_frozen(n, layers))
                    },
                )?;
                let engine = Box::new(CpuEngine::new(params, &self.config.model)?);
                let mut opt =
                    FlatAdamW::new(engine.params.data.len(), self.config.train.weight_decay);
                opt.step = step;
                let state: HashMap<String, Tensor> = state.into_iter().collect();
                for e in &engine.params.entries {
                    for (key, buf) in [("m", &mut opt.m), ("v", &mut opt.v)] {
                        if let Some(t) = state.get(&format!("{key}.{}", e.name)) {
                            let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
                            if v.len() == e.len {
                                buf[e.offset..e.offset + e.len].copy_from_slice(&v);
                            }
                        }
                    }
                }
                self.engine = Engine::Cpu { engine, opt };
            }
        }
        Ok(())
    }

    /// The model as trained so far (shares the variables).
    pub fn model(&self) -> &EmbeddedModel {
        &self.model
    }

    /// The current step's batch: scenes, captions, alignment targets, noise and noise levels.
    fn batch(&self, step: usize) -> Result<Batch> {
        let cfg = &self.config;
        let size = cfg.model.image_size;
        let patch = cfg.model.transformer.patch_size;
        let scene_cfg = SceneConfig::with_size(size);
        let bsz = cfg.train.batch;
        let (mut x0, mut weight, mut tokens, mut align, mut classes) =
            (vec![], vec![], vec![], vec![], vec![]);
        for i in 0..bsz {
            let seed = sample_seed(cfg.train.seed, step, i);
            let scene = Scene::generate(&scene_config(&scene_cfg, &cfg.train, seed), seed)
                .map_err(|e| Error::Input(e.to_string()))?;
            let mut rng = scene.caption_rng();
            let mut sampler = self.sampler.clone();
            sampler.options = CaptionOptions {
                shuffle_objects: rng.random_bool(cfg.train.shuffle_prob),
                word_dropout: cfg.train.word_dropout,
                absent_classes: cfg.train.absent_class_share,
            };
            let caption = sampler.sample(&scene, &mut rng);
            let tok = self.model.tokenize(&caption.text)?;
            for c in 0..3 {
                x0.extend(scene.rgb.chunks(3).map(|px| px[c] as f32 / 127.5 - 1.0));
            }
            let ow = 1.0 + cfg.train.object_weight as f32;
            weight.extend(scene.labels.iter().map(|&c| if c > 0 { ow } else { 1.0 }));
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
            // Segmentation classes as a class prompt would name them: each shape word (one the
            // scene lacks covers nothing, so the cross-entropy pushes it off every pixel), and
            // the word "background".
            let mut groups: Vec<(Vec<usize>, Vec<f32>)> = vec![];
            for shape in crate::shapes::Shape::ALL {
                let pos: Vec<usize> = caption
                    .words
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| **w == shape.name())
                    .map(|(k, _)| k + 1)
                    .collect();
                if !pos.is_empty() {
                    let mask: Vec<bool> =
                        scene.labels.iter().map(|&c| c == shape.class()).collect();
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
        let noise_seed = sample_seed(cfg.train.seed ^ 0xA5A5, step, 0);
        let eps = seeded_randn_vec(bsz * 3 * size * size, noise_seed);
        let sigma: Vec<f32> = seeded_randn_vec(bsz, noise_seed ^ 1)
            .into_iter()
            .map(|u| cfg.train.max_sigma as f32 / (1.0 + (-u).exp()))
            .collect();
        // Alignment only where the image is still visible through the noise.
        let visible = |bi: usize| sigma[bi] as f64 <= cfg.train.mask_align_max_sigma;
        let align = align
            .into_iter()
            .filter(|(bi, _, _)| visible(*bi))
            .collect();
        let classes = classes
            .into_iter()
            .enumerate()
            .map(|(bi, g)| if visible(bi) { g } else { vec![] })
            .collect();
        Ok(Batch {
            x0,
            weight,
            eps,
            sigma,
            tokens,
            align,
            classes,
        })
    }

    /// The block whose maps are aligned at `step`, if alignment is on for this batch.
    fn align_layer(&self, step: usize, b: &Batch) -> Option<usize> {
        let tc = &self.config.train;
        tc.mask_align_layer.filter(|_| {
            tc.mask_align_weight > 0.0 && step >= tc.mask_align_start && !b.align.is_empty()
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

    /// The mask-alignment loss (unweighted) from head-mean I2T maps `[B·L, N]` (row
    /// `b·L + token`): focal + dice of each naming word's map, normalised by its maximum,
    /// against its mask, plus the per-pixel cross-entropy of the class maps normalised over the
    /// classes the caption names.
    fn alignment_loss(&self, maps: &Tensor, b: &Batch) -> Result<Tensor> {
        let dev = &self.device;
        let bsz = b.tokens.len();
        let (rows, n) = maps.dims2()?;
        let lt = rows / bsz;
        let idx: Vec<u32> = b
            .align
            .iter()
            .map(|(bi, pos, _)| (bi * lt + pos) as u32)
            .collect();
        let sel = maps.index_select(&Tensor::new(idx, dev)?, 0)?;
        let max = sel.max_keepdim(D::Minus1)?;
        let p = sel.broadcast_div(&(max + 1e-12)?)?;
        let y: Vec<f32> = b
            .align
            .iter()
            .flat_map(|(_, _, t)| t.iter().copied())
            .collect();
        let y = Tensor::from_vec(y, (b.align.len(), n), dev)?;
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
            let agg = Tensor::from_vec(agg, (lt, groups.len()), dev)?;
            let y = Tensor::from_vec(cover, (n, groups.len()), dev)?;
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
        Ok(a)
    }

    /// One optimisation step.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let lr = self.config.train.lr_at(self.step);
        let stats = match self.engine_kind() {
            EngineKind::Candle => {
                let (loss, stats) = self.loss()?;
                let grads = loss.backward()?;
                if let Engine::Candle(opt) = &mut self.engine {
                    opt.step(&grads, lr)?;
                }
                stats
            }
            EngineKind::Cpu => {
                let (stats, grads) = self.cpu_gradients()?;
                if let Engine::Cpu { engine, opt } = &mut self.engine {
                    opt.update(&mut engine.params, &grads, lr);
                    engine.params.write_back()?;
                }
                stats
            }
        };
        self.step += 1;
        Ok(StepStats {
            step: self.step,
            ..stats
        })
    }

    /// The current step's loss and the gradient of every parameter, from the engine in use,
    /// named as [`Trainer::trainable`] names them (frozen variables included under the CPU
    /// engine, left out under candle's). Nothing is updated.
    pub fn gradients(&self) -> Result<(StepStats, Vec<(String, Tensor)>)> {
        match &self.engine {
            Engine::Candle(_) => {
                let (loss, stats) = self.loss()?;
                let grads = loss.backward()?;
                let mut out = vec![];
                for (name, var) in self.trainable()? {
                    let g = match grads.get(var.as_tensor()) {
                        Some(g) => g.clone(),
                        None => var.as_tensor().zeros_like()?,
                    };
                    out.push((name, g));
                }
                Ok((stats, out))
            }
            Engine::Cpu { engine, .. } => {
                let (stats, grads) = self.cpu_gradients()?;
                let out = engine
                    .params
                    .entries
                    .iter()
                    .map(|e| Ok((e.name.clone(), engine.params.tensor_of(e, &grads)?)))
                    .collect::<Result<Vec<_>>>()?;
                Ok((stats, out))
            }
        }
    }

    /// Loss and flat gradients of the current step under the CPU engine.
    fn cpu_gradients(&self) -> Result<(StepStats, Vec<f32>)> {
        let Engine::Cpu { engine, .. } = &self.engine else {
            return Err(Error::Config("the CPU engine is not in use".into()));
        };
        let step = self.step;
        let tc = &self.config.train;
        let b = self.batch(step)?;
        let bsz = tc.batch;
        let per = engine.sample_len();
        let hw = per / 3;
        let xt: Vec<f32> =
            b.x0.chunks(per)
                .zip(b.eps.chunks(per))
                .zip(&b.sigma)
                .flat_map(|((x0, e), &s)| {
                    x0.iter()
                        .zip(e)
                        .map(move |(x, e)| s * e + (1.0 - s) * x)
                        .collect::<Vec<_>>()
                })
                .collect();
        let inputs: Vec<SampleIn> = (0..bsz)
            .map(|i| SampleIn {
                x_t: &xt[i * per..(i + 1) * per],
                t: b.sigma[i] * 1000.0,
                ids: &b.tokens[i].ids,
            })
            .collect();
        let layer = self.align_layer(step, &b);
        let fwd = engine.forward(&inputs, layer);
        // Object-weighted MSE against the velocity ε − x0.
        let mean_w = b.weight.iter().map(|&w| w as f64).sum::<f64>() / b.weight.len() as f64;
        let norm = (bsz * per) as f64 * mean_w;
        let mut mse = 0f64;
        let mut dsamples = vec![];
        for i in 0..bsz {
            let pred = &fwd.samples[i];
            let w = &b.weight[i * hw..(i + 1) * hw];
            let mut d = vec![0f32; per];
            for k in 0..per {
                let j = i * per + k;
                let diff = pred[k] - (b.eps[j] - b.x0[j]);
                let wk = w[k % hw];
                mse += (wk * diff * diff) as f64;
                d[k] = (2.0 * tc.mse_weight * wk as f64 * diff as f64 / norm) as f32;
            }
            dsamples.push(d);
        }
        let mse = mse / norm;
        let mut align_v = 0.0;
        let mut di2t = None;
        if let Some(l) = layer {
            let lt = b.tokens[0].ids.len();
            let n = fwd.i2t[0].len() / lt;
            let flat: Vec<f32> = fwd.i2t.iter().flatten().copied().collect();
            let maps = Var::from_tensor(&Tensor::from_vec(flat, (bsz * lt, n), &self.device)?)?;
            let a = self.alignment_loss(maps.as_tensor(), &b)?;
            align_v = a.to_scalar::<f32>()? as f64;
            let grads = (a * tc.mask_align_weight)?.backward()?;
            let g: Vec<f32> = grads
                .get(maps.as_tensor())
                .ok_or_else(|| Error::Input("alignment loss has no gradient".into()))?
                .flatten_all()?
                .to_vec1()?;
            di2t = Some((l, g.chunks(lt * n).map(<[f32]>::to_vec).collect::<Vec<_>>()));
        }
        let grads = engine.backward(
            &fwd,
            &dsamples,
            di2t.as_ref().map(|(l, m)| (*l, m.as_slice())),
        );
        let stats = StepStats {
            step,
            loss: tc.mse_weight * mse + tc.mask_align_weight * align_v,
            mse,
            align: align_v,
            lr: tc.lr_at(step),
        };
        Ok((stats, grads))
    }

    /// The loss of the current step's batch under candle (a graph ready for `backward`) and
    /// its parts.
    pub fn loss(&self) -> Result<(Tensor, StepStats)> {
        let step = self.step;
        let tc = self.config.train.clone();
        let b = self.batch(step)?;
        let bsz = tc.batch;
        let dev = self.device.clone();
        let size = self.config.model.image_size;
        let x0 = Tensor::from_slice(&b.x0, (bsz, 3, size, size), &dev)?;
        let eps = Tensor::from_slice(&b.eps, (bsz, 3, size, size), &dev)?;
        let sigma = Tensor::from_slice(&b.sigma, bsz, &dev)?;
        let s4 = sigma.reshape((bsz, 1, 1, 1))?;
        let xt = (s4.broadcast_mul(&eps)? + (1.0 - &s4)?.broadcast_mul(&x0)?)?;
        let target = (&eps - &x0)?;
        let toks: Vec<&super::tokenizer::Tokens> = b.tokens.iter().collect();
        let (ctx, pooled) = self.model.encode(&toks)?;
        let align_layer = self.align_layer(step, &b);
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
        let w = Tensor::from_slice(&b.weight, (bsz, 1, size, size), &dev)?;
        let mse = (diff.broadcast_mul(&w)?.mean_all()? / w.mean_all()?.to_scalar::<f32>()? as f64)?;
        let mut loss = (&mse * tc.mse_weight)?;
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
            let a = self.alignment_loss(&maps, &b)?;
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

    /// The optimiser's moments as named tensors (`m.NAME`, `v.NAME`).
    fn optimizer_state(&self) -> Result<Vec<(String, Tensor)>> {
        match &self.engine {
            Engine::Candle(opt) => Ok(opt.state()),
            Engine::Cpu { engine, opt } => {
                let mut out = vec![];
                for e in engine.params.entries.iter().filter(|e| e.trainable) {
                    out.push((format!("m.{}", e.name), engine.params.tensor_of(e, &opt.m)?));
                    out.push((format!("v.{}", e.name), engine.params.tensor_of(e, &opt.v)?));
                }
                Ok(out)
            }
        }
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
        write_safetensors(&dir.join("optimizer.safetensors"), &self.optimizer_state()?)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn single_object_scenes(share: f64) -> usize {
        let train = TrainConfig {
            multi_object_share: share,
            ..TrainConfig::default_toy(true)
        };
        let base = SceneConfig::with_size(32);
        (0..150)
            .filter(|&i| {
                let seed = sample_seed(train.seed, i, 0);
                let scene = Scene::generate(&scene_config(&base, &train, seed), seed).unwrap();
                scene.objects.len() == 1
            })
            .count()
    }

    #[test]
    fn multi_object_share_thins_out_single_object_scenes() {
        let natural = single_object_scenes(0.0);
        // The world draws 1–3 objects evenly: about 50 of 150 scenes hold one.
        assert!((30..=70).contains(&natural), "natural: {natural}");
        assert_eq!(single_object_scenes(1.0), 0);
        let most = single_object_scenes(0.75);
        assert!(most > 0 && most * 2 < natural, "0.75: {most} vs {natural}");
    }

    #[test]
    fn area_matched_recipes_draw_stars_larger_than_squares() {
        let base = SceneConfig::with_size(64);
        let mean_size = |area_matched: bool, shape: crate::shapes::Shape| {
            let train = TrainConfig {
                area_matched,
                ..TrainConfig::default_toy(true)
            };
            let sizes: Vec<f64> = (0..300u64)
                .flat_map(|seed| {
                    let c = scene_config(&base, &train, seed);
                    assert_eq!(c.area_matched, area_matched);
                    Scene::generate(&c, seed).unwrap().objects
                })
                .filter(|o| o.shape == shape)
                .map(|o| o.size())
                .collect();
            sizes.iter().sum::<f64>() / sizes.len().max(1) as f64
        };
        use crate::shapes::Shape::{Square, Star};
        let (star, square) = (mean_size(false, Star), mean_size(false, Square));
        assert!(
            (star / square - 1.0).abs() < 0.15,
            "world: {star} vs {square}"
        );
        let (star, square) = (mean_size(true, Star), mean_size(true, Square));
        assert!(star > 1.4 * square, "area-matched: {star} vs {square}");
    }

    #[test]
    fn max_sigma_scales_the_noise_levels() {
        let draw = |max_sigma: f64| {
            let cfg = ToyConfig {
                model: EmbeddedConfig::tiny(),
                train: TrainConfig {
                    batch: 64,
                    max_sigma,
                    ..TrainConfig::default_toy(true)
                },
            };
            let t = Trainer::new(cfg, &Device::Cpu).unwrap();
            t.batch(3).unwrap().sigma
        };
        let bad = TrainConfig {
            max_sigma: 1.5,
            ..TrainConfig::default_toy(true)
        };
        let err = Trainer::new(
            ToyConfig {
                model: EmbeddedConfig::tiny(),
                train: bad,
            },
            &Device::Cpu,
        )
        .err()
        .expect("max_sigma above 1 is refused");
        assert!(err.to_string().contains("max_sigma"), "{err}");
        let (full, low) = (draw(1.0), draw(0.3));
        assert!(
            full.iter().any(|&s| s > 0.6),
            "logit-normal reaches high noise"
        );
        for (f, l) in full.iter().zip(&low) {
            assert!((f * 0.3 - l).abs() < 1e-6, "{f} scaled to {l}");
        }
    }
}
