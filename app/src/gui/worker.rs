//! The worker thread that owns the model: takes commands from a bounded channel, runs one job at
//! a time and streams events back, waking the window after each.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::models::ProbeModel;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use ditlens_core::probe::ProbeCapture;

use super::jobs;
use super::protocol::{Command, Event, JobId};

/// Commands waiting at most (the window never blocks on a full queue: it shows an error).
const COMMAND_CAPACITY: usize = 64;
/// Events in flight at most (the worker waits when the window falls behind).
const EVENT_CAPACITY: usize = 512;

/// The window's handle on the worker thread.
pub struct Worker {
    commands: Sender<Command>,
    events: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread `ditlens-worker`; `repaint` wakes the window when an event is sent.
    pub fn spawn(repaint: egui::Context) -> std::io::Result<Self> {
        let (cmd_tx, cmd_rx) = bounded(COMMAND_CAPACITY);
        let (ev_tx, ev_rx) = bounded(EVENT_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("ditlens-worker".into())
            .spawn(move || {
                let mut w = WorkerState {
                    link: Link {
                        commands: cmd_rx,
                        events: ev_tx,
                        repaint,
                        pending: VecDeque::new(),
                        cancelled: false,
                        shutdown: false,
                    },
                    model: None,
                    capture: None,
                };
                w.run();
            })?;
        Ok(Self {
            commands: cmd_tx,
            events: ev_rx,
            thread: Some(thread),
        })
    }

    /// Queues a command without waiting.
    pub fn send(&self, cmd: Command) -> Result<(), String> {
        self.commands.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => "the worker is busy: too many queued jobs".to_string(),
            TrySendError::Disconnected(_) => "the worker thread has stopped".to_string(),
        })
    }

    /// The next event, if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.commands.try_send(Command::Cancel);
        let _ = self.commands.try_send(Command::Shutdown);
        // The thread stops after its current step; waiting for it would stall the exit.
        drop(self.thread.take());
    }
}

/// The worker's end of the channels.
pub struct Link {
    commands: Receiver<Command>,
    events: Sender<Event>,
    repaint: egui::Context,
    pending: VecDeque<Command>,
    cancelled: bool,
    shutdown: bool,
}

impl Link {
    /// Sends an event and wakes the window.
    pub fn emit(&self, e: Event) {
        // A closed window drops the receiver; there is nobody left to tell.
        let _ = self.events.send(e);
        self.repaint.request_repaint();
    }

    /// Between two steps of a job: takes newly arrived commands; `false` when the job must stop.
    pub fn keep_going(&mut self) -> bool {
        while let Ok(c) = self.commands.try_recv() {
            match c {
                Command::Cancel => self.cancelled = true,
                Command::Shutdown => {
                    self.cancelled = true;
                    self.shutdown = true;
                }
                other => self.pending.push_back(other),
            }
        }
        !self.cancelled
    }

    /// Whether the running job was cancelled.
    pub fn cancelled(&self) -> bool {
        self.cancelled
    }

    /// The next command to run, newest-wins for the live-updated views.
    fn next(&mut self) -> Option<Command> {
        let cmd = match self.pending.pop_front() {
            Some(c) => c,
            None => self.commands.recv().ok()?,
        };
        self.keep_going();
        let superseded = match &cmd {
            Command::Unsupervised { .. } => self
                .pending
                .iter()
                .any(|c| matches!(c, Command::Unsupervised { .. })),
            Command::Pca { .. } => self
                .pending
                .iter()
                .any(|c| matches!(c, Command::Pca { .. })),
            _ => false,
        };
        if superseded {
            self.emit(Event::Cancelled(describe(&cmd).0));
            return Some(Command::Cancel);
        }
        Some(cmd)
    }
}

struct WorkerState {
    link: Link,
    model: Option<ProbeModel>,
    capture: Option<Arc<ProbeCapture>>,
}

impl WorkerState {
    fn run(&mut self) {
        while !self.link.shutdown {
            let Some(cmd) = self.link.next() else { break };
            match cmd {
                Command::Cancel => {}
                Command::Shutdown => break,
                Command::OpenModel(src) => match jobs::open_model(&src) {
                    Ok((model, info)) => {
                        self.model = Some(model);
                        self.capture = None;
                        self.link.emit(Event::ModelLoaded(info));
                    }
                    Err(e) => self.link.emit(Event::Failed {
                        job: None,
                        what: format!("opening {}", src.label()),
                        error: format!("{e:#}"),
                    }),
                },
                other => self.run_job(other),
            }
            // A cancel is for the job it interrupted (or the one about to start), never a later one.
            self.link.cancelled = false;
        }
    }

    fn run_job(&mut self, cmd: Command) {
        let (job, what) = describe(&cmd);
        let result = match (&self.model, cmd) {
            (_, Command::LoadImage(job, path)) => jobs::load_image(&self.link, job, path),
            (_, Command::Export(job, e)) => jobs::export(&self.link, job, *e),
            (None, _) => Err(anyhow::anyhow!("no model is loaded")),
            (Some(m), Command::Generate(job, g)) => {
                jobs::generate(m, &mut self.link, job, &g).map(|cap| self.capture = Some(cap))
            }
            (Some(m), Command::Analyse(job, a)) => {
                jobs::analyse(m, &mut self.link, job, &a).map(|cap| self.capture = Some(cap))
            }
            (
                Some(m),
                Command::Segment {
                    job,
                    picture,
                    classes,
                    layer,
                },
            ) => jobs::segment(m, &self.link, job, &picture, &classes, layer),
            (
                Some(m),
                Command::Unsupervised {
                    job,
                    picture,
                    layer,
                    threshold,
                },
            ) => jobs::unsupervised(m, &self.link, job, &picture, layer, threshold),
            (
                Some(_),
                Command::Pca {
                    job,
                    step,
                    layer,
                    feature,
                },
            ) => jobs::pca(
                self.capture.as_deref(),
                &self.link,
                job,
                step,
                layer,
                feature,
            ),
            (Some(m), Command::Perturb(job, p)) => jobs::perturb(m, &mut self.link, job, &p),
            (Some(_), Command::OpenModel(_) | Command::Cancel | Command::Shutdown) => Ok(()),
        };
        match result {
            Ok(()) => self.link.emit(Event::Finished(job)),
            Err(_) if self.link.cancelled() => self.link.emit(Event::Cancelled(job)),
            Err(e) => {
                tracing::warn!("{what} failed: {e:#}");
                self.link.emit(Event::Failed {
                    job: Some(job),
                    what,
                    error: format!("{e:#}"),
                })
            }
        }
    }
}

/// Job id and a few words for messages.
fn describe(cmd: &Command) -> (JobId, String) {
    match cmd {
        Command::LoadImage(j, p) => (*j, format!("reading {}", p.display())),
        Command::Generate(j, _) => (*j, "generation".into()),
        Command::Analyse(j, _) => (*j, "image analysis".into()),
        Command::Segment { job, .. } => (*job, "segmentation".into()),
        Command::Unsupervised { job, .. } => (*job, "unsupervised proposals".into()),
        Command::Pca { job, .. } => (*job, "PCA".into()),
        Command::Perturb(j, _) => (*j, "perturbation".into()),
        Command::Export(j, _) => (*j, "export".into()),
        Command::OpenModel(_) | Command::Cancel | Command::Shutdown => (0, String::new()),
    }
}
