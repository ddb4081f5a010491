//! The typed messages between the window and the model's worker thread.

use std::path::PathBuf;
use std::sync::Arc;

use ditlens_core::probe::{Feature, ProbeCapture};
use ditlens_core::segment::{Proposals, Segmentation};

/// Identifies one job, so late events of a replaced job can be told apart.
pub type JobId = u64;

/// An RGB picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

/// Which model the worker should hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ModelSource {
    /// A model built into the binary (`aligned`, `plain`).
    Embedded(String),
    /// A model on disk: a folder written by `ditlens train` / `export-model`, an SD3 diffusers
    /// pipeline folder, or an SD3 single `.safetensors` file.
    Folder(PathBuf),
}

impl ModelSource {
    pub fn label(&self) -> String {
        match self {
            ModelSource::Embedded(n) => format!("embedded {n}"),
            ModelSource::Folder(p) => format!(
                "{} {}",
                if p.is_file() { "file" } else { "folder" },
                p.file_name()
                    .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
            ),
        }
    }
}

/// Facts about the loaded model shown in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub source: ModelSource,
    pub variant: String,
    pub layers: usize,
    pub heads: usize,
    pub image_size: usize,
    pub text_len: usize,
    pub expert_layer: usize,
    /// The model analyses a picture's centred square (SD3's real-image analysis); the embedded
    /// model squashes the whole picture instead.
    pub centre_crop: bool,
}

impl Picture {
    /// The largest centred square of the picture (itself when it is square).
    pub fn centre_square(&self) -> Picture {
        let m = self.width.min(self.height);
        if self.width == self.height {
            return self.clone();
        }
        let (x0, y0) = ((self.width - m) / 2, (self.height - m) / 2);
        let mut rgb = Vec::with_capacity(m * m * 3);
        for y in y0..y0 + m {
            let row = (y * self.width + x0) * 3;
            rgb.extend_from_slice(&self.rgb[row..row + m * 3]);
        }
        Picture {
            rgb,
            width: m,
            height: m,
        }
    }
}

/// Settings of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateJob {
    pub prompt: String,
    pub seed: u64,
    pub steps: usize,
    pub guidance: f64,
}

/// An image to analyse: captured at every step, segmented with the classes, proposals, and,
/// when the exact ground truth is known (a sample scene), segmentation quality per layer.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyseJob {
    pub picture: Picture,
    pub classes: Vec<String>,
    pub seed: u64,
    pub steps: usize,
    pub layer: usize,
    pub threshold: f32,
    /// Class name per ground-truth label value, and the label map (a sample scene).
    pub truth: Option<(Vec<String>, Vec<u8>)>,
}

/// The perturbation experiment: the same seed with and without the I2T blur.
#[derive(Debug, Clone, PartialEq)]
pub struct PerturbJob {
    pub generate: GenerateJob,
    pub layers: Vec<usize>,
    pub sigma: f64,
    pub kernel: usize,
    /// Perturbed-guidance scale; `None` blurs every forward.
    pub scale: Option<f64>,
}

/// What to write, and where.
#[derive(Debug, Clone)]
pub enum ExportJob {
    /// Label PNG, colour overlay and one PNG per class, next to `path` (the label PNG).
    Masks {
        path: PathBuf,
        picture: Picture,
        labels: Vec<u8>,
        classes: Vec<String>,
    },
    /// Layer × head grid of one token (PNG, or SVG by extension).
    HeadGrid {
        path: PathBuf,
        capture: Arc<ProbeCapture>,
        step: usize,
        token: usize,
        t2i: bool,
    },
    /// One head-mean map per token at a layer.
    TokenGrid {
        path: PathBuf,
        capture: Arc<ProbeCapture>,
        step: usize,
        layer: usize,
        t2i: bool,
    },
    /// Attention mass or value-norm figure at a step.
    Plot {
        path: PathBuf,
        capture: Arc<ProbeCapture>,
        step: usize,
        value_norms: bool,
    },
    /// The captured tensors (safetensors + JSON sidecar).
    Capture {
        path: PathBuf,
        capture: Arc<ProbeCapture>,
    },
    /// A screenshot of the window.
    Screenshot { path: PathBuf, picture: Picture },
    /// Everything the window shows, into one folder.
    All(Box<super::export_all::ExportBundle>),
}

/// Commands the window sends to the worker.
#[derive(Debug, Clone)]
pub enum Command {
    OpenModel(ModelSource),
    /// Decode an image file (a dropped or opened file).
    LoadImage(JobId, PathBuf),
    Generate(JobId, GenerateJob),
    Analyse(JobId, Box<AnalyseJob>),
    /// Open-vocabulary masks at another layer.
    Segment {
        job: JobId,
        picture: Picture,
        classes: Vec<String>,
        layer: usize,
    },
    /// Unsupervised proposals (coalesced: only the newest pending one runs).
    Unsupervised {
        job: JobId,
        picture: Picture,
        layer: usize,
        threshold: f32,
    },
    /// PCA of image Q/K/V of the current capture at a step and layer.
    Pca {
        job: JobId,
        step: usize,
        layer: usize,
        feature: Feature,
    },
    Perturb(JobId, PerturbJob),
    Export(JobId, Box<ExportJob>),
    /// Stop the running job after its current step.
    Cancel,
    Shutdown,
}

/// Events the worker sends back.
#[derive(Debug, Clone)]
pub enum Event {
    ModelLoaded(ModelInfo),
    ImageLoaded(JobId, PathBuf, Picture),
    Progress {
        job: JobId,
        done: usize,
        total: usize,
        what: String,
    },
    /// The sample after a sampling step (generation shown as it forms).
    StepImage {
        job: JobId,
        step: usize,
        picture: Picture,
    },
    /// Everything captured over the run, and the final image of a generation.
    Captured {
        job: JobId,
        capture: Arc<ProbeCapture>,
        picture: Option<Picture>,
    },
    Segmented(JobId, Box<Segmentation>),
    Proposals(JobId, Box<Proposals>),
    /// mIoU per layer against the exact ground truth.
    LayerScores(JobId, Vec<f64>),
    Pca {
        job: JobId,
        step: usize,
        layer: usize,
        picture: Picture,
        explained: [f32; 3],
    },
    Perturbed {
        job: JobId,
        plain: Picture,
        perturbed: Picture,
    },
    Exported(JobId, String),
    Finished(JobId),
    Cancelled(JobId),
    Failed {
        job: Option<JobId>,
        what: String,
        error: String,
    },
}
