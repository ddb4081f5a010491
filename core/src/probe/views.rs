//! The paper's analyses read from a capture: attention mass and value norms of every block at a
//! kept step, PCA of image Q/K/V at a block, and the I2T / T2I maps of one token.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::capture::ProbeCapture;
use super::summary::tensor_name;
use crate::analysis::{pca_rgb, AttentionMass, PcaImage, ValueNormDims, ValueNorms};
use crate::error::{Error, Result};

/// Image-token feature read by PCA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    Q,
    K,
    V,
}

impl Feature {
    /// The engine's tensor name under a block (`attn.q_img`, …).
    pub fn tensor(self) -> &'static str {
        match self {
            Feature::Q => "attn.q_img",
            Feature::K => "attn.k_img",
            Feature::V => "attn.v_img",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Feature::Q => "Q",
            Feature::K => "K",
            Feature::V => "V",
        }
    }
}

impl FromStr for Feature {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "q" | "query" => Ok(Feature::Q),
            "k" | "key" => Ok(Feature::K),
            "v" | "value" => Ok(Feature::V),
            _ => Err(Error::Input(format!("feature `{s}` is not one of q, k, v"))),
        }
    }
}

/// Which cross-modal attention map of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapKind {
    /// Column of the token in I2T: how much each image query attends to it.
    I2t,
    /// Row of the token in T2I: how much it attends to each image key.
    T2i,
}

impl MapKind {
    pub fn label(self) -> &'static str {
        match self {
            MapKind::I2t => "I2T",
            MapKind::T2i => "T2I",
        }
    }
}

impl FromStr for MapKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "i2t" => Ok(MapKind::I2t),
            "t2i" => Ok(MapKind::T2i),
            _ => Err(Error::Input(format!("map `{s}` is not one of i2t, t2i"))),
        }
    }
}

fn analysis(e: crate::analysis::AnalysisError) -> Error {
    Error::Input(e.to_string())
}

impl ProbeCapture {
    fn check_block(&self, layer: usize) -> Result<()> {
        if layer >= self.summary.layers {
            return Err(Error::Input(format!(
                "layer {layer} does not exist (the model has blocks 0..{})",
                self.summary.layers.saturating_sub(1)
            )));
        }
        Ok(())
    }

    /// Heads stored in a `[1, H', …]` map tensor (H' = 1 for head means).
    pub fn stored_heads(&self, step: usize, layer: usize, kind: MapKind) -> Result<usize> {
        let what = match kind {
            MapKind::I2t => "attn.i2t",
            MapKind::T2i => "attn.t2i",
        };
        Ok(self.get(&tensor_name(step, layer, what))?.dim(1)?)
    }

    /// Attention mass of every block at kept step `step`, per head (from `row_share`).
    pub fn attention_mass(&self, step: usize) -> Result<AttentionMass> {
        self.summary.kept(step)?;
        let s = &self.summary;
        let rows = (0..s.layers)
            .map(|l| self.values(&tensor_name(step, l, "attn.row_share")))
            .collect::<Result<Vec<_>>>()?;
        AttentionMass::from_layers(&rows, s.heads, s.n_img, s.n_txt).map_err(analysis)
    }

    /// Value norms of every block at kept step `step` (prompt = word tokens; BOS, EOS and
    /// padding excluded).
    pub fn value_norms(&self, step: usize) -> Result<ValueNorms> {
        self.summary.kept(step)?;
        let s = &self.summary;
        let img = (0..s.layers)
            .map(|l| self.values(&tensor_name(step, l, "attn.vnorm_img")))
            .collect::<Result<Vec<_>>>()?;
        let txt = (0..s.layers)
            .map(|l| self.values(&tensor_name(step, l, "attn.vnorm_txt")))
            .collect::<Result<Vec<_>>>()?;
        let dims = ValueNormDims {
            batch: 1,
            heads: s.heads,
            n_img: s.n_img,
            n_txt: s.n_txt,
        };
        ValueNorms::from_layers(&img, &txt, dims, &s.prompt_mask()).map_err(analysis)
    }

    /// PCA of the image tokens' `feature` at block `layer`, as an RGB grid.
    pub fn pca(&self, step: usize, layer: usize, feature: Feature) -> Result<PcaImage> {
        self.summary.kept(step)?;
        self.check_block(layer)?;
        let s = &self.summary;
        let name = tensor_name(step, layer, feature.tensor());
        let t = self.get(&name)?;
        let d = t.dim(2)?;
        let v = self.values(&name)?;
        pca_rgb(&v, s.n_img, d, s.grid[0], s.grid[1]).map_err(analysis)
    }

    /// Maps `[N]` of text token `token` at block `layer`, one per stored head (a single
    /// head-mean map when the capture kept head means).
    pub fn token_maps(
        &self,
        step: usize,
        layer: usize,
        token: usize,
        kind: MapKind,
    ) -> Result<Vec<Vec<f32>>> {
        self.summary.kept(step)?;
        self.check_block(layer)?;
        let s = &self.summary;
        if token >= s.n_txt {
            return Err(Error::Input(format!(
                "token {token} does not exist (the text has positions 0..{})",
                s.n_txt.saturating_sub(1)
            )));
        }
        let (what, axis) = match kind {
            MapKind::I2t => ("attn.i2t", 3),
            MapKind::T2i => ("attn.t2i", 2),
        };
        let t = self.get(&tensor_name(step, layer, what))?;
        let h = t.dim(1)?;
        let m = t.narrow(axis, token, 1)?.flatten_all()?.to_vec1::<f32>()?;
        let maps: Vec<Vec<f32>> = m.chunks_exact(s.n_img).map(<[f32]>::to_vec).collect();
        if maps.len() != h {
            return Err(Error::Input(format!("`{what}` has an unexpected shape")));
        }
        Ok(maps)
    }

    /// Head-mean map `[N]` of a token (mean of the stored heads).
    pub fn token_mean_map(
        &self,
        step: usize,
        layer: usize,
        token: usize,
        kind: MapKind,
    ) -> Result<Vec<f32>> {
        let maps = self.token_maps(step, layer, token, kind)?;
        let k = maps.len() as f32;
        let mut out = vec![0f32; self.summary.n_img];
        for m in &maps {
            out.iter_mut().zip(m).for_each(|(o, v)| *o += v / k);
        }
        Ok(out)
    }
}
