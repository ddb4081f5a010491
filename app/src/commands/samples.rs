//! `ditlens train-judge` and `ditlens samples`: the generation metric (a shape classifier) and
//! the scored sample sheet.

use anyhow::Context;
use candle_core::Device;
use ditlens_core::embedded::pipeline::GenerateOptions;
use ditlens_core::embedded::samples::{grid_image, sample_sheet};
use ditlens_core::embedded::shape_judge::{train_judge as train, ShapeJudge};

use super::embedded::bar;
use crate::cli::{SamplesArgs, TrainJudgeArgs};
use crate::models::{open_embedded, shipped_judge};

/// `ditlens train-judge`.
pub fn train_judge(a: TrainJudgeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.steps > 0 && a.batch > 0,
        "steps and batch must be positive"
    );
    let pb = bar(a.steps, "training the shape judge");
    let (bytes, report) = train(a.steps, a.batch, a.seed, a.heldout, |s, loss| {
        pb.set_position(s as u64);
        pb.set_message(format!("loss {loss:.3}"));
    })?;
    pb.finish();
    ditlens_core::io::write_atomic(&a.out, &bytes)?;
    let json = a.out.with_extension("json");
    ditlens_core::io::write_atomic(&json, serde_json::to_string_pretty(&report)?.as_bytes())?;
    println!(
        "held-out accuracy {:.3} on {} scenes; weights {}, report {}",
        report.heldout_accuracy,
        report.heldout_scenes,
        a.out.display(),
        json.display()
    );
    Ok(())
}

/// `ditlens samples`.
pub fn run(a: SamplesArgs) -> anyhow::Result<()> {
    let model = open_embedded(a.model.model.as_deref(), a.model.embedded.as_deref())?;
    let judge = match &a.judge {
        Some(p) => {
            let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            ShapeJudge::from_bytes(&b, &Device::Cpu)
                .with_context(|| format!("loading the shape judge {}", p.display()))?
        }
        None => ShapeJudge::from_bytes(
            shipped_judge().context("this build has no embedded shape judge; pass --judge FILE")?,
            &Device::Cpu,
        )?,
    };
    anyhow::ensure!(!a.seeds.is_empty(), "--seeds is empty");
    let opts = GenerateOptions {
        steps: a.steps,
        guidance: a.guidance,
        ..Default::default()
    };
    let pb = bar(32 * a.seeds.len(), "generating");
    let (report, images) = sample_sheet(&model, &judge, &a.seeds, &opts, |d, _| {
        pb.set_position(d as u64)
    })?;
    pb.finish();
    let cols = 4 * a.seeds.len();
    // Cells of about 128 px whatever the model's size.
    let zoom = (128 / model.cfg.image_size).max(1);
    grid_image(&images, model.cfg.image_size, cols, zoom)
        .save(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    if let Some(j) = &a.json {
        ditlens_core::io::write_atomic(j, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    println!(
        "colour right {:.1}%, shape right {:.1}% of {} samples; sheet {}",
        100.0 * report.colour_rate,
        100.0 * report.shape_rate,
        report.samples.len(),
        a.out.display()
    );
    Ok(())
}
