//! Captures across a run (`ditlens probe`): the memory budget, the summary format, the capture
//! file, and the analyses and figures read from it. Model-independent; the embedded model's
//! probe run lives in [`crate::embedded::probe`].

pub mod budget;
pub mod capture;
pub mod figures;
pub mod summary;
pub mod views;

pub use budget::{
    parse_bytes, plan, Bytes, CaptureSize, HeadStorage, MemoryPlan, DEFAULT_MAX_MEMORY,
};
pub use capture::{sidecar_path, ProbeCapture};
pub use summary::{
    block_prefix, tensor_name, ProbeMode, ProbeSummary, StepInfo, TensorInfo, TokenInfo, TokenKind,
    WordInfo,
};
pub use views::{Feature, MapKind};
