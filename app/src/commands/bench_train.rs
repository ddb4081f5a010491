//! `ditlens bench-train`: seconds per training step of the embedded recipe with candle's autograd
//! (the baseline, measured in the same run) and with the hand-written CPU engine.

use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use ditlens_core::embedded::{EngineKind, ToyConfig, Trainer};
use ditlens_core::io::write_atomic;
use serde_json::json;

use crate::cli::BenchTrainArgs;

/// One engine's figures.
struct Timing {
    engine: &'static str,
    first_loss: f64,
    seconds_per_step: f64,
}

/// Warm-up, then the mean time of `steps` steps from the same seed and the same batches.
fn time_engine(cfg: &ToyConfig, kind: EngineKind, a: &BenchTrainArgs) -> anyhow::Result<Timing> {
    let mut t = Trainer::new(cfg.clone(), &Device::Cpu).context("building the trainer")?;
    t.set_engine(kind)?;
    let engine = match kind {
        EngineKind::Candle => "candle autograd",
        EngineKind::Cpu => "cpu engine",
    };
    let mut first_loss = f64::NAN;
    for i in 0..a.warmup {
        let s = t.train_step()?;
        if i == 0 {
            first_loss = s.loss;
        }
    }
    let t0 = Instant::now();
    for i in 0..a.steps {
        let s = t.train_step()?;
        if a.warmup == 0 && i == 0 {
            first_loss = s.loss;
        }
    }
    let seconds_per_step = t0.elapsed().as_secs_f64() / a.steps as f64;
    Ok(Timing {
        engine,
        first_loss,
        seconds_per_step,
    })
}

pub fn run(a: BenchTrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.batch > 0 && a.steps > 0,
        "--batch and --steps must be positive"
    );
    let mut cfg = ToyConfig::recipe(!a.plain);
    cfg.train.batch = a.batch;
    cfg.train.init = None;
    // Alignment from the first step, so every timed step pays for it.
    cfg.train.mask_align_start = 0;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into());
    println!(
        "{} recipe, batch {}, {} warm-up + {} timed steps per engine, threads: {threads}",
        if a.plain { "plain" } else { "aligned" },
        a.batch,
        a.warmup,
        a.steps
    );
    let base = time_engine(&cfg, EngineKind::Candle, &a)?;
    let cpu = time_engine(&cfg, EngineKind::Cpu, &a)?;
    println!("engine            s/step   samples/s   speed-up   first loss");
    let mut rows = vec![];
    for r in [&base, &cpu] {
        let speedup = base.seconds_per_step / r.seconds_per_step;
        println!(
            "{:<16} {:>7.3}   {:>9.1}   {:>7.2}×   {:.6}",
            r.engine,
            r.seconds_per_step,
            a.batch as f64 / r.seconds_per_step,
            speedup,
            r.first_loss
        );
        rows.push(json!({
            "engine": r.engine,
            "seconds_per_step": r.seconds_per_step,
            "samples_per_second": a.batch as f64 / r.seconds_per_step,
            "speedup_vs_candle": speedup,
            "first_loss": r.first_loss,
        }));
    }
    if let Some(p) = &a.json {
        let v = json!({
            "recipe": if a.plain { "plain" } else { "aligned" },
            "batch": a.batch,
            "steps": a.steps,
            "warmup": a.warmup,
            "threads": threads,
            "engines": rows,
        });
        write_atomic(p, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}
