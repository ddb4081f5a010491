//! Views derived from the capture by the library (token maps, mass, value norms, token ranking),
//! recomputed only when what they depend on changes.

use std::sync::Arc;

use ditlens_core::analysis::{AttentionMass, ValueNorms};
use ditlens_core::probe::{MapKind, ProbeCapture};

use super::map_shader::ScalarMap;

/// What a token map depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapKey {
    pub capture: u64,
    pub step: usize,
    pub layer: usize,
    pub head: Option<usize>,
    pub tokens: Vec<usize>,
    pub t2i: bool,
}

/// Layer × head maps of the selected tokens at a step: `maps[layer][head]`, head mean last.
#[derive(Debug, Clone)]
pub struct GridData {
    pub layers: usize,
    pub heads: usize,
    pub width: usize,
    pub height: usize,
    pub maps: Vec<Vec<Vec<f32>>>,
    pub lo: f32,
    pub hi: f32,
    pub version: u64,
}

/// Cache of the derived views.
#[derive(Default)]
pub struct Views {
    map_key: Option<MapKey>,
    pub map: Option<ScalarMap>,
    grid_key: Option<MapKey>,
    pub grid: Option<Arc<GridData>>,
    stats_key: Option<(u64, usize)>,
    pub mass: Option<AttentionMass>,
    pub norms: Option<ValueNorms>,
    rank_key: Option<(MapKey, (usize, usize))>,
    pub ranking: Vec<(usize, f32)>,
    version: u64,
}

fn kind(t2i: bool) -> MapKind {
    if t2i {
        MapKind::T2i
    } else {
        MapKind::I2t
    }
}

/// Mean over `tokens` of each stored head's map at a layer: `[head][N]`.
fn head_maps(
    cap: &ProbeCapture,
    step: usize,
    layer: usize,
    tokens: &[usize],
    t2i: bool,
) -> ditlens_core::Result<Vec<Vec<f32>>> {
    let mut acc: Vec<Vec<f32>> = vec![];
    for &t in tokens {
        let maps = cap.token_maps(step, layer, t, kind(t2i))?;
        if acc.is_empty() {
            acc = vec![vec![0.0; cap.summary.n_img]; maps.len()];
        }
        for (a, m) in acc.iter_mut().zip(&maps) {
            a.iter_mut()
                .zip(m)
                .for_each(|(x, v)| *x += v / tokens.len() as f32);
        }
    }
    Ok(acc)
}

fn mean(maps: &[Vec<f32>], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    for m in maps {
        out.iter_mut()
            .zip(m)
            .for_each(|(o, v)| *o += v / maps.len() as f32);
    }
    out
}

impl Views {
    /// Forgets everything (a new capture).
    pub fn clear(&mut self) {
        *self = Views {
            version: self.version + 1,
            ..Default::default()
        };
    }

    /// The large map of the selection.
    pub fn update_map(&mut self, cap: &ProbeCapture, key: MapKey) -> Result<(), String> {
        if self.map_key.as_ref() == Some(&key) {
            return Ok(());
        }
        self.map_key = Some(key.clone());
        self.map = None;
        if key.tokens.is_empty() {
            return Ok(());
        }
        let maps =
            head_maps(cap, key.step, key.layer, &key.tokens, key.t2i).map_err(|e| e.to_string())?;
        let n = cap.summary.n_img;
        let values = match key.head {
            Some(h) if maps.len() > 1 => maps.get(h).cloned().unwrap_or_else(|| mean(&maps, n)),
            _ => mean(&maps, n),
        };
        self.version += 1;
        let [rows, cols] = cap.summary.grid;
        self.map = Some(ScalarMap {
            version: self.version,
            width: cols,
            height: rows,
            values: Arc::new(values),
        });
        Ok(())
    }

    /// The layer × head grid of the selection (all layers; `key.layer`/`key.head` ignored).
    pub fn update_grid(&mut self, cap: &ProbeCapture, mut key: MapKey) -> Result<(), String> {
        key.layer = 0;
        key.head = None;
        if self.grid_key.as_ref() == Some(&key) {
            return Ok(());
        }
        self.grid_key = Some(key.clone());
        self.grid = None;
        if key.tokens.is_empty() {
            return Ok(());
        }
        let s = &cap.summary;
        let mut maps = vec![];
        for l in 0..s.layers {
            let mut hm =
                head_maps(cap, key.step, l, &key.tokens, key.t2i).map_err(|e| e.to_string())?;
            let m = mean(&hm, s.n_img);
            if hm.len() == 1 {
                hm.clear();
            }
            hm.push(m);
            maps.push(hm);
        }
        let (lo, hi) =
            ditlens_core::figure::value_range(maps.iter().flatten().map(|m| m.as_slice()));
        self.version += 1;
        self.grid = Some(Arc::new(GridData {
            layers: s.layers,
            heads: maps.first().map_or(0, |m| m.len() - 1),
            width: s.grid[1],
            height: s.grid[0],
            maps,
            lo,
            hi,
            version: self.version,
        }));
        Ok(())
    }

    /// Attention mass and value norms at a step.
    pub fn update_stats(&mut self, cap: &ProbeCapture, capture: u64, step: usize) {
        if self.stats_key == Some((capture, step)) {
            return;
        }
        self.stats_key = Some((capture, step));
        self.mass = cap.attention_mass(step).ok();
        self.norms = cap.value_norms(step).ok();
    }

    /// Tokens ranked by their map's value at a patch (the selection's step, layer and head).
    pub fn update_ranking(
        &mut self,
        cap: &ProbeCapture,
        key: MapKey,
        patch: (usize, usize),
    ) -> Result<(), String> {
        let k = (key.clone(), patch);
        if self.rank_key.as_ref() == Some(&k) {
            return Ok(());
        }
        self.rank_key = Some(k);
        let s = &cap.summary;
        let idx = patch.1 * s.grid[1] + patch.0;
        let mut out = vec![];
        for t in 0..s.n_txt {
            let maps = cap
                .token_maps(key.step, key.layer, t, kind(key.t2i))
                .map_err(|e| e.to_string())?;
            let v = match key.head {
                Some(h) if maps.len() > 1 => maps.get(h).and_then(|m| m.get(idx)).copied(),
                _ => Some(mean(&maps, s.n_img)[idx]),
            };
            out.push((t, v.unwrap_or(0.0)));
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        self.ranking = out;
        Ok(())
    }
}
