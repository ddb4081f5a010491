//! Linear layers and adaLN modulation of the training engine over the flat parameter buffer:
//! forward and backward for one sample's rows.

use super::linalg::{add_col_dots, add_col_sums, gemm, Op};
use super::params::{Params, Slot};
use crate::error::Result;

/// `y = x·Wᵀ + b` with `W [dout, din]` (candle / PyTorch layout).
#[derive(Debug, Clone, Copy)]
pub struct Lin {
    pub w: Slot,
    pub b: Slot,
    pub din: usize,
    pub dout: usize,
}

impl Lin {
    /// `NAME.weight [dout, din]` and `NAME.bias [dout]`.
    pub fn new(p: &Params, name: &str, din: usize, dout: usize) -> Result<Self> {
        Ok(Self {
            w: p.slot(&format!("{name}.weight"), &[dout, din])?,
            b: p.slot(&format!("{name}.bias"), &[dout])?,
            din,
            dout,
        })
    }

    /// A stride-`p` patch convolution `NAME.weight [dout, c, p, p]` as a linear over patch
    /// vectors ordered `(c, ky, kx)`.
    pub fn conv_patch(p: &Params, name: &str, c: usize, patch: usize, dout: usize) -> Result<Self> {
        Ok(Self {
            w: p.slot(&format!("{name}.weight"), &[dout, c, patch, patch])?,
            b: p.slot(&format!("{name}.bias"), &[dout])?,
            din: c * patch * patch,
            dout,
        })
    }

    fn weight<'a>(&self, p: &'a [f32]) -> &'a [f32] {
        &p[self.w.offset..self.w.offset + self.w.len]
    }

    /// # Shapes
    /// `x: [t, din]` → `y: [t, dout]`
    pub fn forward(&self, p: &[f32], x: &[f32], t: usize, y: &mut [f32]) {
        let bias = &p[self.b.offset..self.b.offset + self.dout];
        for row in y[..t * self.dout].chunks_mut(self.dout) {
            row.copy_from_slice(bias);
        }
        gemm(
            t,
            self.dout,
            self.din,
            y,
            true,
            x,
            Op::N,
            self.weight(p),
            Op::T,
        );
    }

    /// Accumulates `dW`, `db` into `g` and writes (or, with `acc`, adds) `dx = dy·W`.
    ///
    /// # Shapes
    /// `x: [t, din]`, `dy: [t, dout]` → `dx: [t, din]`
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        p: &[f32],
        g: &mut [f32],
        x: &[f32],
        dy: &[f32],
        t: usize,
        dx: Option<&mut [f32]>,
        acc: bool,
    ) {
        let gw = &mut g[self.w.offset..self.w.offset + self.w.len];
        gemm(self.dout, self.din, t, gw, true, dy, Op::T, x, Op::N);
        add_col_sums(
            &dy[..t * self.dout],
            self.dout,
            &mut g[self.b.offset..self.b.offset + self.dout],
        );
        if let Some(dx) = dx {
            gemm(
                t,
                self.din,
                self.dout,
                dx,
                acc,
                dy,
                Op::N,
                self.weight(p),
                Op::N,
            );
        }
    }
}

/// `y = xhat ⊙ (1 + scale) + shift` row-wise.
pub fn modulate(xhat: &[f32], shift: &[f32], scale: &[f32], y: &mut [f32]) {
    let d = shift.len();
    for (yr, xr) in y.chunks_mut(d).zip(xhat.chunks(d)) {
        for j in 0..d {
            yr[j] = xr[j] * (1.0 + scale[j]) + shift[j];
        }
    }
}

/// Backward of [`modulate`]: adds into `dshift`, `dscale`; writes `dxhat`.
pub fn modulate_backward(
    xhat: &[f32],
    scale: &[f32],
    dy: &[f32],
    dshift: &mut [f32],
    dscale: &mut [f32],
    dxhat: &mut [f32],
) {
    let d = scale.len();
    add_col_sums(dy, d, dshift);
    add_col_dots(dy, xhat, d, dscale);
    for (o, r) in dxhat.chunks_mut(d).zip(dy.chunks(d)) {
        for j in 0..d {
            o[j] = r[j] * (1.0 + scale[j]);
        }
    }
}

/// `x += gate ⊙ a` row-wise.
pub fn gated_add(x: &mut [f32], gate: &[f32], a: &[f32]) {
    let d = gate.len();
    for (xr, ar) in x.chunks_mut(d).zip(a.chunks(d)) {
        for j in 0..d {
            xr[j] += gate[j] * ar[j];
        }
    }
}

/// Backward of `y = x + gate ⊙ a` for the `a` branch: `da = dy ⊙ gate`, `dgate += Σ dy ⊙ a`.
pub fn gated_backward(dy: &[f32], gate: &[f32], a: &[f32], da: &mut [f32], dgate: &mut [f32]) {
    let d = gate.len();
    add_col_dots(dy, a, d, dgate);
    for (o, r) in da.chunks_mut(d).zip(dy.chunks(d)) {
        for j in 0..d {
            o[j] = r[j] * gate[j];
        }
    }
}
