//! Opening the model a command works on: a folder given with `--model`, else a model embedded
//! in the binary (the aligned one by default).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Tensor};
use ditlens_core::embedded::model::tensor_to_rgb;
use ditlens_core::embedded::EmbeddedModel;
use ditlens_core::probe::{ProbeCapture, ProbeOptions, ProbeSource};
use ditlens_core::sd3::{Sd3Pipeline, TextOptions};
use ditlens_core::segment::I2tSegmenter;

use crate::device::compute_device;

mod shipped {
    include!(concat!(env!("OUT_DIR"), "/embedded_models.rs"));
}

/// Names of the models built into this binary.
pub fn shipped_names() -> Vec<&'static str> {
    shipped::MODELS.iter().map(|m| m.0).collect()
}

/// The weights of the embedded model `name`: (transformer, text encoder) safetensors bytes.
pub fn shipped_weights(name: &str) -> anyhow::Result<(&'static [u8], &'static [u8])> {
    match shipped::MODELS.iter().find(|m| m.0 == name) {
        Some((_, _, tr, te)) => Ok((tr, te)),
        None => bail!(
            "no embedded model `{name}`; built in: {}",
            if shipped::MODELS.is_empty() {
                "none".to_string()
            } else {
                shipped_names().join(", ")
            }
        ),
    }
}

/// The embedded shape classifier's weights, if this build has them.
pub fn shipped_judge() -> Option<&'static [u8]> {
    shipped::JUDGE
}

/// The embedded model used when none is named: `aligned` where this build has it, else `plain`.
pub fn default_name() -> &'static str {
    if shipped::MODELS.iter().any(|m| m.0 == "aligned") {
        "aligned"
    } else {
        "plain"
    }
}

/// What a `--model PATH` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPath {
    /// A folder written by `ditlens train` / `export-model` (`model.json`).
    Embedded(PathBuf),
    /// A diffusers SD3 pipeline folder (`model_index.json`) or a single `.safetensors` file.
    Sd3(PathBuf),
}

/// Tells an embedded-model folder from an SD3 pipeline folder or single file.
pub fn classify(path: &Path) -> anyhow::Result<ModelPath> {
    let what = "expected an embedded-model folder (model.json), an SD3 pipeline folder (model_index.json) or an SD3 single .safetensors file";
    if path.is_dir() {
        if path.join("model.json").is_file() {
            return Ok(ModelPath::Embedded(path.to_path_buf()));
        }
        if path.join("model_index.json").is_file() {
            return Ok(ModelPath::Sd3(path.to_path_buf()));
        }
        bail!("{} is not a model folder: {what}", path.display());
    }
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "safetensors") {
            return Ok(ModelPath::Sd3(path.to_path_buf()));
        }
        bail!("{} is not a model: {what}", path.display());
    }
    bail!("{} does not exist ({what})", path.display())
}

/// Opens `--model DIR` or the embedded model `name` (default `aligned`).
pub fn open_embedded(model: Option<&Path>, name: Option<&str>) -> anyhow::Result<EmbeddedModel> {
    let dev = crate::device::compute_device()?;
    if let Some(dir) = model {
        if let ModelPath::Sd3(p) = classify(dir)? {
            bail!(
                "{} is an SD3 pipeline; `generate`, `segment`, `eval` and `encode-prompt` run SD3 pipelines, this command does not yet",
                p.display()
            );
        }
        return EmbeddedModel::load_dir(dir, &dev)
            .with_context(|| format!("loading {}", dir.display()));
    }
    let want = name.unwrap_or(default_name());
    match shipped::MODELS.iter().find(|m| m.0 == want) {
        Some((_, cfg, tr, te)) => Ok(EmbeddedModel::from_bytes(cfg, tr, te, &dev)?),
        None if shipped::MODELS.is_empty() => {
            bail!("this build has no embedded model yet; pass --model DIR (a folder written by `ditlens train`)")
        }
        None => bail!(
            "no embedded model `{want}`; built in: {}",
            shipped_names().join(", ")
        ),
    }
}

/// Opens the model `segment` and `eval` read: an SD3 pipeline (text encoders as Seg4Diff's
/// evaluation runs them: CLIP-L and CLIP-G, T5 only when `t5`) or an embedded model.
pub fn open_segmenter(
    model: Option<&Path>,
    name: Option<&str>,
    dtype: DType,
    t5: bool,
) -> anyhow::Result<Box<dyn I2tSegmenter>> {
    if let Some(path) = model {
        if let ModelPath::Sd3(p) = classify(path)? {
            let text = TextOptions {
                use_t5: t5,
                ..Default::default()
            };
            let pipe = Sd3Pipeline::open(&p, &compute_device()?, dtype, text)
                .with_context(|| format!("loading {}", p.display()))?;
            return Ok(Box::new(pipe));
        }
    }
    Ok(Box::new(open_embedded(model, name)?))
}

/// A model `probe` and the analyses run: the embedded one or an SD3 pipeline.
pub enum ProbeModel {
    Embedded(Box<EmbeddedModel>),
    Sd3(Box<Sd3Pipeline>),
}

impl ProbeModel {
    /// Opens `--model PATH` (either kind) or the embedded model `name`.
    pub fn open(model: Option<&Path>, name: Option<&str>) -> anyhow::Result<Self> {
        if let Some(path) = model {
            if let ModelPath::Sd3(p) = classify(path)? {
                let pipe =
                    Sd3Pipeline::open(&p, &compute_device()?, DType::F32, TextOptions::default())
                        .with_context(|| format!("loading {}", p.display()))?;
                return Ok(Self::Sd3(Box::new(pipe)));
            }
        }
        Ok(Self::Embedded(Box::new(open_embedded(model, name)?)))
    }

    /// The model as a segmenter.
    pub fn segmenter(&self) -> &dyn I2tSegmenter {
        match self {
            Self::Embedded(m) => m.as_ref(),
            Self::Sd3(p) => p.as_ref(),
        }
    }

    /// Number of joint blocks.
    pub fn layers(&self) -> usize {
        self.segmenter().num_layers()
    }

    /// The block analyses default to.
    pub fn expert_layer(&self) -> usize {
        self.segmenter().default_layer()
    }

    /// Captures `prompt` (on an image or a generation); `on_step(done, total)` reports progress.
    pub fn probe(
        &self,
        prompt: &str,
        source: ProbeSource<'_>,
        opts: &ProbeOptions,
        mut on_step: impl FnMut(usize, usize) -> bool,
    ) -> anyhow::Result<ProbeCapture> {
        self.probe_steps(prompt, source, opts, |d, t, _| on_step(d, t))
    }

    /// [`Self::probe`] that also hands `on_step` a generation's current sample (pixels for the
    /// embedded model, latents for SD3; see [`Self::preview`]).
    pub fn probe_steps(
        &self,
        prompt: &str,
        source: ProbeSource<'_>,
        opts: &ProbeOptions,
        on_step: impl FnMut(usize, usize, Option<&Tensor>) -> bool,
    ) -> anyhow::Result<ProbeCapture> {
        Ok(match self {
            Self::Embedded(m) => m.probe_steps(prompt, source, opts, on_step)?,
            Self::Sd3(p) => p.probe(prompt, source, opts, on_step)?,
        })
    }

    /// A sample of [`Self::probe_steps`] as RGB bytes and its square side.
    pub fn preview(&self, x: &Tensor) -> anyhow::Result<(Vec<u8>, usize)> {
        Ok(match self {
            Self::Embedded(m) => (tensor_to_rgb(&x.squeeze(0)?)?, m.cfg.image_size),
            Self::Sd3(p) => {
                let pic = p.decode(x)?;
                let side = pic.width() as usize;
                (pic.into_raw(), side)
            }
        })
    }

    /// The prompt that names `classes`, as the model's segmentation reads it.
    pub fn class_prompt(&self, classes: &[String]) -> anyhow::Result<String> {
        Ok(self.segmenter().class_prompt(classes)?.0)
    }
}
