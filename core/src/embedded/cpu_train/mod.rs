//! The CPU training engine of the embedded model: the transformer and text encoder of
//! [`crate::embedded::EmbeddedModel`], forward and backward written out over one flat f32
//! parameter buffer, samples spread over the rayon threads, single-threaded `gemm` for every
//! product, AdamW on the flat buffer. It computes exactly what candle's autograd computes
//! through the model's own code (checked in `core/tests/embedded_train.rs`), at several times
//! the speed: candle's CPU backward spends most of its time allocating, broadcasting and
//! copying rather than multiplying.

mod attention;
mod grid_conv;
mod layers;
pub mod linalg;
mod mmdit;
mod params;
mod stem;
mod text;

use rayon::prelude::*;

pub use params::Params;

use crate::embedded::config::EmbeddedConfig;
use crate::error::Result;

/// One sample's input to a training step.
pub struct SampleIn<'a> {
    /// Noised image `[C, H, W]`.
    pub x_t: &'a [f32],
    /// Model timestep (σ·1000).
    pub t: f32,
    pub ids: &'a [u32],
}

/// What the forward pass of a batch gives the losses.
pub struct Forward {
    /// Per sample: predicted velocity `[C, H, W]`.
    pub samples: Vec<Vec<f32>>,
    /// Per sample: head-mean I2T maps `[L, N]` of the requested block (empty when none).
    pub i2t: Vec<Vec<f32>>,
    caches: Vec<(text::TextCache, mmdit::SampleCache)>,
}

/// The engine: parameter layout and flat parameters.
pub struct CpuEngine {
    pub params: Params,
    mm: mmdit::MmditW,
    tw: text::TextW,
}

impl CpuEngine {
    pub fn new(params: Params, cfg: &EmbeddedConfig) -> Result<Self> {
        let mm = mmdit::MmditW::new(&params, &cfg.transformer, cfg.image_size)?;
        let tw = text::TextW::new(&params, &cfg.text)?;
        Ok(Self { params, mm, tw })
    }

    /// Forward of every sample (in parallel), keeping the I2T maps of `i2t_layer`.
    pub fn forward(&self, batch: &[SampleIn], i2t_layer: Option<usize>) -> Forward {
        let p = &self.params.data;
        let caches: Vec<(text::TextCache, mmdit::SampleCache)> = batch
            .par_iter()
            .map(|s| {
                let tc = self.tw.forward(p, s.ids);
                let mc = self.mm.forward(p, s.x_t, s.t, &tc.ctx, i2t_layer);
                (tc, mc)
            })
            .collect();
        Forward {
            samples: caches.iter().map(|c| c.1.sample.clone()).collect(),
            i2t: caches.iter().map(|c| c.1.i2t_mean.clone()).collect(),
            caches,
        }
    }

    /// Gradients of every parameter (flat, as [`Params::data`]) given each sample's gradient on
    /// its prediction and, for block `layer`, on its I2T maps. Samples are split into one
    /// contiguous share per thread, each with its own gradient buffer.
    pub fn backward(
        &self,
        fwd: &Forward,
        dsamples: &[Vec<f32>],
        di2t: Option<(usize, &[Vec<f32>])>,
    ) -> Vec<f32> {
        let p = &self.params.data;
        let n = fwd.caches.len();
        let threads = rayon::current_num_threads().clamp(1, n.max(1));
        let per = n.div_ceil(threads);
        let parts: Vec<Vec<f32>> = (0..threads)
            .into_par_iter()
            .map(|k| {
                let mut g = vec![0f32; p.len()];
                for i in k * per..((k + 1) * per).min(n) {
                    let (tc, mc) = &fwd.caches[i];
                    let maps = di2t.map(|(l, m)| (l, m[i].as_slice()));
                    let dctx = self.mm.backward(p, &mut g, mc, &dsamples[i], maps);
                    self.tw.backward(p, &mut g, tc, &dctx);
                }
                g
            })
            .collect();
        let mut it = parts.into_iter();
        let mut total = it.next().unwrap_or_else(|| vec![0f32; p.len()]);
        for part in it {
            total
                .par_chunks_mut(1 << 16)
                .zip(part.par_chunks(1 << 16))
                .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(x, y)| *x += y));
        }
        total
    }

    /// Width of the context the transformer reads.
    pub fn context_dim(&self) -> usize {
        self.mm.joint_dim()
    }

    /// `C·H·W` of one sample.
    pub fn sample_len(&self) -> usize {
        self.mm.sample_len()
    }
}

/// AdamW with decoupled weight decay over the flat buffer (the same update as
/// [`crate::embedded::optim::AdamW`]); frozen entries are left alone.
pub struct FlatAdamW {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: usize,
    pub weight_decay: f64,
}

impl FlatAdamW {
    pub fn new(len: usize, weight_decay: f64) -> Self {
        Self {
            m: vec![0.0; len],
            v: vec![0.0; len],
            step: 0,
            weight_decay,
        }
    }

    /// One update at learning rate `lr`.
    pub fn update(&mut self, params: &mut Params, grads: &[f32], lr: f64) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f32);
        self.step += 1;
        let bc1 = (1.0 - b1.powi(self.step as i32)) as f32;
        let bc2 = (1.0 - b2.powi(self.step as i32)) as f32;
        let decay = (1.0 - lr * self.weight_decay) as f32;
        let (lr, b1, b2) = (lr as f32, b1 as f32, b2 as f32);
        let ranges: Vec<(usize, usize)> = params
            .entries
            .iter()
            .filter(|e| e.trainable)
            .map(|e| (e.offset, e.len))
            .collect();
        let data = &mut params.data;
        for (o, len) in ranges {
            let r = o..o + len;
            let (th, m, v, g) = (
                &mut data[r.clone()],
                &mut self.m[r.clone()],
                &mut self.v[r.clone()],
                &grads[r],
            );
            for i in 0..len {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let upd = (m[i] / bc1) / ((v[i] / bc2).sqrt() + eps);
                th[i] = th[i] * decay - lr * upd;
            }
        }
    }
}
