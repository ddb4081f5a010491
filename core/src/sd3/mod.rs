//! Real SD3 / SD3.5 pipelines from the user's files: where the parts are, the tokenizers and
//! text encoders (CLIP-L, CLIP-G, T5) that build the transformer's text conditioning.

pub mod clip;
pub mod parts;
pub mod t5;
pub mod text;
pub mod tokenize;
mod weights;

pub use parts::{ModelForm, Part, PipelineParts, Weights};
pub use text::{
    PromptEncoding, PromptTokens, TextEncoderKind, TextEncoders, TextOptions, TokenInfo,
};
pub use tokenize::{ClipTokenizer, T5Tokenizer, Tokenized};
