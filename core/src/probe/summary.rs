//! The JSON summary of a probe: every text token with its string and role, word → token groups,
//! the σ and model timestep of each kept step, model sizes, the memory plan and the tensor list.

use serde::{Deserialize, Serialize};

use super::budget::MemoryPlan;

/// Version tag of the capture format.
pub const FORMAT: &str = "ditlens-probe/1";

/// Role of a text position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Bos,
    /// A piece of a prompt word.
    Word,
    Eos,
    Padding,
}

/// One text position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub index: usize,
    /// The token's string, special tokens included (`<bos>`, `<eos>`, padding).
    pub string: String,
    pub kind: TokenKind,
    /// Index into `words` for a word piece.
    pub word: Option<usize>,
}

/// A prompt word and the token positions whose pieces form it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WordInfo {
    pub word: String,
    pub tokens: Vec<usize>,
}

/// One kept sampling step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepInfo {
    /// Step index in the schedule (0 = noisiest).
    pub index: usize,
    pub sigma: f32,
    /// Model timestep (σ·1000).
    pub timestep: f32,
}

/// Name and shape of one stored tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
}

/// How the probed latents were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMode {
    /// Sampled from the prompt; each kept step's forward is the sampler's own.
    Generate,
    /// A given image noised to each kept step's σ with one seeded ε.
    Image,
}

/// Everything a reader of a capture needs besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSummary {
    pub format: String,
    pub mode: ProbeMode,
    pub prompt: String,
    pub seed: u64,
    pub steps: usize,
    /// CFG scale of a generation (`None` for an image).
    pub guidance: Option<f64>,
    /// Which forward the tensors come from.
    pub branch: String,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    /// Image tokens N.
    pub n_img: usize,
    /// Text tokens L.
    pub n_txt: usize,
    /// Patch grid (rows, columns): N = rows · columns.
    pub grid: [usize; 2],
    pub patch_size: usize,
    pub tokens: Vec<TokenInfo>,
    pub words: Vec<WordInfo>,
    pub kept_steps: Vec<StepInfo>,
    pub qkv_layers: Vec<usize>,
    /// The model's default segmentation block, when it has one.
    #[serde(default)]
    pub expert_layer: Option<usize>,
    pub memory: MemoryPlan,
    /// Column order of `row_share`.
    pub row_share_columns: Vec<String>,
    /// Axis order of the tensors.
    pub layout: String,
    pub tensors: Vec<TensorInfo>,
    pub seconds: f64,
}

/// The engine's name of a block tensor at a kept step: `step.{s}.block.{i}.{what}`
/// (`what` as [`crate::capture::BlockCapture::named`] gives it, e.g. `attn.i2t`).
pub fn tensor_name(step: usize, block: usize, what: &str) -> String {
    format!("{}{what}", block_prefix(step, block))
}

/// Prefix of every tensor of block `block` at step `step`.
pub fn block_prefix(step: usize, block: usize) -> String {
    format!("step.{step}.block.{block}.")
}

impl ProbeSummary {
    /// Index into `kept_steps` of schedule step `step`, or an error listing the kept ones.
    pub fn kept(&self, step: usize) -> crate::Result<&StepInfo> {
        self.kept_steps
            .iter()
            .find(|s| s.index == step)
            .ok_or_else(|| {
                crate::Error::Input(format!(
                    "step {step} was not kept in this capture (kept: {})",
                    self.kept_steps
                        .iter()
                        .map(|s| s.index.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// One flag per text token: a prompt word piece (not BOS, EOS or padding).
    pub fn prompt_mask(&self) -> Vec<bool> {
        self.tokens
            .iter()
            .map(|t| t.kind == TokenKind::Word)
            .collect()
    }

    /// Resolves a token given as a position (`3`) or a prompt word (`circle`, first occurrence).
    pub fn token_index(&self, token: &str) -> crate::Result<usize> {
        if let Ok(i) = token.parse::<usize>() {
            if i < self.n_txt {
                return Ok(i);
            }
            return Err(crate::Error::Input(format!(
                "token {i} does not exist (the text has positions 0..{})",
                self.n_txt.saturating_sub(1)
            )));
        }
        self.tokens
            .iter()
            .find(|t| t.string.eq_ignore_ascii_case(token))
            .map(|t| t.index)
            .ok_or_else(|| {
                crate::Error::Input(format!(
                    "token `{token}` is not in the prompt (tokens: {})",
                    self.tokens
                        .iter()
                        .map(|t| t.string.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_engine() {
        assert_eq!(tensor_name(20, 3, "attn.i2t"), "step.20.block.3.attn.i2t");
        let b = crate::capture::BlockCapture::default();
        assert!(b.named(&block_prefix(1, 2)).is_empty());
    }
}
