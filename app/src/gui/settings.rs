//! What the window remembers between runs (serde, eframe storage): display choices, layout,
//! last model, job parameters and thresholds. Runtime handles live elsewhere.

use std::collections::BTreeSet;
use std::path::PathBuf;

use ditlens_core::probe::Feature;
use serde::{Deserialize, Serialize};

use super::protocol::ModelSource;

/// The storage key of [`Settings`].
pub const KEY: &str = "ditlens.settings";

/// Colour maps of the map shader (row order of its lookup texture).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Colormap {
    Viridis,
    Magma,
    Inferno,
    Gray,
    Diverging,
}

impl Colormap {
    pub const ALL: [Colormap; 5] = [
        Colormap::Viridis,
        Colormap::Magma,
        Colormap::Inferno,
        Colormap::Gray,
        Colormap::Diverging,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Colormap::Viridis => "viridis",
            Colormap::Magma => "magma",
            Colormap::Inferno => "inferno",
            Colormap::Gray => "gray",
            Colormap::Diverging => "diverging",
        }
    }

    /// Row of this map in the lookup texture.
    pub fn index(self) -> u32 {
        Self::ALL.iter().position(|&c| c == self).unwrap_or(0) as u32
    }
}

/// Which tab the centre shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CentreView {
    Map,
    Segment,
    Perturb,
    Pca,
}

/// Persistent settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub colormap: Colormap,
    pub opacity: f32,
    pub bilinear: bool,
    /// T2I instead of I2T.
    pub t2i: bool,
    pub centre: CentreView,
    pub show_plots: bool,
    pub show_grid: bool,
    pub last_model: Option<ModelSource>,
    pub prompt: String,
    pub seed: u64,
    pub steps: usize,
    pub guidance: f64,
    pub classes: String,
    pub threshold: f32,
    pub blur_sigma: f64,
    pub blur_kernel: usize,
    pub perturb_scale: f64,
    pub perturb_guided: bool,
    pub scene_seed: u64,
    pub perturb_layers: BTreeSet<usize>,
    pub pca_feature: Feature,
    /// Where "Export all" writes (a fresh `export-NNN` folder inside it each time).
    pub export_dir: PathBuf,
}

/// `~/ditlens-exports`, or `ditlens-exports` in the working folder without a home.
pub fn default_export_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join("ditlens-exports"))
        .unwrap_or_else(|| PathBuf::from("ditlens-exports"))
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            colormap: Colormap::Viridis,
            opacity: 0.6,
            bilinear: true,
            t2i: false,
            centre: CentreView::Map,
            show_plots: true,
            show_grid: true,
            last_model: None,
            prompt: "a red circle and a blue square on a striped background".into(),
            seed: 0,
            steps: 28,
            guidance: 4.0,
            classes: "circle, square, background".into(),
            threshold: 0.1,
            blur_sigma: 9.0,
            blur_kernel: 5,
            perturb_scale: 2.0,
            perturb_guided: false,
            scene_seed: 1,
            perturb_layers: BTreeSet::from([3]),
            pca_feature: Feature::K,
            export_dir: default_export_dir(),
        }
    }
}
