//! The FlowMatchEuler sampling schedule exactly as diffusers' `FlowMatchEulerDiscreteScheduler`
//! computes it for SD3 (diffusers v0.42.1, `schedulers/scheduling_flow_match_euler_discrete.py`): the shift is
//! applied once to the training table (giving σ_max, σ_min) and again to the inference σs,
//! with the same f32/f64 rounding. Step index ↔ σ ↔ model timestep (σ·1000).

use candle_core::Tensor;

use crate::error::{Error, Result};

/// SD3's scheduler settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowMatchEuler {
    /// Timestep shift (SD3: 3.0).
    pub shift: f64,
    /// Training timesteps (1000).
    pub num_train_timesteps: usize,
}

impl Default for FlowMatchEuler {
    fn default() -> Self {
        Self {
            shift: 3.0,
            num_train_timesteps: 1000,
        }
    }
}

/// The σs and model timesteps of one sampling run.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// `steps + 1` values, from ≈1 down to exactly 0.
    pub sigmas: Vec<f32>,
    /// `steps` model timesteps (σ·1000).
    pub timesteps: Vec<f32>,
}

impl FlowMatchEuler {
    fn shifted_f32(&self, s: f32) -> f32 {
        let shift = self.shift as f32;
        shift * s / (1.0 + (shift - 1.0) * s)
    }

    /// The schedule for `steps` inference steps.
    pub fn schedule(&self, steps: usize) -> Result<Schedule> {
        if steps == 0 {
            return Err(Error::Input(
                "the number of steps must be at least 1".into(),
            ));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return Err(Error::Input(format!(
                "shift must be positive, got {}",
                self.shift
            )));
        }
        let n = self.num_train_timesteps as f32;
        // Training table: σ = shift(t/N) for t = N..1 (f32), whose ends bound the inference range.
        // t = N gives σ = shift(1) = 1 exactly.
        let sigma_max = self.shifted_f32(1.0) as f64;
        let sigma_min = self.shifted_f32(1.0 / n) as f64;
        let nf = self.num_train_timesteps as f64;
        let (t0, t1) = (sigma_max * nf, sigma_min * nf);
        let mut sigmas: Vec<f32> = (0..steps)
            .map(|i| {
                let t = if steps == 1 {
                    t0
                } else {
                    t0 + (t1 - t0) * i as f64 / (steps - 1) as f64
                };
                let s = t / nf;
                (self.shift * s / (1.0 + (self.shift - 1.0) * s)) as f32
            })
            .collect();
        let timesteps = sigmas.iter().map(|s| s * n).collect();
        sigmas.push(0.0);
        Ok(Schedule { sigmas, timesteps })
    }
}

impl Schedule {
    /// Number of inference steps.
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// σ at step `index` (0 = noisiest).
    pub fn sigma(&self, index: usize) -> Result<f32> {
        self.timesteps
            .get(index)
            .map(|_| self.sigmas[index])
            .ok_or_else(|| {
                Error::Input(format!("step index {index} is outside 0..{}", self.steps()))
            })
    }

    /// The paper's "t = k of n": the k-th step counted from the end, i.e. index `n − k`.
    pub fn index_from_end(&self, k: usize) -> Result<usize> {
        if k == 0 || k > self.steps() {
            return Err(Error::Input(format!(
                "t = {k} is outside 1..={}",
                self.steps()
            )));
        }
        Ok(self.steps() - k)
    }

    /// One Euler step: `x + (σ_{i+1} − σ_i) · v`, in f32.
    ///
    /// # Shapes
    /// `x, v: [B, C, H, W]` → same
    pub fn step(&self, index: usize, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let s = self.sigma(index)?;
        let dt = (self.sigmas[index + 1] - s) as f64;
        let x = x.to_dtype(candle_core::DType::F32)?;
        Ok((x + (v.to_dtype(candle_core::DType::F32)? * dt)?)?)
    }
}

/// Noises a clean latent to σ: `x = σ·ε + (1 − σ)·x0`.
pub fn noise_to(x0: &Tensor, eps: &Tensor, sigma: f32) -> Result<Tensor> {
    Ok(((eps * sigma as f64)? + (x0 * (1.0 - sigma as f64))?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_default_step() {
        let s = FlowMatchEuler::default().schedule(28).unwrap();
        let i = s.index_from_end(8).unwrap();
        assert_eq!(i, 20);
        assert!((s.sigma(i).unwrap() - 0.5151).abs() < 1e-4);
        assert!((s.timesteps[i] - 515.1).abs() < 0.1);
        assert_eq!(s.sigmas.len(), 29);
        assert_eq!(*s.sigmas.last().unwrap(), 0.0);
    }
}
