//! The explorer's state and frame loop: drains worker events under a time budget, handles drops
//! and keys, refreshes derived views and lays out the panels.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::bench::FrameStats;
use super::protocol::{Command, Event, JobId, ModelSource};
use super::script::Script;
use super::session::{Analysed, Session};
use super::settings::{self, Settings};
use super::textures::Textures;
use super::toasts::Toasts;
use super::views::{MapKey, Views};
use super::worker::Worker;

/// Time per frame spent handling worker events at most.
const EVENT_BUDGET: Duration = Duration::from_millis(4);

/// A job the window waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub what: String,
    pub done: usize,
    pub total: usize,
    /// A long job (progress bar and Cancel); short ones (masks, PCA) are not shown.
    pub long: bool,
}

/// The explorer window.
pub struct ExplorerApp {
    pub settings: Settings,
    pub session: Session,
    pub views: Views,
    pub toasts: Toasts,
    pub textures: Textures,
    pub running: BTreeMap<JobId, Running>,
    pub script: Script,
    pub bench: FrameStats,
    pub thumbs: super::thumbs::Thumbs,
    /// Where a requested window screenshot goes (the export menu).
    pub pending_shot: Option<std::path::PathBuf>,
    pub shots: super::ui_export::ShotInbox,
    pub ctx_handle: egui::Context,
    pub pca_requested: Option<(u64, usize, usize, ditlens_core::probe::Feature)>,
    pub pca_feature_shown: ditlens_core::probe::Feature,
    worker: Option<Worker>,
    next_job: JobId,
    /// Whether the map shader could be installed (a wgpu renderer is present).
    pub shader: bool,
}

impl ExplorerApp {
    /// Builds the window state, starts the worker and asks it for the model.
    pub fn new(
        cc: &eframe::CreationContext<'_>,
        script: Script,
        model: Option<ModelSource>,
    ) -> Self {
        // Scripted runs (screenshots, timings) start from the defaults, so they reproduce.
        let mut settings: Settings = cc
            .storage
            .filter(|_| !script.unattended())
            .and_then(|s| eframe::get_value(s, settings::KEY))
            .unwrap_or_default();
        let shader = match cc.wgpu_render_state.as_ref() {
            Some(rs) => {
                super::map_shader::MapRenderer::install(rs);
                true
            }
            None => false,
        };
        add_fallback_font(&cc.egui_ctx);
        let mut toasts = Toasts::default();
        let worker = match Worker::spawn(cc.egui_ctx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                toasts.error(format!("cannot start the worker thread: {e}"));
                None
            }
        };
        let source = model
            .or_else(|| settings.last_model.clone().filter(|_| !script.unattended()))
            .unwrap_or_else(default_model);
        script.apply_settings(&mut settings);
        let mut app = Self {
            settings,
            session: Session::default(),
            views: Views::default(),
            toasts,
            textures: Textures::default(),
            running: BTreeMap::new(),
            script,
            bench: FrameStats::default(),
            thumbs: Default::default(),
            pending_shot: None,
            shots: Default::default(),
            ctx_handle: cc.egui_ctx.clone(),
            pca_requested: None,
            pca_feature_shown: ditlens_core::probe::Feature::K,
            worker,
            next_job: 1,
            shader,
        };
        if !app.shader {
            app.toasts
                .error("no wgpu renderer: maps are drawn without the colour-map shader");
        }
        app.send(Command::OpenModel(source));
        app
    }

    /// Sends a command; a full or closed queue becomes an error message.
    pub fn send(&mut self, cmd: Command) {
        let r = match &self.worker {
            Some(w) => w.send(cmd),
            None => Err("the worker thread is not running".into()),
        };
        if let Err(e) = r {
            self.toasts.error(e);
        }
    }

    /// Starts a job: gives it an id, records it as running, sends it.
    pub fn start(&mut self, what: &str, long: bool, make: impl FnOnce(JobId) -> Command) -> JobId {
        let id = self.next_job;
        self.next_job += 1;
        self.running.insert(
            id,
            Running {
                what: what.into(),
                done: 0,
                total: 0,
                long,
            },
        );
        self.send(make(id));
        id
    }

    /// The long job shown with a progress bar, if any.
    pub fn busy(&self) -> Option<(JobId, &Running)> {
        self.running
            .iter()
            .rev()
            .find(|(_, r)| r.long)
            .map(|(&id, r)| (id, r))
    }

    /// Asks the worker to stop the running job.
    pub fn cancel(&mut self) {
        self.send(Command::Cancel);
    }

    fn drain_events(&mut self, ctx: &egui::Context) {
        let deadline = Instant::now() + EVENT_BUDGET;
        loop {
            let Some(ev) = self.worker.as_ref().and_then(Worker::try_recv) else {
                break;
            };
            self.handle(ev);
            if Instant::now() > deadline {
                ctx.request_repaint();
                break;
            }
        }
    }

    /// Applies one worker event.
    pub fn handle(&mut self, ev: Event) {
        match ev {
            Event::ModelLoaded(info) => {
                self.toasts.info(format!(
                    "model {}: {} layers × {} heads, {}² pixels",
                    info.source.label(),
                    info.layers,
                    info.heads,
                    info.image_size
                ));
                self.settings.last_model = Some(info.source.clone());
                self.session = Session {
                    selection: super::session::Selection {
                        layer: info.expert_layer.min(info.layers.saturating_sub(1)),
                        ..Default::default()
                    },
                    model: Some(info),
                    ..Default::default()
                };
                self.views.clear();
                self.script_model_loaded();
            }
            Event::ImageLoaded(_, path, picture) => {
                self.toasts.info(format!(
                    "opened {} ({}×{})",
                    path.display(),
                    picture.width,
                    picture.height
                ));
                self.analyse(picture, None);
            }
            Event::Progress {
                job,
                done,
                total,
                what,
            } => {
                if let Some(r) = self.running.get_mut(&job) {
                    r.done = done;
                    r.total = total;
                    r.what = what;
                }
            }
            Event::StepImage { picture, .. } => self.session.set_picture(picture),
            Event::Captured {
                capture, picture, ..
            } => {
                self.session.set_capture(capture);
                if let Some(p) = picture {
                    self.session.set_picture(p);
                }
                self.views.clear();
            }
            Event::Segmented(_, seg) => self.session.segmentation = Some(*seg),
            Event::Proposals(_, p) => self.session.proposals = Some(*p),
            Event::LayerScores(_, s) => self.session.layer_scores = Some(s),
            Event::Pca {
                step,
                layer,
                picture,
                explained,
                ..
            } => self.session.pca = Some((step, layer, picture, explained)),
            Event::Perturbed {
                plain, perturbed, ..
            } => self.session.perturbed = Some((plain, perturbed)),
            Event::Exported(_, msg) => self.toasts.info(msg),
            Event::Finished(job) => {
                self.running.remove(&job);
                self.script_finished(job, None);
            }
            Event::Cancelled(job) => {
                if self.running.remove(&job).is_some_and(|r| r.long) {
                    self.toasts.info("cancelled");
                }
                self.script_finished(job, Some("cancelled".into()));
            }
            Event::Failed { job, what, error } => {
                let msg = format!("{what} failed: {error}");
                self.toasts.error(msg.clone());
                if let Some(job) = job {
                    self.running.remove(&job);
                    self.script_finished(job, Some(msg));
                } else {
                    self.script_failed(msg);
                }
            }
        }
    }

    /// Starts the analysis of a picture with the typed classes.
    pub fn analyse(
        &mut self,
        picture: super::protocol::Picture,
        truth: Option<(Vec<String>, Vec<u8>)>,
    ) {
        let classes = parse_classes(&self.settings.classes);
        if classes.is_empty() {
            self.toasts
                .error("type the class names to look for (comma separated) before analysing");
            return;
        }
        let crop = self.session.model.as_ref().is_some_and(|m| m.centre_crop);
        let picture = if crop && picture.width != picture.height {
            let sq = picture.centre_square();
            self.toasts.info(format!(
                "this model analyses the centred {0}×{0} square of the {1}×{2} picture",
                sq.width, picture.width, picture.height
            ));
            sq
        } else {
            picture
        };
        self.session.set_picture(picture.clone());
        self.session.segmentation = None;
        self.session.proposals = None;
        self.session.layer_scores = None;
        self.session.analysed = Some(Analysed {
            picture: picture.clone(),
            classes: classes.clone(),
            truth: truth.clone(),
        });
        let job = super::protocol::AnalyseJob {
            picture,
            classes,
            seed: self.settings.seed,
            steps: self.settings.steps,
            layer: self.session.selection.layer,
            threshold: self.settings.threshold,
            truth,
        };
        self.start("analysing", true, |id| Command::Analyse(id, Box::new(job)));
    }

    fn handle_drops(&mut self, ctx: &egui::Context) {
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        for f in dropped {
            let p = f.path().to_path_buf();
            if p.as_os_str().is_empty() {
                self.toasts
                    .error("cannot open the dropped item: it has no path");
            } else if p.is_dir() {
                self.send(Command::OpenModel(ModelSource::Folder(p)));
            } else if p
                .file_name()
                .is_some_and(|n| n == "model.json" || n == "model_index.json")
            {
                let dir = p.parent().map(|d| d.to_path_buf()).unwrap_or_default();
                self.send(Command::OpenModel(ModelSource::Folder(dir)));
            } else if p.extension().is_some_and(|e| e == "safetensors") {
                self.send(Command::OpenModel(ModelSource::Folder(p)));
            } else {
                self.start("reading the image", false, |id| Command::LoadImage(id, p));
            }
        }
    }

    fn handle_keys(&mut self, ctx: &egui::Context) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        let (layers, heads) = self.session.dims();
        let steps = self
            .session
            .capture
            .as_ref()
            .map_or(0, |c| c.summary.kept_steps.len());
        let sel = &mut self.session.selection;
        ctx.input(|i| {
            if layers > 0 {
                if i.key_pressed(egui::Key::ArrowRight) {
                    sel.layer = (sel.layer + 1).min(layers - 1);
                }
                if i.key_pressed(egui::Key::ArrowLeft) {
                    sel.layer = sel.layer.saturating_sub(1);
                }
            }
            if heads > 0 {
                if i.key_pressed(egui::Key::ArrowDown) {
                    sel.head = match sel.head {
                        None => Some(0),
                        Some(h) if h + 1 < heads => Some(h + 1),
                        Some(_) => None,
                    };
                }
                if i.key_pressed(egui::Key::ArrowUp) {
                    sel.head = match sel.head {
                        None => Some(heads - 1),
                        Some(0) => None,
                        Some(h) => Some(h - 1),
                    };
                }
            }
            if steps > 0 {
                if i.key_pressed(egui::Key::CloseBracket) {
                    sel.step = (sel.step + 1).min(steps - 1);
                }
                if i.key_pressed(egui::Key::OpenBracket) {
                    sel.step = sel.step.saturating_sub(1);
                }
            }
        });
    }

    /// The key of the large map of the current selection.
    pub fn map_key(&self) -> Option<MapKey> {
        Some(MapKey {
            capture: self.session.capture_version,
            step: self.session.step_index()?,
            layer: self.session.selection.layer,
            head: self.session.selection.head,
            tokens: self.session.selected_positions(),
            t2i: self.settings.t2i,
        })
    }

    fn refresh_views(&mut self) {
        let (Some(cap), Some(key)) = (self.session.capture.clone(), self.map_key()) else {
            return;
        };
        let mut errors = vec![];
        if let Err(e) = self.views.update_map(&cap, key.clone()) {
            errors.push(e);
        }
        if self.settings.show_grid {
            if let Err(e) = self.views.update_grid(&cap, key.clone()) {
                errors.push(e);
            }
        }
        self.views
            .update_stats(&cap, self.session.capture_version, key.step);
        if let Some(p) = self.session.selection.patch {
            if let Err(e) = self.views.update_ranking(&cap, key, p) {
                errors.push(e);
            }
        }
        for e in errors {
            self.toasts.error(e);
        }
    }

    /// One frame of the window (also driven by the tests' harness).
    pub fn frame(&mut self, ui: &mut egui::Ui) {
        let t0 = Instant::now();
        let ctx = ui.ctx().clone();
        self.drain_events(&ctx);
        self.handle_drops(&ctx);
        self.handle_keys(&ctx);
        self.refresh_views();
        self.top_bar(ui);
        self.controls(ui);
        if self.settings.show_plots || self.settings.show_grid {
            self.side(ui);
        }
        self.bottom(ui);
        egui::CentralPanel::default().show(ui, |ui| {
            self.toasts.show(ui);
            self.centre(ui);
        });
        if !self.running.is_empty() {
            // Progress bars animate; events wake the window too.
            ctx.request_repaint_after(Duration::from_millis(100));
        }
        self.script_frame(&ctx, t0);
    }
}

/// The embedded aligned model, else the other one built in.
fn default_model() -> ModelSource {
    ModelSource::Embedded(crate::models::default_name().into())
}

/// The project's DejaVu Sans as the last fallback, for glyphs egui's fonts lack (arrows, σ, μ).
fn add_fallback_font(ctx: &egui::Context) {
    const DEJAVU: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
    let families = [egui::FontFamily::Proportional, egui::FontFamily::Monospace]
        .into_iter()
        .map(|family| egui::epaint::text::InsertFontFamily {
            family,
            priority: egui::epaint::text::FontPriority::Lowest,
        })
        .collect();
    ctx.add_font(egui::epaint::text::FontInsert::new(
        "DejaVuSans",
        egui::FontData::from_static(DEJAVU),
        families,
    ));
}

/// Class names from "a, b c, d" (comma separated; a class may be several words).
pub fn parse_classes(s: &str) -> Vec<String> {
    s.split(',')
        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|c| !c.is_empty())
        .collect()
}

impl eframe::App for ExplorerApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.frame(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, settings::KEY, &self.settings);
    }
}
