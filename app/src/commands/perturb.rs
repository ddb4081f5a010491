//! `ditlens perturb-sweep`: one generation per perturbed block, a figure and scores per block.

use ditlens_core::embedded::pipeline::GenerateOptions;
use ditlens_core::embedded::sweep::SweepOptions;
use ditlens_core::figure::{write_png, write_svg};
use ditlens_core::io::write_atomic;
use ditlens_core::perturb::BlurSpec;

use super::embedded::bar;
use super::probe::parse_list;
use crate::cli::PerturbSweepArgs;
use crate::models::open_embedded;

pub fn sweep(a: PerturbSweepArgs) -> anyhow::Result<()> {
    let model = open_embedded(a.model.model.as_deref(), a.model.embedded.as_deref())?;
    anyhow::ensure!(a.steps > 0, "--steps must be at least 1");
    let layers = parse_list(&a.layers, model.cfg.transformer.num_layers, "layer")?;
    let opts = SweepOptions {
        generate: GenerateOptions {
            seed: a.seed,
            steps: a.steps,
            guidance: a.guidance,
            blur: None,
            perturb_guidance: a.perturb_guidance,
        },
        blur: BlurSpec {
            layers: vec![],
            sigma: a.blur_sigma,
            kernel: a.blur_kernel,
            renorm: a.blur_renorm,
        },
        layers: Some(layers.clone()),
        seg_layer: a.seg_layer,
    };
    let pb = bar(layers.len() + 1, "sweep");
    let s = model.perturb_sweep(&a.prompt, &opts, |i, _| {
        pb.set_position(i as u64);
        true
    })?;
    pb.finish_and_clear();
    let fig = s.figure()?;
    write_png(&fig, &a.figure.out)?;
    if let Some(p) = &a.figure.svg {
        write_svg(&fig, p)?;
    }
    if let Some(p) = &a.json {
        write_atomic(p, serde_json::to_string_pretty(&s)?.as_bytes())?;
    }
    println!(
        "block         align   objects  pixel change   (segment at block {}, classes {})",
        s.seg_layer,
        s.classes.join(",")
    );
    let row = |name: String, e: &ditlens_core::embedded::sweep::SweepEntry, mark: &str| {
        println!(
            "{name:<12}  {:.3}   {:>5.1}%   {:.3}{mark}",
            e.alignment,
            100.0 * e.object_share,
            e.pixel_change
        )
    };
    row("unperturbed".into(), &s.unperturbed, "");
    for e in &s.perturbed {
        let l = e.layer.unwrap_or_default();
        let mark = if l == s.strongest_layer {
            "  ← strongest effect"
        } else {
            ""
        };
        row(format!("block {l}"), e, mark);
    }
    if let Some(w) = &s.warning {
        eprintln!("note: {w}");
    }
    eprintln!("wrote {}", a.figure.out.display());
    Ok(())
}
