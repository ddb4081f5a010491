//! The attention-mass figure (paper Fig. 2 b, c): per block, the share image queries give text
//! keys (I2T, rest I2I) and the share text queries give image keys (T2I, rest T2T), as stacked
//! bars of the head mean with one dot per head, against the dashed share uniform attention gives.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::font::FAMILY;
use super::{text_width, DrawResult, Plot};
use crate::analysis::AttentionMass;

/// The two-panel mass figure of one capture.
#[derive(Debug, Clone)]
pub struct MassPlot<'a> {
    pub mass: &'a AttentionMass,
    /// Drawn above the panels (e.g. model, prompt, step).
    pub title: String,
}

const CROSS: RGBColor = RGBColor(230, 120, 30);
const SAME: RGBColor = RGBColor(70, 110, 190);

impl MassPlot<'_> {
    fn panel_w(&self) -> u32 {
        (self.mass.layers.len() as u32 * 36 + 120).max(380)
    }

    /// One panel: `cross` = (head-mean, per-head) share to the other modality; `uniform` its
    /// baseline.
    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        image_queries: bool,
    ) -> DrawResult<DB> {
        let n = self.mass.layers.len() as u32;
        let (cross_name, same_name, caption, uniform, uniform_name) = if image_queries {
            (
                "I2T",
                "I2I",
                "image queries",
                self.mass.uniform_txt(),
                "uniform L/(N+L)",
            )
        } else {
            (
                "T2I",
                "T2T",
                "text queries",
                self.mass.uniform_img(),
                "uniform N/(N+L)",
            )
        };
        let pick = |s: &crate::analysis::MassShares| {
            if image_queries {
                (s.i2t as f64, (s.i2t + s.i2i) as f64)
            } else {
                (s.t2i as f64, (s.t2i + s.t2t) as f64)
            }
        };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FAMILY, 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), 0f64..1.42f64)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_desc("block")
            .y_desc("share of attention")
            .y_label_formatter(&|v| {
                if *v <= 1.0 + 1e-9 {
                    format!("{v:.1}")
                } else {
                    String::new()
                }
            })
            .label_style((FAMILY, 12))
            .axis_desc_style((FAMILY, 13))
            .draw()?;
        let bars = |lo: bool| {
            self.mass.layers.iter().enumerate().map(move |(l, layer)| {
                let (cross, total) = pick(&layer.mean);
                let (a, b, colour) = if lo {
                    (0.0, cross, CROSS)
                } else {
                    (cross, total, SAME)
                };
                let l = l as u32;
                let mut r = Rectangle::new(
                    [(SegmentValue::Exact(l), a), (SegmentValue::Exact(l + 1), b)],
                    colour.mix(0.85).filled(),
                );
                r.set_margin(0, 0, 5, 5);
                r
            })
        };
        chart
            .draw_series(bars(false))?
            .label(format!("{same_name} (head mean)"))
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], SAME.filled()));
        chart
            .draw_series(bars(true))?
            .label(format!("{cross_name} (head mean)"))
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], CROSS.filled()));
        let dots = self.mass.layers.iter().enumerate().flat_map(|(l, layer)| {
            layer.heads.iter().map(move |h| {
                Circle::new(
                    (SegmentValue::CenterOf(l as u32), pick(h).0),
                    3,
                    BLACK.filled(),
                )
            })
        });
        chart
            .draw_series(dots)?
            .label(format!("{cross_name} per head"))
            .legend(|(x, y)| Circle::new((x + 6, y), 3, BLACK.filled()));
        let u = uniform as f64;
        chart
            .draw_series(DashedLineSeries::new(
                [(SegmentValue::Exact(0), u), (SegmentValue::Last, u)],
                6,
                4,
                BLACK.stroke_width(2),
            ))?
            .label(format!("{uniform_name} = {u:.3}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLACK.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FAMILY, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }
}

impl Plot for MassPlot<'_> {
    fn size(&self) -> (u32, u32) {
        let title = text_width(&self.title, 17.0) as u32 + 40;
        ((2 * self.panel_w()).max(title), 440)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let root = root.titled(&self.title, (FAMILY, 17))?;
        let (a, b) = root.split_horizontally(root.dim_in_pixel().0 as i32 / 2);
        self.panel(&a, true)?;
        self.panel(&b, false)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figure::{render_rgb, render_svg};

    #[test]
    fn draws_both_panels() {
        let l0 = [0.7, 0.3, 0.4, 0.6, 0.9, 0.1, 0.2, 0.8];
        let mass = AttentionMass::from_layers(&[l0, l0, l0], 2, 12, 4).unwrap();
        let p = MassPlot {
            mass: &mass,
            title: "mass".into(),
        };
        let (rgb, w, h) = render_rgb(&p).unwrap();
        assert_eq!((w, h), (760, 440));
        // Both bar colours appear.
        let has = |c: RGBColor| {
            rgb.chunks_exact(3).any(|p| {
                (p[0] as i32 - c.0 as i32).abs() < 30
                    && (p[2] as i32 - c.2 as i32).abs() < 30
                    && (p[1] as i32 - c.1 as i32).abs() < 30
            })
        };
        assert!(has(CROSS) && has(SAME));
        let svg = render_svg(&p).unwrap();
        for s in [
            "image queries",
            "text queries",
            "I2T per head",
            "uniform N/(N+L) = 0.750",
        ] {
            assert!(svg.contains(s), "{s} missing");
        }
    }
}
