//! The value-norm figure (paper Fig. 4): mean L2 norm of V per block for image tokens, all text
//! tokens and prompt tokens (padding and special tokens excluded).

use plotters::coord::Shift;
use plotters::prelude::*;

use super::font::FAMILY;
use super::{text_width, DrawResult, Plot};
use crate::analysis::ValueNorms;

/// The value-norm line plot of one capture.
#[derive(Debug, Clone)]
pub struct ValueNormPlot<'a> {
    pub norms: &'a ValueNorms,
    pub title: String,
}

const SERIES: [(&str, RGBColor); 3] = [
    ("image tokens", RGBColor(70, 110, 190)),
    ("all text tokens", RGBColor(150, 150, 150)),
    ("prompt tokens", RGBColor(230, 120, 30)),
];

impl Plot for ValueNormPlot<'_> {
    fn size(&self) -> (u32, u32) {
        let title = text_width(&self.title, 17.0) as u32 + 40;
        (
            (self.norms.layers.len() as u32 * 40 + 160)
                .max(520)
                .max(title),
            400,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let n = self.norms.layers.len() as u32;
        let value = |i: usize, l: &crate::analysis::LayerValueNorm| match i {
            0 => l.image,
            1 => l.text,
            _ => l.prompt,
        };
        let hi = self
            .norms
            .layers
            .iter()
            .flat_map(|l| (0..3).map(move |i| value(i, l)))
            .filter(|v| v.is_finite())
            .fold(0f32, f32::max);
        let hi = if hi > 0.0 { hi as f64 * 1.1 } else { 1.0 };
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FAMILY, 17))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), 0f64..hi)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_desc("block")
            .y_desc("mean ‖V‖₂")
            .label_style((FAMILY, 12))
            .axis_desc_style((FAMILY, 13))
            .draw()?;
        for (i, (name, colour)) in SERIES.iter().enumerate() {
            let pts: Vec<(SegmentValue<u32>, f64)> = self
                .norms
                .layers
                .iter()
                .enumerate()
                .filter(|(_, l)| value(i, l).is_finite())
                .map(|(k, l)| (SegmentValue::CenterOf(k as u32), value(i, l) as f64))
                .collect();
            let c = *colour;
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FAMILY, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::LayerValueNorm;
    use crate::figure::render_svg;

    #[test]
    fn legend_and_axes() {
        let l = |x: f32| LayerValueNorm {
            image: x,
            text: 2.0 * x,
            prompt: f32::NAN,
        };
        let norms = ValueNorms {
            layers: vec![l(1.0), l(2.0)],
        };
        let p = ValueNormPlot {
            norms: &norms,
            title: "value norms".into(),
        };
        let svg = render_svg(&p).unwrap();
        for s in ["value norms", "image tokens", "prompt tokens", "block"] {
            assert!(svg.contains(s), "{s} missing");
        }
        crate::figure::render_rgb(&p).unwrap();
    }
}
