//! Opening the model a command works on: a folder given with `--model`, else a model embedded
//! in the binary (the aligned one by default).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Device;
use ditlens_core::embedded::EmbeddedModel;

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
    let dev = Device::Cpu;
    if let Some(dir) = model {
        if let ModelPath::Sd3(p) = classify(dir)? {
            bail!(
                "{} is an SD3 pipeline; so far only `ditlens generate` runs SD3 pipelines",
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
