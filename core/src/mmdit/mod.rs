//! The SD3 / SD3.5 model family (MM-DiT and MMDiT-X) with typed attention capture.

pub mod attention;
pub mod block;
pub mod checkpoint;
pub mod config;
pub mod embed;
pub mod fused;
pub mod layers;
pub mod model;

pub use checkpoint::{Checkpoint, Layout};
pub use config::{MmditConfig, Variant};
pub use model::{load_mmdit, ForwardOptions, LoadedMmdit, Mmdit, MmditOutput};
