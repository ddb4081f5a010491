//! Segmentation on the tiny SD3 pipeline fixture (`tests/fixtures/sd3_pipeline/`): class
//! positions from CLIP's pieces, the same I2T maps as image analysis, labels = argmax of the
//! class means, unsupervised proposals over the 77 CLIP positions, and bad input.

use std::path::PathBuf;

use candle_core::{DType, Device};
use ditlens_core::capture::CaptureSpec;
use ditlens_core::sd3::{ClipTokenizer, Sd3Pipeline, TextOptions};
mod support;
use support::*;

use ditlens_core::segment::{
    segment, segment_layers, segment_unsupervised, I2tSegmenter, SegmentOptions,
};

fn fixture() -> PathBuf {
    sd3_fixture().join("pipeline")
}

fn pipeline() -> Sd3Pipeline {
    let text = TextOptions {
        use_t5: false,
        ..Default::default()
    };
    Sd3Pipeline::open(&fixture(), &Device::Cpu, DType::F32, text).unwrap()
}

fn names(c: &[&str]) -> Vec<String> {
    c.iter().map(|s| s.to_string()).collect()
}

/// A deterministic `w × h` RGB picture with some structure.
fn picture(w: usize, h: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let inside = (x * 2 >= w) ^ (y * 3 >= h);
            v.extend([
                if inside { 220 } else { 30 },
                ((x * 255) / w.max(1)) as u8,
                ((y * 255) / h.max(1)) as u8,
            ]);
        }
    }
    v
}

#[test]
fn class_positions_are_the_clip_pieces_of_each_name() {
    let p = pipeline();
    let classes = names(&["circle", "red square", "background"]);
    let (prompt, pos) = p.class_prompt(&classes).unwrap();
    assert_eq!(prompt, "circle red square background");
    let tok = ClipTokenizer::from_dir(&fixture().join("tokenizer")).unwrap();
    let t = tok.tokenize(&prompt).unwrap();
    let mut next = 1;
    for (name, ps) in classes.iter().zip(&pos) {
        let pieces = tok.encode_full(name).unwrap();
        let pieces = &pieces[1..pieces.len() - 1];
        assert!(!pieces.is_empty());
        assert_eq!(
            ps,
            &(next..next + pieces.len()).collect::<Vec<_>>(),
            "{name}"
        );
        let at: Vec<u32> = ps.iter().map(|&i| t.ids[i]).collect();
        assert_eq!(at, pieces, "{name}: the prompt's ids at its positions");
        assert!(ps.iter().all(|&i| !t.is_special[i]));
        next += pieces.len();
    }
    assert!(t.is_special[next], "EOS follows the last class");
}

#[test]
fn segmentation_reads_the_maps_image_analysis_captures() {
    let p = pipeline();
    let s = p.resolution();
    assert_eq!(s, 64);
    // A square picture at the model's resolution: squashing and centre-cropping agree.
    let rgb = picture(s, s);
    let opts = SegmentOptions {
        seed: 3,
        ..Default::default()
    };
    let got = p
        .i2t_maps(&rgb, s, s, "circle square", &[0, 1], &opts)
        .unwrap();
    assert!((got.sigma - 0.5151).abs() < 1e-3, "σ {}", got.sigma);
    let img = image::DynamicImage::ImageRgb8(
        image::RgbImage::from_raw(s as u32, s as u32, rgb.clone()).unwrap(),
    );
    let spec = CaptureSpec {
        i2t: true,
        ..Default::default()
    };
    let a = p
        .analyse_image(&img, "circle square", 20, 28, 3, &spec)
        .unwrap();
    assert_eq!(a.sigma, got.sigma);
    for (l, m) in got.maps.iter().enumerate() {
        let want = a.output.blocks[l]
            .attn
            .i2t
            .as_ref()
            .unwrap()
            .mean(1)
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(m.dims(), &[16, 77 + 77]);
        let d = max_diff(m, &want);
        assert!(d < 1e-6, "block {l}: max |Δ| {d}");
    }
}

#[test]
fn labels_are_the_argmax_of_class_means_per_token() {
    let p = pipeline();
    let (gh, gw) = p.grid();
    assert_eq!((gh, gw), (4, 4));
    // An image of exactly the token grid's size: upsampling is the identity.
    let rgb = picture(gw, gh);
    let classes = names(&["circle", "red square", "background"]);
    let opts = SegmentOptions {
        seed: 1,
        layer: Some(1),
        ..Default::default()
    };
    let seg = segment(&p, &rgb, gw, gh, &classes, &opts).unwrap();
    let (prompt, pos) = p.class_prompt(&classes).unwrap();
    let maps = p.i2t_maps(&rgb, gw, gh, &prompt, &[1], &opts).unwrap();
    let m: Vec<Vec<f32>> = maps.maps[0].to_vec2().unwrap();
    let mut distinct = std::collections::BTreeSet::new();
    for (i, row) in m.iter().enumerate() {
        let score = |c: usize| pos[c].iter().map(|&j| row[j]).sum::<f32>() / pos[c].len() as f32;
        let best = (0..classes.len())
            .max_by(|&a, &b| score(a).partial_cmp(&score(b)).unwrap())
            .unwrap();
        assert_eq!(seg.labels[i] as usize, best, "token {i}");
        distinct.insert(best);
    }
    let total: f64 = seg.shares.iter().sum();
    assert!((total - 1.0).abs() < 1e-9);
    assert_eq!(seg.layer, 1);
    // The same in one multi-block pass.
    let both = segment_layers(&p, &rgb, gw, gh, &classes, &[0, 1], &opts).unwrap();
    assert_eq!(both[1], seg.labels);
    eprintln!("classes used: {distinct:?}");
}

#[test]
fn unsupervised_proposals_partition_the_clip_positions() {
    let p = pipeline();
    let rgb = picture(40, 24);
    let opts = SegmentOptions::default();
    for threshold in [0.0001f32, 10.0] {
        let pr = segment_unsupervised(&p, &rgb, 40, 24, threshold, &opts).unwrap();
        let mut all: Vec<usize> = pr.clusters.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..77).collect::<Vec<_>>());
        assert_eq!(pr.labels.len(), 40 * 24);
        assert!(pr.labels.iter().all(|&l| (l as usize) < pr.clusters.len()));
        if threshold > 1.0 {
            assert_eq!(pr.clusters.len(), 1, "a huge threshold merges everything");
        } else {
            assert!(pr.clusters.len() > 1);
        }
    }
}

#[test]
fn bad_segmentation_input_is_named() {
    let p = pipeline();
    let rgb = picture(8, 8);
    let opts = SegmentOptions::default();
    let err = |r: ditlens_core::Result<ditlens_core::segment::Segmentation>| {
        r.expect_err("should fail").to_string()
    };
    assert!(err(segment(&p, &rgb, 8, 8, &[], &opts)).contains("empty"));
    let bad_layer = SegmentOptions {
        layer: Some(7),
        ..Default::default()
    };
    assert!(err(segment(&p, &rgb, 8, 8, &names(&["a"]), &bad_layer)).contains("layer 7"));
    let many: Vec<String> = (0..60).map(|i| format!("thing{i}")).collect();
    assert!(err(segment(&p, &rgb, 8, 8, &many, &opts)).contains("CLIP tokens"));
    assert!(err(segment(&p, &rgb[..10], 8, 8, &names(&["a"]), &opts)).contains("8×8"));
    let bare = Sd3Pipeline::open_without_text(&fixture(), &Device::Cpu, DType::F32).unwrap();
    assert!(err(segment(&bare, &rgb, 8, 8, &names(&["a"]), &opts)).contains("text encoders"));
    assert_eq!(p.default_layer(), 1, "blocks 0..1: the middle one");
}
