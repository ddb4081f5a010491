//! Layer × head small multiples: one GPU texture per cell, re-uploaded only when the grid's data
//! or colour map changes; drawn with one painter pass and one click target.

use std::sync::Arc;

use super::colormap::colourise;
use super::settings::Colormap;
use super::views::GridData;

/// Thumbnail textures of the current grid.
#[derive(Default)]
pub struct Thumbs {
    key: Option<(u64, Colormap)>,
    cells: Vec<egui::TextureHandle>,
    /// Texture uploads so far (each cell counts once).
    pub uploads: u64,
}

/// A click on a cell: (layer, head), `None` head = the head-mean column.
pub type Pick = (usize, Option<usize>);

impl Thumbs {
    fn sync(&mut self, ctx: &egui::Context, grid: &GridData, cmap: Colormap) {
        if self.key == Some((grid.version, cmap)) {
            return;
        }
        self.key = Some((grid.version, cmap));
        let cols = grid.heads + 1;
        let n = grid.layers * cols;
        let mut i = 0;
        for row in &grid.maps {
            for m in row {
                let img = colourise(cmap, m, grid.width, grid.height, grid.lo, grid.hi);
                if let Some(t) = self.cells.get_mut(i) {
                    t.set(img, egui::TextureOptions::NEAREST);
                } else {
                    self.cells.push(ctx.load_texture(
                        format!("thumb{i}"),
                        img,
                        egui::TextureOptions::NEAREST,
                    ));
                }
                self.uploads += 1;
                i += 1;
            }
        }
        self.cells.truncate(n.min(i));
    }

    /// Draws the grid (rows = layers, columns = heads then the mean) and returns a clicked cell.
    pub fn show(
        &mut self,
        ui: &mut egui::Ui,
        grid: &Arc<GridData>,
        cmap: Colormap,
        selected: Pick,
    ) -> Option<Pick> {
        self.sync(ui.ctx(), grid, cmap);
        let cols = grid.heads + 1;
        let label_w = 22.0;
        let head_h = 14.0;
        let cell = ((ui.available_width() - label_w) / cols as f32).clamp(8.0, 64.0);
        let size = egui::vec2(
            label_w + cell * cols as f32,
            head_h + cell * grid.layers as f32,
        );
        let (rect, resp) = ui.allocate_exact_size(size, egui::Sense::click());
        let painter = ui.painter_at(rect);
        let font = egui::FontId::proportional(10.0);
        let text = ui.visuals().text_color();
        let origin = rect.min + egui::vec2(label_w, head_h);
        for c in 0..cols {
            let label = if c == grid.heads {
                "μ".to_string()
            } else {
                c.to_string()
            };
            painter.text(
                origin + egui::vec2((c as f32 + 0.5) * cell, -head_h / 2.0),
                egui::Align2::CENTER_CENTER,
                label,
                font.clone(),
                text,
            );
        }
        let uv = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
        for l in 0..grid.layers {
            painter.text(
                egui::pos2(
                    rect.min.x + label_w / 2.0,
                    origin.y + (l as f32 + 0.5) * cell,
                ),
                egui::Align2::CENTER_CENTER,
                l.to_string(),
                font.clone(),
                text,
            );
            for c in 0..cols {
                let Some(t) = self.cells.get(l * cols + c) else {
                    continue;
                };
                let r = egui::Rect::from_min_size(
                    origin + egui::vec2(c as f32 * cell, l as f32 * cell),
                    egui::vec2(cell, cell),
                )
                .shrink(0.5);
                painter.image(t.id(), r, uv, egui::Color32::WHITE);
            }
        }
        let (sl, sh) = selected;
        let sc = sh.unwrap_or(grid.heads);
        if sl < grid.layers {
            let r = egui::Rect::from_min_size(
                origin + egui::vec2(sc as f32 * cell, sl as f32 * cell),
                egui::vec2(cell, cell),
            );
            painter.rect_stroke(
                r,
                0.0,
                egui::Stroke::new(2.0, egui::Color32::from_rgb(255, 80, 80)),
                egui::StrokeKind::Inside,
            );
        }
        let pos = resp.interact_pointer_pos().filter(|_| resp.clicked())?;
        let d = pos - origin;
        if d.x < 0.0 || d.y < 0.0 {
            return None;
        }
        let (c, l) = ((d.x / cell) as usize, (d.y / cell) as usize);
        (l < grid.layers && c < cols).then_some((l, (c < grid.heads).then_some(c)))
    }
}
