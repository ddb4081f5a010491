//! Fused CPU kernels with backward passes, for training and inference: tanh-GELU, softmax and
//! affine-free layer norm over the last dim. Each is one pass forward and one pass backward;
//! candle's composite forms take around ten passes (GELU's backward also calls `powf`), and its
//! fused softmax / layer norm have no backward at all. Other devices and dtypes fall back to
//! composite, differentiable formulations.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::error::Result;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_K: f32 = 0.044_715;

/// tanh through one `exp` (`1 − 2/(e^{2z}+1)`): glibc's `tanhf` goes through `expm1f` and was
/// the largest cost of training after the matmuls. Absolute error ≲ 1e-7.
#[inline]
fn tanh(z: f32) -> f32 {
    1.0 - 2.0 / ((2.0 * z).exp() + 1.0)
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => bail!("fused op needs a contiguous tensor"),
        _ => bail!("fused op needs f32"),
    }
}

/// Applies `f(row_in, row_out)` to every row of length `n`, in parallel.
fn map_rows(x: &[f32], n: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let rows = (16_384 / n.max(1)).max(1);
    out.par_chunks_mut(n * rows)
        .zip(x.par_chunks(n * rows))
        .for_each(|(o, xi)| {
            o.chunks_mut(n)
                .zip(xi.chunks(n))
                .for_each(|(o, xi)| f(xi, o))
        });
    out
}

/// Like [`map_rows`] over two inputs of the same shape.
fn map_rows2(
    x: &[f32],
    y: &[f32],
    n: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let rows = (16_384 / n.max(1)).max(1);
    out.par_chunks_mut(n * rows)
        .zip(x.par_chunks(n * rows).zip(y.par_chunks(n * rows)))
        .for_each(|(o, (xi, yi))| {
            o.chunks_mut(n)
                .zip(xi.chunks(n).zip(yi.chunks(n)))
                .for_each(|(o, (xi, yi))| f(xi, yi, o))
        });
    out
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1)
}

fn same_shape(l1: &Layout, l2: &Layout) -> candle_core::Result<()> {
    if l1.shape() != l2.shape() {
        bail!(
            "fused backward: shapes {:?} and {:?} differ",
            l1.shape(),
            l2.shape()
        );
    }
    Ok(())
}

struct Gelu;
struct GeluGrad;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let out = map_rows(x, x.len().clamp(1, 4096), |xi, o| {
            for (o, &x) in o.iter_mut().zip(xi) {
                *o = 0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + GELU_K * x * x * x)));
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        same_shape(l1, l2)?;
        let (x, g) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let out = map_rows2(x, g, x.len().clamp(1, 4096), |xi, gi, o| {
            for ((o, &x), &g) in o.iter_mut().zip(xi).zip(gi) {
                let t = tanh(SQRT_2_OVER_PI * (x + GELU_K * x * x * x));
                let d = 0.5 * (1.0 + t)
                    + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_K * x * x);
                *o = g * d;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct Softmax;
struct SoftmaxGrad;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let out = map_rows(x, last_dim(l), |xi, o| {
            let m = xi.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &x) in o.iter_mut().zip(xi) {
                *o = (x - m).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|v| *v *= inv);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    /// `dx = p · (g − Σ g·p)` per row.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        same_shape(l1, l2)?;
        let (p, g) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let out = map_rows2(p, g, last_dim(l1), |pi, gi, o| {
            let dot: f32 = pi.iter().zip(gi).map(|(p, g)| p * g).sum();
            for ((o, &p), &g) in o.iter_mut().zip(pi).zip(gi) {
                *o = p * (g - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct LayerNorm(f32);
struct LayerNormGrad(f32);

/// Mean and 1/σ of a row.
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let eps = self.0;
        let out = map_rows(x, last_dim(l), |xi, o| {
            let (mean, rstd) = moments(xi, eps);
            for (o, &x) in o.iter_mut().zip(xi) {
                *o = (x - mean) * rstd;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &LayerNormGrad(self.0),
        )?))
    }
}

impl CustomOp2 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
    }

    /// `dx = (1/σ) · (g − mean(g) − y · mean(g·y))` per row.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        same_shape(l1, l2)?;
        let (x, g) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let eps = self.0;
        let out = map_rows2(x, g, last_dim(l1), |xi, gi, o| {
            let (mean, rstd) = moments(xi, eps);
            let n = xi.len() as f32;
            let mg = gi.iter().sum::<f32>() / n;
            let mgy = xi
                .iter()
                .zip(gi)
                .map(|(x, g)| (x - mean) * rstd * g)
                .sum::<f32>()
                / n;
            for ((o, &x), &g) in o.iter_mut().zip(xi).zip(gi) {
                *o = rstd * (g - mg - (x - mean) * rstd * mgy);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

fn fusable(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// tanh-approximated GELU (diffusers' `gelu-approximate`).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fusable(x) {
        Ok(x.contiguous()?.apply_op1(Gelu)?)
    } else {
        Ok(x.gelu()?)
    }
}

/// Softmax over the last dim, differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fusable(x) {
        return Ok(x.contiguous()?.apply_op1(Softmax)?);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Layer norm without affine parameters over the last dim, differentiable.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    if fusable(x) {
        return Ok(x.contiguous()?.apply_op1(LayerNorm(eps as f32))?);
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(xc.broadcast_div(&(var + eps)?.sqrt()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Forward values and gradients of `fused` match `composite` on a random tensor.
    fn check(fused: impl Fn(&Tensor) -> Result<Tensor>, composite: impl Fn(&Tensor) -> Tensor) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (3, 5, 37), &dev).unwrap())).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 5, 37), &dev).unwrap();
        let a = fused(x.as_tensor()).unwrap();
        let b = composite(x.as_tensor());
        let d = (&a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "forward differs by {d}");
        let ga = (&a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (
            ga.get(x.as_tensor()).unwrap(),
            gb.get(x.as_tensor()).unwrap(),
        );
        let d = (ga - gb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4, "gradient differs by {d}");
    }

    #[test]
    fn gelu_matches_composite() {
        check(gelu, |x| x.gelu().unwrap());
    }

    #[test]
    fn softmax_matches_composite() {
        check(softmax_last_dim, |x| {
            let e = x
                .broadcast_sub(&x.max_keepdim(D::Minus1).unwrap().detach())
                .unwrap()
                .exp()
                .unwrap();
            e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
        });
    }

    #[test]
    fn layer_norm_matches_composite() {
        check(
            |x| layer_norm(x, 1e-6),
            |x| {
                let m = x.mean_keepdim(D::Minus1).unwrap();
                let c = x.broadcast_sub(&m).unwrap();
                let v = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                c.broadcast_div(&(v + 1e-6).unwrap().sqrt().unwrap())
                    .unwrap()
            },
        );
    }
}
