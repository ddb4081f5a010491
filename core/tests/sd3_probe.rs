//! `probe` on the tiny SD3 pipeline fixture: tensor names and shapes, labelled text positions,
//! the same maps as a plain generation or image analysis, and head means under a small budget.

use std::path::PathBuf;

use candle_core::{DType, Device};
use ditlens_core::capture::CaptureSpec;
use ditlens_core::embedded::model::seeded_randn;
use ditlens_core::probe::{tensor_name, HeadStorage, ProbeOptions, ProbeSource, TokenKind};
use ditlens_core::sd3::{GenerateOptions, Sd3Pipeline, TextOptions};

mod support;
use support::*;

fn fixture() -> PathBuf {
    sd3_fixture().join("pipeline")
}

fn pipeline() -> Sd3Pipeline {
    Sd3Pipeline::open(&fixture(), &Device::Cpu, DType::F32, TextOptions::default()).unwrap()
}

fn opts() -> ProbeOptions {
    ProbeOptions {
        seed: 4,
        steps: 3,
        keep: Some(vec![2, 1]),
        guidance: 5.0,
        qkv_layers: vec![1],
        ..Default::default()
    }
}

#[test]
fn generation_probe_names_labels_and_matches_the_sampler() {
    let p = pipeline();
    let prompt = "a red circle";
    let cap = p
        .probe(prompt, ProbeSource::Generate, &opts(), |_, _, _| true)
        .unwrap();
    let s = &cap.summary;
    assert_eq!((s.layers, s.heads, s.n_img, s.n_txt), (2, 2, 16, 154));
    assert_eq!(s.grid, [4, 4]);
    assert_eq!(s.expert_layer, Some(1));
    assert_eq!(
        s.kept_steps.iter().map(|k| k.index).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        cap.get(&tensor_name(2, 0, "attn.i2t")).unwrap().dims(),
        [1, 2, 16, 154]
    );
    assert_eq!(
        cap.get(&tensor_name(1, 1, "attn.t2i")).unwrap().dims(),
        [1, 2, 154, 16]
    );
    assert_eq!(
        cap.get(&tensor_name(1, 1, "attn.q_img")).unwrap().dims(),
        [1, 16, 32]
    );
    assert!(cap.get(&tensor_name(1, 0, "attn.q_img")).is_err());
    let (pic, size) = cap.image.as_ref().unwrap();
    assert_eq!((pic.len(), *size), (64 * 64 * 3, 64));
    // Every position labelled: CLIP's BOS, words, EOS and padding, then T5's.
    let kinds: Vec<TokenKind> = s.tokens.iter().map(|t| t.kind).collect();
    assert_eq!(kinds[0], TokenKind::Bos);
    let words: Vec<&str> = s.words.iter().map(|w| w.word.as_str()).collect();
    assert_eq!(words, ["a", "red", "circle", "a", "red", "circle"]);
    let clip_end = s.words[2].tokens.last().unwrap() + 1;
    assert_eq!(kinds[clip_end], TokenKind::Eos);
    assert!(kinds[clip_end + 1..77]
        .iter()
        .all(|&k| k == TokenKind::Padding));
    assert!(
        s.words[3].tokens[0] >= 77,
        "T5 words sit after the CLIP block"
    );
    for w in &s.words {
        for &t in &w.tokens {
            assert_eq!(s.tokens[t].kind, TokenKind::Word);
        }
    }
    // The same maps as a plain generation with capture at those steps.
    let cond = p.encode_prompt(prompt).unwrap();
    let uncond = p.encode_prompt("").unwrap();
    let noise = seeded_randn(&p.latent_shape(), 4, &Device::Cpu).unwrap();
    let g = p
        .generate_encoded(
            &cond,
            Some(&uncond),
            &noise,
            &GenerateOptions {
                steps: 3,
                guidance: 5.0,
                capture: CaptureSpec {
                    i2t: true,
                    ..Default::default()
                },
                capture_steps: Some(vec![1, 2]),
                ..Default::default()
            },
            |_, _, _| true,
        )
        .unwrap();
    for c in &g.captures {
        for (b, blk) in c.blocks.iter().enumerate() {
            let want = blk.attn.i2t.as_ref().unwrap();
            let got = cap.get(&tensor_name(c.step, b, "attn.i2t")).unwrap();
            assert!(max_diff(got, want) < 1e-6, "step {} block {b}", c.step);
        }
    }
}

#[test]
fn image_probe_matches_analysis_and_budget_keeps_head_means() {
    let p = pipeline();
    let img = image::RgbImage::from_fn(50, 30, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 8) as u8, 90])
    });
    let rgb = img.as_raw().clone();
    let o = ProbeOptions {
        seed: 7,
        steps: 28,
        keep: Some(vec![20]),
        ..Default::default()
    };
    let src = ProbeSource::Image {
        rgb: &rgb,
        width: 50,
        height: 30,
    };
    let cap = p.probe("circle", src, &o, |_, _, _| true).unwrap();
    assert!(cap.image.is_none());
    let spec = CaptureSpec {
        i2t: true,
        ..Default::default()
    };
    let a = p
        .analyse_image(
            &image::DynamicImage::ImageRgb8(img),
            "circle",
            20,
            28,
            7,
            &spec,
        )
        .unwrap();
    for b in 0..2 {
        let want = a.output.blocks[b].attn.i2t.as_ref().unwrap();
        let got = cap.get(&tensor_name(20, b, "attn.i2t")).unwrap();
        assert!(max_diff(got, want) < 1e-6, "block {b}");
    }
    // A budget too small for every head keeps head means, and says so.
    let per_head = cap.summary.memory.per_head_bytes;
    let small = ProbeOptions {
        max_memory: per_head - 1,
        ..o
    };
    let means = p.probe("circle", src, &small, |_, _, _| true).unwrap();
    assert_eq!(means.summary.memory.storage, HeadStorage::HeadMean);
    let m = means.get(&tensor_name(20, 1, "attn.i2t")).unwrap();
    assert_eq!(m.dims(), [1, 1, 16, 154]);
    let full = cap.get(&tensor_name(20, 1, "attn.i2t")).unwrap();
    assert!(max_diff(m, &full.mean_keepdim(1).unwrap()) < 1e-6);
    // Bad steps are named.
    let bad = ProbeOptions {
        keep: Some(vec![28]),
        ..Default::default()
    };
    let e = p.probe("circle", src, &bad, |_, _, _| true).unwrap_err();
    assert!(e.to_string().contains("step 28"), "{e}");
}

#[test]
fn perturbed_guidance_adds_the_stated_term() {
    use ditlens_core::perturb::{BlurSpec, Perturbation};
    let p = pipeline();
    let cond = p.encode_prompt("a red circle").unwrap();
    let uncond = p.encode_prompt("").unwrap();
    let noise = seeded_randn(&p.latent_shape(), 9, &Device::Cpu).unwrap();
    let blur = BlurSpec {
        layers: vec![0],
        ..Default::default()
    };
    let one_step = |perturbation: Perturbation| {
        let o = GenerateOptions {
            steps: 1,
            guidance: 4.0,
            perturbation,
            ..Default::default()
        };
        p.generate_encoded(&cond, Some(&uncond), &noise, &o, |_, _, _| true)
            .unwrap()
            .latents
    };
    let plain = one_step(Perturbation::None);
    let guided = |s: f64| {
        one_step(Perturbation::Guidance {
            blur: blur.clone(),
            scale: s,
        })
    };
    // s = 0 is plain CFG; the added term is linear in s: x(2) − x(0) = 2·(x(1) − x(0)).
    assert!(max_diff(&guided(0.0), &plain) < 1e-6);
    let d1 = (guided(1.0) - &plain).unwrap();
    let d2 = (guided(2.0) - &plain).unwrap();
    assert!(max_diff(&d2, &(&d1 * 2.0).unwrap()) < 1e-5);
    assert!(
        max_diff(&d1, &d1.zeros_like().unwrap()) > 1e-5,
        "the blur changes v"
    );
    // Regeneration blurs every forward: different from plain, and from perturbed guidance.
    let regen = one_step(Perturbation::Regenerate(blur.clone()));
    assert!(max_diff(&regen, &plain) > 1e-5);
}
