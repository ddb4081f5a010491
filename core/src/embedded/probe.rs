//! `probe` on the embedded model: capture I2T, T2I, `row_share`, value norms and image Q/K/V at
//! chosen steps of a generation, or of an image noised to each kept step's σ, within a memory
//! budget.

use std::time::Instant;

use candle_core::Tensor;

use super::guidance::{guided_velocity, Perturbation};
use super::model::{seeded_randn, tensor_to_rgb, EmbeddedModel};
use super::tokenizer::{Tokens, EOS};
use crate::capture::{BlockCapture, CaptureSpec};
use crate::error::{Error, Result};
use crate::mmdit::ForwardOptions;
use crate::probe::run::{finish_capture, kept_step_infos, probe_summary, SummaryParts};
use crate::probe::{
    block_prefix, keep_item, plan_probe, ProbeCapture, ProbeDims, ProbeMode, TokenInfo, TokenKind,
    WordInfo,
};
pub use crate::probe::{ProbeOptions, ProbeSource};
use crate::schedule::{noise_to, FlowMatchEuler};

/// Every text position with its string and role, and the word → token groups.
pub fn token_table(tokens: &Tokens) -> (Vec<TokenInfo>, Vec<WordInfo>) {
    let mut word_of = vec![None; tokens.strings.len()];
    for (w, pos) in tokens.words.iter().enumerate() {
        for &p in pos {
            word_of[p] = Some(w);
        }
    }
    let infos = tokens
        .strings
        .iter()
        .enumerate()
        .map(|(i, s)| TokenInfo {
            index: i,
            string: s.clone(),
            kind: if i == 0 {
                TokenKind::Bos
            } else if tokens.is_padding[i] {
                TokenKind::Padding
            } else if s == EOS {
                TokenKind::Eos
            } else {
                TokenKind::Word
            },
            word: word_of[i],
        })
        .collect();
    let words = tokens
        .words
        .iter()
        .map(|pos| WordInfo {
            word: pos
                .iter()
                .map(|&p| tokens.strings[p].as_str())
                .collect::<String>(),
            tokens: pos.clone(),
        })
        .collect();
    (infos, words)
}

impl EmbeddedModel {
    /// Sizes the memory plan needs.
    fn probe_dims(&self) -> ProbeDims {
        let t = &self.cfg.transformer;
        let g = self.cfg.image_size / t.patch_size;
        ProbeDims {
            layers: t.num_layers,
            heads: t.num_attention_heads,
            n_img: g * g,
            n_txt: self.cfg.text.max_len,
            hidden: t.inner_dim(),
        }
    }

    /// Captures the prompt's attention at the kept steps. `on_step(done, total)` reports
    /// progress; returning `false` cancels (an error "cancelled").
    pub fn probe(
        &self,
        prompt: &str,
        source: ProbeSource<'_>,
        opts: &ProbeOptions,
        mut on_step: impl FnMut(usize, usize) -> bool,
    ) -> Result<ProbeCapture> {
        self.probe_steps(prompt, source, opts, |done, total, _| on_step(done, total))
    }

    /// [`Self::probe`] that also hands `on_step(done, total, sample)` the current sample
    /// `[1, 3, S, S]` after each sampling step of a generation (`None` for an image), so a viewer
    /// can show the image appear step by step.
    pub fn probe_steps(
        &self,
        prompt: &str,
        source: ProbeSource<'_>,
        opts: &ProbeOptions,
        mut on_step: impl FnMut(usize, usize, Option<&Tensor>) -> bool,
    ) -> Result<ProbeCapture> {
        let t0 = Instant::now();
        let (keep, qkv, memory) = plan_probe(opts, self.probe_dims())?;
        let tokens = self.tokenize(prompt)?;
        let sched = FlowMatchEuler {
            shift: self.cfg.shift,
            ..Default::default()
        }
        .schedule(opts.steps)?;
        let spec = opts.capture_spec(&qkv);
        let size = self.cfg.image_size;
        let dev = self.device().clone();
        let mut tensors: Vec<(String, Tensor)> = vec![];
        let mut store = |step: usize, blocks: &[BlockCapture]| -> Result<()> {
            for (i, b) in blocks.iter().enumerate() {
                tensors.extend(keep_item(b, 0, memory.storage)?.named(&block_prefix(step, i)));
            }
            Ok(())
        };
        let cancelled = || Error::Input("cancelled".into());
        let (mode, image, grid) = match source {
            ProbeSource::Generate => {
                let empty = self.tokenize("")?;
                let (ctx, pooled) = self.encode(&[&tokens, &empty])?;
                let mut x = seeded_randn(&[1, 3, size, size], opts.seed, &dev)?;
                let none = CaptureSpec::default();
                let mut grid = (0, 0);
                for i in 0..sched.steps() {
                    let kept = keep.binary_search(&i).is_ok();
                    let g = guided_velocity(
                        &self.mmdit,
                        &x,
                        sched.timesteps[i],
                        (&ctx, &pooled),
                        opts.guidance,
                        &Perturbation::None,
                        if kept { &spec } else { &none },
                    )?;
                    grid = g.output.grid;
                    if kept {
                        store(i, &g.output.blocks)?;
                    }
                    x = sched.step(i, &x, &g.velocity)?;
                    if !on_step(i + 1, sched.steps(), Some(&x)) {
                        return Err(cancelled());
                    }
                }
                let rgb = tensor_to_rgb(&x.squeeze(0)?)?;
                (ProbeMode::Generate, Some((rgb, size)), grid)
            }
            ProbeSource::Image { rgb, width, height } => {
                let x0 = self.image_tensor(rgb, width, height)?;
                let eps = seeded_randn(&[1, 3, size, size], opts.seed, &dev)?;
                let (ctx, pooled) = self.encode(&[&tokens])?;
                let fwd = ForwardOptions {
                    capture: spec.clone(),
                    ..Default::default()
                };
                let mut grid = (0, 0);
                for (k, &i) in keep.iter().enumerate() {
                    let xt = noise_to(&x0, &eps, sched.sigmas[i])?;
                    let t = Tensor::new(&[sched.timesteps[i]], &dev)?;
                    let out = self.mmdit.forward(&xt, &t, &ctx, &pooled, &fwd)?;
                    grid = out.grid;
                    store(i, &out.blocks)?;
                    if !on_step(k + 1, keep.len(), None) {
                        return Err(cancelled());
                    }
                }
                (ProbeMode::Image, None, grid)
            }
        };
        let (token_infos, words) = token_table(&tokens);
        let t = &self.cfg.transformer;
        let summary = probe_summary(
            opts,
            SummaryParts {
                mode,
                prompt: prompt.to_string(),
                dims: self.probe_dims(),
                head_dim: t.attention_head_dim,
                patch_size: t.patch_size,
                grid,
                tokens: token_infos,
                words,
                kept_steps: kept_step_infos(&keep, &sched),
                qkv_layers: qkv,
                expert_layer: Some(self.cfg.expert_layer),
                memory,
            },
        );
        Ok(finish_capture(tensors, summary, image, t0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::pipeline::GenerateOptions;
    use crate::embedded::test_model::tiny_model;
    use crate::probe::{tensor_name, Feature, HeadStorage, MapKind, ProbeSummary};

    const PROMPT: &str = "a red circle on a striped background";

    fn opts() -> ProbeOptions {
        ProbeOptions {
            seed: 3,
            steps: 4,
            keep: Some(vec![3, 1]),
            qkv_layers: vec![1],
            ..Default::default()
        }
    }

    fn probe(o: &ProbeOptions) -> ProbeCapture {
        tiny_model()
            .probe(PROMPT, ProbeSource::Generate, o, |_, _| true)
            .unwrap()
    }

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn names_shapes_summary_and_image() {
        let m = tiny_model();
        let cap = probe(&opts());
        let s = &cap.summary;
        assert_eq!((s.layers, s.heads, s.n_img, s.n_txt), (2, 2, 64, 20));
        assert_eq!(s.grid, [8, 8]);
        let mut want = vec![];
        for step in [1, 3] {
            for b in 0..2 {
                let p = |w: &str| tensor_name(step, b, w);
                want.push((p("attn.i2t"), vec![1, 2, 64, 20]));
                want.push((p("attn.t2i"), vec![1, 2, 20, 64]));
                want.push((p("attn.row_share"), vec![1, 2, 4]));
                want.push((p("attn.vnorm_img"), vec![1, 2, 64]));
                want.push((p("attn.vnorm_txt"), vec![1, 2, 20]));
                if b == 1 {
                    for f in ["q_img", "k_img", "v_img"] {
                        want.push((p(&format!("attn.{f}")), vec![1, 64, 32]));
                    }
                }
            }
        }
        let got: Vec<(String, Vec<usize>)> = s
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        assert_eq!(got, want);
        // Kept steps carry the schedule's σ and timestep, under the model's shift.
        let shift = tiny_model().cfg.shift;
        assert_eq!(shift, 1.0, "the toy config's shift");
        let sched = FlowMatchEuler {
            shift,
            ..Default::default()
        }
        .schedule(4)
        .unwrap();
        assert_eq!(s.kept_steps.len(), 2);
        for k in &s.kept_steps {
            assert_eq!(k.sigma, sched.sigmas[k.index]);
            assert_eq!(k.timestep, sched.timesteps[k.index]);
        }
        // Every token, special ones too, with its role; words map to their positions.
        let kinds: Vec<TokenKind> = s.tokens.iter().map(|t| t.kind).collect();
        assert_eq!(kinds[0], TokenKind::Bos);
        assert!(kinds[1..8].iter().all(|&k| k == TokenKind::Word));
        assert_eq!(kinds[8], TokenKind::Eos);
        assert!(kinds[9..].iter().all(|&k| k == TokenKind::Padding));
        assert_eq!(s.tokens[3].string, "circle");
        assert_eq!(s.tokens[19].string, "<eos>");
        assert_eq!(s.words.len(), 7);
        assert_eq!(s.words[2].word, "circle");
        assert_eq!(s.words[2].tokens, [3]);
        assert_eq!(s.memory.storage, HeadStorage::PerHead);
        assert_eq!(s.memory.stored_bytes, {
            let mut b = 0u64;
            for t in &s.tensors {
                b += 4 * t.shape.iter().product::<usize>() as u64;
            }
            b
        });
        // The probed generation is the plain generation.
        let g = m
            .generate(
                PROMPT,
                &GenerateOptions {
                    seed: 3,
                    steps: 4,
                    ..Default::default()
                },
                |_, _, _| true,
            )
            .unwrap();
        assert_eq!(cap.image.as_ref().unwrap().0, g.rgb);
    }

    #[test]
    fn shares_sum_to_one_and_match_the_maps() {
        let cap = probe(&opts());
        let mass = cap.attention_mass(3).unwrap();
        for layer in &mass.layers {
            for h in &layer.heads {
                assert!(close(h.i2i + h.i2t, 1.0, 1e-5), "{h:?}");
                assert!(close(h.t2i + h.t2t, 1.0, 1e-5), "{h:?}");
            }
        }
        assert!(close(mass.uniform_img() + mass.uniform_txt(), 1.0, 1e-6));
        // The I2T share is the mean over image queries of each row's mass on text keys.
        let i2t = cap.values(&tensor_name(3, 1, "attn.i2t")).unwrap();
        for h in 0..2 {
            let rows = &i2t[h * 64 * 20..(h + 1) * 64 * 20];
            let mean = rows.iter().sum::<f32>() / 64.0;
            assert!(close(mean, mass.layers[1].heads[h].i2t, 1e-5));
        }
        // Value norms: prompt = the 7 words; the mean matches the captured norms.
        let vn = cap.value_norms(1).unwrap();
        let txt = cap.values(&tensor_name(1, 0, "attn.vnorm_txt")).unwrap();
        let prompt: f32 = (0..2)
            .flat_map(|h| (1..8).map(move |t| h * 20 + t))
            .map(|i| txt[i])
            .sum::<f32>()
            / 14.0;
        assert!(close(vn.layers[0].prompt, prompt, 1e-4));
        let pca = cap.pca(1, 1, Feature::K).unwrap();
        assert_eq!((pca.width, pca.height, pca.rgb.len()), (8, 8, 192));
        assert!(
            cap.pca(1, 0, Feature::K).is_err(),
            "no Q/K/V kept at block 0"
        );
        assert!(cap
            .attention_mass(2)
            .unwrap_err()
            .to_string()
            .contains("kept: 1, 3"));
        let maps = cap.token_maps(3, 0, 3, MapKind::T2i).unwrap();
        assert_eq!((maps.len(), maps[0].len()), (2, 64));
    }

    #[test]
    fn budget_switches_to_head_mean_and_says_so() {
        let full = probe(&opts());
        let m = &full.summary.memory;
        let o = ProbeOptions {
            max_memory: m.per_head_bytes - 1,
            ..opts()
        };
        let cap = probe(&o);
        let s = &cap.summary;
        assert_eq!(s.memory.storage, HeadStorage::HeadMean);
        assert!(s.memory.note.contains("mean over the 2 heads"));
        assert_eq!(s.memory.stored_bytes, m.head_mean_bytes);
        let name = tensor_name(3, 1, "attn.i2t");
        assert_eq!(cap.get(&name).unwrap().dims(), [1, 1, 64, 20]);
        // The kept mean is the mean of the per-head maps; per-head statistics are untouched.
        let per = full.values(&name).unwrap();
        let mean = cap.values(&name).unwrap();
        for i in 0..mean.len() {
            assert!(close(mean[i], 0.5 * (per[i] + per[i + 1280]), 1e-6));
        }
        let rs = tensor_name(3, 1, "attn.row_share");
        assert_eq!(cap.values(&rs).unwrap(), full.values(&rs).unwrap());
        assert!(crate::probe::figures::head_grid(&cap, 3, 3, MapKind::I2t)
            .unwrap_err()
            .to_string()
            .contains("head means only"));
        let o = ProbeOptions {
            max_memory: m.head_mean_bytes - 1,
            ..opts()
        };
        let e = tiny_model()
            .probe(PROMPT, ProbeSource::Generate, &o, |_, _| true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--max-memory"), "{e}");
    }

    #[test]
    fn image_mode_save_and_load() {
        let m = tiny_model();
        let rgb: Vec<u8> = (0..24 * 20 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let src = ProbeSource::Image {
            rgb: &rgb,
            width: 24,
            height: 20,
        };
        let o = ProbeOptions {
            keep: Some(vec![0, 2]),
            ..opts()
        };
        let cap = m.probe("circle background", src, &o, |_, _| true).unwrap();
        assert_eq!(cap.summary.mode, crate::probe::ProbeMode::Image);
        assert!(cap.image.is_none() && cap.summary.guidance.is_none());
        let dir = tempfile::tempdir().unwrap();
        let (path, side) = (dir.path().join("c.safetensors"), dir.path().join("c.json"));
        cap.save(&path, &side).unwrap();
        let back = ProbeCapture::load(&path).unwrap();
        assert_eq!(back.summary, cap.summary);
        for ((na, ta), (nb, tb)) in cap.tensors.iter().zip(&back.tensors) {
            assert_eq!(na, nb);
            let (a, b): (Vec<f32>, Vec<f32>) = (
                ta.flatten_all().unwrap().to_vec1().unwrap(),
                tb.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(a, b);
        }
        let side_json: ProbeSummary =
            serde_json::from_str(&std::fs::read_to_string(&side).unwrap()).unwrap();
        assert_eq!(side_json, cap.summary);
        // A safetensors file that is not a capture is refused by name.
        let other = dir.path().join("o.safetensors");
        crate::io::write_safetensors(&other, &cap.tensors[..1]).unwrap();
        let e = ProbeCapture::load(&other).unwrap_err().to_string();
        assert!(e.contains("not a probe capture"), "{e}");
    }

    #[test]
    fn bad_options_are_errors() {
        let m = tiny_model();
        let run = |o: ProbeOptions| {
            m.probe(PROMPT, ProbeSource::Generate, &o, |_, _| true)
                .unwrap_err()
                .to_string()
        };
        assert!(run(ProbeOptions {
            keep: Some(vec![4]),
            ..opts()
        })
        .contains("step 4 is outside"));
        assert!(run(ProbeOptions {
            qkv_layers: vec![2],
            ..opts()
        })
        .contains("layer 2 does not exist"));
        let e = m
            .probe("a red dog", ProbeSource::Generate, &opts(), |_, _| true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dog"));
    }
}
