//! Errors and messages shown in the window (dismissable), and logged.

use std::time::{Duration, Instant};

/// How long an information message stays (errors stay until dismissed).
const INFO_FOR: Duration = Duration::from_secs(12);

/// One message.
#[derive(Debug, Clone)]
pub struct Toast {
    pub text: String,
    pub error: bool,
    pub since: Instant,
}

/// The messages on screen.
#[derive(Debug, Default)]
pub struct Toasts {
    pub items: Vec<Toast>,
}

impl Toasts {
    pub fn error(&mut self, text: impl Into<String>) {
        let text = text.into();
        tracing::error!("{text}");
        self.items.push(Toast {
            text,
            error: true,
            since: Instant::now(),
        });
    }

    pub fn info(&mut self, text: impl Into<String>) {
        let text = text.into();
        tracing::info!("{text}");
        self.items.push(Toast {
            text,
            error: false,
            since: Instant::now(),
        });
    }

    /// Errors currently shown.
    pub fn errors(&self) -> impl Iterator<Item = &str> {
        self.items
            .iter()
            .filter(|t| t.error)
            .map(|t| t.text.as_str())
    }

    /// Draws the messages as a strip at the top of `ui`, each with a dismiss button.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        self.items
            .retain(|t| t.error || t.since.elapsed() < INFO_FOR);
        let mut dismiss = None;
        for (i, t) in self.items.iter().enumerate() {
            let (fill, stroke) = if t.error {
                (
                    egui::Color32::from_rgb(90, 20, 20),
                    egui::Color32::from_rgb(230, 90, 90),
                )
            } else {
                (
                    egui::Color32::from_rgb(20, 60, 40),
                    egui::Color32::from_rgb(90, 200, 130),
                )
            };
            egui::Frame::new()
                .fill(fill)
                .stroke(egui::Stroke::new(1.0, stroke))
                .inner_margin(6.0)
                .corner_radius(4.0)
                .show(ui, |ui| {
                    ui.horizontal_top(|ui| {
                        if ui.small_button("✕").on_hover_text("dismiss").clicked() {
                            dismiss = Some(i);
                        }
                        let label = if t.error { "Error: " } else { "" };
                        // Long messages (paths, library errors) wrap inside the strip.
                        ui.add(
                            egui::Label::new(
                                egui::RichText::new(format!("{label}{}", t.text))
                                    .color(egui::Color32::WHITE),
                            )
                            .wrap(),
                        );
                    });
                });
        }
        if let Some(i) = dismiss {
            self.items.remove(i);
        }
        if self.items.iter().any(|t| !t.error) {
            ui.ctx().request_repaint_after(Duration::from_secs(1));
        }
    }
}
