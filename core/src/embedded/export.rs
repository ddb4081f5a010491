//! Turning a training run folder into a shippable model folder: weights in a smaller dtype, the
//! expert layer found by the layer sweep recorded in `model.json`, no optimiser state.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::EmbeddedConfig;
use crate::error::{Error, Result};
use crate::io::{read_safetensors, write_atomic, write_safetensors};

const TRANSFORMER: &str = "transformer/diffusion_pytorch_model.safetensors";
const TEXT: &str = "text_encoder.safetensors";

/// Copies the model in `from` (a run or model folder) to `to` with weights in `dtype` and, if
/// given, `expert_layer` as the default segmentation layer. Returns the written config.
pub fn export_model(
    from: &Path,
    to: &Path,
    dtype: DType,
    expert_layer: Option<usize>,
) -> Result<EmbeddedConfig> {
    let cfg_path = from.join("model.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let mut cfg: EmbeddedConfig = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", cfg_path.display())))?;
    if let Some(l) = expert_layer {
        cfg.expert_layer = l;
    }
    cfg.validate()?;
    for file in [TRANSFORMER, TEXT] {
        let tensors = read_safetensors(&from.join(file), &Device::Cpu)?;
        let mut out: Vec<(String, Tensor)> = tensors
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(dtype)?)))
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        write_safetensors(&to.join(file), &out)?;
    }
    let tcfg = from.join("transformer/config.json");
    let bytes = std::fs::read(&tcfg).map_err(|e| Error::io(&tcfg, e))?;
    write_atomic(&to.join("transformer/config.json"), &bytes)?;
    write_atomic(
        &to.join("model.json"),
        serde_json::to_string_pretty(&cfg)
            .map_err(|e| Error::Input(e.to_string()))?
            .as_bytes(),
    )?;
    Ok(cfg)
}
