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
use egui_kittest::kittest::{NodeT, Queryable};
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
    let mut h = window(ModelSource::Folder(model_dir().to_path_buf()));
    let s = &mut h.state_mut().settings;
    s.prompt = "a red circle".into();
    s.steps = 6;
    s.seed = 3;
    wait(&mut h, "the model", |a| a.session.model.is_some());
    h
}

/// The window at a fixed size and scale, opening `model`.
fn window(model: ModelSource) -> Harness<'static, ExplorerApp> {
    Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .with_pixels_per_point(1.0)
        .with_accessibility_check(false)
        .wgpu()
        .build_eframe(move |cc| ExplorerApp::new(cc, Script::default(), Some(model)))
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

#[test]
fn perturb_then_export_all_writes_every_file() {
    let mut h = harness();
    let out = tempfile::tempdir().expect("tempdir");
    h.state_mut().settings.export_dir = out.path().to_path_buf();
    h.get_by_label("Generate").click();
    wait(&mut h, "the generation", |a| {
        a.session.capture.is_some() && a.running.is_empty()
    });
    h.get_by_label("circle").click();
    h.step();

    h.state_mut().settings.perturb_layers = [0, 1].into();
    h.state_mut().settings.blur_sigma = 50.0;
    open_section(&mut h, "Perturb");
    h.get_by_label("Run perturbation").click();
    h.step();
    assert!(h.state().busy().is_some(), "the perturbation runs");
    wait(&mut h, "the perturbation", |a| {
        a.session.perturbed.is_some() && a.running.is_empty()
    });
    let (plain, blurred) = h.state().session.perturbed.clone().expect("pair");
    assert_eq!((plain.width, plain.height), (blurred.width, blurred.height));
    assert_eq!(
        plain.rgb,
        h.state().session.picture.as_ref().expect("image").rgb,
        "the unperturbed image is the generation of the same seed"
    );
    // (The tiny 3-step model attends almost uniformly over text, so the blur barely changes
    // its image; the analysis tests check the blur's effect on a trained model.)

    open_section(&mut h, "Export");
    h.get_by_label("Export all").click();
    h.step();
    assert!(
        h.state().pending_shot.is_some(),
        "a screenshot is on its way"
    );
    wait(&mut h, "the export", |a| {
        a.running.is_empty() && a.pending_shot.is_none()
    });
    let dir = out.path().join("export-001");
    for f in [
        "image.png",
        "perturb_unperturbed.png",
        "perturb_perturbed.png",
        "heads.png",
        "heads.svg",
        "tokens.png",
        "mass.png",
        "mass.csv",
        "value_norms.svg",
        "value_norms.csv",
        "capture.safetensors",
        "capture.json",
        "screenshot.png",
    ] {
        assert!(
            dir.join(f).is_file(),
            "{f} missing in {}; messages: {:?}",
            dir.display(),
            h.state().toasts.items
        );
    }
    let csv = std::fs::read_to_string(dir.join("mass.csv")).expect("csv");
    let layers = h.state().session.model.as_ref().expect("model").layers;
    assert!(
        csv.lines().count() > layers,
        "a row per block and head: {csv}"
    );
    let shot = image::open(dir.join("screenshot.png")).expect("screenshot");
    assert_eq!((shot.width(), shot.height()), (1280, 800));
    assert!(
        h.state()
            .toasts
            .items
            .iter()
            .any(|t| t.text.contains("export-001")),
        "the message says where: {:?}",
        h.state().toasts.items
    );
}

/// Opens a collapsed section of the left panel.
fn open_section(h: &mut Harness<'static, ExplorerApp>, name: &str) {
    h.get_all_by_label(name)
        .find(|n| n.accesskit_node().data().is_expanded() == Some(false))
        .unwrap_or_else(|| panic!("a collapsed section {name}"))
        .click();
    h.step();
    h.step();
}

#[test]
fn sd3_pipeline_generates_and_analyses_in_the_window() {
    // The tiny random SD3 pipeline fixture (CLIP-L, CLIP-G, T5, VAE, 2 joint blocks).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sd3_pipeline/pipeline");
    let mut h = window(ModelSource::Folder(dir));
    {
        let s = &mut h.state_mut().settings;
        s.prompt = "a red circle".into();
        s.steps = 6;
        s.seed = 3;
        s.classes = "circle, square, background".into();
    }
    wait(&mut h, "the SD3 model", |a| a.session.model.is_some());
    let info = h.state().session.model.clone().expect("model info");
    assert!(
        info.variant.contains("diffusers folder"),
        "{}",
        info.variant
    );
    assert_eq!((info.layers, info.heads, info.text_len), (2, 2, 154));
    assert_eq!(info.image_size, 64);

    h.get_by_label("Generate").click();
    wait(&mut h, "the SD3 generation", |a| {
        a.session.capture.is_some() && a.running.is_empty()
    });
    let cap = h.state().session.capture.clone().expect("captured");
    assert_eq!(cap.summary.n_txt, 154);
    assert_eq!(cap.summary.kept_steps.len(), 6);
    let pic = h
        .state()
        .session
        .picture
        .clone()
        .expect("the decoded image");
    assert_eq!((pic.width, pic.height), (64, 64));
    // The word appears twice: in the CLIP block and in the T5 block.
    let words: Vec<_> = h.get_all_by_label("circle").collect();
    assert_eq!(words.len(), 2);
    words[0].click();
    h.step();
    assert!(h.state().views.map.is_some(), "a map of the selected word");

    // A sample scene: captured, segmented with the typed classes, scored at every block.
    h.get_by_label("Sample scene").click();
    wait(&mut h, "the SD3 analysis", |a| {
        a.session.layer_scores.is_some() && a.running.is_empty()
    });
    let a = h.state();
    assert_eq!(a.session.layer_scores.as_ref().map(Vec::len), Some(2));
    let seg = a.session.segmentation.as_ref().expect("masks");
    assert_eq!(seg.labels.len(), seg.width * seg.height);
    assert!(a.session.proposals.is_some());
    assert!(a.toasts.errors().next().is_none(), "{:?}", a.toasts.items);

    // A wide photo: SD3 analyses its centred square, and the window shows that square.
    let wide = ditlens::gui::protocol::Picture {
        rgb: (0..40 * 24)
            .flat_map(|i| [(i % 40 * 6) as u8, (i / 40 * 10) as u8, 128])
            .collect(),
        width: 40,
        height: 24,
    };
    h.state_mut().analyse(wide, None);
    wait(&mut h, "the SD3 photo analysis", |a| {
        a.session.segmentation.is_some() && a.running.is_empty()
    });
    let a = h.state();
    let shown = a.session.picture.as_ref().expect("the picture");
    assert_eq!((shown.width, shown.height), (24, 24));
    let seg = a.session.segmentation.as_ref().expect("masks");
    assert_eq!((seg.width, seg.height), (24, 24));

    // The I2T blur experiment: the same seed sampled with and without the blur at block 0.
    let job = ditlens::gui::protocol::PerturbJob {
        generate: ditlens::gui::protocol::GenerateJob {
            prompt: "a red circle".into(),
            seed: 1,
            steps: 2,
            guidance: 4.0,
        },
        layers: vec![0],
        sigma: 9.0,
        kernel: 5,
        scale: None,
    };
    h.state_mut().start("perturbing", true, |id| {
        ditlens::gui::protocol::Command::Perturb(id, job)
    });
    wait(&mut h, "the perturbation", |a| {
        a.session.perturbed.is_some() && a.running.is_empty()
    });
    let (plain, blurred) = h.state().session.perturbed.clone().expect("both images");
    assert_eq!((plain.width, blurred.width), (64, 64));
    assert_ne!(
        plain.rgb, blurred.rgb,
        "blurring block 0's I2T changes the image"
    );
    assert!(h.state().toasts.errors().next().is_none());
}
