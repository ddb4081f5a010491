//! The paper's I2T perturbation: a 1-D Gaussian blur of the post-softmax image-to-text block
//! along the text-key axis, with reflect padding that does not repeat the edge sample.

use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which blocks to perturb and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlurSpec {
    /// 0-based block indices.
    pub layers: Vec<usize>,
    /// Gaussian σ in text positions (paper: 9).
    pub sigma: f64,
    /// Odd kernel size (paper: 5).
    pub kernel: usize,
    /// Divide each image-query row by its new sum (off by default, as in the paper).
    pub renorm: bool,
}

impl Default for BlurSpec {
    fn default() -> Self {
        Self {
            layers: vec![],
            sigma: 9.0,
            kernel: 5,
            renorm: false,
        }
    }
}

impl BlurSpec {
    /// Checks σ, kernel size and layer indices.
    pub fn validate(&self, num_layers: usize) -> Result<()> {
        if self.kernel == 0 || self.kernel.is_multiple_of(2) {
            return Err(Error::Input(format!(
                "blur kernel size must be odd and positive, got {}",
                self.kernel
            )));
        }
        if !(self.sigma.is_finite() && self.sigma > 0.0) {
            return Err(Error::Input(format!(
                "blur sigma must be positive, got {}",
                self.sigma
            )));
        }
        if let Some(&bad) = self.layers.iter().find(|&&l| l >= num_layers) {
            return Err(Error::Input(format!(
                "blur layer {bad} does not exist (the model has blocks 0..{})",
                num_layers.saturating_sub(1)
            )));
        }
        Ok(())
    }

    /// Normalised Gaussian weights for offsets `-r..=r`.
    pub fn weights(&self) -> Vec<f64> {
        let r = (self.kernel / 2) as f64;
        let w: Vec<f64> = (0..self.kernel)
            .map(|i| {
                let x = i as f64 - r;
                (-x * x / (2.0 * self.sigma * self.sigma)).exp()
            })
            .collect();
        let s: f64 = w.iter().sum();
        w.into_iter().map(|v| v / s).collect()
    }

    /// The blur as an `[L, L]` matrix `M` so that `blurred = i2t · M` (reflect padding folded in).
    pub fn matrix(&self, l: usize, device: &Device) -> Result<Tensor> {
        let r = self.kernel / 2;
        if l <= r {
            return Err(Error::Input(format!(
                "blur kernel {} needs more than {r} text tokens for reflect padding, got {l}",
                self.kernel
            )));
        }
        let w = self.weights();
        let mut m = vec![0f32; l * l];
        for out in 0..l {
            for (k, wk) in w.iter().enumerate() {
                let mut src = out as isize + k as isize - r as isize;
                if src < 0 {
                    src = -src;
                }
                if src >= l as isize {
                    src = 2 * (l as isize - 1) - src;
                }
                m[src as usize * l + out] += *wk as f32;
            }
        }
        Ok(Tensor::from_vec(m, (l, l), device)?)
    }
}

/// A blur ready to apply to probability chunks of one block.
#[derive(Debug, Clone)]
pub struct I2tBlur {
    matrix: Tensor,
    renorm: bool,
}

impl I2tBlur {
    pub fn new(spec: &BlurSpec, l: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            matrix: spec.matrix(l, device)?,
            renorm: spec.renorm,
        })
    }

    /// Whether rows are divided by their new sum after the blur.
    pub fn renormalises(&self) -> bool {
        self.renorm
    }

    /// Blurs the text-key columns of image-query rows.
    ///
    /// # Shapes
    /// `p: [B, H, c, N+L]` (rows = image queries, columns = [image keys, text keys]) → same.
    pub fn apply(&self, p: &Tensor, n_img: usize) -> Result<Tensor> {
        let s = p.dim(D::Minus1)?;
        let ii = p.narrow(D::Minus1, 0, n_img)?;
        let it = p.narrow(D::Minus1, n_img, s - n_img)?.contiguous()?;
        let m = self.matrix.to_dtype(p.dtype())?;
        let it = it.broadcast_matmul(&m)?;
        let pm = Tensor::cat(&[ii, it], D::Minus1)?;
        if self.renorm {
            let sum = pm.sum_keepdim(D::Minus1)?;
            Ok(pm.broadcast_div(&sum)?)
        } else {
            Ok(pm)
        }
    }
}

/// How a step's prediction is guided.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Perturbation {
    /// No perturbation.
    #[default]
    None,
    /// The blur is applied in every forward (the image is regenerated under `Ã`).
    Regenerate(BlurSpec),
    /// Perturbed guidance with scale `scale`: the blur is applied only in an extra conditional
    /// forward `v(x, c; Ã)`.
    Guidance { blur: BlurSpec, scale: f64 },
}

impl Perturbation {
    /// The perturbation that blur flags and a perturbed-guidance scale ask for.
    pub fn from_flags(blur: Option<&BlurSpec>, perturb_guidance: Option<f64>) -> Result<Self> {
        Ok(match (blur, perturb_guidance) {
            (None, None) => Perturbation::None,
            (None, Some(_)) => {
                return Err(Error::Input(
                    "perturbed guidance needs blur layers (--blur-i2t LAYERS)".into(),
                ))
            }
            (Some(b), None) => Perturbation::Regenerate(b.clone()),
            (Some(b), Some(scale)) if scale.is_finite() => Perturbation::Guidance {
                blur: b.clone(),
                scale,
            },
            (Some(_), Some(scale)) => {
                return Err(Error::Input(format!(
                    "perturbed-guidance scale must be finite, got {scale}"
                )))
            }
        })
    }

    /// The blur every forward runs with (only for [`Perturbation::Regenerate`]).
    pub fn every_forward(&self) -> Option<BlurSpec> {
        match self {
            Perturbation::Regenerate(b) => Some(b.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_padding_does_not_repeat_edge() {
        let spec = BlurSpec {
            kernel: 3,
            sigma: 1.0,
            ..Default::default()
        };
        let m = spec.matrix(4, &Device::Cpu).unwrap();
        let x = Tensor::new(&[[1f32, 0., 0., 0.]], &Device::Cpu).unwrap();
        let y: Vec<f32> = x
            .matmul(&m)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let w = spec.weights();
        // Position 0 sees [x1, x0, x1] = [0, 1, 0]; position 1 sees [x0, x1, x2].
        assert!((y[0] as f64 - w[1]).abs() < 1e-6);
        assert!((y[1] as f64 - w[0]).abs() < 1e-6);
        assert!(y[2].abs() < 1e-7 && y[3].abs() < 1e-7);
        let d: f64 = w.iter().sum();
        assert!((d - 1.0).abs() < 1e-12);
    }
}
