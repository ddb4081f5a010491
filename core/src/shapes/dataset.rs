//! Dataset writer: images, class and instance label PNGs, classes.txt and captions.json.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use serde::{Deserialize, Serialize};

use super::caption::{Caption, CaptionSampler};
use super::error::ShapesError;
use super::scene::{Scene, SceneConfig};
use super::vocab::class_names;

/// The caption and objects of one dataset image, as stored in `captions.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionRecord {
    /// The caption text (may be empty).
    pub text: String,
    /// The caption style name.
    pub style: String,
    /// The background kind.
    pub background: String,
    /// Word indices (into the whitespace-split text) naming the background.
    pub background_words: Vec<usize>,
    /// The objects, back to front.
    pub objects: Vec<ObjectRecord>,
}

/// One object of a dataset image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Its value in `instances/NAME.png`.
    pub instance: u8,
    /// Its value in `labels/NAME.png` (line number in classes.txt).
    pub class: u8,
    /// Shape word.
    pub shape: String,
    /// Colour word.
    pub colour: String,
    /// The exact shade.
    pub rgb: [u8; 3],
    /// Word indices (into the whitespace-split text) naming it.
    pub words: Vec<usize>,
    /// Its visible pixel count.
    pub pixels: usize,
}

impl CaptionRecord {
    /// The record of `scene` captioned by `caption`.
    pub fn new(scene: &Scene, caption: &Caption) -> CaptionRecord {
        CaptionRecord {
            text: caption.text.clone(),
            style: caption.style.name().to_string(),
            background: scene.background().name().to_string(),
            background_words: caption.background_words.clone(),
            objects: scene
                .objects
                .iter()
                .zip(&caption.objects)
                .map(|(o, c)| ObjectRecord {
                    instance: o.instance,
                    class: o.class(),
                    shape: o.shape.name().to_string(),
                    colour: o.colour.name().to_string(),
                    rgb: o.rgb,
                    words: c.words.clone(),
                    pixels: o.visible_pixels,
                })
                .collect(),
        }
    }
}

/// What [`write_dataset`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSummary {
    /// The dataset folder.
    pub dir: PathBuf,
    /// Image names, without extension, in order.
    pub names: Vec<String>,
}

/// The file name stem of image `index`.
pub fn scene_name(index: usize) -> String {
    format!("{index:06}")
}

/// The scene seed of image `index` in a dataset of seed `seed` (a SplitMix64 step).
pub fn scene_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed.wrapping_add((index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes `n` scenes of side `size` under `dir` with the default scene and caption settings.
pub fn write_dataset(
    dir: &Path,
    n: usize,
    seed: u64,
    size: usize,
) -> Result<DatasetSummary, ShapesError> {
    write_dataset_with(
        dir,
        n,
        seed,
        &SceneConfig::with_size(size),
        &CaptionSampler::default(),
    )
}

/// Writes `n` scenes under `dir`:
/// `images/NAME.png` (RGB), `labels/NAME.png` (class per pixel, 0 = background),
/// `instances/NAME.png` (object per pixel, 0 = background), `classes.txt` (class name per
/// line, index = line number) and `captions.json` (NAME → caption and objects).
/// Every file is written to a temporary name first and then renamed into place.
pub fn write_dataset_with(
    dir: &Path,
    n: usize,
    seed: u64,
    config: &SceneConfig,
    captions: &CaptionSampler,
) -> Result<DatasetSummary, ShapesError> {
    config.validate()?;
    for sub in ["images", "labels", "instances"] {
        let d = dir.join(sub);
        fs::create_dir_all(&d).map_err(|source| ShapesError::Io { path: d, source })?;
    }
    let mut records = BTreeMap::new();
    let mut names = Vec::with_capacity(n);
    for index in 0..n {
        let name = scene_name(index);
        let scene = Scene::generate(config, scene_seed(seed, index))?;
        let caption = captions.sample(&scene, &mut scene.caption_rng());
        let s = scene.size as u32;
        let file = format!("{name}.png");
        write_png(
            &dir.join("images").join(&file),
            &scene.rgb,
            s,
            ExtendedColorType::Rgb8,
        )?;
        write_png(
            &dir.join("labels").join(&file),
            &scene.labels,
            s,
            ExtendedColorType::L8,
        )?;
        write_png(
            &dir.join("instances").join(&file),
            &scene.instances,
            s,
            ExtendedColorType::L8,
        )?;
        records.insert(name.clone(), CaptionRecord::new(&scene, &caption));
        names.push(name);
    }
    let classes = class_names().join("\n") + "\n";
    write_atomic(&dir.join("classes.txt"), |w| {
        w.write_all(classes.as_bytes()).map_err(Into::into)
    })?;
    let json_path = dir.join("captions.json");
    write_atomic(&json_path, |w| {
        serde_json::to_writer_pretty(&mut *w, &records).map_err(|source| ShapesError::Json {
            path: json_path.clone(),
            source,
        })?;
        w.write_all(b"\n").map_err(Into::into)
    })?;
    Ok(DatasetSummary {
        dir: dir.to_path_buf(),
        names,
    })
}

/// Reads `captions.json` of a dataset folder.
pub fn read_captions(dir: &Path) -> Result<BTreeMap<String, CaptionRecord>, ShapesError> {
    let path = dir.join("captions.json");
    let text = fs::read_to_string(&path).map_err(|source| ShapesError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ShapesError::Json { path, source })
}

/// Encodes a square 8-bit image as PNG at `path`, atomically.
fn write_png(
    path: &Path,
    pixels: &[u8],
    side: u32,
    colour: ExtendedColorType,
) -> Result<(), ShapesError> {
    write_atomic(path, |w| {
        PngEncoder::new(w)
            .write_image(pixels, side, side, colour)
            .map_err(|source| {
                WriteError::Shapes(ShapesError::Image {
                    path: path.to_path_buf(),
                    source,
                })
            })
    })
}

/// An error from a write step, before the path is known to it.
enum WriteError {
    Io(std::io::Error),
    Shapes(ShapesError),
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError::Io(e)
    }
}

impl From<ShapesError> for WriteError {
    fn from(e: ShapesError) -> Self {
        WriteError::Shapes(e)
    }
}

/// Writes `path` through a temporary file in the same folder, renamed into place once complete.
fn write_atomic<F>(path: &Path, body: F) -> Result<(), ShapesError>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<(), WriteError>,
{
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ShapesError::Io { path: p, source }
    };
    let result = (|| {
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = BufWriter::new(file);
        match body(&mut w) {
            Ok(()) => {}
            Err(WriteError::Io(e)) => return Err(io_err(&tmp)(e)),
            Err(WriteError::Shapes(e)) => return Err(e),
        }
        let file = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::vocab::{Colour, Shape};

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ditlens-shapes-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn writes_readable_dataset() {
        let dir = temp_dir("write");
        let summary = write_dataset(&dir, 6, 42, 64).unwrap();
        assert_eq!(
            summary.names,
            ["000000", "000001", "000002", "000003", "000004", "000005"]
        );

        let classes = fs::read_to_string(dir.join("classes.txt")).unwrap();
        let lines: Vec<&str> = classes.lines().collect();
        assert_eq!(
            lines,
            [
                "background",
                "circle",
                "square",
                "triangle",
                "star",
                "cross",
                "ring",
                "diamond",
                "hexagon"
            ]
        );

        let records = read_captions(&dir).unwrap();
        assert_eq!(records.len(), 6);
        for name in &summary.names {
            let img = image::open(dir.join("images").join(format!("{name}.png"))).unwrap();
            assert_eq!(img.color(), image::ColorType::Rgb8);
            assert_eq!((img.width(), img.height()), (64, 64));
            let labels = image::open(dir.join("labels").join(format!("{name}.png"))).unwrap();
            assert_eq!(labels.color(), image::ColorType::L8);
            let labels = labels.into_luma8();
            assert_eq!(labels.dimensions(), (64, 64));
            let inst = image::open(dir.join("instances").join(format!("{name}.png")))
                .unwrap()
                .into_luma8();

            // The files hold exactly the regenerated scene.
            let scene = Scene::generate(
                &SceneConfig::with_size(64),
                scene_seed(42, name.parse().unwrap()),
            )
            .unwrap();
            assert_eq!(img.into_rgb8().into_raw(), scene.rgb);
            assert_eq!(labels.as_raw(), &scene.labels);
            assert_eq!(inst.as_raw(), &scene.instances);

            let rec = &records[name];
            assert_eq!(rec.objects.len(), scene.objects.len());
            assert_eq!(rec.background, scene.background().name());
            for (o, r) in scene.objects.iter().zip(&rec.objects) {
                assert_eq!(Shape::from_name(&r.shape).unwrap(), o.shape);
                assert_eq!(Colour::from_name(&r.colour).unwrap(), o.colour);
                assert_eq!(lines[r.class as usize], r.shape);
                assert_eq!(
                    labels
                        .as_raw()
                        .iter()
                        .zip(inst.as_raw())
                        .filter(|(l, i)| **l == r.class && **i == r.instance)
                        .count(),
                    r.pixels
                );
                let words: Vec<&str> = rec.text.split_whitespace().collect();
                if rec.style != "empty" {
                    assert!(
                        r.words.iter().any(|&k| words[k] == r.shape),
                        "{:?}",
                        rec.text
                    );
                }
            }
        }
        // No temporary files are left behind.
        for sub in [".", "images", "labels", "instances"] {
            for entry in fs::read_dir(dir.join(sub)).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                assert!(!name.ends_with(".tmp"), "{name}");
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_target_is_an_error_naming_the_path() {
        let dir = temp_dir("blocked");
        fs::create_dir_all(&dir).unwrap();
        let blocker = dir.join("images");
        fs::write(&blocker, b"not a folder").unwrap();
        let err = write_dataset(&dir, 1, 0, 32).unwrap_err().to_string();
        assert!(err.contains("images"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scene_seeds_are_distinct() {
        let seeds: std::collections::HashSet<u64> = (0..1000).map(|i| scene_seed(9, i)).collect();
        assert_eq!(seeds.len(), 1000);
        assert_ne!(scene_seed(1, 0), scene_seed(2, 0));
    }
}
