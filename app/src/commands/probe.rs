//! `ditlens probe`, and the capture every analysis command reads: a probe file, or a probe of
//! the prompt (and image) run now with only what that analysis needs.

use std::time::Instant;

use anyhow::Context;
use ditlens_core::export::{read_rgb, write_rgb_png};
use ditlens_core::probe::{
    parse_bytes, sidecar_path, Bytes, HeadStorage, ProbeCapture, ProbeOptions, ProbeSource,
};

use super::embedded::bar;
use crate::cli::{ProbeArgs, SourceArgs};
use crate::models::ProbeModel;

/// `all` → `0..n`, else a comma list of indices below `n`.
pub(super) fn parse_list(s: &str, n: usize, what: &str) -> anyhow::Result<Vec<usize>> {
    if s.trim() == "all" {
        return Ok((0..n).collect());
    }
    let mut out = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let i: usize = part
            .parse()
            .with_context(|| format!("{what} `{part}` is not `all` or an index"))?;
        anyhow::ensure!(
            i < n,
            "{what} {i} does not exist (valid: 0..{})",
            n.saturating_sub(1)
        );
        out.push(i);
    }
    anyhow::ensure!(!out.is_empty(), "no {what} given");
    Ok(out)
}

/// Probe a read image (RGB, width, height), or generate when there is none.
fn probe_source(image: &Option<(Vec<u8>, usize, usize)>) -> ProbeSource<'_> {
    match image {
        Some((rgb, w, h)) => ProbeSource::Image {
            rgb,
            width: *w,
            height: *h,
        },
        None => ProbeSource::Generate,
    }
}

/// Says on stderr how the attention maps were kept, loudly when the budget forced head means.
fn report_memory(cap: &ProbeCapture) {
    let m = &cap.summary.memory;
    match m.storage {
        HeadStorage::PerHead => eprintln!("memory: {}", m.note),
        HeadStorage::HeadMean => eprintln!("note: {}", m.note),
    }
}

pub fn run(a: ProbeArgs) -> anyhow::Result<()> {
    let model = ProbeModel::open(a.model.model.as_deref(), a.model.embedded.as_deref())?;
    anyhow::ensure!(a.steps > 0, "--steps must be at least 1");
    let n_layers = model.layers();
    let opts = ProbeOptions {
        seed: a.seed,
        steps: a.steps,
        keep: Some(parse_list(&a.steps_to_keep, a.steps, "step")?),
        guidance: a.guidance,
        qkv_layers: match &a.qkv_layers {
            Some(s) => parse_list(s, n_layers, "Q/K/V layer")?,
            None => vec![],
        },
        max_memory: parse_bytes(&a.max_memory)?,
        ..Default::default()
    };
    let image = a.image.as_deref().map(read_rgb).transpose()?;
    let source = probe_source(&image);
    let total = if image.is_some() {
        opts.keep.as_ref().map_or(a.steps, Vec::len)
    } else {
        a.steps
    };
    let pb = bar(total, "probe");
    let cap = model.probe(&a.prompt, source, &opts, |i, _| {
        pb.set_position(i as u64);
        true
    })?;
    pb.finish_and_clear();
    report_memory(&cap);
    let side = a.json.clone().unwrap_or_else(|| sidecar_path(&a.out));
    cap.save(&a.out, &side)?;
    if let (Some(p), Some((rgb, size))) = (&a.image_out, &cap.image) {
        write_rgb_png(p, rgb, *size, *size)?;
    }
    let s = &cap.summary;
    eprintln!(
        "probed {} of {} steps × {} blocks ({} tensors, {}) in {:.2} s → {} and {}",
        s.kept_steps.len(),
        s.steps,
        s.layers,
        s.tensors.len(),
        Bytes(s.memory.stored_bytes),
        s.seconds,
        a.out.display(),
        side.display()
    );
    Ok(())
}

/// What an analysis needs captured.
#[derive(Debug, Clone, Default)]
pub(super) struct Needs {
    pub i2t: bool,
    pub t2i: bool,
    pub row_share: bool,
    pub value_norm: bool,
    /// Q/K/V blocks as the user gave them (`all` or a list); `None` = the expert layer.
    pub qkv: Option<String>,
    pub wants_qkv: bool,
}

/// The paper's analysis step, "t = 8 of 28": index 20 of 28, scaled to other step counts.
fn default_step(steps: usize) -> usize {
    (steps * 20 / 28).min(steps.saturating_sub(1))
}

/// Opens `--capture` or probes `--prompt` (`--image`) now at one step; returns the capture and
/// the step to analyse.
pub(super) fn open_source(a: &SourceArgs, needs: &Needs) -> anyhow::Result<(ProbeCapture, usize)> {
    if let Some(path) = &a.capture {
        let cap = ProbeCapture::load(path)?;
        let step = match a.step {
            Some(s) => s,
            None => {
                let want = default_step(cap.summary.steps);
                cap.summary
                    .kept_steps
                    .iter()
                    .min_by_key(|k| k.index.abs_diff(want))
                    .map(|k| k.index)
                    .context("the capture keeps no step")?
            }
        };
        cap.summary.kept(step)?;
        return Ok((cap, step));
    }
    let prompt = a
        .prompt
        .as_deref()
        .context("give --prompt (or --capture FILE)")?;
    let model = ProbeModel::open(a.model.model.as_deref(), a.model.embedded.as_deref())?;
    anyhow::ensure!(a.steps > 0, "--steps must be at least 1");
    let step = a.step.unwrap_or_else(|| default_step(a.steps));
    let qkv_layers = match (&needs.qkv, needs.wants_qkv) {
        (Some(l), true) => parse_list(l, model.layers(), "layer")?,
        (None, true) => vec![model.expert_layer()],
        (_, false) => vec![],
    };
    let opts = ProbeOptions {
        seed: a.seed,
        steps: a.steps,
        keep: Some(vec![step]),
        guidance: a.guidance,
        i2t: needs.i2t,
        t2i: needs.t2i,
        row_share: needs.row_share,
        value_norm: needs.value_norm,
        qkv_layers,
        ..Default::default()
    };
    let image = a.image.as_deref().map(read_rgb).transpose()?;
    let source = probe_source(&image);
    let t0 = Instant::now();
    let cap = model.probe(prompt, source, &opts, |_, _| true)?;
    report_memory(&cap);
    eprintln!(
        "probed step {step} of {} in {:.2} s",
        a.steps,
        t0.elapsed().as_secs_f64()
    );
    Ok((cap, step))
}

/// Default block of a capture's model (its expert layer, else the middle block).
pub(super) fn default_layer(cap: &ProbeCapture) -> usize {
    cap.summary.expert_layer.unwrap_or(cap.summary.layers / 2)
}
