//! The analysis commands on a capture: `mass`, `value-norms`, `pca`, `head-grid`, `token-grid`.
//! Each writes a PNG figure (and SVG on request) plus CSV/JSON numbers.

use std::path::Path;

use ditlens_core::figure::{write_png, write_svg, MassPlot, Plot, ValueNormPlot};
use ditlens_core::io::write_atomic;
use ditlens_core::probe::figures::{
    head_grid as head_grid_figure, pca_grid, token_grid as token_grid_figure,
};
use ditlens_core::probe::{Feature, MapKind, ProbeCapture, TokenKind};
use serde_json::json;

use super::probe::{default_layer, open_source, parse_list, Needs};
use crate::cli::{FigureArgs, HeadGridArgs, MassArgs, PcaArgs, TokenGridArgs, ValueNormsArgs};

fn write_figure(plot: &impl Plot, f: &FigureArgs) -> anyhow::Result<()> {
    write_png(plot, &f.out)?;
    if let Some(svg) = &f.svg {
        write_svg(plot, svg)?;
    }
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> anyhow::Result<()> {
    Ok(write_atomic(
        path,
        serde_json::to_string_pretty(v)?.as_bytes(),
    )?)
}

/// Short description of where the numbers come from, for titles.
fn origin(cap: &ProbeCapture, step: usize) -> String {
    let s = &cap.summary;
    let sigma = s.kept(step).map(|k| k.sigma).unwrap_or(f32::NAN);
    format!(
        "\"{}\", step {step} of {} (σ {sigma:.3})",
        s.prompt, s.steps
    )
}

fn steps_json(cap: &ProbeCapture, step: usize) -> serde_json::Value {
    let k = cap.summary.kept(step).ok();
    json!({
        "prompt": cap.summary.prompt, "mode": cap.summary.mode, "step": step,
        "steps": cap.summary.steps, "sigma": k.map(|k| k.sigma), "timestep": k.map(|k| k.timestep),
    })
}

pub fn mass(a: MassArgs) -> anyhow::Result<()> {
    let needs = Needs {
        row_share: true,
        ..Default::default()
    };
    let (cap, step) = open_source(&a.source, &needs)?;
    let m = cap.attention_mass(step)?;
    let plot = MassPlot {
        mass: &m,
        title: format!("Attention mass per block — {}", origin(&cap, step)),
    };
    write_figure(&plot, &a.figure)?;
    if let Some(p) = &a.csv {
        write_atomic(p, m.to_csv().as_bytes())?;
    }
    if let Some(p) = &a.json {
        let shares = |s: &ditlens_core::analysis::MassShares| json!({"i2i": s.i2i, "i2t": s.i2t, "t2i": s.t2i, "t2t": s.t2t});
        let layers: Vec<_> = m
            .layers
            .iter()
            .map(|l| json!({"mean": shares(&l.mean), "heads": l.heads.iter().map(shares).collect::<Vec<_>>()}))
            .collect();
        let mut v = steps_json(&cap, step);
        v["n_img"] = json!(m.n_img);
        v["n_txt"] = json!(m.n_txt);
        v["uniform_img"] = json!(m.uniform_img());
        v["uniform_txt"] = json!(m.uniform_txt());
        v["layers"] = json!(layers);
        write_json(p, &v)?;
    }
    println!(
        "block  I2I     I2T     T2I     T2T     (head mean; uniform: image {:.3}, text {:.3})",
        m.uniform_img(),
        m.uniform_txt()
    );
    for (l, layer) in m.layers.iter().enumerate() {
        let s = layer.mean;
        println!(
            "{l:>5}  {:.4}  {:.4}  {:.4}  {:.4}",
            s.i2i, s.i2t, s.t2i, s.t2t
        );
    }
    eprintln!("wrote {}", a.figure.out.display());
    Ok(())
}

pub fn value_norms(a: ValueNormsArgs) -> anyhow::Result<()> {
    let needs = Needs {
        value_norm: true,
        ..Default::default()
    };
    let (cap, step) = open_source(&a.source, &needs)?;
    let v = cap.value_norms(step)?;
    let plot = ValueNormPlot {
        norms: &v,
        title: format!("Mean value norm per block — {}", origin(&cap, step)),
    };
    write_figure(&plot, &a.figure)?;
    if let Some(p) = &a.csv {
        write_atomic(p, v.to_csv().as_bytes())?;
    }
    let prompt_tokens: Vec<usize> = cap
        .summary
        .tokens
        .iter()
        .filter(|t| t.kind == TokenKind::Word)
        .map(|t| t.index)
        .collect();
    if let Some(p) = &a.json {
        let mut j = steps_json(&cap, step);
        j["prompt_tokens"] = json!(prompt_tokens);
        j["layers"] = json!(v
            .layers
            .iter()
            .map(|l| json!({"image": l.image, "text": l.text, "prompt": (!l.prompt.is_nan()).then_some(l.prompt)}))
            .collect::<Vec<_>>());
        write_json(p, &j)?;
    }
    println!("block  image    text     prompt   (prompt tokens: {prompt_tokens:?}; padding, BOS, EOS excluded)");
    for (l, n) in v.layers.iter().enumerate() {
        println!("{l:>5}  {:.4}  {:.4}  {:.4}", n.image, n.text, n.prompt);
    }
    eprintln!("wrote {}", a.figure.out.display());
    Ok(())
}

pub fn pca(a: PcaArgs) -> anyhow::Result<()> {
    let features = a
        .features
        .split(',')
        .filter(|f| !f.trim().is_empty())
        .map(|f| f.parse::<Feature>())
        .collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(
        !features.is_empty(),
        "--features is empty: give q, k and/or v"
    );
    let needs = Needs {
        qkv: a.layers.clone(),
        wants_qkv: true,
        ..Default::default()
    };
    let (cap, step) = open_source(&a.source, &needs)?;
    let layers = match &a.layers {
        Some(s) => parse_list(s, cap.summary.layers, "layer")?,
        None => vec![default_layer(&cap)],
    };
    let grid = pca_grid(&cap, step, &layers, &features)?;
    write_figure(&grid, &a.figure)?;
    if let Some(p) = &a.json {
        let mut rows = vec![];
        for &l in &layers {
            for &f in &features {
                let pca = cap.pca(step, l, f)?;
                rows.push(json!({"layer": l, "feature": f, "explained_variance_ratio": pca.explained_variance_ratio, "components": pca.n_components}));
            }
        }
        let mut v = steps_json(&cap, step);
        v["grid"] = json!(cap.summary.grid);
        v["pca"] = json!(rows);
        write_json(p, &v)?;
    }
    eprintln!("wrote {}", a.figure.out.display());
    Ok(())
}

pub fn head_grid(a: HeadGridArgs) -> anyhow::Result<()> {
    let kind: MapKind = a.map.parse()?;
    let needs = Needs {
        i2t: kind == MapKind::I2t,
        t2i: kind == MapKind::T2i,
        ..Default::default()
    };
    let (cap, step) = open_source(&a.source, &needs)?;
    let token = cap.summary.token_index(&a.token)?;
    let grid = head_grid_figure(&cap, step, token, kind)?;
    write_figure(&grid, &a.figure)?;
    eprintln!("wrote {}", a.figure.out.display());
    Ok(())
}

pub fn token_grid(a: TokenGridArgs) -> anyhow::Result<()> {
    let kind: MapKind = a.map.parse()?;
    let needs = Needs {
        i2t: kind == MapKind::I2t,
        t2i: kind == MapKind::T2i,
        ..Default::default()
    };
    let (cap, step) = open_source(&a.source, &needs)?;
    let s = &cap.summary;
    let tokens = match a.tokens.trim() {
        "prompt" => s
            .tokens
            .iter()
            .filter(|t| t.kind == TokenKind::Word)
            .map(|t| t.index)
            .collect(),
        other => parse_list(other, s.n_txt, "token")?,
    };
    anyhow::ensure!(
        !tokens.is_empty(),
        "the prompt has no word token; use --tokens all"
    );
    let layer = a.layer.unwrap_or_else(|| default_layer(&cap));
    let grid = token_grid_figure(&cap, step, layer, &tokens, kind)?;
    write_figure(&grid, &a.figure)?;
    eprintln!("wrote {}", a.figure.out.display());
    Ok(())
}
