//! End-to-end tests of the analysis commands on a tiny freshly initialised model: `probe`
//! (names, shapes, summary, memory budget), `mass`, `value-norms`, `pca`, `head-grid`,
//! `token-grid`, `generate --perturb-guidance` and `perturb-sweep`, with their values checked.

use std::path::{Path, PathBuf};

use candle_core::Device;
use ditlens_core::embedded::{EmbeddedConfig, ToyConfig, TrainConfig, Trainer};
use serde_json::Value;

mod support;
use support::*;

fn ok(args: &[&str]) -> (String, String) {
    let o = ditlens(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?}: {err}");
    (String::from_utf8_lossy(&o.stdout).into_owned(), err)
}

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

fn json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn png_size(p: &Path) -> (u32, u32) {
    let i = image::open(p).unwrap();
    (i.width(), i.height())
}

const PROMPT: &str = "a red circle on a striped background";

#[test]
fn probe_and_analyses() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let m = s(&model);
    let t = |n: &str| tmp.path().join(n);
    let cap = t("cap.safetensors");
    let img = t("gen.png");
    let (_, err) = ok(&[
        "probe",
        "--model",
        m,
        "--prompt",
        PROMPT,
        "--steps",
        "4",
        "--steps-to-keep",
        "1,3",
        "--qkv-layers",
        "all",
        "--out",
        s(&cap),
        "--image-out",
        s(&img),
    ]);
    assert!(err.contains("all 2 heads kept"), "{err}");
    let sum = json(&t("cap.json"));
    assert_eq!(sum["layers"], 2);
    assert_eq!(sum["heads"], 2);
    assert_eq!(sum["grid"], serde_json::json!([8, 8]));
    assert_eq!(sum["n_txt"], 20);
    assert_eq!(sum["memory"]["storage"], "per_head");
    let steps: Vec<u64> = sum["kept_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["index"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 3]);
    let toks = sum["tokens"].as_array().unwrap();
    assert_eq!(toks.len(), 20);
    assert_eq!(toks[0]["string"], "<bos>");
    assert_eq!(toks[8]["kind"], "eos");
    assert_eq!(toks[19]["kind"], "padding");
    assert_eq!(sum["words"][2]["word"], "circle");
    // The file holds exactly the tensors the summary lists, under the engine's names.
    let tensors = candle_core::safetensors::load(&cap, &Device::Cpu).unwrap();
    let listed = sum["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), listed.len());
    assert_eq!(listed.len(), 2 * 2 * 8, "2 steps × 2 blocks × 8 tensors");
    assert_eq!(tensors["step.3.block.1.attn.i2t"].dims(), [1, 2, 64, 20]);
    assert_eq!(tensors["step.1.block.0.attn.v_img"].dims(), [1, 64, 32]);
    assert_eq!(png_size(&img), (16, 16));

    // A budget between head-mean and per-head size keeps head means and says so.
    let per_head = sum["memory"]["per_head_bytes"].as_u64().unwrap();
    let mean_cap = t("mean.safetensors");
    let (_, err) = ok(&[
        "probe",
        "--model",
        m,
        "--prompt",
        PROMPT,
        "--steps",
        "4",
        "--steps-to-keep",
        "1,3",
        "--qkv-layers",
        "all",
        "--max-memory",
        &(per_head - 1).to_string(),
        "--out",
        s(&mean_cap),
        "--json",
        s(&t("mean_summary.json")),
    ]);
    assert!(err.contains("note: i2t and t2i kept as the mean"), "{err}");
    let ms = json(&t("mean_summary.json"));
    assert_eq!(ms["memory"]["storage"], "head_mean");
    let mt = candle_core::safetensors::load(&mean_cap, &Device::Cpu).unwrap();
    assert_eq!(mt["step.3.block.1.attn.i2t"].dims(), [1, 1, 64, 20]);
    fails(
        &[
            "probe",
            "--model",
            m,
            "--prompt",
            PROMPT,
            "--steps",
            "4",
            "--max-memory",
            "1k",
            "--out",
            s(&t("x.safetensors")),
        ],
        "--max-memory",
    );

    // Attention mass: CSV rows per head and mean, shares summing to one.
    let (table, _) = ok(&[
        "mass",
        "--capture",
        s(&cap),
        "--step",
        "3",
        "--out",
        s(&t("mass.png")),
        "--svg",
        s(&t("mass.svg")),
        "--csv",
        s(&t("mass.csv")),
        "--json",
        s(&t("mass.json")),
    ]);
    assert!(table.contains("I2T"));
    let csv = std::fs::read_to_string(t("mass.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2 * 3, "2 heads + mean, 2 blocks");
    for r in rows {
        let v: Vec<f64> = r.split(',').skip(2).map(|x| x.parse().unwrap()).collect();
        assert!(
            (v[0] + v[1] - 1.0).abs() < 1e-5 && (v[2] + v[3] - 1.0).abs() < 1e-5,
            "{r}"
        );
        assert!((v[4] - 64.0 / 84.0).abs() < 1e-6 && (v[5] - 20.0 / 84.0).abs() < 1e-6);
    }
    let mj = json(&t("mass.json"));
    assert_eq!(mj["step"], 3);
    assert!(std::fs::read_to_string(t("mass.svg"))
        .unwrap()
        .contains("image queries"));
    assert!(png_size(&t("mass.png")).0 >= 760);

    // Value norms: prompt mean over the 7 word tokens only.
    ok(&[
        "value-norms",
        "--capture",
        s(&cap),
        "--out",
        s(&t("vn.png")),
        "--csv",
        s(&t("vn.csv")),
        "--json",
        s(&t("vn.json")),
    ]);
    let vj = json(&t("vn.json"));
    // Default step: 20/28 of 4 steps = 2, equally near the kept 1 and 3; the first wins.
    assert_eq!(vj["step"], 1);
    assert_eq!(
        vj["prompt_tokens"],
        serde_json::json!([1, 2, 3, 4, 5, 6, 7])
    );
    let vnt = &tensors["step.1.block.0.attn.vnorm_txt"];
    let v: Vec<f32> = vnt.flatten_all().unwrap().to_vec1().unwrap();
    let v = &v;
    let want: f32 = (0..2)
        .flat_map(|h| (1..8).map(move |k| v[h * 20 + k]))
        .sum::<f32>()
        / 14.0;
    let got = vj["layers"][0]["prompt"].as_f64().unwrap() as f32;
    assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    assert_eq!(
        std::fs::read_to_string(t("vn.csv"))
            .unwrap()
            .lines()
            .count(),
        3
    );

    // PCA of Q, K, V at both blocks: explained variance ratios in 0..=1, decreasing.
    ok(&[
        "pca",
        "--capture",
        s(&cap),
        "--layers",
        "all",
        "--out",
        s(&t("pca.png")),
        "--json",
        s(&t("pca.json")),
    ]);
    let pj = json(&t("pca.json"));
    assert_eq!(pj["pca"].as_array().unwrap().len(), 6);
    for p in pj["pca"].as_array().unwrap() {
        let r: Vec<f64> = p["explained_variance_ratio"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert!(r[0] >= r[1] && r[1] >= r[2] && r.iter().sum::<f64>() <= 1.0 + 1e-5);
    }

    // Small multiples need per-head maps; the head-mean capture says why it cannot.
    ok(&[
        "head-grid",
        "--capture",
        s(&cap),
        "--token",
        "circle",
        "--out",
        s(&t("heads.png")),
        "--svg",
        s(&t("heads.svg")),
    ]);
    let svg = std::fs::read_to_string(t("heads.svg")).unwrap();
    for label in ["block 1", "head 1", "mean", "3: circle"] {
        assert!(svg.contains(label), "{label}");
    }
    fails(
        &[
            "head-grid",
            "--capture",
            s(&mean_cap),
            "--token",
            "3",
            "--out",
            s(&t("h2.png")),
        ],
        "head means only",
    );
    fails(
        &[
            "head-grid",
            "--capture",
            s(&cap),
            "--token",
            "dog",
            "--out",
            s(&t("h3.png")),
        ],
        "not in the prompt",
    );
    ok(&[
        "token-grid",
        "--capture",
        s(&mean_cap),
        "--layer",
        "1",
        "--tokens",
        "prompt",
        "--map",
        "t2i",
        "--out",
        s(&t("tokens.png")),
        "--svg",
        s(&t("tokens.svg")),
    ]);
    let svg = std::fs::read_to_string(t("tokens.svg")).unwrap();
    assert!(svg.contains("7: background") && !svg.contains("0: &lt;bos&gt;"));

    // The analyses also run the model directly, on a prompt or on an image.
    ok(&[
        "mass",
        "--model",
        m,
        "--prompt",
        PROMPT,
        "--steps",
        "3",
        "--out",
        s(&t("m2.png")),
        "--csv",
        s(&t("m2.csv")),
    ]);
    ok(&[
        "pca",
        "--model",
        m,
        "--prompt",
        "circle",
        "--image",
        s(&img),
        "--steps",
        "3",
        "--features",
        "k",
        "--out",
        s(&t("p2.png")),
    ]);
    fails(
        &["mass", "--model", m, "--out", s(&t("m3.png"))],
        "--prompt",
    );
    fails(
        &[
            "pca",
            "--capture",
            s(&cap),
            "--features",
            "x",
            "--out",
            s(&t("p3.png")),
        ],
        "not one of q, k, v",
    );
}

#[test]
fn perturbed_guidance_and_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let m = s(&model);
    let t = |n: &str| tmp.path().join(n);
    let base = [
        "generate", "--model", m, "--prompt", PROMPT, "--steps", "3", "--seed", "2",
    ];
    let plain = t("plain.png");
    let mut a: Vec<&str> = base.to_vec();
    a.extend(["--out", s(&plain)]);
    ok(&a);
    let zero = t("zero.png");
    let mut a: Vec<&str> = base.to_vec();
    a.extend([
        "--perturb-guidance",
        "0",
        "--blur-i2t",
        "1",
        "--out",
        s(&zero),
    ]);
    ok(&a);
    assert_eq!(
        std::fs::read(&plain).unwrap(),
        std::fs::read(&zero).unwrap()
    );
    let x = t("x.png");
    let mut a: Vec<&str> = base.to_vec();
    a.extend(["--perturb-guidance", "1", "--out", s(&x)]);
    fails(&a, "--blur-i2t");

    let (table, _) = ok(&[
        "perturb-sweep",
        "--model",
        m,
        "--prompt",
        "a red circle and a blue square",
        "--steps",
        "2",
        "--seg-layer",
        "1",
        "--out",
        s(&t("sweep.png")),
        "--svg",
        s(&t("sweep.svg")),
        "--json",
        s(&t("sweep.json")),
    ]);
    assert!(table.contains("← strongest effect"), "{table}");
    let j = json(&t("sweep.json"));
    assert_eq!(
        j["classes"],
        serde_json::json!(["circle", "square", "background"])
    );
    assert_eq!(j["mode"], "regenerate");
    let per = j["perturbed"].as_array().unwrap();
    assert_eq!(per.len(), 2);
    let min = per
        .iter()
        .map(|e| e["alignment"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    let strongest = j["strongest_layer"].as_u64().unwrap() as usize;
    assert_eq!(per[strongest]["alignment"].as_f64().unwrap(), min);
    assert_eq!(j["unperturbed"]["alignment"], 1.0);
    assert!(std::fs::read_to_string(t("sweep.svg"))
        .unwrap()
        .contains("unperturbed"));
    fails(
        &[
            "perturb-sweep",
            "--model",
            m,
            "--prompt",
            "a striped background",
            "--steps",
            "2",
            "--out",
            s(&t("s2.png")),
        ],
        "names no shape",
    );
}
