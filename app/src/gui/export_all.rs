//! "Export all": everything the window currently shows, written into one folder without
//! dialogs (image, masks, proposals, perturbation pair, figures with their CSVs, tensors).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ditlens_core::export::{write_class_pngs, write_label_png, write_overlay_png, write_rgb_png};
use ditlens_core::figure::{MassPlot, ValueNormPlot};
use ditlens_core::io::write_atomic;
use ditlens_core::probe::figures::{head_grid, token_grid};
use ditlens_core::probe::{MapKind, ProbeCapture};

use super::jobs::figure;
use super::protocol::Picture;

/// The capture's view at the moment of export.
#[derive(Debug, Clone)]
pub struct CaptureView {
    pub capture: Arc<ProbeCapture>,
    pub step: usize,
    pub layer: usize,
    /// Selected token position (the layer × head grid is drawn for it).
    pub token: Option<usize>,
    pub t2i: bool,
}

/// What "Export all" writes.
#[derive(Debug, Clone, Default)]
pub struct ExportBundle {
    pub dir: PathBuf,
    pub picture: Option<Picture>,
    /// Open-vocabulary masks: labels at the picture's size and the class names.
    pub masks: Option<(Picture, Vec<u8>, Vec<String>)>,
    /// Unsupervised proposals at the picture's size.
    pub proposals: Option<(Picture, Vec<u8>)>,
    /// Unperturbed and perturbed images of the same seed.
    pub perturbed: Option<(Picture, Picture)>,
    pub view: Option<CaptureView>,
    /// mIoU per layer of a sample scene.
    pub layer_scores: Option<Vec<f64>>,
}

impl ExportBundle {
    /// Whether there is anything to write.
    pub fn has_data(&self) -> bool {
        self.picture.is_some()
            || self.masks.is_some()
            || self.proposals.is_some()
            || self.perturbed.is_some()
            || self.view.is_some()
            || self.layer_scores.is_some()
    }
}

fn rgb(path: &Path, p: &Picture) -> anyhow::Result<()> {
    Ok(write_rgb_png(path, &p.rgb, p.width, p.height)?)
}

/// Writes the bundle into `b.dir` (created) and returns the files written, relative to it.
pub fn write_bundle(b: &ExportBundle) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        b.has_data(),
        "nothing to export yet: generate, analyse an image or draw a sample scene first"
    );
    let dir = &b.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = vec![];
    let mut put = |name: &str| out.push(name.to_string());
    if let Some(p) = &b.picture {
        rgb(&dir.join("image.png"), p)?;
        put("image.png");
    }
    if let Some((p, labels, classes)) = &b.masks {
        write_label_png(&dir.join("labels.png"), labels, p.width, p.height)?;
        write_overlay_png(&dir.join("overlay.png"), &p.rgb, labels, p.width, p.height)?;
        let cdir = dir.join("classes");
        std::fs::create_dir_all(&cdir).with_context(|| format!("creating {}", cdir.display()))?;
        write_class_pngs(&cdir, labels, p.width, p.height, classes)?;
        write_atomic(
            &dir.join("classes.txt"),
            (classes.join("\n") + "\n").as_bytes(),
        )?;
        for f in ["labels.png", "overlay.png", "classes/", "classes.txt"] {
            put(f);
        }
    }
    if let Some((p, labels)) = &b.proposals {
        write_label_png(&dir.join("proposals.png"), labels, p.width, p.height)?;
        write_overlay_png(
            &dir.join("proposals_overlay.png"),
            &p.rgb,
            labels,
            p.width,
            p.height,
        )?;
        put("proposals.png");
        put("proposals_overlay.png");
    }
    if let Some((a, z)) = &b.perturbed {
        rgb(&dir.join("perturb_unperturbed.png"), a)?;
        rgb(&dir.join("perturb_perturbed.png"), z)?;
        put("perturb_unperturbed.png");
        put("perturb_perturbed.png");
    }
    if let Some(v) = &b.view {
        let kind = if v.t2i { MapKind::T2i } else { MapKind::I2t };
        let cap = &v.capture;
        if let Some(t) = v.token {
            let fig = head_grid(cap, v.step, t, kind)?;
            figure(&fig, &dir.join("heads.png"))?;
            figure(&fig, &dir.join("heads.svg"))?;
            put("heads.png");
            put("heads.svg");
        }
        let tokens: Vec<usize> = (0..cap.summary.n_txt).collect();
        let fig = token_grid(cap, v.step, v.layer, &tokens, kind)?;
        figure(&fig, &dir.join("tokens.png"))?;
        figure(&fig, &dir.join("tokens.svg"))?;
        let mass = cap.attention_mass(v.step)?;
        let plot = MassPlot {
            mass: &mass,
            title: format!("Attention mass per block, step {}", v.step),
        };
        figure(&plot, &dir.join("mass.png"))?;
        figure(&plot, &dir.join("mass.svg"))?;
        write_atomic(&dir.join("mass.csv"), mass.to_csv().as_bytes())?;
        let norms = cap.value_norms(v.step)?;
        let plot = ValueNormPlot {
            norms: &norms,
            title: format!("Value norms per block, step {}", v.step),
        };
        figure(&plot, &dir.join("value_norms.png"))?;
        figure(&plot, &dir.join("value_norms.svg"))?;
        write_atomic(&dir.join("value_norms.csv"), norms.to_csv().as_bytes())?;
        cap.save(&dir.join("capture.safetensors"), &dir.join("capture.json"))?;
        for f in [
            "tokens.png",
            "tokens.svg",
            "mass.png",
            "mass.svg",
            "mass.csv",
            "value_norms.png",
            "value_norms.svg",
            "value_norms.csv",
            "capture.safetensors",
            "capture.json",
        ] {
            put(f);
        }
    }
    if let Some(scores) = &b.layer_scores {
        let mut csv = String::from("layer,miou\n");
        for (l, s) in scores.iter().enumerate() {
            csv.push_str(&format!("{l},{s:.6}\n"));
        }
        write_atomic(&dir.join("miou_per_layer.csv"), csv.as_bytes())?;
        put("miou_per_layer.csv");
    }
    Ok(out)
}

/// A fresh sub-folder `export-NNN` of `root` (the first number not taken).
pub fn fresh_dir(root: &Path) -> PathBuf {
    (1..)
        .map(|i| root.join(format!("export-{i:03}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| root.join("export"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pic(w: usize, h: usize) -> Picture {
        Picture {
            rgb: (0..w * h * 3).map(|i| (i % 251) as u8).collect(),
            width: w,
            height: h,
        }
    }

    #[test]
    fn writes_what_it_has_and_refuses_an_empty_bundle() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = ExportBundle {
            dir: tmp.path().join("e"),
            ..Default::default()
        };
        let err = write_bundle(&empty).unwrap_err().to_string();
        assert!(err.contains("nothing to export"), "{err}");

        let labels: Vec<u8> = (0..16).map(|i| (i % 2) as u8).collect();
        let b = ExportBundle {
            dir: tmp.path().join("b"),
            picture: Some(pic(4, 4)),
            masks: Some((
                pic(4, 4),
                labels.clone(),
                vec!["circle".into(), "background".into()],
            )),
            perturbed: Some((pic(4, 4), pic(4, 4))),
            layer_scores: Some(vec![0.25, 0.5]),
            ..Default::default()
        };
        let files = write_bundle(&b).unwrap();
        assert!(files.contains(&"labels.png".to_string()), "{files:?}");
        let got = image::open(b.dir.join("labels.png")).unwrap().to_luma8();
        assert_eq!(got.as_raw(), &labels);
        assert_eq!(
            std::fs::read_to_string(b.dir.join("miou_per_layer.csv")).unwrap(),
            "layer,miou\n0,0.250000\n1,0.500000\n"
        );
        assert_eq!(std::fs::read_dir(b.dir.join("classes")).unwrap().count(), 2);
        assert!(b.dir.join("perturb_perturbed.png").is_file());
        assert!(!b.dir.join("capture.safetensors").exists());
    }

    #[test]
    fn fresh_dir_skips_taken_names() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("export-001")).unwrap();
        assert_eq!(fresh_dir(tmp.path()), tmp.path().join("export-002"));
    }
}
