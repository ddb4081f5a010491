//! Rasterisation: supersampled coverage, pixel ownership (the masks) and colour compositing.
//!
//! Each pixel is sampled on an `ss × ss` grid (`ss` odd, so the middle sample is the pixel
//! centre). Layer 0 is the background and layer `i + 1` is object `i`; a later object hides
//! an earlier one. A pixel belongs to the layer that covers a strict majority of its samples,
//! or, when none does, to the layer under its centre sample. Colours blend an object with the
//! background along its outline; where objects meet each other, or three layers share a pixel,
//! the owner's colour is used alone, so every labelled pixel is dominated by its object.

use std::ops::Range;

use super::backdrop::Backdrop;
use super::geometry::PlacedShape;
use super::palette::Rgb;

/// Samples per pixel side when anti-aliasing.
pub const SUPERSAMPLE: usize = 3;

/// Most objects a scene may hold (instance ids must fit with room to spare in a `u8`).
pub const MAX_OBJECTS: usize = 8;

/// How the samples of one pixel fall on the layers.
struct PixelCover {
    counts: [u16; MAX_OBJECTS + 1],
    owner: usize,
}

/// Visits the samples of pixel `(px, py)`, calling `on_sample(layer, x, y)` for each.
fn cover_pixel(
    shapes: &[PlacedShape],
    px: usize,
    py: usize,
    ss: usize,
    mut on_sample: impl FnMut(usize, f64, f64),
) -> PixelCover {
    debug_assert!(ss % 2 == 1 && shapes.len() <= MAX_OBJECTS);
    let mut counts = [0u16; MAX_OBJECTS + 1];
    let mut centre_layer = 0;
    for sy in 0..ss {
        for sx in 0..ss {
            let x = px as f64 + (sx as f64 + 0.5) / ss as f64;
            let y = py as f64 + (sy as f64 + 0.5) / ss as f64;
            let layer = shapes
                .iter()
                .rposition(|s| s.contains(x, y))
                .map_or(0, |i| i + 1);
            counts[layer] += 1;
            if sx == ss / 2 && sy == ss / 2 {
                centre_layer = layer;
            }
            on_sample(layer, x, y);
        }
    }
    let n = (ss * ss) as u16;
    let owner = counts
        .iter()
        .position(|c| 2 * c > n)
        .unwrap_or(centre_layer);
    PixelCover { counts, owner }
}

/// The owning layer of every pixel of a `size × size` image (row-major; 0 = background,
/// `i + 1` = object `i`).
#[cfg(test)]
pub fn owner_map(shapes: &[PlacedShape], size: usize, ss: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size * size);
    for py in 0..size {
        for px in 0..size {
            out.push(cover_pixel(shapes, px, py, ss, |_, _, _| {}).owner as u8);
        }
    }
    out
}

/// Recomputes the owners of the pixels in columns `xs` and rows `ys` of `owners` (a
/// `size × size` owner map), calling `on_change(old, new)` for every pixel of the region.
pub fn update_region(
    shapes: &[PlacedShape],
    size: usize,
    ss: usize,
    xs: Range<usize>,
    ys: Range<usize>,
    owners: &mut [u8],
    mut on_change: impl FnMut(u8, u8),
) {
    for py in ys {
        for px in xs.clone() {
            let new = cover_pixel(shapes, px, py, ss, |_, _, _| {}).owner as u8;
            let old = std::mem::replace(&mut owners[py * size + px], new);
            on_change(old, new);
        }
    }
}

/// How many pixels `shape` owns when drawn alone on a `size × size` image.
pub fn owned_pixels(shape: &PlacedShape, size: usize, ss: usize) -> usize {
    let (xs, ys) = shape.pixel_bounds(size);
    let shapes = std::slice::from_ref(shape);
    ys.flat_map(|py| xs.clone().map(move |px| (px, py)))
        .filter(|&(px, py)| cover_pixel(shapes, px, py, ss, |_, _, _| {}).owner == 1)
        .count()
}

/// The background alone at pixel `(px, py)`: the mean of the pattern over the pixel's samples.
pub fn background_pixel(backdrop: &Backdrop, px: usize, py: usize, ss: usize) -> [f32; 3] {
    let mut acc = [0f32; 3];
    for sy in 0..ss {
        for sx in 0..ss {
            let c = backdrop.sample(
                px as f64 + (sx as f64 + 0.5) / ss as f64,
                py as f64 + (sy as f64 + 0.5) / ss as f64,
            );
            for k in 0..3 {
                acc[k] += c[k];
            }
        }
    }
    acc.map(|v| v / (ss * ss) as f32)
}

/// Draws the scene: returns the RGB bytes (row-major, 3 per pixel) and the owner map.
pub fn composite(
    shapes: &[PlacedShape],
    colours: &[Rgb],
    backdrop: &Backdrop,
    size: usize,
    ss: usize,
) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(shapes.len(), colours.len());
    let n = (ss * ss) as f32;
    let mut rgb = Vec::with_capacity(size * size * 3);
    let mut owners = Vec::with_capacity(size * size);
    for py in 0..size {
        for px in 0..size {
            let mut bg = [0f32; 3];
            let cover = cover_pixel(shapes, px, py, ss, |_, x, y| {
                let c = backdrop.sample(x, y);
                for k in 0..3 {
                    bg[k] += c[k];
                }
            });
            let bg = bg.map(|v| v / n);
            let layer_colour = |layer: usize| -> [f32; 3] {
                if layer == 0 {
                    bg
                } else {
                    colours[layer - 1].map(|v| v as f32)
                }
            };
            let present: Vec<usize> = (0..=shapes.len())
                .filter(|l| cover.counts[*l] > 0)
                .collect();
            let colour = if present.len() == 2 && present[0] == 0 {
                // An object's outline over the background: blend by coverage.
                let mut c = [0f32; 3];
                for &l in &present {
                    let w = cover.counts[l] as f32 / n;
                    let lc = layer_colour(l);
                    for k in 0..3 {
                        c[k] += w * lc[k];
                    }
                }
                c
            } else {
                layer_colour(cover.owner)
            };
            rgb.extend(colour.map(|v| v.round().clamp(0.0, 255.0) as u8));
            owners.push(cover.owner as u8);
        }
    }
    (rgb, owners)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::geometry::{Placement, ShapeParams};
    use crate::shapes::vocab::{Background, Shape};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn square(cx: f64, cy: f64, size: f64) -> PlacedShape {
        PlacedShape::new(
            Shape::Square,
            ShapeParams::STANDARD,
            Placement {
                cx,
                cy,
                size,
                rotation: 0.0,
            },
        )
    }

    #[test]
    fn later_objects_occlude_earlier_ones() {
        let shapes = [square(6.0, 6.0, 8.0), square(10.0, 10.0, 8.0)];
        let owners = owner_map(&shapes, 16, 1);
        // First square covers x, y in 2..10, the second 6..14 and wins where they overlap.
        assert_eq!(owners[3 * 16 + 3], 1);
        assert_eq!(owners[7 * 16 + 7], 2);
        assert_eq!(owners[12 * 16 + 12], 2);
        assert_eq!(owners[0], 0);
        assert_eq!(owners.iter().filter(|o| **o == 1).count(), 64 - 16);
        assert_eq!(owners.iter().filter(|o| **o == 2).count(), 64);
    }

    #[test]
    fn region_updates_match_full_maps() {
        let a = [square(6.0, 6.0, 8.0)];
        // The second square spans x 6.8..13.8 and y 6.2..13.2: columns 7..=13 and rows
        // 6..=12 are owned by majority, except the corner pixel (13, 6) with 4 of 9 samples.
        let ab = [square(6.0, 6.0, 8.0), square(10.3, 9.7, 7.0)];
        let mut owners = owner_map(&a, 16, 3);
        let (xs, ys) = ab[1].pixel_bounds(16);
        assert_eq!((xs.clone(), ys.clone()), (5..16, 4..15));
        let mut changed = 0;
        update_region(&ab, 16, 3, xs, ys, &mut owners, |old, new| {
            changed += usize::from(old != new)
        });
        assert_eq!(owners, owner_map(&ab, 16, 3));
        assert_eq!(changed, 48);
        assert_eq!(owned_pixels(&ab[0], 16, 3), 64);
        assert_eq!(owned_pixels(&ab[1], 16, 3), 48);
        // Clipped by the frame.
        assert_eq!(owned_pixels(&square(0.0, 0.0, 8.0), 16, 1), 16);
    }

    #[test]
    fn majority_decides_edge_pixels() {
        // Left edge at x = 4.6: of pixel 4's sample columns (4.17, 4.5, 4.83) one is inside.
        let owners = owner_map(&[square(8.6, 8.0, 8.0)], 16, 3);
        assert_eq!(owners[8 * 16 + 4], 0);
        assert_eq!(owners[8 * 16 + 5], 1);
        // Left edge at x = 4.35: two columns inside.
        let owners = owner_map(&[square(8.35, 8.0, 8.0)], 16, 3);
        assert_eq!(owners[8 * 16 + 4], 1);
    }

    #[test]
    fn edge_pixels_blend_with_background_only() {
        let backdrop = Backdrop::random(Background::Plain, 16, &mut ChaCha8Rng::seed_from_u64(1));
        let bg = backdrop.primary;
        let red = [200u8, 20, 20];
        let blue = [20u8, 20, 200];
        let at =
            |rgb: &[u8], x: usize, y: usize| rgb[(y * 16 + x) * 3..(y * 16 + x) * 3 + 3].to_vec();
        let (rgb, _) = composite(&[square(8.6, 8.0, 8.0)], &[red], &backdrop, 16, 3);
        // One third red, two thirds background.
        let expect: Vec<u8> = (0..3)
            .map(|k| ((red[k] as f32 + 2.0 * bg[k] as f32) / 3.0).round() as u8)
            .collect();
        assert_eq!(at(&rgb, 4, 8), expect);
        assert_eq!(at(&rgb, 8, 8), red);
        assert_eq!(at(&rgb, 0, 0), bg);
        // Two objects meeting inside pixel 8 (red 2/3, blue 1/3): no blend.
        let two = [square(4.3, 8.0, 8.6), square(12.85, 8.0, 8.3)];
        let (rgb, owners) = composite(&two, &[red, blue], &backdrop, 16, 3);
        assert_eq!(owners[8 * 16 + 8], 1);
        assert_eq!(at(&rgb, 8, 8), red);
        // Red, background and blue columns in one pixel: no majority, the centre decides.
        let three = [square(4.2, 8.0, 8.4), square(12.8, 8.0, 8.4)];
        let (rgb, owners) = composite(&three, &[red, blue], &backdrop, 16, 3);
        assert_eq!(owners[8 * 16 + 8], 0);
        assert_eq!(at(&rgb, 8, 8), bg);
    }
}
