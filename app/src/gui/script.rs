//! The scripted start (`ditlens gui --prompt … --screenshot OUT.png`, `--bench-ui N`): start a
//! job once the model is loaded, select layer and token, then benchmark frames, save a
//! screenshot and close, recording failures for the exit code.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::app::ExplorerApp;
use super::protocol::{Command, JobId};
use super::settings::{CentreView, Settings};
use super::views::GridData;

/// The job to start with.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    Generate {
        prompt: String,
        seed: Option<u64>,
    },
    Image {
        path: PathBuf,
        classes: Option<String>,
    },
    SampleScene,
}

/// What the run ended with.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub error: Option<String>,
    pub bench: Option<String>,
    pub screenshot: Option<PathBuf>,
    pub exported: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Stage {
    Model,
    Jobs,
    Settle(u32),
    Export,
    Bench(usize),
    Shot,
    Done,
}

/// The scripted part of a start.
#[derive(Debug)]
pub struct Script {
    pub start: Option<Start>,
    pub layer: Option<usize>,
    pub token: Option<String>,
    pub head: Option<usize>,
    pub t2i: bool,
    /// Schedule index of the captured step to show.
    pub step: Option<usize>,
    /// Patch (column, row) to click.
    pub pixel: Option<(usize, usize)>,
    pub view: Option<CentreView>,
    pub screenshot: Option<PathBuf>,
    /// Write everything into this folder once the jobs are done.
    pub export_all: Option<PathBuf>,
    /// Run the perturbation at these layers after the first job.
    pub perturb: Option<Vec<usize>>,
    /// With no job named, generate the prompt in the settings as soon as the model is loaded,
    /// so the window shows something real at once (`ditlens` with no arguments).
    pub welcome: bool,
    pub bench: Option<usize>,
    /// Fill the layer × head grid with SD3-medium-size data (24 × 24, 64 × 64 maps).
    pub bench_sd3_grid: bool,
    pub outcome: Arc<Mutex<Outcome>>,
    pub(super) stage: Stage,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            start: None,
            layer: None,
            token: None,
            head: None,
            t2i: false,
            step: None,
            pixel: None,
            view: None,
            screenshot: None,
            export_all: None,
            perturb: None,
            welcome: false,
            bench: None,
            bench_sd3_grid: false,
            outcome: Arc::default(),
            stage: Stage::Model,
        }
    }
}

impl Script {
    /// Whether the window closes by itself (screenshot or benchmark).
    pub fn unattended(&self) -> bool {
        self.screenshot.is_some() || self.bench.is_some() || self.export_all.is_some()
    }

    /// Puts the command line's prompt, seed, classes and view into the settings.
    pub fn apply_settings(&self, s: &mut Settings) {
        match &self.start {
            Some(Start::Generate { prompt, seed }) => {
                s.prompt = prompt.clone();
                if let Some(seed) = seed {
                    s.seed = *seed;
                }
            }
            Some(Start::Image {
                classes: Some(c), ..
            }) => s.classes = c.clone(),
            _ => {}
        }
        if let Some(v) = self.view {
            s.centre = v;
        }
    }

    fn set_error(&self, e: String) {
        if let Ok(mut o) = self.outcome.lock() {
            o.error.get_or_insert(e);
        }
    }
}

/// SD3-medium-size grid data: 24 layers × 24 heads (+ mean) of 64 × 64 maps.
fn sd3_grid() -> GridData {
    let (layers, heads, side) = (24, 24, 64);
    let maps = (0..layers)
        .map(|l| {
            (0..=heads)
                .map(|h| {
                    (0..side * side)
                        .map(|i| {
                            let (x, y) = ((i % side) as f32, (i / side) as f32);
                            ((x * 0.1 + l as f32).sin() * (y * 0.07 + h as f32).cos()).abs()
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    GridData {
        layers,
        heads,
        width: side,
        height: side,
        maps,
        lo: 0.0,
        hi: 1.0,
        version: u64::MAX / 2,
    }
}

impl ExplorerApp {
    pub(super) fn script_model_loaded(&mut self) {
        if self.script.stage != Stage::Model {
            return;
        }
        match self.script.start.take() {
            Some(Start::Generate { .. }) => self.generate(),
            Some(Start::Image { path, .. }) => {
                self.start("reading the image", false, |id| {
                    Command::LoadImage(id, path)
                });
            }
            Some(Start::SampleScene) => self.sample_scene(),
            None if self.script.welcome => self.generate(),
            None => {}
        }
        self.script.stage = Stage::Jobs;
    }

    pub(super) fn script_finished(&mut self, _job: JobId, error: Option<String>) {
        if let Some(e) = error {
            if self.script.unattended() && matches!(self.script.stage, Stage::Jobs | Stage::Export)
            {
                self.script.set_error(e);
                self.script_stop();
            }
        }
    }

    pub(super) fn script_failed(&mut self, error: String) {
        if self.script.unattended()
            && matches!(
                self.script.stage,
                Stage::Model | Stage::Jobs | Stage::Export
            )
        {
            self.script.set_error(error);
            self.script_stop();
        }
    }

    /// After a failure: no further jobs, export or timing; the screenshot (when asked for) shows
    /// the window with its error message, then the window closes.
    fn script_stop(&mut self) {
        self.script.perturb = None;
        self.script.export_all = None;
        self.script.bench = None;
        self.script.stage = if self.script.screenshot.is_some() {
            Stage::Settle(3)
        } else {
            Stage::Done
        };
    }

    fn script_select(&mut self) {
        if self.script.unattended() {
            // Screenshots and timings show the result, not the start-up messages.
            self.toasts.items.retain(|t| t.error);
        }
        let (layers, _) = self.session.dims();
        if let Some(l) = self.script.layer {
            if l < layers {
                self.session.selection.layer = l;
            } else {
                let e = format!(
                    "--layer {l}: the model has layers 0..{}",
                    layers.saturating_sub(1)
                );
                self.toasts.error(e.clone());
                if self.script.unattended() {
                    self.script.set_error(e);
                }
            }
        }
        if let Some(t) = self.script.token.clone() {
            if let Err(e) = self.session.select_token(&t) {
                self.toasts.error(e.clone());
                if self.script.unattended() {
                    self.script.set_error(e);
                }
            }
        }
        if let Err(e) = self.script_pick() {
            self.toasts.error(e.clone());
            if self.script.unattended() {
                self.script.set_error(e);
            }
        }
        if let Some(v) = self.script.view {
            self.settings.centre = v;
        }
        if self.script.bench_sd3_grid {
            self.settings.show_grid = true;
            self.views.grid = Some(Arc::new(sd3_grid()));
        }
    }

    /// Applies `--head`, `--t2i`, `--step` and `--pixel`, each checked against the capture.
    fn script_pick(&mut self) -> Result<(), String> {
        let (_, heads) = self.session.dims();
        if let Some(h) = self.script.head {
            if h >= heads {
                return Err(format!(
                    "--head {h}: the model has heads 0..{}",
                    heads.saturating_sub(1)
                ));
            }
            self.session.selection.head = Some(h);
        }
        if self.script.t2i {
            self.settings.t2i = true;
        }
        let Some(cap) = self.session.capture.clone() else {
            return match (self.script.step, self.script.pixel) {
                (None, None) => Ok(()),
                _ => Err("--step / --pixel need a capture (generate or analyse first)".into()),
            };
        };
        if let Some(s) = self.script.step {
            let kept = &cap.summary.kept_steps;
            let k = kept.iter().position(|k| k.index == s).ok_or_else(|| {
                let list: Vec<String> = kept.iter().map(|k| k.index.to_string()).collect();
                format!("--step {s} was not captured (kept: {})", list.join(", "))
            })?;
            self.session.selection.step = k;
        }
        if let Some((col, row)) = self.script.pixel {
            let [rows, cols] = cap.summary.grid;
            if col >= cols || row >= rows {
                return Err(format!(
                    "--pixel {col},{row}: the token grid is {cols} columns × {rows} rows"
                ));
            }
            self.session.selection.patch = Some((col, row));
        }
        Ok(())
    }

    /// Starts the scripted perturbation (layers checked against the model).
    fn script_perturb(&mut self, layers: Vec<usize>) {
        let (n, _) = self.session.dims();
        if let Some(bad) = layers.iter().find(|&&l| l >= n) {
            let e = format!(
                "--perturb {bad}: the model has layers 0..{}",
                n.saturating_sub(1)
            );
            self.toasts.error(e.clone());
            self.script.set_error(e);
            self.script.stage = Stage::Done;
            return;
        }
        self.settings.perturb_layers = layers.into_iter().collect();
        self.perturb();
    }

    /// Benchmark, screenshot or close, once the window has settled (and exported).
    fn script_after_settle(&mut self, ctx: &egui::Context) {
        if let Some(n) = self.script.bench {
            self.bench = Default::default();
            self.script.stage = Stage::Bench(n);
        } else if self.script.screenshot.is_some() {
            self.request_shot(ctx);
            self.script.stage = Stage::Shot;
        } else {
            self.script.stage = Stage::Done;
        }
    }

    /// Advances the script after a frame that started at `t0`.
    pub(super) fn script_frame(&mut self, ctx: &egui::Context, t0: Instant) {
        let shot = self.collect_shots();
        match self.script.stage {
            Stage::Model | Stage::Done => {}
            Stage::Jobs => {
                if self.running.is_empty() {
                    if let Some(layers) = self.script.perturb.take() {
                        self.script_perturb(layers);
                    } else {
                        self.script_select();
                        self.script.stage = Stage::Settle(5);
                    }
                }
            }
            Stage::Settle(0) => {
                if let Some(dir) = self.script.export_all.clone() {
                    self.export_all_into(dir, ctx);
                    self.script.stage = Stage::Export;
                } else {
                    self.script_after_settle(ctx);
                }
            }
            Stage::Export => {
                if self.running.is_empty() && self.pending_shot.is_none() {
                    if let Ok(mut o) = self.script.outcome.lock() {
                        o.exported = self.script.export_all.clone();
                    }
                    self.script_after_settle(ctx);
                }
            }
            Stage::Settle(n) => self.script.stage = Stage::Settle(n - 1),
            Stage::Bench(n) => {
                self.bench.record(t0);
                if self.bench.frames() >= n {
                    let report = self.bench.report();
                    println!("{report}");
                    if let Ok(mut o) = self.script.outcome.lock() {
                        o.bench = Some(report);
                    }
                    if self.script.screenshot.is_some() {
                        self.request_shot(ctx);
                        self.script.stage = Stage::Shot;
                    } else {
                        self.script.stage = Stage::Done;
                    }
                }
            }
            Stage::Shot => {
                if let (Some(img), Some(path)) = (shot, self.script.screenshot.clone()) {
                    let p = super::ui_export::shot_picture(&img);
                    match ditlens_core::export::write_rgb_png(&path, &p.rgb, p.width, p.height) {
                        Ok(()) => {
                            if let Ok(mut o) = self.script.outcome.lock() {
                                o.screenshot = Some(path);
                            }
                        }
                        Err(e) => self.script.set_error(format!("saving the screenshot: {e}")),
                    }
                    self.script.stage = Stage::Done;
                }
            }
        }
        if self.script.unattended() {
            match self.script.stage {
                Stage::Done => ctx.send_viewport_cmd(egui::ViewportCommand::Close),
                // The worker wakes the window while jobs run.
                Stage::Model | Stage::Jobs => {}
                _ => ctx.request_repaint(),
            }
        }
    }
}
