//! Finding and reading SD3-family transformer weights in the forms users have: Stability's
//! original single file (possibly bundling text encoders and VAE) and diffusers folders (plain,
//! sharded, or under a pipeline root's `transformer/`). Every tensor is exposed under its
//! diffusers name; original-layout tensors are split (`qkv`) or have scale/shift swapped on load,
//! exactly as diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`
//! (diffusers v0.42.1, `loaders/single_file_utils.py`) does.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};

use super::config::MmditConfig;
use crate::error::{Error, Result};

/// Which key layout the checkpoint uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Stability's layout (`joint_blocks.N.x_block.attn.qkv…`) under `prefix`.
    Original { prefix: String },
    /// diffusers' layout (`transformer_blocks.N.attn.to_q…`) under `prefix`.
    Diffusers { prefix: String },
}

/// How a diffusers-named tensor is derived from a stored one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transform {
    Identity,
    /// Chunk `i` of 3 along dim 0 (fused `qkv`).
    Chunk3(usize),
    /// Swap the two halves along dim 0 (shift/scale stored in the other order).
    SwapHalves,
}

/// Where a diffusers-named tensor is stored.
#[derive(Debug, Clone)]
struct Source {
    key: String,
    transform: Transform,
}

/// An opened transformer checkpoint (memory-mapped, read lazily).
pub struct Checkpoint {
    st: MmapedSafetensors,
    names: BTreeSet<String>,
    layout: Layout,
    num_layers: usize,
    /// The files the weights live in.
    pub files: Vec<PathBuf>,
    /// `config.json` found with a diffusers-form checkpoint, if any.
    pub config_path: Option<PathBuf>,
}

/// Opens safetensors files, turning format errors into a clear message naming the file.
fn open_safetensors(files: &[PathBuf]) -> Result<MmapedSafetensors> {
    for f in files {
        let meta = std::fs::metadata(f).map_err(|e| Error::io(f, e))?;
        if meta.is_dir() {
            return Err(Error::Input(format!(
                "{} is a folder, not a file",
                f.display()
            )));
        }
    }
    // SAFETY: the files are mapped read-only; DiT Lens never writes to a checkpoint it reads.
    unsafe { MmapedSafetensors::multi(files) }.map_err(|e| {
        let path = files.first().cloned().unwrap_or_default();
        let reason = e.to_string();
        let reason = reason.lines().next().unwrap_or("").to_string();
        Error::NotSafetensors { path, reason }
    })
}

/// Finds the transformer's weight files (and config) for a user-given path.
fn resolve(path: &Path) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        let sub = path.join("transformer");
        if sub.is_dir() {
            return resolve(&sub);
        }
        let config = Some(path.join("config.json")).filter(|p| p.is_file());
        let mut index = None;
        let mut singles = vec![];
        let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
        for entry in entries {
            let p = entry.map_err(|e| Error::io(path, e))?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".safetensors.index.json") {
                index = Some(p);
            } else if name.ends_with(".safetensors") {
                singles.push(p);
            }
        }
        if let Some(index) = index {
            return Ok((read_index(&index)?, config));
        }
        singles.sort();
        let preferred = path.join("diffusion_pytorch_model.safetensors");
        if singles.contains(&preferred) {
            return Ok((vec![preferred], config));
        }
        return match singles.len() {
            1 => Ok((singles, config)),
            0 => Err(Error::UnknownLayout {
                path: path.to_path_buf(),
                reason: "no *.safetensors file, sharded index or transformer/ folder in it".into(),
            }),
            _ => Err(Error::UnknownLayout {
                path: path.to_path_buf(),
                reason: "several *.safetensors files and no *.safetensors.index.json saying which belong together".into(),
            }),
        };
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".safetensors.index.json") {
        let config = path
            .parent()
            .map(|d| d.join("config.json"))
            .filter(|p| p.is_file());
        return Ok((read_index(path)?, config));
    }
    let config = path
        .parent()
        .map(|d| d.join("config.json"))
        .filter(|p| p.is_file());
    Ok((vec![path.to_path_buf()], config))
}

/// Reads a diffusers/transformers sharded index and lists its shard files.
fn read_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::UnknownLayout {
        path: index.to_path_buf(),
        reason: format!("index is not JSON: {e}"),
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::UnknownLayout {
            path: index.to_path_buf(),
            reason: "index has no `weight_map`".into(),
        })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: BTreeSet<PathBuf> = map
        .values()
        .filter_map(|f| f.as_str())
        .map(|f| dir.join(f))
        .collect();
    if files.is_empty() {
        return Err(Error::UnknownLayout {
            path: index.to_path_buf(),
            reason: "index lists no shard".into(),
        });
    }
    Ok(files.into_iter().collect())
}

const ORIGINAL_PROBE: &str = "joint_blocks.0.x_block.attn.qkv.weight";
const DIFFUSERS_PROBE: &str = "transformer_blocks.0.attn.to_q.weight";

impl Checkpoint {
    /// Opens the transformer at `path` (file, folder, sharded index or pipeline root) and detects
    /// its layout from the tensor names.
    pub fn open(path: &Path) -> Result<Self> {
        let (files, config_path) = resolve(path)?;
        let st = open_safetensors(&files)?;
        let names: BTreeSet<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
        let layout = detect_layout(&names).ok_or_else(|| {
            let flux = names.iter().any(|n| n.contains("double_blocks.") || n.contains("single_transformer_blocks."));
            let reason = if flux {
                "this looks like a Flux checkpoint, which is not supported yet".to_string()
            } else {
                let sample: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
                format!(
                    "found neither `{ORIGINAL_PROBE}` (Stability layout) nor `{DIFFUSERS_PROBE}` (diffusers layout); {} tensors, e.g. {sample:?}",
                    names.len()
                )
            };
            Error::UnknownLayout { path: path.to_path_buf(), reason }
        })?;
        // A config.json beside a file only describes it in diffusers form.
        let config_path = match layout {
            Layout::Diffusers { .. } => config_path,
            Layout::Original { .. } => None,
        };
        let mut ck = Checkpoint {
            st,
            names,
            layout,
            num_layers: 0,
            files,
            config_path,
        };
        ck.num_layers = (0..)
            .take_while(|i| ck.contains(&format!("transformer_blocks.{i}.norm1.linear.weight")))
            .count();
        if ck.num_layers == 0 {
            return Err(Error::MissingTensor {
                name: ck.stored_name("transformer_blocks.0.norm1.linear.weight"),
            });
        }
        Ok(ck)
    }

    /// The detected key layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Number of joint blocks present.
    pub fn num_layers(&self) -> usize {
        self.num_layers
    }

    /// Where the diffusers-named tensor `name` is stored, and how to derive it.
    fn source(&self, name: &str) -> Source {
        match &self.layout {
            Layout::Diffusers { prefix } => Source {
                key: format!("{prefix}{name}"),
                transform: Transform::Identity,
            },
            Layout::Original { prefix } => {
                let (key, transform) = original_key(name, self.num_layers);
                Source {
                    key: format!("{prefix}{key}"),
                    transform,
                }
            }
        }
    }

    /// The name under which `name` is stored in the file (for error messages).
    pub fn stored_name(&self, name: &str) -> String {
        self.source(name).key
    }

    /// Whether the diffusers-named tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(&self.source(name).key)
    }

    /// Shape of the diffusers-named tensor after its transform, if present.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        let src = self.source(name);
        let view = self.st.get(&src.key).ok()?;
        let mut shape = view.shape().to_vec();
        if let Transform::Chunk3(_) = src.transform {
            if let Some(d0) = shape.first_mut() {
                *d0 /= 3;
            }
        }
        Some(shape)
    }

    /// Loads the diffusers-named tensor, checking its shape against `expected`.
    pub fn load(
        &self,
        name: &str,
        expected: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let src = self.source(name);
        if !self.names.contains(&src.key) {
            return Err(Error::MissingTensor { name: src.key });
        }
        let raw = self.st.load(&src.key, dev)?;
        let stored = raw.dims().to_vec();
        let expected_stored = expected.map(|s| {
            let mut dims = s.dims().to_vec();
            if let (Transform::Chunk3(_), Some(d0)) = (src.transform, dims.first_mut()) {
                *d0 *= 3;
            }
            dims
        });
        if let Some(exp) = &expected_stored {
            if exp != &stored {
                return Err(Error::WrongShape {
                    name: src.key,
                    expected: exp.clone(),
                    got: stored,
                });
            }
        }
        let t = match src.transform {
            Transform::Identity => raw,
            Transform::Chunk3(i) => {
                if stored.first().is_none_or(|d| d % 3 != 0) {
                    return Err(Error::WrongShape {
                        name: src.key,
                        expected: vec![],
                        got: stored,
                    });
                }
                let n = stored[0] / 3;
                raw.narrow(0, i * n, n)?
            }
            Transform::SwapHalves => {
                let n = stored.first().copied().unwrap_or(0);
                if n % 2 != 0 {
                    return Err(Error::WrongShape {
                        name: src.key,
                        expected: vec![],
                        got: stored,
                    });
                }
                let h = n / 2;
                Tensor::cat(&[raw.narrow(0, h, h)?, raw.narrow(0, 0, h)?], 0)?
            }
        };
        Ok(t.to_dtype(dtype)?.contiguous()?)
    }

    /// Infers the configuration from tensor shapes. `head_dim` is 64 unless `override_cfg`
    /// (a diffusers-style config) says otherwise; the override's other fields must agree with the
    /// weights.
    pub fn infer_config(&self, override_cfg: Option<&MmditConfig>) -> Result<MmditConfig> {
        let need = |name: &str| -> Result<Vec<usize>> {
            self.shape_of(name).ok_or_else(|| Error::MissingTensor {
                name: self.stored_name(name),
            })
        };
        let proj = need("pos_embed.proj.weight")?;
        if proj.len() != 4 || proj[2] != proj[3] {
            return Err(Error::WrongShape {
                name: self.stored_name("pos_embed.proj.weight"),
                expected: vec![],
                got: proj,
            });
        }
        let (hidden, mut in_channels, patch) = (proj[0], proj[1], proj[2]);
        // A convolutional front end (`pos_embed.stem.{i}`, 3×3) feeds the patch embedding.
        let mut conv_stem = vec![];
        while let Some(w) = self.shape_of(&format!("pos_embed.stem.{}.weight", conv_stem.len())) {
            let fits = w.len() == 4 && w[2] == 3 && w[3] == 3;
            let chained = conv_stem.last().is_none_or(|&prev| prev == w[1]);
            if !fits || !chained {
                return Err(Error::WrongShape {
                    name: self.stored_name(&format!("pos_embed.stem.{}.weight", conv_stem.len())),
                    expected: vec![],
                    got: w,
                });
            }
            if conv_stem.is_empty() {
                in_channels = w[1];
            }
            conv_stem.push(w[0]);
        }
        if conv_stem.last().is_some_and(|&c| c != proj[1]) {
            return Err(Error::WrongShape {
                name: self.stored_name("pos_embed.proj.weight"),
                expected: vec![hidden, conv_stem[conv_stem.len() - 1], patch, patch],
                got: proj,
            });
        }
        let ctx = need("context_embedder.weight")?;
        let pooled = need("time_text_embed.text_embedder.linear_1.weight")?;
        let out = need("proj_out.weight")?;
        let pos = need("pos_embed.pos_embed")?;
        let pos_tokens = pos.get(pos.len().saturating_sub(2)).copied().unwrap_or(0);
        let pos_max = (pos_tokens as f64).sqrt().round() as usize;
        if pos_max * pos_max != pos_tokens {
            return Err(Error::WrongShape {
                name: self.stored_name("pos_embed.pos_embed"),
                expected: vec![1, pos_max * pos_max, hidden],
                got: pos,
            });
        }
        let has_qk = self.contains("transformer_blocks.0.attn.norm_q.weight");
        let ff_conv = self.contains("transformer_blocks.0.ff.conv.weight");
        let dual: Vec<usize> = (0..self.num_layers)
            .filter(|i| self.contains(&format!("transformer_blocks.{i}.attn2.to_q.weight")))
            .collect();
        let head_dim = override_cfg.map(|c| c.attention_head_dim).unwrap_or(64);
        if head_dim == 0 || hidden % head_dim != 0 {
            return Err(Error::Config(format!(
                "hidden size {hidden} is not a multiple of head_dim {head_dim}; pass --config CONFIG.json with the right attention_head_dim"
            )));
        }
        let cfg = MmditConfig {
            sample_size: override_cfg.map(|c| c.sample_size).unwrap_or(pos_max),
            patch_size: patch,
            in_channels,
            num_layers: self.num_layers,
            attention_head_dim: head_dim,
            num_attention_heads: hidden / head_dim,
            joint_attention_dim: ctx.get(1).copied().unwrap_or(0),
            caption_projection_dim: ctx.first().copied().unwrap_or(0),
            pooled_projection_dim: pooled.get(1).copied().unwrap_or(0),
            out_channels: Some(out.first().copied().unwrap_or(0) / (patch * patch).max(1)),
            pos_embed_max_size: pos_max,
            dual_attention_layers: dual,
            qk_norm: has_qk.then(|| "rms_norm".to_string()),
            conv_stem,
            ff_conv,
        };
        if let Some(o) = override_cfg {
            self.check_agrees(&cfg, o)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that a given config describes these weights; the variant always comes from the weights.
    pub fn check_agrees(&self, from_weights: &MmditConfig, given: &MmditConfig) -> Result<()> {
        let mut diffs = vec![];
        macro_rules! cmp {
            ($f:ident) => {
                if from_weights.$f != given.$f {
                    diffs.push(format!(
                        "{}: config {:?}, weights {:?}",
                        stringify!($f),
                        given.$f,
                        from_weights.$f
                    ));
                }
            };
        }
        cmp!(patch_size);
        cmp!(in_channels);
        cmp!(num_layers);
        cmp!(joint_attention_dim);
        cmp!(caption_projection_dim);
        cmp!(pooled_projection_dim);
        cmp!(pos_embed_max_size);
        cmp!(dual_attention_layers);
        cmp!(qk_norm);
        cmp!(conv_stem);
        cmp!(ff_conv);
        if from_weights.inner_dim() != given.inner_dim() {
            diffs.push(format!(
                "heads × head_dim: config {}, weights {}",
                given.inner_dim(),
                from_weights.inner_dim()
            ));
        }
        if from_weights.out_channels() != given.out_channels() {
            diffs.push(format!(
                "out_channels: config {}, weights {}",
                given.out_channels(),
                from_weights.out_channels()
            ));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "config does not match the weights ({})",
                diffs.join("; ")
            )))
        }
    }

    /// The configuration: `config.json` of a diffusers checkpoint (checked against the weights),
    /// else inferred from shapes (with the optional override for heads).
    pub fn config(&self, override_cfg: Option<&MmditConfig>) -> Result<MmditConfig> {
        let file_cfg = match (&self.config_path, override_cfg) {
            (_, Some(_)) => None,
            (Some(p), None) => Some(MmditConfig::from_json_file(p)?),
            (None, None) => None,
        };
        let given = override_cfg.or(file_cfg.as_ref());
        let mut cfg = self.infer_config(given)?;
        if let Some(g) = given {
            cfg.sample_size = g.sample_size;
        }
        Ok(cfg)
    }
}

fn detect_layout(names: &BTreeSet<String>) -> Option<Layout> {
    let find = |probe: &str| -> Option<String> {
        let mut hits: Vec<&String> = names.iter().filter(|n| n.ends_with(probe)).collect();
        // Prefer the shortest prefix (the transformer itself over nested copies).
        hits.sort_by_key(|n| n.len());
        hits.first().map(|n| n[..n.len() - probe.len()].to_string())
    };
    if let Some(prefix) = find(ORIGINAL_PROBE) {
        return Some(Layout::Original { prefix });
    }
    find(DIFFUSERS_PROBE).map(|prefix| Layout::Diffusers { prefix })
}

/// Maps a diffusers tensor name to Stability's original key (without prefix) and transform.
fn original_key(name: &str, num_layers: usize) -> (String, Transform) {
    use Transform::*;
    let simple: &[(&str, &str)] = &[
        ("pos_embed.pos_embed", "pos_embed"),
        ("pos_embed.proj.", "x_embedder.proj."),
        (
            "time_text_embed.timestep_embedder.linear_1.",
            "t_embedder.mlp.0.",
        ),
        (
            "time_text_embed.timestep_embedder.linear_2.",
            "t_embedder.mlp.2.",
        ),
        (
            "time_text_embed.text_embedder.linear_1.",
            "y_embedder.mlp.0.",
        ),
        (
            "time_text_embed.text_embedder.linear_2.",
            "y_embedder.mlp.2.",
        ),
        ("context_embedder.", "context_embedder."),
        ("proj_out.", "final_layer.linear."),
    ];
    for (from, to) in simple {
        if let Some(rest) = name.strip_prefix(from) {
            return (format!("{to}{rest}"), Identity);
        }
    }
    if let Some(rest) = name.strip_prefix("norm_out.linear.") {
        return (format!("final_layer.adaLN_modulation.1.{rest}"), SwapHalves);
    }
    let Some(rest) = name.strip_prefix("transformer_blocks.") else {
        return (name.to_string(), Identity);
    };
    let Some((idx, sub)) = rest.split_once('.') else {
        return (name.to_string(), Identity);
    };
    let last = idx.parse::<usize>().ok() == Some(num_layers.saturating_sub(1));
    let b = format!("joint_blocks.{idx}");
    let (leaf_head, leaf) = match sub.rsplit_once('.') {
        Some((h, l)) => (h, l),
        None => return (name.to_string(), Identity),
    };
    let (key, tr) = match leaf_head {
        "attn.to_q" => (format!("{b}.x_block.attn.qkv"), Chunk3(0)),
        "attn.to_k" => (format!("{b}.x_block.attn.qkv"), Chunk3(1)),
        "attn.to_v" => (format!("{b}.x_block.attn.qkv"), Chunk3(2)),
        "attn.add_q_proj" => (format!("{b}.context_block.attn.qkv"), Chunk3(0)),
        "attn.add_k_proj" => (format!("{b}.context_block.attn.qkv"), Chunk3(1)),
        "attn.add_v_proj" => (format!("{b}.context_block.attn.qkv"), Chunk3(2)),
        "attn.norm_q" => (format!("{b}.x_block.attn.ln_q"), Identity),
        "attn.norm_k" => (format!("{b}.x_block.attn.ln_k"), Identity),
        "attn.norm_added_q" => (format!("{b}.context_block.attn.ln_q"), Identity),
        "attn.norm_added_k" => (format!("{b}.context_block.attn.ln_k"), Identity),
        "attn.to_out.0" => (format!("{b}.x_block.attn.proj"), Identity),
        "attn.to_add_out" => (format!("{b}.context_block.attn.proj"), Identity),
        "attn2.to_q" => (format!("{b}.x_block.attn2.qkv"), Chunk3(0)),
        "attn2.to_k" => (format!("{b}.x_block.attn2.qkv"), Chunk3(1)),
        "attn2.to_v" => (format!("{b}.x_block.attn2.qkv"), Chunk3(2)),
        "attn2.norm_q" => (format!("{b}.x_block.attn2.ln_q"), Identity),
        "attn2.norm_k" => (format!("{b}.x_block.attn2.ln_k"), Identity),
        "attn2.to_out.0" => (format!("{b}.x_block.attn2.proj"), Identity),
        "norm1.linear" => (format!("{b}.x_block.adaLN_modulation.1"), Identity),
        "norm1_context.linear" => (
            format!("{b}.context_block.adaLN_modulation.1"),
            if last { SwapHalves } else { Identity },
        ),
        "ff.net.0.proj" => (format!("{b}.x_block.mlp.fc1"), Identity),
        "ff.net.2" => (format!("{b}.x_block.mlp.fc2"), Identity),
        "ff_context.net.0.proj" => (format!("{b}.context_block.mlp.fc1"), Identity),
        "ff_context.net.2" => (format!("{b}.context_block.mlp.fc2"), Identity),
        _ => return (name.to_string(), Identity),
    };
    (format!("{key}.{leaf}"), tr)
}

impl crate::named_backend::NamedTensors for Checkpoint {
    fn load_named(
        &self,
        name: &str,
        expected: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        self.load(name, expected, dtype, dev)
    }

    fn has(&self, name: &str) -> bool {
        self.contains(name)
    }
}

/// A `VarBuilder` backend over a checkpoint, so layers load by their diffusers names via `vb.pp(..)`.
pub type CheckpointBackend = crate::named_backend::NamedBackend<Checkpoint>;

/// Turns a loading error raised through the `VarBuilder` back into a one-line message.
pub(crate) fn loading_error(e: candle_core::Error) -> Error {
    match e {
        candle_core::Error::Msg(m) => Error::Load(m),
        candle_core::Error::WithBacktrace { inner, .. } => loading_error(*inner),
        candle_core::Error::Context { inner, .. } => loading_error(*inner),
        other => Error::Candle(other),
    }
}
