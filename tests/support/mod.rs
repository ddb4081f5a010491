//! Helpers shared by the end-to-end tests: running `ditlens`, fixture paths, tensor comparison.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

/// `tests/fixtures/`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The tiny SD3 pipeline fixture (`tests/fixtures/make_sd3_pipeline.py`).
pub fn sd3_fixture() -> PathBuf {
    fixtures().join("sd3_pipeline")
}

/// Runs the `ditlens` binary.
pub fn ditlens(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ditlens"))
        .args(args)
        .output()
        .expect("run ditlens")
}

/// Runs `ditlens`, which must succeed; returns stderr then stdout.
pub fn ok(args: &[&str]) -> String {
    let o = ditlens(args);
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{args:?} failed: {e}");
    e + &String::from_utf8_lossy(&o.stdout)
}

/// Runs `ditlens`, which must fail without a panic and say `needle` on stderr.
pub fn fails(args: &[&str], needle: &str) {
    let o = ditlens(args);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(!e.contains("panicked"), "{e}");
    assert!(e.contains(needle), "`{needle}` not in {e}");
}

/// A path as `&str` for an argument list.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
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

/// One tensor of a safetensors file.
pub fn tensor(path: &Path, name: &str) -> Tensor {
    let mut m = candle_core::safetensors::load(path, &Device::Cpu).expect("read safetensors");
    m.remove(name)
        .unwrap_or_else(|| panic!("{} has no `{name}`", path.display()))
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
