//! The left panel: generate, analyse an image or a sample scene, segment, perturb, display.

use ditlens_core::probe::Feature;
use ditlens_core::shapes::{class_names, Scene, SceneConfig};

use super::app::{parse_classes, ExplorerApp};
use super::protocol::{Command, GenerateJob, PerturbJob, Picture};
use super::settings::Colormap;

impl ExplorerApp {
    pub(super) fn controls(&mut self, ui: &mut egui::Ui) {
        egui::Panel::left("controls")
            .resizable(true)
            .default_size(290.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    egui::CollapsingHeader::new("Generation")
                        .default_open(true)
                        .show(ui, |ui| self.generate_controls(ui));
                    egui::CollapsingHeader::new("Analyse an image")
                        .default_open(true)
                        .show(ui, |ui| self.analyse_controls(ui));
                    egui::CollapsingHeader::new("Segment")
                        .default_open(true)
                        .show(ui, |ui| self.segment_controls(ui));
                    egui::CollapsingHeader::new("Perturb")
                        .default_open(false)
                        .show(ui, |ui| self.perturb_controls(ui));
                    egui::CollapsingHeader::new("Display")
                        .default_open(true)
                        .show(ui, |ui| self.display_controls(ui));
                    egui::CollapsingHeader::new("Export")
                        .default_open(false)
                        .show(ui, |ui| self.export_controls(ui));
                });
            });
    }

    fn generate_controls(&mut self, ui: &mut egui::Ui) {
        let s = &mut self.settings;
        ui.label("Prompt");
        ui.add(
            egui::TextEdit::multiline(&mut s.prompt)
                .desired_rows(2)
                .desired_width(f32::INFINITY),
        );
        ui.horizontal(|ui| {
            ui.label("seed");
            ui.add(egui::DragValue::new(&mut s.seed));
            ui.label("steps");
            ui.add(egui::DragValue::new(&mut s.steps).range(1..=200));
            ui.label("guidance");
            ui.add(
                egui::DragValue::new(&mut s.guidance)
                    .speed(0.1)
                    .range(0.0..=30.0),
            );
        });
        let idle = self.busy().is_none();
        if ui
            .add_enabled(idle, egui::Button::new("Generate"))
            .on_hover_text("generate and capture every step")
            .clicked()
        {
            self.generate();
        }
    }

    /// Starts a generation with the settings' prompt.
    pub fn generate(&mut self) {
        let s = &self.settings;
        let job = GenerateJob {
            prompt: s.prompt.clone(),
            seed: s.seed,
            steps: s.steps,
            guidance: s.guidance,
        };
        self.session.analysed = None;
        self.session.segmentation = None;
        self.session.proposals = None;
        self.session.layer_scores = None;
        self.start("generating", true, |id| Command::Generate(id, job));
    }

    fn analyse_controls(&mut self, ui: &mut egui::Ui) {
        ui.label("Drop a picture on the window, or:");
        ui.horizontal(|ui| {
            if ui.button("Open image…").clicked() {
                self.open_image_dialog();
            }
            let can = self.session.picture.is_some() && self.busy().is_none();
            if ui
                .add_enabled(can, egui::Button::new("Analyse"))
                .on_hover_text("capture the image shown with the class names as prompt")
                .clicked()
            {
                if let Some(p) = self.session.picture.clone() {
                    let truth = self.session.analysed.as_ref().and_then(|a| a.truth.clone());
                    self.analyse(p, truth);
                }
            }
        });
        ui.label("Class names (comma separated)");
        ui.add(egui::TextEdit::singleline(&mut self.settings.classes).desired_width(f32::INFINITY));
        ui.horizontal(|ui| {
            let idle = self.busy().is_none();
            if ui
                .add_enabled(idle, egui::Button::new("Sample scene"))
                .on_hover_text(
                    "a random shapes-world scene with exact ground truth: mIoU per layer",
                )
                .clicked()
            {
                self.sample_scene();
            }
            ui.label("seed");
            ui.add(egui::DragValue::new(&mut self.settings.scene_seed));
        });
    }

    /// Draws a shapes-world scene and analyses it against its exact labels.
    pub fn sample_scene(&mut self) {
        let size = self.session.model.as_ref().map_or(32, |m| m.image_size);
        let seed = self.settings.scene_seed;
        self.settings.scene_seed = seed.wrapping_add(1);
        let scene = match Scene::generate(&SceneConfig::with_size(size), seed) {
            Ok(s) => s,
            Err(e) => {
                self.toasts.error(format!("cannot draw a scene: {e}"));
                return;
            }
        };
        let names: Vec<String> = class_names().into_iter().map(String::from).collect();
        let mut present: Vec<u8> = scene.labels.clone();
        present.sort_unstable();
        present.dedup();
        let mut classes: Vec<String> = present
            .iter()
            .filter(|&&c| c != 0)
            .filter_map(|&c| names.get(c as usize).cloned())
            .collect();
        classes.push(names[0].clone());
        self.settings.classes = classes.join(", ");
        let picture = Picture {
            rgb: scene.rgb.clone(),
            width: scene.size,
            height: scene.size,
        };
        self.analyse(picture, Some((names, scene.labels.clone())));
    }

    fn segment_controls(&mut self, ui: &mut egui::Ui) {
        let (layers, _) = self.session.dims();
        if layers == 0 {
            ui.label("no model yet");
            return;
        }
        let sel = &mut self.session.selection;
        ui.add(egui::Slider::new(&mut sel.layer, 0..=layers - 1).text("layer (← →)"));
        let Some(a) = self.session.analysed.clone() else {
            ui.label("analyse an image to segment it");
            return;
        };
        let layer = self.session.selection.layer;
        if ui
            .button(format!("Masks at layer {layer}"))
            .on_hover_text("open-vocabulary masks from the class names at this layer")
            .clicked()
        {
            let classes = parse_classes(&self.settings.classes);
            self.start("segmenting", false, |id| Command::Segment {
                job: id,
                picture: a.picture.clone(),
                classes,
                layer,
            });
        }
        let changed = ui
            .add(
                egui::Slider::new(&mut self.settings.threshold, 0.0..=2.0)
                    .logarithmic(true)
                    .text("unsupervised threshold"),
            )
            .changed();
        if changed {
            self.request_proposals();
        }
    }

    /// Unsupervised proposals of the analysed image at the selected layer and threshold.
    pub fn request_proposals(&mut self) {
        let Some(a) = self.session.analysed.clone() else {
            return;
        };
        let layer = self.session.selection.layer;
        let threshold = self.settings.threshold;
        self.start("proposals", false, |id| Command::Unsupervised {
            job: id,
            picture: a.picture,
            layer,
            threshold,
        });
    }

    fn perturb_controls(&mut self, ui: &mut egui::Ui) {
        let (layers, _) = self.session.dims();
        ui.label("Blur I2T at layers:");
        ui.horizontal_wrapped(|ui| {
            for l in 0..layers {
                let mut on = self.settings.perturb_layers.contains(&l);
                if ui.checkbox(&mut on, l.to_string()).changed() {
                    if on {
                        self.settings.perturb_layers.insert(l);
                    } else {
                        self.settings.perturb_layers.remove(&l);
                    }
                }
            }
        });
        let s = &mut self.settings;
        ui.horizontal(|ui| {
            ui.label("σ");
            ui.add(
                egui::DragValue::new(&mut s.blur_sigma)
                    .speed(0.1)
                    .range(0.1..=50.0),
            );
            ui.label("kernel");
            ui.add(egui::DragValue::new(&mut s.blur_kernel).range(1..=63));
        });
        ui.horizontal(|ui| {
            ui.checkbox(&mut s.perturb_guided, "perturbed guidance, scale");
            ui.add_enabled(
                s.perturb_guided,
                egui::DragValue::new(&mut s.perturb_scale).speed(0.1),
            );
        });
        let can = self.busy().is_none() && !self.settings.perturb_layers.is_empty();
        if ui
            .add_enabled(can, egui::Button::new("Run perturbation"))
            .on_hover_text("the prompt with and without the blur, same seed")
            .clicked()
        {
            self.perturb();
        }
    }

    /// Regenerates the prompt with and without the I2T blur at the ticked layers (same seed).
    pub fn perturb(&mut self) {
        let s = &self.settings;
        let job = PerturbJob {
            generate: GenerateJob {
                prompt: s.prompt.clone(),
                seed: s.seed,
                steps: s.steps,
                guidance: s.guidance,
            },
            layers: s.perturb_layers.iter().copied().collect(),
            sigma: s.blur_sigma,
            kernel: s.blur_kernel,
            scale: s.perturb_guided.then_some(s.perturb_scale),
        };
        self.settings.centre = super::settings::CentreView::Perturb;
        self.start("perturbing", true, |id| Command::Perturb(id, job));
    }

    fn display_controls(&mut self, ui: &mut egui::Ui) {
        let (_, heads) = self.session.dims();
        let s = &mut self.settings;
        egui::ComboBox::from_label("colour map")
            .selected_text(s.colormap.label())
            .show_ui(ui, |ui| {
                for c in Colormap::ALL {
                    ui.selectable_value(&mut s.colormap, c, c.label());
                }
            });
        ui.add(egui::Slider::new(&mut s.opacity, 0.0..=1.0).text("opacity"));
        ui.horizontal(|ui| {
            ui.radio_value(&mut s.bilinear, true, "bilinear");
            ui.radio_value(&mut s.bilinear, false, "nearest");
        });
        ui.horizontal(|ui| {
            ui.radio_value(&mut s.t2i, false, "I2T")
                .on_hover_text("how much each image query attends to the token");
            ui.radio_value(&mut s.t2i, true, "T2I")
                .on_hover_text("how much the token attends to each image key");
        });
        let sel = &mut self.session.selection;
        ui.horizontal(|ui| {
            let mut mean = sel.head.is_none();
            if ui.checkbox(&mut mean, "head mean").changed() {
                sel.head = if mean { None } else { Some(0) };
            }
            if let Some(h) = sel.head.as_mut() {
                ui.add(egui::Slider::new(h, 0..=heads.saturating_sub(1)).text("head (↑ ↓)"));
            }
        });
        egui::ComboBox::from_label("PCA feature")
            .selected_text(s.pca_feature.label())
            .show_ui(ui, |ui| {
                for f in [Feature::Q, Feature::K, Feature::V] {
                    ui.selectable_value(&mut s.pca_feature, f, f.label());
                }
            });
        ui.checkbox(&mut s.show_grid, "layer × head grid");
        ui.checkbox(&mut s.show_plots, "plots");
        ui.label("keys: ← → layer, ↑ ↓ head, [ ] step");
    }
}
