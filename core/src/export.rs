//! Mask exports shared by the CLI and the window: 8-bit label PNG, colour overlay, one binary
//! PNG per class; PNGs encoded in memory and written atomically.

use std::io::Cursor;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::write_atomic;

/// A distinct colour per class index (tab10, then a golden-angle hue walk).
pub fn class_colour(i: usize) -> [u8; 3] {
    const TAB10: [[u8; 3]; 10] = [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
    ];
    if i < TAB10.len() {
        return TAB10[i];
    }
    crate::shapes::hsv(i as f32 * 137.508, 0.65, 0.9)
}

fn png_bytes<P: image::PixelWithColorType>(
    img: &image::ImageBuffer<P, Vec<P::Subpixel>>,
) -> Result<Vec<u8>>
where
    [P::Subpixel]: image::EncodableLayout,
{
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| Error::Input(format!("cannot encode PNG: {e}")))?;
    Ok(buf.into_inner())
}

fn check(len: usize, w: usize, h: usize) -> Result<()> {
    if len != w * h {
        return Err(Error::Input(format!(
            "{len} labels do not fill a {w}×{h} image"
        )));
    }
    Ok(())
}

/// Writes an RGB image as PNG.
pub fn write_rgb_png(path: &Path, rgb: &[u8], w: usize, h: usize) -> Result<()> {
    let img = image::RgbImage::from_raw(w as u32, h as u32, rgb.to_vec())
        .ok_or_else(|| Error::Input(format!("buffer does not hold {w}×{h} RGB pixels")))?;
    write_atomic(path, &png_bytes(&img)?)
}

/// Writes class indices as an 8-bit grayscale PNG.
pub fn write_label_png(path: &Path, labels: &[u8], w: usize, h: usize) -> Result<()> {
    check(labels.len(), w, h)?;
    let img = image::GrayImage::from_raw(w as u32, h as u32, labels.to_vec())
        .ok_or_else(|| Error::Input("label buffer size".into()))?;
    write_atomic(path, &png_bytes(&img)?)
}

/// The image with each class's colour blended in at `alpha`.
pub fn overlay(rgb: &[u8], labels: &[u8], alpha: f32) -> Vec<u8> {
    let mut out = rgb.to_vec();
    for (i, &l) in labels.iter().enumerate() {
        if l == 255 {
            continue;
        }
        let c = class_colour(l as usize);
        for k in 0..3 {
            let v = out[3 * i + k] as f32 * (1.0 - alpha) + c[k] as f32 * alpha;
            out[3 * i + k] = v.round() as u8;
        }
    }
    out
}

/// Writes the colour overlay PNG.
pub fn write_overlay_png(path: &Path, rgb: &[u8], labels: &[u8], w: usize, h: usize) -> Result<()> {
    check(labels.len(), w, h)?;
    write_rgb_png(path, &overlay(rgb, labels, 0.55), w, h)
}

/// Writes `DIR/NN_CLASS.png`, a binary mask (0/255) per class.
pub fn write_class_pngs(
    dir: &Path,
    labels: &[u8],
    w: usize,
    h: usize,
    classes: &[String],
) -> Result<Vec<std::path::PathBuf>> {
    check(labels.len(), w, h)?;
    let mut paths = vec![];
    for (i, c) in classes.iter().enumerate() {
        let mask: Vec<u8> = labels
            .iter()
            .map(|&l| if l as usize == i { 255 } else { 0 })
            .collect();
        let safe: String = c
            .chars()
            .map(|ch| if ch.is_alphanumeric() { ch } else { '_' })
            .collect();
        let p = dir.join(format!("{i:02}_{safe}.png"));
        write_label_png(&p, &mask, w, h)?;
        paths.push(p);
    }
    Ok(paths)
}

/// Reads an image file as RGB (alpha dropped), with a clear error for unreadable files.
pub fn read_rgb(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
    let img = image::open(path)
        .map_err(|e| Error::Input(format!("cannot read image {}: {e}", path.display())))?;
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    Ok((rgb.into_raw(), w, h))
}
