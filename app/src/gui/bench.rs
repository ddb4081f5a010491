//! Frame-time measurement for `--bench-ui N`: the interval between frames (all of a frame:
//! layout, tessellation, rendering, presenting) and the time spent building the UI.

use std::time::{Duration, Instant};

/// Frame times collected so far.
#[derive(Debug, Default)]
pub struct FrameStats {
    last: Option<Instant>,
    pub intervals: Vec<Duration>,
    pub build: Vec<Duration>,
}

fn stats(v: &[Duration]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let idx = ((ms.len() as f64 * 0.95).ceil() as usize).clamp(1, ms.len()) - 1;
    (mean, ms[idx])
}

impl FrameStats {
    /// Records one frame that started at `start` and whose UI was built by now.
    pub fn record(&mut self, start: Instant) {
        if let Some(prev) = self.last {
            self.intervals.push(start - prev);
        }
        self.last = Some(start);
        self.build.push(start.elapsed());
    }

    pub fn frames(&self) -> usize {
        self.build.len()
    }

    /// "mean … ms, p95 … ms" of both measures.
    pub fn report(&self) -> String {
        let (fm, fp) = stats(&self.intervals);
        let (bm, bp) = stats(&self.build);
        format!(
            "frames {}: frame time mean {fm:.2} ms, p95 {fp:.2} ms; UI build mean {bm:.2} ms, p95 {bp:.2} ms",
            self.build.len()
        )
    }
}
