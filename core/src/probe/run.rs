//! What a probe run keeps, for any model: the options, where the latents come from, the kept
//! steps and memory plan, the per-step reduction of captures to what is stored, and the
//! summary's shared fields.

use candle_core::Tensor;

use super::budget::{plan, CaptureSize, HeadStorage, MemoryPlan, DEFAULT_MAX_MEMORY};
use crate::capture::{BlockCapture, CaptureSpec};
use crate::error::{Error, Result};

/// Where the probed latents come from.
#[derive(Debug, Clone, Copy)]
pub enum ProbeSource<'a> {
    /// Generate from the prompt (CFG); capture the prompt's branch at each kept step.
    Generate,
    /// An RGB image (`width × height`, squashed to the model's input) noised to each kept step's
    /// σ with one seeded ε; one forward per kept step with the prompt.
    Image {
        rgb: &'a [u8],
        width: usize,
        height: usize,
    },
}

/// What to capture and when.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub seed: u64,
    pub steps: usize,
    /// Schedule step indices to keep (`None` = all).
    pub keep: Option<Vec<usize>>,
    /// CFG scale when generating.
    pub guidance: f64,
    pub i2t: bool,
    pub t2i: bool,
    pub row_share: bool,
    pub value_norm: bool,
    /// Blocks whose image-token Q/K/V are kept.
    pub qkv_layers: Vec<usize>,
    /// Budget for the kept tensors in bytes.
    pub max_memory: u64,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            steps: 28,
            keep: None,
            guidance: 4.0,
            i2t: true,
            t2i: true,
            row_share: true,
            value_norm: true,
            qkv_layers: vec![],
            max_memory: DEFAULT_MAX_MEMORY,
        }
    }
}

/// Sizes of the probed model that the memory plan needs.
#[derive(Debug, Clone, Copy)]
pub struct ProbeDims {
    pub layers: usize,
    pub heads: usize,
    pub n_img: usize,
    pub n_txt: usize,
    pub hidden: usize,
}

/// Checks the options; returns the kept step indices and Q/K/V blocks (sorted, unique) and the
/// memory plan.
pub fn plan_probe(
    opts: &ProbeOptions,
    dims: ProbeDims,
) -> Result<(Vec<usize>, Vec<usize>, MemoryPlan)> {
    if opts.steps == 0 {
        return Err(Error::Input(
            "the number of steps must be at least 1".into(),
        ));
    }
    let mut keep = opts
        .keep
        .clone()
        .unwrap_or_else(|| (0..opts.steps).collect());
    keep.sort_unstable();
    keep.dedup();
    if keep.is_empty() {
        return Err(Error::Input("no step to keep".into()));
    }
    if let Some(&bad) = keep.iter().find(|&&s| s >= opts.steps) {
        return Err(Error::Input(format!(
            "step {bad} is outside 0..{} (--steps {})",
            opts.steps - 1,
            opts.steps
        )));
    }
    if let Some(&bad) = opts.qkv_layers.iter().find(|&&l| l >= dims.layers) {
        return Err(Error::Input(format!(
            "Q/K/V layer {bad} does not exist (the model has blocks 0..{})",
            dims.layers.saturating_sub(1)
        )));
    }
    let mut qkv = opts.qkv_layers.clone();
    qkv.sort_unstable();
    qkv.dedup();
    let size = CaptureSize {
        kept_steps: keep.len(),
        layers: dims.layers,
        heads: dims.heads,
        n_img: dims.n_img,
        n_txt: dims.n_txt,
        hidden: dims.hidden,
        qkv_layers: qkv.len(),
        i2t: opts.i2t,
        t2i: opts.t2i,
        row_share: opts.row_share,
        value_norm: opts.value_norm,
    };
    let memory = plan(&size, opts.max_memory)?;
    Ok((keep, qkv, memory))
}

impl ProbeOptions {
    /// What the forward passes capture at a kept step.
    pub fn capture_spec(&self, qkv_layers: &[usize]) -> CaptureSpec {
        CaptureSpec {
            i2t: self.i2t,
            t2i: self.t2i,
            row_share: self.row_share,
            value_norm: self.value_norm,
            qkv_layers: qkv_layers.to_vec(),
            ..Default::default()
        }
    }
}

/// Batch item `item` of a block's capture, with i2t/t2i averaged over heads for `HeadMean`.
/// Every tensor is copied, so no capture keeps the whole batch alive.
pub fn keep_item(b: &BlockCapture, item: usize, storage: HeadStorage) -> Result<BlockCapture> {
    let take = |t: &Option<Tensor>, mean: bool| -> Result<Option<Tensor>> {
        t.as_ref()
            .map(|t| {
                let t = t.narrow(0, item, 1)?;
                Ok(if mean && storage == HeadStorage::HeadMean {
                    t.mean_keepdim(1)?
                } else {
                    t.copy()?
                })
            })
            .transpose()
    };
    let a = &b.attn;
    let mut out = BlockCapture::default();
    out.attn.i2t = take(&a.i2t, true)?;
    out.attn.t2i = take(&a.t2i, true)?;
    out.attn.row_share = take(&a.row_share, false)?;
    out.attn.vnorm_img = take(&a.vnorm_img, false)?;
    out.attn.vnorm_txt = take(&a.vnorm_txt, false)?;
    out.attn.q_img = take(&a.q_img, false)?;
    out.attn.k_img = take(&a.k_img, false)?;
    out.attn.v_img = take(&a.v_img, false)?;
    Ok(out)
}

/// What differs between models in a probe's summary.
#[derive(Debug, Clone)]
pub struct SummaryParts {
    pub mode: super::ProbeMode,
    pub prompt: String,
    pub dims: ProbeDims,
    pub head_dim: usize,
    pub patch_size: usize,
    pub grid: (usize, usize),
    pub tokens: Vec<super::TokenInfo>,
    pub words: Vec<super::WordInfo>,
    pub kept_steps: Vec<super::StepInfo>,
    pub qkv_layers: Vec<usize>,
    pub expert_layer: Option<usize>,
    pub memory: MemoryPlan,
}

/// The summary of a probe run with `opts` (tensors and timing are filled in by the capture).
pub fn probe_summary(opts: &ProbeOptions, p: SummaryParts) -> super::ProbeSummary {
    use super::ProbeMode;
    super::ProbeSummary {
        format: super::summary::FORMAT.into(),
        mode: p.mode,
        prompt: p.prompt,
        seed: opts.seed,
        steps: opts.steps,
        guidance: matches!(p.mode, ProbeMode::Generate).then_some(opts.guidance),
        branch: match p.mode {
            ProbeMode::Generate => {
                "the prompt's (conditional) forward of the CFG pair at each kept step".into()
            }
            ProbeMode::Image => "one forward with the prompt per kept step".into(),
        },
        layers: p.dims.layers,
        heads: p.dims.heads,
        head_dim: p.head_dim,
        hidden: p.dims.hidden,
        n_img: p.grid.0 * p.grid.1,
        n_txt: p.tokens.len(),
        grid: [p.grid.0, p.grid.1],
        patch_size: p.patch_size,
        tokens: p.tokens,
        words: p.words,
        kept_steps: p.kept_steps,
        qkv_layers: p.qkv_layers,
        expert_layer: p.expert_layer,
        memory: p.memory,
        row_share_columns: ["i2i", "i2t", "t2i", "t2t"].map(String::from).to_vec(),
        layout: "i2t [1,H,N,L] (image queries × text keys), t2i [1,H,L,N], row_share [1,H,4], \
                 vnorm_img [1,H,N], vnorm_txt [1,H,L], q/k/v_img [1,N,D]; H = 1 for head means; \
                 image tokens row-major over the patch grid"
            .into(),
        tensors: vec![],
        seconds: 0.0,
    }
}

/// The summary's record of each kept step: its index, σ and model timestep.
pub fn kept_step_infos(keep: &[usize], sched: &crate::schedule::Schedule) -> Vec<super::StepInfo> {
    keep.iter()
        .map(|&i| super::StepInfo {
            index: i,
            sigma: sched.sigmas[i],
            timestep: sched.timesteps[i],
        })
        .collect()
}

/// The finished capture: tensors indexed into the summary, with the run's wall time.
pub fn finish_capture(
    tensors: Vec<(String, Tensor)>,
    summary: super::ProbeSummary,
    image: Option<(Vec<u8>, usize)>,
    started: std::time::Instant,
) -> super::ProbeCapture {
    let mut cap = super::ProbeCapture {
        tensors,
        summary,
        image,
    };
    cap.index_tensors();
    cap.summary.seconds = started.elapsed().as_secs_f64();
    cap
}
