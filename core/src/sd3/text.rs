//! SD3's text conditioning: CLIP-L and CLIP-G penultimate states side by side, zero-padded to
//! the T5 width, followed by T5's tokens (or zeros); pooled = CLIP-L ‖ CLIP-G text embeds.
//!
//! Reference: diffusers v0.42.1 `pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py`
//! (`encode_prompt`, `_get_clip_prompt_embeds` with `clip_skip=None` → `hidden_states[-2]` and
//! `prompt_embeds[0]` as pooled, `_get_t5_prompt_embeds`, which returns zeros
//! `[max_sequence_length, transformer.config.joint_attention_dim]` without `text_encoder_3`).

use candle_core::{DType, Device, Tensor};

use super::clip::ClipTextEncoder;
use super::parts::{Part, PipelineParts};
use super::t5::T5Encoder;
use super::tokenize::{ClipTokenizer, T5Tokenizer, Tokenized};
use super::weights::WeightsReader;
use crate::error::{Error, Result};

/// The CLIP token count of SD3 (`tokenizer.model_max_length`).
pub const CLIP_TOKENS: usize = 77;
/// The largest `max_sequence_length` accepted (diffusers' limit for SD3).
pub const MAX_T5_TOKENS: usize = 512;

/// How the prompt is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextOptions {
    /// T5 tokens (default 77, as Stability's reference and Seg4Diff; diffusers' default is 256), ≤ 512.
    pub max_sequence_length: usize,
    /// Run T5; when false (or T5 is absent) its positions are zeros.
    pub use_t5: bool,
}

impl Default for TextOptions {
    fn default() -> Self {
        TextOptions {
            max_sequence_length: 77,
            use_t5: true,
        }
    }
}

/// Which encoder a text position comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TextEncoderKind {
    ClipL,
    ClipG,
    T5,
}

/// One position of the text sequence.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenInfo {
    /// The token string (CLIP-L's for the CLIP positions; empty where T5 is replaced by zeros).
    pub text: String,
    pub encoder: TextEncoderKind,
    /// After the end-of-sequence token (or a zero position standing in for T5).
    pub is_padding: bool,
    /// BOS, EOS or padding.
    pub is_special: bool,
}

/// The encoded prompt.
#[derive(Debug, Clone)]
pub struct PromptEncoding {
    /// [1, 77 + T, joint_attention_dim] f32.
    pub prompt_embeds: Tensor,
    /// [1, pooled_dim] f32 (CLIP-L text embeds ‖ CLIP-G text embeds).
    pub pooled: Tensor,
    /// One per position of `prompt_embeds` (the 77 CLIP positions labelled by CLIP-L's tokens).
    pub tokens: Vec<TokenInfo>,
    /// The text dropped by truncation, if any, phrased for the user.
    pub truncated: Option<String>,
}

/// Every tokenizer's view of one prompt.
#[derive(Debug, Clone)]
pub struct PromptTokens {
    pub clip_l: Tokenized,
    pub clip_g: Tokenized,
    /// `None` when T5 is not used.
    pub t5: Option<Tokenized>,
}

/// The loaded tokenizers and text encoders of an SD3 pipeline.
pub struct TextEncoders {
    tok_l: ClipTokenizer,
    tok_g: ClipTokenizer,
    tok_t5: Option<T5Tokenizer>,
    clip_l: ClipTextEncoder,
    clip_g: ClipTextEncoder,
    t5: Option<T5Encoder>,
    joint_dim: usize,
    opts: TextOptions,
    dev: Device,
}

/// `(joint_attention_dim, pooled_projection_dim)` read from the transformer's weights, either layout.
fn transformer_dims(parts: &PipelineParts) -> Result<Option<(usize, usize)>> {
    let Some(w) = parts.get(Part::Transformer) else {
        return Ok(None);
    };
    let r = WeightsReader::open(Part::Transformer, w)?;
    let ctx = r.shape("context_embedder.weight");
    let pooled = r
        .shape("time_text_embed.text_embedder.linear_1.weight")
        .or_else(|| r.shape("y_embedder.mlp.0.weight"));
    Ok(match (ctx, pooled) {
        (Some(c), Some(p)) if c.len() == 2 && p.len() == 2 => Some((c[1], p[1])),
        _ => None,
    })
}

/// T5's `d_model` from its embedding table, without loading it.
fn t5_width(parts: &PipelineParts) -> Result<Option<usize>> {
    let Some(w) = parts.get(Part::T5) else {
        return Ok(None);
    };
    let r = WeightsReader::open(Part::T5, w)?;
    Ok(r.shape("shared.weight")
        .or_else(|| r.shape("encoder.embed_tokens.weight"))
        .and_then(|s| s.get(1).copied()))
}

impl TextEncoders {
    /// Loads tokenizers and encoders. CLIP-L and CLIP-G (weights and tokenizers) are required;
    /// T5 is loaded when present and `opts.use_t5`. Widths are checked against each other and
    /// against the transformer when it is there.
    pub fn open(
        parts: &PipelineParts,
        dev: &Device,
        dtype: DType,
        opts: TextOptions,
    ) -> Result<Self> {
        if opts.max_sequence_length == 0 || opts.max_sequence_length > MAX_T5_TOKENS {
            return Err(Error::Input(format!(
                "max_sequence_length {} is outside 1..={MAX_T5_TOKENS}",
                opts.max_sequence_length
            )));
        }
        let wl = parts.weights(Part::ClipL)?;
        let wg = parts.weights(Part::ClipG)?;
        let tok_l = ClipTokenizer::from_dir(parts.tokenizer(Part::ClipL)?)?;
        let tok_g = ClipTokenizer::from_dir(parts.tokenizer(Part::ClipG)?)?;
        let clip_l = ClipTextEncoder::load(Part::ClipL, wl, dev, dtype)?;
        let clip_g = ClipTextEncoder::load(Part::ClipG, wg, dev, dtype)?;
        let (t5, tok_t5) = match (opts.use_t5, parts.get(Part::T5)) {
            (true, Some(w)) => (
                Some(T5Encoder::load(w, dev, dtype)?),
                Some(T5Tokenizer::from_dir(parts.tokenizer(Part::T5)?)?),
            ),
            _ => (None, None),
        };
        let dims = transformer_dims(parts)?;
        let joint_dim = match (&t5, dims) {
            (Some(t), _) => t.d_model(),
            (None, Some((joint, _))) => joint,
            (None, None) => match t5_width(parts)? {
                Some(w) => w,
                None => {
                    return Err(Error::Config(
                    "cannot tell the width of the text embeddings: neither T5 nor the transformer is present".into(),
                    ))
                }
            },
        };
        let enc = TextEncoders {
            tok_l,
            tok_g,
            tok_t5,
            clip_l,
            clip_g,
            t5,
            joint_dim,
            opts,
            dev: dev.clone(),
        };
        enc.check(dims)?;
        Ok(enc)
    }

    /// Shape agreement between the parts.
    fn check(&self, dims: Option<(usize, usize)>) -> Result<()> {
        let mismatch = |m: String| Err(Error::Config(format!("parts do not fit together: {m}")));
        let clip_w = self.clip_l.hidden_size() + self.clip_g.hidden_size();
        if clip_w > self.joint_dim {
            return mismatch(format!(
                "CLIP-L ({}) + CLIP-G ({}) features are wider than the T5/joint width {}",
                self.clip_l.hidden_size(),
                self.clip_g.hidden_size(),
                self.joint_dim
            ));
        }
        if let Some((joint, pooled)) = dims {
            if let Some(t5) = &self.t5 {
                if t5.d_model() != joint {
                    return mismatch(format!(
                        "T5 d_model {} but the transformer's joint_attention_dim is {joint}",
                        t5.d_model()
                    ));
                }
            }
            let p = self.clip_l.pooled_size() + self.clip_g.pooled_size();
            if p != pooled {
                return mismatch(format!(
                    "pooled CLIP-L ({}) + CLIP-G ({}) = {p}, but the transformer's pooled_projection_dim is {pooled}",
                    self.clip_l.pooled_size(),
                    self.clip_g.pooled_size()
                ));
            }
        }
        for (tok, clip, name) in [
            (&self.tok_l, &self.clip_l, "CLIP-L"),
            (&self.tok_g, &self.clip_g, "CLIP-G"),
        ] {
            if tok.vocab_size() > clip.config.vocab_size {
                return mismatch(format!(
                    "the {name} tokenizer has {} tokens, its encoder only {}",
                    tok.vocab_size(),
                    clip.config.vocab_size
                ));
            }
            if tok.max_length > clip.config.max_position_embeddings {
                return mismatch(format!(
                    "the {name} tokenizer makes {} tokens, its encoder has {} positions",
                    tok.max_length, clip.config.max_position_embeddings
                ));
            }
        }
        if let (Some(tok), Some(t5)) = (&self.tok_t5, &self.t5) {
            if tok.vocab_size() > t5.config.vocab_size {
                return mismatch(format!(
                    "the T5 tokenizer has {} tokens, the encoder only {}",
                    tok.vocab_size(),
                    t5.config.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// The options the encoders were opened with.
    pub fn options(&self) -> TextOptions {
        self.opts
    }

    /// Whether T5 runs (false when absent or disabled: its positions are zeros).
    pub fn has_t5(&self) -> bool {
        self.t5.is_some()
    }

    /// Width of `prompt_embeds` (T5's `d_model`, the transformer's `joint_attention_dim`).
    pub fn joint_dim(&self) -> usize {
        self.joint_dim
    }

    /// CLIP-L's pieces of `text` without BOS/EOS (CLIP-G's tokenizer splits alike; only the
    /// pad token differs).
    pub fn clip_pieces(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.tok_l.encode_full(text)?;
        Ok(ids[1..ids.len() - 1].to_vec())
    }

    /// Text positions the CLIP encoders fill (77): position `i < 77` holds CLIP token `i`.
    pub fn clip_length(&self) -> usize {
        self.tok_l.max_length
    }

    /// Width of `pooled`.
    pub fn pooled_dim(&self) -> usize {
        self.clip_l.pooled_size() + self.clip_g.pooled_size()
    }

    /// Every tokenizer's view of the prompt, padded and truncated as diffusers does.
    pub fn tokenize(&self, prompt: &str) -> Result<PromptTokens> {
        let t5 = match &self.tok_t5 {
            Some(t) => Some(t.tokenize(prompt, self.opts.max_sequence_length)?),
            None => None,
        };
        Ok(PromptTokens {
            clip_l: self.tok_l.tokenize(prompt)?,
            clip_g: self.tok_g.tokenize(prompt)?,
            t5,
        })
    }

    /// Encodes one prompt.
    ///
    /// # Shapes
    /// → `prompt_embeds` [1, 77 + T, joint_dim], `pooled` [1, pooled_dim], both f32, with
    /// T = `max_sequence_length`; `tokens` has 77 + T entries.
    pub fn encode(&self, prompt: &str) -> Result<PromptEncoding> {
        let toks = self.tokenize(prompt)?;
        let l = self.clip_l.encode(&toks.clip_l.ids)?;
        let g = self.clip_g.encode(&toks.clip_g.ids)?;
        let clip = Tensor::cat(&[&l.penultimate, &g.penultimate], 2)?;
        let clip_w = clip.dim(2)?;
        let clip = clip.pad_with_zeros(2, 0, self.joint_dim - clip_w)?;
        let t = self.opts.max_sequence_length;
        let t5 = match (&self.t5, &toks.t5) {
            (Some(enc), Some(tk)) => enc.encode(&tk.ids)?,
            _ => Tensor::zeros((1, t, self.joint_dim), DType::F32, &self.dev)?,
        };
        let prompt_embeds = Tensor::cat(&[&clip, &t5], 1)?;
        let pooled = Tensor::cat(&[&l.pooled, &g.pooled], 1)?;

        let cl = &toks.clip_l;
        let mut tokens: Vec<TokenInfo> = (0..cl.ids.len())
            .map(|i| TokenInfo {
                text: cl.tokens[i].clone(),
                encoder: TextEncoderKind::ClipL,
                is_padding: cl.is_padding[i],
                is_special: cl.is_special[i],
            })
            .collect();
        match &toks.t5 {
            Some(tk) => tokens.extend((0..tk.ids.len()).map(|i| TokenInfo {
                text: tk.tokens[i].clone(),
                encoder: TextEncoderKind::T5,
                is_padding: tk.is_padding[i],
                is_special: tk.is_special[i],
            })),
            None => tokens.extend((0..t).map(|_| TokenInfo {
                text: String::new(),
                encoder: TextEncoderKind::T5,
                is_padding: true,
                is_special: false,
            })),
        }
        let mut notes = vec![];
        if let Some(d) = &cl.dropped {
            notes.push(format!(
                "CLIP keeps {} tokens; dropped: \"{d}\"",
                self.tok_l.max_length
            ));
        }
        if let Some(d) = toks.t5.as_ref().and_then(|t| t.dropped.as_ref()) {
            notes.push(format!(
                "T5 keeps {t} tokens (--max-sequence-length); dropped: \"{d}\""
            ));
        }
        let truncated = (!notes.is_empty()).then(|| notes.join("; "));
        Ok(PromptEncoding {
            prompt_embeds,
            pooled,
            tokens,
            truncated,
        })
    }
}
