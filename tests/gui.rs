//! The explorer window driven by egui_kittest with its wgpu renderer (headless; Mesa lavapipe on
//! a machine without a GPU): generate, select a token and a head, compare snapshots; a corrupt
//! dropped file shows an error and the window keeps working; Cancel stops a generation.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use candle_core::Device;
use ditlens::gui::protocol::ModelSource;
use ditlens::gui::script::Script;
use ditlens::gui::ExplorerApp;
use ditlens_core::embedded::{EmbeddedConfig, ToyConfig, TrainConfig, Trainer};
use egui_kittest::kittest::Queryable;
use egui_kittest::{Harness, SnapshotOptions};

/// A tiny model, trained for a few seeded steps and saved once per test process at a fixed path.
fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gui_tiny_model");
        let cfg = ToyConfig {
            model: EmbeddedConfig::tiny(),
            train: TrainConfig {
                steps: 3,
                batch: 2,
                ..TrainConfig::default_toy(false)
            },
        };
        let mut t = Trainer::new(cfg, &Device::Cpu).expect("tiny trainer");
        for _ in 0..3 {
            t.train_step().expect("train step");
        }
        let _ = std::fs::remove_dir_all(&dir);
        t.save(&dir).expect("save the tiny model");
        dir
    })
}

fn harness() -> Harness<'static, ExplorerApp> {
    let dir = model_dir().to_path_buf();
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .with_pixels_per_point(1.0)
        .with_accessibility_check(false)
        .wgpu()
        .build_eframe(move |cc| {
            ExplorerApp::new(cc, Script::default(), Some(ModelSource::Folder(dir)))
        });
    let s = &mut h.state_mut().settings;
    s.prompt = "a red circle".into();
    s.steps = 6;
    s.seed = 3;
    wait(&mut h, "the model", |a| a.session.model.is_some());
    h
}

/// Steps frames until `done` holds (the worker runs on its own thread meanwhile).
fn wait(h: &mut Harness<'static, ExplorerApp>, what: &str, done: impl Fn(&ExplorerApp) -> bool) {
    let t0 = Instant::now();
    while !done(h.state()) {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "timed out waiting for {what}; messages: {:?}",
            h.state().toasts.items
        );
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    h.step();
}

fn snapshot_options() -> SnapshotOptions {
    SnapshotOptions::new()
        .output_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/snapshots"))
        // Model numerics may differ in the last bits between CPUs; text and layout may not.
        .threshold(2.0)
        .max_failed_pixels(400)
}

#[test]
fn generate_select_token_and_head_then_snapshot() {
    let mut h = harness();
    h.get_by_label("Generate").click();
    h.step();
    assert!(h.state().busy().is_some(), "a generation is running");
    wait(&mut h, "the generation", |a| {
        a.session.capture.is_some() && a.running.is_empty()
    });
    let cap = h.state().session.capture.clone().expect("captured");
    assert_eq!(cap.summary.kept_steps.len(), 6);
    assert!(h.state().session.picture.is_some(), "the image is shown");

    h.get_by_label("circle").click();
    h.step();
    h.key_press(egui::Key::ArrowDown);
    h.step();
    h.key_press(egui::Key::ArrowRight);
    h.step();
    let a = h.state();
    let circle = cap
        .summary
        .tokens
        .iter()
        .find(|t| t.string == "circle")
        .expect("the prompt's word")
        .index;
    assert_eq!(a.session.selected_positions(), vec![circle]);
    assert_eq!(a.session.selection.head, Some(0));
    let map = a.views.map.as_ref().expect("a map of the selection");
    assert_eq!(map.values.len(), cap.summary.n_img);
    assert!(a.views.grid.is_some(), "the layer × head grid");
    assert!(
        a.views.mass.is_some() && a.views.norms.is_some(),
        "the plots' data"
    );

    h.state_mut().toasts.items.clear();
    h.step();
    h.snapshot_options("gui_generate", &snapshot_options());

    // The step scrubber moves with `[`.
    let before = h.state().session.selection.step;
    h.key_press(egui::Key::OpenBracket);
    h.step();
    assert_eq!(h.state().session.selection.step, before.saturating_sub(1));
}

#[test]
fn sample_scene_segments_and_scores_every_layer() {
    let mut h = harness();
    h.get_by_label("Sample scene").click();
    wait(&mut h, "the analysis", |a| {
        a.session.layer_scores.is_some() && a.running.is_empty()
    });
    let a = h.state();
    let layers = a.session.model.as_ref().expect("model").layers;
    assert_eq!(a.session.layer_scores.as_ref().map(Vec::len), Some(layers));
    assert!(a.session.segmentation.is_some() && a.session.proposals.is_some());
    h.state_mut().settings.centre = ditlens::gui::settings::CentreView::Segment;
    h.state_mut().toasts.items.clear();
    h.step();
    h.step();
    h.snapshot_options("gui_segment", &snapshot_options());
}

/// A file dropped on the window.
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

#[test]
fn corrupt_dropped_file_shows_an_error_and_the_window_keeps_working() {
    let mut h = harness();
    let bad = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gui_corrupt.png");
    std::fs::write(&bad, b"this is not a PNG").expect("write");
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(bad)));
    h.step();
    wait(&mut h, "the error", |a| a.toasts.errors().next().is_some());
    let err = h
        .state()
        .toasts
        .errors()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("cannot read image"), "{err}");

    h.get_by_label("Generate").click();
    wait(&mut h, "a generation after the error", |a| {
        a.session.capture.is_some() && a.running.is_empty()
    });
}

#[test]
fn cancel_stops_a_generation() {
    let mut h = harness();
    h.state_mut().settings.steps = 400;
    h.get_by_label("Generate").click();
    wait(&mut h, "the first steps", |a| {
        a.busy().is_some_and(|(_, r)| r.done >= 2)
    });
    h.get_by_label("Cancel").click();
    wait(&mut h, "the cancellation", |a| a.running.is_empty());
    let a = h.state();
    assert!(
        a.session.capture.is_none(),
        "nothing captured from a cancelled run"
    );
    assert!(
        a.toasts.items.iter().any(|t| t.text == "cancelled"),
        "{:?}",
        a.toasts.items
    );
}
