//! The image feed-forward's optional depthwise 3×3 grid convolution (`ff.conv`, `ff_conv` in
//! the config): `v = u + conv(u) + b` over token-major `[N, C]` rows of a square token grid,
//! forward and backward.

use super::params::{Params, Slot};
use super::stem::for_each_tap;
use crate::error::Result;

/// Where the convolution's weight `[C, 1, 3, 3]` and bias `[C]` sit.
#[derive(Debug, Clone, Copy)]
pub struct GridConv {
    w: Slot,
    b: Slot,
    channels: usize,
    side: usize,
}

impl GridConv {
    /// `NAME.weight [channels, 1, 3, 3]`, `NAME.bias [channels]` over a `side × side` grid.
    pub fn new(p: &Params, name: &str, channels: usize, side: usize) -> Result<Self> {
        Ok(Self {
            w: p.slot(&format!("{name}.weight"), &[channels, 1, 3, 3])?,
            b: p.slot(&format!("{name}.bias"), &[channels])?,
            channels,
            side,
        })
    }

    /// The weight tap-major, `[9, C]`, so that the channel loops run over contiguous memory.
    fn taps(&self, p: &[f32]) -> Vec<f32> {
        let c = self.channels;
        let w = &p[self.w.offset..self.w.offset + 9 * c];
        let mut t = vec![0f32; 9 * c];
        for ch in 0..c {
            for tap in 0..9 {
                t[tap * c + ch] = w[ch * 9 + tap];
            }
        }
        t
    }

    /// # Shapes
    /// `u: [N, C]` → `v = u + conv(u): [N, C]`
    pub fn forward(&self, p: &[f32], u: &[f32]) -> Vec<f32> {
        let c = self.channels;
        let w = self.taps(p);
        let bias = &p[self.b.offset..self.b.offset + c];
        let mut v = u.to_vec();
        for row in v.chunks_mut(c) {
            row.iter_mut().zip(bias).for_each(|(a, b)| *a += b);
        }
        for_each_tap(self.side, |pixel, tap, src| {
            let (out, inp, wt) = (
                &mut v[pixel * c..][..c],
                &u[src * c..][..c],
                &w[tap * c..][..c],
            );
            for ch in 0..c {
                out[ch] += wt[ch] * inp[ch];
            }
        });
        v
    }

    /// Accumulates the weight and bias gradients and returns `du` from `dv`.
    ///
    /// # Shapes
    /// `u, dv: [N, C]` → `du: [N, C]`
    pub fn backward(&self, p: &[f32], g: &mut [f32], u: &[f32], dv: &[f32]) -> Vec<f32> {
        let c = self.channels;
        let w = self.taps(p);
        let mut gw = vec![0f32; 9 * c];
        let gb = &mut g[self.b.offset..self.b.offset + c];
        for row in dv.chunks(c) {
            gb.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
        let mut du = dv.to_vec();
        for_each_tap(self.side, |pixel, tap, src| {
            let (dvr, ur) = (&dv[pixel * c..][..c], &u[src * c..][..c]);
            let (gwt, wt) = (&mut gw[tap * c..][..c], &w[tap * c..][..c]);
            for ch in 0..c {
                gwt[ch] += dvr[ch] * ur[ch];
            }
            let dur = &mut du[src * c..][..c];
            for ch in 0..c {
                dur[ch] += dvr[ch] * wt[ch];
            }
        });
        let gw_out = &mut g[self.w.offset..self.w.offset + 9 * c];
        for ch in 0..c {
            for tap in 0..9 {
                gw_out[ch * 9 + tap] += gw[tap * c + ch];
            }
        }
        du
    }
}
