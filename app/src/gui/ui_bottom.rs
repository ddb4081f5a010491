//! The bottom panel: the token strip (click, Ctrl/Shift-click to add; mean of the selection) and
//! the timestep scrubber over the captured steps.

use super::app::ExplorerApp;

impl ExplorerApp {
    pub(super) fn bottom(&mut self, ui: &mut egui::Ui) {
        egui::Panel::bottom("tokens").show(ui, |ui| {
            self.scrubber(ui);
            ui.horizontal_wrapped(|ui| {
                ui.label("tokens:");
                let multi =
                    ui.input(|i| i.modifiers.ctrl || i.modifiers.shift || i.modifiers.command);
                let mut clicked = None;
                for (i, chip) in self.session.chips.iter().enumerate() {
                    let on = self.session.selection.chips.contains(&i);
                    let text = if chip.special {
                        egui::RichText::new(&chip.label).italics().weak()
                    } else {
                        egui::RichText::new(&chip.label)
                    };
                    let r = ui
                        .selectable_label(on, text)
                        .on_hover_text(format!("positions {:?}", chip.positions));
                    if r.clicked() {
                        clicked = Some(i);
                    }
                }
                if let Some(i) = clicked {
                    let sel = &mut self.session.selection.chips;
                    if multi {
                        if !sel.remove(&i) {
                            sel.insert(i);
                        }
                    } else {
                        sel.clear();
                        sel.insert(i);
                    }
                }
                if self.session.chips.is_empty() {
                    ui.label("(generate or analyse an image)");
                }
            });
        });
    }

    fn scrubber(&mut self, ui: &mut egui::Ui) {
        let Some(cap) = self.session.capture.clone() else {
            return;
        };
        let kept = &cap.summary.kept_steps;
        if kept.is_empty() {
            return;
        }
        ui.horizontal(|ui| {
            let sel = &mut self.session.selection;
            sel.step = sel.step.min(kept.len() - 1);
            ui.label("step ([ ])");
            ui.add(
                egui::Slider::new(&mut sel.step, 0..=kept.len() - 1)
                    .show_value(false)
                    .trailing_fill(true),
            );
            let k = kept[sel.step];
            ui.label(format!(
                "{} of {} · σ {:.4} · t {:.1}",
                k.index, cap.summary.steps, k.sigma, k.timestep
            ));
        });
    }
}
