//! Helpers shared by the library's integration tests: fixture paths and tensor comparison.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Tensor;

/// The tiny SD3 pipeline fixture (`tests/fixtures/make_sd3_pipeline.py`).
pub fn sd3_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sd3_pipeline")
}

/// Largest absolute difference of two tensors of one shape.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_dtype(candle_core::DType::F32))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensor difference")
}

/// Copies a folder tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).expect("copy");
        }
    }
}
