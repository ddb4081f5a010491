//! `probe` on an SD3 pipeline: the same capture file as the embedded model's — I2T, T2I,
//! `row_share`, value norms and image Q/K/V at chosen steps of a CFG generation, or of a real
//! image (centre-cropped, encoded) noised to each kept step's σ — within a memory budget, with
//! every text position labelled (CLIP and T5 pieces merged into words).

use std::time::Instant;

use candle_core::Tensor;
use image::DynamicImage;

use super::pipeline::{GenerateOptions, Sd3Pipeline};
use super::text::{TextEncoderKind, TokenInfo as Sd3Token};
use crate::embedded::model::seeded_randn;
use crate::error::{Error, Result};
use crate::mmdit::ForwardOptions;
use crate::probe::run::{finish_capture, kept_step_infos, probe_summary, SummaryParts};
use crate::probe::{
    block_prefix, keep_item, plan_probe, ProbeCapture, ProbeDims, ProbeMode, ProbeOptions,
    ProbeSource, TokenInfo, TokenKind, WordInfo,
};
use crate::schedule::noise_to;
use crate::segment::I2tSegmenter;

/// Probe token rows and words from the pipeline's text positions: CLIP pieces form a word up
/// to one ending in `</w>`; a T5 piece starting with `▁` begins a word.
pub fn token_table(tokens: &[Sd3Token]) -> (Vec<TokenInfo>, Vec<WordInfo>) {
    let mut infos = Vec::with_capacity(tokens.len());
    let mut words: Vec<WordInfo> = vec![];
    let mut open: Option<(TextEncoderKind, usize)> = None;
    for (i, t) in tokens.iter().enumerate() {
        let clip = t.encoder != TextEncoderKind::T5;
        let kind = if t.is_padding {
            TokenKind::Padding
        } else if t.is_special && clip && i == 0 {
            TokenKind::Bos
        } else if t.is_special {
            TokenKind::Eos
        } else {
            TokenKind::Word
        };
        let mut word = None;
        if kind == TokenKind::Word {
            let starts = match open {
                Some((enc, _)) if enc == t.encoder => !clip && t.text.starts_with('▁'),
                _ => true,
            };
            if starts {
                words.push(WordInfo {
                    word: String::new(),
                    tokens: vec![],
                });
                open = Some((t.encoder, words.len() - 1));
            }
            if let Some((_, w)) = open {
                let piece = t.text.trim_end_matches("</w>").trim_start_matches('▁');
                words[w].word.push_str(piece);
                words[w].tokens.push(i);
                word = Some(w);
            }
            if clip && t.text.ends_with("</w>") {
                open = None;
            }
        } else {
            open = None;
        }
        let string = if t.text.is_empty() {
            "<zero>".to_string()
        } else {
            t.text.clone()
        };
        infos.push(TokenInfo {
            index: i,
            string,
            kind,
            word,
        });
    }
    (infos, words)
}

impl Sd3Pipeline {
    fn probe_dims(&self, n_txt: usize) -> ProbeDims {
        let c = self.transformer.config();
        let g = self.latent_size / c.patch_size;
        ProbeDims {
            layers: c.num_layers,
            heads: c.num_attention_heads,
            n_img: g * g,
            n_txt,
            hidden: c.num_attention_heads * c.attention_head_dim,
        }
    }

    /// Captures the prompt's attention at the kept steps. `on_step(done, total, latents)` reports
    /// progress (the latents after each sampling step of a generation, `None` for an image);
    /// returning `false` cancels (an error "cancelled").
    pub fn probe(
        &self,
        prompt: &str,
        source: ProbeSource<'_>,
        opts: &ProbeOptions,
        mut on_step: impl FnMut(usize, usize, Option<&Tensor>) -> bool,
    ) -> Result<ProbeCapture> {
        let t0 = Instant::now();
        let cond = self.encode_prompt(prompt)?;
        let n_txt = cond.prompt_embeds.dim(1)?;
        let dims = self.probe_dims(n_txt);
        let (keep, qkv, memory) = plan_probe(opts, dims)?;
        let spec = opts.capture_spec(&qkv);
        let sched = self.scheduler.schedule(opts.steps)?;
        let mut tensors: Vec<(String, Tensor)> = vec![];
        let storage = memory.storage;
        let mut store = |step: usize, blocks: &[crate::capture::BlockCapture], item: usize| {
            for (i, b) in blocks.iter().enumerate() {
                tensors.extend(keep_item(b, item, storage)?.named(&block_prefix(step, i)));
            }
            Ok::<(), Error>(())
        };
        let dev = self.transformer.device().clone();
        let (mode, image) = match source {
            ProbeSource::Generate => {
                let uncond = if opts.guidance > 1.0 {
                    Some(self.encode_prompt("")?)
                } else {
                    None
                };
                let noise = seeded_randn(&self.latent_shape(), opts.seed, &dev)?;
                let gen = GenerateOptions {
                    steps: opts.steps,
                    guidance: opts.guidance,
                    capture: spec,
                    capture_steps: Some(keep.clone()),
                    cancel: None,
                    perturbation: Default::default(),
                };
                let (latents, _) = self.sample(
                    &cond,
                    uncond.as_ref(),
                    &noise,
                    &gen,
                    |done, total, x| on_step(done, total, Some(x)),
                    |c| store(c.step, c.blocks, c.item),
                )?;
                let pic = self.decode(&latents)?;
                let size = pic.width() as usize;
                (ProbeMode::Generate, Some((pic.into_raw(), size)))
            }
            ProbeSource::Image { rgb, width, height } => {
                let img = image::RgbImage::from_raw(width as u32, height as u32, rgb.to_vec())
                    .ok_or_else(|| {
                        Error::Input(format!(
                            "image buffer does not hold {width}×{height} RGB pixels"
                        ))
                    })?;
                let (pixels, _) = self.image_tensor(&DynamicImage::ImageRgb8(img))?;
                let x0 = self.vae.encode(&pixels)?.to_device(&dev)?;
                let eps = seeded_randn(x0.dims(), opts.seed, &dev)?;
                let fwd = ForwardOptions {
                    capture: spec,
                    ..Default::default()
                };
                let ctx = cond.prompt_embeds.to_device(&dev)?;
                let pooled = cond.pooled.to_device(&dev)?;
                for (k, &i) in keep.iter().enumerate() {
                    let xt = noise_to(&x0, &eps, sched.sigmas[i])?;
                    let t = Tensor::new(&[sched.timesteps[i]], &dev)?;
                    let out = self.transformer.forward(&xt, &t, &ctx, &pooled, &fwd)?;
                    store(i, &out.blocks, 0)?;
                    if !on_step(k + 1, keep.len(), None) {
                        return Err(Error::Input("cancelled".into()));
                    }
                }
                (ProbeMode::Image, None)
            }
        };
        let (tokens, words) = token_table(&cond.tokens);
        let c = self.transformer.config();
        let g = self.latent_size / c.patch_size;
        let summary = probe_summary(
            opts,
            SummaryParts {
                mode,
                prompt: prompt.to_string(),
                dims,
                head_dim: c.attention_head_dim,
                patch_size: c.patch_size,
                grid: (g, g),
                tokens,
                words,
                kept_steps: kept_step_infos(&keep, &sched),
                qkv_layers: qkv,
                expert_layer: Some(I2tSegmenter::default_layer(self)),
                memory,
            },
        );
        Ok(finish_capture(tensors, summary, image, t0))
    }
}
