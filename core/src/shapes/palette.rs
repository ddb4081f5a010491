//! Colour palette: named object colours, their shade jitter, and muted background colours.

use rand::Rng;

use super::vocab::Colour;

/// An sRGB colour.
pub type Rgb = [u8; 3];

/// Smallest RGB distance kept between any background colour and any object colour of a scene.
pub const MIN_OBJECT_BACKGROUND_DISTANCE: f32 = 90.0;

/// How much closer a jittered shade must stay to its own named colour than to any other.
const NAME_MARGIN: f32 = 40.0;

impl Colour {
    /// The reference shade of this colour name.
    pub fn rgb(self) -> Rgb {
        match self {
            Colour::Red => [215, 35, 35],
            Colour::Green => [35, 165, 55],
            Colour::Blue => [35, 75, 215],
            Colour::Yellow => [240, 215, 35],
            Colour::Orange => [245, 130, 20],
            Colour::Purple => [135, 45, 175],
            Colour::White => [245, 245, 245],
            Colour::Black => [18, 18, 18],
        }
    }

    /// The colour name whose reference shade is nearest to `rgb`.
    pub fn nearest(rgb: Rgb) -> Colour {
        let mut best = Colour::Red;
        let mut best_d = f32::INFINITY;
        for c in Colour::ALL {
            let d = distance(rgb, c.rgb());
            if d < best_d {
                best = c;
                best_d = d;
            }
        }
        best
    }

    /// A random shade of this colour: `amount` 0 gives the reference shade, 1 the full jitter
    /// (a shared brightness shift of up to ±24 plus up to ±12 per channel). The shade always
    /// stays at least [`NAME_MARGIN`] closer to its own reference than to any other name's.
    pub fn jittered<R: Rng + ?Sized>(self, amount: f32, rng: &mut R) -> Rgb {
        let base = self.rgb();
        if amount <= 0.0 {
            return base;
        }
        for _ in 0..32 {
            let shift = rng.random_range(-24.0f32..=24.0) * amount;
            let mut out = [0u8; 3];
            for (o, b) in out.iter_mut().zip(base) {
                let v = b as f32 + shift + rng.random_range(-12.0f32..=12.0) * amount;
                *o = v.round().clamp(0.0, 255.0) as u8;
            }
            if self.is_unambiguous(out) {
                return out;
            }
        }
        base
    }

    /// Whether `rgb` is nearer to this name than to any other, by at least the naming margin.
    pub fn is_unambiguous(self, rgb: Rgb) -> bool {
        let own = distance(rgb, self.rgb());
        Colour::ALL
            .iter()
            .filter(|c| **c != self)
            .all(|c| distance(rgb, c.rgb()) - own >= NAME_MARGIN)
    }
}

/// Euclidean distance between two colours.
pub fn distance(a: Rgb, b: Rgb) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = *x as f32 - y as f32;
            d * d
        })
        .sum::<f32>()
        .sqrt()
}

/// HSV (hue in degrees, saturation and value in 0..=1) to sRGB.
pub fn hsv(h: f32, s: f32, v: f32) -> Rgb {
    let h = h.rem_euclid(360.0) / 60.0;
    let c = v * s;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r, g, b].map(|t| ((t + m) * 255.0).round().clamp(0.0, 255.0) as u8)
}

/// A muted (low saturation, mid value) colour and a second shade of it for two-tone patterns.
pub fn muted_pair<R: Rng + ?Sized>(rng: &mut R) -> (Rgb, Rgb) {
    let hue = rng.random_range(0.0f32..360.0);
    let sat = rng.random_range(0.06f32..0.28);
    let val = rng.random_range(0.40f32..0.60);
    let mut dv = rng.random_range(0.08f32..0.14) * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
    if !(0.36..=0.66).contains(&(val + dv)) {
        dv = -dv;
    }
    let hue2 = hue + rng.random_range(-20.0f32..20.0);
    let sat2 = (sat + rng.random_range(-0.05f32..0.05)).clamp(0.0, 0.3);
    (hsv(hue, sat, val), hsv(hue2, sat2, val + dv))
}

/// Adds `delta` to every channel, clamped.
pub fn shade(c: Rgb, delta: f32) -> Rgb {
    c.map(|v| (v as f32 + delta).round().clamp(0.0, 255.0) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn reference_shades_are_well_separated() {
        for a in Colour::ALL {
            assert_eq!(Colour::nearest(a.rgb()), a);
            assert!(a.is_unambiguous(a.rgb()), "{a}");
        }
        // The closest pair of names (orange and yellow) is still far apart.
        let d = distance(Colour::Orange.rgb(), Colour::Yellow.rgb());
        assert!(d > 80.0, "{d}");
    }

    #[test]
    fn jitter_keeps_names_and_varies() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for c in Colour::ALL {
            let shades: Vec<Rgb> = (0..200).map(|_| c.jittered(1.0, &mut rng)).collect();
            for s in &shades {
                assert_eq!(Colour::nearest(*s), c, "{s:?}");
                assert!(distance(*s, c.rgb()) <= 24.0 * 3f32.sqrt() + 21.0);
            }
            let distinct: std::collections::HashSet<_> = shades.iter().collect();
            assert!(distinct.len() > 50, "{c}: only {} shades", distinct.len());
            assert_eq!(c.jittered(0.0, &mut rng), c.rgb());
        }
    }

    #[test]
    fn hsv_corners() {
        assert_eq!(hsv(0.0, 1.0, 1.0), [255, 0, 0]);
        assert_eq!(hsv(120.0, 1.0, 1.0), [0, 255, 0]);
        assert_eq!(hsv(240.0, 1.0, 0.5), [0, 0, 128]);
        assert_eq!(hsv(77.0, 0.0, 0.5), [128, 128, 128]);
    }

    #[test]
    fn muted_colours_are_far_from_black_and_white() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..500 {
            let (a, b) = muted_pair(&mut rng);
            for c in [a, b] {
                assert!(distance(c, Colour::Black.rgb()) > MIN_OBJECT_BACKGROUND_DISTANCE);
                assert!(distance(c, Colour::White.rgb()) > MIN_OBJECT_BACKGROUND_DISTANCE);
                let max = *c.iter().max().unwrap() as f32;
                let min = *c.iter().min().unwrap() as f32;
                assert!((max - min) / max <= 0.31, "{c:?} is not muted");
            }
        }
    }
}
