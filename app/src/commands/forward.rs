//! `ditlens forward`: one raw transformer forward with full capture, for scripts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use ditlens_core::capture::CaptureSpec;
use ditlens_core::io::{read_safetensors, write_atomic, write_safetensors};
use ditlens_core::mmdit::{load_mmdit, ForwardOptions, Layout};
use ditlens_core::perturb::BlurSpec;
use serde_json::json;

use crate::cli::{BlurArgs, ForwardArgs};

/// Names of the input tensors, in the order the model takes them.
const INPUTS: [&str; 4] = [
    "hidden_states",
    "timestep",
    "encoder_hidden_states",
    "pooled_projections",
];

/// Turns the blur flags into a spec (none when no layer is named).
pub fn blur_spec(a: &BlurArgs) -> Option<BlurSpec> {
    if a.blur_i2t.is_empty() {
        return None;
    }
    Some(BlurSpec {
        layers: a.blur_i2t.clone(),
        sigma: a.blur_sigma,
        kernel: a.blur_kernel,
        renorm: a.blur_renorm,
    })
}

/// The JSON sidecar's path: `OUT.safetensors` → `OUT.json`.
fn sidecar_path(out: &Path) -> PathBuf {
    if out.extension().is_some_and(|e| e == "json") {
        out.with_extension("json.json")
    } else {
        out.with_extension("json")
    }
}

/// Reads and checks the four input tensors (names and dtype).
fn read_inputs(path: &Path) -> anyhow::Result<[Tensor; 4]> {
    let mut map = read_safetensors(path, &Device::Cpu)?;
    if let Some(extra) = map.keys().find(|k| !INPUTS.contains(&k.as_str())) {
        bail!(
            "{}: unexpected input tensor `{extra}` (expected exactly {})",
            path.display(),
            INPUTS.join(", ")
        );
    }
    let mut take = |name: &str| -> anyhow::Result<Tensor> {
        let t = map
            .remove(name)
            .with_context(|| format!("{}: missing input tensor `{name}`", path.display()))?;
        if t.dtype() != DType::F32 {
            bail!(
                "{}: input tensor `{name}` must be f32, got {:?}",
                path.display(),
                t.dtype()
            );
        }
        Ok(t)
    };
    Ok([
        take(INPUTS[0])?,
        take(INPUTS[1])?,
        take(INPUTS[2])?,
        take(INPUTS[3])?,
    ])
}

pub fn run(a: ForwardArgs) -> anyhow::Result<()> {
    if a.blur.blur_renorm && a.blur.blur_i2t.is_empty() {
        bail!("--blur-renorm needs --blur-i2t LAYERS");
    }
    let t0 = Instant::now();
    let [x, t, ctx, pooled] = read_inputs(&a.inputs)?;
    let loaded = load_mmdit(&a.model, a.config.as_deref(), a.dtype.dtype(), &Device::Cpu)?;
    let cfg = loaded.model.config().clone();
    let layout = match &loaded.layout {
        Layout::Original { .. } => "original",
        Layout::Diffusers { .. } => "diffusers",
    };
    eprintln!(
        "loaded {} ({layout} layout, {} blocks, {} heads × {}) in {:.2} s",
        loaded.variant.name(),
        cfg.num_layers,
        cfg.num_attention_heads,
        cfg.attention_head_dim,
        t0.elapsed().as_secs_f64()
    );
    let blur = blur_spec(&a.blur);
    let opts = ForwardOptions {
        capture: CaptureSpec::maps(),
        blur: blur.clone(),
        ..Default::default()
    };
    let t1 = Instant::now();
    let out = loaded.model.forward(&x, &t, &ctx, &pooled, &opts)?;
    eprintln!("forward in {:.3} s", t1.elapsed().as_secs_f64());

    let mut tensors = vec![("output.sample".to_string(), out.sample.clone())];
    for (i, b) in out.blocks.iter().enumerate() {
        tensors.extend(b.named(&format!("block.{i}.")));
    }
    write_safetensors(&a.out, &tensors)?;
    let sidecar = json!({
        "variant": loaded.variant.name(),
        "layout": layout,
        "layers": cfg.num_layers,
        "heads": cfg.num_attention_heads,
        "head_dim": cfg.attention_head_dim,
        "hidden": cfg.inner_dim(),
        "batch": x.dim(0)?,
        "N": out.n_img,
        "L": out.n_txt,
        "patch_grid": [out.grid.0, out.grid.1],
        "patch_size": cfg.patch_size,
        "dual_attention_layers": cfg.dual_attention_layers,
        "dtype": format!("{:?}", a.dtype).to_lowercase(),
        "blur": blur,
        "text_order": "image keys 0..N, text keys N..N+L; i2t [B,H,N,L], t2i [B,H,L,N]",
        "row_share_columns": ["i2i", "i2t", "t2i", "t2t"],
        "tensors": tensors.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
    });
    let side = sidecar_path(&a.out);
    write_atomic(&side, serde_json::to_string_pretty(&sidecar)?.as_bytes())?;
    eprintln!("wrote {} and {}", a.out.display(), side.display());
    Ok(())
}
