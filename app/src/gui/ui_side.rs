//! The right panel: layer × head small multiples of the selected tokens, and the plots.

use super::app::ExplorerApp;
use super::plots;

impl ExplorerApp {
    pub(super) fn side(&mut self, ui: &mut egui::Ui) {
        egui::Panel::right("side")
            .resizable(true)
            .default_size(380.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    if self.settings.show_grid {
                        self.grid_section(ui);
                    }
                    if self.settings.show_plots {
                        self.plot_section(ui);
                    }
                });
            });
    }

    fn grid_section(&mut self, ui: &mut egui::Ui) {
        let kind = if self.settings.t2i { "T2I" } else { "I2T" };
        ui.label(egui::RichText::new(format!("Layer × head, {kind} (click to select)")).strong());
        let Some(grid) = self.views.grid.clone() else {
            ui.label("select a token after a generation or analysis");
            return;
        };
        let sel = (self.session.selection.layer, self.session.selection.head);
        if let Some((l, h)) = self.thumbs.show(ui, &grid, self.settings.colormap, sel) {
            self.session.selection.layer = l;
            self.session.selection.head = h;
        }
        ui.label(format!("one scale: {:.4} … {:.4}", grid.lo, grid.hi));
    }

    fn plot_section(&mut self, ui: &mut egui::Ui) {
        let layer = self.session.selection.layer;
        let mut pick = None;
        if let Some(m) = &self.views.mass {
            pick = pick.or(plots::mass(ui, m, layer));
        }
        if let Some(v) = &self.views.norms {
            pick = pick.or(plots::value_norms(ui, v, layer));
        }
        if let Some(s) = &self.session.layer_scores {
            pick = pick.or(plots::miou(ui, s, layer));
        }
        if let Some(l) = pick {
            self.session.selection.layer = l;
        }
    }
}
