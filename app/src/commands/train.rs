//! `ditlens train`: trains the embedded model with a progress bar, a loss CSV and resumable
//! checkpoints.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use ditlens_core::embedded::{EngineKind, ToyConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{EngineArg, ExportModelArgs, TrainArgs};

/// The run's config: file or shipped recipe, with command-line overrides.
fn config(a: &TrainArgs) -> anyhow::Result<ToyConfig> {
    let mut c = match &a.config {
        Some(p) => ToyConfig::from_file(p)?,
        None => ToyConfig::recipe(!a.plain),
    };
    let t = &mut c.train;
    if let Some(v) = a.steps {
        t.steps = v;
    }
    if let Some(v) = a.seed {
        t.seed = v;
    }
    if let Some(v) = a.batch {
        t.batch = v;
    }
    if let Some(v) = a.lr {
        t.lr = v;
    }
    if let Some(v) = a.checkpoint_every {
        t.checkpoint_every = v.max(1);
    }
    if a.plain {
        t.mask_align_layer = None;
    }
    if let Some(v) = a.mask_align_layer {
        t.mask_align_layer = Some(v);
    }
    if let Some(v) = a.mask_align_weight {
        t.mask_align_weight = v;
    }
    if let Some(v) = a.mask_align_start {
        t.mask_align_start = v;
    }
    if let Some(v) = a.warmup {
        t.warmup = v;
    }
    match a.init.as_deref() {
        Some("scratch") => t.init = None,
        Some(v) => t.init = Some(v.to_string()),
        None if a.plain => t.init = None,
        None => {}
    }
    if let Some(l) = t.mask_align_layer {
        anyhow::ensure!(
            l < c.model.transformer.num_layers,
            "--mask-align-layer {l} is not a block of the model (0..{})",
            c.model.transformer.num_layers - 1
        );
    }
    anyhow::ensure!(
        t.batch > 0 && t.steps > 0,
        "steps and batch must be positive"
    );
    Ok(c)
}

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    // A `cuda` build trains on the GPU when there is one (`DITLENS_DEVICE=cpu` keeps the CPU).
    let dev = crate::device::compute_device()?;
    let mut trainer = match &a.resume {
        Some(dir) => {
            let mut t = Trainer::resume(dir, &dev)
                .with_context(|| format!("resuming from {}", dir.display()))?;
            if let Some(s) = a.steps {
                t.config.train.steps = s;
            }
            t
        }
        None => {
            let c = config(&a)?;
            match c.train.init.clone() {
                Some(name) if name.starts_with("embedded:") => {
                    let (tr, te) = crate::models::shipped_weights(&name["embedded:".len()..])
                        .with_context(|| format!("--init {name}"))?;
                    eprintln!("fine-tuning from the {name} model");
                    Trainer::with_init_weights(c, &dev, tr, te)?
                }
                Some(dir) => {
                    eprintln!("fine-tuning from {dir}");
                    Trainer::new(c, &dev).with_context(|| format!("--init {dir}"))?
                }
                None => Trainer::new(c, &dev)?,
            }
        }
    };
    if let Some(e) = a.engine {
        trainer.set_engine(match e {
            EngineArg::Cpu => EngineKind::Cpu,
            EngineArg::Candle => EngineKind::Candle,
        })?;
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let total = trainer.config.train.steps;
    let every = trainer.config.train.checkpoint_every;
    eprintln!(
        "training {} steps (batch {}, mask alignment {}) into {}",
        total,
        trainer.config.train.batch,
        match trainer.config.train.mask_align_layer {
            Some(l) if trainer.config.train.mask_align_weight > 0.0 => format!(
                "at block {l}, weight {}",
                trainer.config.train.mask_align_weight
            ),
            _ => "off".into(),
        },
        a.out.display()
    );
    let csv_path = a.out.join("loss.csv");
    // Keep only the rows up to the step the run resumes from (later ones are redone).
    let kept: Vec<String> = std::fs::read_to_string(&csv_path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            l.split(',')
                .next()
                .and_then(|s| s.parse::<usize>().ok())
                .is_some_and(|s| s <= trainer.step)
        })
        .map(str::to_string)
        .collect();
    let mut csv = std::fs::File::create(&csv_path)
        .with_context(|| format!("opening {}", csv_path.display()))?;
    writeln!(csv, "step,loss,mse,align,lr,seconds")?;
    for l in &kept {
        writeln!(csv, "{l}")?;
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(trainer.step as u64);
    let start = Instant::now();
    let mut smooth = None::<f64>;
    while trainer.step < total {
        let s = trainer.train_step()?;
        smooth = Some(smooth.map_or(s.loss, |m| 0.98 * m + 0.02 * s.loss));
        writeln!(
            csv,
            "{},{:.6},{:.6},{:.6},{:.3e},{:.1}",
            s.step,
            s.loss,
            s.mse,
            s.align,
            s.lr,
            start.elapsed().as_secs_f64()
        )?;
        bar.set_position(s.step as u64);
        bar.set_message(format!(
            "loss {:.4} (mse {:.4}, align {:.3})",
            smooth.unwrap_or(s.loss),
            s.mse,
            s.align
        ));
        if s.step % every == 0 || s.step == total {
            csv.flush()?;
            trainer.save(&a.out)?;
        }
    }
    bar.finish();
    eprintln!("done: {} steps, model in {}", trainer.step, a.out.display());
    Ok(())
}

/// `ditlens export-model`.
pub fn export(a: ExportModelArgs) -> anyhow::Result<()> {
    let cfg =
        ditlens_core::embedded::export_model(&a.from, &a.out, a.dtype.dtype(), a.expert_layer)
            .with_context(|| format!("exporting {}", a.from.display()))?;
    eprintln!(
        "model in {} (expert layer {}, {:?} weights)",
        a.out.display(),
        cfg.expert_layer,
        a.dtype
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::config;
    use crate::cli::{Cli, Command};

    fn train_config(args: &[&str]) -> anyhow::Result<ditlens_core::embedded::ToyConfig> {
        let cli = Cli::try_parse_from(["ditlens", "train", "--out", "r"].iter().chain(args))?;
        match cli.command {
            Some(Command::Train(a)) => config(&a),
            other => anyhow::bail!("parsed {other:?}"),
        }
    }

    #[test]
    fn command_line_overrides_the_recipe() {
        let c = train_config(&[
            "--plain",
            "--init",
            "runs/x",
            "--steps",
            "300",
            "--lr",
            "2e-4",
            "--warmup",
            "20",
            "--mask-align-start",
            "50",
        ])
        .unwrap();
        let t = &c.train;
        assert_eq!((t.steps, t.warmup, t.mask_align_start), (300, 20, 50));
        assert_eq!(t.lr, 2e-4);
        assert_eq!(t.init.as_deref(), Some("runs/x"));
        assert_eq!(t.mask_align_layer, None, "--plain turns alignment off");
        // The warm-up ends at step 20, so the fine-tune reaches its lr.
        assert!((t.lr_at(19) - 2e-4).abs() < 1e-12);
        // The shipped aligned recipe, untouched.
        let d = train_config(&[]).unwrap();
        assert_eq!(
            (d.train.mask_align_layer, d.train.mask_align_start),
            (Some(3), 200)
        );
        // Aligned: 64² pixels in 4×4 patches; plain: 32² in 2×2; both a 16×16 token grid.
        let m = &d.model;
        assert_eq!((m.image_size, m.transformer.patch_size), (64, 4));
        let p = train_config(&["--plain"]).unwrap().model;
        assert_eq!((p.image_size, p.transformer.patch_size), (32, 2));
        assert!(d.model.validate().is_ok() && p.validate().is_ok());
        assert!(train_config(&["--mask-align-layer", "6"]).is_err());
    }
}
