//! Resizing of label and score maps to the ground-truth resolution, and per-pixel argmax.
//!
//! Label maps use centre-aligned nearest neighbour (source index `floor((dst + 0.5) · in / out)`,
//! as PIL's `NEAREST` and PyTorch's `nearest-exact`). Score maps use bilinear interpolation with
//! PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` semantics, as detectron2's
//! `sem_seg_postprocess` applies to predictions before scoring.

use super::error::{check_len, MetricsError, Result};

/// Resizes a row-major `width × height` label map to `out_width × out_height` by nearest neighbour.
pub fn resize_labels_nearest(
    labels: &[u8],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
) -> Result<Vec<u8>> {
    check_len("label map (width × height)", width * height, labels.len())?;
    if out_width * out_height == 0 {
        return Ok(Vec::new());
    }
    check_source(width, height, out_width, out_height)?;
    let xs: Vec<usize> = (0..out_width)
        .map(|x| nearest_index(x, width, out_width))
        .collect();
    let mut out = Vec::with_capacity(out_width * out_height);
    for y in 0..out_height {
        let row = &labels[nearest_index(y, height, out_height) * width..][..width];
        out.extend(xs.iter().map(|&x| row[x]));
    }
    Ok(out)
}

/// Resizes a `[channels, height, width]` score map to `[channels, out_height, out_width]`
/// bilinearly, with `align_corners=False` (half-pixel centres, borders clamped).
pub fn resize_bilinear(
    scores: &[f32],
    channels: usize,
    height: usize,
    width: usize,
    out_height: usize,
    out_width: usize,
) -> Result<Vec<f32>> {
    check_len(
        "score map (channels × height × width)",
        channels * height * width,
        scores.len(),
    )?;
    if channels * out_width * out_height == 0 {
        return Ok(Vec::new());
    }
    check_source(width, height, out_width, out_height)?;
    let xs: Vec<Tap> = (0..out_width)
        .map(|x| Tap::new(x, width, out_width))
        .collect();
    let ys: Vec<Tap> = (0..out_height)
        .map(|y| Tap::new(y, height, out_height))
        .collect();
    let mut out = Vec::with_capacity(channels * out_height * out_width);
    for plane in scores.chunks_exact(height * width) {
        for ty in &ys {
            let r0 = &plane[ty.i0 * width..][..width];
            let r1 = &plane[ty.i1 * width..][..width];
            out.extend(xs.iter().map(|tx| {
                let top = tx.w0 * r0[tx.i0] + tx.w1 * r0[tx.i1];
                let bottom = tx.w0 * r1[tx.i0] + tx.w1 * r1[tx.i1];
                ty.w0 * top + ty.w1 * bottom
            }));
        }
    }
    Ok(out)
}

/// Per pixel, the channel of the largest score of a `[channels, height, width]` map (the first
/// one on ties, and a NaN counts as largest, as `torch.argmax`). At most 255 channels, so that no
/// label equals the ignore value 255.
pub fn argmax_labels(
    scores: &[f32],
    channels: usize,
    height: usize,
    width: usize,
) -> Result<Vec<u8>> {
    check_len(
        "score map (channels × height × width)",
        channels * height * width,
        scores.len(),
    )?;
    if channels == 0 || channels > 255 {
        return Err(MetricsError::InvalidArgument(format!(
            "argmax needs 1..=255 channels, got {channels}"
        )));
    }
    let plane = height * width;
    let mut best: Vec<f32> = scores[..plane].to_vec();
    let mut labels = vec![0u8; plane];
    for c in 1..channels {
        let layer = &scores[c * plane..(c + 1) * plane];
        for ((b, l), &v) in best.iter_mut().zip(labels.iter_mut()).zip(layer) {
            if !b.is_nan() && (v > *b || v.is_nan()) {
                *b = v;
                *l = c as u8;
            }
        }
    }
    Ok(labels)
}

/// Centre-aligned nearest source index of output index `dst`.
fn nearest_index(dst: usize, in_size: usize, out_size: usize) -> usize {
    let scale = in_size as f64 / out_size as f64;
    (((dst as f64 + 0.5) * scale) as usize).min(in_size - 1)
}

/// The two source samples and their weights for one output coordinate.
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

impl Tap {
    /// PyTorch's `area_pixel_compute_source_index` with `align_corners=False`.
    fn new(dst: usize, in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f32 / out_size as f32;
        let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src as usize).min(in_size - 1);
        let i1 = (i0 + 1).min(in_size - 1);
        let w1 = src - i0 as f32;
        Tap {
            i0,
            i1,
            w0: 1.0 - w1,
            w1,
        }
    }
}

/// Fails on an empty source; only called when the output is not empty.
fn check_source(width: usize, height: usize, out_width: usize, out_height: usize) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(MetricsError::InvalidArgument(format!(
            "cannot resize an empty {width}×{height} map to {out_width}×{out_height}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-6, "index {i}: got {g}, want {w}");
        }
    }

    #[test]
    fn bilinear_2x2_to_4x4_matches_pytorch() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]),
        //     size=(4, 4), mode="bilinear", align_corners=False)
        // Source coordinates are -0.25 (clamped to 0), 0.25, 0.75, 1.25 on each axis.
        let out = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 1, 2, 2, 4, 4).unwrap();
        #[rustfmt::skip]
        let want = [
            0.0, 0.25, 0.75, 1.0,
            0.5, 0.75, 1.25, 1.5,
            1.5, 1.75, 2.25, 2.5,
            2.0, 2.25, 2.75, 3.0,
        ];
        assert_close(&out, &want);
    }

    #[test]
    fn bilinear_non_integer_ratio_and_channels() {
        // One row [0, 10, 20] → 2 columns: scale 1.5, sources 0.25 and 1.75:
        // 0 + 0.25·10 = 2.5 and 10 + 0.75·10 = 17.5. Second channel is the first plus 100.
        let out = resize_bilinear(&[0.0, 10.0, 20.0, 100.0, 110.0, 120.0], 2, 1, 3, 1, 2).unwrap();
        assert_close(&out, &[2.5, 17.5, 102.5, 117.5]);
        // Downscale 4 → 2 hits the pixel pairs' midpoints: sources 0.5 and 2.5.
        let out = resize_bilinear(&[0.0, 1.0, 4.0, 9.0], 1, 1, 4, 1, 2).unwrap();
        assert_close(&out, &[0.5, 6.5]);
        assert!(resize_bilinear(&[0.0; 5], 1, 2, 2, 4, 4).is_err());
    }

    #[test]
    fn nearest_labels_upscale_and_downscale() {
        // 2×2 → 3×3: scale 2/3, sources floor((0.5, 1.5, 2.5) · 2/3) = 0, 1, 1.
        let out = resize_labels_nearest(&[1, 2, 3, 4], 2, 2, 3, 3).unwrap();
        assert_eq!(out, vec![1, 2, 2, 3, 4, 4, 3, 4, 4]);
        // 4×1 → 2×1: sources floor(0.5·2) = 1 and floor(1.5·2) = 3 (centre pixels, not 0 and 2).
        let out = resize_labels_nearest(&[10, 11, 12, 13], 4, 1, 2, 1).unwrap();
        assert_eq!(out, vec![11, 13]);
        // Non-square: 3 wide, 1 high → 1 wide, 2 high.
        let out = resize_labels_nearest(&[5, 6, 7], 3, 1, 1, 2).unwrap();
        assert_eq!(out, vec![6, 6]);
        assert!(resize_labels_nearest(&[1, 2, 3], 2, 2, 4, 4).is_err());
    }

    #[test]
    fn argmax_first_max_wins_and_nan_is_largest() {
        // Two channels over 4 pixels.
        #[rustfmt::skip]
        let scores = [
            0.1, 0.9, 0.5, f32::NAN, // channel 0
            0.2, 0.3, 0.5, 7.0,      // channel 1
        ];
        let labels = argmax_labels(&scores, 2, 2, 2).unwrap();
        assert_eq!(labels, vec![1, 0, 0, 0]);
        let three = [0.0, 1.0, 2.0, 2.0, 1.0, 0.0, 1.0, 5.0, 1.0];
        assert_eq!(argmax_labels(&three, 3, 1, 3).unwrap(), vec![1, 2, 0]);
        assert!(argmax_labels(&[0.0; 256], 256, 1, 1).is_err());
    }
}
