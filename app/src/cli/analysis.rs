//! Command-line definitions of the analysis commands: `probe`, `mass`, `value-norms`, `pca`,
//! `head-grid`, `token-grid` and `perturb-sweep`.

use std::path::PathBuf;

use clap::Args;

use super::ModelArgs;

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt: generated from, or paired with --image.
    #[arg(long)]
    pub prompt: String,
    /// Probe this image (noised to each kept step's σ) instead of a generation.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Seed of the generation's noise, or of the ε that noises --image.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 28)]
    pub steps: usize,
    /// `all` or a comma list of step indices (0 = noisiest).
    #[arg(long, default_value = "all")]
    pub steps_to_keep: String,
    /// Classifier-free guidance scale of a generation.
    #[arg(long, default_value_t = 4.0)]
    pub guidance: f64,
    /// Blocks whose image-token Q, K, V are kept (`all` or a comma list; default none).
    #[arg(long)]
    pub qkv_layers: Option<String>,
    /// Budget for the kept tensors (e.g. 512M, 2G): per-head maps when they fit, else head means.
    #[arg(long, default_value = "2G")]
    pub max_memory: String,
    /// Capture file (safetensors; the summary is embedded and written beside it as JSON).
    #[arg(long)]
    pub out: PathBuf,
    /// Where the JSON summary goes (default: OUT with `.json`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write the generated image (PNG).
    #[arg(long)]
    pub image_out: Option<PathBuf>,
}

/// A capture to analyse: a `probe` file, or a probe run now with the prompt (and image).
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// A capture written by `ditlens probe` (instead of running the model).
    #[arg(long, conflicts_with_all = ["prompt", "image"])]
    pub capture: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt to generate from (or to pair with --image).
    #[arg(long, required_unless_present = "capture")]
    pub prompt: Option<String>,
    /// Analyse this image noised to the step's σ instead of a generation.
    #[arg(long)]
    pub image: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 28)]
    pub steps: usize,
    #[arg(long, default_value_t = 4.0)]
    pub guidance: f64,
    /// Step index to analyse (default: 20 of 28, the paper's t = 8; from a capture, the kept
    /// step nearest to it).
    #[arg(long)]
    pub step: Option<usize>,
}

/// Figure outputs shared by the plotting commands.
#[derive(Debug, Args)]
pub struct FigureArgs {
    /// Figure (PNG).
    #[arg(long)]
    pub out: PathBuf,
    /// The same figure as SVG.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MassArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub figure: FigureArgs,
    /// Shares per block and head (CSV).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValueNormsArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub figure: FigureArgs,
    /// Mean norms per block (CSV).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PcaArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub figure: FigureArgs,
    /// Blocks (`all` or a comma list; default: the model's expert layer).
    #[arg(long)]
    pub layers: Option<String>,
    /// Features, comma list of q, k, v.
    #[arg(long, default_value = "q,k,v")]
    pub features: String,
    /// Explained variance per block and feature (JSON).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HeadGridArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub figure: FigureArgs,
    /// Text token: a position (`3`) or a prompt word (`circle`).
    #[arg(long)]
    pub token: String,
    /// Which map: i2t (image queries attending the token) or t2i.
    #[arg(long, default_value = "i2t")]
    pub map: String,
}

#[derive(Debug, Args)]
pub struct TokenGridArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub figure: FigureArgs,
    /// Block (default: the model's expert layer).
    #[arg(long)]
    pub layer: Option<usize>,
    /// `all` (special tokens too), `prompt` (words only) or a comma list of positions.
    #[arg(long, default_value = "all")]
    pub tokens: String,
    #[arg(long, default_value = "i2t")]
    pub map: String,
}

#[derive(Debug, Args)]
pub struct PerturbSweepArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt; the objects it names are what the score looks for.
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 28)]
    pub steps: usize,
    #[arg(long, default_value_t = 4.0)]
    pub guidance: f64,
    /// Sweep perturbed guidance with this scale instead of blurring every forward.
    #[arg(long)]
    pub perturb_guidance: Option<f64>,
    /// Blocks to perturb one at a time (`all` or a comma list).
    #[arg(long, default_value = "all")]
    pub layers: String,
    #[arg(long, default_value_t = 9.0)]
    pub blur_sigma: f64,
    #[arg(long, default_value_t = 5)]
    pub blur_kernel: usize,
    #[arg(long)]
    pub blur_renorm: bool,
    /// Block whose I2T maps score the results (default: the model's expert layer).
    #[arg(long)]
    pub seg_layer: Option<usize>,
    #[command(flatten)]
    pub figure: FigureArgs,
    /// Scores per block (JSON).
    #[arg(long)]
    pub json: Option<PathBuf>,
}
