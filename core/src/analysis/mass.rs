//! Attention mass per block and head: the I2I/I2T/T2I/T2T shares against their uniform baselines.

use std::fmt::Write as _;

use super::error::{check_len, check_nonzero, AnalysisError, Result};

/// Mean share of attention a query gives to each quadrant of the joint attention matrix.
///
/// `i2i + i2t` is the share image queries give (≈ 1) and `t2i + t2t` the share text queries give.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MassShares {
    /// Image queries attending image keys.
    pub i2i: f32,
    /// Image queries attending text keys.
    pub i2t: f32,
    /// Text queries attending image keys.
    pub t2i: f32,
    /// Text queries attending text keys.
    pub t2t: f32,
}

impl MassShares {
    fn from_row(row: &[f32]) -> Self {
        Self {
            i2i: row[0],
            i2t: row[1],
            t2i: row[2],
            t2t: row[3],
        }
    }

    fn add_scaled(&mut self, other: &Self, w: f32) {
        self.i2i += other.i2i * w;
        self.i2t += other.i2t * w;
        self.t2i += other.t2i * w;
        self.t2t += other.t2t * w;
    }
}

/// Shares of one transformer block: one entry per head and their mean over heads.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMass {
    /// Shares per head, in head order.
    pub heads: Vec<MassShares>,
    /// Mean of `heads` over heads.
    pub mean: MassShares,
}

/// Attention mass of every block, with the token counts that define the uniform baselines.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMass {
    /// Number of image tokens N.
    pub n_img: usize,
    /// Number of text tokens L.
    pub n_txt: usize,
    /// One entry per block, in block order.
    pub layers: Vec<LayerMass>,
}

impl AttentionMass {
    /// Builds the mass from one `[H,4]` `row_share` buffer per block (a single batch item).
    pub fn from_layers<S: AsRef<[f32]>>(
        layers: &[S],
        n_heads: usize,
        n_img: usize,
        n_txt: usize,
    ) -> Result<Self> {
        Self::from_batched(layers, 1, n_heads, n_img, n_txt)
    }

    /// Builds the mass from one `[B,H,4]` `row_share` buffer per block, averaging over the batch.
    pub fn from_batched<S: AsRef<[f32]>>(
        layers: &[S],
        batch: usize,
        n_heads: usize,
        n_img: usize,
        n_txt: usize,
    ) -> Result<Self> {
        check_nonzero("no layers", layers.len())?;
        check_nonzero("batch size is 0", batch)?;
        check_nonzero("head count is 0", n_heads)?;
        if n_img + n_txt == 0 {
            return Err(AnalysisError::Empty("no image or text tokens"));
        }
        let layers = layers
            .iter()
            .map(|l| layer_mass(l.as_ref(), batch, n_heads))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            n_img,
            n_txt,
            layers,
        })
    }

    /// Share a query would give image keys under uniform attention: N/(N+L) (baseline of I2I, T2I).
    pub fn uniform_img(&self) -> f32 {
        self.n_img as f32 / (self.n_img + self.n_txt) as f32
    }

    /// Share a query would give text keys under uniform attention: L/(N+L) (baseline of I2T, T2T).
    pub fn uniform_txt(&self) -> f32 {
        self.n_txt as f32 / (self.n_img + self.n_txt) as f32
    }

    /// CSV with header `layer,head,i2i,i2t,t2i,t2t,uniform_img,uniform_txt`: one row per head,
    /// then a row with head `mean` for the head mean, for every block.
    pub fn to_csv(&self) -> String {
        let (ui, ut) = (self.uniform_img(), self.uniform_txt());
        let mut out = String::from("layer,head,i2i,i2t,t2i,t2t,uniform_img,uniform_txt\n");
        let mut row = |layer: usize, head: &str, s: &MassShares| {
            let _ = writeln!(
                out,
                "{layer},{head},{},{},{},{},{ui},{ut}",
                s.i2i, s.i2t, s.t2i, s.t2t
            );
        };
        for (l, layer) in self.layers.iter().enumerate() {
            for (h, s) in layer.heads.iter().enumerate() {
                row(l, &h.to_string(), s);
            }
            row(l, "mean", &layer.mean);
        }
        out
    }
}

fn layer_mass(buf: &[f32], batch: usize, n_heads: usize) -> Result<LayerMass> {
    check_len("row_share [B,H,4]", batch * n_heads * 4, buf.len())?;
    let wb = 1.0 / batch as f32;
    let mut heads = vec![MassShares::default(); n_heads];
    for item in buf.chunks_exact(n_heads * 4) {
        for (acc, row) in heads.iter_mut().zip(item.chunks_exact(4)) {
            acc.add_scaled(&MassShares::from_row(row), wb);
        }
    }
    let mut mean = MassShares::default();
    for h in &heads {
        mean.add_scaled(h, 1.0 / n_heads as f32);
    }
    Ok(LayerMass { heads, mean })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn per_head_and_mean_by_hand() {
        // Two layers, two heads, N = 3 image tokens, L = 1 text token.
        let l0 = [0.7, 0.3, 0.4, 0.6, 0.9, 0.1, 0.2, 0.8];
        let l1 = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5];
        let m = AttentionMass::from_layers(&[&l0[..], &l1[..]], 2, 3, 1).unwrap();
        assert_eq!(m.layers.len(), 2);
        assert!(close(m.layers[0].heads[1].i2i, 0.9));
        assert!(close(m.layers[0].heads[1].t2t, 0.8));
        let mean = m.layers[0].mean;
        assert!(close(mean.i2i, 0.8) && close(mean.i2t, 0.2));
        assert!(close(mean.t2i, 0.3) && close(mean.t2t, 0.7));
        assert!(close(m.uniform_img(), 0.75) && close(m.uniform_txt(), 0.25));
    }

    #[test]
    fn batch_is_averaged() {
        // B = 2, H = 1.
        let l0 = [1.0, 0.0, 0.2, 0.8, 0.6, 0.4, 0.4, 0.6];
        let m = AttentionMass::from_batched(&[l0], 2, 1, 2, 2).unwrap();
        let h = m.layers[0].heads[0];
        assert!(close(h.i2i, 0.8) && close(h.i2t, 0.2));
        assert!(close(h.t2i, 0.3) && close(h.t2t, 0.7));
        assert_eq!(m.layers[0].mean, h);
    }

    #[test]
    fn csv_rows() {
        let l0 = [0.75, 0.25, 0.5, 0.5];
        let m = AttentionMass::from_layers(&[l0], 1, 3, 1).unwrap();
        let csv = m.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines,
            [
                "layer,head,i2i,i2t,t2i,t2t,uniform_img,uniform_txt",
                "0,0,0.75,0.25,0.5,0.5,0.75,0.25",
                "0,mean,0.75,0.25,0.5,0.5,0.75,0.25",
            ]
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        let empty: [&[f32]; 0] = [];
        assert!(AttentionMass::from_layers(&empty, 1, 1, 1).is_err());
        assert!(AttentionMass::from_layers(&[[0.0f32; 4]], 0, 1, 1).is_err());
        assert!(AttentionMass::from_layers(&[[0.0f32; 4]], 1, 0, 0).is_err());
        let err = AttentionMass::from_layers(&[[0.0f32; 7]], 2, 1, 1).unwrap_err();
        assert!(matches!(
            err,
            AnalysisError::Length {
                expected: 8,
                got: 7,
                ..
            }
        ));
        assert!(AttentionMass::from_batched(&[[0.0f32; 8]], 0, 2, 1, 1).is_err());
    }
}
