//! The generation metric's shape classifier: the silhouette of an image's dominant named colour,
//! cropped to its bounding box, judged by a small CNN trained on single-object scenes of the
//! shapes world (varied shade, size, rotation, stroke and background).

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, Optimizer, VarBuilder, VarMap};
use serde::Serialize;

use super::samples::{dominant_colour, OBJECT_COLOUR_RADIUS};
use crate::error::{Error, Result};
use crate::shapes::{Scene, SceneConfig, Shape};

/// Side of the images the judge reads, in pixels.
pub const JUDGE_SIZE: usize = 32;

/// Side of the silhouette the network sees.
pub const SILHOUETTE: usize = 16;

/// The silhouette of the dominant named colour of a square RGB image (`size²·3` bytes): its
/// pixels' mask, cropped to a square around their bounding box (centred, one pixel of margin)
/// and area-sampled to `SILHOUETTE²` coverage values in [0, 1]. `None` if no pixel is near a
/// named colour.
pub fn silhouette(rgb: &[u8], size: usize) -> Option<Vec<f32>> {
    let colour = dominant_colour(rgb)?;
    let mask: Vec<bool> = rgb
        .chunks_exact(3)
        .map(|p| {
            crate::shapes::colour_distance([p[0], p[1], p[2]], colour.rgb()) <= OBJECT_COLOUR_RADIUS
        })
        .collect();
    let (mut x0, mut y0, mut x1, mut y1) = (size, size, 0, 0);
    for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        let (x, y) = (i % size, i / size);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let side = ((x1 - x0).max(y1 - y0) + 3) as f32;
    let (cx, cy) = ((x0 + x1 + 1) as f32 / 2.0, (y0 + y1 + 1) as f32 / 2.0);
    let sub = 4;
    let mut out = vec![0f32; SILHOUETTE * SILHOUETTE];
    for (k, o) in out.iter_mut().enumerate() {
        let (ox, oy) = (k % SILHOUETTE, k / SILHOUETTE);
        let mut hit = 0;
        for sy in 0..sub {
            for sx in 0..sub {
                let u = (ox as f32 + (sx as f32 + 0.5) / sub as f32) / SILHOUETTE as f32;
                let v = (oy as f32 + (sy as f32 + 0.5) / sub as f32) / SILHOUETTE as f32;
                let x = (cx + (u - 0.5) * side).floor();
                let y = (cy + (v - 0.5) * side).floor();
                if x >= 0.0 && y >= 0.0 && (x as usize) < size && (y as usize) < size {
                    hit += mask[y as usize * size + x as usize] as usize;
                }
            }
        }
        *o = hit as f32 / (sub * sub) as f32;
    }
    Some(out)
}

/// A 3×3 convolution (padding 1) written as nine shifted views and one matmul, so its backward
/// is plain matmuls and slices (fast on CPU, unlike a transposed convolution).
#[derive(Debug, Clone)]
struct Conv3 {
    weight: Tensor,
    bias: Tensor,
}

impl Conv3 {
    fn new(vb: VarBuilder, cin: usize, cout: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get((9 * cin, cout), "weight")?,
            bias: vb.get(cout, "bias")?,
        })
    }

    /// # Shapes
    /// `x: [B, H, W, Cin]` → `[B, H, W, Cout]`
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let p = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
        let mut views = Vec::with_capacity(9);
        for dy in 0..3 {
            for dx in 0..3 {
                views.push(p.narrow(1, dy, h)?.narrow(2, dx, w)?);
            }
        }
        let cols = Tensor::cat(&views, 3)?.reshape((b * h * w, 9 * c))?;
        cols.matmul(&self.weight)?
            .broadcast_add(&self.bias)?
            .reshape((b, h, w, ()))
    }
}

/// 2×2 max pooling of `[B, H, W, C]`.
fn pool2(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    x.reshape((b, h / 2, 2, w / 2, 2, c))?.max(4)?.max(2)
}

/// The classifier.
#[derive(Debug, Clone)]
pub struct ShapeJudge {
    convs: Vec<Conv3>,
    fc: Linear,
}

/// What a training run measured.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeReport {
    pub steps: usize,
    pub batch: usize,
    pub seed: u64,
    /// Accuracy on held-out scenes drawn from seeds never used in training.
    pub heldout_accuracy: f64,
    pub heldout_scenes: usize,
    /// Held-out accuracy per shape, in class order.
    pub per_shape: Vec<(String, f64)>,
}

impl ShapeJudge {
    pub fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        let chans = [1, 16, 32, 64];
        let convs = (0..3)
            .map(|i| Conv3::new(vb.pp(format!("conv{i}")), chans[i], chans[i + 1]))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let fc = candle_nn::linear(64 * 2 * 2, Shape::ALL.len(), vb.pp("fc"))?;
        Ok(Self { convs, fc })
    }

    /// From safetensors bytes.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let vb = VarBuilder::from_buffered_safetensors(bytes.to_vec(), DType::F32, device)?;
        Self::new(vb).map_err(crate::mmdit::checkpoint::loading_error)
    }

    /// # Shapes
    /// `x: [B, 16, 16]` silhouettes in [0, 1] → logits `[B, 8]` (shape class order)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.unsqueeze(3)?;
        for c in &self.convs {
            h = pool2(&c.forward(&h)?.relu()?)?;
        }
        Ok(self.fc.forward(&h.flatten_from(1)?)?)
    }

    /// The most likely shape of each RGB image (`JUDGE_SIZE²·3` bytes each); `None` where
    /// the image shows no named colour.
    pub fn classify(&self, images: &[Vec<u8>], device: &Device) -> Result<Vec<Option<Shape>>> {
        let mut sil = vec![];
        for im in images {
            if im.len() != JUDGE_SIZE * JUDGE_SIZE * 3 {
                return Err(Error::Input(format!(
                    "shape judge wants {JUDGE_SIZE}×{JUDGE_SIZE} RGB images"
                )));
            }
            sil.push(silhouette(im, JUDGE_SIZE));
        }
        let found: Vec<f32> = sil.iter().flatten().flatten().copied().collect();
        if found.is_empty() {
            return Ok(vec![None; images.len()]);
        }
        let n = found.len() / (SILHOUETTE * SILHOUETTE);
        let x = Tensor::from_vec(found, (n, SILHOUETTE, SILHOUETTE), device)?;
        let idx: Vec<u32> = self.forward(&x)?.argmax(D::Minus1)?.to_vec1()?;
        let mut it = idx.into_iter();
        Ok(sil
            .iter()
            .map(|s| {
                s.as_ref()
                    .and_then(|_| it.next())
                    .map(|i| Shape::ALL[i as usize])
            })
            .collect())
    }
}

/// Single-object training / test scenes with the world's full variation.
fn scene_config() -> SceneConfig {
    SceneConfig {
        min_objects: 1,
        max_objects: 1,
        ..SceneConfig::with_size(JUDGE_SIZE)
    }
}

fn batch(seeds: impl Iterator<Item = u64>, device: &Device) -> Result<(Tensor, Tensor)> {
    let cfg = scene_config();
    let (mut xs, mut ys) = (vec![], vec![]);
    for s in seeds {
        let scene = Scene::generate(&cfg, s).map_err(|e| Error::Input(e.to_string()))?;
        let sil = silhouette(&scene.rgb, JUDGE_SIZE)
            .unwrap_or_else(|| vec![0.0; SILHOUETTE * SILHOUETTE]);
        xs.extend(sil);
        ys.push(scene.objects[0].class() as u32 - 1);
    }
    let n = ys.len();
    Ok((
        Tensor::from_vec(xs, (n, SILHOUETTE, SILHOUETTE), device)?,
        Tensor::new(ys, device)?,
    ))
}

/// Seeds of held-out scenes (training uses seeds below 2⁴⁰).
const HELDOUT_BASE: u64 = 1 << 41;

/// Trains the judge from `seed`; `on_step(step, loss)` reports progress. Returns the weights
/// (safetensors bytes) and the held-out report.
pub fn train_judge(
    steps: usize,
    batch_size: usize,
    seed: u64,
    heldout: usize,
    mut on_step: impl FnMut(usize, f32),
) -> Result<(Vec<u8>, JudgeReport)> {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let judge = ShapeJudge::new(vb)?;
    // Seeded initialisation (the VarMap's own init uses the device RNG).
    {
        let data = vm
            .data()
            .lock()
            .map_err(|_| Error::Input("variable store poisoned".into()))?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for (k, name) in names.into_iter().enumerate() {
            let var = &data[name];
            let dims = var.dims().to_vec();
            let t = if name.ends_with("bias") {
                Tensor::zeros(dims.as_slice(), DType::F32, &dev)?
            } else {
                let fan_in = if name.starts_with("conv") {
                    dims[0]
                } else {
                    dims[1]
                };
                let r = super::model::seeded_randn(&dims, seed ^ ((k as u64 + 1) * 7919), &dev)?;
                (r * (2.0 / fan_in as f64).sqrt())?
            };
            var.set(&t)?;
        }
    }
    let mut opt = candle_nn::AdamW::new(
        vm.all_vars(),
        candle_nn::ParamsAdamW {
            lr: 2e-3,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    for step in 0..steps {
        let lr = 2e-3 * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / steps as f64).cos());
        opt.set_learning_rate(lr);
        let base = seed.wrapping_mul(1_000_003) % (1 << 39) + (step * batch_size) as u64;
        let (x, y) = batch(base..base + batch_size as u64, &dev)?;
        let loss = candle_nn::loss::cross_entropy(&judge.forward(&x)?, &y)?;
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        on_step(step + 1, l);
    }
    // Held-out accuracy, per shape.
    let mut right = [0usize; 8];
    let mut total = [0usize; 8];
    for chunk in (0..heldout as u64).collect::<Vec<_>>().chunks(100) {
        let (x, y) = batch(chunk.iter().map(|i| HELDOUT_BASE + i), &dev)?;
        let pred: Vec<u32> = judge.forward(&x)?.argmax(D::Minus1)?.to_vec1()?;
        let y: Vec<u32> = y.to_vec1()?;
        for (p, t) in pred.iter().zip(&y) {
            total[*t as usize] += 1;
            right[*t as usize] += (p == t) as usize;
        }
    }
    let n: usize = total.iter().sum();
    let report = JudgeReport {
        steps,
        batch: batch_size,
        seed,
        heldout_accuracy: right.iter().sum::<usize>() as f64 / n.max(1) as f64,
        heldout_scenes: n,
        per_shape: Shape::ALL
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    s.name().to_string(),
                    right[i] as f64 / total[i].max(1) as f64,
                )
            })
            .collect(),
    };
    let mut tensors: Vec<(String, Tensor)> = vm
        .data()
        .lock()
        .map_err(|_| Error::Input("variable store poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    let bytes = safetensors::serialize(map.iter().map(|(k, v)| (k.as_str(), v)), None)
        .map_err(|e| Error::Input(format!("cannot serialise the judge: {e}")))?;
    Ok((bytes, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_steps_learn_something() {
        // 80 steps of batch 32 must beat chance (12.5%) clearly on held-out scenes.
        let (bytes, report) = train_judge(80, 32, 3, 200, |_, _| {}).unwrap();
        assert!(report.heldout_accuracy > 0.35, "{report:?}");
        let judge = ShapeJudge::from_bytes(&bytes, &Device::Cpu).unwrap();
        let scene = Scene::generate(&scene_config(), HELDOUT_BASE).unwrap();
        let got = judge.classify(&[scene.rgb.clone(), vec![128u8; 32 * 32 * 3]], &Device::Cpu);
        let got = got.unwrap();
        assert!(got[0].is_some() && got[1].is_none(), "{got:?}");
        assert!(judge.classify(&[vec![0u8; 10]], &Device::Cpu).is_err());
    }

    #[test]
    fn silhouette_is_centred_and_scale_free() {
        // A filled 8×8 square anywhere, at either size, gives the same silhouette.
        let draw = |x0: usize, y0: usize, side: usize| {
            let mut im = [100u8, 110, 120].repeat(32 * 32);
            for y in y0..y0 + side {
                for x in x0..x0 + side {
                    im[(y * 32 + x) * 3..(y * 32 + x) * 3 + 3].copy_from_slice(&[215, 35, 35]);
                }
            }
            silhouette(&im, 32).unwrap()
        };
        let a = draw(3, 5, 8);
        assert_eq!(a, draw(20, 17, 8));
        let b = draw(4, 4, 16);
        let diff: f32 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / 256.0;
        assert!(diff < 0.15, "{diff}");
        // Filled centre, empty corner.
        assert_eq!(a[8 * 16 + 8], 1.0);
        assert_eq!(a[0], 0.0);
    }
}
