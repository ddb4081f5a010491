//! Training the embedded model: gradients reach every trainable tensor (candle's fused softmax and
//! norms have no backward, so the training path must avoid them), the loss falls on a tiny
//! config, and a checkpoint resumes exactly.

use candle_core::Device;
use ditlens_core::embedded::{
    EmbeddedConfig, EmbeddedModel, EngineKind, ToyConfig, TrainConfig, Trainer,
};

fn tiny(aligned: bool, batch: usize, steps: usize) -> ToyConfig {
    ToyConfig {
        model: EmbeddedConfig::tiny(),
        train: TrainConfig {
            steps,
            batch,
            lr: 3e-3,
            warmup: 5,
            mask_align_layer: aligned.then_some(1),
            mask_align_max_sigma: 1.0,
            mask_align_start: 0,
            init: None,
            ..TrainConfig::default_toy(aligned)
        },
    }
}

#[test]
fn every_trainable_tensor_gets_a_gradient() {
    let mut t = Trainer::new(tiny(true, 4, 100), &Device::Cpu).unwrap();
    // Zero-initialised gates (adaLN-Zero) block gradients at step 0; a few steps open them.
    for _ in 0..3 {
        t.train_step().unwrap();
    }
    let (loss, stats) = t.loss().unwrap();
    assert!(stats.align > 0.0, "mask alignment is active");
    let grads = loss.backward().unwrap();
    let mut dead = vec![];
    for (name, var) in t.trainable().unwrap() {
        let g = grads.get(var.as_tensor());
        let norm = g
            .map(|g| {
                g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .unwrap_or(0.0);
        if norm <= 0.0 {
            dead.push(name);
        }
    }
    assert!(dead.is_empty(), "no gradient reaches: {dead:?}");
}

#[test]
fn loss_falls_and_checkpoint_resumes_exactly() {
    let cfg = tiny(true, 8, 60);
    let mut t = Trainer::new(cfg.clone(), &Device::Cpu).unwrap();
    let mut losses = vec![];
    for _ in 0..40 {
        losses.push(t.train_step().unwrap().mse);
    }
    let first: f64 = losses[..8].iter().sum::<f64>() / 8.0;
    let last: f64 = losses[32..].iter().sum::<f64>() / 8.0;
    assert!(
        last < 0.8 * first,
        "flow-matching loss should fall: {first:.4} → {last:.4}"
    );

    let dir = tempfile::tempdir().unwrap();
    t.save(dir.path()).unwrap();
    let a = t.train_step().unwrap();
    let mut r = Trainer::resume(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(r.step, 40);
    let b = r.train_step().unwrap();
    assert!(
        (a.loss - b.loss).abs() < 1e-6,
        "resumed step differs: {} vs {}",
        a.loss,
        b.loss
    );
    // The saved folder is a loadable model.
    let m = EmbeddedModel::load_dir(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(m.cfg, cfg.model);
}

#[test]
fn same_seed_same_run() {
    let mut a = Trainer::new(tiny(false, 4, 10), &Device::Cpu).unwrap();
    let mut b = Trainer::new(tiny(false, 4, 10), &Device::Cpu).unwrap();
    for _ in 0..3 {
        let (x, y) = (a.train_step().unwrap(), b.train_step().unwrap());
        assert_eq!(x.loss, y.loss);
    }
}

#[test]
fn fine_tuning_starts_from_the_given_model_and_export_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut base = Trainer::new(tiny(false, 2, 10), &Device::Cpu).unwrap();
    for _ in 0..2 {
        base.train_step().unwrap();
    }
    let plain = tmp.path().join("plain");
    base.save(&plain).unwrap();
    let mut cfg = tiny(true, 2, 10);
    cfg.train.init = Some(plain.to_str().unwrap().to_string());
    let tuned = Trainer::new(cfg.clone(), &Device::Cpu).unwrap();
    let names: Vec<_> = base.trainable().unwrap();
    for ((na, a), (nb, b)) in names.iter().zip(tuned.trainable().unwrap()) {
        assert_eq!(na, &nb);
        let d = (a.as_tensor() - b.as_tensor()).unwrap().abs().unwrap();
        let d = d
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{na} not copied");
    }
    // A missing folder is a clear error; an embedded name is left to the application.
    cfg.train.init = Some(tmp.path().join("nope").to_str().unwrap().to_string());
    let e = Trainer::new(cfg.clone(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    cfg.train.init = Some("embedded:plain".into());
    assert!(Trainer::new(cfg, &Device::Cpu).is_err());

    // Export: f16 weights, expert layer recorded, loads and matches to f16 precision.
    let shipped = tmp.path().join("shipped");
    let out =
        ditlens_core::embedded::export_model(&plain, &shipped, candle_core::DType::F16, Some(0))
            .unwrap();
    assert_eq!(out.expert_layer, 0);
    let m = EmbeddedModel::load_dir(&shipped, &Device::Cpu).unwrap();
    assert_eq!(m.cfg.expert_layer, 0);
    let f = std::fs::metadata(shipped.join("transformer/diffusion_pytorch_model.safetensors"))
        .unwrap()
        .len();
    let g = std::fs::metadata(plain.join("transformer/diffusion_pytorch_model.safetensors"))
        .unwrap()
        .len();
    assert!(f * 10 < g * 6, "f16 file {f} vs f32 {g}");
    assert!(ditlens_core::embedded::export_model(
        &plain,
        &shipped,
        candle_core::DType::F16,
        Some(7)
    )
    .is_err());
}

#[test]
fn mask_alignment_starts_at_its_step() {
    let mut cfg = tiny(true, 4, 20);
    cfg.train.mask_align_start = 2;
    let mut t = Trainer::new(cfg, &Device::Cpu).unwrap();
    let first = t.train_step().unwrap();
    let second = t.train_step().unwrap();
    let third = t.train_step().unwrap();
    assert_eq!(first.align, 0.0, "no alignment before its start step");
    assert_eq!(second.align, 0.0);
    assert!(third.align > 0.0, "alignment from step 2 on");
    assert!(
        third.loss > third.mse,
        "the alignment term adds to the loss"
    );
}

#[test]
fn mse_weight_zero_leaves_alignment_alone_under_both_engines() {
    for engine in [EngineKind::Cpu, EngineKind::Candle] {
        let mut cfg = tiny(true, 4, 20);
        cfg.train.mse_weight = 0.0;
        let mut t = Trainer::new(cfg, &Device::Cpu).unwrap();
        t.set_engine(engine).unwrap();
        let s = t.train_step().unwrap();
        assert!(
            s.mse > 0.0 && s.align > 0.0,
            "{engine:?}: both parts measured"
        );
        assert!(
            (s.loss - s.align * t.config.train.mask_align_weight).abs() < 1e-5,
            "{engine:?}: loss {} is the alignment term {} alone",
            s.loss,
            s.align
        );
    }
}

/// A run of the tiny aligned config after a few candle steps (gates open, weights moved), saved
/// and resumed under both engines.
/// `conv_stem` sets the transformer's convolutional front end (empty: SD3's plain patchify),
/// `ff_conv` the image feed-forwards' grid convolution.
fn resumed_pair(conv_stem: &[usize], ff_conv: bool) -> (Trainer, Trainer, tempfile::TempDir) {
    let mut cfg = tiny(true, 4, 100);
    cfg.model.transformer.conv_stem = conv_stem.to_vec();
    cfg.model.transformer.ff_conv = ff_conv;
    let mut t = Trainer::new(cfg, &Device::Cpu).unwrap();
    t.set_engine(EngineKind::Candle).unwrap();
    for _ in 0..4 {
        t.train_step().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    t.save(dir.path()).unwrap();
    let cpu = Trainer::resume(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(
        cpu.engine_kind(),
        EngineKind::Cpu,
        "the CPU engine is the default"
    );
    let mut cand = Trainer::resume(dir.path(), &Device::Cpu).unwrap();
    cand.set_engine(EngineKind::Candle).unwrap();
    (cpu, cand, dir)
}

#[test]
fn cpu_engine_gradients_equal_candle_autograd() {
    for (stem, ff_conv) in [(&[][..], false), (&[4, 6][..], false), (&[][..], true)] {
        gradients_agree(stem, ff_conv);
    }
}

fn gradients_agree(conv_stem: &[usize], ff_conv: bool) {
    let (cpu, cand, _dir) = resumed_pair(conv_stem, ff_conv);
    let (sa, ga) = cpu.gradients().unwrap();
    let (sb, gb) = cand.gradients().unwrap();
    assert!(sb.align > 0.0, "alignment is part of the checked loss");
    assert!(
        (sa.mse - sb.mse).abs() < 1e-5 * sb.mse.max(1.0),
        "mse {} vs {}",
        sa.mse,
        sb.mse
    );
    assert!(
        (sa.align - sb.align).abs() < 1e-4,
        "align {} vs {}",
        sa.align,
        sb.align
    );
    let ga: std::collections::HashMap<_, _> = ga.into_iter().collect();
    let mut worst = (0f32, String::new());
    for (name, b) in &gb {
        let a = ga
            .get(name)
            .unwrap_or_else(|| panic!("cpu engine lacks {name}"));
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let err = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale;
        assert!(
            b.iter().any(|v| *v != 0.0),
            "{name}: zero gradient under candle"
        );
        if err > worst.0 {
            worst = (err, name.clone());
        }
    }
    if !conv_stem.is_empty() {
        assert!(
            gb.iter().any(|(n, _)| n.contains("pos_embed.stem.1")),
            "the stem's layers are trained"
        );
    }
    let conv_tensors = gb.iter().filter(|(n, _)| n.contains(".ff.conv.")).count();
    assert_eq!(
        conv_tensors,
        if ff_conv { 2 * cfg_layers(&gb) } else { 0 },
        "every block's grid convolution (weight and bias) is trained"
    );
    eprintln!(
        "stem {conv_stem:?}, ff_conv {ff_conv}: largest relative gradient difference {} at {}",
        worst.0, worst.1
    );
    // Relative to each tensor's largest gradient: f32 sums taken in another order.
    assert!(
        worst.0 < 1e-3,
        "largest relative gradient difference {} at {}",
        worst.0,
        worst.1
    );
}

/// Blocks of the transformer whose gradients `grads` holds.
fn cfg_layers(grads: &[(String, candle_core::Tensor)]) -> usize {
    grads
        .iter()
        .filter(|(n, _)| n.ends_with(".ff.net.2.weight") && n.contains("transformer_blocks."))
        .count()
}

#[test]
fn cpu_engine_steps_like_candle() {
    let (mut cpu, mut cand, _dir) = resumed_pair(&[4], true);
    for _ in 0..3 {
        let (a, b) = (cpu.train_step().unwrap(), cand.train_step().unwrap());
        assert!(
            (a.loss - b.loss).abs() < 1e-3 * b.loss,
            "{} vs {}",
            a.loss,
            b.loss
        );
    }
    // The CPU engine's checkpoint resumes under candle and the other way round.
    let d2 = tempfile::tempdir().unwrap();
    cpu.save(d2.path()).unwrap();
    let mut r = Trainer::resume(d2.path(), &Device::Cpu).unwrap();
    let a = cpu.train_step().unwrap();
    let b = r.train_step().unwrap();
    assert!(
        (a.loss - b.loss).abs() < 1e-6,
        "resumed cpu step {} vs {}",
        a.loss,
        b.loss
    );
}
