//! SD3 joint attention (image and text streams attend over the joint key sequence) and the
//! MMDiT-X image-only second attention, both computed in query chunks so that capturing I2T/T2I
//! never materialises the N×N image block. Matches diffusers' `JointAttnProcessor2_0`
//! (diffusers v0.42.1, `models/attention_processor.py`); probabilities are f32.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::VarBuilder;

use super::config::MmditConfig;
use super::layers::{linear, Linear, RmsNorm};
use crate::capture::{AttnCapture, BlockWants};
use crate::error::Result;
use crate::perturb::I2tBlur;

const QK_NORM_EPS: f64 = 1e-6;

/// How attention is evaluated for one call.
#[derive(Debug, Clone, Copy)]
pub struct AttnRun<'a> {
    /// What to record.
    pub wants: BlockWants,
    /// I2T blur to apply to this block, if perturbed.
    pub blur: Option<&'a I2tBlur>,
    /// Bytes one probability chunk may take (bounds memory; N² never materialises).
    pub chunk_bytes: usize,
    /// Use the differentiable softmax (training) instead of the fused kernel.
    pub differentiable: bool,
}

/// Softmax over the last dim: candle's kernel for inference, ours (with a backward) for training.
fn softmax(x: &Tensor, differentiable: bool) -> Result<Tensor> {
    if differentiable {
        super::fused::softmax_last_dim(x)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
    }
}

/// Query rows per chunk so that one `[B,H,rows,S]` f32 block fits in `chunk_bytes`.
fn chunk_rows(b: usize, h: usize, s: usize, chunk_bytes: usize) -> usize {
    (chunk_bytes / (b * h * s * 4).max(1)).max(16)
}

/// `[B, T, H·d]` → `[B, H, T, d]`
fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, dm) = x.dims3()?;
    Ok(x.reshape((b, t, heads, dm / heads))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// `[B, H, T, d]` → `[B, T, H·d]`
fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))?)
}

/// Per-head L2 norm of value vectors. `[B,H,T,d]` → `[B,H,T]`
fn value_norm(v: &Tensor) -> Result<Tensor> {
    Ok(v.to_dtype(DType::F32)?.sqr()?.sum(D::Minus1)?.sqrt()?)
}

/// Result of attending with one set of queries over the joint keys.
struct Attended {
    /// `[B,H,T,d]` f32
    out: Tensor,
    /// `[B,H,T,N]` probabilities on image keys (when kept)
    to_img: Option<Tensor>,
    /// `[B,H,T,L]` probabilities on text keys (when kept)
    to_txt: Option<Tensor>,
    /// `[B,H]` summed probability on image keys / text keys
    sum_img: Option<Tensor>,
    sum_txt: Option<Tensor>,
}

/// Attends queries `q [B,H,T,d]` (already scaled, f32) over keys `k`/values `v` `[B,H,S,d]` whose
/// first `n_img` positions are image tokens, chunking queries. `blur` applies to these rows.
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_img: usize,
    keep_img: bool,
    keep_txt: bool,
    sums: bool,
    blur: Option<&I2tBlur>,
    run: &AttnRun,
) -> Result<Attended> {
    let (b, h, t, _) = q.dims4()?;
    let s = k.dim(2)?;
    let n_txt = s - n_img;
    let kt = k.t()?;
    let rows = chunk_rows(b, h, s, run.chunk_bytes);
    let (mut outs, mut imgs, mut txts) = (vec![], vec![], vec![]);
    let (mut sum_img, mut sum_txt): (Option<Tensor>, Option<Tensor>) = (None, None);
    let add = |acc: Option<Tensor>, x: Tensor| -> Result<Option<Tensor>> {
        Ok(Some(match acc {
            Some(a) => (a + x)?,
            None => x,
        }))
    };
    let mut start = 0;
    while start < t {
        let c = rows.min(t - start);
        let qc = if c == t {
            q.clone()
        } else {
            q.narrow(2, start, c)?
        };
        let scores = qc.matmul(&kt)?;
        let mut p = softmax(&scores, run.differentiable)?;
        // A blur without renormalisation leaves the image block as it was: its sum is then
        // "rows minus the text mass before the blur".
        let raw_txt = match blur {
            Some(bl) if sums && !bl.renormalises() && n_txt > 0 => {
                Some(p.narrow(3, n_img, n_txt)?.contiguous()?.sum((2, 3))?)
            }
            _ => None,
        };
        if let Some(blur) = blur {
            p = blur.apply(&p, n_img)?;
        }
        // Only the N·L-sized slices are copied; the block sums come from them, since every
        // softmax row sums to one (no pass over the N×N block is added).
        let pi = if keep_img {
            Some(p.narrow(3, 0, n_img)?.contiguous()?)
        } else {
            None
        };
        let pt = if (keep_txt || sums) && n_txt > 0 {
            Some(p.narrow(3, n_img, n_txt)?.contiguous()?)
        } else {
            None
        };
        if sums {
            let st = match &pt {
                Some(pt) => pt.sum((2, 3))?,
                None => Tensor::zeros((b, h), DType::F32, p.device())?,
            };
            let si = match &pi {
                Some(pi) => pi.sum((2, 3))?,
                None => {
                    (Tensor::full(c as f32, (b, h), p.device())? - raw_txt.as_ref().unwrap_or(&st))?
                }
            };
            let st = if pi.is_some() && pt.is_none() {
                (Tensor::full(c as f32, (b, h), p.device())? - &si)?
            } else {
                st
            };
            sum_img = add(sum_img, si)?;
            sum_txt = add(sum_txt, st)?;
        }
        if let Some(pi) = pi {
            imgs.push(pi);
        }
        if keep_txt {
            if let Some(pt) = pt {
                txts.push(pt);
            }
        }
        outs.push(p.matmul(v)?);
        start += c;
    }
    let cat = |parts: Vec<Tensor>| -> Result<Option<Tensor>> {
        Ok(match parts.len() {
            0 => None,
            1 => parts.into_iter().next(),
            _ => Some(Tensor::cat(&parts, 2)?),
        })
    };
    Ok(Attended {
        out: cat(outs)?
            .ok_or_else(|| crate::error::Error::Input("attention over zero queries".into()))?,
        to_img: cat(imgs)?,
        to_txt: cat(txts)?,
        sum_img,
        sum_txt,
    })
}

/// A `[D, D]` projection of an attention layer.
fn proj(vb: &VarBuilder, cfg: &MmditConfig, name: &str) -> candle_core::Result<Linear> {
    linear(cfg.inner_dim(), cfg.inner_dim(), vb.pp(name))
}

/// The per-head RMS norm of q or k, when the model has qk-norm.
fn qk_norm(vb: &VarBuilder, cfg: &MmditConfig, name: &str) -> candle_core::Result<Option<RmsNorm>> {
    if cfg.has_qk_norm() {
        Ok(Some(RmsNorm::new(
            vb.pp(name),
            cfg.attention_head_dim,
            QK_NORM_EPS,
        )?))
    } else {
        Ok(None)
    }
}

/// The joint attention of one SD3 block (diffusers `Attention` with `added_kv_proj_dim`).
#[derive(Debug, Clone)]
pub struct JointAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    add_q: Linear,
    add_k: Linear,
    add_v: Linear,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
    norm_added_q: Option<RmsNorm>,
    norm_added_k: Option<RmsNorm>,
    to_out: Linear,
    to_add_out: Option<Linear>,
    heads: usize,
    head_dim: usize,
}

/// Output of [`JointAttention::forward`]: both streams and what was captured.
#[derive(Debug, Clone)]
pub struct JointAttnOutput {
    /// `[B,N,D]`
    pub img: Tensor,
    /// `[B,L,D]`, absent for a context-pre-only block.
    pub txt: Option<Tensor>,
    pub capture: AttnCapture,
}

impl JointAttention {
    pub fn new(
        vb: VarBuilder,
        cfg: &MmditConfig,
        context_pre_only: bool,
    ) -> candle_core::Result<Self> {
        let lin = |name: &str| proj(&vb, cfg, name);
        let norm = |name: &str| qk_norm(&vb, cfg, name);
        Ok(Self {
            to_q: lin("to_q")?,
            to_k: lin("to_k")?,
            to_v: lin("to_v")?,
            add_q: lin("add_q_proj")?,
            add_k: lin("add_k_proj")?,
            add_v: lin("add_v_proj")?,
            norm_q: norm("norm_q")?,
            norm_k: norm("norm_k")?,
            norm_added_q: norm("norm_added_q")?,
            norm_added_k: norm("norm_added_k")?,
            to_out: lin("to_out.0")?,
            to_add_out: if context_pre_only {
                None
            } else {
                Some(lin("to_add_out")?)
            },
            heads: cfg.num_attention_heads,
            head_dim: cfg.attention_head_dim,
        })
    }

    /// Projects one stream to per-head q, k, v (q/k normalised).
    fn qkv(
        &self,
        x: &Tensor,
        proj: [&Linear; 3],
        norms: [&Option<RmsNorm>; 2],
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let mut q = split_heads(&proj[0].forward(x)?, self.heads)?;
        let mut k = split_heads(&proj[1].forward(x)?, self.heads)?;
        let v = split_heads(&proj[2].forward(x)?, self.heads)?;
        if let Some(n) = norms[0] {
            q = n.forward(&q)?;
        }
        if let Some(n) = norms[1] {
            k = n.forward(&k)?;
        }
        Ok((q, k, v))
    }

    /// # Shapes
    /// `img: [B,N,D]`, `txt: [B,L,D]` → `img: [B,N,D]`, `txt: [B,L,D]`; captures as in
    /// [`AttnCapture`].
    pub fn forward(&self, img: &Tensor, txt: &Tensor, run: &AttnRun) -> Result<JointAttnOutput> {
        let dtype = img.dtype();
        let n = img.dim(1)?;
        let l = txt.dim(1)?;
        let w = run.wants;
        let (qi, ki, vi) = self.qkv(
            img,
            [&self.to_q, &self.to_k, &self.to_v],
            [&self.norm_q, &self.norm_k],
        )?;
        let (qt, kt, vt) = self.qkv(
            txt,
            [&self.add_q, &self.add_k, &self.add_v],
            [&self.norm_added_q, &self.norm_added_k],
        )?;
        let mut cap = AttnCapture::default();
        if w.value_norm {
            cap.vnorm_img = Some(value_norm(&vi)?);
            cap.vnorm_txt = Some(value_norm(&vt)?);
        }
        if w.qkv {
            cap.q_img = Some(merge_heads(&qi.to_dtype(DType::F32)?)?);
            cap.k_img = Some(merge_heads(&ki.to_dtype(DType::F32)?)?);
            cap.v_img = Some(merge_heads(&vi.to_dtype(DType::F32)?)?);
        }
        // Joint keys in diffusers' order [image, text]; image and text are named explicitly below.
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let k = Tensor::cat(&[f32(&ki)?, f32(&kt)?], 2)?;
        let v = Tensor::cat(&[f32(&vi)?, f32(&vt)?], 2)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let qi = (f32(&qi)? * scale)?;
        let qt = (f32(&qt)? * scale)?;
        let ai = attend(&qi, &k, &v, n, false, w.i2t, w.row_share, run.blur, run)?;
        let at = attend(&qt, &k, &v, n, w.t2i, false, w.row_share, None, run)?;
        cap.i2t = ai.to_txt;
        cap.t2i = at.to_img;
        if w.row_share {
            let parts = [
                (ai.sum_img, n),
                (ai.sum_txt, n),
                (at.sum_img, l),
                (at.sum_txt, l),
            ];
            let mut cols = vec![];
            for (s, count) in parts {
                let s = s.ok_or_else(|| {
                    crate::error::Error::Input("row_share needs text and image tokens".into())
                })?;
                cols.push((s / count as f64)?);
            }
            cap.row_share = Some(Tensor::stack(&cols, 2)?);
        }
        let oi = merge_heads(&ai.out)?.to_dtype(dtype)?;
        let img_out = self.to_out.forward(&oi)?;
        let txt_out = match &self.to_add_out {
            Some(p) => Some(p.forward(&merge_heads(&at.out)?.to_dtype(dtype)?)?),
            None => None,
        };
        Ok(JointAttnOutput {
            img: img_out,
            txt: txt_out,
            capture: cap,
        })
    }
}

/// MMDiT-X's image-only second attention (`attn2`).
#[derive(Debug, Clone)]
pub struct SelfAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    pub fn new(vb: VarBuilder, cfg: &MmditConfig) -> candle_core::Result<Self> {
        let lin = |name: &str| proj(&vb, cfg, name);
        let norm = |name: &str| qk_norm(&vb, cfg, name);
        Ok(Self {
            to_q: lin("to_q")?,
            to_k: lin("to_k")?,
            to_v: lin("to_v")?,
            norm_q: norm("norm_q")?,
            norm_k: norm("norm_k")?,
            to_out: lin("to_out.0")?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.attention_head_dim,
        })
    }

    /// # Shapes
    /// `x: [B,N,D]` → `[B,N,D]`, and probabilities `[B,H,N,N]` when `keep_probs`.
    pub fn forward(
        &self,
        x: &Tensor,
        keep_probs: bool,
        run: &AttnRun,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let dtype = x.dtype();
        let n = x.dim(1)?;
        let mut q = split_heads(&self.to_q.forward(x)?, self.heads)?;
        let mut k = split_heads(&self.to_k.forward(x)?, self.heads)?;
        let v = split_heads(&self.to_v.forward(x)?, self.heads)?.to_dtype(DType::F32)?;
        if let Some(nq) = &self.norm_q {
            q = nq.forward(&q)?;
        }
        if let Some(nk) = &self.norm_k {
            k = nk.forward(&k)?;
        }
        let q = (q.to_dtype(DType::F32)? * (1.0 / (self.head_dim as f64).sqrt()))?;
        let k = k.to_dtype(DType::F32)?;
        let a = attend(&q, &k, &v, n, keep_probs, false, false, None, run)?;
        let out = self
            .to_out
            .forward(&merge_heads(&a.out)?.to_dtype(dtype)?)?;
        Ok((out, a.to_img))
    }
}
