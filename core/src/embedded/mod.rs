//! The embedded default model: a tiny SD3-architecture MM-DiT in pixel space with a word-level
//! text encoder, trained by the project on the shapes world.

pub mod config;
pub mod cpu_train;
pub mod export;
pub mod guidance;
pub mod model;
pub mod optim;
pub mod pipeline;
pub mod probe;
pub mod samples;
pub mod segment;
pub mod shape_judge;
pub mod sweep;
#[cfg(test)]
pub(crate) mod test_model;
pub mod text_encoder;
pub mod tokenizer;
pub mod train;

pub use config::{EmbeddedConfig, ToyConfig, TrainConfig};
pub use export::export_model;
pub use model::EmbeddedModel;
pub use tokenizer::{Tokens, WordTokenizer};
pub use train::{EngineKind, StepStats, Trainer};
