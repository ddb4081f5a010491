//! The one typeface figures use (DejaVu Sans, embedded), registered with plotters once.

use std::sync::Once;

use plotters::style::FontStyle;

/// DejaVu Sans (Bitstream Vera licence, `assets/fonts/LICENSE-DejaVu.txt`).
static DEJAVU_SANS: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// Font family name figures draw with.
pub const FAMILY: &str = "sans-serif";

/// Registers the embedded typeface as `sans-serif` (normal and bold); idempotent.
pub fn ensure_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The bytes are a valid font shipped with the crate; a failure would show in tests.
            let _ = plotters::style::register_font(FAMILY, style, DEJAVU_SANS);
        }
    });
}
