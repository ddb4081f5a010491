//! End-to-end test of `ditlens generate` on the tiny SD3 pipeline fixture
//! (`tests/fixtures/sd3_pipeline/`, made by `tests/fixtures/make_sd3_pipeline.py`): given noise,
//! 2 CFG steps, final latents saved and compared with diffusers; and how `--model` is told apart.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

mod support;
use support::*;

/// `--prompt-embeds` input: the embeddings diffusers used for `generate.safetensors` (cases
/// `folder` = the run's prompt and `folder_empty` = "" of `embeds.safetensors`).
fn embeddings_file(dir: &Path) -> PathBuf {
    let exp = sd3_fixture().join("expected");
    let json = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(exp.join(f)).unwrap()).unwrap()
    };
    let (run, cases) = (json("generate.json"), json("embeds.json"));
    assert_eq!(cases["folder"]["prompt"], run["prompt"]);
    assert_eq!(cases["folder_empty"]["prompt"], run["negative_prompt"]);
    let e = candle_core::safetensors::load(exp.join("embeds.safetensors"), &Device::Cpu).unwrap();
    let out = dir.join("emb.safetensors");
    let pick = [
        ("prompt_embeds", "folder.prompt_embeds"),
        ("pooled_prompt_embeds", "folder.pooled_prompt_embeds"),
        ("negative_prompt_embeds", "folder_empty.prompt_embeds"),
        (
            "negative_pooled_prompt_embeds",
            "folder_empty.pooled_prompt_embeds",
        ),
    ];
    let m: std::collections::HashMap<String, Tensor> = pick
        .iter()
        .map(|(k, v)| (k.to_string(), e[*v].clone()))
        .collect();
    candle_core::safetensors::save(&m, &out).unwrap();
    out
}

/// The bundled single file with the tiny VAE's and transformer's diffusers configs beside it.
fn single_file_with_configs(dir: &Path) -> PathBuf {
    let file = dir.join("model.safetensors");
    std::fs::copy(sd3_fixture().join("single/model.safetensors"), &file).unwrap();
    for part in ["vae", "transformer"] {
        std::fs::create_dir_all(dir.join(part)).unwrap();
        std::fs::copy(
            sd3_fixture().join(format!("pipeline/{part}/config.json")),
            dir.join(format!("{part}/config.json")),
        )
        .unwrap();
    }
    file
}

/// Runs the fixture's 2-step generation from its noise and compares the saved latents; the
/// conditioning is the prompt's text (through the text encoders) or diffusers' embeddings.
fn generate_matches(model: &Path, tmp: &Path, from_text: bool) {
    let expected = sd3_fixture().join("expected/generate.safetensors");
    let emb = embeddings_file(tmp);
    let run: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sd3_fixture().join("expected/generate.json")).unwrap(),
    )
    .unwrap();
    let prompt = run["prompt"].as_str().unwrap().to_string();
    let (cond_flag, cond) = if from_text {
        ("--prompt", prompt.as_str())
    } else {
        ("--prompt-embeds", s(&emb))
    };
    let tmp = tempfile::tempdir_in(tmp).unwrap();
    let lat = tmp.path().join("latents.safetensors");
    let png = tmp.path().join("out.png");
    let args = [
        "generate",
        "--model",
        s(model),
        cond_flag,
        cond,
        "--steps",
        "2",
        "--guidance",
        "4",
        "--init-noise",
        s(&expected),
        "--save-latents",
        s(&lat),
        "--out",
        s(&png),
    ];
    let o = ditlens(&args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got = tensor(&lat, "latents");
    let want = tensor(&expected, "latents");
    let d = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d <= 1e-4, "latents differ from diffusers by {d:e}");
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
}

#[test]
fn generate_from_given_noise_matches_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    generate_matches(&sd3_fixture().join("pipeline"), tmp.path(), false);
    let single = tmp.path().join("single");
    std::fs::create_dir_all(&single).unwrap();
    generate_matches(&single_file_with_configs(&single), tmp.path(), false);
}

#[test]
fn generate_from_the_prompt_text_matches_diffusers() {
    // Tokenizers, CLIP-L/G and T5 encode the prompt and the empty negative prompt, then the
    // same 2 steps: the whole pipeline against diffusers' latents.
    let tmp = tempfile::tempdir().unwrap();
    generate_matches(&sd3_fixture().join("pipeline"), tmp.path(), true);
}

#[test]
fn model_paths_are_told_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    // A folder that is neither kind.
    fails(
        &[
            "generate",
            "--model",
            s(tmp.path()),
            "--prompt",
            "a",
            "--out",
            s(&out),
        ],
        "model_index.json",
    );
    // A file that is not safetensors.
    let txt = tmp.path().join("weights.bin");
    std::fs::write(&txt, b"x").unwrap();
    fails(
        &[
            "generate",
            "--model",
            s(&txt),
            "--prompt",
            "a",
            "--out",
            s(&out),
        ],
        "not a model",
    );
    // SD3-only flags on the embedded model.
    let noise = sd3_fixture().join("expected/generate.safetensors");
    fails(
        &[
            "generate",
            "--prompt",
            "a red circle",
            "--init-noise",
            s(&noise),
            "--out",
            s(&out),
        ],
        "--init-noise is for SD3",
    );
    // An SD3 pipeline given to an embedded-only command.
    fails(
        &[
            "perturb-sweep",
            "--model",
            s(&sd3_fixture().join("pipeline")),
            "--prompt",
            "a",
            "--out",
            s(&out),
        ],
        "SD3 pipeline",
    );
    // Noise file without a `noise` tensor names the file and the tensor.
    let lat = tmp.path().join("l.safetensors");
    let p = sd3_fixture().join("pipeline");
    fails(
        &[
            "generate",
            "--model",
            s(&p),
            "--prompt-embeds",
            s(&embeddings_file(tmp.path())),
            "--init-noise",
            s(&sd3_fixture().join("expected/vae.safetensors")),
            "--steps",
            "1",
            "--save-latents",
            s(&lat),
            "--out",
            s(&out),
        ],
        "has no tensor `noise`",
    );
}

/// Latents of a 2-step generation from the fixture's noise with extra flags.
fn latents_with(tmp: &Path, name: &str, extra: &[&str]) -> Tensor {
    let noise = sd3_fixture().join("expected/generate.safetensors");
    let lat = tmp.join(format!("{name}.safetensors"));
    let png = tmp.join(format!("{name}.png"));
    let model = sd3_fixture().join("pipeline");
    let mut args = vec![
        "generate",
        "--model",
        s(&model),
        "--steps",
        "2",
        "--init-noise",
        s(&noise),
        "--save-latents",
        s(&lat),
        "--out",
        s(&png),
    ];
    args.extend_from_slice(extra);
    let o = ditlens(&args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    tensor(&lat, "latents")
}

#[test]
fn text_options_reach_generation() {
    // `generate --no-t5 --max-sequence-length 20` from the text equals generating from what
    // `encode-prompt` writes with the same options.
    let tmp = tempfile::tempdir().unwrap();
    let model = sd3_fixture().join("pipeline");
    let enc = |prompt: &str, out: &Path| {
        let o = ditlens(&[
            "encode-prompt",
            "--model",
            s(&model),
            "--prompt",
            prompt,
            "--no-t5",
            "--max-sequence-length",
            "20",
            "--out",
            s(out),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let (p, n) = (tmp.path().join("p.st"), tmp.path().join("n.st"));
    enc("a red circle", &p);
    enc("", &n);
    let emb = tmp.path().join("emb.safetensors");
    let m: std::collections::HashMap<String, Tensor> = [
        ("prompt_embeds", tensor(&p, "prompt_embeds")),
        ("pooled_prompt_embeds", tensor(&p, "pooled_prompt_embeds")),
        ("negative_prompt_embeds", tensor(&n, "prompt_embeds")),
        (
            "negative_pooled_prompt_embeds",
            tensor(&n, "pooled_prompt_embeds"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(m["prompt_embeds"].dims()[1], 77 + 20);
    candle_core::safetensors::save(&m, &emb).unwrap();
    let from_embeds = latents_with(tmp.path(), "e", &["--prompt-embeds", s(&emb)]);
    let flags = ["--no-t5", "--max-sequence-length", "20"];
    let mut text = vec!["--prompt", "a red circle"];
    text.extend_from_slice(&flags);
    let from_text = latents_with(tmp.path(), "t", &text);
    let diff = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(diff(&from_text, &from_embeds) < 1e-5);
    let with_t5 = latents_with(tmp.path(), "d", &["--prompt", "a red circle"]);
    assert!(
        diff(&with_t5, &from_text) > 1e-4,
        "T5 on and off should not give the same latents"
    );
    fails(
        &[
            "generate",
            "--model",
            s(&model),
            "--prompt",
            "a",
            "--max-sequence-length",
            "0",
            "--out",
            s(&tmp.path().join("z.png")),
        ],
        "max_sequence_length",
    );
}
