//! `ditlens bench`: forward time and peak memory of an SD3-medium-size random-weight model,
//! without capture (the baseline, measured in the same run) and with full capture.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use ditlens_core::capture::CaptureSpec;
use ditlens_core::io::write_atomic;
use ditlens_core::mmdit::{ForwardOptions, Mmdit, MmditConfig};
use serde_json::json;

use crate::cli::BenchArgs;

/// Random weights for any requested tensor (norm weights 1).
struct RandomWeights;

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if name.contains("norm_") && name.ends_with(".weight") {
            return Tensor::ones(s, dtype, dev);
        }
        Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random backend needs a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Peak resident memory of this process in bytes (Linux), reset by [`reset_peak`].
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the kernel's peak-RSS counter (writing 5 to clear_refs), so each case is measured alone.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn gib(b: Option<u64>) -> String {
    b.map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64))
        .unwrap_or_else(|| "n/a".into())
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let dev = crate::device::compute_device()?;
    let cfg = MmditConfig {
        sample_size: 128,
        patch_size: 2,
        in_channels: 16,
        num_layers: a.layers,
        attention_head_dim: 64,
        num_attention_heads: a.heads,
        joint_attention_dim: 4096,
        caption_projection_dim: 64 * a.heads,
        pooled_projection_dim: 2048,
        out_channels: Some(16),
        pos_embed_max_size: 192,
        dual_attention_layers: vec![],
        qk_norm: None,
        conv_stem: vec![],
        ff_conv: false,
    };
    cfg.validate()?;
    let t0 = Instant::now();
    let vb = VarBuilder::from_backend(Box::new(RandomWeights), DType::F32, dev.clone());
    let model = Mmdit::new(vb, &cfg).context("building the random model")?;
    eprintln!(
        "built a {}-block, hidden-{} random model in {:.1} s ({} threads)",
        cfg.num_layers,
        cfg.inner_dim(),
        t0.elapsed().as_secs_f64(),
        candle_core::utils::get_num_threads()
    );
    let mut rows = vec![];
    println!("size   N     L    no-capture   capture   ratio   peak(no-capture)  peak(capture)  captured");
    for &size in &a.sizes {
        let lat = size / 8;
        let x = Tensor::randn(0f32, 1.0, (1, 16, lat, lat), &dev)?;
        let t = Tensor::new(&[515.1f32], &dev)?;
        let ctx = Tensor::randn(0f32, 1.0, (1, a.text_tokens, 4096), &dev)?;
        let pooled = Tensor::randn(0f32, 1.0, (1, 2048), &dev)?;
        let plain = ForwardOptions::default();
        let full = ForwardOptions {
            capture: CaptureSpec::maps(),
            ..Default::default()
        };
        // Warm-up (allocator, page faults), not timed.
        model.forward(&x, &t, &ctx, &pooled, &plain)?;
        let (mut best_plain, mut best_cap) = (f64::INFINITY, f64::INFINITY);
        let (mut peak_plain, mut peak_cap) = (None, None);
        let mut captured_bytes = 0usize;
        for _ in 0..a.repeats.max(1) {
            reset_peak();
            let s = Instant::now();
            let out = model.forward(&x, &t, &ctx, &pooled, &plain)?;
            best_plain = best_plain.min(s.elapsed().as_secs_f64());
            peak_plain = peak_plain.max(peak_rss());
            drop(out);
            reset_peak();
            let s = Instant::now();
            let out = model.forward(&x, &t, &ctx, &pooled, &full)?;
            best_cap = best_cap.min(s.elapsed().as_secs_f64());
            peak_cap = peak_cap.max(peak_rss());
            captured_bytes = out
                .blocks
                .iter()
                .flat_map(|b| b.named(""))
                .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
                .sum();
        }
        let n = (lat / 2) * (lat / 2);
        let ratio = best_cap / best_plain;
        println!(
            "{size:<5}  {n:<5} {:<4} {best_plain:>9.2} s {best_cap:>8.2} s  {ratio:>5.3}×  {:>15}  {:>13}  {:.1} MiB",
            a.text_tokens,
            gib(peak_plain),
            gib(peak_cap),
            captured_bytes as f64 / (1u64 << 20) as f64
        );
        rows.push(json!({
            "size": size, "n_img": n, "n_txt": a.text_tokens,
            "seconds_no_capture": best_plain, "seconds_capture": best_cap, "ratio": ratio,
            "peak_rss_no_capture": peak_plain, "peak_rss_capture": peak_cap,
            "captured_bytes": captured_bytes,
        }));
    }
    if let Some(p) = &a.json {
        let v = json!({"layers": a.layers, "heads": a.heads, "hidden": cfg.inner_dim(), "threads": candle_core::utils::get_num_threads(), "rows": rows});
        write_atomic(p, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}
