//! The SD3 text side against diffusers 0.42.1 / transformers 5.23 references
//! (`tests/fixtures/sd3_pipeline/`, made by `tests/fixtures/make_sd3_pipeline.py`): token ids
//! and strings of every tokenizer (exact), prompt embeddings and pooled vectors (atol 1e-4, f32)
//! for the pipeline folder, the float16 single file, T5-less encoding, truncation, the empty
//! prompt and several `max_sequence_length`s; and the errors a user can cause.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ditlens_core::sd3::{
    ClipTokenizer, PipelineParts, T5Tokenizer, TextEncoderKind, TextEncoders, TextOptions,
};
use ditlens_core::Error;

mod support;
use support::*;

const ATOL: f32 = 1e-4;

fn pipeline_dir() -> PathBuf {
    sd3_fixture().join("pipeline")
}

fn single_file() -> PathBuf {
    sd3_fixture().join("single/model.safetensors")
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("fixture json")).expect("json")
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        sd3_fixture().join("expected/embeds.safetensors"),
        &Device::Cpu,
    )
    .expect("expected embeds")
}

fn open(path: &Path, msl: usize, use_t5: bool) -> Result<TextEncoders, Error> {
    let parts = PipelineParts::locate(path)?;
    TextEncoders::open(
        &parts,
        &Device::Cpu,
        DType::F32,
        TextOptions {
            max_sequence_length: msl,
            use_t5,
        },
    )
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("tokens")
        .iter()
        .map(|x| x.as_str().expect("token").to_string())
        .collect()
}

#[test]
fn clip_and_t5_token_ids_match_transformers() {
    let toks = read_json(&sd3_fixture().join("expected/tokens.json"));
    let tl = ClipTokenizer::from_dir(&pipeline_dir().join("tokenizer")).unwrap();
    let tg = ClipTokenizer::from_dir(&pipeline_dir().join("tokenizer_2")).unwrap();
    let t5 = T5Tokenizer::from_dir(&pipeline_dir().join("tokenizer_3")).unwrap();
    assert_eq!(tl.pad_token, "<|endoftext|>");
    assert_eq!(tg.pad_token, "!");
    for (key, rec) in toks.as_object().unwrap() {
        let prompt = rec["prompt"].as_str().unwrap();
        for (name, tok) in [("clip_l", &tl), ("clip_g", &tg)] {
            let got = tok.tokenize(prompt).unwrap();
            let want = &rec[name];
            assert_eq!(got.ids, ids(&want["ids"]), "{key} {name} ids");
            assert_eq!(got.tokens, strings(&want["tokens"]), "{key} {name} tokens");
            assert_eq!(
                tok.encode_full(prompt).unwrap(),
                ids(&want["untruncated_ids"]),
                "{key} {name} untruncated"
            );
            assert_eq!(
                got.dropped.as_deref(),
                want["dropped"].as_str(),
                "{key} {name} dropped text"
            );
            assert_eq!(tok.pad_id as u64, want["pad_id"].as_u64().unwrap());
            let content = got.ids.len() - got.is_padding.iter().filter(|p| **p).count();
            assert_eq!(
                got.ids[content - 1],
                tok.eos_id,
                "{key} {name} EOS before padding"
            );
            assert!(got.is_special[0] && got.is_special[content - 1]);
        }
        for (msl, want) in rec["t5"].as_object().unwrap() {
            let msl: usize = msl.parse().unwrap();
            let got = t5.tokenize(prompt, msl).unwrap();
            assert_eq!(got.ids, ids(&want["ids"]), "{key} t5@{msl} ids");
            assert_eq!(
                got.tokens,
                strings(&want["tokens"]),
                "{key} t5@{msl} tokens"
            );
            assert_eq!(
                got.dropped.as_deref(),
                want["dropped"].as_str(),
                "{key} t5@{msl} dropped"
            );
        }
    }
}

#[test]
fn prompt_embeds_match_diffusers_for_every_case() {
    let cases = read_json(&sd3_fixture().join("expected/embeds.json"));
    let exp = expected();
    for (case, c) in cases.as_object().unwrap() {
        let path = match c["model"].as_str().unwrap() {
            "single" => single_file(),
            _ => pipeline_dir(),
        };
        let msl = c["max_sequence_length"].as_u64().unwrap() as usize;
        let use_t5 = c["use_t5"].as_bool().unwrap();
        let enc = open(&path, msl, use_t5).unwrap();
        let out = enc.encode(c["prompt"].as_str().unwrap()).unwrap();
        let want_pe = &exp[&format!("{case}.prompt_embeds")];
        let want_pooled = &exp[&format!("{case}.pooled_prompt_embeds")];
        assert_eq!(out.prompt_embeds.dims(), &[1, 77 + msl, 128], "{case}");
        assert_eq!(out.prompt_embeds.dtype(), DType::F32);
        let d_pe = max_diff(&out.prompt_embeds, want_pe);
        let d_pooled = max_diff(&out.pooled, want_pooled);
        eprintln!("{case}: max |Δ| prompt_embeds {d_pe:.2e}, pooled {d_pooled:.2e}");
        assert!(d_pe < ATOL, "{case}: prompt_embeds differ by {d_pe}");
        assert!(d_pooled < ATOL, "{case}: pooled differ by {d_pooled}");
        assert_eq!(out.tokens.len(), 77 + msl, "{case}: one token per position");
        assert!(out.tokens[..77]
            .iter()
            .all(|t| t.encoder == TextEncoderKind::ClipL));
        assert!(out.tokens[77..]
            .iter()
            .all(|t| t.encoder == TextEncoderKind::T5));
        if !use_t5 {
            assert!(out.tokens[77..].iter().all(|t| t.is_padding));
        }
    }
}

#[test]
fn long_prompt_is_truncated_and_said() {
    let toks = read_json(&sd3_fixture().join("expected/tokens.json"));
    let long = toks["long"]["prompt"].as_str().unwrap();
    let clip_dropped = toks["long"]["clip_l"]["dropped"].as_str().unwrap();
    let enc = open(&pipeline_dir(), 16, true).unwrap();
    let out = enc.encode(long).unwrap();
    let said = out.truncated.expect("truncation reported");
    assert!(said.contains(clip_dropped), "{said}");
    let t5_dropped = toks["long"]["t5"]["16"]["dropped"].as_str().unwrap();
    assert!(said.contains(t5_dropped), "{said}");
    // BOS, 75 prompt tokens, EOS: no CLIP padding left
    assert!(!out.tokens[..77].iter().any(|t| t.is_padding));
    assert_eq!(out.tokens[76].text, "<|endoftext|>");
    let short = enc.encode("a photo of a cat").unwrap();
    assert!(short.truncated.is_none());
    assert_eq!(short.tokens[0].text, "<|startoftext|>");
    assert_eq!(short.tokens[2].text, "photo</w>");
    assert!(short.tokens[6].is_special && !short.tokens[6].is_padding);
    assert!(short.tokens[7].is_padding);
}

#[test]
fn single_file_uses_identity_projection_for_clip_l() {
    let exp = expected();
    let folder = &exp["folder.pooled_prompt_embeds"];
    let single = &exp["single.pooled_prompt_embeds"];
    // CLIP-L half differs (identity vs the folder's projection), CLIP-G half is the same.
    assert!(
        max_diff(
            &folder.narrow(1, 0, 32).unwrap(),
            &single.narrow(1, 0, 32).unwrap()
        ) > 0.1
    );
    assert!(
        max_diff(
            &folder.narrow(1, 32, 64).unwrap(),
            &single.narrow(1, 32, 64).unwrap()
        ) < ATOL
    );
    let parts = PipelineParts::locate(&single_file()).unwrap();
    assert_eq!(parts.form, ditlens_core::sd3::ModelForm::SingleFile);
    assert_eq!(
        parts.clip_l.as_ref().unwrap().prefix,
        "text_encoders.clip_l.transformer."
    );
    // The folder holding only the single file (and its tokenizers) opens as that file.
    let via_dir = PipelineParts::locate(&sd3_fixture().join("single")).unwrap();
    assert_eq!(via_dir.form, ditlens_core::sd3::ModelForm::SingleFile);
}

#[test]
fn t5_less_pipeline_gives_zeros() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pipe");
    copy_tree(&pipeline_dir(), &dir);
    std::fs::remove_dir_all(dir.join("text_encoder_3")).unwrap();
    std::fs::remove_dir_all(dir.join("tokenizer_3")).unwrap();
    let exp = expected();
    for msl in [77, 40] {
        let enc = open(&dir, msl, true).unwrap();
        assert!(!enc.has_t5());
        let out = enc.encode("a photo of a cat").unwrap();
        assert_eq!(out.prompt_embeds.dims(), &[1, 77 + msl, 128]);
        let clip = out.prompt_embeds.narrow(1, 0, 77).unwrap();
        let want_clip = exp["folder.prompt_embeds"].narrow(1, 0, 77).unwrap();
        assert!(max_diff(&clip, &want_clip) < ATOL);
        let rest = out.prompt_embeds.narrow(1, 77, msl).unwrap();
        assert_eq!(max_diff(&rest, &rest.zeros_like().unwrap()), 0.0);
        assert!(max_diff(&out.pooled, &exp["folder.pooled_prompt_embeds"]) < ATOL);
    }
}

#[test]
fn odd_prompts_do_not_fail() {
    let enc = open(&pipeline_dir(), 20, true).unwrap();
    for p in [
        "ünïcödé façade",
        "猫の写真 🐱",
        "\t\n  ",
        "<|endoftext|> cat",
        &"x".repeat(5000),
    ] {
        let out = enc.encode(p).unwrap();
        assert_eq!(out.tokens.len(), 97, "{p:?}");
        let finite = out
            .prompt_embeds
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| x.is_finite());
        assert!(finite, "{p:?}");
    }
}

#[test]
fn missing_text_encoder_2_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pipe");
    copy_tree(&pipeline_dir(), &dir);
    std::fs::remove_dir_all(dir.join("text_encoder_2")).unwrap();
    let err = open(&dir, 77, true).err().expect("must fail").to_string();
    assert!(err.contains("text_encoder_2"), "{err}");
    assert!(err.contains("CLIP-G"), "{err}");
}

#[test]
fn missing_tokenizer_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pipe");
    copy_tree(&pipeline_dir(), &dir);
    std::fs::remove_dir_all(dir.join("tokenizer_3")).unwrap();
    let err = open(&dir, 77, true).err().expect("must fail").to_string();
    assert!(err.contains("tokenizer_3"), "{err}");
    // With T5 disabled its tokenizer is not needed.
    assert!(open(&dir, 77, false).is_ok());

    // An encoder folder whose weights are gone is not silently treated as absent.
    let dir3 = tmp.path().join("pipe3");
    copy_tree(&pipeline_dir(), &dir3);
    std::fs::remove_file(dir3.join("text_encoder_3/model.safetensors")).unwrap();
    let err = open(&dir3, 77, true).err().expect("must fail").to_string();
    assert!(
        err.contains("text_encoder_3") && err.contains("no *.safetensors"),
        "{err}"
    );

    // a single file with no tokenizer folders beside it
    let lone = tmp.path().join("lone");
    std::fs::create_dir_all(&lone).unwrap();
    std::fs::copy(single_file(), lone.join("sd3.safetensors")).unwrap();
    let err = open(&lone.join("sd3.safetensors"), 77, true)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("tokenizer/"), "{err}");
}

#[test]
fn corrupt_tokenizer_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pipe");
    copy_tree(&pipeline_dir(), &dir);
    std::fs::write(dir.join("tokenizer/vocab.json"), b"{ not json").unwrap();
    let err = open(&dir, 77, true).err().expect("must fail");
    assert!(matches!(err, Error::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer"), "{err}");

    std::fs::write(dir.join("tokenizer/vocab.json"), b"{}").unwrap();
    assert!(open(&dir, 77, true).is_err());

    copy_tree(&pipeline_dir().join("tokenizer"), &dir.join("tokenizer"));
    std::fs::write(dir.join("tokenizer_3/tokenizer.json"), b"garbage").unwrap();
    let err = open(&dir, 77, true).err().expect("must fail").to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn mismatched_parts_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pipe");
    copy_tree(&pipeline_dir(), &dir);
    // CLIP-L's weights where CLIP-G belongs: pooled 32 + 32 ≠ the transformer's 96.
    std::fs::remove_dir_all(dir.join("text_encoder_2")).unwrap();
    copy_tree(
        &pipeline_dir().join("text_encoder"),
        &dir.join("text_encoder_2"),
    );
    let err = open(&dir, 77, true).err().expect("must fail").to_string();
    assert!(err.contains("pooled_projection_dim"), "{err}");

    // A config that disagrees with the weights: the tensor is named.
    let dir2 = tmp.path().join("pipe2");
    copy_tree(&pipeline_dir(), &dir2);
    let cfg_path = dir2.join("text_encoder_2/config.json");
    let cfg = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"intermediate_size\": 64", "\"intermediate_size\": 48");
    std::fs::write(&cfg_path, cfg).unwrap();
    let err = open(&dir2, 77, true).err().expect("must fail").to_string();
    assert!(err.contains("CLIP-G") && err.contains("fc1"), "{err}");
}

#[test]
fn bad_options_and_layouts_are_errors() {
    for msl in [0, 513] {
        let err = open(&pipeline_dir(), msl, true).err().expect("must fail");
        assert!(matches!(err, Error::Input(_)), "{err}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("other.safetensors");
    let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("foo.weight".to_string(), t)]), &f).unwrap();
    let err = PipelineParts::locate(&f).expect_err("must fail");
    assert!(matches!(err, Error::UnknownLayout { .. }), "{err}");
    let err = PipelineParts::locate(&tmp.path().join("nope")).expect_err("must fail");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    std::fs::write(tmp.path().join("junk.safetensors"), b"junk").unwrap();
    std::fs::remove_file(&f).unwrap();
    let err = PipelineParts::locate(&tmp.path().join("junk.safetensors")).expect_err("must fail");
    assert!(matches!(err, Error::NotSafetensors { .. }), "{err}");
}

#[test]
fn text_encoders_can_move_to_a_worker_thread() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<TextEncoders>();
    send_sync::<PipelineParts>();
}
