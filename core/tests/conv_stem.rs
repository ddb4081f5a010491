//! A transformer with a convolutional stem (`pos_embed.stem.{i}`): saved as safetensors and
//! reopened from its weights alone, the stem is read from the tensor shapes and the output is the
//! same; a stem that does not chain into the patch embedding is named.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use ditlens_core::mmdit::{load_mmdit, ForwardOptions, Mmdit, MmditConfig};

fn cfg(conv_stem: Vec<usize>) -> MmditConfig {
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
    let x = Tensor::randn(0f32, 1.0, (1, 3, 8, 8), &Device::Cpu).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (1, 5, 16), &Device::Cpu).unwrap();
    let a = run(&model, &x, &ctx);
    let b = run(&loaded.model, &x, &ctx);
    assert_eq!(a.len(), 3 * 8 * 8);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff < 1e-6, "reloaded output differs by {diff}");
    // Without its stem the same weights are another model.
    let plain = cfg(vec![]);
    assert_ne!(loaded.model.config(), &plain);
}

#[test]
fn a_stem_that_does_not_feed_the_patch_embedding_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = saved(&cfg(vec![5, 7]), dir.path());
    // Drop the last stem layer: the patch embedding now reads 7 channels from a 5-channel stem.
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.remove("pos_embed.stem.1.weight");
    tensors.remove("pos_embed.stem.1.bias");
    let broken = dir.path().join("broken.safetensors");
    candle_core::safetensors::save(&tensors, &broken).unwrap();
    let err = load_mmdit(&broken, None, DType::F32, &Device::Cpu)
        .err()
        .expect("a broken stem is refused")
        .to_string();
    assert!(err.contains("pos_embed.proj.weight"), "{err}");
}
