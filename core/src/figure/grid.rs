//! A labelled grid of RGB tiles: title, column and row labels, a caption under each tile, an
//! optional highlight, and a colour bar. Layer × head small multiples, token grids, PCA grids and
//! the perturbation strip are all this figure.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::colormap::viridis;
use super::font::FAMILY;
use super::{text_width, DrawResult, Plot};
use crate::error::{Error, Result};

/// One picture of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Tile {
    /// Row-major RGB bytes, `width * height * 3`.
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
    /// Lines written under the tile.
    pub caption: Vec<String>,
    /// Draw a red frame around the tile.
    pub highlight: bool,
}

impl Tile {
    /// A tile without caption; checks the buffer size.
    pub fn new(rgb: Vec<u8>, width: usize, height: usize) -> Result<Self> {
        if width == 0 || height == 0 || rgb.len() != width * height * 3 {
            return Err(Error::Input(format!(
                "tile buffer of {} bytes does not hold {width}×{height} RGB pixels",
                rgb.len()
            )));
        }
        Ok(Self {
            rgb,
            width,
            height,
            caption: vec![],
            highlight: false,
        })
    }

    /// The same tile with caption lines.
    pub fn with_caption(mut self, lines: Vec<String>) -> Self {
        self.caption = lines;
        self
    }
}

/// The value range the tiles' colours stand for (viridis from `lo` to `hi`).
#[derive(Debug, Clone, PartialEq)]
pub struct ColourBar {
    pub lo: f32,
    pub hi: f32,
    pub label: String,
}

/// Tiles in rows of `cols`, with labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageGrid {
    pub title: String,
    /// Row-major; `None` leaves a cell empty.
    pub tiles: Vec<Option<Tile>>,
    pub cols: usize,
    /// Drawn width of a tile in pixels (height follows the first tile's aspect).
    pub tile_px: u32,
    /// One label per row, left of it (may be empty).
    pub row_labels: Vec<String>,
    /// One label per column, above it (may be empty).
    pub col_labels: Vec<String>,
    pub colour_bar: Option<ColourBar>,
    /// A line under the grid (protocol, units…).
    pub note: Option<String>,
}

const MARGIN: i32 = 12;
const GAP: i32 = 6;
const FONT: f64 = 14.0;
const TITLE_FONT: f64 = 17.0;
const LINE: i32 = 17;

impl ImageGrid {
    /// A grid with no labels, colour bar or note.
    pub fn new(title: impl Into<String>, tiles: Vec<Option<Tile>>, cols: usize) -> Self {
        Self {
            title: title.into(),
            tiles,
            cols: cols.max(1),
            tile_px: 96,
            row_labels: vec![],
            col_labels: vec![],
            colour_bar: None,
            note: None,
        }
    }

    fn rows(&self) -> usize {
        self.tiles.len().div_ceil(self.cols).max(1)
    }

    fn tile_h(&self) -> i32 {
        let t = self.tiles.iter().flatten().next();
        let (w, h) = t.map_or((1, 1), |t| (t.width, t.height));
        ((self.tile_px as f64) * h as f64 / w as f64)
            .round()
            .max(1.0) as i32
    }

    fn caption_lines(&self) -> i32 {
        self.tiles
            .iter()
            .flatten()
            .map(|t| t.caption.len())
            .max()
            .unwrap_or(0) as i32
    }

    fn row_label_w(&self) -> i32 {
        self.row_labels
            .iter()
            .map(|l| text_width(l, FONT) + GAP)
            .max()
            .unwrap_or(0)
    }

    fn top(&self) -> i32 {
        let title = if self.title.is_empty() { 0 } else { LINE + 10 };
        let cols = if self.col_labels.is_empty() {
            0
        } else {
            LINE + 2
        };
        MARGIN + title + cols
    }

    fn cell(&self) -> (i32, i32) {
        let w = self.tile_px as i32 + GAP;
        let h = self.tile_h() + self.caption_lines() * LINE + GAP + 4;
        (w, h)
    }

    fn bar_w(&self) -> i32 {
        match &self.colour_bar {
            Some(b) => {
                let ticks = text_width(&tick(b.lo), FONT).max(text_width(&tick(b.hi), FONT));
                16 + GAP + ticks.max(text_width(&b.label, FONT) - 16) + 2 * GAP
            }
            None => 0,
        }
    }
}

/// Tick text of a colour-bar value.
fn tick(v: f32) -> String {
    if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e4) {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

fn style(px: f64, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle::from((FAMILY, px).into_font())
        .color(&BLACK)
        .pos(Pos::new(h, v))
}

/// Draws `rgb` (`w × h`) scaled to the rectangle at (`x0`, `y0`) of size `tw × th`.
pub(crate) fn draw_pixels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    rgb: &[u8],
    (w, h): (usize, usize),
    (x0, y0): (i32, i32),
    (tw, th): (i32, i32),
) -> DrawResult<DB> {
    for y in 0..h {
        let ya = y0 + (y as i32 * th) / h as i32;
        let yb = y0 + ((y as i32 + 1) * th) / h as i32;
        for x in 0..w {
            let xa = x0 + (x as i32 * tw) / w as i32;
            let xb = x0 + ((x as i32 + 1) * tw) / w as i32;
            let i = 3 * (y * w + x);
            let c = RGBColor(rgb[i], rgb[i + 1], rgb[i + 2]);
            root.draw(&Rectangle::new([(xa, ya), (xb, yb)], c.filled()))?;
        }
    }
    Ok(())
}

impl Plot for ImageGrid {
    fn size(&self) -> (u32, u32) {
        let (cw, ch) = self.cell();
        let w = MARGIN + self.row_label_w() + cw * self.cols as i32 + self.bar_w() + MARGIN;
        let title = 2 * MARGIN + text_width(&self.title, TITLE_FONT);
        let note_w = self
            .note
            .as_ref()
            .map_or(0, |n| 2 * MARGIN + text_width(n, FONT - 2.0));
        let w = w.max(title).max(note_w);
        let note = if self.note.is_some() { LINE + 4 } else { 0 };
        let h = self.top() + ch * self.rows() as i32 + note + MARGIN;
        (w.max(1) as u32, h.max(1) as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let (cw, ch) = self.cell();
        let (tw, th) = (self.tile_px as i32, self.tile_h());
        let left = MARGIN + self.row_label_w();
        let top = self.top();
        if !self.title.is_empty() {
            root.draw(&Text::new(
                self.title.clone(),
                (MARGIN, MARGIN),
                style(TITLE_FONT, HPos::Left, VPos::Top),
            ))?;
        }
        for (c, label) in self.col_labels.iter().enumerate().take(self.cols) {
            let x = left + c as i32 * cw + tw / 2;
            root.draw(&Text::new(
                label.clone(),
                (x, top - 4),
                style(FONT, HPos::Center, VPos::Bottom),
            ))?;
        }
        for (r, label) in self.row_labels.iter().enumerate().take(self.rows()) {
            let y = top + r as i32 * ch + th / 2;
            root.draw(&Text::new(
                label.clone(),
                (left - GAP, y),
                style(FONT, HPos::Right, VPos::Center),
            ))?;
        }
        for (i, tile) in self.tiles.iter().enumerate() {
            let Some(t) = tile else { continue };
            let (r, c) = ((i / self.cols) as i32, (i % self.cols) as i32);
            let (x, y) = (left + c * cw, top + r * ch);
            draw_pixels(root, &t.rgb, (t.width, t.height), (x, y), (tw, th))?;
            if t.highlight {
                let red = RGBColor(220, 20, 20).stroke_width(3);
                root.draw(&Rectangle::new(
                    [(x - 2, y - 2), (x + tw + 1, y + th + 1)],
                    red,
                ))?;
            }
            for (k, line) in t.caption.iter().enumerate() {
                root.draw(&Text::new(
                    line.clone(),
                    (x + tw / 2, y + th + 6 + k as i32 * LINE),
                    style(FONT, HPos::Center, VPos::Top),
                ))?;
            }
        }
        if let Some(bar) = &self.colour_bar {
            let x = left + cw * self.cols as i32 + GAP;
            let height = (ch * self.rows() as i32 - GAP - self.caption_lines() * LINE).max(th);
            let y0 = top + LINE;
            let bh = (height - LINE).max(16);
            root.draw(&Text::new(
                bar.label.clone(),
                (x, top),
                style(FONT, HPos::Left, VPos::Top),
            ))?;
            let steps = 64;
            for s in 0..steps {
                let ya = y0 + (s * bh) / steps;
                let yb = y0 + ((s + 1) * bh) / steps;
                let [r, g, b] = viridis(1.0 - (s as f32 + 0.5) / steps as f32);
                root.draw(&Rectangle::new(
                    [(x, ya), (x + 16, yb)],
                    RGBColor(r, g, b).filled(),
                ))?;
            }
            root.draw(&Rectangle::new(
                [(x, y0), (x + 16, y0 + bh)],
                BLACK.stroke_width(1),
            ))?;
            let mid = 0.5 * (bar.lo + bar.hi);
            for (v, y) in [(bar.hi, y0), (mid, y0 + bh / 2), (bar.lo, y0 + bh)] {
                root.draw(&Text::new(
                    tick(v),
                    (x + 16 + GAP, y),
                    style(FONT, HPos::Left, VPos::Center),
                ))?;
            }
        }
        if let Some(note) = &self.note {
            let y = top + ch * self.rows() as i32 + 2;
            root.draw(&Text::new(
                note.clone(),
                (MARGIN, y),
                style(FONT - 2.0, HPos::Left, VPos::Top),
            ))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figure::{render_rgb, render_svg};

    fn grid() -> ImageGrid {
        let red = Tile::new([255, 0, 0].repeat(4), 2, 2).unwrap();
        let blue = Tile::new([0, 0, 255].repeat(4), 2, 2)
            .unwrap()
            .with_caption(vec!["blue".into()]);
        let mut g = ImageGrid::new("two tiles", vec![Some(red), Some(blue)], 2);
        g.tile_px = 40;
        g.row_labels = vec!["layer 0".into()];
        g.col_labels = vec!["head 0".into(), "head 1".into()];
        g.colour_bar = Some(ColourBar {
            lo: 0.0,
            hi: 0.25,
            label: "I2T".into(),
        });
        g
    }

    #[test]
    fn tiles_land_where_the_layout_puts_them() {
        let g = grid();
        let (rgb, w, h) = render_rgb(&g).unwrap();
        assert_eq!((w, h), g.size());
        let px = |x: i32, y: i32| {
            let i = 3 * (y as usize * w as usize + x as usize);
            [rgb[i], rgb[i + 1], rgb[i + 2]]
        };
        let (left, top) = (MARGIN + g.row_label_w(), g.top());
        assert_eq!(px(left + 20, top + 20), [255, 0, 0]);
        assert_eq!(px(left + 40 + GAP + 20, top + 20), [0, 0, 255]);
        // Text was drawn: some pixels of the title row are dark.
        let dark = (0..w as i32).any(|x| px(x, MARGIN + 8).iter().all(|&c| c < 100));
        assert!(dark, "title text is rendered");
    }

    #[test]
    fn svg_has_labels() {
        let svg = render_svg(&grid()).unwrap();
        assert!(svg.starts_with("<svg"));
        for s in ["two tiles", "layer 0", "head 1", "blue", "I2T", "0.250"] {
            assert!(svg.contains(s), "{s} missing");
        }
    }

    #[test]
    fn bad_tile_is_an_error() {
        assert!(Tile::new(vec![0; 5], 1, 2).is_err());
    }
}
