//! Opening the model a command works on: a folder given with `--model`, else a model embedded
//! in the binary (the aligned one by default).

use std::path::Path;

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

/// Opens `--model DIR` or the embedded model `name` (default `aligned`).
pub fn open_embedded(model: Option<&Path>, name: Option<&str>) -> anyhow::Result<EmbeddedModel> {
    let dev = Device::Cpu;
    if let Some(dir) = model {
        anyhow::ensure!(dir.is_dir(), "{} is not a model folder (expected model.json, transformer/, text_encoder.safetensors)", dir.display());
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
