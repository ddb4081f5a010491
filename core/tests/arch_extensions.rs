//! The transformer's extensions beyond SD3, a convolutional stem (`pos_embed.stem.{i}`) and
//! the image feed-forwards' grid convolution (`ff.conv`): saved as safetensors and reopened from
//! its weights alone, each is read from the tensors and the output is the same; inconsistent
//! weights are named.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ditlens_core::mmdit::{load_mmdit, ForwardOptions, Mmdit, MmditConfig};

fn cfg(conv_stem: Vec<usize>) -> MmditConfig {
    cfg_with(conv_stem, false)
}

fn cfg_with(conv_stem: Vec<usize>, ff_conv: bool) -> MmditConfig {
    MmditConfig {
        sample_size: 8,
        patch_size: 2,
        in_channels: 3,
        num_layers: 2,
        // 64, the head size a bare checkpoint is read with.
        attention_head_dim: 64,
        num_attention_heads: 1,
        joint_attention_dim: 16,
        caption_projection_dim: 64,
        pooled_projection_dim: 4,
        out_channels: Some(3),
        pos_embed_max_size: 4,
        dual_attention_layers: vec![],
        qk_norm: None,
        conv_stem,
        ff_conv,
    }
}

fn saved(cfg: &MmditConfig, dir: &std::path::Path) -> (Mmdit, std::path::PathBuf) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let model = Mmdit::new(vb, cfg).unwrap();
    let path = dir.join("transformer.safetensors");
    vm.save(&path).unwrap();
    (model, path)
}

fn run(m: &Mmdit, x: &Tensor, ctx: &Tensor) -> Vec<f32> {
    let dev = Device::Cpu;
    let t = Tensor::new(&[500f32], &dev).unwrap();
    let pooled = Tensor::zeros((1, 4), DType::F32, &dev).unwrap();
    let out = m
        .forward(x, &t, ctx, &pooled, &ForwardOptions::default())
        .unwrap();
    out.sample.flatten_all().unwrap().to_vec1().unwrap()
}

/// The error of loading the checkpoint at `path` with the tensors `drop` removed.
fn load_error_without(path: &std::path::Path, drop: &[&str]) -> String {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    for name in drop {
        tensors.remove(*name);
    }
    let broken = path.with_file_name("broken.safetensors");
    candle_core::safetensors::save(&tensors, &broken).unwrap();
    load_mmdit(&broken, None, DType::F32, &Device::Cpu)
        .err()
        .expect("inconsistent weights are refused")
        .to_string()
}

/// Largest difference between the two models' outputs on one random input.
fn max_output_diff(a: &Mmdit, b: &Mmdit) -> f32 {
    let x = Tensor::randn(0f32, 1.0, (1, 3, 8, 8), &Device::Cpu).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (1, 5, 16), &Device::Cpu).unwrap();
    let (a, b) = (run(a, &x, &ctx), run(b, &x, &ctx));
    assert_eq!(a.len(), 3 * 8 * 8);
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn stem_is_read_from_shapes_and_computes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(vec![5, 7]);
    let (model, path) = saved(&c, dir.path());
    let loaded = load_mmdit(&path, None, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(loaded.model.config().conv_stem, vec![5, 7]);
    assert_eq!(loaded.model.config().in_channels, 3);
    assert_eq!(loaded.model.config().patch_in_channels(), 7);
    // Same weights, same input → same output.
    let diff = max_output_diff(&model, &loaded.model);
    assert!(diff < 1e-6, "reloaded output differs by {diff}");
    // Without its stem the same weights are another model.
    let plain = cfg(vec![]);
    assert_ne!(loaded.model.config(), &plain);
}

#[test]
fn grid_conv_is_read_from_weights_and_computes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (model, path) = saved(&cfg_with(vec![], true), dir.path());
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert_eq!(
        tensors["transformer_blocks.1.ff.conv.weight"].dims(),
        &[256, 1, 3, 3],
        "a depthwise 3×3 kernel per feed-forward channel"
    );
    let loaded = load_mmdit(&path, None, DType::F32, &Device::Cpu).unwrap();
    assert!(loaded.model.config().ff_conv);
    let diff = max_output_diff(&model, &loaded.model);
    assert!(diff < 1e-6, "reloaded output differs by {diff}");
    // A config that leaves it out does not describe these weights.
    let plain = dir.path().join("config.json");
    std::fs::write(&plain, serde_json::to_string(&cfg(vec![])).unwrap()).unwrap();
    let err = load_mmdit(&path, Some(&plain), DType::F32, &Device::Cpu)
        .err()
        .expect("the config disagrees with the weights")
        .to_string();
    assert!(err.contains("ff_conv"), "{err}");
}

#[test]
fn a_block_without_its_grid_conv_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = saved(&cfg_with(vec![], true), dir.path());
    let err = load_error_without(&path, &["transformer_blocks.1.ff.conv.weight"]);
    assert!(err.contains("transformer_blocks.1.ff.conv.weight"), "{err}");
}

#[test]
fn a_stem_that_does_not_feed_the_patch_embedding_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = saved(&cfg(vec![5, 7]), dir.path());
    // Drop the last stem layer: the patch embedding now reads 7 channels from a 5-channel stem.
    let err = load_error_without(&path, &["pos_embed.stem.1.weight", "pos_embed.stem.1.bias"]);
    assert!(err.contains("pos_embed.proj.weight"), "{err}");
}
