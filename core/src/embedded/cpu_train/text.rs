//! The embedded model's text encoder, forward and backward for one prompt at a time over the
//! flat parameters: the same computation as [`crate::embedded::text_encoder::TextEncoder`].

use super::attention::{self, AttnDims};
use super::layers::Lin;
use super::linalg::{gelu, gelu_backward, layer_norm_rows, layer_norm_rows_backward};
use super::params::{Params, Slot};
use crate::embedded::text_encoder::TextEncoderConfig;
use crate::error::Result;

const EPS: f32 = 1e-5;

#[derive(Debug, Clone, Copy)]
struct Norm {
    w: Slot,
    b: Slot,
}

#[derive(Debug, Clone)]
struct LayerW {
    ln1: Norm,
    qkv: Lin,
    proj: Lin,
    ln2: Norm,
    fc1: Lin,
    fc2: Lin,
}

/// Where every weight of the text encoder sits.
#[derive(Debug, Clone)]
pub struct TextW {
    d: usize,
    heads: usize,
    tok: Slot,
    pos: Slot,
    layers: Vec<LayerW>,
    ln_f: Norm,
}

#[derive(Debug, Clone, Default)]
struct LayerCache {
    xhat1: Vec<f32>,
    rstd1: Vec<f32>,
    h1: Vec<f32>,
    qkv: Vec<f32>,
    p: Vec<f32>,
    o: Vec<f32>,
    xhat2: Vec<f32>,
    rstd2: Vec<f32>,
    h2: Vec<f32>,
    u: Vec<f32>,
    g: Vec<f32>,
}

/// One prompt's forward state.
#[derive(Debug, Clone, Default)]
pub struct TextCache {
    ids: Vec<u32>,
    layers: Vec<LayerCache>,
    xhat_f: Vec<f32>,
    rstd_f: Vec<f32>,
    /// The per-token context `[L, D]`.
    pub ctx: Vec<f32>,
}

fn norm(p: &Params, name: &str, d: usize) -> Result<Norm> {
    Ok(Norm {
        w: p.slot(&format!("{name}.weight"), &[d])?,
        b: p.slot(&format!("{name}.bias"), &[d])?,
    })
}

impl Norm {
    /// `y = LN(x) ⊙ w + b`; keeps `xhat`, `rstd`.
    fn forward(&self, p: &[f32], x: &[f32], d: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let t = x.len() / d;
        let mut xhat = vec![0f32; t * d];
        let mut rstd = vec![0f32; t];
        layer_norm_rows(x, d, EPS, &mut xhat, &mut rstd);
        let (w, b) = (&p[self.w.offset..], &p[self.b.offset..]);
        let mut y = xhat.clone();
        for row in y.chunks_mut(d) {
            for j in 0..d {
                row[j] = row[j] * w[j] + b[j];
            }
        }
        (xhat, rstd, y)
    }

    /// Adds `dx` of `y = LN(x) ⊙ w + b` into `dx`; accumulates `dw`, `db`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        p: &[f32],
        g: &mut [f32],
        xhat: &[f32],
        rstd: &[f32],
        dy: &[f32],
        d: usize,
        dx: &mut [f32],
    ) {
        let w = &p[self.w.offset..self.w.offset + d];
        let mut dxhat = dy.to_vec();
        for (row, (xr, dr)) in dxhat.chunks_mut(d).zip(xhat.chunks(d).zip(dy.chunks(d))) {
            for j in 0..d {
                g[self.w.offset + j] += dr[j] * xr[j];
                g[self.b.offset + j] += dr[j];
                row[j] *= w[j];
            }
        }
        layer_norm_rows_backward(xhat, rstd, &dxhat, d, dx, true);
    }
}

impl TextW {
    pub fn new(p: &Params, c: &TextEncoderConfig) -> Result<Self> {
        let d = c.dim;
        let t = |n: String| format!("text.{n}");
        let mut layers = vec![];
        for i in 0..c.layers {
            let n = |s: &str| t(format!("layers.{i}.{s}"));
            layers.push(LayerW {
                ln1: norm(p, &n("ln1"), d)?,
                qkv: Lin::new(p, &n("qkv"), d, 3 * d)?,
                proj: Lin::new(p, &n("proj"), d, d)?,
                ln2: norm(p, &n("ln2"), d)?,
                fc1: Lin::new(p, &n("fc1"), d, 4 * d)?,
                fc2: Lin::new(p, &n("fc2"), 4 * d, d)?,
            });
        }
        Ok(Self {
            d,
            heads: c.heads,
            tok: p.slot(&t("token_embedding.weight".into()), &[c.vocab_size, d])?,
            pos: p.slot(&t("position_embedding".into()), &[c.max_len, d])?,
            layers,
            ln_f: norm(p, &t("final_norm".into()), d)?,
        })
    }

    fn dims(&self, l: usize) -> AttnDims {
        AttnDims {
            rq: l,
            s: l,
            heads: self.heads,
            head_dim: self.d / self.heads,
            ldq: 3 * self.d,
            ldk: 3 * self.d,
            ldv: 3 * self.d,
        }
    }

    /// # Shapes
    /// `ids: [L]` → `cache.ctx: [L, D]`
    pub fn forward(&self, p: &[f32], ids: &[u32]) -> TextCache {
        let (d, l) = (self.d, ids.len());
        let mut x = vec![0f32; l * d];
        for (i, &id) in ids.iter().enumerate() {
            let tok = &p[self.tok.offset + id as usize * d..];
            let pos = &p[self.pos.offset + i * d..];
            for j in 0..d {
                x[i * d + j] = tok[j] + pos[j];
            }
        }
        let mut cache = TextCache {
            ids: ids.to_vec(),
            ..Default::default()
        };
        for lw in &self.layers {
            let (xhat1, rstd1, h1) = lw.ln1.forward(p, &x, d);
            let mut qkv = vec![0f32; l * 3 * d];
            lw.qkv.forward(p, &h1, l, &mut qkv);
            let mut pr = vec![0f32; self.heads * l * l];
            let mut o = vec![0f32; l * d];
            attention::forward(
                &qkv,
                &qkv[d..],
                &qkv[2 * d..],
                self.dims(l),
                &mut pr,
                &mut o,
            );
            let mut a = vec![0f32; l * d];
            lw.proj.forward(p, &o, l, &mut a);
            x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
            let (xhat2, rstd2, h2) = lw.ln2.forward(p, &x, d);
            let mut u = vec![0f32; l * 4 * d];
            lw.fc1.forward(p, &h2, l, &mut u);
            let mut gl = vec![0f32; u.len()];
            gelu(&u, &mut gl);
            let mut f = vec![0f32; l * d];
            lw.fc2.forward(p, &gl, l, &mut f);
            x.iter_mut().zip(&f).for_each(|(x, f)| *x += f);
            cache.layers.push(LayerCache {
                xhat1,
                rstd1,
                h1,
                qkv,
                p: pr,
                o,
                xhat2,
                rstd2,
                h2,
                u,
                g: gl,
            });
        }
        let (xhat, rstd, y) = self.ln_f.forward(p, &x, d);
        cache.xhat_f = xhat;
        cache.rstd_f = rstd;
        cache.ctx = y;
        cache
    }

    /// Accumulates parameter gradients from `dctx [L, D]`.
    pub fn backward(&self, p: &[f32], g: &mut [f32], cache: &TextCache, dctx: &[f32]) {
        let (d, l) = (self.d, cache.ids.len());
        let mut dx = vec![0f32; l * d];
        self.ln_f
            .backward(p, g, &cache.xhat_f, &cache.rstd_f, dctx, d, &mut dx);
        let mut scratch = vec![];
        for (lw, lc) in self.layers.iter().zip(&cache.layers).rev() {
            // x2 = x1 + fc2(gelu(fc1(ln2(x1))))
            let mut dgl = vec![0f32; lc.g.len()];
            lw.fc2.backward(p, g, &lc.g, &dx, l, Some(&mut dgl), false);
            gelu_backward(&lc.u, &mut dgl);
            let mut dh2 = vec![0f32; l * d];
            lw.fc1
                .backward(p, g, &lc.h2, &dgl, l, Some(&mut dh2), false);
            lw.ln2
                .backward(p, g, &lc.xhat2, &lc.rstd2, &dh2, d, &mut dx);
            // x1 = x + proj(attn(ln1(x)))
            let mut do_ = vec![0f32; l * d];
            lw.proj.backward(p, g, &lc.o, &dx, l, Some(&mut do_), false);
            let (mut dq, mut dk, mut dv) =
                (vec![0f32; l * d], vec![0f32; l * d], vec![0f32; l * d]);
            let q = &lc.qkv;
            attention::backward(
                q,
                &q[d..],
                &q[2 * d..],
                &lc.p,
                &do_,
                self.dims(l),
                &|_, _| {},
                &mut dq,
                &mut dk,
                &mut dv,
                &mut scratch,
            );
            let mut dqkv = vec![0f32; l * 3 * d];
            for i in 0..l {
                let row = &mut dqkv[i * 3 * d..(i + 1) * 3 * d];
                row[..d].copy_from_slice(&dq[i * d..(i + 1) * d]);
                row[d..2 * d].copy_from_slice(&dk[i * d..(i + 1) * d]);
                row[2 * d..].copy_from_slice(&dv[i * d..(i + 1) * d]);
            }
            let mut dh1 = vec![0f32; l * d];
            lw.qkv
                .backward(p, g, &lc.h1, &dqkv, l, Some(&mut dh1), false);
            lw.ln1
                .backward(p, g, &lc.xhat1, &lc.rstd1, &dh1, d, &mut dx);
        }
        for (i, &id) in cache.ids.iter().enumerate() {
            let t = self.tok.offset + id as usize * d;
            let ps = self.pos.offset + i * d;
            for j in 0..d {
                g[t + j] += dx[i * d + j];
                g[ps + j] += dx[i * d + j];
            }
        }
    }
}
