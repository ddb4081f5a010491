//! Generation quality: the fixed sample sheet (32 single-object prompts × seeds), each
//! image's dominant object colour by pixel count, its shape by the [`ShapeJudge`], and the
//! sheet picture.

use image::{Rgb, RgbImage};
use serde::Serialize;

use super::model::EmbeddedModel;
use super::pipeline::GenerateOptions;
use super::shape_judge::{ShapeJudge, JUDGE_SIZE};
use crate::error::{Error, Result};
use crate::shapes::colour_distance as distance;
use crate::shapes::Colour;
use crate::shapes::{BACKGROUNDS, COLOURS, SHAPES};

/// The sheet's prompts: every shape 4×, every colour 4×, every background kind 8×, with
/// no (colour, shape) pair repeated.
pub fn sheet_prompts() -> Vec<(String, &'static str, &'static str)> {
    (0..32)
        .map(|i| {
            let (shape, colour) = (SHAPES[i % 8], COLOURS[(i % 8 + i / 8 * 3) % 8]);
            let bg = BACKGROUNDS[(i + i / 8) % 4];
            (
                format!("a {colour} {shape} on a {bg} background"),
                colour,
                shape,
            )
        })
        .collect()
}

/// Object pixels are within this RGB distance of a named colour's reference shade (background
/// colours keep at least 90 from every object colour).
pub const OBJECT_COLOUR_RADIUS: f32 = 70.0;

/// The named colour covering the most pixels of an image, if any pixel is near a named colour.
pub fn dominant_colour(rgb: &[u8]) -> Option<Colour> {
    let mut counts = [0usize; 8];
    for px in rgb.chunks_exact(3) {
        let px = [px[0], px[1], px[2]];
        let c = Colour::nearest(px);
        if distance(px, c.rgb()) <= OBJECT_COLOUR_RADIUS {
            counts[c as usize] += 1;
        }
    }
    let (best, n) = counts
        .iter()
        .enumerate()
        .max_by_key(|(_, n)| **n)
        .map(|(i, n)| (i, *n))?;
    (n > 0).then(|| Colour::ALL[best])
}

/// One generated cell of the sheet.
#[derive(Debug, Clone, Serialize)]
pub struct SampleScore {
    pub prompt: String,
    pub seed: u64,
    pub colour: String,
    pub shape: String,
    pub dominant_colour: Option<String>,
    pub judged_shape: String,
    pub colour_ok: bool,
    pub shape_ok: bool,
}

/// The sheet's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SheetReport {
    pub colour_rate: f64,
    pub shape_rate: f64,
    pub samples: Vec<SampleScore>,
    pub steps: usize,
    pub guidance: f64,
}

/// Generates the sheet (`seeds` per prompt) and scores it. Returns the report and the images
/// in prompt-major order. `on_image(done, total)` reports progress.
pub fn sample_sheet(
    model: &EmbeddedModel,
    judge: &ShapeJudge,
    seeds: &[u64],
    opts: &GenerateOptions,
    mut on_image: impl FnMut(usize, usize),
) -> Result<(SheetReport, Vec<Vec<u8>>)> {
    let size = model.cfg.image_size;
    if size < JUDGE_SIZE || !size.is_multiple_of(JUDGE_SIZE) {
        return Err(Error::Input(format!(
            "the shape judge reads {JUDGE_SIZE}² images; this model makes {size}², not a multiple"
        )));
    }
    let prompts = sheet_prompts();
    let total = prompts.len() * seeds.len();
    let (mut samples, mut images) = (vec![], vec![]);
    for (prompt, colour, shape) in &prompts {
        for &seed in seeds {
            let g = model.generate(
                prompt,
                &GenerateOptions {
                    seed,
                    ..opts.clone()
                },
                |_, _, _| true,
            )?;
            let small = box_downscale(&g.rgb, size, JUDGE_SIZE);
            let judged = judge.classify(std::slice::from_ref(&small), model.device())?[0];
            let judged_name = judged.map_or("none", |s| s.name());
            let dom = dominant_colour(&g.rgb);
            samples.push(SampleScore {
                prompt: prompt.clone(),
                seed,
                colour: colour.to_string(),
                shape: shape.to_string(),
                dominant_colour: dom.map(|c| c.name().to_string()),
                judged_shape: judged_name.to_string(),
                colour_ok: dom.is_some_and(|c| c.name() == *colour),
                shape_ok: judged_name == *shape,
            });
            images.push(g.rgb);
            on_image(images.len(), total);
        }
    }
    let rate = |f: fn(&SampleScore) -> bool| {
        samples.iter().filter(|s| f(s)).count() as f64 / samples.len().max(1) as f64
    };
    Ok((
        SheetReport {
            colour_rate: rate(|s| s.colour_ok),
            shape_rate: rate(|s| s.shape_ok),
            samples,
            steps: opts.steps,
            guidance: opts.guidance,
        },
        images,
    ))
}

/// Area-averages a square RGB image of side `size` to side `to` (`size` a multiple of `to`), as
/// the renderer's antialiasing would draw the scene at `to`.
pub fn box_downscale(rgb: &[u8], size: usize, to: usize) -> Vec<u8> {
    let f = size / to;
    let mut out = vec![0u8; to * to * 3];
    for y in 0..to {
        for x in 0..to {
            for c in 0..3 {
                let mut sum = 0u32;
                for dy in 0..f {
                    for dx in 0..f {
                        sum += rgb[((y * f + dy) * size + x * f + dx) * 3 + c] as u32;
                    }
                }
                out[(y * to + x) * 3 + c] = ((sum as f32 / (f * f) as f32).round()) as u8;
            }
        }
    }
    out
}

/// Lays square RGB images out in a grid, `cols` wide, each scaled by `zoom` (nearest), with
/// a 2-pixel white gutter.
pub fn grid_image(images: &[Vec<u8>], size: usize, cols: usize, zoom: usize) -> RgbImage {
    let rows = images.len().div_ceil(cols.max(1));
    let cell = size * zoom + 2;
    let mut out = RgbImage::from_pixel(
        (cols * cell + 2) as u32,
        (rows * cell + 2) as u32,
        Rgb([255, 255, 255]),
    );
    for (k, im) in images.iter().enumerate() {
        let (ox, oy) = ((k % cols) * cell + 2, (k / cols) * cell + 2);
        for y in 0..size * zoom {
            for x in 0..size * zoom {
                let i = ((y / zoom) * size + x / zoom) * 3;
                if let Some(p) = im.get(i..i + 3) {
                    out.put_pixel((ox + x) as u32, (oy + y) as u32, Rgb([p[0], p[1], p[2]]));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::{Scene, SceneConfig};

    #[test]
    fn box_downscale_averages_blocks() {
        // 4×4 → 2×2: each output pixel is the mean of its 2×2 block, per channel.
        let rgb: Vec<u8> = (0..16u8).flat_map(|i| [i * 10, 255 - i * 10, 7]).collect();
        let out = box_downscale(&rgb, 4, 2);
        // Top-left block holds pixels 0, 1, 4, 5: red mean (0+10+40+50)/4 = 25.
        assert_eq!(&out[0..3], &[25, 230, 7]);
        // Bottom-right block: pixels 10, 11, 14, 15 → (100+110+140+150)/4 = 125.
        assert_eq!(&out[9..12], &[125, 130, 7]);
        assert_eq!(box_downscale(&rgb, 4, 4), rgb);
    }

    #[test]
    fn prompts_cover_the_vocabulary_evenly() {
        let p = sheet_prompts();
        assert_eq!(p.len(), 32);
        for s in SHAPES {
            assert_eq!(p.iter().filter(|x| x.2 == s).count(), 4);
        }
        for c in COLOURS {
            assert_eq!(p.iter().filter(|x| x.1 == c).count(), 4, "{c}");
        }
        let mut pairs: Vec<_> = p.iter().map(|x| (x.1, x.2)).collect();
        pairs.sort();
        pairs.dedup();
        assert_eq!(pairs.len(), 32);
    }

    #[test]
    fn dominant_colour_finds_the_object_of_rendered_scenes() {
        let cfg = SceneConfig {
            min_objects: 1,
            max_objects: 1,
            ..SceneConfig::with_size(32)
        };
        let mut right = 0;
        for seed in 0..100 {
            let s = Scene::generate(&cfg, seed).unwrap();
            right += (dominant_colour(&s.rgb) == Some(s.objects[0].colour)) as usize;
        }
        assert!(right >= 95, "{right}/100");
        assert_eq!(dominant_colour(&[128, 120, 110].repeat(16)), None);
    }

    #[test]
    fn grid_places_cells() {
        let a = [255u8, 0, 0].repeat(4);
        let g = grid_image(&[a.clone(), a], 2, 2, 3);
        assert_eq!(g.dimensions(), (2 * 8 + 2, 8 + 2));
        assert_eq!(g.get_pixel(2, 2).0, [255, 0, 0]);
        assert_eq!(g.get_pixel(0, 0).0, [255, 255, 255]);
    }
}
