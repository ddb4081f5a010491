//! Evaluation dataset folder: `images/NAME.{png,jpg,jpeg}`, `labels/NAME.png`, `classes.txt`.
//!
//! Labels are 8-bit single-channel (grayscale) PNGs holding class indices, 255 = ignore;
//! `classes.txt` holds one class name per line, the line number (from 0) being the index.
//! [`Dataset::open`] checks the whole folder up front so that a long evaluation does not fail
//! half way; every error names the offending file.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::confusion::{IGNORE_LABEL, MAX_CLASSES};
use super::error::{MetricsError, Result};

/// File name extensions accepted for images (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// One image and its label map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// File stem shared by the image and the label.
    pub name: String,
    /// Path of the image.
    pub image: PathBuf,
    /// Path of the label PNG.
    pub label: PathBuf,
}

/// A decoded label map: row-major class indices, 255 = ignore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// A checked evaluation dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
    classes: Vec<String>,
    samples: Vec<Sample>,
}

impl Dataset {
    /// Reads and checks the folder: class list, image/label pairing (sorted by name), label format,
    /// sizes, and that every label value is a class index or 255.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let root = dir.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(MetricsError::dataset(&root, "dataset folder not found"));
        }
        let classes = read_classes(&root.join("classes.txt"))?;
        let images = list_files(&root.join("images"), &IMAGE_EXTENSIONS)?;
        let mut labels = list_files(&root.join("labels"), &["png"])?;
        if images.is_empty() {
            return Err(MetricsError::dataset(
                root.join("images"),
                "no .png/.jpg/.jpeg images",
            ));
        }
        let mut samples = Vec::with_capacity(images.len());
        for (name, image) in images {
            let label = labels.remove(&name).ok_or_else(|| {
                MetricsError::dataset(&image, format!("image has no label labels/{name}.png"))
            })?;
            samples.push(Sample { name, image, label });
        }
        if let Some((name, label)) = labels.into_iter().next() {
            return Err(MetricsError::dataset(
                label,
                format!("label has no image images/{name}.png|jpg"),
            ));
        }
        for sample in &samples {
            let (w, h) =
                image::image_dimensions(&sample.image).map_err(|source| MetricsError::Image {
                    path: sample.image.clone(),
                    source,
                })?;
            let label = read_label(&sample.label, classes.len())?;
            if (label.width, label.height) != (w, h) {
                return Err(MetricsError::dataset(
                    &sample.label,
                    format!(
                        "label is {}×{} but its image {} is {w}×{h}",
                        label.width,
                        label.height,
                        sample.image.display()
                    ),
                ));
            }
        }
        Ok(Dataset {
            root,
            classes,
            samples,
        })
    }

    /// The dataset folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Class names; the index of a name is its class index.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Image/label pairs, sorted by name.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Number of image/label pairs.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there is no pair (never true for an opened dataset).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Decodes sample `index`'s image as 8-bit RGB.
    pub fn load_image(&self, index: usize) -> Result<image::RgbImage> {
        let path = &self.samples[index].image;
        let img = image::open(path).map_err(|source| MetricsError::Image {
            path: path.clone(),
            source,
        })?;
        Ok(img.to_rgb8())
    }

    /// Decodes and checks sample `index`'s label map.
    pub fn load_label(&self, index: usize) -> Result<LabelMap> {
        read_label(&self.samples[index].label, self.classes.len())
    }

    /// Classes with at least one pixel in a label map, ascending (255 = ignore left out).
    pub fn classes_present(label: &[u8]) -> Vec<usize> {
        let mut seen = [false; 256];
        for &v in label {
            seen[v as usize] = true;
        }
        (0..256)
            .filter(|&v| seen[v] && v != IGNORE_LABEL as usize)
            .collect()
    }
}

/// Decodes a label PNG and checks it is 8-bit single-channel with values `< num_classes` or 255.
pub fn read_label(path: &Path, num_classes: usize) -> Result<LabelMap> {
    check_png_header(path)?;
    let img = image::open(path).map_err(|source| MetricsError::Image {
        path: path.to_path_buf(),
        source,
    })?;
    let color = img.color();
    let image::DynamicImage::ImageLuma8(gray) = img else {
        return Err(MetricsError::dataset(
            path,
            format!("label decodes as {color:?}, expected 8-bit single-channel class indices"),
        ));
    };
    let (width, height) = gray.dimensions();
    let data = gray.into_raw();
    if let Some(i) = data
        .iter()
        .position(|&v| v != IGNORE_LABEL && v as usize >= num_classes)
    {
        let (x, y) = (i % width as usize, i / width as usize);
        return Err(MetricsError::dataset(
            path,
            format!(
                "class index {} at pixel (x={x}, y={y}) but classes.txt lists {num_classes} classes (0..={}); 255 = ignore",
                data[i],
                num_classes - 1
            ),
        ));
    }
    Ok(LabelMap {
        width,
        height,
        data,
    })
}

/// Reads `classes.txt`: one name per line, blank trailing lines ignored.
fn read_classes(path: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(path).map_err(|e| MetricsError::io(path, e))?;
    let mut classes: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while classes.last().is_some_and(|l| l.is_empty()) {
        classes.pop();
    }
    if classes.is_empty() {
        return Err(MetricsError::dataset(path, "no class names"));
    }
    if let Some(i) = classes.iter().position(|c| c.is_empty()) {
        return Err(MetricsError::dataset(
            path,
            format!("line {} is blank; one class name per line", i + 1),
        ));
    }
    if classes.len() > MAX_CLASSES {
        return Err(MetricsError::dataset(
            path,
            format!(
                "{} classes; at most {MAX_CLASSES} fit 8-bit labels next to 255 = ignore",
                classes.len()
            ),
        ));
    }
    Ok(classes)
}

/// Files of `dir` with one of `extensions`, by stem; other files are skipped.
fn list_files(dir: &Path, extensions: &[&str]) -> Result<BTreeMap<String, PathBuf>> {
    if !dir.is_dir() {
        return Err(MetricsError::dataset(dir, "folder not found"));
    }
    let entries = fs::read_dir(dir).map_err(|e| MetricsError::io(dir, e))?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| MetricsError::io(dir, e))?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let stem = path.file_stem().and_then(|s| s.to_str());
        let (Some(ext), Some(stem)) = (ext, stem) else {
            continue;
        };
        if !path.is_file() || !extensions.contains(&ext.as_str()) || stem.starts_with('.') {
            continue;
        }
        if let Some(other) = files.insert(stem.to_string(), path.clone()) {
            return Err(MetricsError::dataset(
                path,
                format!("same name as {}", other.display()),
            ));
        }
    }
    Ok(files)
}

/// Checks the PNG signature and that the header says 8-bit grayscale.
fn check_png_header(path: &Path) -> Result<()> {
    let mut head = [0u8; 26];
    let mut file = fs::File::open(path).map_err(|e| MetricsError::io(path, e))?;
    let read = file
        .read_exact(&mut head)
        .map(|_| true)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Ok(false),
            _ => Err(MetricsError::io(path, e)),
        })?;
    if !read || head[..8] != *b"\x89PNG\r\n\x1a\n" || head[12..16] != *b"IHDR" {
        return Err(MetricsError::dataset(path, "label is not a PNG file"));
    }
    let (depth, color) = (head[24], head[25]);
    if (depth, color) == (8, 0) {
        return Ok(());
    }
    let kind = match color {
        0 => "grayscale",
        2 => "RGB",
        3 => "palette",
        4 => "grayscale+alpha",
        6 => "RGBA",
        _ => "unknown colour type",
    };
    Err(MetricsError::dataset(
        path,
        format!("label must be an 8-bit single-channel (grayscale) PNG of class indices, found {depth}-bit {kind}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, ImageBuffer, Luma, RgbImage};

    /// A fresh scratch folder, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("ditlens-metrics-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("images")).unwrap();
            fs::create_dir_all(dir.join("labels")).unwrap();
            fs::write(
                dir.join("classes.txt"),
                "background\r\ncat\r\n dog \r\n\r\n\n",
            )
            .unwrap();
            Scratch(dir)
        }

        fn image(&self, file: &str, w: u32, h: u32) {
            RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]))
                .save(self.0.join("images").join(file))
                .unwrap();
        }

        fn label(&self, file: &str, w: u32, h: u32, data: Vec<u8>) {
            GrayImage::from_raw(w, h, data)
                .unwrap()
                .save(self.0.join("labels").join(file))
                .unwrap();
        }

        fn error(&self) -> String {
            Dataset::open(&self.0).unwrap_err().to_string()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn opens_sorted_pairs_and_reads_labels() {
        let s = Scratch::new("ok");
        s.image("b.jpg", 2, 2);
        s.image("a.png", 2, 2);
        s.label("b.png", 2, 2, vec![1, 1, 255, 0]);
        s.label("a.png", 2, 2, vec![0, 2, 255, 2]);
        fs::write(s.0.join("images").join("notes.txt"), "skipped").unwrap();
        let ds = Dataset::open(&s.0).unwrap();
        assert_eq!(ds.classes(), ["background", "cat", "dog"]);
        let names: Vec<&str> = ds.samples().iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(ds.samples()[1].image.ends_with("images/b.jpg"));
        let label = ds.load_label(0).unwrap();
        assert_eq!((label.width, label.height), (2, 2));
        assert_eq!(label.data, vec![0, 2, 255, 2]);
        assert_eq!(Dataset::classes_present(&label.data), vec![0, 2]);
        assert_eq!(ds.load_image(1).unwrap().dimensions(), (2, 2));
    }

    #[test]
    fn missing_folder_and_classes() {
        let s = Scratch::new("missing");
        fs::remove_dir_all(s.0.join("labels")).unwrap();
        let err = s.error();
        assert!(
            err.contains("labels") && err.contains("folder not found"),
            "{err}"
        );
        fs::remove_file(s.0.join("classes.txt")).unwrap();
        assert!(s.error().contains("classes.txt"));
        assert!(Dataset::open(s.0.join("nope"))
            .unwrap_err()
            .to_string()
            .contains("dataset folder not found"));
    }

    #[test]
    fn image_without_label_names_the_image() {
        let s = Scratch::new("unpaired");
        s.image("a.png", 2, 2);
        s.image("lonely.jpg", 2, 2);
        s.label("a.png", 2, 2, vec![0; 4]);
        let err = s.error();
        assert!(
            err.contains("lonely.jpg") && err.contains("has no label"),
            "{err}"
        );
    }

    #[test]
    fn rejects_labels_that_are_not_8bit_gray() {
        let s = Scratch::new("rgb");
        s.image("a.png", 2, 2);
        RgbImage::new(2, 2)
            .save(s.0.join("labels").join("a.png"))
            .unwrap();
        let err = s.error();
        assert!(
            err.contains("a.png") && err.contains("found 8-bit RGB"),
            "{err}"
        );
        ImageBuffer::<Luma<u16>, Vec<u16>>::new(2, 2)
            .save(s.0.join("labels").join("a.png"))
            .unwrap();
        assert!(s.error().contains("found 16-bit grayscale"));
    }

    #[test]
    fn rejects_class_index_out_of_range() {
        let s = Scratch::new("range");
        s.image("a.png", 2, 2);
        s.label("a.png", 2, 2, vec![0, 255, 1, 3]);
        let err = s.error();
        assert!(
            err.contains("labels/a.png")
                && err.contains("class index 3 at pixel (x=1, y=1)")
                && err.contains("3 classes"),
            "{err}"
        );
    }

    #[test]
    fn rejects_size_mismatch_and_blank_class_line() {
        let s = Scratch::new("size");
        s.image("a.png", 3, 2);
        s.label("a.png", 2, 2, vec![0; 4]);
        assert!(s.error().contains("label is 2×2 but its image"));
        fs::write(s.0.join("classes.txt"), "a\n\nb\n").unwrap();
        assert!(s.error().contains("line 2 is blank"));
    }
}
