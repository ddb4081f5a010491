//! End-to-end test of `ditlens encode-prompt` on the tiny SD3 pipeline fixture
//! (`tests/fixtures/sd3_pipeline/`): outputs match diffusers 0.42.1 (atol 1e-4, f32), the token
//! list is written, and a missing part is one clear error line.

use std::process::Command;

use candle_core::Device;

mod support;
use support::*;

#[test]
fn encode_prompt_matches_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = candle_core::safetensors::load(
        sd3_fixture().join("expected/embeds.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (model, case, extra) in [
        (sd3_fixture().join("pipeline"), "folder", vec![]),
        (
            sd3_fixture().join("single/model.safetensors"),
            "single",
            vec![],
        ),
        (
            sd3_fixture().join("pipeline"),
            "no_t5_msl32",
            vec!["--no-t5", "--max-sequence-length", "32"],
        ),
    ] {
        let prompt = if case == "no_t5_msl32" {
            "  A Red CAT's 2 hats,\tisn't it?!  "
        } else {
            "a photo of a cat"
        };
        let out = tmp.path().join(format!("{case}.safetensors"));
        let mut args = vec![
            "encode-prompt",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            prompt,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = Command::new(env!("CARGO_BIN_EXE_ditlens"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        for (name, key) in [
            ("prompt_embeds", "prompt_embeds"),
            ("pooled_prompt_embeds", "pooled_prompt_embeds"),
        ] {
            let d = max_diff(&got[name], &exp[&format!("{case}.{key}")]);
            assert!(d < 1e-4, "{case} {name}: {d}");
        }
        let side: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
                .unwrap();
        let tokens = side["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), got["prompt_embeds"].dim(1).unwrap());
        assert_eq!(tokens[0]["text"], "<|startoftext|>");
        assert_eq!(side["ids"]["clip_l"].as_array().unwrap().len(), 77);
    }
}

#[test]
fn encode_prompt_missing_part_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("e.safetensors");
    let o = Command::new(env!("CARGO_BIN_EXE_ditlens"))
        .args([
            "encode-prompt",
            "--model",
            tmp.path().to_str().unwrap(),
            "--prompt",
            "x",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists());
}
