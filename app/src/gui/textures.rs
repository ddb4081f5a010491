//! egui textures of the pictures on screen, re-uploaded only when their content changes.

use std::collections::HashMap;

/// Textures by name, each with the version of the content it holds.
#[derive(Default)]
pub struct Textures {
    slots: HashMap<String, (u64, egui::TextureHandle)>,
    /// Uploads done so far (for tests and the frame benchmark).
    pub uploads: u64,
}

impl Textures {
    /// The texture `name` holding content `version`; `make` runs only when that changed.
    pub fn get(
        &mut self,
        ctx: &egui::Context,
        name: &str,
        version: u64,
        nearest: bool,
        make: impl FnOnce() -> egui::ColorImage,
    ) -> &egui::TextureHandle {
        let opts = if nearest {
            egui::TextureOptions::NEAREST
        } else {
            egui::TextureOptions::LINEAR
        };
        let fresh = self.slots.get(name).is_none_or(|(v, _)| *v != version);
        if fresh {
            self.uploads += 1;
            let img = make();
            match self.slots.get_mut(name) {
                Some((v, h)) => {
                    h.set(img, opts);
                    *v = version;
                }
                None => {
                    let h = ctx.load_texture(name, img, opts);
                    self.slots.insert(name.to_string(), (version, h));
                }
            }
        }
        &self.slots[name].1
    }
}

/// An RGB picture as an egui image.
pub fn color_image(rgb: &[u8], w: usize, h: usize) -> egui::ColorImage {
    if rgb.len() == w * h * 3 {
        egui::ColorImage::from_rgb([w, h], rgb)
    } else {
        egui::ColorImage::new([1, 1], vec![egui::Color32::BLACK])
    }
}

/// A small content hash, as a version for pictures that have none.
pub fn hash_version(bytes: &[u8], extra: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    extra.hash(&mut h);
    h.finish()
}
