//! Background patterns (plain, striped, checkered, noisy) with random colours, frequency and phase.

use rand::Rng;

use super::palette::{muted_pair, shade, Rgb};
use super::vocab::Background;

/// A concrete background: its kind plus the random parameters that draw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Backdrop {
    /// The pattern kind (the caption word).
    pub kind: Background,
    /// Main colour (muted).
    pub primary: Rgb,
    /// Second colour of stripes and checks.
    pub secondary: Rgb,
    /// Stripe period or checker cell size, in pixels.
    pub period: f64,
    /// Stripe direction in radians.
    pub angle: f64,
    /// Pattern offset, in periods, along x and y.
    pub phase: (f64, f64),
    /// Per-pixel noise amplitude (noisy backgrounds), in 8-bit levels.
    pub grain: f32,
    /// Smooth blob amplitude (noisy backgrounds), in 8-bit levels.
    pub blobs: f32,
    /// Blob lattice spacing in pixels.
    pub blob_cell: f64,
    /// Seed of the hashed noise field.
    pub noise_seed: u64,
}

impl Backdrop {
    /// A random backdrop of `kind` for a `size × size` image.
    pub fn random<R: Rng + ?Sized>(kind: Background, size: usize, rng: &mut R) -> Backdrop {
        let side = size as f64;
        let (primary, secondary) = muted_pair(rng);
        let period = match kind {
            Background::Checkered => side * rng.random_range(0.10..0.20),
            _ => side * rng.random_range(0.14..0.32),
        };
        Backdrop {
            kind,
            primary,
            secondary,
            period: period.max(2.0),
            angle: rng.random_range(0.0..std::f64::consts::PI),
            phase: (rng.random_range(0.0..1.0), rng.random_range(0.0..1.0)),
            grain: rng.random_range(8.0..20.0),
            blobs: rng.random_range(4.0..16.0),
            blob_cell: side * rng.random_range(0.15..0.4),
            noise_seed: rng.random(),
        }
    }

    /// The pattern colour at pixel-coordinate point `(x, y)`.
    pub fn sample(&self, x: f64, y: f64) -> [f32; 3] {
        let as_f32 = |c: Rgb| c.map(|v| v as f32);
        match self.kind {
            Background::Plain => as_f32(self.primary),
            Background::Striped => {
                let t = (x * self.angle.cos() + y * self.angle.sin()) / self.period + self.phase.0;
                if t.rem_euclid(1.0) < 0.5 {
                    as_f32(self.primary)
                } else {
                    as_f32(self.secondary)
                }
            }
            Background::Checkered => {
                let i = (x / self.period + self.phase.0).floor() as i64;
                let j = (y / self.period + self.phase.1).floor() as i64;
                if (i + j).rem_euclid(2) == 0 {
                    as_f32(self.primary)
                } else {
                    as_f32(self.secondary)
                }
            }
            Background::Noisy => {
                let fine = hash_unit(self.noise_seed, x.floor() as i64, y.floor() as i64);
                let coarse = self.blob_noise(x, y);
                let delta = self.grain * fine + self.blobs * coarse;
                self.primary.map(|v| (v as f32 + delta).clamp(0.0, 255.0))
            }
        }
    }

    /// Every colour the pattern can take, at its extremes: objects are kept far from these.
    pub fn extremes(&self) -> Vec<Rgb> {
        match self.kind {
            Background::Plain => vec![self.primary],
            Background::Striped | Background::Checkered => vec![self.primary, self.secondary],
            Background::Noisy => {
                let a = self.grain + self.blobs;
                vec![
                    shade(self.primary, -a),
                    self.primary,
                    shade(self.primary, a),
                ]
            }
        }
    }

    /// Smooth value noise in [-1, 1], bilinear between hashed lattice values.
    fn blob_noise(&self, x: f64, y: f64) -> f32 {
        let gx = x / self.blob_cell + self.phase.0 * 7.0;
        let gy = y / self.blob_cell + self.phase.1 * 7.0;
        let (x0, y0) = (gx.floor(), gy.floor());
        let (fx, fy) = ((gx - x0) as f32, (gy - y0) as f32);
        let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
        let seed = self.noise_seed ^ 0x9E37_79B9_7F4A_7C15;
        let at = |i: f64, j: f64| hash_unit(seed, i as i64, j as i64);
        let top = at(x0, y0) * (1.0 - sx) + at(x0 + 1.0, y0) * sx;
        let bottom = at(x0, y0 + 1.0) * (1.0 - sx) + at(x0 + 1.0, y0 + 1.0) * sx;
        top * (1.0 - sy) + bottom * sy
    }
}

/// A hash of `(seed, i, j)` mapped to [-1, 1].
fn hash_unit(seed: u64, i: i64, j: i64) -> f32 {
    let mut z = seed
        ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (j as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn backdrop(kind: Background) -> Backdrop {
        Backdrop::random(kind, 32, &mut ChaCha8Rng::seed_from_u64(11))
    }

    #[test]
    fn plain_is_uniform_and_patterns_use_two_colours() {
        let plain = backdrop(Background::Plain);
        assert_eq!(plain.sample(0.5, 0.5), plain.sample(30.5, 12.5));
        for kind in [Background::Striped, Background::Checkered] {
            let b = backdrop(kind);
            let mut seen = std::collections::HashSet::new();
            for i in 0..32 {
                for j in 0..32 {
                    let c = b.sample(i as f64 + 0.5, j as f64 + 0.5);
                    seen.insert(c.map(|v| v as u8));
                }
            }
            let expected: std::collections::HashSet<_> = b.extremes().into_iter().collect();
            assert_eq!(seen, expected, "{kind}");
        }
    }

    #[test]
    fn noise_stays_within_its_extremes() {
        let b = backdrop(Background::Noisy);
        let ext = b.extremes();
        let mut distinct = std::collections::HashSet::new();
        for i in 0..32 {
            for j in 0..32 {
                let c = b.sample(i as f64 + 0.5, j as f64 + 0.5);
                for k in 0..3 {
                    assert!(c[k] >= ext[0][k] as f32 - 0.5 && c[k] <= ext[2][k] as f32 + 0.5);
                }
                distinct.insert(c.map(|v| v.round() as u8));
            }
        }
        assert!(distinct.len() > 30, "{}", distinct.len());
    }

    #[test]
    fn hash_noise_is_bounded_and_spread() {
        let vals: Vec<f32> = (0..1000).map(|i| hash_unit(5, i, -i)).collect();
        assert!(vals.iter().all(|v| (-1.0..=1.0).contains(v)));
        let mean = vals.iter().sum::<f32>() / vals.len() as f32;
        assert!(mean.abs() < 0.1, "{mean}");
    }
}
