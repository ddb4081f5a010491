//! Where the parts of an SD3 pipeline live: a diffusers pipeline folder or Stability's bundled
//! single file (with tokenizers, and optionally configs, in folders beside it).
//!
//! Folder names follow diffusers' `StableDiffusion3Pipeline` (`model_index.json`, `transformer/`,
//! `vae/`, `text_encoder{,_2,_3}/`, `tokenizer{,_2,_3}/`, `scheduler/`); the single file's key
//! prefixes follow the ones diffusers' single-file loader recognises (diffusers v0.42.1,
//! `loaders/single_file_utils.py`: `CHECKPOINT_KEY_NAMES["clip_sd3"]`, `["open_clip_sd3"]`,
//! `is_t5_in_single_file`, `LDM_VAE_KEYS`, `LDM_UNET_KEY`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Which form the user's model has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelForm {
    /// A diffusers pipeline folder.
    PipelineFolder,
    /// One `.safetensors` file bundling several parts.
    SingleFile,
}

/// A part of the pipeline that has weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Transformer,
    Vae,
    ClipL,
    ClipG,
    T5,
}

impl Part {
    /// The diffusers folder name of the part.
    pub fn folder(self) -> &'static str {
        match self {
            Part::Transformer => "transformer",
            Part::Vae => "vae",
            Part::ClipL => "text_encoder",
            Part::ClipG => "text_encoder_2",
            Part::T5 => "text_encoder_3",
        }
    }

    /// The key prefix of the part in Stability's bundled single file.
    pub fn single_file_prefix(self) -> &'static str {
        match self {
            Part::Transformer => "model.diffusion_model.",
            Part::Vae => "first_stage_model.",
            Part::ClipL => "text_encoders.clip_l.transformer.",
            Part::ClipG => "text_encoders.clip_g.transformer.",
            Part::T5 => "text_encoders.t5xxl.transformer.",
        }
    }

    /// The tokenizer folder that belongs to a text encoder.
    pub fn tokenizer_folder(self) -> Option<&'static str> {
        match self {
            Part::ClipL => Some("tokenizer"),
            Part::ClipG => Some("tokenizer_2"),
            Part::T5 => Some("tokenizer_3"),
            _ => None,
        }
    }

    /// A name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Part::Transformer => "transformer",
            Part::Vae => "VAE",
            Part::ClipL => "CLIP-L text encoder",
            Part::ClipG => "CLIP-G text encoder",
            Part::T5 => "T5 text encoder",
        }
    }

    const ALL: [Part; 5] = [
        Part::Transformer,
        Part::Vae,
        Part::ClipL,
        Part::ClipG,
        Part::T5,
    ];
}

/// Where one part's weights are: the safetensors files and the key prefix inside them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights {
    /// The files holding the part (several for a sharded folder).
    pub files: Vec<PathBuf>,
    /// Prefix of every key of the part (empty in a diffusers folder).
    pub prefix: String,
    /// The part's `config.json`, if there is one (in its folder, or a folder beside a single file).
    pub config: Option<PathBuf>,
}

/// The located parts of a pipeline. `None` means absent.
#[derive(Debug, Clone)]
pub struct PipelineParts {
    /// What the user gave.
    pub path: PathBuf,
    pub form: ModelForm,
    pub transformer: Option<Weights>,
    pub vae: Option<Weights>,
    pub clip_l: Option<Weights>,
    pub clip_g: Option<Weights>,
    pub t5: Option<Weights>,
    /// Tokenizer folders of CLIP-L, CLIP-G and T5.
    pub tokenizer_l: Option<PathBuf>,
    pub tokenizer_g: Option<PathBuf>,
    pub tokenizer_t5: Option<PathBuf>,
    /// `scheduler/scheduler_config.json`, if present.
    pub scheduler_config: Option<PathBuf>,
    /// Parts that `model_index.json` declares absent (`[null, null]`), e.g. a T5-less pipeline.
    pub declared_absent: Vec<String>,
}

impl PipelineParts {
    /// Finds the parts of the model at `path`: a diffusers pipeline folder, or a single
    /// `.safetensors` file with tokenizer folders beside it. Parts that are absent are `None`;
    /// [`PipelineParts::weights`] and [`PipelineParts::tokenizer`] turn that into a clear error.
    pub fn locate(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            if let Some(file) = lone_single_file(path)? {
                return Self::single_file(path, &file);
            }
            return Self::folder(path);
        }
        Self::single_file(path, path)
    }

    fn folder(root: &Path) -> Result<Self> {
        let index = root.join("model_index.json");
        let mut declared_absent = vec![];
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::UnknownLayout {
                    path: index.clone(),
                    reason: format!("not JSON: {e}"),
                })?;
            if let Some(obj) = v.as_object() {
                for (k, val) in obj {
                    let null = val
                        .as_array()
                        .is_some_and(|a| a.first().is_some_and(|x| x.is_null()));
                    if null {
                        declared_absent.push(k.clone());
                    }
                }
            }
        } else if !Part::ALL.iter().any(|p| root.join(p.folder()).is_dir()) {
            return Err(Error::UnknownLayout {
                path: root.to_path_buf(),
                reason: "neither a diffusers pipeline folder (model_index.json, transformer/, text_encoder/ …) nor a folder holding one .safetensors file".into(),
            });
        }
        let mut parts = PipelineParts::empty(
            root.to_path_buf(),
            ModelForm::PipelineFolder,
            declared_absent,
        );
        for part in Part::ALL {
            let dir = root.join(part.folder());
            let w = if dir.is_dir() {
                folder_weights(&dir)?
            } else {
                None
            };
            if w.is_none() && dir.join("config.json").is_file() {
                return Err(Error::MissingPart {
                    part: part.label().to_string(),
                    looked: format!(
                        "`{}/` has a config.json but no *.safetensors weights",
                        dir.display()
                    ),
                    hint: "The download looks incomplete; fetch the folder's weights again (or remove the folder to run without this part where that is possible)".into(),
                });
            }
            *parts.slot(part) = w;
        }
        parts.tokenizer_l = Some(root.join("tokenizer")).filter(|p| p.is_dir());
        parts.tokenizer_g = Some(root.join("tokenizer_2")).filter(|p| p.is_dir());
        parts.tokenizer_t5 = Some(root.join("tokenizer_3")).filter(|p| p.is_dir());
        parts.scheduler_config =
            Some(root.join("scheduler/scheduler_config.json")).filter(|p| p.is_file());
        Ok(parts)
    }

    /// Parts of `form` at `path` with nothing located yet.
    fn empty(path: PathBuf, form: ModelForm, declared_absent: Vec<String>) -> Self {
        PipelineParts {
            path,
            form,
            transformer: None,
            vae: None,
            clip_l: None,
            clip_g: None,
            t5: None,
            tokenizer_l: None,
            tokenizer_g: None,
            tokenizer_t5: None,
            scheduler_config: None,
            declared_absent,
        }
    }

    fn single_file(given: &Path, file: &Path) -> Result<Self> {
        let names = tensor_names(file)?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut parts = PipelineParts::empty(given.to_path_buf(), ModelForm::SingleFile, vec![]);
        let mut any = false;
        for part in Part::ALL {
            let prefix = part.single_file_prefix();
            if names.iter().any(|n| n.starts_with(prefix)) {
                any = true;
                let config =
                    Some(dir.join(part.folder()).join("config.json")).filter(|p| p.is_file());
                *parts.slot(part) = Some(Weights {
                    files: vec![file.to_path_buf()],
                    prefix: prefix.to_string(),
                    config,
                });
            }
        }
        if !any {
            let sample: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
            return Err(Error::UnknownLayout {
                path: file.to_path_buf(),
                reason: format!(
                    "no key starts with any SD3 single-file prefix (`model.diffusion_model.`, `text_encoders.clip_l.transformer.`, `text_encoders.clip_g.transformer.`, `text_encoders.t5xxl.transformer.`, `first_stage_model.`); {} tensors, e.g. {sample:?}",
                    names.len()
                ),
            });
        }
        parts.tokenizer_l = Some(dir.join("tokenizer")).filter(|p| p.is_dir());
        parts.tokenizer_g = Some(dir.join("tokenizer_2")).filter(|p| p.is_dir());
        parts.tokenizer_t5 = Some(dir.join("tokenizer_3")).filter(|p| p.is_dir());
        parts.scheduler_config =
            Some(dir.join("scheduler/scheduler_config.json")).filter(|p| p.is_file());
        Ok(parts)
    }

    fn slot(&mut self, part: Part) -> &mut Option<Weights> {
        match part {
            Part::Transformer => &mut self.transformer,
            Part::Vae => &mut self.vae,
            Part::ClipL => &mut self.clip_l,
            Part::ClipG => &mut self.clip_g,
            Part::T5 => &mut self.t5,
        }
    }

    /// The part's weights, if present.
    pub fn get(&self, part: Part) -> Option<&Weights> {
        match part {
            Part::Transformer => self.transformer.as_ref(),
            Part::Vae => self.vae.as_ref(),
            Part::ClipL => self.clip_l.as_ref(),
            Part::ClipG => self.clip_g.as_ref(),
            Part::T5 => self.t5.as_ref(),
        }
    }

    /// The part's weights, or an error saying where they were looked for and how to supply them.
    pub fn weights(&self, part: Part) -> Result<&Weights> {
        self.get(part).ok_or_else(|| {
            let (looked, hint) = match self.form {
                ModelForm::PipelineFolder => (
                    format!(
                        "no `{}/` folder with *.safetensors in {}",
                        part.folder(),
                        self.path.display()
                    ),
                    format!(
                        "Copy the `{}/` folder of the diffusers repository (e.g. stabilityai/stable-diffusion-3-medium-diffusers) into the pipeline folder",
                        part.folder()
                    ),
                ),
                ModelForm::SingleFile => (
                    format!(
                        "no tensor starting with `{}` in {}",
                        part.single_file_prefix(),
                        self.path.display()
                    ),
                    "Use a single file that bundles it (e.g. sd3_medium_incl_clips_t5xxlfp16.safetensors) or the diffusers pipeline folder".to_string(),
                ),
            };
            Error::MissingPart {
                part: part.label().to_string(),
                looked,
                hint,
            }
        })
    }

    /// The tokenizer folder of a text encoder, or an error saying where it was looked for.
    pub fn tokenizer(&self, part: Part) -> Result<&Path> {
        let found = match part {
            Part::ClipL => self.tokenizer_l.as_deref(),
            Part::ClipG => self.tokenizer_g.as_deref(),
            Part::T5 => self.tokenizer_t5.as_deref(),
            _ => None,
        };
        let folder = part.tokenizer_folder().unwrap_or("tokenizer");
        found.ok_or_else(|| {
            let base = match self.form {
                ModelForm::PipelineFolder => self.path.clone(),
                ModelForm::SingleFile => self
                    .get(part)
                    .and_then(|w| w.files.first())
                    .and_then(|f| f.parent())
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| self.path.clone()),
            };
            let what = if part == Part::T5 {
                "tokenizer.json"
            } else {
                "vocab.json + merges.txt"
            };
            Error::MissingPart {
                part: format!("{} tokenizer", part.label().trim_end_matches(" text encoder")),
                looked: format!("no `{folder}/` folder in {}", base.display()),
                hint: format!(
                    "Copy `{folder}/` ({what}) from the diffusers repository stabilityai/stable-diffusion-3-medium-diffusers there"
                ),
            }
        })
    }

    /// Whether `model_index.json` says the part is deliberately absent.
    pub fn is_declared_absent(&self, part: Part) -> bool {
        self.declared_absent.iter().any(|n| n == part.folder())
    }
}

/// A folder that is not a pipeline but holds exactly one `.safetensors` file with SD3
/// single-file keys is treated as that file.
fn lone_single_file(dir: &Path) -> Result<Option<PathBuf>> {
    let pipeline_like = dir.join("model_index.json").is_file()
        || Part::ALL
            .iter()
            .any(|p| folder_has_weights(&dir.join(p.folder())));
    if pipeline_like {
        return Ok(None);
    }
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if p.is_file() && p.extension().is_some_and(|e| e == "safetensors") {
            files.push(p);
        }
    }
    Ok(if files.len() == 1 { files.pop() } else { None })
}

fn folder_has_weights(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        })
        .unwrap_or(false)
}

/// The weight files of one diffusers component folder: `model.safetensors` /
/// `diffusion_pytorch_model.safetensors`, a sharded `*.safetensors.index.json`, or the only
/// `*.safetensors` present. `None` when the folder holds no weights.
fn folder_weights(dir: &Path) -> Result<Option<Weights>> {
    let config = Some(dir.join("config.json")).filter(|p| p.is_file());
    let mut singles = vec![];
    let mut index = None;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".safetensors.index.json") {
            index = Some(p);
        } else if name.ends_with(".safetensors") {
            singles.push(p);
        }
    }
    singles.sort();
    for preferred in ["model.safetensors", "diffusion_pytorch_model.safetensors"] {
        let p = dir.join(preferred);
        if singles.contains(&p) {
            return Ok(Some(Weights {
                files: vec![p],
                prefix: String::new(),
                config,
            }));
        }
    }
    if let Some(index) = index {
        return Ok(Some(Weights {
            files: read_index(&index)?,
            prefix: String::new(),
            config,
        }));
    }
    match singles.len() {
        0 => Ok(None),
        1 => Ok(Some(Weights {
            files: singles,
            prefix: String::new(),
            config,
        })),
        _ => Err(Error::UnknownLayout {
            path: dir.to_path_buf(),
            reason: "several *.safetensors files and no *.safetensors.index.json saying which belong together".into(),
        }),
    }
}

fn read_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::UnknownLayout {
        path: index.to_path_buf(),
        reason: format!("index is not JSON: {e}"),
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: BTreeSet<PathBuf> = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|f| f.as_str())
                .map(|f| dir.join(f))
                .collect()
        })
        .unwrap_or_default();
    if files.is_empty() {
        return Err(Error::UnknownLayout {
            path: index.to_path_buf(),
            reason: "index lists no shard in `weight_map`".into(),
        });
    }
    for f in &files {
        if !f.is_file() {
            return Err(Error::Io {
                path: f.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("shard listed in {} is missing", index.display()),
                ),
            });
        }
    }
    Ok(files.into_iter().collect())
}

/// The tensor names of a safetensors file (header only).
fn tensor_names(file: &Path) -> Result<BTreeSet<String>> {
    let st = open_mmap(&[file.to_path_buf()])?;
    Ok(st.tensors().into_iter().map(|(n, _)| n).collect())
}

/// Memory-maps safetensors files with an error that names the file.
pub(crate) fn open_mmap(files: &[PathBuf]) -> Result<candle_core::safetensors::MmapedSafetensors> {
    for f in files {
        let meta = std::fs::metadata(f).map_err(|e| Error::io(f, e))?;
        if meta.is_dir() {
            return Err(Error::Input(format!(
                "{} is a folder, not a file",
                f.display()
            )));
        }
    }
    // SAFETY: mapped read-only; DiT Lens never writes to a checkpoint it reads.
    unsafe { candle_core::safetensors::MmapedSafetensors::multi(files) }.map_err(|e| {
        Error::NotSafetensors {
            path: files.first().cloned().unwrap_or_default(),
            reason: e.to_string().lines().next().unwrap_or("").to_string(),
        }
    })
}
