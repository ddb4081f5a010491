//! Multi-head softmax attention of the training engine, forward and backward, over row-strided
//! query, key and value matrices (heads side by side in the columns). Probabilities are kept
//! for the backward pass and for the I2T maps the alignment loss reads.

use super::linalg::{gemm_strided, softmax_rows, softmax_rows_backward, Op};

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnDims {
    /// Query rows.
    pub rq: usize,
    /// Key / value rows.
    pub s: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Row strides of q, k, v (the stored row length).
    pub ldq: usize,
    pub ldk: usize,
    pub ldv: usize,
}

impl AttnDims {
    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// `p[h] = softmax(q_h k_hᵀ / √d)` (`[heads, rq, s]`) and `o[:, h] = p[h] v_h` (`o: [rq, heads·d]`).
pub fn forward(q: &[f32], k: &[f32], v: &[f32], dm: AttnDims, p: &mut [f32], o: &mut [f32]) {
    let (rq, s, hd) = (dm.rq, dm.s, dm.head_dim);
    let width = dm.heads * hd;
    for h in 0..dm.heads {
        let ph = &mut p[h * rq * s..(h + 1) * rq * s];
        gemm_strided(
            rq,
            s,
            hd,
            ph,
            s,
            false,
            &q[h * hd..],
            dm.ldq,
            Op::N,
            &k[h * hd..],
            dm.ldk,
            Op::T,
            dm.scale(),
        );
        softmax_rows(ph, s);
        gemm_strided(
            rq,
            hd,
            s,
            &mut o[h * hd..],
            width,
            false,
            ph,
            s,
            Op::N,
            &v[h * hd..],
            dm.ldv,
            Op::N,
            1.0,
        );
    }
}

/// Backward: from `dout [rq, heads·d]` writes `dq [rq, heads·d]`, `dk`, `dv [s, heads·d]`.
/// `extra_dp(h, dp_h)` may add a gradient on head `h`'s probabilities (`[rq, s]`) before the
/// softmax backward (the alignment loss's gradient on I2T).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: &[f32],
    dout: &[f32],
    dm: AttnDims,
    extra_dp: &dyn Fn(usize, &mut [f32]),
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let (rq, s, hd) = (dm.rq, dm.s, dm.head_dim);
    let width = dm.heads * hd;
    scratch.resize(rq * s, 0.0);
    for h in 0..dm.heads {
        let ph = &p[h * rq * s..(h + 1) * rq * s];
        let dp = &mut scratch[..rq * s];
        // dP = dO · Vᵀ
        gemm_strided(
            rq,
            s,
            hd,
            dp,
            s,
            false,
            &dout[h * hd..],
            width,
            Op::N,
            &v[h * hd..],
            dm.ldv,
            Op::T,
            1.0,
        );
        // dV = Pᵀ · dO
        gemm_strided(
            s,
            hd,
            rq,
            &mut dv[h * hd..],
            width,
            false,
            ph,
            s,
            Op::T,
            &dout[h * hd..],
            width,
            Op::N,
            1.0,
        );
        extra_dp(h, dp);
        softmax_rows_backward(ph, dp, s);
        // dQ = dS · K / √d, dK = dSᵀ · Q / √d
        gemm_strided(
            rq,
            hd,
            s,
            &mut dq[h * hd..],
            width,
            false,
            dp,
            s,
            Op::N,
            &k[h * hd..],
            dm.ldk,
            Op::N,
            dm.scale(),
        );
        gemm_strided(
            s,
            hd,
            rq,
            &mut dk[h * hd..],
            width,
            false,
            dp,
            s,
            Op::T,
            &q[h * hd..],
            dm.ldq,
            Op::N,
            dm.scale(),
        );
    }
}
