//! SD3's T5 text encoder: candle-transformers' `t5::T5EncoderModel` (0.11.1) loaded from a
//! diffusers `text_encoder_3/` folder or a single file's `text_encoders.t5xxl.transformer.` keys.
//!
//! Reference: transformers v5.23 `models/t5/modeling_t5.py` (`T5EncoderModel`, no attention
//! mask: diffusers' `_get_t5_prompt_embeds` calls `text_encoder_3(text_input_ids)[0]`, so padding
//! is attended to).

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::t5::{ActivationWithOptionalGating, Config, T5EncoderModel};

use super::parts::{Part, Weights};
use super::weights::{open_var_builder, WeightsReader};
use crate::error::{Error, Result};

/// A loaded T5 encoder.
pub struct T5Encoder {
    model: Mutex<T5EncoderModel>,
    /// The configuration it was built with.
    pub config: Config,
}

/// Reads `config.json` with candle-transformers' T5 `Config` (transformers' field names).
fn config_from_file(path: &std::path::Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: not a T5 config: {e}", path.display())))
}

/// Infers a single file's T5 configuration from tensor shapes; what shapes cannot say comes
/// from T5 v1.1 (SD3's T5-XXL): relative attention max distance 128, eps 1e-6, gated GELU
/// (tanh) when `wi_0` exists.
fn infer_config(r: &WeightsReader) -> Result<Config> {
    let shared_name = if r.contains("shared.weight") {
        "shared.weight"
    } else {
        "encoder.embed_tokens.weight"
    };
    let shared = r.require_shape(shared_name)?;
    let rel_name = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";
    let rel = r.require_shape(rel_name)?;
    let q = r.require_shape("encoder.block.0.layer.0.SelfAttention.q.weight")?;
    let gated = r.contains("encoder.block.0.layer.1.DenseReluDense.wi_0.weight");
    let wi = r.require_shape(if gated {
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
    } else {
        "encoder.block.0.layer.1.DenseReluDense.wi.weight"
    })?;
    let (vocab_size, d_model) = match shared.as_slice() {
        [v, d] => (*v, *d),
        _ => return Err(r.wrong_shape(shared_name, shared)),
    };
    let (buckets, heads) = match rel.as_slice() {
        [b, h] if *h > 0 => (*b, *h),
        _ => return Err(r.wrong_shape(rel_name, rel)),
    };
    let layers = (0..)
        .take_while(|i| r.contains(&format!("encoder.block.{i}.layer.0.SelfAttention.q.weight")))
        .count();
    let inner = q.first().copied().unwrap_or(0);
    Ok(Config {
        vocab_size,
        d_model,
        d_kv: inner / heads,
        d_ff: wi.first().copied().unwrap_or(0),
        num_layers: layers,
        num_decoder_layers: None,
        num_heads: heads,
        relative_attention_num_buckets: buckets,
        relative_attention_max_distance: 128,
        dropout_rate: 0.0,
        layer_norm_epsilon: 1e-6,
        initializer_factor: 1.0,
        feed_forward_proj: ActivationWithOptionalGating {
            gated,
            activation: if gated {
                candle_nn::Activation::NewGelu
            } else {
                candle_nn::Activation::Relu
            },
        },
        tie_word_embeddings: false,
        is_decoder: false,
        is_encoder_decoder: false,
        use_cache: false,
        pad_token_id: 0,
        eos_token_id: 1,
        decoder_start_token_id: None,
    })
}

impl T5Encoder {
    /// Loads the encoder (config from `config.json` when there is one, else inferred).
    pub fn load(weights: &Weights, dev: &Device, dtype: DType) -> Result<Self> {
        let reader = WeightsReader::open(Part::T5, weights)?;
        let mut config = match &weights.config {
            Some(p) => config_from_file(p)?,
            None => infer_config(&reader)?,
        };
        config.use_cache = false;
        let vb = open_var_builder(weights, dtype, dev)?;
        let model = T5EncoderModel::load(vb, &config).map_err(|e| reader.load_error(e))?;
        Ok(T5Encoder {
            model: Mutex::new(model),
            config,
        })
    }

    /// Encodes token ids (no attention mask, as diffusers).
    ///
    /// # Shapes
    /// `ids`: T ids → [1, T, d_model] f32.
    pub fn encode(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the T5 encoder's vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let mut model = self
            .model
            .lock()
            .map_err(|_| Error::Input("the T5 encoder failed earlier in another thread".into()))?;
        let dev = model.device().clone();
        let ids_t = Tensor::new(ids, &dev)?.unsqueeze(0)?;
        let out = model.forward(&ids_t)?;
        model.clear_kv_cache();
        Ok(out.to_dtype(DType::F32)?)
    }

    /// Width of the encoder's output.
    pub fn d_model(&self) -> usize {
        self.config.d_model
    }
}
