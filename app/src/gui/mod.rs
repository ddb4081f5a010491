//! The explorer window (eframe + egui with the wgpu renderer): the UI thread only draws and sends
//! jobs to a worker thread that owns the model.

pub mod app;
pub mod bench;
pub mod colormap;
pub mod export_all;
pub mod jobs;
pub mod map_shader;
pub mod plots;
pub mod protocol;
pub mod script;
pub mod session;
pub mod settings;
pub mod textures;
pub mod thumbs;
pub mod toasts;
mod ui_bottom;
mod ui_centre;
mod ui_controls;
mod ui_export;
mod ui_side;
mod ui_top;
pub mod views;
pub mod worker;

use anyhow::bail;

pub use app::ExplorerApp;
use protocol::ModelSource;
use script::{Script, Start};
use settings::CentreView;

use crate::cli::{GuiArgs, ViewArg};

/// Window size in points.
pub const WINDOW_SIZE: [f32; 2] = [1440.0, 900.0];

impl From<ViewArg> for CentreView {
    fn from(v: ViewArg) -> Self {
        match v {
            ViewArg::Map => CentreView::Map,
            ViewArg::Segment => CentreView::Segment,
            ViewArg::Perturb => CentreView::Perturb,
            ViewArg::Pca => CentreView::Pca,
        }
    }
}

/// The model and script a command line asks for.
pub fn plan(a: &GuiArgs) -> anyhow::Result<(Option<ModelSource>, Script)> {
    if a.prompt.is_some() && a.image.is_some() {
        bail!("give either --prompt (generate) or --image (analyse), not both");
    }
    if a.classes.is_some() && a.image.is_none() {
        bail!("--classes goes with --image");
    }
    let model = match (&a.model, &a.embedded) {
        (Some(_), Some(_)) => bail!("give either --model DIR or --embedded NAME"),
        (Some(dir), None) => Some(ModelSource::Folder(dir.clone())),
        (None, Some(name)) => Some(ModelSource::Embedded(name.clone())),
        (None, None) => None,
    };
    let start = match (&a.prompt, &a.image) {
        (Some(p), None) => Some(Start::Generate {
            prompt: p.clone(),
            seed: a.seed,
        }),
        (None, Some(path)) => Some(Start::Image {
            path: path.clone(),
            classes: a.classes.clone(),
        }),
        _ if a.sample_scene => Some(Start::SampleScene),
        _ => None,
    };
    let script = Script {
        welcome: start.is_none(),
        start,
        layer: a.layer,
        token: a.token.clone(),
        head: a.head,
        t2i: a.t2i,
        step: a.step,
        pixel: a.pixel.as_deref().map(parse_pixel).transpose()?,
        view: a.view.map(Into::into),
        screenshot: a.screenshot.clone(),
        export_all: a.export_all.clone(),
        perturb: a.perturb.clone(),
        bench: a.bench_ui,
        bench_sd3_grid: a.bench_sd3_grid,
        ..Default::default()
    };
    Ok((model, script))
}

/// `COL,ROW` of `--pixel`.
fn parse_pixel(s: &str) -> anyhow::Result<(usize, usize)> {
    let bad = || anyhow::anyhow!("--pixel takes COL,ROW (two whole numbers), got `{s}`");
    let (c, r) = s.split_once(',').ok_or_else(bad)?;
    Ok((
        c.trim().parse().map_err(|_| bad())?,
        r.trim().parse().map_err(|_| bad())?,
    ))
}

/// Opens the window and runs until it is closed; with `--screenshot` / `--bench-ui`, until the
/// script is done (an error if its job failed).
pub fn run(a: &GuiArgs) -> anyhow::Result<()> {
    let (model, script) = plan(a)?;
    leave_a_core_for_the_window();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let outcome = script.outcome.clone();
    let unattended = script.unattended();
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("DiT Lens")
        .with_inner_size(WINDOW_SIZE)
        .with_drag_and_drop(true);
    if unattended {
        viewport = viewport.with_resizable(false);
    }
    let options = eframe::NativeOptions {
        viewport,
        renderer: eframe::Renderer::Wgpu,
        persist_window: !unattended,
        ..Default::default()
    };
    let result = eframe::run_native(
        "DiT Lens",
        options,
        Box::new(move |cc| Ok(Box::new(ExplorerApp::new(cc, script, model)))),
    );
    if let Err(e) = result {
        bail!("cannot open the window: {e}");
    }
    let o = outcome.lock().map(|o| o.clone()).unwrap_or_default();
    if let Some(e) = o.error {
        bail!("{e}");
    }
    if let Some(d) = &o.exported {
        println!("exported to {}", d.display());
    } else if a.export_all.is_some() {
        bail!("the window closed before the export was written");
    }
    if let Some(p) = o.screenshot {
        println!("screenshot written to {}", p.display());
    } else if a.screenshot.is_some() {
        bail!("the window closed before the screenshot was taken");
    }
    Ok(())
}

/// Caps candle's CPU threads at one less than the machine has (unless the user chose), so the
/// window keeps a core while the model runs: with every core computing, candle's spinning pool
/// and the window fight for them (on 2 busy cores a 28-step generation took 6.9 s with 2
/// threads, 4.3 s with 1).
fn leave_a_core_for_the_window() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some()
        || std::env::var_os("CANDLE_NUM_THREADS").is_some()
    {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = cores.saturating_sub(1).max(1).to_string();
    // Before any other thread exists: nothing reads the environment concurrently.
    std::env::set_var("RAYON_NUM_THREADS", &n);
    std::env::set_var("CANDLE_NUM_THREADS", &n);
}
#[cfg(test)]
mod tests;
