//! Seg4Diff analyses of captured joint attention, on plain `f32` buffers.
//!
//! Attention mass per block and head ([`mass`]), value norms ([`value_norm`]), PCA of image-token
//! features ([`pca`]) and unsupervised segmentation from token maps ([`unsupervised`]).
//!
//! Every function works on plain `f32` buffers (row-major, shapes given by the caller) and
//! returns an [`AnalysisError`] instead of panicking on bad input.

pub mod error;
pub mod mass;
pub mod pca;
pub mod unsupervised;
pub mod value_norm;

pub use error::{AnalysisError, Result};
pub use mass::{AttentionMass, LayerMass, MassShares};
pub use pca::{pca_rgb, PcaImage, PCA_COMPONENTS};
pub use unsupervised::{
    segment_maps, symmetric_kl, Segmentation, DEFAULT_MERGE_THRESHOLD, KL_EPSILON,
};
pub use value_norm::{layer_value_norm, prompt_mask, LayerValueNorm, ValueNormDims, ValueNorms};
