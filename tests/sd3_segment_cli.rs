//! End-to-end `ditlens segment` and `ditlens eval` on the tiny SD3 pipeline fixture
//! (`tests/fixtures/sd3_pipeline/`), as a folder and as a bundled single file.

use std::path::{Path, PathBuf};

mod support;
use support::*;

/// An odd-sized picture (not square, not the model's size).
fn picture(dir: &Path) -> PathBuf {
    let img = image::RgbImage::from_fn(48, 40, |x, y| {
        if (x as i32 - 20).pow(2) + (y as i32 - 18).pow(2) < 120 {
            image::Rgb([230, 40, 40])
        } else {
            image::Rgb([40, 60, (y * 5) as u8])
        }
    });
    let p = dir.join("pic.png");
    img.save(&p).unwrap();
    p
}

fn segment_with(model: &Path, dir: &Path) -> Vec<u8> {
    let pic = picture(dir);
    let (out, ov, js) = (dir.join("l.png"), dir.join("o.png"), dir.join("s.json"));
    let log = ok(&[
        "segment",
        "--model",
        s(model),
        "--image",
        s(&pic),
        "--classes",
        "circle, red square ,background",
        "--out",
        s(&out),
        "--overlay",
        s(&ov),
        "--json",
        s(&js),
    ]);
    assert!(log.contains("layer 1"), "{log}");
    let labels = image::open(&out).unwrap();
    assert_eq!((labels.width(), labels.height()), (48, 40));
    let labels = labels.to_luma8().into_raw();
    assert!(labels.iter().all(|&l| l < 3));
    let overlay = image::open(&ov).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (48, 40));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&js).unwrap()).unwrap();
    assert_eq!(v["classes"][1], "red square");
    assert_eq!(v["layer"], 1);
    assert!((v["sigma"].as_f64().unwrap() - 0.5151).abs() < 1e-3);
    let shares: f64 = v["shares"]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-9);
    // Positions start after BOS and follow one another.
    let toks: Vec<Vec<u64>> = serde_json::from_value(v["class_tokens"].clone()).unwrap();
    assert_eq!(toks[0][0], 1);
    for w in toks.windows(2) {
        assert_eq!(w[1][0], w[0].last().unwrap() + 1);
    }
    labels
}

#[test]
fn segment_runs_on_a_pipeline_folder_and_a_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    let folder = segment_with(&sd3_fixture().join("pipeline"), &a);
    // The bundled single file with its tokenizers beside it and the diffusers configs.
    let single = tmp.path().join("single");
    copy_tree(&sd3_fixture().join("single"), &single);
    for part in ["vae", "transformer"] {
        std::fs::create_dir_all(single.join(part)).unwrap();
        std::fs::copy(
            sd3_fixture().join(format!("pipeline/{part}/config.json")),
            single.join(format!("{part}/config.json")),
        )
        .unwrap();
    }
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    let file = segment_with(&single.join("model.safetensors"), &b);
    let same = folder.iter().zip(&file).filter(|(x, y)| x == y).count();
    assert!(
        same * 10 >= folder.len() * 9,
        "the f16 single file agrees with the folder on {same} of {} pixels",
        folder.len()
    );
}

#[test]
fn eval_sweeps_sd3_blocks_and_bad_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    ok(&[
        "make-dataset",
        "--out",
        s(&ds),
        "--count",
        "3",
        "--seed",
        "5",
        "--size",
        "40",
    ]);
    let model = sd3_fixture().join("pipeline");
    let js = tmp.path().join("e.json");
    let log = ok(&[
        "eval",
        "--model",
        s(&model),
        "--dataset",
        s(&ds),
        "--layers",
        "all",
        "--json",
        s(&js),
    ]);
    assert!(log.contains("best"), "{log}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&js).unwrap()).unwrap();
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        let m = l["miou"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&m));
    }
    assert_eq!(v["images"], 3);
    let best = v["best_layer"].as_u64().unwrap() as usize;
    assert_eq!(layers[best]["miou"], v["miou"]);

    let pic = picture(tmp.path());
    let out = tmp.path().join("x.png");
    let fails = |args: &[&str], needle: &str| {
        let o = ditlens(args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(!e.contains("panicked"), "{e}");
        assert!(e.contains(needle), "`{needle}` not in {e}");
    };
    let base = [
        "segment",
        "--model",
        s(&model),
        "--image",
        s(&pic),
        "--out",
        s(&out),
    ];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter()
            .map(|x| x.to_string())
            .chain(extra.iter().map(|x| x.to_string()))
            .collect()
    };
    let run = |extra: &[&'static str], needle: &str| {
        let args = with(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&refs, needle);
    };
    run(
        &["--classes", "a,b", "--layer", "2"],
        "layer 2 does not exist",
    );
    run(&["--classes", " , "], "--classes is empty");
    let broken = tmp.path().join("broken.png");
    std::fs::write(&broken, b"not a png").unwrap();
    fails(
        &[
            "segment",
            "--model",
            s(&model),
            "--image",
            s(&broken),
            "--classes",
            "a",
            "--out",
            s(&out),
        ],
        "broken.png",
    );
}

#[test]
fn probe_and_analyses_run_on_sd3() {
    let tmp = tempfile::tempdir().unwrap();
    let model = sd3_fixture().join("pipeline");
    let cap = tmp.path().join("cap.safetensors");
    let js = tmp.path().join("cap.json");
    let gen = tmp.path().join("gen.png");
    ok(&[
        "probe",
        "--model",
        s(&model),
        "--prompt",
        "a red circle",
        "--steps",
        "3",
        "--out",
        s(&cap),
        "--json",
        s(&js),
        "--image-out",
        s(&gen),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&js).unwrap()).unwrap();
    assert_eq!(v["n_txt"], 154);
    assert_eq!(v["tokens"][0]["kind"], "bos");
    assert_eq!(v["tokens"][153]["kind"], "padding");
    assert_eq!(image::open(&gen).unwrap().width(), 64);
    for cmd in ["mass", "value-norms", "token-grid"] {
        let out = tmp.path().join(format!("{cmd}.png"));
        ok(&[cmd, "--capture", s(&cap), "--out", s(&out)]);
        assert!(image::open(&out).unwrap().width() > 100, "{cmd}");
    }
    // An analysis that probes the SD3 model itself.
    let out = tmp.path().join("m.png");
    ok(&[
        "mass",
        "--model",
        s(&model),
        "--prompt",
        "a red circle",
        "--steps",
        "2",
        "--out",
        s(&out),
    ]);
    assert!(out.is_file());
}
