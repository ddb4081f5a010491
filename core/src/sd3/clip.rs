//! The CLIP text encoder as SD3 uses it (`CLIPTextModelWithProjection`): penultimate hidden
//! state as prompt embeddings, final-layer-normed EOS state through `text_projection` as pooled.
//!
//! Reference: transformers v5.23 `models/clip/modeling_clip.py` (`CLIPTextEmbeddings`,
//! `CLIPAttention`, `CLIPMLP`, `CLIPEncoderLayer`, `CLIPTextTransformer.forward` with its two EOS
//! rules: `eos_token_id == 2` → argmax of the ids, else the first position of `eos_token_id`;
//! `CLIPTextModelWithProjection`). candle-transformers 0.11 has CLIP text models, but neither
//! fits: `stable_diffusion::clip::Config` has private fields (only its presets can be built) and
//! its `Gelu` is the tanh approximation where transformers' `"gelu"` is the exact erf;
//! `clip::text_model` has quick-GELU only and no access to the hidden states.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::parts::{Part, Weights};
use super::weights::{open_var_builder, read_json, WeightsReader};
use crate::error::{Error, Result};

/// The activation named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x · σ(1.702 x)` (CLIP-L).
    QuickGelu,
    /// Exact (erf) GELU, transformers' `"gelu"` (CLIP-G).
    Gelu,
    /// tanh-approximated GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
}

impl ClipActivation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            _ => None,
        }
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
        }
    }
}

/// The fields of a CLIP text `config.json` the encoder needs (transformers' names).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: ClipActivation,
    pub layer_norm_eps: f64,
    /// `projection_dim` (width of the pooled output).
    pub projection_dim: usize,
    /// `eos_token_id` of the config: 2 selects the legacy argmax-of-ids pooling.
    pub eos_token_id: u32,
}

impl ClipConfig {
    /// Reads a transformers `config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        let v = v.get("text_config").cloned().unwrap_or(v);
        let num = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(|x| x.as_u64())
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| Error::Config(format!("{}: `{k}` is missing", path.display())))
        };
        let act = v
            .get("hidden_act")
            .and_then(|x| x.as_str())
            .unwrap_or("quick_gelu");
        let hidden_act = ClipActivation::parse(act).ok_or_else(|| {
            Error::Config(format!(
                "{}: unsupported hidden_act `{act}`",
                path.display()
            ))
        })?;
        let hidden_size = num("hidden_size")?;
        Ok(ClipConfig {
            vocab_size: num("vocab_size")?,
            hidden_size,
            intermediate_size: num("intermediate_size")?,
            num_hidden_layers: num("num_hidden_layers")?,
            num_attention_heads: num("num_attention_heads")?,
            max_position_embeddings: num("max_position_embeddings").unwrap_or(77),
            hidden_act,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(|x| x.as_f64())
                .unwrap_or(1e-5),
            projection_dim: num("projection_dim").unwrap_or(hidden_size),
            eos_token_id: v
                .get("eos_token_id")
                .and_then(|x| x.as_u64())
                .and_then(|x| u32::try_from(x).ok())
                .unwrap_or(2),
        })
    }

    /// Infers the configuration of a single file's CLIP from its tensor shapes, with what the
    /// shapes cannot say taken from SD3's own configs (head size 64; CLIP-L quick-GELU, CLIP-G
    /// exact GELU; `eos_token_id` 2, the argmax rule).
    pub fn infer(reader: &WeightsReader, part: Part) -> Result<Self> {
        let emb = reader.require_shape("text_model.embeddings.token_embedding.weight")?;
        let pos = reader.require_shape("text_model.embeddings.position_embedding.weight")?;
        let fc1 = reader.require_shape("text_model.encoder.layers.0.mlp.fc1.weight")?;
        let (vocab_size, hidden_size) = match emb.as_slice() {
            [v, h] => (*v, *h),
            _ => {
                return Err(reader.wrong_shape("text_model.embeddings.token_embedding.weight", emb))
            }
        };
        let layers = (0..)
            .take_while(|i| {
                reader.contains(&format!("text_model.encoder.layers.{i}.mlp.fc1.weight"))
            })
            .count();
        let projection_dim = reader
            .shape("text_projection.weight")
            .and_then(|s| s.first().copied())
            .unwrap_or(hidden_size);
        Ok(ClipConfig {
            vocab_size,
            hidden_size,
            intermediate_size: fc1.first().copied().unwrap_or(0),
            num_hidden_layers: layers,
            num_attention_heads: (hidden_size / 64).max(1),
            max_position_embeddings: pos.first().copied().unwrap_or(77),
            hidden_act: if part == Part::ClipG {
                ClipActivation::Gelu
            } else {
                ClipActivation::QuickGelu
            },
            layer_norm_eps: 1e-5,
            projection_dim,
            eos_token_id: 2,
        })
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder, c: &ClipConfig) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        Ok(Attention {
            q: candle_nn::linear(h, h, vb.pp("q_proj"))?,
            k: candle_nn::linear(h, h, vb.pp("k_proj"))?,
            v: candle_nn::linear(h, h, vb.pp("v_proj"))?,
            out: candle_nn::linear(h, h, vb.pp("out_proj"))?,
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
        })
    }

    /// # Shapes
    /// `x` [B, L, D], `mask` [L, L] additive (causal) → [B, L, D].
    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let probs =
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        let o = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        self.out.forward(&o)
    }
}

struct Layer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: ClipActivation,
}

impl Layer {
    fn load(vb: VarBuilder, c: &ClipConfig) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        Ok(Layer {
            ln1: candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp("layer_norm1"))?,
            attn: Attention::load(vb.pp("self_attn"), c)?,
            ln2: candle_nn::layer_norm(h, c.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(h, c.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(c.intermediate_size, h, vb.pp("mlp.fc2"))?,
            act: c.hidden_act,
        })
    }

    /// # Shapes
    /// `x` [B, L, D] → [B, L, D].
    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln1.forward(x)?, mask)?)?;
        let m = self
            .fc2
            .forward(&self.act.apply(&self.fc1.forward(&self.ln2.forward(&h)?)?)?)?;
        h + m
    }
}

/// What one CLIP encoder gives SD3.
pub struct ClipOutput {
    /// `hidden_states[-2]`: the output of the second-to-last layer, [1, L, hidden].
    pub penultimate: Tensor,
    /// `text_embeds`: final-layer-normed state at the EOS position through `text_projection`,
    /// [1, projection_dim].
    pub pooled: Tensor,
}

/// A loaded CLIP text encoder.
pub struct ClipTextEncoder {
    token_embedding: candle_nn::Embedding,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_ln: LayerNorm,
    projection: Tensor,
    /// The configuration it was built with.
    pub config: ClipConfig,
    /// Whether `text_projection` was absent and replaced by the identity (as diffusers'
    /// single-file loader does for SD3's CLIP-L).
    pub identity_projection: bool,
    dtype: DType,
}

impl ClipTextEncoder {
    /// Loads CLIP-L or CLIP-G from `weights`. When `text_projection.weight` is absent and the
    /// projection is as wide as the hidden state, the identity is used, as diffusers'
    /// `create_diffusers_clip_model_from_ldm` does for `text_encoders.clip_l.` in SD3 single
    /// files (diffusers v0.42.1, `loaders/single_file_utils.py`:
    /// `diffusers_format_checkpoint["text_projection.weight"] = torch.eye(position_embedding_dim)`).
    pub fn load(part: Part, weights: &Weights, dev: &Device, dtype: DType) -> Result<Self> {
        let reader = WeightsReader::open(part, weights)?;
        let config = match &weights.config {
            Some(p) => ClipConfig::from_json_file(p)?,
            None => ClipConfig::infer(&reader, part)?,
        };
        if config.num_attention_heads == 0 || config.hidden_size % config.num_attention_heads != 0 {
            return Err(Error::Config(format!(
                "{}: hidden_size {} is not a multiple of num_attention_heads {}",
                part.label(),
                config.hidden_size,
                config.num_attention_heads
            )));
        }
        if config.num_hidden_layers < 2 {
            return Err(Error::Config(format!(
                "{}: {} layer(s); SD3 reads the second-to-last layer, so at least 2 are needed",
                part.label(),
                config.num_hidden_layers
            )));
        }
        let vb = open_var_builder(weights, dtype, dev)?;
        let load = || -> candle_core::Result<_> {
            let tm = vb.pp("text_model");
            let token_embedding = candle_nn::embedding(
                config.vocab_size,
                config.hidden_size,
                tm.pp("embeddings.token_embedding"),
            )?;
            let position_embedding = tm.get(
                (config.max_position_embeddings, config.hidden_size),
                "embeddings.position_embedding.weight",
            )?;
            let layers = (0..config.num_hidden_layers)
                .map(|i| Layer::load(tm.pp(format!("encoder.layers.{i}")), &config))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let final_ln = candle_nn::layer_norm(
                config.hidden_size,
                config.layer_norm_eps,
                tm.pp("final_layer_norm"),
            )?;
            Ok((token_embedding, position_embedding, layers, final_ln))
        };
        let (token_embedding, position_embedding, layers, final_ln) =
            load().map_err(|e| reader.load_error(e))?;
        let (projection, identity_projection) = if reader.contains("text_projection.weight") {
            let p = vb
                .get(
                    (config.projection_dim, config.hidden_size),
                    "text_projection.weight",
                )
                .map_err(|e| reader.load_error(e))?;
            (p, false)
        } else if config.projection_dim == config.hidden_size {
            (Tensor::eye(config.hidden_size, dtype, dev)?, true)
        } else {
            return Err(Error::MissingTensor {
                name: reader.stored_name("text_projection.weight"),
            });
        };
        Ok(ClipTextEncoder {
            token_embedding,
            position_embedding,
            layers,
            final_ln,
            projection,
            config,
            identity_projection,
            dtype,
        })
    }

    /// Runs the encoder on one tokenized prompt.
    ///
    /// # Shapes
    /// `ids`: L ≤ `max_position_embeddings` token ids → `penultimate` [1, L, hidden],
    /// `pooled` [1, projection_dim], both f32.
    pub fn encode(&self, ids: &[u32]) -> Result<ClipOutput> {
        let l = ids.len();
        let cfg = &self.config;
        if l == 0 || l > cfg.max_position_embeddings {
            return Err(Error::Input(format!(
                "{l} CLIP tokens; the encoder takes 1 to {}",
                cfg.max_position_embeddings
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= cfg.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the CLIP encoder's vocabulary of {}",
                cfg.vocab_size
            )));
        }
        let dev = self.position_embedding.device();
        let ids_t = Tensor::new(ids, dev)?.unsqueeze(0)?;
        let pos = self.position_embedding.narrow(0, 0, l)?;
        let mut x = self.token_embedding.forward(&ids_t)?.broadcast_add(&pos)?;
        let mask: Vec<f32> = (0..l)
            .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (l, l), dev)?.to_dtype(self.dtype)?;
        let n = self.layers.len();
        let mut penultimate = None;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &mask)?;
            if i + 2 == n {
                penultimate = Some(x.clone());
            }
        }
        let penultimate = penultimate.unwrap_or_else(|| x.clone());
        let last = self.final_ln.forward(&x)?;
        let pos = if cfg.eos_token_id == 2 {
            // legacy rule: the position of the largest id (first one on ties)
            let max = ids.iter().copied().max().unwrap_or(0);
            ids.iter().position(|&i| i == max).unwrap_or(0)
        } else {
            ids.iter().position(|&i| i == cfg.eos_token_id).unwrap_or(0)
        };
        let eos_state = last.narrow(1, pos, 1)?.squeeze(1)?;
        let pooled = eos_state.matmul(&self.projection.t()?)?;
        Ok(ClipOutput {
            penultimate: penultimate.to_dtype(DType::F32)?,
            pooled: pooled.to_dtype(DType::F32)?,
        })
    }

    /// Width of the penultimate hidden state.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Width of the pooled output.
    pub fn pooled_size(&self) -> usize {
        self.config.projection_dim
    }
}
