//! Reading one part's weights (a diffusers folder, shards, or a prefix of a bundled file): tensor
//! names and shapes, a prefixed `VarBuilder`, and load errors that name the part and the tensor.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::parts::{open_mmap, Part, Weights};
use crate::error::{Error, Result};

/// Reads a JSON file with errors naming it.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: not JSON: {e}", path.display())))
}

/// Tensor names and shapes of one part, by their names inside the part (prefix removed).
pub struct WeightsReader {
    part: Part,
    st: MmapedSafetensors,
    prefix: String,
    names: BTreeSet<String>,
    file: String,
}

impl WeightsReader {
    /// Opens the part's files (memory-mapped; nothing is read yet).
    pub fn open(part: Part, w: &Weights) -> Result<Self> {
        let st = open_mmap(&w.files)?;
        let names = st
            .tensors()
            .into_iter()
            .filter_map(|(n, _)| n.strip_prefix(&w.prefix).map(str::to_string))
            .collect();
        let file = w
            .files
            .first()
            .map(|f| f.display().to_string())
            .unwrap_or_default();
        Ok(WeightsReader {
            part,
            st,
            prefix: w.prefix.clone(),
            names,
            file,
        })
    }

    /// Whether the part has the tensor.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// The tensor's name in the file.
    pub fn stored_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The tensor's shape, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if !self.contains(name) {
            return None;
        }
        self.st
            .get(&self.stored_name(name))
            .ok()
            .map(|v| v.shape().to_vec())
    }

    /// The tensor's shape, or an error naming the missing tensor and the file.
    pub fn require_shape(&self, name: &str) -> Result<Vec<usize>> {
        self.shape(name).ok_or_else(|| Error::MissingTensor {
            name: format!(
                "{} (in {}, {})",
                self.stored_name(name),
                self.file,
                self.part.label()
            ),
        })
    }

    /// A wrong-shape error for a tensor of the part.
    pub fn wrong_shape(&self, name: &str, got: Vec<usize>) -> Error {
        Error::WrongShape {
            name: self.stored_name(name),
            expected: vec![],
            got,
        }
    }

    /// Turns a `VarBuilder` error into one naming the part and the file.
    pub fn load_error(&self, e: candle_core::Error) -> Error {
        let msg = root_message(&e);
        Error::Load(format!("{} in {}: {msg}", self.part.label(), self.file))
    }
}

fn root_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => root_message(inner),
        candle_core::Error::Context { inner, .. } => root_message(inner),
        other => other.to_string().lines().next().unwrap_or("").to_string(),
    }
}

/// A `VarBuilder` over the part's files, rooted at its key prefix; tensors are converted to `dtype`.
pub(crate) fn open_var_builder(
    w: &Weights,
    dtype: DType,
    dev: &Device,
) -> Result<VarBuilder<'static>> {
    let st = open_mmap(&w.files)?;
    let vb = VarBuilder::from_backend(Box::new(st), dtype, dev.clone());
    let prefix = w.prefix.trim_end_matches('.');
    Ok(if prefix.is_empty() { vb } else { vb.pp(prefix) })
}
