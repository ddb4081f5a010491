//! Per-layer plots (egui_plot): attention mass against the uniform share, value norms, and mIoU
//! per layer of a sample scene. Hover shows values; a click selects the layer under the pointer.

use ditlens_core::analysis::{AttentionMass, ValueNorms};
use egui_plot::{HLine, Legend, Line, Plot, PlotPoints, Points, VLine};

const HEIGHT: f32 = 170.0;

fn layer_plot<'a>(id: &str, title: &str, ui: &mut egui::Ui) -> Plot<'a> {
    ui.label(egui::RichText::new(title).strong());
    Plot::new(id.to_string())
        .height(HEIGHT)
        .legend(
            Legend::default()
                .position(egui_plot::Corner::LeftTop)
                .text_style(egui::TextStyle::Small)
                .background_alpha(0.6),
        )
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .x_axis_label("layer")
        .x_grid_spacer(egui_plot::uniform_grid_spacer(|input| {
            // Whole layers only: every layer while there are few, every 2nd/5th/10th beyond.
            let span = input.bounds.1 - input.bounds.0;
            let s = match span {
                x if x <= 12.0 => 1.0,
                x if x <= 24.0 => 2.0,
                x if x <= 60.0 => 5.0,
                _ => 10.0,
            };
            [s, s * 5.0, s * 10.0]
        }))
        .x_axis_formatter(|mark, _| {
            if mark.value >= 0.0 && mark.value.fract() == 0.0 {
                format!("{}", mark.value as i64)
            } else {
                String::new()
            }
        })
}

/// Shows a plot built by `build`, with the selected layer marked; returns a clicked layer.
fn show<'a>(
    ui: &mut egui::Ui,
    plot: Plot<'a>,
    layers: usize,
    selected: usize,
    build: impl FnOnce(&mut egui_plot::PlotUi<'a>) + 'a,
) -> Option<usize> {
    let r = plot.show(ui, move |p| {
        build(p);
        p.vline(VLine::new("", selected as f64).color(egui::Color32::GRAY));
        let clicked = p.response().clicked();
        clicked
            .then(|| p.pointer_coordinate())
            .flatten()
            .map(|c| c.x.round())
    });
    r.inner
        .filter(|&x| x >= 0.0 && (x as usize) < layers)
        .map(|x| x as usize)
}

fn line(name: &str, ys: impl Iterator<Item = f64>) -> Line<'static> {
    let pts: Vec<[f64; 2]> = ys.enumerate().map(|(i, y)| [i as f64, y]).collect();
    Line::new(name.to_string(), PlotPoints::from(pts))
}

/// Attention mass per layer: I2T and T2I shares (head mean, each head as a dot), uniform lines.
pub fn mass(ui: &mut egui::Ui, m: &AttentionMass, selected: usize) -> Option<usize> {
    let n = m.layers.len();
    let plot = layer_plot("mass", "Attention mass per layer (share)", ui);
    show(ui, plot, n, selected, |p| {
        p.line(line("I2T", m.layers.iter().map(|l| l.mean.i2t as f64)));
        p.line(line("T2I", m.layers.iter().map(|l| l.mean.t2i as f64)));
        p.line(line("I2I", m.layers.iter().map(|l| l.mean.i2i as f64)));
        p.line(line("T2T", m.layers.iter().map(|l| l.mean.t2t as f64)));
        let heads: Vec<[f64; 2]> = m
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.heads.iter().map(move |h| [i as f64, h.i2t as f64]))
            .collect();
        p.points(Points::new("I2T per head", PlotPoints::from(heads)).radius(2.0));
        p.hline(HLine::new("uniform I2T", m.uniform_txt() as f64));
        p.hline(HLine::new("uniform T2I", m.uniform_img() as f64));
    })
}

/// Mean value norms per layer for image, text and prompt tokens.
pub fn value_norms(ui: &mut egui::Ui, v: &ValueNorms, selected: usize) -> Option<usize> {
    let n = v.layers.len();
    let plot = layer_plot("vnorm", "Value norms per layer", ui);
    show(ui, plot, n, selected, |p| {
        p.line(line("image", v.layers.iter().map(|l| l.image as f64)));
        p.line(line("text", v.layers.iter().map(|l| l.text as f64)));
        p.line(line("prompt", v.layers.iter().map(|l| l.prompt as f64)));
    })
}

/// mIoU per layer against the sample scene's exact labels (the expert layer stands out).
pub fn miou(ui: &mut egui::Ui, scores: &[f64], selected: usize) -> Option<usize> {
    let plot = layer_plot("miou", "Segmentation mIoU per layer (sample scene)", ui)
        .include_y(0.0)
        .include_y(1.0);
    show(ui, plot, scores.len(), selected, |p| {
        p.line(line("mIoU", scores.iter().copied()));
        let best = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, &s)| [i as f64, s]);
        if let Some(b) = best {
            p.points(
                Points::new("best layer", PlotPoints::from(vec![b]))
                    .radius(5.0)
                    .color(egui::Color32::from_rgb(255, 80, 80)),
            );
        }
    })
}
