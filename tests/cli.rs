//! End-to-end tests of the `ditlens` binary: `forward` on every checkpoint form against the
//! diffusers fixtures, and a clear one-line error (never a panic) for every kind of bad input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

mod support;
use support::*;

fn fx() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn load(p: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn save(p: &Path, m: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(m, p).unwrap();
}

/// Runs `forward` and checks every reference tensor the CLI contract includes.
fn forward_matches(
    model: &Path,
    config: Option<&Path>,
    dir: &str,
    expected: &str,
    extra: &[&str],
) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let inputs = fx().join(dir).join("inputs.safetensors");
    let mut args = vec![
        "forward",
        "--model",
        s(model),
        "--inputs",
        s(&inputs),
        "--out",
        s(&out),
    ];
    if let Some(c) = config {
        args.extend(["--config", s(c)]);
    }
    args.extend(extra);
    let o = ditlens(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = load(&out);
    let want = load(&fx().join(dir).join(expected));
    let mut checked = 0;
    for (k, w) in &want {
        let contract = k == "output.sample"
            || ["i2t", "t2i", "row_share", "vnorm_img", "vnorm_txt"]
                .iter()
                .any(|q| k.ends_with(&format!(".attn.{q}")));
        if !contract {
            continue;
        }
        let g = got.get(k).unwrap_or_else(|| panic!("missing {k}"));
        let tol = if k.contains("vnorm") || k == "output.sample" {
            1e-4
        } else {
            1e-5
        };
        let d = max_diff(g, w);
        assert!(d <= tol, "{dir} {k}: {d}");
        checked += 1;
    }
    let layers = want.keys().filter(|k| k.ends_with(".attn.i2t")).count();
    assert_eq!(checked, 1 + 5 * layers);
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("out.json")).unwrap()).unwrap();
    assert_eq!(side["layers"], layers);
    side
}

#[test]
fn forward_every_form() {
    let f = fx();
    let side = forward_matches(
        &f.join("sd3/diffusers"),
        None,
        "sd3",
        "expected.safetensors",
        &[],
    );
    assert_eq!(side["variant"], "sd3");
    assert_eq!(side["N"], 24);
    assert_eq!(side["L"], 10);
    assert_eq!(side["patch_grid"], serde_json::json!([6, 4]));
    assert_eq!(side["heads"], 2);
    let cfg = f.join("sd35l/diffusers/config.json");
    let side = forward_matches(
        &f.join("sd35l/original.safetensors"),
        Some(&cfg),
        "sd35l",
        "expected.safetensors",
        &[],
    );
    assert_eq!(side["variant"], "sd3.5-large");
    assert_eq!(side["layout"], "original");
    let side = forward_matches(
        &f.join("sd35m_pipeline"),
        None,
        "sd35m",
        "expected.safetensors",
        &[],
    );
    assert_eq!(side["variant"], "sd3.5-medium");
    let side = forward_matches(
        &f.join("sd3_hd64/original_f16.safetensors"),
        None,
        "sd3_hd64",
        "expected.safetensors",
        &[],
    );
    assert_eq!(side["head_dim"], 64);
}

#[test]
fn forward_with_blur() {
    let f = fx();
    let m = f.join("sd35m/diffusers");
    let side = forward_matches(
        &m,
        None,
        "sd35m",
        "expected_blur.safetensors",
        &["--blur-i2t", "0,1"],
    );
    assert_eq!(side["blur"]["layers"], serde_json::json!([0, 1]));
    forward_matches(
        &m,
        None,
        "sd35m",
        "expected_blur_renorm.safetensors",
        &[
            "--blur-i2t",
            "0,1",
            "--blur-sigma",
            "9",
            "--blur-kernel",
            "5",
            "--blur-renorm",
        ],
    );
}

/// Asserts a one-line error containing `needle`, non-zero exit, no panic.
fn fails_with(args: &[&str], needle: &str) {
    let o = ditlens(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure for {args:?}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {err}");
    assert!(
        lines[0].contains(needle),
        "`{needle}` not in `{}`",
        lines[0]
    );
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn run_forward(model: &Path, inputs: &Path, out: &Path, extra: &[&str], needle: &str) {
    let mut args = vec![
        "forward",
        "--model",
        s(model),
        "--inputs",
        s(inputs),
        "--out",
        s(out),
    ];
    args.extend(extra);
    fails_with(&args, needle);
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let c = Case::new();
    let f = fx();
    let inputs = f.join("sd3/inputs.safetensors");
    let out = c.path("o.safetensors");
    let cfg = f.join("sd3/diffusers/config.json");
    let orig = f.join("sd3/original.safetensors");

    run_forward(
        &c.path("nope.safetensors"),
        &inputs,
        &out,
        &[],
        "cannot read",
    );
    let text = c.path("text.safetensors");
    std::fs::write(&text, "this is not a checkpoint").unwrap();
    run_forward(&text, &inputs, &out, &[], "not a readable safetensors file");
    let bytes = std::fs::read(&orig).unwrap();
    let trunc = c.path("trunc.safetensors");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    run_forward(
        &trunc,
        &inputs,
        &out,
        &[],
        "not a readable safetensors file",
    );

    let unknown = c.path("unknown.safetensors");
    let mut m = HashMap::new();
    m.insert(
        "encoder.layer.0.weight".to_string(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    save(&unknown, &m);
    run_forward(&unknown, &inputs, &out, &[], "unknown checkpoint layout");

    let mut m = load(&orig);
    let gone = "model.diffusion_model.joint_blocks.1.x_block.mlp.fc2.weight";
    m.remove(gone).unwrap();
    let missing = c.path("missing.safetensors");
    save(&missing, &m);
    run_forward(&missing, &inputs, &out, &["--config", s(&cfg)], gone);

    let mut m = load(&orig);
    let k = "model.diffusion_model.joint_blocks.0.context_block.attn.proj.weight";
    m.insert(
        k.into(),
        Tensor::zeros((32, 31), DType::F32, &Device::Cpu).unwrap(),
    );
    let wrong = c.path("wrong.safetensors");
    save(&wrong, &m);
    run_forward(&wrong, &inputs, &out, &["--config", s(&cfg)], k);

    // A single file whose hidden size is not a multiple of 64 needs --config.
    run_forward(&orig, &inputs, &out, &[], "--config");
    assert!(!out.exists(), "no output on failure");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let c = Case::new();
    let f = fx();
    let model = f.join("sd3/diffusers");
    let good = load(&f.join("sd3/inputs.safetensors"));
    let out = c.path("o.safetensors");
    let write = |name: &str, m: &HashMap<String, Tensor>| {
        let p = c.path(name);
        save(&p, m);
        p
    };
    let dev = Device::Cpu;

    let mut m = good.clone();
    m.insert(
        "hidden_states".into(),
        Tensor::zeros((2, 4, 20, 8), DType::F32, &dev).unwrap(),
    );
    run_forward(
        &model,
        &write("big.safetensors", &m),
        &out,
        &[],
        "larger than the position table",
    );

    let mut m = good.clone();
    m.insert(
        "hidden_states".into(),
        Tensor::zeros((2, 4, 11, 8), DType::F32, &dev).unwrap(),
    );
    run_forward(
        &model,
        &write("odd.safetensors", &m),
        &out,
        &[],
        "multiple of the patch size",
    );

    let mut m = good.clone();
    let x = m.remove("hidden_states").unwrap();
    m.insert("latents".into(), x);
    run_forward(
        &model,
        &write("names.safetensors", &m),
        &out,
        &[],
        "latents",
    );

    let mut m = good.clone();
    m.remove("pooled_projections").unwrap();
    run_forward(
        &model,
        &write("short.safetensors", &m),
        &out,
        &[],
        "missing input tensor `pooled_projections`",
    );

    let mut m = good.clone();
    let t = m["timestep"].to_dtype(DType::F16).unwrap();
    m.insert("timestep".into(), t);
    run_forward(
        &model,
        &write("dtype.safetensors", &m),
        &out,
        &[],
        "`timestep` must be f32",
    );

    let mut m = good.clone();
    m.insert(
        "encoder_hidden_states".into(),
        Tensor::zeros((2, 10, 23), DType::F32, &dev).unwrap(),
    );
    run_forward(
        &model,
        &write("ctx.safetensors", &m),
        &out,
        &[],
        "encoder_hidden_states",
    );

    let mut m = good.clone();
    m.insert(
        "timestep".into(),
        Tensor::zeros(3, DType::F32, &dev).unwrap(),
    );
    run_forward(
        &model,
        &write("t.safetensors", &m),
        &out,
        &[],
        "`timestep` must be [2]",
    );

    let inputs = f.join("sd3/inputs.safetensors");
    run_forward(
        &model,
        &inputs,
        &out,
        &["--blur-i2t", "7"],
        "blur layer 7 does not exist",
    );
    run_forward(
        &model,
        &inputs,
        &out,
        &["--blur-i2t", "0", "--blur-kernel", "4"],
        "odd",
    );
    run_forward(&model, &inputs, &out, &["--blur-renorm"], "--blur-i2t");
    run_forward(
        &model,
        &c.path("none.safetensors"),
        &out,
        &[],
        "cannot read",
    );
}
