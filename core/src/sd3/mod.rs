//! Real SD3 / SD3.5 pipelines from the user's files: where the parts are, the tokenizers and
//! text encoders (CLIP-L, CLIP-G, T5), the 16-channel VAE, and generation / real-image analysis
//! over the `mmdit` transformer.

pub mod clip;
pub mod parts;
pub mod picture;
pub mod pipeline;
pub mod probe;
pub mod segment;
pub mod t5;
pub mod text;
pub mod tokenize;
pub mod vae;
mod vae_weights;
mod weights;

pub use parts::{ModelForm, Part, PipelineParts, Weights};
pub use pipeline::{Analysis, GenerateOptions, Sd3Generated, Sd3Pipeline, StepCapture};
pub use text::{
    PromptEncoding, PromptTokens, TextEncoderKind, TextEncoders, TextOptions, TokenInfo,
};
pub use tokenize::{ClipTokenizer, T5Tokenizer, Tokenized};
pub use vae::{Vae, VaeConfig};
