//! The export section: "Export all" into a folder, or one item through a native save dialog;
//! the worker writes the files and says where.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::app::ExplorerApp;
use super::export_all::{fresh_dir, CaptureView, ExportBundle};
use super::protocol::{Command, ExportJob, Picture};

/// Screenshots requested from the renderer, delivered by its callback.
pub type ShotInbox = Arc<Mutex<Vec<Arc<egui::ColorImage>>>>;

/// A window screenshot as RGB.
pub fn shot_picture(img: &egui::ColorImage) -> Picture {
    let rgb = img
        .pixels
        .iter()
        .flat_map(|c| [c.r(), c.g(), c.b()])
        .collect();
    Picture {
        rgb,
        width: img.size[0],
        height: img.size[1],
    }
}

fn save_dialog(title: &str, name: &str, exts: &[&str]) -> Option<PathBuf> {
    rfd::FileDialog::new()
        .set_title(title)
        .set_file_name(name)
        .add_filter(exts.join("/"), exts)
        .save_file()
}

impl ExplorerApp {
    pub(super) fn export_controls(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.label("folder");
            let mut text = self.settings.export_dir.display().to_string();
            if ui
                .add(egui::TextEdit::singleline(&mut text).desired_width(170.0))
                .changed()
            {
                self.settings.export_dir = PathBuf::from(text);
            }
            if ui.button("…").on_hover_text("choose the folder").clicked() {
                if let Some(d) = rfd::FileDialog::new()
                    .set_title("Export into this folder")
                    .pick_folder()
                {
                    self.settings.export_dir = d;
                }
            }
        });
        let idle = self.busy().is_none();
        if ui
            .add_enabled(idle, egui::Button::new("Export all"))
            .on_hover_text(
                "image, masks, perturbation pair, figures (PNG + SVG), CSVs, captured tensors and \
                 a screenshot, into a new export-NNN folder inside the folder above",
            )
            .clicked()
        {
            let dir = fresh_dir(&self.settings.export_dir);
            let ctx = self.ctx_handle.clone();
            self.export_all_into(dir, &ctx);
        }
        ui.separator();
        let cap = self.session.capture.clone();
        let step = self.session.step_index();
        let has_masks = self.session.segmentation.is_some();
        if ui
            .add_enabled(has_masks, egui::Button::new("Masks…"))
            .on_hover_text("label PNG, colour overlay, one PNG per class")
            .clicked()
        {
            self.export_masks();
        }
        let (Some(cap), Some(step)) = (cap, step) else {
            ui.label("generate or analyse to export figures and tensors");
            if ui.button("Screenshot…").clicked() {
                self.export_screenshot();
            }
            return;
        };
        let t2i = self.settings.t2i;
        let token = self.session.selected_positions().first().copied();
        let layer = self.session.selection.layer;
        let mut job = None;
        if ui.button("Layer × head grid…").clicked() {
            if let (Some(path), Some(token)) = (
                save_dialog("Save the layer × head grid", "heads.png", &["png", "svg"]),
                token,
            ) {
                job = Some(ExportJob::HeadGrid {
                    path,
                    capture: cap.clone(),
                    step,
                    token,
                    t2i,
                });
            }
        }
        if ui.button("Token grid…").clicked() {
            if let Some(path) = save_dialog("Save the token grid", "tokens.png", &["png", "svg"]) {
                job = Some(ExportJob::TokenGrid {
                    path,
                    capture: cap.clone(),
                    step,
                    layer,
                    t2i,
                });
            }
        }
        for (label, file, value_norms) in [
            ("Attention-mass plot…", "mass.png", false),
            ("Value-norm plot…", "value_norms.png", true),
        ] {
            if ui.button(label).clicked() {
                if let Some(path) = save_dialog(label, file, &["png", "svg"]) {
                    job = Some(ExportJob::Plot {
                        path,
                        capture: cap.clone(),
                        step,
                        value_norms,
                    });
                }
            }
        }
        if ui.button("Captured tensors…").clicked() {
            if let Some(path) =
                save_dialog("Save the capture", "capture.safetensors", &["safetensors"])
            {
                job = Some(ExportJob::Capture {
                    path,
                    capture: cap.clone(),
                });
            }
        }
        if ui.button("Screenshot…").clicked() {
            self.export_screenshot();
        }
        if let Some(j) = job {
            self.start("exporting", false, |id| Command::Export(id, Box::new(j)));
        }
    }

    /// Masks of the current segmentation.
    pub fn export_masks(&mut self) {
        let (Some(seg), Some(a)) = (&self.session.segmentation, &self.session.analysed) else {
            return;
        };
        let Some(path) = save_dialog("Save the masks (label PNG)", "labels.png", &["png"]) else {
            return;
        };
        let job = ExportJob::Masks {
            path,
            picture: a.picture.clone(),
            labels: seg.labels.clone(),
            classes: seg.classes.clone(),
        };
        self.start("exporting", false, |id| Command::Export(id, Box::new(job)));
    }

    /// What "Export all" writes now, into `dir`.
    pub fn export_bundle(&self, dir: PathBuf) -> ExportBundle {
        let s = &self.session;
        let picture = s.analysed.as_ref().map(|a| a.picture.clone());
        let picture = picture.or_else(|| s.picture.clone());
        let view = match (&s.capture, s.step_index()) {
            (Some(capture), Some(step)) => Some(CaptureView {
                capture: capture.clone(),
                step,
                layer: s.selection.layer,
                token: s.selected_positions().first().copied(),
                t2i: self.settings.t2i,
            }),
            _ => None,
        };
        ExportBundle {
            dir,
            masks: match (&s.segmentation, &s.analysed) {
                (Some(seg), Some(a)) => {
                    Some((a.picture.clone(), seg.labels.clone(), seg.classes.clone()))
                }
                _ => None,
            },
            proposals: match (&s.proposals, &s.analysed) {
                (Some(p), Some(a)) => Some((a.picture.clone(), p.labels.clone())),
                _ => None,
            },
            perturbed: s.perturbed.clone(),
            view,
            layer_scores: s.layer_scores.clone(),
            picture,
        }
    }

    /// Writes everything into `dir` (on the worker) and a screenshot of the next frame beside it.
    pub fn export_all_into(&mut self, dir: PathBuf, ctx: &egui::Context) {
        let bundle = self.export_bundle(dir.clone());
        let has_data = bundle.has_data();
        let job = ExportJob::All(Box::new(bundle));
        // An empty bundle still goes to the worker, which says why nothing was written.
        self.start("exporting", false, |id| Command::Export(id, Box::new(job)));
        if has_data {
            self.pending_shot = Some(dir.join("screenshot.png"));
            self.request_shot(ctx);
        }
    }

    /// Asks for a path, then for a screenshot of the next frame.
    pub fn export_screenshot(&mut self) {
        if let Some(path) = save_dialog("Save a screenshot", "ditlens.png", &["png"]) {
            self.pending_shot = Some(path);
            self.request_shot(&self.ctx_handle.clone());
        }
    }

    /// Requests a screenshot; it arrives in the inbox after the next frame is drawn.
    pub fn request_shot(&self, ctx: &egui::Context) {
        let inbox = self.shots.clone();
        let wake = ctx.clone();
        ctx.request_screenshot(move |img| {
            if let Ok(mut v) = inbox.lock() {
                v.push(img);
            }
            wake.request_repaint();
        });
        ctx.request_repaint();
    }

    /// Hands arrived screenshots to whoever asked (export or the script).
    pub(super) fn collect_shots(&mut self) -> Option<Arc<egui::ColorImage>> {
        let img = self.shots.lock().ok()?.pop()?;
        if let Some(path) = self.pending_shot.take() {
            let job = ExportJob::Screenshot {
                path,
                picture: shot_picture(&img),
            };
            self.start("exporting", false, |id| Command::Export(id, Box::new(job)));
            return None;
        }
        Some(img)
    }
}
