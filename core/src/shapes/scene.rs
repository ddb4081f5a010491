//! Seeded scene generation: object placement with visibility checks, masks and rendered pixels.

use image::{GrayImage, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::backdrop::Backdrop;
use super::error::ShapesError;
use super::geometry::{PlacedShape, Placement, ShapeParams};
use super::palette::{distance, Rgb, MIN_OBJECT_BACKGROUND_DISTANCE};
use super::render::{self, MAX_OBJECTS, SUPERSAMPLE};
use super::vocab::{Background, Colour, Shape};

/// How scenes are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneConfig {
    /// Image side in pixels (square images).
    pub size: usize,
    /// Fewest objects per scene (at least 1).
    pub min_objects: usize,
    /// Most objects per scene (at most 8).
    pub max_objects: usize,
    /// Smallest object size as a fraction of the image side.
    pub min_object_fraction: f64,
    /// Largest object size as a fraction of the image side.
    pub max_object_fraction: f64,
    /// Supersample 3×3 per pixel and blend outlines; off draws hard pixel-centre edges.
    pub antialias: bool,
    /// Shade jitter around each named colour, 0 (reference shades) to 1 (full jitter).
    pub colour_jitter: f32,
    /// Vary ring thickness, cross arm width, star notch depth and diamond width.
    pub shape_variation: bool,
    /// Rotate objects by a random angle.
    pub rotate: bool,
    /// Each object keeps at least this fraction of its unoccluded pixels, or it is re-drawn
    /// (and finally dropped), so every named object is visible.
    pub min_visible_fraction: f64,
    /// Placement tries per object before it is dropped.
    pub placement_attempts: usize,
    /// Scale each object by `√(mean fill / its shape's fill)` (fill: the share of its bounding
    /// square a shape covers), so that every shape covers the same area on average: a star is
    /// drawn larger and a square smaller, and an object's area no longer tells its shape
    /// (off: sizes are the fraction of the side for every shape, and area tells shape apart).
    pub area_matched: bool,
}

impl Default for SceneConfig {
    fn default() -> Self {
        SceneConfig {
            size: 32,
            min_objects: 1,
            max_objects: 3,
            min_object_fraction: 0.25,
            max_object_fraction: 0.5,
            antialias: true,
            colour_jitter: 1.0,
            shape_variation: true,
            rotate: true,
            min_visible_fraction: 0.2,
            placement_attempts: 40,
            area_matched: false,
        }
    }
}

impl SceneConfig {
    /// The default configuration at another image size.
    pub fn with_size(size: usize) -> SceneConfig {
        SceneConfig {
            size,
            ..SceneConfig::default()
        }
    }

    /// Checks that the configuration can be honoured.
    pub fn validate(&self) -> Result<(), ShapesError> {
        let bad = |m: String| Err(ShapesError::InvalidConfig(m));
        if self.size < 8 {
            return bad(format!("size {} is below 8 pixels", self.size));
        }
        if self.min_objects == 0
            || self.min_objects > self.max_objects
            || self.max_objects > MAX_OBJECTS
        {
            return bad(format!(
                "object counts {}..={} must satisfy 1 <= min <= max <= {MAX_OBJECTS}",
                self.min_objects, self.max_objects
            ));
        }
        if !(self.min_object_fraction > 0.0
            && self.min_object_fraction <= self.max_object_fraction
            && self.max_object_fraction <= 1.0)
        {
            return bad(format!(
                "object fractions {}..={} must satisfy 0 < min <= max <= 1",
                self.min_object_fraction, self.max_object_fraction
            ));
        }
        if !(0.0..1.0).contains(&self.min_visible_fraction) {
            return bad(format!(
                "min_visible_fraction {} is not in [0, 1)",
                self.min_visible_fraction
            ));
        }
        if !(0.0..=1.0).contains(&self.colour_jitter) {
            return bad(format!(
                "colour_jitter {} is not in [0, 1]",
                self.colour_jitter
            ));
        }
        if self.placement_attempts == 0 {
            return bad("placement_attempts is 0".into());
        }
        Ok(())
    }

    fn samples(&self) -> usize {
        if self.antialias {
            SUPERSAMPLE
        } else {
            1
        }
    }
}

/// One object of a scene.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Its shape (the class).
    pub shape: Shape,
    /// Its colour name.
    pub colour: Colour,
    /// The exact shade it is drawn in.
    pub rgb: Rgb,
    /// Its proportions.
    pub params: ShapeParams,
    /// Where it is.
    pub placement: Placement,
    /// Its id in the instance map (`index + 1`).
    pub instance: u8,
    /// The pixels it owns after occlusion (row-major, `size × size`).
    pub mask: Vec<bool>,
    /// Number of `true` pixels in `mask`.
    pub visible_pixels: usize,
    /// Pixels it would own if nothing hid it (inside the frame).
    pub full_pixels: usize,
}

impl Object {
    /// Side of its bounding box before rotation, in pixels.
    pub fn size(&self) -> f64 {
        self.placement.size
    }

    /// Its class index in label maps.
    pub fn class(&self) -> u8 {
        self.shape.class()
    }

    /// The placed shape, for point tests.
    pub fn placed(&self) -> PlacedShape {
        PlacedShape::new(self.shape, self.params, self.placement)
    }

    /// Fraction of its unoccluded pixels that stay visible.
    pub fn visible_fraction(&self) -> f64 {
        self.visible_pixels as f64 / self.full_pixels.max(1) as f64
    }
}

/// A generated scene: objects, background, image, class labels and instance ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// The seed it was generated from.
    pub seed: u64,
    /// Image side in pixels.
    pub size: usize,
    /// Whether it was supersampled.
    pub antialias: bool,
    /// The drawn background.
    pub backdrop: Backdrop,
    /// The objects, back to front.
    pub objects: Vec<Object>,
    /// RGB bytes, row-major, 3 per pixel.
    pub rgb: Vec<u8>,
    /// Class per pixel: 0 background, 1..=8 the shape classes.
    pub labels: Vec<u8>,
    /// Instance per pixel: 0 background, `i + 1` for `objects[i]`.
    pub instances: Vec<u8>,
}

struct Candidate {
    shape: Shape,
    colour: Colour,
    rgb: Rgb,
    params: ShapeParams,
    placement: Placement,
    placed: PlacedShape,
    full_pixels: usize,
}

impl Scene {
    /// Generates the scene of `seed` under `config`; the same pair always gives the same scene.
    pub fn generate(config: &SceneConfig, seed: u64) -> Result<Scene, ShapesError> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ss = config.samples();
        let background = Background::ALL[rng.random_range(0..Background::ALL.len())];
        let target = rng.random_range(config.min_objects..=config.max_objects);

        let mut objects = Vec::new();
        for _restart in 0..8 {
            objects = place_objects(config, target, ss, &mut rng);
            if objects.len() >= config.min_objects {
                break;
            }
        }
        if objects.len() < config.min_objects {
            return Err(ShapesError::InvalidConfig(format!(
                "could not place {} visible objects at size {}",
                config.min_objects, config.size
            )));
        }

        let backdrop = pick_backdrop(background, config.size, &objects, &mut rng);
        let shapes: Vec<PlacedShape> = objects.iter().map(|c| c.placed.clone()).collect();
        let colours: Vec<Rgb> = objects.iter().map(|c| c.rgb).collect();
        let (rgb, instances) = render::composite(&shapes, &colours, &backdrop, config.size, ss);
        let labels = instances
            .iter()
            .map(|&i| {
                if i == 0 {
                    0
                } else {
                    objects[i as usize - 1].shape.class()
                }
            })
            .collect();
        let objects = objects
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let id = i as u8 + 1;
                let mask: Vec<bool> = instances.iter().map(|&o| o == id).collect();
                Object {
                    shape: c.shape,
                    colour: c.colour,
                    rgb: c.rgb,
                    params: c.params,
                    placement: c.placement,
                    instance: id,
                    visible_pixels: mask.iter().filter(|m| **m).count(),
                    mask,
                    full_pixels: c.full_pixels,
                }
            })
            .collect();
        Ok(Scene {
            seed,
            size: config.size,
            antialias: config.antialias,
            backdrop,
            objects,
            rgb,
            labels,
            instances,
        })
    }

    /// The background kind.
    pub fn background(&self) -> Background {
        self.backdrop.kind
    }

    /// The colour of pixel `(x, y)`.
    pub fn pixel(&self, x: usize, y: usize) -> Rgb {
        let i = (y * self.size + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// What the background alone looks like at pixel `(x, y)`.
    pub fn background_pixel(&self, x: usize, y: usize) -> [f32; 3] {
        let ss = if self.antialias { SUPERSAMPLE } else { 1 };
        render::background_pixel(&self.backdrop, x, y, ss)
    }

    /// The image.
    pub fn rgb_image(&self) -> RgbImage {
        let s = self.size as u32;
        RgbImage::from_raw(s, s, self.rgb.clone()).expect("rgb buffer matches the size")
    }

    /// The class map as an 8-bit image (0 background, 1..=8 shapes).
    pub fn label_image(&self) -> GrayImage {
        let s = self.size as u32;
        GrayImage::from_raw(s, s, self.labels.clone()).expect("label buffer matches the size")
    }

    /// The instance map as an 8-bit image (0 background, `i + 1` for object `i`).
    pub fn instance_image(&self) -> GrayImage {
        let s = self.size as u32;
        GrayImage::from_raw(s, s, self.instances.clone()).expect("instance buffer matches the size")
    }

    /// A random-number generator for this scene's captions, independent of its drawing.
    pub fn caption_rng(&self) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(1);
        rng
    }
}

/// Places up to `target` objects, each re-drawn until every object so far stays visible.
fn place_objects(
    config: &SceneConfig,
    target: usize,
    ss: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Candidate> {
    let n = config.size * config.size;
    let mut placed: Vec<Candidate> = Vec::new();
    let mut shapes: Vec<PlacedShape> = Vec::new();
    let mut owners = vec![0u8; n];
    let mut visible = vec![0usize; MAX_OBJECTS + 1];
    visible[0] = n;
    for _ in 0..target {
        for _attempt in 0..config.placement_attempts {
            let cand = random_candidate(config, ss, rng);
            if cand.full_pixels == 0 || clashes(&placed, &cand) {
                continue;
            }
            // Only pixels the candidate can reach change owner.
            shapes.push(cand.placed.clone());
            let (xs, ys) = cand.placed.pixel_bounds(config.size);
            let mut trial_owners = owners.clone();
            let mut trial_visible = visible.clone();
            render::update_region(
                &shapes,
                config.size,
                ss,
                xs,
                ys,
                &mut trial_owners,
                |old, new| {
                    trial_visible[old as usize] -= 1;
                    trial_visible[new as usize] += 1;
                },
            );
            let all_visible = placed
                .iter()
                .chain(std::iter::once(&cand))
                .enumerate()
                .all(|(i, c)| trial_visible[i + 1] >= visibility_floor(config, c.full_pixels));
            if all_visible {
                owners = trial_owners;
                visible = trial_visible;
                placed.push(cand);
                break;
            }
            shapes.pop();
        }
    }
    placed
}

/// Fewest pixels an object with `full` unoccluded pixels must keep.
pub(crate) fn visibility_floor(config: &SceneConfig, full: usize) -> usize {
    ((config.min_visible_fraction * full as f64).ceil() as usize).max(1)
}

/// Objects of the same colour must not touch, or they would read as one blob.
fn clashes(placed: &[Candidate], cand: &Candidate) -> bool {
    placed.iter().any(|p| {
        p.colour == cand.colour && {
            let (a, b) = (&p.placement, &cand.placement);
            let gap = ((a.cx - b.cx).powi(2) + (a.cy - b.cy).powi(2)).sqrt();
            gap <= (a.size + b.size) / 2.0 * std::f64::consts::SQRT_2 + 1.0
        }
    })
}

fn random_candidate(config: &SceneConfig, ss: usize, rng: &mut ChaCha8Rng) -> Candidate {
    let side = config.size as f64;
    let shape = Shape::ALL[rng.random_range(0..Shape::ALL.len())];
    let colour = Colour::ALL[rng.random_range(0..Colour::ALL.len())];
    let rgb = colour.jittered(config.colour_jitter, rng);
    let params = if config.shape_variation {
        ShapeParams::random(rng)
    } else {
        ShapeParams::STANDARD
    };
    let frac = if config.min_object_fraction < config.max_object_fraction {
        rng.random_range(config.min_object_fraction..=config.max_object_fraction)
    } else {
        config.min_object_fraction
    };
    let size = side
        * frac
        * if config.area_matched {
            area_matching_scale(shape)
        } else {
            1.0
        };
    // Centres keep at least three quarters of the half-size inside the frame.
    let margin = 0.375 * size;
    let cx = rng.random_range(margin..=side - margin);
    let cy = rng.random_range(margin..=side - margin);
    let rotation = if config.rotate {
        rng.random_range(0.0..std::f64::consts::TAU)
    } else {
        0.0
    };
    let placement = Placement {
        cx,
        cy,
        size,
        rotation,
    };
    let placed = PlacedShape::new(shape, params, placement);
    let full_pixels = render::owned_pixels(&placed, config.size, ss);
    Candidate {
        shape,
        colour,
        rgb,
        params,
        placement,
        placed,
        full_pixels,
    }
}

/// The side scale that gives `shape` the mean area of all shapes at the same size fraction:
/// `√(mean fill / fill)`, with each fill measured once on an unrotated standard shape.
pub fn area_matching_scale(shape: Shape) -> f64 {
    static FILLS: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let fills = FILLS.get_or_init(|| {
        const SIDE: usize = 96;
        Shape::ALL
            .iter()
            .map(|&s| {
                let placement = Placement {
                    cx: SIDE as f64 / 2.0,
                    cy: SIDE as f64 / 2.0,
                    size: SIDE as f64 * 0.75,
                    rotation: 0.0,
                };
                let placed = PlacedShape::new(s, ShapeParams::STANDARD, placement);
                let px = render::owned_pixels(&placed, SIDE, SUPERSAMPLE);
                px as f64 / (placement.size * placement.size)
            })
            .collect()
    });
    let mean = fills.iter().sum::<f64>() / fills.len() as f64;
    let i = Shape::ALL.iter().position(|&s| s == shape).unwrap_or(0);
    (mean / fills[i].max(1e-6)).sqrt()
}

/// A backdrop of `kind` whose colours all stay far from every object's shade.
fn pick_backdrop(
    kind: Background,
    size: usize,
    objects: &[Candidate],
    rng: &mut ChaCha8Rng,
) -> Backdrop {
    let mut best: Option<(f32, Backdrop)> = None;
    for _ in 0..64 {
        let b = Backdrop::random(kind, size, rng);
        let gap = b
            .extremes()
            .iter()
            .flat_map(|e| objects.iter().map(move |o| distance(*e, o.rgb)))
            .fold(f32::INFINITY, f32::min);
        if gap >= MIN_OBJECT_BACKGROUND_DISTANCE {
            return b;
        }
        if best.as_ref().is_none_or(|(g, _)| gap > *g) {
            best = Some((gap, b));
        }
    }
    best.expect("at least one backdrop was drawn").1
}
