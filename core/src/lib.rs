//! DiT Lens core: MM-DiT models, typed attention capture, perturbation, analysis and pipelines.
//! No GUI dependency; the `ditlens` binary (CLI and window) is built on it.

pub mod analysis;
pub mod capture;
pub mod embedded;
pub mod error;
pub mod export;
pub mod figure;
pub mod io;
pub mod metrics;
pub mod mmdit;
pub mod named_backend;
pub mod perturb;
pub mod probe;
pub mod schedule;
pub mod sd3;
pub mod segment;
pub mod shapes;

pub use error::{Error, Result};
