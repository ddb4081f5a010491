//! End-to-end tests of the embedded-model commands on a tiny freshly initialised model:
//! `make-dataset`, `generate`, `segment`, `eval`, and their errors. (Quality of the shipped model
//! is measured by `ditlens eval`, not asserted here.)

use std::path::{Path, PathBuf};

use candle_core::Device;
use ditlens_core::embedded::{EmbeddedConfig, ToyConfig, TrainConfig, Trainer};

mod support;
use support::*;

/// A tiny model trained for a few steps, saved as a model folder.
fn tiny_model(dir: &Path) -> PathBuf {
    let cfg = ToyConfig {
        model: EmbeddedConfig::tiny(),
        train: TrainConfig {
            steps: 3,
            batch: 2,
            ..TrainConfig::default_toy(false)
        },
    };
    let mut t = Trainer::new(cfg, &Device::Cpu).unwrap();
    for _ in 0..3 {
        t.train_step().unwrap();
    }
    let m = dir.join("model");
    t.save(&m).unwrap();
    m
}

#[test]
fn generate_segment_eval_on_a_tiny_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let data = tmp.path().join("data");
    ok(&[
        "make-dataset",
        "--out",
        s(&data),
        "--count",
        "3",
        "--seed",
        "5",
        "--size",
        "24",
    ]);
    let classes = std::fs::read_to_string(data.join("classes.txt")).unwrap();
    assert_eq!(classes.lines().next(), Some("background"));
    assert_eq!(classes.lines().count(), 9);

    let img = tmp.path().join("g.png");
    ok(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "a red circle on a plain background",
        "--steps",
        "3",
        "--seed",
        "1",
        "--out",
        s(&img),
        "--upscale",
        "2",
    ]);
    let g = image::open(&img).unwrap();
    assert_eq!(
        (g.width(), g.height()),
        (32, 32),
        "16-pixel model output upscaled twice"
    );
    // Same seed, same image.
    let img2 = tmp.path().join("g2.png");
    ok(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "a red circle on a plain background",
        "--steps",
        "3",
        "--seed",
        "1",
        "--out",
        s(&img2),
        "--upscale",
        "2",
    ]);
    assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&img2).unwrap());

    let scene = data.join("images/000000.png");
    let labels = tmp.path().join("l.png");
    let overlay = tmp.path().join("o.png");
    let json = tmp.path().join("s.json");
    ok(&[
        "segment",
        "--model",
        s(&model),
        "--image",
        s(&scene),
        "--classes",
        "circle, square,background",
        "--layer",
        "0",
        "--out",
        s(&labels),
        "--overlay",
        s(&overlay),
        "--json",
        s(&json),
    ]);
    let l = image::open(&labels).unwrap().to_luma8();
    assert_eq!(
        (l.width(), l.height()),
        (24, 24),
        "labels at the image's size"
    );
    assert!(l.pixels().all(|p| p.0[0] < 3));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let total: f64 = v["shares"]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-9);
    assert_eq!(v["layer"], 0);
    assert!(
        (v["sigma"].as_f64().unwrap() - 0.2600).abs() < 1e-3,
        "t = 8 of 28 under shift 1: 1 - 20 x 0.999 / 27"
    );
    assert_eq!(v["class_tokens"], serde_json::json!([[1], [2], [3]]));
    let counted = l.pixels().filter(|p| p.0[0] == 2).count() as f64 / 576.0;
    assert!((counted - v["shares"]["background"].as_f64().unwrap()).abs() < 1e-9);

    // Unsupervised proposals: the clusters partition the 20 text positions; labels name them.
    let ujson = tmp.path().join("u.json");
    ok(&[
        "segment",
        "--model",
        s(&model),
        "--image",
        s(&scene),
        "--unsupervised",
        "--threshold",
        "0.1",
        "--layer",
        "1",
        "--out",
        s(&labels),
        "--json",
        s(&ujson),
    ]);
    let u: serde_json::Value = serde_json::from_slice(&std::fs::read(&ujson).unwrap()).unwrap();
    let clusters = u["clusters"].as_array().unwrap();
    let mut members: Vec<u64> = clusters
        .iter()
        .flat_map(|c| c.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
        .collect();
    members.sort();
    assert_eq!(members, (0..20).collect::<Vec<u64>>());
    assert_eq!(u["proposals"].as_u64().unwrap() as usize, clusters.len());
    let l = image::open(&labels).unwrap().to_luma8();
    assert!(l.pixels().all(|p| (p.0[0] as usize) < clusters.len()));
    let uj = tmp.path().join("ue.json");
    ok(&[
        "eval",
        "--model",
        s(&model),
        "--dataset",
        s(&data),
        "--unsupervised",
        "--json",
        s(&uj),
    ]);
    let ue: serde_json::Value = serde_json::from_slice(&std::fs::read(&uj).unwrap()).unwrap();
    assert_eq!(ue["images"], 3);
    assert!((0.0..=1.0).contains(&ue["miou"].as_f64().unwrap()));
    assert!((0.0..=1.0).contains(&ue["pacc"].as_f64().unwrap()));

    let out = tmp.path().join("e.json");
    let table = ok(&[
        "eval",
        "--model",
        s(&model),
        "--dataset",
        s(&data),
        "--layers",
        "all",
        "--json",
        s(&out),
    ]);
    assert!(table.contains("best"));
    let e: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(e["images"], 3);
    assert_eq!(e["layers"].as_array().unwrap().len(), 2);
    let best = e["best_layer"].as_u64().unwrap() as usize;
    let miou = e["miou"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&miou));
    assert_eq!(e["layers"][best]["miou"].as_f64().unwrap(), miou);
    assert_eq!(e["step_index"], 20, "the paper's step by default");
    // The confusion matrix (row = truth, column = prediction) gives back the mIoU.
    assert_eq!(e["classes"].as_array().unwrap().len(), 9);
    let conf: Vec<Vec<f64>> = e["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!((conf.len(), conf[0].len()), (9, 9));
    let ious: Vec<f64> = (0..9)
        .filter(|&c| conf[c].iter().sum::<f64>() > 0.0)
        .map(|c| {
            let col: f64 = conf.iter().map(|r| r[c]).sum();
            conf[c][c] / (conf[c].iter().sum::<f64>() + col - conf[c][c])
        })
        .collect();
    let from_conf = ious.iter().sum::<f64>() / ious.len() as f64;
    assert!((from_conf - miou).abs() < 1e-9, "{from_conf} vs {miou}");

    // A later step of the schedule (less noise), as the σ sweep of the model cards uses.
    let late = tmp.path().join("late.json");
    ok(&[
        "eval",
        "--model",
        s(&model),
        "--dataset",
        s(&data),
        "--layer",
        "0",
        "--step-index",
        "27",
        "--json",
        s(&late),
    ]);
    let l: serde_json::Value = serde_json::from_slice(&std::fs::read(&late).unwrap()).unwrap();
    assert_eq!(
        (l["step_index"].as_u64(), l["steps"].as_u64()),
        (Some(27), Some(28))
    );
    assert_eq!(l["layer"], 0);
}

#[test]
fn embedded_commands_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let m = s(&model);
    let o = s(tmp.path());
    let out = tmp.path().join("x.png");
    fails(
        &[
            "generate",
            "--model",
            m,
            "--prompt",
            "a red dog",
            "--out",
            s(&out),
        ],
        "unknown word `dog`",
    );
    let scene = tmp.path().join("scene.png");
    image::RgbImage::new(20, 12).save(&scene).unwrap();
    fails(
        &[
            "segment",
            "--model",
            m,
            "--image",
            s(&scene),
            "--classes",
            " , ",
            "--out",
            s(&out),
        ],
        "--classes is empty",
    );
    fails(
        &[
            "segment",
            "--model",
            m,
            "--image",
            s(&scene),
            "--classes",
            "circle,tree",
            "--out",
            s(&out),
        ],
        "unknown word `tree`",
    );
    fails(
        &[
            "segment",
            "--model",
            m,
            "--image",
            s(&scene),
            "--classes",
            "circle",
            "--layer",
            "9",
            "--out",
            s(&out),
        ],
        "layer 9 does not exist",
    );
    let bad = tmp.path().join("bad.png");
    std::fs::write(&bad, b"not an image").unwrap();
    fails(
        &[
            "segment",
            "--model",
            m,
            "--image",
            s(&bad),
            "--classes",
            "circle",
            "--out",
            s(&out),
        ],
        "cannot read image",
    );
    fails(
        &[
            "generate",
            "--model",
            o,
            "--prompt",
            "circle",
            "--out",
            s(&out),
        ],
        "model.json",
    );
    fails(
        &[
            "eval",
            "--model",
            m,
            "--dataset",
            s(&tmp.path().join("none")),
        ],
        "none",
    );
    fails(
        &[
            "eval",
            "--model",
            m,
            "--dataset",
            s(&tmp.path().join("none")),
            "--step-index",
            "28",
        ],
        "not a step of a 28-step schedule",
    );
}

#[test]
fn bench_train_times_both_engines_on_the_same_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bt.json");
    let out = ok(&[
        "bench-train",
        "--batch",
        "1",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
        s(&json),
    ]);
    assert!(out.contains("speed-up"), "{out}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let e = v["engines"].as_array().unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0]["engine"], "candle autograd");
    assert_eq!(e[0]["speedup_vs_candle"], 1.0);
    // Same seed, same scenes and noise: both engines see the same first loss.
    let (a, b) = (
        e[0]["first_loss"].as_f64().unwrap(),
        e[1]["first_loss"].as_f64().unwrap(),
    );
    assert!(a.is_finite() && a > 0.0);
    assert!((a - b).abs() < 1e-4 * a, "{a} vs {b}");
    for r in e {
        assert!(r["seconds_per_step"].as_f64().unwrap() > 0.0);
    }
    fails(&["bench-train", "--steps", "0"], "must be positive");
}
