//! Publication figures drawn with plotters into PNG (RGB buffer, encoded by `image`) and SVG:
//! labelled image grids (layer × head small multiples, token grids, perturbation strips) and the
//! attention-mass and value-norm plots. Shared by the CLI and the window.

pub mod colormap;
pub mod font;
pub mod grid;
pub mod mass_plot;
pub mod value_norm_plot;

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::io::write_atomic;

pub use colormap::{colourise, value_range, viridis};
pub use grid::{ColourBar, ImageGrid, Tile};
pub use mass_plot::MassPlot;
pub use value_norm_plot::ValueNormPlot;

/// Result of drawing on a backend `DB`.
pub type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Largest side, in pixels, a figure may have.
pub const MAX_SIDE: u32 = 16_384;

/// Something drawable on any plotters backend.
pub trait Plot {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws the whole figure on `root` (already the figure's size).
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

/// Approximate drawn width in pixels of `s` at `px` pixels (DejaVu Sans: ~0.55 em per glyph).
pub(crate) fn text_width(s: &str, px: f64) -> i32 {
    (s.chars().count() as f64 * px * 0.55).ceil() as i32
}

fn draw_error(e: impl std::fmt::Display) -> Error {
    Error::Input(format!("cannot draw the figure: {e}"))
}

fn checked_size(plot: &impl Plot) -> Result<(u32, u32)> {
    let (w, h) = plot.size();
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(Error::Input(format!(
            "figure size {w}×{h} is outside 1..={MAX_SIDE} pixels per side"
        )));
    }
    Ok((w, h))
}

/// Renders a figure as RGB bytes (row-major), with its width and height.
pub fn render_rgb(plot: &impl Plot) -> Result<(Vec<u8>, u32, u32)> {
    font::ensure_fonts();
    let (w, h) = checked_size(plot)?;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        plot.draw(&root).map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    Ok((buf, w, h))
}

/// Renders a figure as an SVG document.
pub fn render_svg(plot: &impl Plot) -> Result<String> {
    font::ensure_fonts();
    let (w, h) = checked_size(plot)?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        plot.draw(&root).map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

/// Writes a figure as PNG, atomically.
pub fn write_png(plot: &impl Plot, path: &Path) -> Result<()> {
    let (rgb, w, h) = render_rgb(plot)?;
    crate::export::write_rgb_png(path, &rgb, w as usize, h as usize)
}

/// Writes a figure as SVG, atomically.
pub fn write_svg(plot: &impl Plot, path: &Path) -> Result<()> {
    write_atomic(path, render_svg(plot)?.as_bytes())
}
