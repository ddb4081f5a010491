//! Commands on the embedded model family: `generate`, `segment`, `eval`, `make-dataset`.

use std::time::Instant;

use anyhow::Context;
use ditlens_core::embedded::pipeline::GenerateOptions;
use ditlens_core::export::{read_rgb, write_label_png, write_overlay_png, write_rgb_png};
use ditlens_core::io::write_atomic;
use ditlens_core::metrics::Dataset;
use ditlens_core::segment::eval::{evaluate, evaluate_unsupervised};
use ditlens_core::segment::{segment, segment_unsupervised, SegmentOptions};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::forward::blur_spec;
use crate::cli::{EvalArgs, GenerateArgs, MakeDatasetArgs, SegmentArgs};
use crate::models::{open_embedded, open_segmenter};

pub(super) fn bar(len: usize, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len as u64);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

pub fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let model = open_embedded(a.model.model.as_deref(), a.model.embedded.as_deref())?;
    anyhow::ensure!(a.steps > 0, "--steps must be at least 1");
    anyhow::ensure!(a.upscale >= 1, "--upscale must be at least 1");
    let opts = GenerateOptions {
        seed: a.seed,
        steps: a.steps,
        guidance: a.guidance,
        blur: blur_spec(&a.blur),
        perturb_guidance: a.perturb_guidance,
    };
    let pb = bar(a.steps, "generate");
    let t0 = Instant::now();
    let prompt = a.prompt.as_deref().unwrap_or_default();
    let g = model.generate(prompt, &opts, |i, _, _| {
        pb.set_position(i as u64);
        true
    })?;
    pb.finish_and_clear();
    let (rgb, s) = if a.upscale > 1 {
        let img = image::RgbImage::from_raw(g.size as u32, g.size as u32, g.rgb)
            .context("image buffer")?;
        let n = g.size as u32 * a.upscale;
        let big = image::imageops::resize(&img, n, n, image::imageops::FilterType::Nearest);
        (big.into_raw(), n as usize)
    } else {
        (g.rgb, g.size)
    };
    write_rgb_png(&a.out, &rgb, s, s)?;
    eprintln!(
        "generated in {:.2} s → {}",
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

pub fn segment_image(a: SegmentArgs) -> anyhow::Result<()> {
    let model = open_segmenter(
        a.model.model.as_deref(),
        a.model.embedded.as_deref(),
        a.dtype.dtype(),
        a.t5,
    )?;
    let model = model.as_ref();
    let (rgb, w, h) = read_rgb(&a.image)?;
    let opts = SegmentOptions {
        layer: a.layer,
        seed: a.seed,
        steps: a.steps,
        step_index: a.step_index,
    };
    if a.unsupervised {
        let t0 = Instant::now();
        let p = segment_unsupervised(model, &rgb, w, h, a.threshold, &opts)?;
        let secs = t0.elapsed().as_secs_f64();
        write_label_png(&a.out, &p.labels, w, h)?;
        if let Some(o) = &a.overlay {
            write_overlay_png(o, &rgb, &p.labels, w, h)?;
        }
        if let Some(j) = &a.json {
            let mut v = serde_json::to_value(&p)?;
            v["proposals"] = json!(p.clusters.len());
            v["seconds"] = json!(secs);
            write_atomic(j, serde_json::to_string_pretty(&v)?.as_bytes())?;
        }
        eprintln!(
            "{} proposals at layer {} (threshold {}) in {:.3} s → {}",
            p.clusters.len(),
            p.layer,
            a.threshold,
            secs,
            a.out.display()
        );
        return Ok(());
    }
    let classes: Vec<String> = a
        .classes
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    anyhow::ensure!(
        !classes.is_empty(),
        "--classes is empty: give class names separated by commas"
    );
    let t0 = Instant::now();
    let seg = segment(model, &rgb, w, h, &classes, &opts)?;
    let secs = t0.elapsed().as_secs_f64();
    write_label_png(&a.out, &seg.labels, w, h)?;
    if let Some(p) = &a.overlay {
        write_overlay_png(p, &rgb, &seg.labels, w, h)?;
    }
    if let Some(p) = &a.json {
        let shares: serde_json::Map<String, serde_json::Value> = classes
            .iter()
            .cloned()
            .zip(seg.shares.iter().map(|&s| json!(s)))
            .collect();
        let v = json!({
            "classes": classes, "layer": seg.layer, "sigma": seg.sigma, "timestep": seg.timestep,
            "step_index": a.step_index, "steps": a.steps, "width": w, "height": h,
            "shares": shares, "class_tokens": seg.class_tokens, "seconds": secs,
        });
        write_atomic(p, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    eprintln!(
        "segmented {}×{} at layer {} (σ {:.4}) in {:.3} s → {}",
        w,
        h,
        seg.layer,
        seg.sigma,
        secs,
        a.out.display()
    );
    Ok(())
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let model = open_segmenter(
        a.model.model.as_deref(),
        a.model.embedded.as_deref(),
        a.dtype.dtype(),
        a.t5,
    )?;
    let model = model.as_ref();
    anyhow::ensure!(
        a.step_index < a.steps,
        "--step-index {} is not a step of a {}-step schedule (0..{})",
        a.step_index,
        a.steps,
        a.steps.saturating_sub(1)
    );
    let data = Dataset::open(&a.dataset).map_err(|e| anyhow::anyhow!("{e}"))?;
    let opts = SegmentOptions {
        layer: a.layer,
        seed: a.seed,
        steps: a.steps,
        step_index: a.step_index,
    };
    if a.unsupervised {
        let pb = bar(data.len(), "eval");
        let s = evaluate_unsupervised(model, &data, a.threshold, &opts, |i, _| {
            pb.set_position(i as u64);
            true
        })?;
        pb.finish_and_clear();
        println!("unsupervised, layer {}, threshold {}: mIoU {:.4}  pAcc {:.4}  ({} images; Hungarian matching per image, TP/FP/FN summed)", s.layer, a.threshold, s.miou, s.pacc, data.len());
        if let Some(p) = &a.json {
            let v = json!({
                "miou": s.miou, "pacc": s.pacc, "macc": s.macc, "per_class_iou": s.per_class_iou,
                "layer": s.layer, "images": data.len(), "threshold": a.threshold,
                "step_index": a.step_index, "steps": a.steps,
                "protocol": "unsupervised: empty prompt, symmetric-KL merge, per-image Hungarian matching to the classes present, TP/FP/FN summed over the dataset",
            });
            write_atomic(p, serde_json::to_string_pretty(&v)?.as_bytes())?;
        }
        return Ok(());
    }
    let n_layers = model.num_layers();
    let layers: Vec<usize> = match (&a.layers, a.layer) {
        (Some(s), _) if s == "all" => (0..n_layers).collect(),
        (Some(s), _) => anyhow::bail!("--layers takes `all`, got `{s}`"),
        (None, Some(l)) => vec![l],
        (None, None) => vec![model.default_layer()],
    };
    let pb = bar(data.len(), "eval");
    let scores = evaluate(model, &data, &layers, &opts, |i, _| {
        pb.set_position(i as u64);
        true
    })?;
    pb.finish_and_clear();
    let best = scores
        .iter()
        .max_by(|x, y| {
            x.miou
                .partial_cmp(&y.miou)
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .context("no layer evaluated")?;
    println!("layer   mIoU    pAcc    mAcc");
    for s in &scores {
        println!(
            "{:>5}  {:.4}  {:.4}  {:.4}{}",
            s.layer,
            s.miou,
            s.pacc,
            s.macc,
            if s.layer == best.layer && scores.len() > 1 {
                "  ← best"
            } else {
                ""
            }
        );
    }
    println!(
        "({} images; oracle class set: each image's prompt names the classes present in its label)",
        data.len()
    );
    if let Some(p) = &a.json {
        let mut v = json!({
            "miou": best.miou, "pacc": best.pacc, "macc": best.macc,
            "per_class_iou": best.per_class_iou, "layer": best.layer, "images": data.len(),
            "classes": data.classes(), "confusion": best.confusion,
            "step_index": a.step_index, "steps": a.steps,
            "protocol": "oracle class set (classes present in each label), one forward, head-mean I2T, argmax",
        });
        if a.layers.is_some() {
            v["layers"] = json!(scores);
            v["best_layer"] = json!(best.layer);
        }
        write_atomic(p, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}

pub fn make_dataset(a: MakeDatasetArgs) -> anyhow::Result<()> {
    use ditlens_core::shapes::{write_dataset_with, CaptionSampler, SceneConfig};
    let config = SceneConfig {
        area_matched: a.area_matched,
        ..SceneConfig::with_size(a.size)
    };
    let s = write_dataset_with(&a.out, a.count, a.seed, &config, &CaptionSampler::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "wrote {} scenes ({}×{} pixels, seed {}{}) to {}",
        s.names.len(),
        a.size,
        a.size,
        a.seed,
        if a.area_matched {
            ", area-matched sizes"
        } else {
            ""
        },
        s.dir.display()
    );
    Ok(())
}
