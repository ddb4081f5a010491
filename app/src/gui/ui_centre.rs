//! The centre: the large map over the image (shader), masks with a legend, the perturbation
//! side by side, and the PCA view.

use ditlens_core::export::{class_colour, overlay};

use super::app::ExplorerApp;
use super::colormap;
use super::map_shader::{self, MapStyle};
use super::protocol::{Command, Picture};
use super::settings::CentreView;
use super::textures::{color_image, hash_version};

/// Map-shader slot of the large map.
const MAIN_SLOT: u64 = 1;

/// Largest square that fits, leaving `reserve` points below.
fn square(ui: &egui::Ui, reserve: f32) -> f32 {
    let a = ui.available_size();
    a.x.min(a.y - reserve).max(64.0)
}

impl ExplorerApp {
    pub(super) fn centre(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let c = &mut self.settings.centre;
            ui.selectable_value(c, CentreView::Map, "Map");
            ui.selectable_value(c, CentreView::Segment, "Segment");
            ui.selectable_value(c, CentreView::Perturb, "Perturb");
            ui.selectable_value(c, CentreView::Pca, "PCA");
        });
        ui.separator();
        match self.settings.centre {
            CentreView::Map => self.map_view(ui),
            CentreView::Segment => self.segment_view(ui),
            CentreView::Perturb => self.perturb_view(ui),
            CentreView::Pca => self.pca_view(ui),
        }
    }

    fn picture_texture(
        &mut self,
        ui: &egui::Ui,
        name: &str,
        p: &Picture,
        version: u64,
    ) -> egui::TextureId {
        // Label maps stay crisp; pictures follow the display filter.
        let nearest = !self.settings.bilinear || matches!(name, "masks" | "proposals" | "truth");
        self.textures
            .get(ui.ctx(), name, version, nearest, || {
                color_image(&p.rgb, p.width, p.height)
            })
            .id()
    }

    fn map_view(&mut self, ui: &mut egui::Ui) {
        let Some(p) = self.session.picture.clone() else {
            ui.label("Generate an image, drop a picture, or draw a sample scene.");
            return;
        };
        let version = self.session.picture_version * 2 + u64::from(self.settings.bilinear);
        let tex = self.picture_texture(ui, "picture", &p, version);
        ui.horizontal_top(|ui| {
            ui.vertical(|ui| {
                let side = square(ui, 70.0).min(ui.available_width() - 170.0).max(64.0);
                let (rect, resp) =
                    ui.allocate_exact_size(egui::vec2(side, side), egui::Sense::click());
                let uv = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
                ui.painter().image(tex, rect, uv, egui::Color32::WHITE);
                self.draw_map(ui, rect);
                self.map_click(ui, rect, &resp);
                self.map_caption(ui);
            });
            self.ranking(ui);
        });
    }

    fn draw_map(&mut self, ui: &mut egui::Ui, rect: egui::Rect) {
        let Some(map) = self.views.map.clone() else {
            return;
        };
        let (lo, hi) = colormap::range(&map.values);
        let style = MapStyle {
            colormap: self.settings.colormap,
            opacity: self.settings.opacity,
            bilinear: self.settings.bilinear,
            lo,
            hi,
        };
        if self.shader {
            map_shader::paint(ui, rect, MAIN_SLOT, &map, style);
        } else {
            // No wgpu renderer: the same colours from a CPU texture.
            let img =
                colormap::colourise(style.colormap, &map.values, map.width, map.height, lo, hi);
            let key = map.version * 8 + style.colormap.index() as u64;
            let t = self
                .textures
                .get(ui.ctx(), "map-cpu", key, !style.bilinear, || img)
                .id();
            let uv = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
            let tint = egui::Color32::from_white_alpha((style.opacity * 255.0) as u8);
            ui.painter().image(t, rect, uv, tint);
        }
        if let Some((x, y)) = self.session.selection.patch {
            let cw = rect.width() / map.width as f32;
            let ch = rect.height() / map.height as f32;
            let r = egui::Rect::from_min_size(
                rect.min + egui::vec2(x as f32 * cw, y as f32 * ch),
                egui::vec2(cw, ch),
            );
            ui.painter().rect_stroke(
                r,
                0.0,
                egui::Stroke::new(2.0, egui::Color32::from_rgb(255, 60, 60)),
                egui::StrokeKind::Outside,
            );
        }
        // Colour bar.
        let bar = egui::Rect::from_min_size(
            egui::pos2(rect.min.x, rect.max.y + 4.0),
            egui::vec2(rect.width(), 10.0),
        );
        let n = 64;
        for i in 0..n {
            let t = i as f32 / (n - 1) as f32;
            let r = egui::Rect::from_min_size(
                egui::pos2(bar.min.x + bar.width() * i as f32 / n as f32, bar.min.y),
                egui::vec2(bar.width() / n as f32 + 0.5, bar.height()),
            );
            ui.painter()
                .rect_filled(r, 0.0, colormap::colour(style.colormap, t, 0.0, 1.0));
        }
        ui.allocate_space(egui::vec2(rect.width(), 14.0));
        ui.horizontal(|ui| {
            ui.label(format!("{lo:.4}"));
            ui.add_space((rect.width() - 120.0).max(0.0));
            ui.label(format!("{hi:.4}"));
        });
    }

    fn map_click(&mut self, _ui: &egui::Ui, rect: egui::Rect, resp: &egui::Response) {
        let Some(map) = &self.views.map else {
            return;
        };
        if let Some(pos) = resp.interact_pointer_pos().filter(|_| resp.clicked()) {
            let u = ((pos.x - rect.min.x) / rect.width()).clamp(0.0, 0.999);
            let v = ((pos.y - rect.min.y) / rect.height()).clamp(0.0, 0.999);
            self.session.selection.patch = Some((
                (u * map.width as f32) as usize,
                (v * map.height as f32) as usize,
            ));
        }
    }

    fn map_caption(&self, ui: &mut egui::Ui) {
        let Some(cap) = &self.session.capture else {
            return;
        };
        let sel = &self.session.selection;
        let toks: Vec<&str> = sel
            .chips
            .iter()
            .filter_map(|&c| self.session.chips.get(c))
            .map(|c| c.label.as_str())
            .collect();
        let step = cap.summary.kept_steps.get(sel.step);
        ui.label(format!(
            "{} of [{}] · layer {} · {} · step {} (σ {:.3})",
            if self.settings.t2i { "T2I" } else { "I2T" },
            toks.join(" + "),
            sel.layer,
            sel.head.map_or("head mean".into(), |h| format!("head {h}")),
            step.map_or(0, |s| s.index),
            step.map_or(0.0, |s| s.sigma),
        ));
    }

    fn ranking(&self, ui: &mut egui::Ui) {
        let Some(cap) = &self.session.capture else {
            return;
        };
        ui.vertical(|ui| {
            ui.set_width(160.0);
            let Some((x, y)) = self.session.selection.patch else {
                ui.label("click the image to rank tokens at that spot");
                return;
            };
            ui.label(egui::RichText::new(format!("tokens at patch ({x}, {y})")).strong());
            for (t, v) in self.views.ranking.iter().take(12) {
                let s = cap
                    .summary
                    .tokens
                    .get(*t)
                    .map_or("?", |i| i.string.as_str());
                ui.label(format!("{v:.4}  {s} [{t}]"));
            }
        });
    }

    fn segment_view(&mut self, ui: &mut egui::Ui) {
        let Some(a) = self.session.analysed.clone() else {
            ui.label("Drop or open an image (or draw a sample scene) and type class names.");
            return;
        };
        let shown = usize::from(self.session.segmentation.is_some())
            + usize::from(self.session.proposals.is_some())
            + usize::from(a.truth.is_some());
        let width = (ui.available_width() - 12.0 * shown as f32) / shown.max(1) as f32;
        let side = width.min(ui.available_height() - 140.0).max(64.0);
        let p = &a.picture;
        ui.horizontal_top(|ui| {
            if let Some(seg) = self.session.segmentation.clone() {
                let rgb = overlay(&p.rgb, &seg.labels, 0.55);
                let v = hash_version(&seg.labels, self.session.picture_version);
                let t = self.picture_texture(ui, "masks", &Picture { rgb, ..p.clone() }, v);
                ui.vertical(|ui| {
                    ui.set_max_width(side);
                    ui.label(format!("open-vocabulary masks, layer {}", seg.layer));
                    ui.image((t, egui::vec2(side, side)));
                    for (i, c) in seg.classes.iter().enumerate() {
                        ui.horizontal(|ui| {
                            let [r, g, b] = class_colour(i);
                            let (rect, _) = ui
                                .allocate_exact_size(egui::vec2(12.0, 12.0), egui::Sense::hover());
                            ui.painter()
                                .rect_filled(rect, 2.0, egui::Color32::from_rgb(r, g, b));
                            ui.label(format!(
                                "{c} ({:.0}%)",
                                100.0 * seg.shares.get(i).copied().unwrap_or(0.0)
                            ));
                        });
                    }
                });
            }
            if let Some(pr) = self.session.proposals.clone() {
                let rgb = overlay(&p.rgb, &pr.labels, 0.55);
                let v = hash_version(&pr.labels, self.session.picture_version);
                let t = self.picture_texture(ui, "proposals", &Picture { rgb, ..p.clone() }, v);
                ui.vertical(|ui| {
                    ui.set_max_width(side);
                    ui.label(format!(
                        "unsupervised: {} proposal{} (threshold {:.3}, layer {})",
                        pr.clusters.len(),
                        if pr.clusters.len() == 1 { "" } else { "s" },
                        pr.threshold,
                        pr.layer
                    ));
                    ui.image((t, egui::vec2(side, side)));
                    let changed = ui
                        .add(
                            egui::Slider::new(&mut self.settings.threshold, 0.0..=2.0)
                                .logarithmic(true)
                                .text("threshold"),
                        )
                        .changed();
                    if changed {
                        self.request_proposals();
                    }
                });
            }
            if let Some((_, truth)) = &a.truth {
                let rgb = overlay(&p.rgb, truth, 0.55);
                let t = self.picture_texture(
                    ui,
                    "truth",
                    &Picture { rgb, ..p.clone() },
                    hash_version(truth, 0),
                );
                ui.vertical(|ui| {
                    ui.set_max_width(side);
                    ui.label("ground truth (exact)");
                    ui.image((t, egui::vec2(side, side)));
                });
            }
        });
        if self.session.segmentation.is_none() && self.session.proposals.is_none() {
            ui.label("working…");
        }
    }

    fn perturb_view(&mut self, ui: &mut egui::Ui) {
        let Some((a, b)) = self.session.perturbed.clone() else {
            ui.label("Pick layers in Perturb and run: the prompt with and without the I2T blur, same seed.");
            return;
        };
        let side = (square(ui, 60.0) / 2.0 - 8.0).max(64.0);
        let ta = self.picture_texture(ui, "unperturbed", &a, hash_version(&a.rgb, 1));
        let tb = self.picture_texture(ui, "perturbed", &b, hash_version(&b.rgb, 2));
        ui.horizontal_top(|ui| {
            ui.vertical(|ui| {
                ui.label("unperturbed");
                ui.image((ta, egui::vec2(side, side)));
            });
            ui.vertical(|ui| {
                let layers: Vec<String> = self
                    .settings
                    .perturb_layers
                    .iter()
                    .map(|l| l.to_string())
                    .collect();
                ui.label(format!("I2T blurred at layers {}", layers.join(",")));
                ui.image((tb, egui::vec2(side, side)));
            });
        });
    }

    fn pca_view(&mut self, ui: &mut egui::Ui) {
        let (Some(step), Some(cap)) = (self.session.step_index(), self.session.capture.clone())
        else {
            ui.label("Generate or analyse first: PCA reads the captured Q/K/V.");
            return;
        };
        let layer = self.session.selection.layer;
        let feature = self.settings.pca_feature;
        let want = (self.session.capture_version, step, layer, feature);
        let have = self
            .session
            .pca
            .as_ref()
            .map(|(s, l, _, _)| (self.session.capture_version, *s, *l, self.pca_feature_shown));
        if have != Some(want)
            && self.pca_requested != Some(want)
            && cap.summary.qkv_layers.contains(&layer)
        {
            self.pca_requested = Some(want);
            self.pca_feature_shown = feature;
            self.start("PCA", false, |id| Command::Pca {
                job: id,
                step,
                layer,
                feature,
            });
        }
        let Some((s, l, p, ex)) = self.session.pca.clone() else {
            ui.label("computing…");
            return;
        };
        let side = square(ui, 60.0);
        let v = hash_version(&p.rgb, (s * 1000 + l) as u64);
        let t = self
            .textures
            .get(ui.ctx(), "pca", v, true, || {
                color_image(&p.rgb, p.width, p.height)
            })
            .id();
        ui.label(format!(
            "PCA of image {} at layer {l}, step {s}: explained {:.0}% / {:.0}% / {:.0}% (R/G/B)",
            self.pca_feature_shown.label(),
            ex[0] * 100.0,
            ex[1] * 100.0,
            ex[2] * 100.0
        ));
        ui.image((t, egui::vec2(side, side)));
    }
}
