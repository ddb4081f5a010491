//! Dense f32 kernels of the CPU training engine: single-threaded `gemm` on row-major slices (any
//! operand transposed through strides, no copies), and the row-wise ops with their backward
//! passes (layer norm, softmax, tanh-GELU, SiLU).

/// How a row-major operand is read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    /// As stored: `[rows × cols]`.
    N,
    /// Transposed: stored `[cols × rows]`.
    T,
}

/// `c[m×n] (+)= op(a)[m×k] · op(b)[k×n]`, every matrix row-major with row stride `lda`, `ldb`,
/// `ldc` (the length of a stored row). `acc` adds to `c` instead of overwriting it.
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    ldc: usize,
    acc: bool,
    a: &[f32],
    lda: usize,
    ta: Op,
    b: &[f32],
    ldb: usize,
    tb: Op,
    alpha: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(0.0);
            }
        }
        return;
    }
    // Bounds: the last element each operand is read or written at.
    let last = |rows: usize, cols: usize, ld: usize, op: Op| match op {
        Op::N => (rows - 1) * ld + cols,
        Op::T => (cols - 1) * ld + rows,
    };
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: c too short");
    assert!(a.len() >= last(m, k, lda, ta), "gemm: a too short");
    assert!(b.len() >= last(k, n, ldb, tb), "gemm: b too short");
    let (a_rs, a_cs) = match ta {
        Op::N => (lda as isize, 1),
        Op::T => (1, lda as isize),
    };
    let (b_rs, b_cs) = match tb {
        Op::N => (ldb as isize, 1),
        Op::T => (1, ldb as isize),
    };
    // SAFETY: the asserts above keep every index gemm touches inside the three slices, and `c`
    // is borrowed mutably while `a` and `b` are shared borrows, so they cannot alias.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            acc,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Dense `c[m×n] (+)= op(a) · op(b)` with contiguous operands.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    acc: bool,
    a: &[f32],
    ta: Op,
    b: &[f32],
    tb: Op,
) {
    let lda = if ta == Op::N { k } else { m };
    let ldb = if tb == Op::N { n } else { k };
    gemm_strided(m, n, k, c, n, acc, a, lda, ta, b, ldb, tb, 1.0);
}

/// Affine-free layer norm of each `d`-wide row: writes `xhat` and returns nothing else; `rstd`
/// receives `1/√(var+eps)` per row.
pub fn layer_norm_rows(x: &[f32], d: usize, eps: f32, xhat: &mut [f32], rstd: &mut [f32]) {
    for ((row, out), r) in x.chunks(d).zip(xhat.chunks_mut(d)).zip(rstd.iter_mut()) {
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let s = 1.0 / (var + eps).sqrt();
        *r = s;
        for (o, v) in out.iter_mut().zip(row) {
            *o = (v - mean) * s;
        }
    }
}

/// Backward of [`layer_norm_rows`]: `dx (+)= rstd · (dxhat − mean(dxhat) − xhat·mean(dxhat·xhat))`.
pub fn layer_norm_rows_backward(
    xhat: &[f32],
    rstd: &[f32],
    dxhat: &[f32],
    d: usize,
    dx: &mut [f32],
    acc: bool,
) {
    for (((xh, dy), r), out) in xhat
        .chunks(d)
        .zip(dxhat.chunks(d))
        .zip(rstd)
        .zip(dx.chunks_mut(d))
    {
        let m1 = dy.iter().sum::<f32>() / d as f32;
        let m2 = dy.iter().zip(xh).map(|(a, b)| a * b).sum::<f32>() / d as f32;
        for ((o, g), x) in out.iter_mut().zip(dy).zip(xh) {
            let v = r * (g - m1 - x * m2);
            if acc {
                *o += v;
            } else {
                *o = v;
            }
        }
    }
}

/// In-place softmax of each `n`-wide row.
pub fn softmax_rows(x: &mut [f32], n: usize) {
    for row in x.chunks_mut(n) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Backward of a row softmax, in place: `dp ← p ⊙ (dp − Σ p⊙dp)` per row.
pub fn softmax_rows_backward(p: &[f32], dp: &mut [f32], n: usize) {
    for (pr, dr) in p.chunks(n).zip(dp.chunks_mut(n)) {
        let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
        for (d, p) in dr.iter_mut().zip(pr) {
            *d = p * (*d - dot);
        }
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_K: f32 = 0.044_715;

/// tanh through one `exp`.
#[inline]
fn tanh(z: f32) -> f32 {
    1.0 - 2.0 / ((2.0 * z).exp() + 1.0)
}

/// tanh-approximated GELU, element-wise.
pub fn gelu(u: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(u) {
        let z = SQRT_2_OVER_PI * (x + GELU_K * x * x * x);
        *o = 0.5 * x * (1.0 + tanh(z));
    }
}

/// `du = dg · gelu'(u)`, in place on `dg`.
pub fn gelu_backward(u: &[f32], dg: &mut [f32]) {
    for (d, &x) in dg.iter_mut().zip(u) {
        let z = SQRT_2_OVER_PI * (x + GELU_K * x * x * x);
        let t = tanh(z);
        let dz = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_K * x * x);
        *d *= 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dz;
    }
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// d silu(x) / dx.
#[inline]
pub fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

/// Adds each `d`-wide row of `x` into `acc` (`acc[j] += Σ_rows x[r, j]`).
pub fn add_col_sums(x: &[f32], d: usize, acc: &mut [f32]) {
    for row in x.chunks(d) {
        acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
    }
}

/// `acc[j] += Σ_rows x[r, j] · y[r, j]`.
pub fn add_col_dots(x: &[f32], y: &[f32], d: usize, acc: &mut [f32]) {
    for (rx, ry) in x.chunks(d).zip(y.chunks(d)) {
        for ((a, u), v) in acc.iter_mut().zip(rx).zip(ry) {
            *a += u * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], ta: Op, b: &[f32], tb: Op) -> Vec<f32> {
        let at = |i: usize, p: usize| {
            if ta == Op::N {
                a[i * k + p]
            } else {
                a[p * m + i]
            }
        };
        let bt = |p: usize, j: usize| {
            if tb == Op::N {
                b[p * n + j]
            } else {
                b[j * k + p]
            }
        };
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
            }
        }
        c
    }

    #[test]
    fn gemm_matches_a_naive_product_for_every_transpose() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.21).cos()).collect();
        for ta in [Op::N, Op::T] {
            for tb in [Op::N, Op::T] {
                let want = naive(m, n, k, &a, ta, &b, tb);
                let mut c = vec![1f32; m * n];
                gemm(m, n, k, &mut c, false, &a, ta, &b, tb);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-5, "{ta:?}{tb:?}: {x} vs {y}");
                }
                gemm(m, n, k, &mut c, true, &a, ta, &b, tb);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - 2.0 * y).abs() < 1e-5, "accumulate {ta:?}{tb:?}");
                }
            }
        }
    }

    #[test]
    fn row_op_gradients_match_finite_differences() {
        let d = 6;
        let x: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.7).sin() * 2.0).collect();
        let w: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.3).cos()).collect();
        // f(x) = Σ w ⊙ op(x) for each op; compare analytic and numeric gradients.
        type RowFn<'a> = Box<dyn Fn(&[f32]) -> Vec<f32> + 'a>;
        let ops: Vec<(&str, RowFn, RowFn)> = vec![
            (
                "layer_norm",
                Box::new(|x: &[f32]| {
                    let mut y = vec![0f32; x.len()];
                    let mut r = vec![0f32; x.len() / d];
                    layer_norm_rows(x, d, 1e-5, &mut y, &mut r);
                    y
                }),
                Box::new(|x: &[f32]| {
                    let mut y = vec![0f32; x.len()];
                    let mut r = vec![0f32; x.len() / d];
                    layer_norm_rows(x, d, 1e-5, &mut y, &mut r);
                    let mut dx = vec![0f32; x.len()];
                    layer_norm_rows_backward(&y, &r, &w, d, &mut dx, false);
                    dx
                }),
            ),
            (
                "softmax",
                Box::new(|x: &[f32]| {
                    let mut y = x.to_vec();
                    softmax_rows(&mut y, d);
                    y
                }),
                Box::new(|x: &[f32]| {
                    let mut y = x.to_vec();
                    softmax_rows(&mut y, d);
                    let mut g = w.clone();
                    softmax_rows_backward(&y, &mut g, d);
                    g
                }),
            ),
            (
                "gelu",
                Box::new(|x: &[f32]| {
                    let mut y = vec![0f32; x.len()];
                    gelu(x, &mut y);
                    y
                }),
                Box::new(|x: &[f32]| {
                    let mut g = w.clone();
                    gelu_backward(x, &mut g);
                    g
                }),
            ),
        ];
        for (name, f, grad) in ops {
            let g = grad(&x);
            for i in 0..x.len() {
                let h = 1e-2;
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[i] += h;
                xm[i] -= h;
                let fp: f32 = f(&xp).iter().zip(&w).map(|(a, b)| a * b).sum();
                let fm: f32 = f(&xm).iter().zip(&w).map(|(a, b)| a * b).sum();
                let num = (fp - fm) / (2.0 * h);
                assert!((num - g[i]).abs() < 2e-3, "{name}[{i}]: {num} vs {}", g[i]);
            }
        }
        let num = (silu(0.31) - silu(0.29)) / 0.02;
        assert!((num - silu_grad(0.3)).abs() < 1e-3);
    }
}
