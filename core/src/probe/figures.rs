//! Figures of a capture, as labelled image grids: layer × head small multiples of one token's
//! map at a step, a token grid (one map per token) at a block, and PCA of Q/K/V per block.

use super::capture::ProbeCapture;
use super::views::{Feature, MapKind};
use crate::error::{Error, Result};
use crate::figure::{colourise, value_range, ColourBar, ImageGrid, Tile};

fn step_label(cap: &ProbeCapture, step: usize) -> Result<String> {
    let k = cap.summary.kept(step)?;
    Ok(format!("step {step} (σ {:.3})", k.sigma))
}

fn token_label(cap: &ProbeCapture, token: usize) -> String {
    let s = cap
        .summary
        .tokens
        .get(token)
        .map_or("?", |t| t.string.as_str());
    format!("{token}: {}", short_token(s))
}

/// A token string short enough for a tile caption: CLIP's end-of-word mark dropped, its long
/// special tokens abbreviated, anything longer than 12 characters cut with an ellipsis.
fn short_token(s: &str) -> String {
    let s = match s {
        "<|startoftext|>" => "<sot>",
        "<|endoftext|>" => "<eot>",
        s => s.strip_suffix("</w>").unwrap_or(s),
    };
    if s.chars().count() > 12 {
        s.chars().take(11).chain(['…']).collect()
    } else {
        s.to_string()
    }
}

fn map_tiles(maps: &[Vec<f32>], grid: [usize; 2]) -> Result<(Vec<Tile>, f32, f32)> {
    let (lo, hi) = value_range(maps.iter().map(|m| m.as_slice()));
    let tiles = maps
        .iter()
        .map(|m| Tile::new(colourise(m, lo, hi), grid[1], grid[0]))
        .collect::<Result<Vec<_>>>()?;
    Ok((tiles, lo, hi))
}

/// Layer × head small multiples of one token's map at a kept step: one row per block, one column
/// per head and a last column with the head mean; one colour scale for all.
pub fn head_grid(
    cap: &ProbeCapture,
    step: usize,
    token: usize,
    kind: MapKind,
) -> Result<ImageGrid> {
    let s = &cap.summary;
    let heads = cap.stored_heads(step, 0, kind)?;
    if heads != s.heads {
        return Err(Error::Input(format!(
            "this capture kept head means only ({}); probe again with a larger --max-memory for per-head maps",
            s.memory.note
        )));
    }
    let mut maps = vec![];
    for l in 0..s.layers {
        let per = cap.token_maps(step, l, token, kind)?;
        let mean = cap.token_mean_map(step, l, token, kind)?;
        maps.extend(per);
        maps.push(mean);
    }
    let (tiles, lo, hi) = map_tiles(&maps, s.grid)?;
    let mut g = ImageGrid::new(
        format!(
            "{} of token {} at {} — \"{}\"",
            kind.label(),
            token_label(cap, token),
            step_label(cap, step)?,
            s.prompt
        ),
        tiles.into_iter().map(Some).collect(),
        heads + 1,
    );
    g.tile_px = 64;
    g.row_labels = (0..s.layers).map(|l| format!("block {l}")).collect();
    g.col_labels = (0..heads)
        .map(|h| format!("head {h}"))
        .chain(["mean".to_string()])
        .collect();
    g.colour_bar = Some(ColourBar {
        lo,
        hi,
        label: "probability".into(),
    });
    g.note = Some(format!(
        "post-softmax attention over the whole joint row; {} image tokens ({}×{}), {} text tokens",
        s.n_img, s.grid[0], s.grid[1], s.n_txt
    ));
    Ok(g)
}

/// One head-mean map per token at a block and kept step, each captioned with its position and
/// string; one colour scale for all.
pub fn token_grid(
    cap: &ProbeCapture,
    step: usize,
    layer: usize,
    tokens: &[usize],
    kind: MapKind,
) -> Result<ImageGrid> {
    if tokens.is_empty() {
        return Err(Error::Input("no token to draw".into()));
    }
    let s = &cap.summary;
    let maps = tokens
        .iter()
        .map(|&t| cap.token_mean_map(step, layer, t, kind))
        .collect::<Result<Vec<_>>>()?;
    let (tiles, lo, hi) = map_tiles(&maps, s.grid)?;
    let tiles = tiles
        .into_iter()
        .zip(tokens)
        .map(|(t, &k)| Some(t.with_caption(vec![token_label(cap, k)])))
        .collect();
    let cols = tokens.len().min(8);
    let mut g = ImageGrid::new(
        format!(
            "{} per token, block {layer}, {} — \"{}\"",
            kind.label(),
            step_label(cap, step)?,
            s.prompt
        ),
        tiles,
        cols,
    );
    g.tile_px = 80;
    g.colour_bar = Some(ColourBar {
        lo,
        hi,
        label: "probability".into(),
    });
    g.note = Some("head mean of the post-softmax attention".into());
    Ok(g)
}

/// PCA of image-token features as RGB: one row per block, one column per feature.
pub fn pca_grid(
    cap: &ProbeCapture,
    step: usize,
    layers: &[usize],
    features: &[Feature],
) -> Result<ImageGrid> {
    if layers.is_empty() || features.is_empty() {
        return Err(Error::Input("no block or feature to draw".into()));
    }
    let mut tiles = vec![];
    for &l in layers {
        for &f in features {
            let p = cap.pca(step, l, f)?;
            let r = p
                .explained_variance_ratio
                .map(|v| (v * 100.0).round() as i32);
            tiles.push(Some(
                Tile::new(p.rgb, p.width, p.height)?
                    .with_caption(vec![format!("{}/{}/{}%", r[0], r[1], r[2])]),
            ));
        }
    }
    let mut g = ImageGrid::new(
        format!(
            "PCA of image-token features, {} — \"{}\"",
            step_label(cap, step)?,
            cap.summary.prompt
        ),
        tiles,
        features.len(),
    );
    g.tile_px = 96;
    g.row_labels = layers.iter().map(|l| format!("block {l}")).collect();
    g.col_labels = features.iter().map(|f| f.label().to_string()).collect();
    g.note = Some(
        "RGB = principal components 1, 2, 3 (min-max per component); caption: variance explained"
            .into(),
    );
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_are_short() {
        assert_eq!(short_token("<|endoftext|>"), "<eot>");
        assert_eq!(short_token("circle</w>"), "circle");
        assert_eq!(short_token("▁ci"), "▁ci");
        assert_eq!(short_token("background"), "background");
        assert_eq!(short_token("backgrounds_xl"), "backgrounds…");
    }
}
