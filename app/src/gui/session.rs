//! What the window currently shows (runtime only, never saved): the model, the image, the
//! capture and results of the last jobs, and the selection (layer, head, step, tokens, pixel).

use std::collections::BTreeSet;
use std::sync::Arc;

use ditlens_core::probe::summary::TokenKind;
use ditlens_core::probe::ProbeCapture;
use ditlens_core::segment::{Proposals, Segmentation};

use super::protocol::{ModelInfo, Picture};

/// A chip of the token strip: one prompt word (its subword pieces merged) or one special token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenChip {
    pub label: String,
    pub positions: Vec<usize>,
    pub special: bool,
}

/// Chips of a capture's text, in text order.
pub fn token_chips(cap: &ProbeCapture) -> Vec<TokenChip> {
    let s = &cap.summary;
    let mut chips = vec![];
    let mut seen_word = BTreeSet::new();
    for t in &s.tokens {
        match (t.kind, t.word) {
            (TokenKind::Word, Some(w)) => {
                if seen_word.insert(w) {
                    if let Some(info) = s.words.get(w) {
                        chips.push(TokenChip {
                            label: info.word.clone(),
                            positions: info.tokens.clone(),
                            special: false,
                        });
                    }
                }
            }
            _ => chips.push(TokenChip {
                label: t.string.clone(),
                positions: vec![t.index],
                special: t.kind != TokenKind::Word,
            }),
        }
    }
    chips
}

/// The image analysed last, kept to re-segment at another layer or threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysed {
    pub picture: Picture,
    pub classes: Vec<String>,
    /// Ground-truth labels and their class names (a sample scene).
    pub truth: Option<(Vec<String>, Vec<u8>)>,
}

/// Current selection in the explorer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selection {
    pub layer: usize,
    /// `None` = mean over heads.
    pub head: Option<usize>,
    /// Index into the capture's kept steps.
    pub step: usize,
    /// Selected chips of the token strip.
    pub chips: BTreeSet<usize>,
    /// Clicked image pixel in map coordinates (patch column, row).
    pub patch: Option<(usize, usize)>,
}

/// Runtime state of the window's content.
#[derive(Default)]
pub struct Session {
    pub model: Option<ModelInfo>,
    /// The image under the map (generated or analysed).
    pub picture: Option<Picture>,
    pub picture_version: u64,
    pub capture: Option<Arc<ProbeCapture>>,
    pub capture_version: u64,
    pub chips: Vec<TokenChip>,
    pub analysed: Option<Analysed>,
    pub segmentation: Option<Segmentation>,
    pub proposals: Option<Proposals>,
    pub layer_scores: Option<Vec<f64>>,
    pub perturbed: Option<(Picture, Picture)>,
    /// (step, layer, picture, explained variance of the three components).
    pub pca: Option<(usize, usize, Picture, [f32; 3])>,
    pub selection: Selection,
}

impl Session {
    /// Sets the image under the map.
    pub fn set_picture(&mut self, p: Picture) {
        self.picture = Some(p);
        self.picture_version += 1;
    }

    /// Takes a new capture and keeps the selection where it still makes sense.
    pub fn set_capture(&mut self, cap: Arc<ProbeCapture>) {
        let s = &cap.summary;
        let sel = &mut self.selection;
        sel.layer = sel.layer.min(s.layers.saturating_sub(1));
        sel.head = sel.head.filter(|&h| h < s.heads);
        // Default step: the paper's (index 20 of 28), or the nearest kept one.
        let target = s.steps * 20 / 28;
        sel.step = s
            .kept_steps
            .iter()
            .enumerate()
            .min_by_key(|(_, k)| k.index.abs_diff(target))
            .map(|(i, _)| i)
            .unwrap_or(0);
        self.chips = token_chips(&cap);
        // First prompt word selected by default, else BOS.
        let first = self.chips.iter().position(|c| !c.special).unwrap_or(0);
        sel.chips = BTreeSet::from([first]);
        sel.patch = None;
        self.capture = Some(cap);
        self.capture_version += 1;
        self.pca = None;
    }

    /// Text positions of the selected chips.
    pub fn selected_positions(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .selection
            .chips
            .iter()
            .filter_map(|&c| self.chips.get(c))
            .flat_map(|c| c.positions.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Schedule index of the selected kept step.
    pub fn step_index(&self) -> Option<usize> {
        let cap = self.capture.as_ref()?;
        cap.summary
            .kept_steps
            .get(self.selection.step)
            .map(|s| s.index)
    }

    /// Layers and heads of what is loaded (capture first, else the model).
    pub fn dims(&self) -> (usize, usize) {
        if let Some(c) = &self.capture {
            return (c.summary.layers, c.summary.heads);
        }
        self.model
            .as_ref()
            .map(|m| (m.layers, m.heads))
            .unwrap_or((0, 0))
    }

    /// Selects the chip whose label or position matches `token` (a word or an index).
    pub fn select_token(&mut self, token: &str) -> Result<(), String> {
        let found = match token.parse::<usize>() {
            Ok(pos) => self.chips.iter().position(|c| c.positions.contains(&pos)),
            Err(_) => self
                .chips
                .iter()
                .position(|c| c.label.eq_ignore_ascii_case(token)),
        };
        match found {
            Some(i) => {
                self.selection.chips = BTreeSet::from([i]);
                Ok(())
            }
            None => Err(format!(
                "token `{token}` is not in the text ({})",
                self.chips
                    .iter()
                    .map(|c| c.label.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
        }
    }
}
