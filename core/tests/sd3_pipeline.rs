//! The SD3 VAE and pipeline against diffusers' reference outputs in
//! `tests/fixtures/sd3_pipeline/` (see `tests/fixtures/make_sd3_pipeline.py`), and bad input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use ditlens_core::capture::CaptureSpec;
use ditlens_core::sd3::text::PromptEncoding;
use ditlens_core::sd3::{GenerateOptions, PipelineParts, Sd3Pipeline, Vae};

mod support;
use support::*;

fn read(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, atol: f32) {
    let d = max_diff(got, want);
    eprintln!("{what}: max |Δ| = {d:e}");
    assert!(d <= atol, "{what}: max |Δ| = {d:e} > {atol:e}");
}

fn check_vae(vae: &Vae, form: &str) {
    let e = read(&sd3_fixture().join("expected/vae.safetensors"));
    let mean = vae.posterior_mean(&e["image"]).unwrap();
    assert_close(
        &format!("{form} posterior mean"),
        &mean,
        &e["latent_mean"],
        1e-4,
    );
    let lat = vae.encode(&e["image"]).unwrap();
    assert_close(&format!("{form} latents"), &lat, &e["latents"], 1e-4);
    let dec = vae.decode(&e["latents"]).unwrap();
    assert_close(&format!("{form} decoded"), &dec, &e["decoded"], 1e-4);
}

#[test]
fn vae_folder_matches_diffusers() {
    let vae = Vae::from_folder(
        &sd3_fixture().join("pipeline/vae"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert_eq!(vae.config().latent_channels, 16);
    assert_eq!(vae.config().shift(), 0.0609);
    assert_eq!(vae.config().scaling_factor, 1.5305);
    check_vae(&vae, "folder");
}

#[test]
fn vae_single_file_matches_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let parts = PipelineParts::locate(&single_file_with_configs(tmp.path())).unwrap();
    let vae = Vae::open(&parts, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(vae.config().shift(), 0.0609);
    assert_eq!(vae.config().scaling_factor, 1.5305);
    check_vae(&vae, "single file");
}

/// The prompt's and the empty negative prompt's embeddings diffusers used for
/// `generate.safetensors` (the folder pipeline's, max_sequence_length 77), from `embeds.safetensors`.
fn recorded_embeddings() -> (PromptEncoding, PromptEncoding) {
    let dir = sd3_fixture().join("expected");
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("generate.json")).unwrap()).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("embeds.json")).unwrap()).unwrap();
    let msl = run["max_sequence_length"].clone();
    let find = |prompt: &serde_json::Value| -> String {
        let (name, _) = cases
            .as_object()
            .unwrap()
            .iter()
            .find(|(_, c)| {
                c["model"] == "pipeline"
                    && &c["prompt"] == prompt
                    && c["max_sequence_length"] == msl
                    && c["use_t5"] == true
            })
            .unwrap_or_else(|| panic!("no embeds case for {prompt}"));
        name.clone()
    };
    let e = read(&dir.join("embeds.safetensors"));
    let enc = |case: String| PromptEncoding {
        prompt_embeds: e[&format!("{case}.prompt_embeds")].clone(),
        pooled: e[&format!("{case}.pooled_prompt_embeds")].clone(),
        tokens: vec![],
        truncated: None,
    };
    (
        enc(find(&run["prompt"])),
        enc(find(&run["negative_prompt"])),
    )
}

/// The bundled single file in a folder of its own, with the diffusers configs of the VAE and
/// transformer beside it (the tiny fixture's group and head counts cannot be read from shapes).
fn single_file_with_configs(tmp: &Path) -> PathBuf {
    let file = tmp.join("model.safetensors");
    std::fs::copy(sd3_fixture().join("single/model.safetensors"), &file).unwrap();
    for part in ["vae", "transformer"] {
        std::fs::create_dir_all(tmp.join(part)).unwrap();
        std::fs::copy(
            sd3_fixture().join(format!("pipeline/{part}/config.json")),
            tmp.join(format!("{part}/config.json")),
        )
        .unwrap();
    }
    file
}

fn generate_from(path: &Path, form: &str) {
    let p = Sd3Pipeline::open_without_text(path, &Device::Cpu, DType::F32).unwrap();
    let g = read(&sd3_fixture().join("expected/generate.safetensors"));
    let (cond, uncond) = recorded_embeddings();
    let opts = GenerateOptions {
        steps: 2,
        guidance: 4.0,
        ..Default::default()
    };
    let mut seen = vec![];
    let out = p
        .generate_encoded(&cond, Some(&uncond), &g["noise"], &opts, |i, n, _| {
            seen.push((i, n));
            true
        })
        .unwrap();
    assert_eq!(seen, vec![(1, 2), (2, 2)]);
    assert_close(
        &format!("{form} latents"),
        &out.latents,
        &g["latents"],
        1e-4,
    );
    let img = p.decode(&out.latents).unwrap();
    assert_eq!(img.dimensions(), (64, 64));
}

#[test]
fn single_file_without_vae_config_says_what_to_add() {
    // The fixture's VAE has 4 groups; without a config SD3's 32 are assumed and cannot divide
    // its 4-channel blocks.
    let parts = PipelineParts::locate(&sd3_fixture().join("single/model.safetensors")).unwrap();
    let e = err_of(Vae::open(&parts, &Device::Cpu, DType::F32));
    assert!(e.contains("norm_num_groups") && e.contains("vae/"), "{e}");
}

#[test]
fn two_step_cfg_generation_matches_diffusers_folder() {
    generate_from(&sd3_fixture().join("pipeline"), "folder");
}

#[test]
fn two_step_cfg_generation_matches_diffusers_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    generate_from(&single_file_with_configs(tmp.path()), "single file");
}

#[test]
fn generation_captures_the_prompt_branch_and_cancels() {
    let p =
        Sd3Pipeline::open_without_text(&sd3_fixture().join("pipeline"), &Device::Cpu, DType::F32)
            .unwrap();
    let g = read(&sd3_fixture().join("expected/generate.safetensors"));
    let (cond, uncond) = recorded_embeddings();
    let opts = GenerateOptions {
        steps: 2,
        guidance: 4.0,
        capture: CaptureSpec::maps(),
        capture_steps: Some(vec![1]),
        ..Default::default()
    };
    let out = p
        .generate_encoded(&cond, Some(&uncond), &g["noise"], &opts, |_, _, _| true)
        .unwrap();
    assert_eq!(out.captures.len(), 1);
    let c = &out.captures[0];
    assert_eq!(c.step, 1);
    assert_eq!(c.sigma, out.schedule.sigmas[1]);
    let cfg = p.transformer.config();
    assert_eq!(c.blocks.len(), cfg.num_layers);
    let l = cond.prompt_embeds.dim(1).unwrap();
    let n = (8 / cfg.patch_size) * (8 / cfg.patch_size);
    let i2t = c.blocks[0].attn.i2t.as_ref().unwrap();
    assert_eq!(i2t.dims(), [1, cfg.num_attention_heads, n, l]);
    // Capturing must not change the result.
    assert_close("captured run", &out.latents, &g["latents"], 1e-4);

    // The prompt's branch is batch item 1: a forward of the prompt alone gives the same maps.
    let t = out.schedule.timesteps[0];
    let x0 = g["noise"].clone();
    let fwd = ditlens_core::mmdit::ForwardOptions {
        capture: CaptureSpec::maps(),
        ..Default::default()
    };
    let solo = p
        .transformer
        .forward(
            &x0,
            &Tensor::new(&[t], &Device::Cpu).unwrap(),
            &cond.prompt_embeds,
            &cond.pooled,
            &fwd,
        )
        .unwrap();
    let opts0 = GenerateOptions {
        capture_steps: Some(vec![0]),
        ..opts.clone()
    };
    let first = p
        .generate_encoded(&cond, Some(&uncond), &g["noise"], &opts0, |_, _, _| true)
        .unwrap();
    let a = first.captures[0].blocks[1].attn.i2t.as_ref().unwrap();
    let b = solo.blocks[1].attn.i2t.as_ref().unwrap();
    assert_close("prompt branch i2t", a, b, 1e-5);

    let cancel = Arc::new(AtomicBool::new(true));
    let opts_c = GenerateOptions {
        cancel: Some(cancel),
        ..opts.clone()
    };
    let e = p
        .generate_encoded(&cond, Some(&uncond), &g["noise"], &opts_c, |_, _, _| true)
        .unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e}");
    let e = p
        .generate_encoded(&cond, Some(&uncond), &g["noise"], &opts, |_, _, _| false)
        .unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e}");
    // Guidance > 1 needs the negative prompt.
    let e = p
        .generate_encoded(&cond, None, &g["noise"], &opts, |_, _, _| true)
        .unwrap_err();
    assert!(e.to_string().contains("negative"), "{e}");
    // Wrong noise shape.
    let bad = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let e = p
        .generate_encoded(&cond, Some(&uncond), &bad, &opts, |_, _, _| true)
        .unwrap_err();
    assert!(e.to_string().contains("initial noise"), "{e}");
}

fn err_of<T>(r: ditlens_core::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_vae_folder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pipe");
    copy_tree(&sd3_fixture().join("pipeline"), &root);
    std::fs::remove_dir_all(root.join("vae")).unwrap();
    let e = err_of(Sd3Pipeline::open_without_text(
        &root,
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains("vae/") && e.contains("pipe"), "{e}");
}

#[test]
fn missing_vae_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vae");
    copy_tree(&sd3_fixture().join("pipeline/vae"), &dir);
    let file = dir.join("diffusion_pytorch_model.safetensors");
    let mut t = read(&file);
    let gone = "decoder.mid_block.attentions.0.to_k.weight";
    assert!(t.remove(gone).is_some());
    candle_core::safetensors::save(&t, &file).unwrap();
    let e = err_of(Vae::from_folder(&dir, &Device::Cpu, DType::F32));
    assert!(
        e.contains(gone) && e.contains("diffusion_pytorch_model.safetensors"),
        "{e}"
    );

    // The single file names the stored (LDM) key.
    let single = tmp.path().join("model.safetensors");
    let mut t = read(&sd3_fixture().join("single/model.safetensors"));
    let gone = "first_stage_model.encoder.down.1.block.0.conv2.weight";
    assert!(t.remove(gone).is_some());
    candle_core::safetensors::save(&t, &single).unwrap();
    let cfg = sd3_fixture().join("pipeline/vae/config.json");
    let e = err_of(Vae::from_single_file(
        &single,
        "first_stage_model.",
        Some(&cfg),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains(gone), "{e}");
    // A single file without any VAE tensor.
    t.retain(|k, _| !k.starts_with("first_stage_model."));
    candle_core::safetensors::save(&t, &single).unwrap();
    let e = err_of(Sd3Pipeline::open_without_text(
        &single,
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains("first_stage_model"), "{e}");
}

#[test]
fn latent_channel_mismatch_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pipe");
    copy_tree(&sd3_fixture().join("pipeline"), &root);
    // A self-consistent 4-channel VAE beside the 16-channel transformer.
    let file = root.join("vae/diffusion_pytorch_model.safetensors");
    let mut t = read(&file);
    let co = t["encoder.conv_out.weight"].narrow(0, 0, 8).unwrap();
    let cb = t["encoder.conv_out.bias"].narrow(0, 0, 8).unwrap();
    let ci = t["decoder.conv_in.weight"].narrow(1, 0, 4).unwrap();
    t.insert("encoder.conv_out.weight".into(), co);
    t.insert("encoder.conv_out.bias".into(), cb);
    t.insert("decoder.conv_in.weight".into(), ci);
    candle_core::safetensors::save(&t, &file).unwrap();
    let cfg_path = root.join("vae/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["latent_channels"] = 4.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert_eq!(
        Vae::from_folder(&root.join("vae"), &Device::Cpu, DType::F32)
            .unwrap()
            .config()
            .latent_channels,
        4
    );
    let e = err_of(Sd3Pipeline::open_without_text(
        &root,
        &Device::Cpu,
        DType::F32,
    ));
    assert!(
        e.contains("latent channels") && e.contains("16") && e.contains("4"),
        "{e}"
    );

    // A config that disagrees with the weights names the tensor.
    cfg["latent_channels"] = 16.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = err_of(Vae::from_folder(
        &root.join("vae"),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains("encoder.conv_out.weight"), "{e}");
}

fn analyse(p: &Sd3Pipeline, img: &image::DynamicImage) -> ditlens_core::sd3::Analysis {
    let (cond, _) = recorded_embeddings();
    let spec = CaptureSpec {
        i2t: true,
        ..Default::default()
    };
    p.analyse_image_encoded(img, &cond, 1, 2, 5, &spec).unwrap()
}

#[test]
fn analyse_image_takes_odd_sizes_and_alpha() {
    let p =
        Sd3Pipeline::open_without_text(&sd3_fixture().join("pipeline"), &Device::Cpu, DType::F32)
            .unwrap();
    let res = p.resolution();
    assert_eq!(res, p.latent_size * 8);
    // 37 × 23 RGBA with a varying alpha: centre-cropped to 23 × 23, alpha dropped.
    let rgba = image::RgbaImage::from_fn(37, 23, |x, y| {
        image::Rgba([
            (x * 7) as u8,
            (y * 11) as u8,
            ((x + y) * 3) as u8,
            (x * 5 + y) as u8,
        ])
    });
    let rgb = image::DynamicImage::ImageRgba8(rgba.clone()).to_rgb8();
    let a = analyse(&p, &image::DynamicImage::ImageRgba8(rgba));
    let b = analyse(&p, &image::DynamicImage::ImageRgb8(rgb.clone()));
    assert_eq!(a.picture.dimensions(), (res as u32, res as u32));
    assert_eq!(a.picture, b.picture, "alpha must be ignored");
    assert_close("alpha ignored", &a.noised, &b.noised, 0.0);
    // The crop is the centred square (offset 7 of 14 spare columns).
    let crop = image::imageops::crop_imm(&rgb, 7, 0, 23, 23).to_image();
    let c = analyse(&p, &image::DynamicImage::ImageRgb8(crop));
    assert_eq!(a.picture, c.picture);
    // One captured forward with the prompt at step 1 of 2.
    let cfg = p.transformer.config();
    let n = (p.latent_size / cfg.patch_size).pow(2);
    let i2t = a.output.blocks[0].attn.i2t.as_ref().unwrap();
    assert_eq!(i2t.dims()[..3], [1, cfg.num_attention_heads, n]);
    assert_eq!(a.sigma, p.scheduler.schedule(2).unwrap().sigmas[1]);
    // x = σ·ε + (1 − σ)·x0: the noised latent is between the two.
    assert_eq!(a.noised.dims(), p.latent_shape());
    // Bad: empty image, step outside the schedule.
    let (cond, _) = recorded_embeddings();
    let empty = image::DynamicImage::ImageRgb8(image::RgbImage::new(0, 0));
    let e = err_of(p.analyse_image_encoded(&empty, &cond, 1, 2, 5, &CaptureSpec::default()));
    assert!(e.contains("empty"), "{e}");
    let e = err_of(p.analyse_image_encoded(
        &image::DynamicImage::ImageRgb8(rgb),
        &cond,
        2,
        2,
        5,
        &CaptureSpec::default(),
    ));
    assert!(e.contains("step index 2"), "{e}");
}

#[test]
fn anything_else_is_not_a_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let e = err_of(PipelineParts::locate(tmp.path()));
    assert!(e.contains("model_index.json"), "{e}");
}
