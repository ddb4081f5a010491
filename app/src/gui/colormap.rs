//! Colour-map lookup tables (from `colorous`): the shader's LUT texture and CPU colouring of
//! thumbnails, with the same table so both agree.

use std::sync::OnceLock;

use super::settings::Colormap;

/// Entries per map.
pub const LUT_SIZE: usize = 256;

fn gradient(c: Colormap) -> (colorous::Gradient, bool) {
    match c {
        Colormap::Viridis => (colorous::VIRIDIS, false),
        Colormap::Magma => (colorous::MAGMA, false),
        Colormap::Inferno => (colorous::INFERNO, false),
        Colormap::Gray => (colorous::GREYS, true),
        Colormap::Diverging => (colorous::RED_BLUE, true),
    }
}

/// RGBA bytes, one row of [`LUT_SIZE`] entries per map in [`Colormap::ALL`] order.
pub fn lut_rgba() -> &'static [u8] {
    static LUT: OnceLock<Vec<u8>> = OnceLock::new();
    LUT.get_or_init(|| {
        let mut out = Vec::with_capacity(Colormap::ALL.len() * LUT_SIZE * 4);
        for c in Colormap::ALL {
            let (g, reversed) = gradient(c);
            for i in 0..LUT_SIZE {
                let t = i as f64 / (LUT_SIZE - 1) as f64;
                let col = g.eval_continuous(if reversed { 1.0 - t } else { t });
                out.extend([col.r, col.g, col.b, 255]);
            }
        }
        out
    })
}

/// Colour of `v` scaled from `lo..hi` onto the map.
pub fn colour(c: Colormap, v: f32, lo: f32, hi: f32) -> egui::Color32 {
    let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let i = (t * (LUT_SIZE - 1) as f32).round() as usize;
    let k = (c.index() as usize * LUT_SIZE + i) * 4;
    let l = lut_rgba();
    egui::Color32::from_rgb(l[k], l[k + 1], l[k + 2])
}

/// A map `[h·w]` as an image on the colour map.
pub fn colourise(
    c: Colormap,
    map: &[f32],
    w: usize,
    h: usize,
    lo: f32,
    hi: f32,
) -> egui::ColorImage {
    let pixels = map.iter().map(|&v| colour(c, v, lo, hi)).collect();
    egui::ColorImage::new([w, h], pixels)
}

/// Smallest and largest finite value (`(0, 1)` when there is none).
pub fn range(map: &[f32]) -> (f32, f32) {
    ditlens_core::figure::value_range([map])
}
