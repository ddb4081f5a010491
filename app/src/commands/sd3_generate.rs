//! `ditlens generate` on an SD3 pipeline folder or single file (the embedded model's `generate`
//! is in `embedded.rs`): prompt or given embeddings, seeded or given initial noise, final latents
//! saved before the VAE decode, PNG out.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use ditlens_core::embedded::model::seeded_randn;
use ditlens_core::export::write_rgb_png;
use ditlens_core::io::{read_safetensors, write_safetensors};
use ditlens_core::perturb::Perturbation;
use ditlens_core::sd3::text::PromptEncoding;
use ditlens_core::sd3::{GenerateOptions, Sd3Pipeline};

use super::embedded::bar;
use crate::cli::{DtypeArg, GenerateArgs};
use crate::models::{classify, ModelPath};

/// `generate`: SD3 when `--model` is a pipeline, else the embedded model (unchanged).
pub fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let sd3 = match a.model.model.as_deref() {
        Some(p) => match classify(p)? {
            ModelPath::Sd3(p) => Some(p),
            ModelPath::Embedded(_) => None,
        },
        None => None,
    };
    match sd3 {
        Some(p) => run(&p, a),
        None => {
            let sd3_only = [
                (a.init_noise.is_some(), "--init-noise"),
                (a.save_latents.is_some(), "--save-latents"),
                (a.prompt_embeds.is_some(), "--prompt-embeds"),
                (!a.negative_prompt.is_empty(), "--negative-prompt"),
                (a.dtype != DtypeArg::F32, "--dtype"),
            ];
            if let Some((_, flag)) = sd3_only.iter().find(|(set, _)| *set) {
                bail!("{flag} is for SD3 pipelines (--model PIPELINE_DIR or FILE.safetensors)");
            }
            super::embedded::generate(a)
        }
    }
}

/// Reads one named tensor of a safetensors file, naming the file and what it holds if absent.
fn take(map: &mut HashMap<String, Tensor>, name: &str, file: &Path) -> anyhow::Result<Tensor> {
    map.remove(name).with_context(|| {
        let mut have: Vec<&String> = map.keys().collect();
        have.sort();
        format!(
            "{} has no tensor `{name}` (it has {have:?})",
            file.display()
        )
    })
}

fn encoding(prompt_embeds: Tensor, pooled: Tensor) -> PromptEncoding {
    PromptEncoding {
        prompt_embeds,
        pooled,
        tokens: vec![],
        truncated: None,
    }
}

/// The prompt's and the negative prompt's embeddings from `--prompt-embeds` / `--negative-embeds`.
fn given_embeddings(
    file: &Path,
    negative: Option<&Path>,
    dev: &Device,
) -> anyhow::Result<(PromptEncoding, Option<PromptEncoding>)> {
    let mut m = read_safetensors(file, dev)?;
    let cond = encoding(
        take(&mut m, "prompt_embeds", file)?,
        take(&mut m, "pooled_prompt_embeds", file)?,
    );
    let uncond = match negative {
        Some(n) => {
            let mut nm = read_safetensors(n, dev)?;
            Some(encoding(
                take(&mut nm, "prompt_embeds", n)?,
                take(&mut nm, "pooled_prompt_embeds", n)?,
            ))
        }
        None if m.contains_key("negative_prompt_embeds") => Some(encoding(
            take(&mut m, "negative_prompt_embeds", file)?,
            take(&mut m, "negative_pooled_prompt_embeds", file)?,
        )),
        None => None,
    };
    Ok((cond, uncond))
}

fn run(path: &Path, a: GenerateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.steps > 0, "--steps must be at least 1");
    anyhow::ensure!(a.upscale >= 1, "--upscale must be at least 1");
    let perturbation = Perturbation::from_flags(
        super::forward::blur_spec(&a.blur).as_ref(),
        a.perturb_guidance,
    )?;
    let dev = crate::device::compute_device()?;
    let dtype = a.dtype.dtype();
    let t0 = Instant::now();
    let pipe = if a.prompt_embeds.is_some() {
        Sd3Pipeline::open_without_text(path, &dev, dtype)
    } else {
        Sd3Pipeline::open(path, &dev, dtype, a.text.options())
    }
    .with_context(|| format!("loading {}", path.display()))?;
    eprintln!(
        "loaded {} ({}) in {:.1} s",
        path.display(),
        pipe.variant.name(),
        t0.elapsed().as_secs_f64()
    );
    let noise = match &a.init_noise {
        Some(f) => {
            let mut m = read_safetensors(f, &dev)?;
            take(&mut m, "noise", f)?
        }
        None => seeded_randn(&pipe.latent_shape(), a.seed, &dev)?,
    };
    let opts = GenerateOptions {
        steps: a.steps,
        guidance: a.guidance,
        perturbation,
        ..Default::default()
    };
    let pb = bar(a.steps, "generate");
    let progress = |i: usize, _: usize, _: &Tensor| {
        pb.set_position(i as u64);
        true
    };
    let t1 = Instant::now();
    let g = match &a.prompt_embeds {
        Some(f) => {
            let (cond, uncond) = given_embeddings(f, a.negative_embeds.as_deref(), &dev)?;
            if a.guidance > 1.0 && uncond.is_none() {
                bail!(
                    "guidance {} > 1 needs the negative prompt's embeddings: add `negative_prompt_embeds` and `negative_pooled_prompt_embeds` to {} or pass --negative-embeds",
                    a.guidance,
                    f.display()
                );
            }
            pipe.generate_encoded(&cond, uncond.as_ref(), &noise, &opts, progress)?
        }
        None => {
            let prompt = a.prompt.as_deref().unwrap_or_default();
            pipe.generate(prompt, &a.negative_prompt, &noise, &opts, progress)?
        }
    };
    pb.finish_and_clear();
    if let Some(dropped) = &g.truncated {
        eprintln!("note: the prompt was truncated; dropped: {dropped}");
    }
    let secs = t1.elapsed().as_secs_f64();
    if let Some(p) = &a.save_latents {
        write_safetensors(p, &[("latents".to_string(), g.latents.clone())])?;
    }
    let img = pipe.decode(&g.latents)?;
    let img = if a.upscale > 1 {
        let (w, h) = img.dimensions();
        image::imageops::resize(
            &img,
            w * a.upscale,
            h * a.upscale,
            image::imageops::FilterType::Nearest,
        )
    } else {
        img
    };
    let (w, h) = img.dimensions();
    write_rgb_png(&a.out, img.as_raw(), w as usize, h as usize)?;
    eprintln!(
        "generated {}×{} in {:.2} s ({:.2} s/step) → {}",
        w,
        h,
        secs,
        secs / a.steps as f64,
        a.out.display()
    );
    Ok(())
}
