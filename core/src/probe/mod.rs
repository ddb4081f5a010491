//! Captures across a run (`ditlens probe`): the memory budget, the summary format, the capture
//! file, and the analyses and figures read from it. Model-independent; the probe runs live in
//! [`crate::embedded::probe`] and [`crate::sd3::probe`].

pub mod budget;
pub mod capture;
pub mod figures;
pub mod run;
pub mod summary;
pub mod views;

pub use budget::{
    parse_bytes, plan, Bytes, CaptureSize, HeadStorage, MemoryPlan, DEFAULT_MAX_MEMORY,
};
pub use capture::{sidecar_path, ProbeCapture};
pub use run::{keep_item, plan_probe, ProbeDims, ProbeOptions, ProbeSource};
pub use summary::{
    block_prefix, tensor_name, ProbeMode, ProbeSummary, StepInfo, TensorInfo, TokenInfo, TokenKind,
    WordInfo,
};
pub use views::{Feature, MapKind};
