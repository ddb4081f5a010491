//! Command-line definitions (clap) of the `ditlens` binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod analysis;
pub use analysis::*;

/// DiT Lens: look inside the joint attention of multi-modal diffusion transformers.
#[derive(Debug, Parser)]
#[command(name = "ditlens", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand: open the explorer window (the same options as `ditlens gui`).
    #[command(flatten)]
    pub window: GuiArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the explorer window (also what `ditlens` with no subcommand does).
    Gui(GuiArgs),
    /// Raw transformer forward on given inputs, writing the output and every block's captures.
    Forward(ForwardArgs),
    /// Time a forward of an SD3-medium-size random-weight model with and without capture.
    Bench(BenchArgs),
    /// Time training steps of the embedded recipe with each gradient engine (candle = baseline).
    BenchTrain(BenchTrainArgs),
    /// Generate an image from a prompt with the embedded model (or --model DIR).
    Generate(GenerateArgs),
    /// Open-vocabulary segmentation of an image from one block's I2T maps.
    Segment(SegmentArgs),
    /// Evaluate segmentation on a dataset folder (images/, labels/, classes.txt).
    Eval(EvalArgs),
    /// Write a held-out set of shapes-world scenes as an evaluation dataset.
    MakeDataset(MakeDatasetArgs),
    /// Train the embedded model on the shapes world (reproducible from its seed, resumable).
    Train(TrainArgs),
    /// Turn a training run into a shippable model folder (smaller dtype, expert layer set).
    ExportModel(ExportModelArgs),
    /// Train the shape classifier that judges generated samples (the generation metric).
    TrainJudge(TrainJudgeArgs),
    /// Generate the sample sheet (32 prompts × seeds) and score colour and shape.
    Samples(SamplesArgs),
    /// Capture attention across a generation or a noised image (steps × blocks, within a budget).
    Probe(ProbeArgs),
    /// Attention mass per block and head (I2I, I2T, T2I, T2T) against the uniform share.
    Mass(MassArgs),
    /// Mean value norms per block: image, all text and prompt tokens.
    ValueNorms(ValueNormsArgs),
    /// PCA of image-token Q/K/V at blocks, as RGB.
    Pca(PcaArgs),
    /// Layer × head small multiples of one token's I2T (or T2I) map.
    HeadGrid(HeadGridArgs),
    /// One head-mean map per token at a block.
    TokenGrid(TokenGridArgs),
    /// Generate with each block's I2T perturbed in turn and score how the named objects survive.
    PerturbSweep(PerturbSweepArgs),
    /// Encode a prompt with an SD3 model's CLIP-L, CLIP-G and T5 exactly as diffusers does.
    EncodePrompt(EncodePromptArgs),
}

#[derive(Debug, Args)]
pub struct EncodePromptArgs {
    /// SD3 model: a diffusers pipeline folder, or a single bundled .safetensors file with
    /// `tokenizer{,_2,_3}/` folders beside it.
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    #[command(flatten)]
    pub text: Sd3TextArgs,
    /// Output safetensors with `prompt_embeds` and `pooled_prompt_embeds` (f32).
    #[arg(long)]
    pub out: PathBuf,
    /// Token list (JSON); default: next to --out with the `.json` extension.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Dtype the encoders run in (outputs are always f32).
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
}

/// How an SD3 pipeline encodes prompts.
#[derive(Debug, Args)]
pub struct Sd3TextArgs {
    /// SD3: T5 tokens, 1 to 512 (77 as Stability's reference and Seg4Diff; diffusers defaults
    /// to 256).
    #[arg(long, default_value_t = 77)]
    pub max_sequence_length: usize,
    /// SD3: leave T5 out (its positions become zeros).
    #[arg(long)]
    pub no_t5: bool,
}

impl Sd3TextArgs {
    pub fn options(&self) -> ditlens_core::sd3::TextOptions {
        ditlens_core::sd3::TextOptions {
            max_sequence_length: self.max_sequence_length,
            use_t5: !self.no_t5,
        }
    }
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
    /// Timed repetitions of each case, interleaved, best kept (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Write the figures as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Batch size (the shipped recipes use 16).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Timed steps per engine (after the warm-up).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed warm-up steps per engine.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// The plain recipe (flow matching only) instead of the aligned one.
    #[arg(long)]
    pub plain: bool,
    /// Write the figures as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Run folder: checkpoints (a loadable model), optimiser state, loss.csv.
    #[arg(long)]
    pub out: PathBuf,
    /// Model + training config (JSON, as written to OUT/train_state.json); default: the shipped recipe.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Total optimisation steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed of data, noise and initialisation.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue the run saved in this folder.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Block whose head-mean I2T maps are aligned with the object masks (MAGNET loss).
    #[arg(long)]
    pub mask_align_layer: Option<usize>,
    /// Weight of the mask-alignment loss (0 = plain flow matching).
    #[arg(long)]
    pub mask_align_weight: Option<f64>,
    /// First step with the mask-alignment loss (flow matching only before it).
    #[arg(long)]
    pub mask_align_start: Option<usize>,
    /// Linear warm-up steps before the cosine decay (the recipe's by default).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Plain flow matching (no mask alignment), as the shipped plain model.
    #[arg(long)]
    pub plain: bool,
    /// Batch size.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Steps between checkpoints.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Start from a model's weights: a model folder, `embedded:plain` or `embedded:aligned`;
    /// `scratch` = random initialisation. Default: the recipe's (both shipped recipes start from scratch).
    #[arg(long)]
    pub init: Option<String>,
    /// Gradient engine: `cpu` (the hand-written CPU engine, the default on the CPU) or `candle`
    /// (candle's autograd; the only one on CUDA). Both compute the same gradients.
    #[arg(long, value_enum)]
    pub engine: Option<EngineArg>,
}

/// `--engine` of `train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    Cpu,
    Candle,
}

#[derive(Debug, Args)]
pub struct ExportModelArgs {
    /// Run or model folder written by `ditlens train`.
    #[arg(long)]
    pub from: PathBuf,
    /// Model folder to write (e.g. assets/models/aligned).
    #[arg(long)]
    pub out: PathBuf,
    /// Weight dtype of the written model.
    #[arg(long, value_enum, default_value_t = DtypeArg::F16)]
    pub dtype: DtypeArg,
    /// Record this block as the model's default segmentation layer (from `eval --layers all`).
    #[arg(long)]
    pub expert_layer: Option<usize>,
}

#[derive(Debug, Args)]
pub struct TrainJudgeArgs {
    /// Weights to write (safetensors); a JSON report is written beside it.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1500)]
    pub steps: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Held-out scenes for the accuracy figure.
    #[arg(long, default_value_t = 2000)]
    pub heldout: usize,
}

#[derive(Debug, Args)]
pub struct SamplesArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sheet picture (PNG): one row per 4 prompts, seeds side by side.
    #[arg(long)]
    pub out: PathBuf,
    /// Per-sample scores and rates (JSON).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Shape-judge weights (default: the embedded judge).
    #[arg(long)]
    pub judge: Option<PathBuf>,
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub seeds: Vec<u64>,
    #[arg(long, default_value_t = 28)]
    pub steps: usize,
    #[arg(long, default_value_t = 4.0)]
    pub guidance: f64,
}

/// Which embedded-family model to use.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A model folder written by `ditlens train` (default: the embedded model); `generate`,
    /// `segment` and `eval` also take an SD3 pipeline folder (`model_index.json`) or an SD3
    /// single `.safetensors` file.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Which embedded model: aligned (default) or plain.
    #[arg(long)]
    pub embedded: Option<String>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, required_unless_present = "prompt_embeds")]
    pub prompt: Option<String>,
    /// SD3: negative prompt (encoded like the prompt; diffusers' default is "").
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// SD3: prompt embeddings instead of --prompt: `prompt_embeds` [1,L,D] and
    /// `pooled_prompt_embeds` [1,P] (as `encode-prompt` writes), optionally with
    /// `negative_prompt_embeds` / `negative_pooled_prompt_embeds`.
    #[arg(long, value_name = "EMB.safetensors", conflicts_with = "prompt")]
    pub prompt_embeds: Option<PathBuf>,
    /// SD3: the negative prompt's embeddings (`prompt_embeds`, `pooled_prompt_embeds`).
    #[arg(long, value_name = "EMB.safetensors", requires = "prompt_embeds")]
    pub negative_embeds: Option<PathBuf>,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// SD3: initial noise (tensor `noise`, [1, C, h, w]) instead of --seed.
    #[arg(long, value_name = "NOISE.safetensors", conflicts_with = "seed")]
    pub init_noise: Option<PathBuf>,
    /// SD3: write the final latents (tensor `latents`, before the VAE decode).
    #[arg(long, value_name = "OUT.safetensors")]
    pub save_latents: Option<PathBuf>,
    /// SD3: weight dtype (activations follow; f32 on CPU for bf16).
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
    #[command(flatten)]
    pub text: Sd3TextArgs,
    #[arg(long, default_value_t = 28)]
    pub steps: usize,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 4.0)]
    pub guidance: f64,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Enlarge the PNG by this factor (nearest neighbour) for viewing.
    #[arg(long, default_value_t = 1)]
    pub upscale: u32,
    #[command(flatten)]
    pub blur: BlurArgs,
    /// Perturbed guidance on top of CFG: v_cfg + S·(v(x; A) − v(x; Ã)), Ã = I2T blurred at
    /// --blur-i2t (which then perturbs only that extra forward).
    #[arg(long, value_name = "S", requires = "blur_i2t")]
    pub perturb_guidance: Option<f64>,
}

#[derive(Debug, Args)]
pub struct SegmentArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image to segment (any size; squashed to the model's input).
    #[arg(long)]
    pub image: PathBuf,
    /// Comma-separated class names, e.g. "circle,square,background".
    #[arg(long, required_unless_present = "unsupervised")]
    pub classes: Option<String>,
    /// Unsupervised proposals from the empty prompt's BOS/EOS/padding maps (no class names).
    #[arg(long, conflicts_with = "classes")]
    pub unsupervised: bool,
    /// Symmetric-KL threshold under which unsupervised maps merge.
    #[arg(long, default_value_t = 0.1)]
    pub threshold: f32,
    /// Block whose I2T maps are read (default: the model's expert layer).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Seed of the noise added to the image.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Step index whose σ noises the image (of --steps).
    #[arg(long, default_value_t = 20)]
    pub step_index: usize,
    #[arg(long, default_value_t = 28)]
    pub steps: usize,
    /// 8-bit label PNG (value = index in --classes).
    #[arg(long)]
    pub out: PathBuf,
    /// Colour overlay PNG.
    #[arg(long)]
    pub overlay: Option<PathBuf>,
    /// JSON summary (classes, layer, σ, pixel shares).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// SD3: also run T5 (Seg4Diff's evaluation disables it; only the 77 CLIP positions are read
    /// either way).
    #[arg(long)]
    pub t5: bool,
    /// SD3: weight dtype.
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Dataset folder: images/NAME.png|jpg, labels/NAME.png, classes.txt.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Block to evaluate (default: the model's expert layer).
    #[arg(long, conflicts_with = "layers")]
    pub layer: Option<usize>,
    /// `all` evaluates every block and reports the best.
    #[arg(long)]
    pub layers: Option<String>,
    /// Evaluate unsupervised proposals (Hungarian matching to the classes present).
    #[arg(long, conflicts_with = "layers")]
    pub unsupervised: bool,
    /// Symmetric-KL merge threshold for --unsupervised.
    #[arg(long, default_value_t = 0.1)]
    pub threshold: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Step index whose σ noises each image (of --steps).
    #[arg(long, default_value_t = 20)]
    pub step_index: usize,
    #[arg(long, default_value_t = 28)]
    pub steps: usize,
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// SD3: also run T5 (Seg4Diff's evaluation disables it; only the 77 CLIP positions are read
    /// either way).
    #[arg(long)]
    pub t5: bool,
    /// SD3: weight dtype.
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    pub dtype: DtypeArg,
}

#[derive(Debug, Args)]
pub struct MakeDatasetArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// Seed (use one never used in training for a held-out set).
    #[arg(long, default_value_t = 777)]
    pub seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Area-matched object sizes: every shape covers the same area on average (stars drawn
    /// larger, squares smaller), so a model that names objects by their size fails here.
    #[arg(long)]
    pub area_matched: bool,
}

/// The centre view of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ViewArg {
    Map,
    Segment,
    Perturb,
    Pca,
}

/// Options of the explorer window.
#[derive(Debug, Args, Default)]
pub struct GuiArgs {
    /// A model folder (written by `ditlens train` / `export-model`) instead of the embedded model.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Which embedded model to open (`aligned` or `plain`).
    #[arg(long, value_name = "NAME")]
    pub embedded: Option<String>,
    /// Generate this prompt on start.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Seed of the generation.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Analyse this image on start.
    #[arg(long, value_name = "IMG")]
    pub image: Option<PathBuf>,
    /// Class names for --image, comma separated.
    #[arg(long)]
    pub classes: Option<String>,
    /// Draw a random shapes-world scene and analyse it on start.
    #[arg(long)]
    pub sample_scene: bool,
    /// Layer to select once the job is done.
    #[arg(long)]
    pub layer: Option<usize>,
    /// Token to select (a word of the prompt or a text position).
    #[arg(long)]
    pub token: Option<String>,
    /// Head to select once the job is done (default: the mean over heads).
    #[arg(long)]
    pub head: Option<usize>,
    /// Show T2I maps (the text token's attention over image keys) instead of I2T.
    #[arg(long)]
    pub t2i: bool,
    /// Captured step to show, by its schedule index (default: the paper's step).
    #[arg(long)]
    pub step: Option<usize>,
    /// Patch to click once the job is done, `COL,ROW` on the token grid: ranks the tokens there.
    #[arg(long, value_name = "COL,ROW")]
    pub pixel: Option<String>,
    /// Centre view to show.
    #[arg(long, value_enum)]
    pub view: Option<ViewArg>,
    /// Wait for the job, save a screenshot of the window here and exit (non-zero if the job failed).
    #[arg(long, value_name = "OUT.png")]
    pub screenshot: Option<PathBuf>,
    /// After the job (and --perturb), write everything the window shows into this folder
    /// (image, masks, figures as PNG + SVG, CSVs, captured tensors, a screenshot) and exit.
    #[arg(long, value_name = "DIR")]
    pub export_all: Option<PathBuf>,
    /// After the job, run the perturbation with the I2T blur at these layers (comma separated).
    #[arg(long, value_name = "LAYERS", value_delimiter = ',')]
    pub perturb: Option<Vec<usize>>,
    /// Measure N frames after the job and print mean and p95 frame time, then exit.
    #[arg(long, value_name = "N")]
    pub bench_ui: Option<usize>,
    /// With --bench-ui: fill the layer × head grid with SD3-medium-size data (24 × 24 thumbnails).
    #[arg(long)]
    pub bench_sd3_grid: bool,
}
