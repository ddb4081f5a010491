//! The transformer's optional convolutional front end (`pos_embed.stem.{i}`): 3×3 convolutions
//! with padding 1 and SiLU after each, forward and backward over pixel-major `[H·W, C]` maps, as
//! im2col rows ordered `(c, ky, kx)` times the `[C_out, C_in, 3, 3]` weight.

use super::layers::Lin;
use super::linalg::{silu, silu_grad};
use super::params::Params;
use crate::error::Result;

/// Calls `f(pixel, tap, source)` for every in-grid tap of every pixel's 3×3 window over a
/// `side × side` row-major grid (`tap = ky·3 + kx`; taps outside the grid are the zero padding
/// and skipped).
pub(super) fn for_each_tap(side: usize, mut f: impl FnMut(usize, usize, usize)) {
    let s = side as isize;
    for y in 0..s {
        for x in 0..s {
            for ky in 0..3isize {
                for kx in 0..3isize {
                    let (sy, sx) = (y + ky - 1, x + kx - 1);
                    if (0..s).contains(&sy) && (0..s).contains(&sx) {
                        f(
                            (y * s + x) as usize,
                            (ky * 3 + kx) as usize,
                            (sy * s + sx) as usize,
                        );
                    }
                }
            }
        }
    }
}

/// The stem's layers over a `side × side` image.
#[derive(Debug, Clone)]
pub struct Stem {
    layers: Vec<Lin>,
    chans: Vec<usize>,
    side: usize,
}

/// What the forward pass keeps: each layer's input map and pre-activation.
#[derive(Debug, Clone, Default)]
pub struct StemCache {
    inputs: Vec<Vec<f32>>,
    pre: Vec<Vec<f32>>,
}

impl Stem {
    /// `name.{i}.weight [widths[i], C_in, 3, 3]`; no layers when `widths` is empty.
    pub fn new(
        p: &Params,
        name: &str,
        in_channels: usize,
        widths: &[usize],
        side: usize,
    ) -> Result<Self> {
        let mut chans = vec![in_channels];
        let mut layers = vec![];
        for (i, &w) in widths.iter().enumerate() {
            layers.push(Lin::conv_patch(p, &format!("{name}.{i}"), chans[i], 3, w)?);
            chans.push(w);
        }
        Ok(Self {
            layers,
            chans,
            side,
        })
    }

    /// Channels of the output map.
    pub fn out_channels(&self) -> usize {
        self.chans[self.chans.len() - 1]
    }

    fn for_each_tap(&self, f: impl FnMut(usize, usize, usize)) {
        for_each_tap(self.side, f);
    }

    /// `[H·W, C]` → im2col rows `[H·W, 9·C]`, zero outside the image.
    fn im2col(&self, x: &[f32], c: usize) -> Vec<f32> {
        let k = 9 * c;
        let mut cols = vec![0f32; self.side * self.side * k];
        self.for_each_tap(|pixel, tap, src| {
            let row = &mut cols[pixel * k..][..k];
            for (ci, v) in x[src * c..][..c].iter().enumerate() {
                row[ci * 9 + tap] = *v;
            }
        });
        cols
    }

    /// Adds the im2col gradient `dcols [H·W, 9·C]` back onto the map gradient `dx [H·W, C]`.
    fn col2im(&self, dcols: &[f32], c: usize, dx: &mut [f32]) {
        let k = 9 * c;
        self.for_each_tap(|pixel, tap, src| {
            let row = &dcols[pixel * k..][..k];
            for (ci, v) in dx[src * c..][..c].iter_mut().enumerate() {
                *v += row[ci * 9 + tap];
            }
        });
    }

    /// # Shapes
    /// `x: [H·W, C_in]` → `[H·W, C_out]` (the input itself when there are no layers)
    pub fn forward(&self, p: &[f32], x: Vec<f32>, cache: &mut StemCache) -> Vec<f32> {
        let hw = self.side * self.side;
        let mut act = x;
        for (i, lin) in self.layers.iter().enumerate() {
            let cols = self.im2col(&act, self.chans[i]);
            let mut pre = vec![0f32; hw * lin.dout];
            lin.forward(p, &cols, hw, &mut pre);
            let next = pre.iter().map(|&v| silu(v)).collect();
            cache.inputs.push(std::mem::replace(&mut act, next));
            cache.pre.push(pre);
        }
        act
    }

    /// Accumulates the stem's weight gradients from `dy`, the gradient of its output.
    ///
    /// # Shapes
    /// `dy: [H·W, C_out]`
    pub fn backward(&self, p: &[f32], g: &mut [f32], cache: &StemCache, dy: Vec<f32>) {
        let hw = self.side * self.side;
        let mut dact = dy;
        for (i, lin) in self.layers.iter().enumerate().rev() {
            let dpre: Vec<f32> = dact
                .iter()
                .zip(&cache.pre[i])
                .map(|(d, &u)| d * silu_grad(u))
                .collect();
            let cols = self.im2col(&cache.inputs[i], self.chans[i]);
            if i == 0 {
                lin.backward(p, g, &cols, &dpre, hw, None, false);
                break;
            }
            let mut dcols = vec![0f32; hw * lin.din];
            lin.backward(p, g, &cols, &dpre, hw, Some(&mut dcols), false);
            dact = vec![0f32; hw * self.chans[i]];
            self.col2im(&dcols, self.chans[i], &mut dact);
        }
    }

    /// Whether there is any layer.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}
