//! Top-3 principal components of image-token features, rendered as an RGB image of the token grid.

use nalgebra::{DMatrix, SVD};

use super::error::{check_len, AnalysisError, Result};

/// Number of components rendered (one per colour channel).
pub const PCA_COMPONENTS: usize = 3;

/// PCA of `[N, D]` token features as a `grid_h × grid_w` RGB image.
#[derive(Debug, Clone, PartialEq)]
pub struct PcaImage {
    /// Row-major RGB bytes, `grid_h * grid_w * 3`; channel k is component k min-max scaled to 0..=255.
    pub rgb: Vec<u8>,
    /// Grid height (rows).
    pub height: usize,
    /// Grid width (columns).
    pub width: usize,
    /// Share of the total variance each component explains; 0 for a missing component.
    pub explained_variance_ratio: [f32; PCA_COMPONENTS],
    /// Components actually computed: `min(3, N, D)`; the remaining channels are 0.
    pub n_components: usize,
}

/// Principal components of `features` (`[n_tokens, dim]`, row-major) as an RGB grid.
///
/// Features are centred per dimension, decomposed by SVD, and each token is projected on the
/// top components. Each component's sign is chosen so that its largest-magnitude loading is
/// positive (the first such loading on ties), then its scores are min-max normalised over
/// tokens (a constant component maps to 0). `n_tokens` must equal `grid_h * grid_w`.
pub fn pca_rgb(
    features: &[f32],
    n_tokens: usize,
    dim: usize,
    grid_h: usize,
    grid_w: usize,
) -> Result<PcaImage> {
    if n_tokens < 2 {
        return Err(AnalysisError::Invalid(format!(
            "PCA needs at least 2 tokens, got {n_tokens}"
        )));
    }
    if dim == 0 {
        return Err(AnalysisError::Empty("feature dimension is 0"));
    }
    check_len("features [N,D]", n_tokens * dim, features.len())?;
    check_len("grid_h * grid_w tokens", n_tokens, grid_h * grid_w)?;
    if features.iter().any(|x| !x.is_finite()) {
        return Err(AnalysisError::Invalid(
            "features contain NaN or infinity".into(),
        ));
    }

    let mut x = DMatrix::from_fn(n_tokens, dim, |i, j| f64::from(features[i * dim + j]));
    for mut col in x.column_iter_mut() {
        let mean = col.mean();
        col.add_scalar_mut(-mean);
    }
    let total: f64 = x.iter().map(|v| v * v).sum();

    let mut ratios = [0.0f32; PCA_COMPONENTS];
    let mut channels = vec![vec![0.0f64; n_tokens]; PCA_COMPONENTS];
    let k = PCA_COMPONENTS.min(n_tokens).min(dim);
    if total > 0.0 {
        let svd = SVD::try_new(x.clone(), false, true, f64::EPSILON, 10_000)
            .ok_or_else(|| AnalysisError::Invalid("SVD did not converge".into()))?;
        let v_t = svd
            .v_t
            .as_ref()
            .ok_or_else(|| AnalysisError::Invalid("SVD returned no components".into()))?;
        let s = &svd.singular_values;
        let mut order: Vec<usize> = (0..s.len()).collect();
        order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
        for (c, &idx) in order.iter().take(k).enumerate() {
            ratios[c] = (s[idx] * s[idx] / total) as f32;
            let mut loading: Vec<f64> = v_t.row(idx).iter().copied().collect();
            let top = loading
                .iter()
                .copied()
                .fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
            if top < 0.0 {
                loading.iter_mut().for_each(|v| *v = -*v);
            }
            for (t, score) in channels[c].iter_mut().enumerate() {
                *score = x.row(t).iter().zip(&loading).map(|(a, b)| a * b).sum();
            }
        }
    }

    let bytes: Vec<Vec<u8>> = channels.iter().map(|c| min_max_bytes(c)).collect();
    let rgb = (0..n_tokens)
        .flat_map(|t| bytes.iter().map(move |c| c[t]))
        .collect();
    Ok(PcaImage {
        rgb,
        height: grid_h,
        width: grid_w,
        explained_variance_ratio: ratios,
        n_components: k,
    })
}

/// Min-max scales `xs` to 0..=255 (all zeros when `xs` is constant).
fn min_max_bytes(xs: &[f64]) -> Vec<u8> {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = hi - lo;
    xs.iter()
        .map(|&v| {
            if span > 1e-12 * hi.abs().max(lo.abs()).max(1.0) {
                ((v - lo) / span * 255.0).round() as u8
            } else {
                0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three orthogonal ±1 patterns over a 4×4 grid: left/right, top/bottom, checkerboard.
    fn patterns() -> [[f64; 16]; 3] {
        let mut p = [[0.0; 16]; 3];
        for r in 0..4 {
            for c in 0..4 {
                let t = r * 4 + c;
                p[0][t] = if c < 2 { 1.0 } else { -1.0 };
                p[1][t] = if r < 2 { 1.0 } else { -1.0 };
                p[2][t] = if (r + c) % 2 == 0 { 1.0 } else { -1.0 };
            }
        }
        p
    }

    /// `[16, dim]` features: patterns (unit norm) scaled 10, 5, 1 along orthonormal directions.
    fn rank3_features(dim: usize) -> Vec<f32> {
        let p = patterns();
        let scales = [10.0, 5.0, 1.0];
        // Orthonormal directions in the first three dimensions, rotated so loadings mix.
        let dirs = [[0.8, 0.6, 0.0], [-0.6, 0.8, 0.0], [0.0, 0.0, 1.0]];
        let mut f = vec![0.0f32; 16 * dim];
        for t in 0..16 {
            for j in 0..dim {
                let mut v = 1.5 + 1e-4 * ((t * 7 + j * 3) as f64).sin();
                if j < 3 {
                    for k in 0..3 {
                        v += scales[k] * p[k][t] / 4.0 * dirs[k][j];
                    }
                }
                f[t * dim + j] = v as f32;
            }
        }
        f
    }

    fn correlation(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    }

    #[test]
    fn rank3_signal_is_recovered() {
        let out = pca_rgb(&rank3_features(6), 16, 6, 4, 4).unwrap();
        assert_eq!(out.n_components, 3);
        assert_eq!(out.rgb.len(), 48);
        let want = [100.0 / 126.0, 25.0 / 126.0, 1.0 / 126.0];
        for (got, want) in out.explained_variance_ratio.iter().zip(want) {
            assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        }
        let p = patterns();
        for (c, pattern) in p.iter().enumerate() {
            let chan: Vec<f64> = out
                .rgb
                .iter()
                .skip(c)
                .step_by(3)
                .map(|&b| b as f64)
                .collect();
            let r = correlation(&chan, pattern);
            assert!(r.abs() > 0.99, "component {c}: r = {r}");
        }
        // Largest loading of component 1 is 0.8 on dimension 0: the left half is bright.
        assert_eq!(out.rgb[0], 255);
        assert_eq!(out.rgb[3 * 3], 0);
    }

    #[test]
    fn sign_convention_is_deterministic() {
        let f = rank3_features(4);
        let a = pca_rgb(&f, 16, 4, 4, 4).unwrap();
        let b = pca_rgb(&f, 16, 4, 4, 4).unwrap();
        assert_eq!(a, b);
        // Negating the features flips scores; the sign rule keeps loadings positive.
        let neg: Vec<f32> = f.iter().map(|v| -v).collect();
        let n = pca_rgb(&neg, 16, 4, 4, 4).unwrap();
        assert_eq!(n.rgb[0], 0);
        assert_eq!(n.rgb[3 * 3], 255);
    }

    #[test]
    fn fewer_dims_pad_with_zero() {
        let f = rank3_features(2);
        let out = pca_rgb(&f, 16, 2, 4, 4).unwrap();
        assert_eq!(out.n_components, 2);
        assert_eq!(out.explained_variance_ratio[2], 0.0);
        assert!(out.rgb.iter().skip(2).step_by(3).all(|&b| b == 0));
        let sum: f32 = out.explained_variance_ratio.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4);
        let one = pca_rgb(&[0.0, 1.0, 2.0, 3.0], 4, 1, 2, 2).unwrap();
        assert_eq!(one.n_components, 1);
        assert_eq!(one.explained_variance_ratio, [1.0, 0.0, 0.0]);
        assert_eq!(one.rgb, [0, 0, 0, 85, 0, 0, 170, 0, 0, 255, 0, 0]);
    }

    #[test]
    fn constant_features_are_black() {
        let out = pca_rgb(&[2.0; 12], 4, 3, 2, 2).unwrap();
        assert!(out.rgb.iter().all(|&b| b == 0));
        assert_eq!(out.explained_variance_ratio, [0.0; 3]);
    }

    #[test]
    fn degenerate_input_is_an_error() {
        assert!(pca_rgb(&[1.0, 2.0], 1, 2, 1, 1).is_err());
        assert!(pca_rgb(&[], 4, 0, 2, 2).is_err());
        assert!(pca_rgb(&[1.0; 7], 4, 2, 2, 2).is_err());
        assert!(pca_rgb(&[1.0; 8], 4, 2, 3, 2).is_err());
        let mut f = vec![1.0; 8];
        f[3] = f32::NAN;
        assert!(pca_rgb(&f, 4, 2, 2, 2).is_err());
    }
}
