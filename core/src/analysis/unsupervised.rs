//! Unsupervised segmentation from token attention maps: softmax, greedy symmetric-KL merging, argmax.

use super::error::{check_len, check_nonzero, AnalysisError, Result};

/// Default merge threshold on the symmetric KL divergence.
pub const DEFAULT_MERGE_THRESHOLD: f32 = 0.1;

/// Epsilon added inside the logarithms of the KL divergence.
pub const KL_EPSILON: f64 = 1e-10;

/// Result of [`segment_maps`].
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    /// Proposal per pixel (length N): the index into `clusters` of the merged distribution
    /// with the highest value at that pixel (lowest index on ties). Labels are cluster
    /// indices, so a cluster that wins no pixel leaves its label unused.
    pub labels: Vec<u8>,
    /// Original map indices of each cluster, sorted; clusters are ordered by their first member.
    pub clusters: Vec<Vec<usize>>,
    /// Distribution over pixels of each cluster: the mean of its members' distributions.
    pub distributions: Vec<Vec<f32>>,
}

impl Segmentation {
    /// Number of clusters K (every label is below K).
    pub fn n_clusters(&self) -> usize {
        self.clusters.len()
    }
}

/// Symmetric KL divergence ½(KL(p‖q) + KL(q‖p)), with [`KL_EPSILON`] inside the logarithms.
/// Both slices must have the same length.
pub fn symmetric_kl(p: &[f32], q: &[f32]) -> Result<f32> {
    check_len("second distribution", p.len(), q.len())?;
    let p: Vec<f64> = p.iter().map(|&v| f64::from(v)).collect();
    let q: Vec<f64> = q.iter().map(|&v| f64::from(v)).collect();
    Ok(sym_kl(&p, &q) as f32)
}

fn sym_kl(p: &[f64], q: &[f64]) -> f64 {
    sym_kl_logs(p, &eps_log(p), q, &eps_log(q))
}

/// `ln(x + ε)` of every entry.
fn eps_log(p: &[f64]) -> Vec<f64> {
    p.iter().map(|&a| (a + KL_EPSILON).ln()).collect()
}

/// Symmetric KL from distributions and their [`eps_log`]s: ½ Σ (p − q)(ln p − ln q).
fn sym_kl_logs(p: &[f64], lp: &[f64], q: &[f64], lq: &[f64]) -> f64 {
    let d: f64 = p
        .iter()
        .zip(q)
        .zip(lp.iter().zip(lq))
        .map(|((&a, &b), (&la, &lb))| (a - b) * (la - lb))
        .sum();
    (0.5 * d).max(0.0)
}

/// Min-max normalises `map` to [0,1] (a constant map becomes zeros), then softmaxes it.
fn to_distribution(map: &[f32]) -> Vec<f64> {
    let lo = map.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let span = f64::from(hi) - f64::from(lo);
    let norm = |v: f32| {
        if span > 0.0 {
            (f64::from(v) - f64::from(lo)) / span
        } else {
            0.0
        }
    };
    // Values lie in [0,1], so exp cannot overflow.
    let exp: Vec<f64> = map.iter().map(|&v| norm(v).exp()).collect();
    let z: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / z).collect()
}

struct Cluster {
    members: Vec<usize>,
    /// Sum of the members' distributions.
    sum: Vec<f64>,
    /// `sum / members.len()`.
    dist: Vec<f64>,
    /// `eps_log(dist)`.
    log: Vec<f64>,
}

impl Cluster {
    fn divergence(&self, other: &Self) -> f64 {
        sym_kl_logs(&self.dist, &self.log, &other.dist, &other.log)
    }
}

/// Segments N pixels from `maps` (`[n_maps, n_pixels]`, row-major; e.g. the I2T maps of the
/// BOS/EOS/padding tokens of an empty prompt).
///
/// Each map is min-max normalised over its pixels and softmaxed into a distribution. The pair
/// of clusters with the smallest symmetric KL is merged while that divergence is strictly
/// below `threshold` (so 0 merges nothing and `f32::INFINITY` merges everything); a merged
/// cluster's distribution is the equal-weight mean of its original members. Pixels are then
/// labelled by argmax over the cluster distributions. Errors on empty or non-finite input, a
/// NaN threshold, or more than 256 clusters left (labels are `u8`).
pub fn segment_maps(
    maps: &[f32],
    n_maps: usize,
    n_pixels: usize,
    threshold: f32,
) -> Result<Segmentation> {
    check_nonzero("no token maps", n_maps)?;
    check_nonzero("no pixels", n_pixels)?;
    check_len("maps [T,N]", n_maps * n_pixels, maps.len())?;
    if threshold.is_nan() {
        return Err(AnalysisError::Invalid("merge threshold is NaN".into()));
    }
    if maps.iter().any(|v| !v.is_finite()) {
        return Err(AnalysisError::Invalid(
            "maps contain NaN or infinity".into(),
        ));
    }
    let threshold = f64::from(threshold);

    let mut clusters: Vec<Cluster> = maps
        .chunks_exact(n_pixels)
        .enumerate()
        .map(|(i, m)| {
            let d = to_distribution(m);
            Cluster {
                members: vec![i],
                sum: d.clone(),
                log: eps_log(&d),
                dist: d,
            }
        })
        .collect();
    // dist[i][j] for i < j; entries with i >= j are unused.
    let mut dist: Vec<Vec<f64>> = (0..clusters.len())
        .map(|i| {
            (0..clusters.len())
                .map(|j| {
                    if j > i {
                        clusters[i].divergence(&clusters[j])
                    } else {
                        f64::INFINITY
                    }
                })
                .collect()
        })
        .collect();

    while let Some((i, j, d)) = closest_pair(&dist) {
        if d >= threshold {
            break;
        }
        let absorbed = clusters.remove(j);
        dist.remove(j);
        dist.iter_mut().for_each(|row| {
            row.remove(j);
        });
        let c = &mut clusters[i];
        c.members.extend(absorbed.members);
        c.members.sort_unstable();
        c.sum
            .iter_mut()
            .zip(&absorbed.sum)
            .for_each(|(a, b)| *a += b);
        let n = c.members.len() as f64;
        c.dist = c.sum.iter().map(|s| s / n).collect();
        c.log = eps_log(&c.dist);
        for k in 0..clusters.len() {
            if k != i {
                let d = clusters[i].divergence(&clusters[k]);
                let (a, b) = if k < i { (k, i) } else { (i, k) };
                dist[a][b] = d;
            }
        }
    }

    if clusters.len() > 256 {
        return Err(AnalysisError::Invalid(format!(
            "{} clusters left; at most 256 fit u8 labels (raise the threshold)",
            clusters.len()
        )));
    }
    let labels = (0..n_pixels)
        .map(|p| {
            let mut best = 0;
            for (k, c) in clusters.iter().enumerate() {
                if c.dist[p] > clusters[best].dist[p] {
                    best = k;
                }
            }
            best as u8
        })
        .collect();
    Ok(Segmentation {
        labels,
        distributions: clusters
            .iter()
            .map(|c| c.dist.iter().map(|&v| v as f32).collect())
            .collect(),
        clusters: clusters.into_iter().map(|c| c.members).collect(),
    })
}

/// The pair (i < j) with the smallest divergence, first in scan order on ties.
fn closest_pair(dist: &[Vec<f64>]) -> Option<(usize, usize, f64)> {
    let mut best: Option<(usize, usize, f64)> = None;
    for (i, row) in dist.iter().enumerate() {
        for (j, &d) in row.iter().enumerate().skip(i + 1) {
            if best.is_none_or(|(_, _, b)| d < b) {
                best = Some((i, j, d));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: usize = 8;
    const H: usize = 4;

    /// Maps 0, 2, 4 peak on the left half, maps 1, 3, 5 on the right, with small perturbations.
    fn left_right_maps() -> Vec<f32> {
        let mut maps = Vec::new();
        for m in 0..6 {
            for p in 0..W * H {
                let left = p % W < W / 2;
                let hot = left == (m % 2 == 0);
                let base = if hot { 5.0 } else { 0.2 };
                maps.push(base + 0.05 * ((m * 31 + p * 7) as f32).sin());
            }
        }
        maps
    }

    #[test]
    fn two_groups_merge_into_two_clusters() {
        let seg = segment_maps(&left_right_maps(), 6, W * H, DEFAULT_MERGE_THRESHOLD).unwrap();
        assert_eq!(seg.clusters, vec![vec![0, 2, 4], vec![1, 3, 5]]);
        assert_eq!(seg.n_clusters(), 2);
        for (p, &l) in seg.labels.iter().enumerate() {
            assert_eq!(l, if p % W < W / 2 { 0 } else { 1 }, "pixel {p}");
        }
        let total: f32 = seg.distributions[0].iter().sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn zero_threshold_merges_nothing() {
        let seg = segment_maps(&left_right_maps(), 6, W * H, 0.0).unwrap();
        assert_eq!(seg.n_clusters(), 6);
        assert_eq!(seg.clusters, (0..6).map(|i| vec![i]).collect::<Vec<_>>());
        assert_eq!(seg.labels.len(), W * H);
        assert!(seg.labels.iter().all(|&l| (l as usize) < 6));
    }

    #[test]
    fn huge_threshold_merges_everything() {
        let seg = segment_maps(&left_right_maps(), 6, W * H, f32::INFINITY).unwrap();
        assert_eq!(seg.clusters, vec![(0..6).collect::<Vec<_>>()]);
        assert!(seg.labels.iter().all(|&l| l == 0));
        let seg = segment_maps(&left_right_maps(), 6, W * H, 1e6).unwrap();
        assert_eq!(seg.n_clusters(), 1);
    }

    #[test]
    fn merged_distribution_is_mean_of_members() {
        // Identical maps 0 and 2 merge first; map 1 then joins: equal weights over 3 members.
        let maps = [0.0, 1.0, 2.0, 3.0, 3.0, 2.0, 1.0, 0.0, 0.0, 1.0, 2.0, 3.0];
        let seg = segment_maps(&maps, 3, 4, f32::INFINITY).unwrap();
        let d: Vec<Vec<f64>> = maps.chunks(4).map(to_distribution).collect();
        for (p, &got) in seg.distributions[0].iter().enumerate() {
            let want = (d[0][p] + d[1][p] + d[2][p]) / 3.0;
            assert!((f64::from(got) - want).abs() < 1e-6);
        }
    }

    #[test]
    fn symmetric_kl_properties() {
        let p = [0.1, 0.2, 0.7];
        let q = [0.3, 0.3, 0.4];
        assert_eq!(symmetric_kl(&p, &p).unwrap(), 0.0);
        let (a, b) = (symmetric_kl(&p, &q).unwrap(), symmetric_kl(&q, &p).unwrap());
        assert!(a > 0.0 && (a - b).abs() < 1e-7);
        // By hand: ½ Σ (p - q) ln(p / q).
        let want: f64 = p
            .iter()
            .zip(&q)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)) * (f64::from(x) / f64::from(y)).ln())
            .sum::<f64>()
            / 2.0;
        assert!((f64::from(a) - want).abs() < 1e-6);
        assert!(symmetric_kl(&p, &q[..2]).is_err());
    }

    #[test]
    fn realistic_size_runs() {
        let (t, n) = (64, 1024);
        let maps: Vec<f32> = (0..t * n)
            .map(|i| ((i % n) * ((i / n) % 5 + 1) % 17) as f32)
            .collect();
        let seg = segment_maps(&maps, t, n, DEFAULT_MERGE_THRESHOLD).unwrap();
        assert_eq!(seg.labels.len(), n);
        assert!(seg.labels.iter().all(|&l| (l as usize) < seg.n_clusters()));
        let members: usize = seg.clusters.iter().map(Vec::len).sum();
        assert_eq!(members, t);
    }

    #[test]
    fn constant_map_is_uniform() {
        let d = to_distribution(&[4.0; 5]);
        assert!(d.iter().all(|&v| (v - 0.2).abs() < 1e-12));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(segment_maps(&[], 0, 4, 0.1).is_err());
        assert!(segment_maps(&[], 1, 0, 0.1).is_err());
        assert!(segment_maps(&[1.0; 7], 2, 4, 0.1).is_err());
        assert!(segment_maps(&[1.0; 8], 2, 4, f32::NAN).is_err());
        assert!(segment_maps(&[f32::INFINITY; 8], 2, 4, 0.1).is_err());
        let many: Vec<f32> = (0..257 * 2).map(|i| i as f32).collect();
        assert!(segment_maps(&many, 257, 2, 0.0).is_err());
    }
}
