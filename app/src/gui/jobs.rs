//! What the worker does for each command: calls into `ditlens-core` and reports progress.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use candle_core::Tensor;
use ditlens_core::embedded::pipeline::GenerateOptions;
use ditlens_core::export::{
    read_rgb, write_class_pngs, write_label_png, write_overlay_png, write_rgb_png,
};
use ditlens_core::figure::{write_png, write_svg, MassPlot, Plot, ValueNormPlot};
use ditlens_core::metrics::Confusion;
use ditlens_core::perturb::BlurSpec;
use ditlens_core::probe::figures::{head_grid, token_grid};
use ditlens_core::probe::{
    sidecar_path, Feature, MapKind, ProbeCapture, ProbeOptions, ProbeSource,
};
use ditlens_core::segment::{self as seg, SegmentOptions};

use super::protocol::{
    AnalyseJob, Event, ExportJob, GenerateJob, JobId, ModelInfo, ModelSource, PerturbJob, Picture,
};
use super::worker::Link;
use crate::models::ProbeModel;

/// Loads a model and describes it.
pub fn open_model(src: &ModelSource) -> anyhow::Result<(ProbeModel, ModelInfo)> {
    let model = match src {
        ModelSource::Embedded(name) => ProbeModel::open(None, Some(name))?,
        ModelSource::Folder(path) => ProbeModel::open(Some(path), None)?,
    };
    let info = match &model {
        ProbeModel::Embedded(m) => {
            let t = &m.cfg.transformer;
            ModelInfo {
                source: src.clone(),
                variant: "embedded MM-DiT (SD3 code path, pixel space)".into(),
                layers: t.num_layers,
                heads: t.num_attention_heads,
                image_size: m.cfg.image_size,
                text_len: m.cfg.text.max_len,
                expert_layer: m.cfg.expert_layer,
                centre_crop: false,
            }
        }
        ProbeModel::Sd3(p) => {
            let c = p.transformer.config();
            let t5 = p
                .text
                .as_ref()
                .map_or(0, |t| t.options().max_sequence_length);
            ModelInfo {
                source: src.clone(),
                variant: format!("{} ({} form)", p.variant.name(), form_name(p)),
                layers: c.num_layers,
                heads: c.num_attention_heads,
                image_size: p.resolution(),
                text_len: 77 + t5,
                expert_layer: model.expert_layer(),
                centre_crop: true,
            }
        }
    };
    Ok((model, info))
}

fn form_name(p: &ditlens_core::sd3::Sd3Pipeline) -> &'static str {
    match p.parts.form {
        ditlens_core::sd3::ModelForm::PipelineFolder => "diffusers folder",
        ditlens_core::sd3::ModelForm::SingleFile => "single file",
    }
}

/// Decodes an image file.
pub fn load_image(link: &Link, job: JobId, path: PathBuf) -> anyhow::Result<()> {
    let (rgb, width, height) = read_rgb(&path)?;
    link.emit(Event::ImageLoaded(
        job,
        path,
        Picture { rgb, width, height },
    ));
    Ok(())
}

/// The paper's segmentation step (index 20 of 28) scaled to `steps`.
pub fn paper_step(steps: usize) -> usize {
    (steps * 20 / 28).min(steps.saturating_sub(1))
}

fn sample_picture(model: &ProbeModel, x: &Tensor) -> anyhow::Result<Picture> {
    let (rgb, size) = model.preview(x)?;
    Ok(Picture {
        rgb,
        width: size,
        height: size,
    })
}

/// Every step and every block's Q/K/V for the embedded model; for an SD3 pipeline (24 blocks of
/// 4096 image tokens) eight evenly spread steps plus the paper's step, Q/K/V at the expert
/// layer, within a 4 GiB budget (head means when per-head maps do not fit).
fn probe_options(model: &ProbeModel, seed: u64, steps: usize, guidance: f64) -> ProbeOptions {
    match model {
        ProbeModel::Embedded(_) => ProbeOptions {
            seed,
            steps,
            guidance,
            qkv_layers: (0..model.layers()).collect(),
            ..ProbeOptions::default()
        },
        ProbeModel::Sd3(_) => {
            let mut keep: Vec<usize> = (0..8).map(|k| k * steps / 8).collect();
            keep.push(paper_step(steps));
            keep.retain(|&s| s < steps);
            keep.sort_unstable();
            keep.dedup();
            ProbeOptions {
                seed,
                steps,
                guidance,
                keep: Some(keep),
                qkv_layers: vec![model.expert_layer()],
                max_memory: 4 << 30,
                ..ProbeOptions::default()
            }
        }
    }
}

/// Generates with capture at every step, sending each step's sample.
pub fn generate(
    model: &ProbeModel,
    link: &mut Link,
    job: JobId,
    g: &GenerateJob,
) -> anyhow::Result<Arc<ProbeCapture>> {
    let opts = probe_options(model, g.seed, g.steps, g.guidance);
    let mut failure = None;
    let cap = model.probe_steps(&g.prompt, ProbeSource::Generate, &opts, |done, total, x| {
        link.emit(Event::Progress {
            job,
            done,
            total,
            what: "generating".into(),
        });
        if let Some(x) = x {
            match sample_picture(model, x) {
                Ok(picture) => link.emit(Event::StepImage {
                    job,
                    step: done,
                    picture,
                }),
                Err(e) => failure = Some(e),
            }
        }
        failure.is_none() && link.keep_going()
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let cap = Arc::new(cap?);
    let picture = cap.image.as_ref().map(|(rgb, s)| Picture {
        rgb: rgb.clone(),
        width: *s,
        height: *s,
    });
    link.emit(Event::Captured {
        job,
        capture: cap.clone(),
        picture,
    });
    Ok(cap)
}

/// Captures an image at every step, then masks, proposals and (with ground truth) mIoU per layer.
pub fn analyse(
    model: &ProbeModel,
    link: &mut Link,
    job: JobId,
    a: &AnalyseJob,
) -> anyhow::Result<Arc<ProbeCapture>> {
    let prompt = model.class_prompt(&a.classes)?;
    let opts = probe_options(model, a.seed, a.steps, 0.0);
    let p = &a.picture;
    let source = ProbeSource::Image {
        rgb: &p.rgb,
        width: p.width,
        height: p.height,
    };
    let extra = 2 + usize::from(a.truth.is_some());
    let total = a.steps + extra;
    let cap = model.probe_steps(&prompt, source, &opts, |done, _, _| {
        link.emit(Event::Progress {
            job,
            done,
            total,
            what: "capturing".into(),
        });
        link.keep_going()
    })?;
    let cap = Arc::new(cap);
    link.emit(Event::Captured {
        job,
        capture: cap.clone(),
        picture: None,
    });
    segment(model, link, job, p, &a.classes, a.layer)?;
    link.emit(Event::Progress {
        job,
        done: a.steps + 1,
        total,
        what: "segmenting".into(),
    });
    if !link.keep_going() {
        anyhow::bail!("cancelled");
    }
    unsupervised(model, link, job, p, a.layer, a.threshold)?;
    if let Some((names, truth)) = &a.truth {
        link.emit(Event::Progress {
            job,
            done: a.steps + 2,
            total,
            what: "scoring every layer".into(),
        });
        if !link.keep_going() {
            anyhow::bail!("cancelled");
        }
        let scores = layer_scores(model, a, names, truth)?;
        link.emit(Event::LayerScores(job, scores));
    }
    Ok(cap)
}

/// mIoU of each layer's masks against the exact labels of a sample scene.
fn layer_scores(
    model: &ProbeModel,
    a: &AnalyseJob,
    names: &[String],
    truth: &[u8],
) -> anyhow::Result<Vec<f64>> {
    let mut present: Vec<u8> = truth.to_vec();
    present.sort_unstable();
    present.dedup();
    let classes: Vec<String> = present
        .iter()
        .map(|&c| {
            names
                .get(c as usize)
                .cloned()
                .with_context(|| format!("label {c} has no class name"))
        })
        .collect::<anyhow::Result<_>>()?;
    let layers: Vec<usize> = (0..model.layers()).collect();
    let p = &a.picture;
    let opts = segment_options(a.seed, a.steps, None);
    let preds = seg::segment_layers(
        model.segmenter(),
        &p.rgb,
        p.width,
        p.height,
        &classes,
        &layers,
        &opts,
    )?;
    let mut out = vec![];
    for pred in preds {
        let mapped: Vec<u8> = pred.iter().map(|&j| present[j as usize]).collect();
        let mut conf = Confusion::new(names.len())?;
        conf.add(&mapped, truth)?;
        // mIoU over the classes present (absent classes have no IoU).
        out.push(conf.mean_iou());
    }
    Ok(out)
}

fn segment_options(seed: u64, steps: usize, layer: Option<usize>) -> SegmentOptions {
    let steps = steps.max(1);
    SegmentOptions {
        layer,
        seed,
        steps,
        step_index: paper_step(steps),
    }
}

/// Open-vocabulary masks at a layer.
pub fn segment(
    model: &ProbeModel,
    link: &Link,
    job: JobId,
    p: &Picture,
    classes: &[String],
    layer: usize,
) -> anyhow::Result<()> {
    let seg = seg::segment(
        model.segmenter(),
        &p.rgb,
        p.width,
        p.height,
        classes,
        &segment_options(0, 28, Some(layer)),
    )?;
    link.emit(Event::Segmented(job, Box::new(seg)));
    Ok(())
}

/// Unsupervised proposals at a layer and threshold.
pub fn unsupervised(
    model: &ProbeModel,
    link: &Link,
    job: JobId,
    p: &Picture,
    layer: usize,
    threshold: f32,
) -> anyhow::Result<()> {
    let props = seg::segment_unsupervised(
        model.segmenter(),
        &p.rgb,
        p.width,
        p.height,
        threshold,
        &segment_options(0, 28, Some(layer)),
    )?;
    link.emit(Event::Proposals(job, Box::new(props)));
    Ok(())
}

/// PCA of image Q/K/V of the last capture.
pub fn pca(
    cap: Option<&ProbeCapture>,
    link: &Link,
    job: JobId,
    step: usize,
    layer: usize,
    feature: Feature,
) -> anyhow::Result<()> {
    let cap = cap.context("nothing is captured yet: generate or analyse an image first")?;
    let img = cap.pca(step, layer, feature)?;
    link.emit(Event::Pca {
        job,
        step,
        layer,
        picture: Picture {
            rgb: img.rgb,
            width: img.width,
            height: img.height,
        },
        explained: img.explained_variance_ratio,
    });
    Ok(())
}

/// The same seed generated without and with the I2T blur.
pub fn perturb(
    model: &ProbeModel,
    link: &mut Link,
    job: JobId,
    p: &PerturbJob,
) -> anyhow::Result<()> {
    let blur = BlurSpec {
        layers: p.layers.clone(),
        sigma: p.sigma,
        kernel: p.kernel,
        renorm: false,
    };
    let model = match model {
        ProbeModel::Embedded(m) => m,
        ProbeModel::Sd3(pipe) => return perturb_sd3(pipe, link, job, p, blur),
    };
    let g = &p.generate;
    let base = GenerateOptions {
        seed: g.seed,
        steps: g.steps,
        guidance: g.guidance,
        blur: None,
        perturb_guidance: None,
    };
    let blurred = GenerateOptions {
        blur: Some(blur),
        perturb_guidance: p.scale,
        ..base.clone()
    };
    blurred.perturbation()?;
    let total = 2 * g.steps;
    let run = |opts: &GenerateOptions, offset: usize, link: &mut Link| {
        model.generate(&g.prompt, opts, |done, _, _| {
            perturb_progress(link, job, offset + done, total, offset > 0)
        })
    };
    let a = run(&base, 0, link)?;
    let b = run(&blurred, g.steps, link)?;
    let pic = |rgb: Vec<u8>, s: usize| Picture {
        rgb,
        width: s,
        height: s,
    };
    link.emit(Event::Perturbed {
        job,
        plain: pic(a.rgb, a.size),
        perturbed: pic(b.rgb, b.size),
    });
    Ok(())
}

/// Reports a step of the perturbation experiment's two runs; `false` when cancelled.
fn perturb_progress(
    link: &mut Link,
    job: JobId,
    done: usize,
    total: usize,
    perturbed: bool,
) -> bool {
    link.emit(Event::Progress {
        job,
        done,
        total,
        what: if perturbed {
            "perturbed"
        } else {
            "unperturbed"
        }
        .into(),
    });
    link.keep_going()
}

/// [`perturb`] on an SD3 pipeline: the same seeded noise sampled twice, decoded by the VAE.
fn perturb_sd3(
    pipe: &ditlens_core::sd3::Sd3Pipeline,
    link: &mut Link,
    job: JobId,
    p: &PerturbJob,
    blur: BlurSpec,
) -> anyhow::Result<()> {
    use ditlens_core::perturb::Perturbation;
    let g = &p.generate;
    let noise = ditlens_core::embedded::model::seeded_randn(
        &pipe.latent_shape(),
        g.seed,
        &candle_core::Device::Cpu,
    )?;
    let base = ditlens_core::sd3::GenerateOptions {
        steps: g.steps,
        guidance: g.guidance,
        ..Default::default()
    };
    let blurred = ditlens_core::sd3::GenerateOptions {
        perturbation: Perturbation::from_flags(Some(&blur), p.scale)?,
        ..base.clone()
    };
    let total = 2 * g.steps;
    let mut run = |opts: &ditlens_core::sd3::GenerateOptions, offset: usize| {
        let out = pipe.generate(&g.prompt, "", &noise, opts, |done, _, _| {
            perturb_progress(link, job, offset + done, total, offset > 0)
        })?;
        let pic = pipe.decode(&out.latents)?;
        anyhow::Ok(Picture {
            width: pic.width() as usize,
            height: pic.height() as usize,
            rgb: pic.into_raw(),
        })
    };
    let plain = run(&base, 0)?;
    let perturbed = run(&blurred, g.steps)?;
    link.emit(Event::Perturbed {
        job,
        plain,
        perturbed,
    });
    Ok(())
}

pub(super) fn figure(plot: &impl Plot, path: &Path) -> anyhow::Result<()> {
    let svg = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if svg {
        write_svg(plot, path)?;
    } else {
        write_png(plot, path)?;
    }
    Ok(())
}

/// Writes what the user asked for and says where it went.
pub fn export(link: &Link, job: JobId, e: ExportJob) -> anyhow::Result<()> {
    let kind = |t2i: bool| if t2i { MapKind::T2i } else { MapKind::I2t };
    let message = match e {
        ExportJob::Masks {
            path,
            picture: p,
            labels,
            classes,
        } => {
            write_label_png(&path, &labels, p.width, p.height)?;
            let overlay = path.with_extension("overlay.png");
            write_overlay_png(&overlay, &p.rgb, &labels, p.width, p.height)?;
            let dir = path.with_extension("classes");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let n = write_class_pngs(&dir, &labels, p.width, p.height, &classes)?.len();
            format!(
                "masks written: {} (labels), {} (overlay), {} ({n} class masks)",
                path.display(),
                overlay.display(),
                dir.display()
            )
        }
        ExportJob::HeadGrid {
            path,
            capture,
            step,
            token,
            t2i,
        } => {
            figure(&head_grid(&capture, step, token, kind(t2i))?, &path)?;
            format!("layer × head grid written to {}", path.display())
        }
        ExportJob::TokenGrid {
            path,
            capture,
            step,
            layer,
            t2i,
        } => {
            let tokens: Vec<usize> = (0..capture.summary.n_txt).collect();
            figure(
                &token_grid(&capture, step, layer, &tokens, kind(t2i))?,
                &path,
            )?;
            format!("token grid written to {}", path.display())
        }
        ExportJob::Plot {
            path,
            capture,
            step,
            value_norms,
        } => {
            if value_norms {
                let norms = capture.value_norms(step)?;
                figure(
                    &ValueNormPlot {
                        norms: &norms,
                        title: format!("Value norms per block, step {step}"),
                    },
                    &path,
                )?;
            } else {
                let mass = capture.attention_mass(step)?;
                figure(
                    &MassPlot {
                        mass: &mass,
                        title: format!("Attention mass per block, step {step}"),
                    },
                    &path,
                )?;
            }
            format!("plot written to {}", path.display())
        }
        ExportJob::Capture { path, capture } => {
            let side = sidecar_path(&path);
            capture.save(&path, &side)?;
            format!(
                "captured tensors written to {} (summary {})",
                path.display(),
                side.display()
            )
        }
        ExportJob::Screenshot { path, picture: p } => {
            write_rgb_png(&path, &p.rgb, p.width, p.height)?;
            format!("screenshot written to {}", path.display())
        }
        ExportJob::All(b) => {
            let files = super::export_all::write_bundle(&b)?;
            format!(
                "{} files written to {}: {}",
                files.len(),
                b.dir.display(),
                files.join(", ")
            )
        }
    };
    link.emit(Event::Exported(job, message));
    Ok(())
}
