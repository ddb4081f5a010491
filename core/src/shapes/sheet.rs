//! Contact sheets: scenes beside their colourised class maps, for looking at the data.

use image::{Rgb as Pixel, RgbImage};

use super::palette::Rgb;
use super::scene::Scene;

/// Display colour of each class index (0 background, then the shapes in vocabulary order).
pub const CLASS_COLOURS: [Rgb; 9] = [
    [24, 24, 24],
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
];

/// The class map of `scene` drawn in [`CLASS_COLOURS`].
pub fn colourise_labels(scene: &Scene) -> RgbImage {
    let s = scene.size as u32;
    RgbImage::from_fn(s, s, |x, y| {
        let class = scene.labels[(y * s + x) as usize] as usize;
        Pixel(CLASS_COLOURS[class.min(CLASS_COLOURS.len() - 1)])
    })
}

/// A grid of cells, `columns` wide, each the scene image and its class map side by side,
/// every pixel enlarged `scale` times.
pub fn contact_sheet(scenes: &[Scene], columns: usize, scale: u32) -> RgbImage {
    let columns = columns.max(1);
    let scale = scale.max(1);
    let side = scenes.iter().map(|s| s.size as u32).max().unwrap_or(0) * scale;
    let (gap, pad) = (2 * scale, 6 * scale);
    let cell_w = 2 * side + gap;
    let rows = scenes.len().div_ceil(columns) as u32;
    let width = columns as u32 * (cell_w + pad) + pad;
    let height = rows * (side + pad) + pad;
    let mut sheet = RgbImage::from_pixel(width, height, Pixel([255, 255, 255]));
    for (k, scene) in scenes.iter().enumerate() {
        let x0 = pad + (k % columns) as u32 * (cell_w + pad);
        let y0 = pad + (k / columns) as u32 * (side + pad);
        let labels = colourise_labels(scene);
        let image = scene.rgb_image();
        for (dx, img) in [(0, &image), (side + gap, &labels)] {
            for (x, y, p) in img.enumerate_pixels() {
                for (sx, sy) in (0..scale).flat_map(|a| (0..scale).map(move |b| (a, b))) {
                    sheet.put_pixel(x0 + dx + x * scale + sx, y0 + y * scale + sy, *p);
                }
            }
        }
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::scene::SceneConfig;

    #[test]
    fn sheet_layout_and_label_colours() {
        let config = SceneConfig::with_size(32);
        let scenes: Vec<Scene> = (0..5)
            .map(|s| Scene::generate(&config, s).unwrap())
            .collect();
        let sheet = contact_sheet(&scenes, 2, 2);
        // 2 columns of (2 * 64 + 4 gap + 12 pad) + 12, 3 rows of (64 + 12) + 12.
        assert_eq!(sheet.dimensions(), (2 * 144 + 12, 3 * 76 + 12));
        let labels = colourise_labels(&scenes[0]);
        for (i, p) in labels.pixels().enumerate() {
            assert_eq!(p.0, CLASS_COLOURS[scenes[0].labels[i] as usize]);
        }
        // The first cell's image sits at the padding offset, enlarged.
        assert_eq!(sheet.get_pixel(12, 12).0, scenes[0].pixel(0, 0));
        assert_eq!(sheet.get_pixel(13, 13).0, scenes[0].pixel(0, 0));
    }
}
