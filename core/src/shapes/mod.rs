//! The shapes world: seeded procedural scenes of coloured shapes with exact masks and captions.
//!
//! A [`Scene`] holds 1–3 objects (a [`Shape`] in a [`Colour`]) over a [`Background`] pattern,
//! its RGB image, a class map (0 background, 1..=8 the shapes in [`SHAPES`] order) and an
//! instance map. [`Scene::caption`] and [`CaptionSampler`] describe it with words from the
//! fixed [`vocabulary`]; [`write_dataset`] stores many scenes as PNGs plus JSON captions.
//!
//! ```no_run
//! use ditlens_core::shapes::{CaptionSampler, Scene, SceneConfig};
//! let scene = Scene::generate(&SceneConfig::with_size(64), 7).unwrap();
//! let caption = CaptionSampler::default().sample(&scene, &mut scene.caption_rng());
//! println!("{} -> {:?}", caption.text, scene.labels.iter().filter(|c| **c > 0).count());
//! ```

mod backdrop;
mod caption;
mod dataset;
mod error;
mod geometry;
mod palette;
mod render;
mod scene;
mod sheet;
mod vocab;

pub use backdrop::Backdrop;
pub use caption::{Caption, CaptionObject, CaptionOptions, CaptionSampler, CaptionStyle};
pub use dataset::{
    read_captions, scene_name, scene_seed, write_dataset, write_dataset_with, CaptionRecord,
    DatasetSummary, ObjectRecord,
};
pub use error::ShapesError;
pub use geometry::{contains_unit, polygon, PlacedShape, Placement, ShapeParams};
pub(crate) use palette::{distance as colour_distance, hsv};
pub use palette::{Rgb, MIN_OBJECT_BACKGROUND_DISTANCE};
pub use render::{MAX_OBJECTS, SUPERSAMPLE};
pub use scene::{area_matching_scale, Object, Scene, SceneConfig};
pub use sheet::{colourise_labels, contact_sheet, CLASS_COLOURS};
pub use vocab::{
    class_names, vocabulary, word_index, Background, Colour, Shape, BACKGROUNDS, BACKGROUND_CLASS,
    COLOURS, FUNCTION_WORDS, SHAPES,
};

#[cfg(test)]
mod tests;
