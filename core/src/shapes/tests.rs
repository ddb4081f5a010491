//! Whole-scene properties: determinism, exact masks, sizes, coverage of the vocabulary.

use std::collections::{HashMap, HashSet};

use super::palette::distance;
use super::scene::visibility_floor;
use super::*;

fn no_aa(size: usize) -> SceneConfig {
    SceneConfig {
        antialias: false,
        ..SceneConfig::with_size(size)
    }
}

#[test]
fn same_seed_same_scene_and_caption() {
    for config in [SceneConfig::default(), no_aa(64)] {
        for seed in [0u64, 1, 12345, u64::MAX] {
            let a = Scene::generate(&config, seed).unwrap();
            let b = Scene::generate(&config, seed).unwrap();
            assert_eq!(a.rgb, b.rgb);
            assert_eq!(a.labels, b.labels);
            assert_eq!(a.instances, b.instances);
            assert_eq!(a, b);
            let sampler = CaptionSampler::default();
            let ca = sampler.sample(&a, &mut a.caption_rng());
            let cb = sampler.sample(&b, &mut b.caption_rng());
            assert_eq!(ca, cb);
        }
    }
}

#[test]
fn different_seeds_differ() {
    let config = SceneConfig::default();
    let scenes: Vec<Scene> = (0..50)
        .map(|s| Scene::generate(&config, s).unwrap())
        .collect();
    let images: HashSet<&Vec<u8>> = scenes.iter().map(|s| &s.rgb).collect();
    assert_eq!(images.len(), 50);
    let labels: HashSet<&Vec<u8>> = scenes.iter().map(|s| &s.labels).collect();
    assert!(labels.len() >= 49, "{}", labels.len());
    let sampler = CaptionSampler::default();
    let captions: HashSet<String> = scenes
        .iter()
        .map(|s| sampler.sample(s, &mut s.caption_rng()).text)
        .collect();
    assert!(captions.len() >= 35, "{}", captions.len());
}

/// Checks the maps and masks of `scene` against each other and against the drawn pixels.
fn check_masks(scene: &Scene, config: &SceneConfig) {
    let n = scene.size * scene.size;
    assert_eq!(scene.rgb.len(), 3 * n);
    assert_eq!(scene.labels.len(), n);
    assert_eq!(scene.instances.len(), n);
    let floor_ok = scene.objects.iter().all(|o| {
        o.visible_pixels >= visibility_floor(config, o.full_pixels) && o.visible_pixels >= 1
    });
    assert!(
        floor_ok,
        "seed {}: an object is below the visibility floor",
        scene.seed
    );
    for (i, o) in scene.objects.iter().enumerate() {
        assert_eq!(o.instance as usize, i + 1);
        assert_eq!(o.mask.len(), n);
        assert_eq!(o.mask.iter().filter(|m| **m).count(), o.visible_pixels);
        // Occlusion removes pixels; only at a three-layer outline pixel can the centre-sample
        // rule hand an object a pixel it would not own alone.
        assert!(
            o.visible_pixels <= o.full_pixels + 2,
            "{} > {}",
            o.visible_pixels,
            o.full_pixels
        );
        assert_eq!(Colour::nearest(o.rgb), o.colour, "shade {:?}", o.rgb);
        for e in scene.backdrop.extremes() {
            assert!(
                distance(e, o.rgb) >= MIN_OBJECT_BACKGROUND_DISTANCE,
                "seed {}: background {e:?} too close to {} {:?}",
                scene.seed,
                o.colour,
                o.rgb
            );
        }
    }
    for p in 0..n {
        let (x, y) = (p % scene.size, p / scene.size);
        let inst = scene.instances[p] as usize;
        let px = scene.pixel(x, y);
        let bg = scene.background_pixel(x, y).map(|v| v.round() as u8);
        if inst == 0 {
            assert_eq!(scene.labels[p], 0);
            assert!(scene.objects.iter().all(|o| !o.mask[p]));
            if !scene.antialias {
                assert_eq!(px, bg, "seed {} pixel ({x}, {y})", scene.seed);
            }
            continue;
        }
        let o = &scene.objects[inst - 1];
        assert_eq!(scene.labels[p], o.shape.class());
        assert!(o.mask[p]);
        assert_eq!(scene.objects.iter().filter(|q| q.mask[p]).count(), 1);
        if !scene.antialias {
            assert_eq!(px, o.rgb, "seed {} pixel ({x}, {y})", scene.seed);
        } else {
            // Outline pixels blend with the background, but the object dominates.
            let d_obj = distance(px, o.rgb);
            let d_bg = distance(px, bg);
            assert!(
                d_obj < d_bg,
                "seed {} pixel ({x}, {y}) {px:?}: {} {:?} vs background {bg:?}",
                scene.seed,
                o.colour,
                o.rgb
            );
            assert!(d_obj <= distance(o.rgb, bg) * 4.0 / 9.0 + 2.0);
        }
    }
}

#[test]
fn masks_are_exact_with_and_without_antialiasing() {
    for config in [
        SceneConfig::default(),
        no_aa(32),
        SceneConfig::with_size(64),
        no_aa(64),
    ] {
        for seed in 0..150 {
            check_masks(&Scene::generate(&config, seed).unwrap(), &config);
        }
    }
}

#[test]
fn all_sizes_work() {
    for size in [32, 64, 128, 256] {
        let config = SceneConfig::with_size(size);
        for seed in 0..3 {
            let scene = Scene::generate(&config, seed).unwrap();
            assert_eq!(scene.rgb_image().dimensions(), (size as u32, size as u32));
            assert_eq!(scene.label_image().dimensions(), (size as u32, size as u32));
            assert_eq!(
                scene.instance_image().dimensions(),
                (size as u32, size as u32)
            );
            check_masks(&scene, &config);
        }
    }
}

#[test]
fn object_counts_and_sizes_are_in_range() {
    let config = SceneConfig::default();
    let side = config.size as f64;
    let mut counts = [0usize; 4];
    for seed in 0..400 {
        let scene = Scene::generate(&config, seed).unwrap();
        assert!((1..=3).contains(&scene.objects.len()));
        counts[scene.objects.len()] += 1;
        for o in &scene.objects {
            assert!(
                o.size() >= 0.25 * side - 1e-9 && o.size() <= 0.5 * side + 1e-9,
                "{}",
                o.size()
            );
            assert!(o.size() >= 8.0);
            // Every owned pixel lies within the shape's reach from its centre.
            let reach = o.size() / 2.0 * std::f64::consts::SQRT_2 + 1.0;
            for (p, _) in o.mask.iter().enumerate().filter(|(_, m)| **m) {
                let (x, y) = ((p % scene.size) as f64 + 0.5, (p / scene.size) as f64 + 0.5);
                assert!((x - o.placement.cx).abs() <= reach && (y - o.placement.cy).abs() <= reach);
            }
            // Mostly inside the frame: a centre at least 3/8 of the size from each edge.
            let m = 0.375 * o.size() - 1e-9;
            assert!(o.placement.cx >= m && o.placement.cx <= side - m);
            assert!(o.placement.cy >= m && o.placement.cy <= side - m);
        }
    }
    assert!(
        counts[1] > 60 && counts[2] > 60 && counts[3] > 60,
        "{counts:?}"
    );
}

#[test]
fn thousand_scenes_cover_the_vocabulary() {
    let config = SceneConfig::default();
    let sampler = CaptionSampler::default();
    let mut shapes = HashMap::new();
    let mut colours = HashMap::new();
    let mut backgrounds = HashMap::new();
    let mut styles = HashMap::new();
    let vocab = vocabulary();
    for seed in 0..1000 {
        let scene = Scene::generate(&config, seed).unwrap();
        *backgrounds.entry(scene.background()).or_insert(0) += 1;
        for o in &scene.objects {
            *shapes.entry(o.shape).or_insert(0) += 1;
            *colours.entry(o.colour).or_insert(0) += 1;
        }
        let caption = sampler.sample(&scene, &mut scene.caption_rng());
        assert!(
            caption.words.iter().all(|w| vocab.contains(w)),
            "{:?}",
            caption.text
        );
        *styles.entry(caption.style).or_insert(0usize) += 1;
    }
    assert_eq!(shapes.len(), 8, "{shapes:?}");
    assert_eq!(colours.len(), 8, "{colours:?}");
    assert_eq!(backgrounds.len(), 4, "{backgrounds:?}");
    for n in shapes.values().chain(colours.values()) {
        assert!(*n > 100, "{shapes:?} {colours:?}");
    }
    for n in backgrounds.values() {
        assert!(*n > 180, "{backgrounds:?}");
    }
    let empty = styles.get(&CaptionStyle::Empty).copied().unwrap_or(0);
    assert!(
        (70..=130).contains(&empty),
        "empty captions: {empty} of 1000"
    );
    assert_eq!(styles.len(), 4, "{styles:?}");
}

#[test]
fn shapes_are_distinct_at_eight_pixels() {
    // At 32×32 the smallest objects are 8 px; their pixel masks must all differ clearly.
    let masks: Vec<(Shape, Vec<bool>)> = Shape::ALL
        .iter()
        .map(|&s| {
            let placed = PlacedShape::new(
                s,
                ShapeParams::STANDARD,
                Placement {
                    cx: 16.0,
                    cy: 16.0,
                    size: 8.0,
                    rotation: 0.0,
                },
            );
            (s, placed.centre_mask(32))
        })
        .collect();
    for (i, (a, ma)) in masks.iter().enumerate() {
        let area = ma.iter().filter(|m| **m).count();
        assert!(area >= 20, "{a}: {area} pixels");
        for (b, mb) in &masks[i + 1..] {
            let diff = ma.iter().zip(mb).filter(|(x, y)| x != y).count();
            assert!(diff >= 6, "{a} vs {b}: {diff} pixels differ");
        }
    }
}

#[test]
fn invalid_configs_are_rejected() {
    let bad = [
        SceneConfig {
            size: 4,
            ..SceneConfig::default()
        },
        SceneConfig {
            min_objects: 0,
            ..SceneConfig::default()
        },
        SceneConfig {
            min_objects: 3,
            max_objects: 2,
            ..SceneConfig::default()
        },
        SceneConfig {
            max_objects: 9,
            ..SceneConfig::default()
        },
        SceneConfig {
            min_object_fraction: 0.6,
            max_object_fraction: 0.5,
            ..SceneConfig::default()
        },
        SceneConfig {
            min_visible_fraction: 1.0,
            ..SceneConfig::default()
        },
    ];
    for config in bad {
        let err = Scene::generate(&config, 0).unwrap_err();
        assert!(matches!(err, ShapesError::InvalidConfig(_)), "{err}");
    }
}

#[test]
fn options_switch_off_variation() {
    let config = SceneConfig {
        colour_jitter: 0.0,
        shape_variation: false,
        rotate: false,
        ..SceneConfig::default()
    };
    for seed in 0..30 {
        let scene = Scene::generate(&config, seed).unwrap();
        for o in &scene.objects {
            assert_eq!(o.rgb, o.colour.rgb());
            assert_eq!(o.params, ShapeParams::STANDARD);
            assert_eq!(o.placement.rotation, 0.0);
        }
    }
}

#[test]
fn more_objects_when_asked() {
    let config = SceneConfig {
        min_objects: 3,
        max_objects: 5,
        size: 64,
        ..SceneConfig::default()
    };
    for seed in 0..20 {
        let scene = Scene::generate(&config, seed).unwrap();
        assert!((3..=5).contains(&scene.objects.len()));
        check_masks(&scene, &config);
    }
}

/// Mean visible-pixel share of each shape over many one-object scenes.
fn mean_area_by_shape(config: &SceneConfig) -> Vec<f64> {
    let mut sums = vec![(0f64, 0usize); Shape::ALL.len()];
    for seed in 0..600 {
        let scene = Scene::generate(config, seed).unwrap();
        for o in &scene.objects {
            let i = Shape::ALL.iter().position(|&s| s == o.shape).unwrap();
            sums[i].0 += o.full_pixels as f64;
            sums[i].1 += 1;
        }
    }
    sums.iter().map(|(s, n)| s / (*n).max(1) as f64).collect()
}

#[test]
fn area_matched_sizes_make_area_no_cue_to_shape() {
    let world = SceneConfig {
        max_objects: 1,
        ..SceneConfig::with_size(64)
    };
    let matched = SceneConfig {
        area_matched: true,
        ..world.clone()
    };
    let spread = |a: &[f64]| {
        let (lo, hi) = a
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
        hi / lo
    };
    let (w, m) = (mean_area_by_shape(&world), mean_area_by_shape(&matched));
    // With the world's sizes a square covers about three times a star's area; matched, every
    // shape's mean area is within a fifth of every other's.
    assert!(spread(&w) > 2.0, "world areas {w:?}");
    assert!(spread(&m) < 1.2, "area-matched areas {m:?}");
    // Stars are drawn larger, squares smaller.
    assert!(area_matching_scale(Shape::Star) > 1.2);
    assert!(area_matching_scale(Shape::Square) < 0.95);
    for seed in 0..50 {
        check_masks(&Scene::generate(&matched, seed).unwrap(), &matched);
    }
}
