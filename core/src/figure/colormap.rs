//! The sequential colour map of attention figures (viridis) and the scaling of values onto it.

/// Viridis at 0, 1/8, …, 1 (matplotlib's table), linearly interpolated in between.
const VIRIDIS: [[f32; 3]; 9] = [
    [68.0, 1.0, 84.0],
    [71.0, 44.0, 122.0],
    [59.0, 81.0, 139.0],
    [44.0, 113.0, 142.0],
    [33.0, 144.0, 141.0],
    [39.0, 173.0, 129.0],
    [92.0, 200.0, 99.0],
    [170.0, 220.0, 50.0],
    [253.0, 231.0, 37.0],
];

/// Colour of `t` in 0..=1 (clamped; NaN maps to 0).
pub fn viridis(t: f32) -> [u8; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let x = t * (VIRIDIS.len() - 1) as f32;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f32;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    [0, 1, 2].map(|k| (a[k] + (b[k] - a[k]) * f).round() as u8)
}

/// Smallest and largest finite value of all `maps` (`(0, 1)` when there is none).
pub fn value_range<'a>(maps: impl IntoIterator<Item = &'a [f32]>) -> (f32, f32) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in maps.into_iter().flatten() {
        if v.is_finite() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if lo > hi {
        (0.0, 1.0)
    } else {
        (lo, hi)
    }
}

/// A map of values as RGB bytes, scaled linearly from `lo..=hi` onto viridis.
pub fn colourise(map: &[f32], lo: f32, hi: f32) -> Vec<u8> {
    let span = hi - lo;
    map.iter()
        .flat_map(|&v| viridis(if span > 0.0 { (v - lo) / span } else { 0.0 }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_and_scaling() {
        assert_eq!(viridis(0.0), [68, 1, 84]);
        assert_eq!(viridis(1.0), [253, 231, 37]);
        assert_eq!(viridis(2.0), viridis(1.0));
        assert_eq!(viridis(0.5), [33, 144, 141]);
        let m = [0.0, 0.5, 1.0, f32::NAN];
        assert_eq!(value_range([&m[..]]), (0.0, 1.0));
        let rgb = colourise(&[2.0, 4.0], 2.0, 4.0);
        assert_eq!(rgb, [68, 1, 84, 253, 231, 37]);
    }
}
