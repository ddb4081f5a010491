//! Command-line definitions (clap) of the `ditlens` binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// DiT Lens: look inside the joint attention of multi-modal diffusion transformers.
#[derive(Debug, Parser)]
#[command(name = "ditlens", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Raw transformer forward on given inputs, writing the output and every block's captures.
    Forward(ForwardArgs),
    /// Time a forward of an SD3-medium-size random-weight model with and without capture.
    Bench(BenchArgs),
}

/// Model dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
}

impl DtypeArg {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            DtypeArg::F32 => candle_core::DType::F32,
            DtypeArg::F16 => candle_core::DType::F16,
            DtypeArg::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// I2T blur perturbation flags (paper §3.3).
#[derive(Debug, Args)]
pub struct BlurArgs {
    /// Comma list of 0-based blocks whose I2T attention is blurred along the text axis.
    #[arg(long, value_delimiter = ',', value_name = "LAYERS")]
    pub blur_i2t: Vec<usize>,
    /// Gaussian σ of the blur, in text positions.
    #[arg(long, default_value_t = 9.0)]
    pub blur_sigma: f64,
    /// Odd kernel size of the blur.
    #[arg(long, default_value_t = 5)]
    pub blur_kernel: usize,
    /// Divide each image-query row by its new sum after blurring.
    #[arg(long)]
    pub blur_renorm: bool,
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Transformer checkpoint: single file, diffusers folder, sharded index or pipeline root.
    #[arg(long)]
    pub model: PathBuf,
    /// diffusers-style transformer config.json (overrides heads for a single file).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Inputs (f32): hidden_states [B,C,H,W], timestep [B], encoder_hidden_states [B,L,Dj],
    /// pooled_projections [B,Dp].
    #[arg(long)]
    pub inputs: PathBuf,
    /// Output safetensors; a JSON sidecar is written next to it (same name, `.json`).
    #[arg(long)]
    pub out: PathBuf,
    /// Model weights dtype (probabilities are always f32).
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    #[command(flatten)]
    pub blur: BlurArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Image sizes in pixels (latent = size/8, patch 2).
    #[arg(long, value_delimiter = ',', default_values_t = [256usize, 512])]
    pub sizes: Vec<usize>,
    /// Joint blocks (SD3-medium: 24).
    #[arg(long, default_value_t = 24)]
    pub layers: usize,
    /// Heads of 64 channels (SD3-medium: 24, i.e. hidden 1536).
    #[arg(long, default_value_t = 24)]
    pub heads: usize,
    /// Text tokens (SD3: 154).
    #[arg(long, default_value_t = 154)]
    pub text_tokens: usize,
    /// Timed repetitions of each case (after one warm-up).
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Write the figures as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}
