//! Reading user-supplied tensor files and writing outputs atomically (temporary file, then rename).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// Loads every tensor of a safetensors file, with a clear error for a missing or corrupt file.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| Error::NotSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string().lines().next().unwrap_or("").to_string(),
    })
}

/// Writes bytes to `path` through a temporary file in the same folder, then renames it, so an
/// existing file is never left half-written.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Saves named tensors as safetensors, atomically.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    let bytes = safetensors::serialize(map.iter().map(|(k, v)| (k.as_str(), v)), None)
        .map_err(|e| Error::Input(format!("cannot serialise tensors: {e}")))?;
    write_atomic(path, &bytes)
}
