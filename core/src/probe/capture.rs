//! A probe's result in memory and on disk: named tensors plus the summary, saved as one
//! safetensors file (summary embedded in its metadata) with a JSON sidecar, both atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::summary::{ProbeSummary, TensorInfo, FORMAT};
use crate::error::{Error, Result};
use crate::io::write_atomic;

/// Metadata key of the embedded summary.
pub const METADATA_KEY: &str = "ditlens_probe";

/// Tensors captured across a run, with their summary.
#[derive(Debug, Clone)]
pub struct ProbeCapture {
    /// `step.{s}.block.{i}.attn.*` tensors, in capture order.
    pub tensors: Vec<(String, Tensor)>,
    pub summary: ProbeSummary,
    /// The generated image (RGB bytes, `image_size²·3`) when the probe generated one.
    pub image: Option<(Vec<u8>, usize)>,
}

/// The default sidecar of a capture file: `X.safetensors` → `X.json`.
pub fn sidecar_path(capture: &Path) -> PathBuf {
    if capture.extension().is_some_and(|e| e == "json") {
        capture.with_extension("json.json")
    } else {
        capture.with_extension("json")
    }
}

impl ProbeCapture {
    /// Fills `summary.tensors` from the tensors held.
    pub fn index_tensors(&mut self) {
        self.summary.tensors = self
            .tensors
            .iter()
            .map(|(n, t)| TensorInfo {
                name: n.clone(),
                shape: t.dims().to_vec(),
            })
            .collect();
    }

    /// A tensor by name, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                Error::Input(format!(
                    "the capture has no tensor `{name}` (probe again with that step, block and quantity kept)"
                ))
            })
    }

    /// A tensor's values as f32, row-major.
    pub fn values(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self
            .get(name)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?)
    }

    /// The summary as pretty JSON.
    pub fn summary_json(&self) -> Result<String> {
        serde_json::to_string_pretty(&self.summary)
            .map_err(|e| Error::Input(format!("cannot encode the probe summary: {e}")))
    }

    /// Writes the safetensors file (summary in its metadata under `ditlens_probe`) and the JSON
    /// summary at `sidecar`, each atomically.
    pub fn save(&self, path: &Path, sidecar: &Path) -> Result<()> {
        let json = self.summary_json()?;
        let meta = HashMap::from([(METADATA_KEY.to_string(), json.clone())]);
        let bytes = safetensors::serialize(
            self.tensors.iter().map(|(k, v)| (k.as_str(), v)),
            Some(meta),
        )
        .map_err(|e| Error::Input(format!("cannot serialise the capture: {e}")))?;
        write_atomic(path, &bytes)?;
        write_atomic(sidecar, json.as_bytes())
    }

    /// Reads a capture written by [`ProbeCapture::save`] (the summary from the file's metadata,
    /// else from its sidecar).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let not_st = |reason: String| Error::NotSafetensors {
            path: path.to_path_buf(),
            reason,
        };
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| not_st(e.to_string()))?;
        let json = match meta.metadata().as_ref().and_then(|m| m.get(METADATA_KEY)) {
            Some(j) => j.clone(),
            None => {
                let side = sidecar_path(path);
                std::fs::read_to_string(&side).map_err(|_| {
                    Error::Input(format!(
                        "{} is not a probe capture: no `{METADATA_KEY}` metadata and no sidecar {}",
                        path.display(),
                        side.display()
                    ))
                })?
            }
        };
        let summary: ProbeSummary = serde_json::from_str(&json).map_err(|e| {
            Error::Input(format!("{}: unreadable probe summary: {e}", path.display()))
        })?;
        if summary.format != FORMAT {
            return Err(Error::Input(format!(
                "{}: capture format `{}`, this build reads `{FORMAT}`",
                path.display(),
                summary.format
            )));
        }
        let mut map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| not_st(e.to_string()))?;
        let mut tensors = Vec::with_capacity(map.len());
        for info in &summary.tensors {
            let t = map.remove(&info.name).ok_or_else(|| Error::MissingTensor {
                name: info.name.clone(),
            })?;
            if t.dims() != info.shape.as_slice() {
                return Err(Error::WrongShape {
                    name: info.name.clone(),
                    expected: info.shape.clone(),
                    got: t.dims().to_vec(),
                });
            }
            tensors.push((info.name.clone(), t));
        }
        Ok(Self {
            tensors,
            summary,
            image: None,
        })
    }
}
