//! Point-in-shape tests: each shape is defined in unit coordinates and placed by centre, size and rotation.

use std::ops::Range;

use rand::Rng;

use super::vocab::Shape;

/// Shape proportions that vary from object to object ("stroke" and spike variation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShapeParams {
    /// Ring hole radius as a fraction of the outer radius.
    pub ring_inner: f64,
    /// Cross arm half-width as a fraction of the arm length (half the size).
    pub cross_half_width: f64,
    /// Star inner (notch) radius as a fraction of the outer (tip) radius.
    pub star_inner: f64,
    /// Diamond width over height.
    pub diamond_aspect: f64,
}

impl ShapeParams {
    /// The proportions used when shape variation is off.
    pub const STANDARD: ShapeParams = ShapeParams {
        ring_inner: 0.55,
        cross_half_width: 0.31,
        star_inner: 0.42,
        diamond_aspect: 0.62,
    };

    /// Random proportions around [`ShapeParams::STANDARD`], each kept recognisable.
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> ShapeParams {
        ShapeParams {
            ring_inner: rng.random_range(0.45..0.62),
            cross_half_width: rng.random_range(0.25..0.37),
            star_inner: rng.random_range(0.36..0.48),
            diamond_aspect: rng.random_range(0.52..0.72),
        }
    }
}

impl Default for ShapeParams {
    fn default() -> Self {
        ShapeParams::STANDARD
    }
}

/// Where an object lies in pixel coordinates (x right, y down; pixel `(i, j)` covers
/// `[i, i+1) × [j, j+1)`, so its centre is `(i + 0.5, j + 0.5)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Centre, x.
    pub cx: f64,
    /// Centre, y.
    pub cy: f64,
    /// Side of the shape's bounding box before rotation, in pixels.
    pub size: f64,
    /// Rotation in radians (clockwise on screen).
    pub rotation: f64,
}

/// Whether the unit-coordinate point `(u, v)` lies in `shape`. Every shape spans `[-1, 1]`
/// along at least one axis before rotation; `v` points down, so triangles and stars point up.
pub fn contains_unit(shape: Shape, params: &ShapeParams, u: f64, v: f64) -> bool {
    match shape {
        Shape::Circle => u * u + v * v <= 1.0,
        Shape::Square => u.abs() <= 1.0 && v.abs() <= 1.0,
        Shape::Ring => {
            let r2 = u * u + v * v;
            r2 <= 1.0 && r2 >= params.ring_inner * params.ring_inner
        }
        Shape::Cross => {
            let w = params.cross_half_width;
            (u.abs() <= w && v.abs() <= 1.0) || (v.abs() <= w && u.abs() <= 1.0)
        }
        Shape::Triangle | Shape::Star | Shape::Diamond | Shape::Hexagon => {
            in_polygon(&polygon(shape, params), u, v)
        }
    }
}

/// The outline of a polygonal shape in unit coordinates (empty for circle, square, ring and cross).
pub fn polygon(shape: Shape, params: &ShapeParams) -> Vec<(f64, f64)> {
    use std::f64::consts::PI;
    match shape {
        // Equilateral, side 2, centred in its bounding box, pointing up.
        Shape::Triangle => {
            let h = 3f64.sqrt() / 2.0;
            vec![(0.0, -h), (1.0, h), (-1.0, h)]
        }
        // Five tips on the unit circle, notches at `star_inner`, first tip up.
        Shape::Star => (0..10)
            .map(|k| {
                let a = -PI / 2.0 + k as f64 * PI / 5.0;
                let r = if k % 2 == 0 { 1.0 } else { params.star_inner };
                (r * a.cos(), r * a.sin())
            })
            .collect(),
        Shape::Diamond => {
            let a = params.diamond_aspect;
            vec![(0.0, -1.0), (a, 0.0), (0.0, 1.0), (-a, 0.0)]
        }
        // Regular, corners left and right.
        Shape::Hexagon => (0..6)
            .map(|k| {
                let a = k as f64 * PI / 3.0;
                (a.cos(), a.sin())
            })
            .collect(),
        Shape::Circle | Shape::Square | Shape::Ring | Shape::Cross => Vec::new(),
    }
}

/// Even-odd point-in-polygon test.
fn in_polygon(poly: &[(f64, f64)], u: f64, v: f64) -> bool {
    let mut inside = false;
    let mut j = poly.len().wrapping_sub(1);
    for (i, &(xi, yi)) in poly.iter().enumerate() {
        let (xj, yj) = poly[j];
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// A placed shape, ready for many point tests.
#[derive(Debug, Clone)]
pub struct PlacedShape {
    shape: Shape,
    params: ShapeParams,
    placement: Placement,
    cos: f64,
    sin: f64,
    half: f64,
    reach: f64,
    poly: Vec<(f64, f64)>,
}

impl PlacedShape {
    /// Places `shape` with proportions `params`.
    pub fn new(shape: Shape, params: ShapeParams, placement: Placement) -> PlacedShape {
        let half = placement.size / 2.0;
        PlacedShape {
            shape,
            params,
            placement,
            cos: placement.rotation.cos(),
            sin: placement.rotation.sin(),
            half,
            // Every unit shape lies within the disc of radius sqrt(2) (square corners).
            reach: half * std::f64::consts::SQRT_2 + 1e-9,
            poly: polygon(shape, &params),
        }
    }

    /// The shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The placement.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Whether the pixel-coordinate point `(x, y)` lies in the shape.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        let dx = x - self.placement.cx;
        let dy = y - self.placement.cy;
        if dx.abs() > self.reach || dy.abs() > self.reach || self.half <= 0.0 {
            return false;
        }
        let u = (dx * self.cos + dy * self.sin) / self.half;
        let v = (-dx * self.sin + dy * self.cos) / self.half;
        if self.poly.is_empty() {
            contains_unit(self.shape, &self.params, u, v)
        } else {
            in_polygon(&self.poly, u, v)
        }
    }

    /// The pixel columns and rows of a `width × width` grid that the shape can touch.
    pub fn pixel_bounds(&self, width: usize) -> (Range<usize>, Range<usize>) {
        let span = |c: f64| {
            let lo = (c - self.reach).floor().max(0.0) as usize;
            let hi = ((c + self.reach).ceil().max(0.0) as usize).min(width);
            lo.min(hi)..hi
        };
        (span(self.placement.cx), span(self.placement.cy))
    }

    /// The pixels of a `width × width` grid whose centre lies in the shape (row-major).
    pub fn centre_mask(&self, width: usize) -> Vec<bool> {
        (0..width * width)
            .map(|i| self.contains((i % width) as f64 + 0.5, (i / width) as f64 + 0.5))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_centre(shape: Shape, size: f64, rotation: f64) -> PlacedShape {
        PlacedShape::new(
            shape,
            ShapeParams::STANDARD,
            Placement {
                cx: 8.0,
                cy: 8.0,
                size,
                rotation,
            },
        )
    }

    fn count(mask: &[bool]) -> usize {
        mask.iter().filter(|b| **b).count()
    }

    #[test]
    fn circle_radius_four_on_sixteen_grid() {
        // Pixel-centre offsets from (8, 8) are ±0.5, ±1.5, ±2.5, ±3.5; per quadrant the
        // offsets with a² + b² <= 16 number 4 + 4 + 3 + 2 = 13, so 52 pixels in all.
        let mask = at_centre(Shape::Circle, 8.0, 0.0).centre_mask(16);
        assert_eq!(count(&mask), 52);
        assert!(mask[8 * 16 + 8] && mask[4 * 16 + 8] && !mask[3 * 16 + 8]);
        assert!(
            !mask[4 * 16 + 4],
            "corner (4.5, 4.5) is 4.95 from the centre"
        );
    }

    #[test]
    fn square_side_eight_on_sixteen_grid() {
        let mask = at_centre(Shape::Square, 8.0, 0.0).centre_mask(16);
        assert_eq!(count(&mask), 64);
        for (i, m) in mask.iter().enumerate() {
            let (x, y) = (i % 16, i / 16);
            assert_eq!(
                *m,
                (4..12).contains(&x) && (4..12).contains(&y),
                "({x}, {y})"
            );
        }
        // A quarter turn changes nothing; an eighth turn makes a diamond of equal area.
        let turned = at_centre(Shape::Square, 8.0, std::f64::consts::FRAC_PI_2).centre_mask(16);
        assert_eq!(turned, mask);
        let tilted = at_centre(Shape::Square, 8.0, std::f64::consts::FRAC_PI_4).centre_mask(16);
        assert!((60..=68).contains(&count(&tilted)), "{}", count(&tilted));
        assert!(
            tilted[8 * 16 + 3] && !mask[8 * 16 + 3],
            "a corner now reaches x = 3.5"
        );
    }

    #[test]
    fn ring_and_cross_have_holes_and_arms() {
        let ring = at_centre(Shape::Ring, 12.0, 0.0).centre_mask(16);
        assert!(!ring[8 * 16 + 8], "ring centre is empty");
        assert!(ring[8 * 16 + 13], "ring band at x = 13.5 (r = 5.5)");
        let cross = at_centre(Shape::Cross, 12.0, 0.0).centre_mask(16);
        assert!(cross[8 * 16 + 8] && cross[3 * 16 + 8] && cross[8 * 16 + 3]);
        assert!(!cross[3 * 16 + 3], "no cross pixel in the corners");
    }

    #[test]
    fn polygon_shapes_unit_checks() {
        let p = ShapeParams::STANDARD;
        // Triangle points up: its apex row is narrow, its base row is wide.
        assert!(contains_unit(Shape::Triangle, &p, 0.0, -0.8));
        assert!(!contains_unit(Shape::Triangle, &p, 0.5, -0.8));
        assert!(contains_unit(Shape::Triangle, &p, 0.9, 0.8));
        // Star: tips in, notches between tips out.
        assert!(contains_unit(Shape::Star, &p, 0.0, -0.95));
        assert!(!contains_unit(Shape::Star, &p, 0.0, 0.6));
        assert!(contains_unit(Shape::Star, &p, 0.0, 0.0));
        // Diamond is narrower than tall.
        assert!(contains_unit(Shape::Diamond, &p, 0.0, 0.95));
        assert!(!contains_unit(Shape::Diamond, &p, 0.7, 0.0));
        // Hexagon: corners left and right, flat top.
        assert!(contains_unit(Shape::Hexagon, &p, 0.98, 0.0));
        assert!(!contains_unit(Shape::Hexagon, &p, 0.0, 0.9));
        assert!(contains_unit(Shape::Hexagon, &p, 0.45, 0.85));
        assert!(polygon(Shape::Circle, &p).is_empty());
        assert_eq!(polygon(Shape::Star, &p).len(), 10);
    }

    #[test]
    fn far_points_are_outside() {
        for shape in Shape::ALL {
            let s = at_centre(shape, 8.0, 0.3);
            assert!(s.contains(8.0, 8.0) || shape == Shape::Ring, "{shape}");
            assert!(!s.contains(8.0 + 5.7, 8.0), "{shape}");
            assert!(!s.contains(0.0, 0.0), "{shape}");
        }
    }
}
