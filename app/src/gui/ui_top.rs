//! The top bar: menu, model choice and facts, progress of the running job with Cancel.

use super::app::ExplorerApp;
use super::protocol::{Command, ModelSource};

impl ExplorerApp {
    pub(super) fn top_bar(&mut self, ui: &mut egui::Ui) {
        egui::Panel::top("top").show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                ui.menu_button("File", |ui| {
                    if ui.button("Open model folder…").clicked() {
                        ui.close();
                        self.open_model_dialog();
                    }
                    if ui.button("Open image…").clicked() {
                        ui.close();
                        self.open_image_dialog();
                    }
                    if ui.button("Save screenshot…").clicked() {
                        ui.close();
                        self.export_screenshot();
                    }
                });
                ui.separator();
                self.model_picker(ui);
                ui.separator();
                self.progress(ui);
            });
        });
    }

    fn model_picker(&mut self, ui: &mut egui::Ui) {
        let current = self
            .session
            .model
            .as_ref()
            .map_or("loading…".to_string(), |m| m.source.label());
        let mut choice = None;
        egui::ComboBox::from_id_salt("model")
            .selected_text(current)
            .show_ui(ui, |ui| {
                for name in crate::models::shipped_names() {
                    if ui
                        .selectable_label(false, format!("embedded {name}"))
                        .clicked()
                    {
                        choice = Some(ModelSource::Embedded(name.to_string()));
                    }
                }
                if ui
                    .selectable_label(false, "open a folder (trained model or SD3 pipeline)…")
                    .clicked()
                {
                    choice = Some(ModelSource::Folder(Default::default()));
                }
                if ui
                    .selectable_label(false, "open an SD3 single .safetensors file…")
                    .clicked()
                {
                    self.open_model_file_dialog();
                }
            });
        match choice {
            Some(ModelSource::Folder(p)) if p.as_os_str().is_empty() => self.open_model_dialog(),
            Some(src) => self.send(Command::OpenModel(src)),
            None => {}
        }
        if let Some(m) = &self.session.model {
            ui.label(format!(
                "{} · {} layers × {} heads · {}² px · {} text tokens · expert layer {}",
                m.variant, m.layers, m.heads, m.image_size, m.text_len, m.expert_layer
            ));
        }
    }

    fn progress(&mut self, ui: &mut egui::Ui) {
        let Some((_, r)) = self.busy() else {
            ui.label("idle");
            return;
        };
        let frac = if r.total > 0 {
            r.done as f32 / r.total as f32
        } else {
            0.0
        };
        let text = format!("{} {}/{}", r.what, r.done, r.total);
        ui.add(egui::ProgressBar::new(frac).desired_width(220.0).text(text));
        if ui.button("Cancel").clicked() {
            self.cancel();
        }
    }

    /// Picks an SD3 single-file checkpoint with the native dialog.
    pub fn open_model_file_dialog(&mut self) {
        if let Some(file) = rfd::FileDialog::new()
            .set_title("Open an SD3 single-file checkpoint")
            .add_filter("safetensors", &["safetensors"])
            .pick_file()
        {
            self.send(Command::OpenModel(ModelSource::Folder(file)));
        }
    }

    /// Picks a model folder (a trained model or an SD3 pipeline) with the native dialog.
    pub fn open_model_dialog(&mut self) {
        if let Some(dir) = rfd::FileDialog::new()
            .set_title("Open a DiT Lens model folder or an SD3 pipeline folder")
            .pick_folder()
        {
            self.send(Command::OpenModel(ModelSource::Folder(dir)));
        }
    }

    /// Picks an image with the native dialog and analyses it.
    pub fn open_image_dialog(&mut self) {
        if let Some(p) = rfd::FileDialog::new()
            .set_title("Open an image")
            .add_filter("images", &["png", "jpg", "jpeg"])
            .pick_file()
        {
            self.start("reading the image", false, |id| Command::LoadImage(id, p));
        }
    }
}
