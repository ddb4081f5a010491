//! One SD3 joint transformer block (diffusers `JointTransformerBlock`, diffusers v0.42.1 `models/attention.py`):
//! adaLN-Zero on both streams (9-chunk with `attn2` for MMDiT-X), joint attention, optional
//! image-only second attention, tanh-GELU feed-forwards; the last block is context-pre-only.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::attention::{AttnRun, JointAttention, SelfAttention};
use super::config::MmditConfig;
use super::layers::{gated, layer_norm, modulate, AdaLn, FeedForward};
use crate::capture::BlockCapture;
use crate::error::Result;

const NORM_EPS: f64 = 1e-6;

/// A joint block.
#[derive(Debug, Clone)]
pub struct JointBlock {
    norm1: AdaLn,
    norm1_context: AdaLn,
    attn: JointAttention,
    attn2: Option<SelfAttention>,
    ff: FeedForward,
    ff_context: Option<FeedForward>,
    context_pre_only: bool,
}

/// Output of [`JointBlock::forward`].
#[derive(Debug, Clone)]
pub struct BlockOutput {
    /// `[B,N,D]`
    pub img: Tensor,
    /// `[B,L,D]`, absent after the context-pre-only block.
    pub txt: Option<Tensor>,
    pub capture: BlockCapture,
}

impl JointBlock {
    pub fn new(vb: VarBuilder, cfg: &MmditConfig, index: usize) -> candle_core::Result<Self> {
        let d = cfg.inner_dim();
        let context_pre_only = index + 1 == cfg.num_layers;
        let dual = cfg.has_attn2(index);
        Ok(Self {
            norm1: AdaLn::new(vb.pp("norm1"), d, if dual { 9 } else { 6 })?,
            // The context-pre-only block uses AdaLayerNormContinuous: (scale, shift).
            norm1_context: AdaLn::new(
                vb.pp("norm1_context"),
                d,
                if context_pre_only { 2 } else { 6 },
            )?,
            attn: JointAttention::new(vb.pp("attn"), cfg, context_pre_only)?,
            attn2: if dual {
                Some(SelfAttention::new(vb.pp("attn2"), cfg)?)
            } else {
                None
            },
            ff: if cfg.ff_conv {
                FeedForward::with_grid_conv(vb.pp("ff"), d)?
            } else {
                FeedForward::new(vb.pp("ff"), d)?
            },
            ff_context: if context_pre_only {
                None
            } else {
                Some(FeedForward::new(vb.pp("ff_context"), d)?)
            },
            context_pre_only,
        })
    }

    /// Whether this block has MMDiT-X's second attention.
    pub fn has_attn2(&self) -> bool {
        self.attn2.is_some()
    }

    /// # Shapes
    /// `img: [B,N,D]` (`N = grid.0 · grid.1`), `txt: [B,L,D]`, `silu_temb: [B,D]` (SiLU already applied) →
    /// `img: [B,N,D]`, `txt: [B,L,D]` (none for the last block).
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        silu_temb: &Tensor,
        grid: (usize, usize),
        run: &AttnRun,
    ) -> Result<BlockOutput> {
        let m = self.norm1.forward(silu_temb)?;
        let img_n = layer_norm(img, NORM_EPS)?;
        let norm_img = modulate(&img_n, &m[0], &m[1])?;
        let (gate_msa, shift_mlp, scale_mlp, gate_mlp) = (&m[2], &m[3], &m[4], &m[5]);
        let mc = self.norm1_context.forward(silu_temb)?;
        let txt_n = layer_norm(txt, NORM_EPS)?;
        let norm_txt = if self.context_pre_only {
            modulate(&txt_n, &mc[1], &mc[0])?
        } else {
            modulate(&txt_n, &mc[0], &mc[1])?
        };

        let a = self.attn.forward(&norm_img, &norm_txt, run)?;
        let mut capture = BlockCapture {
            attn: a.capture,
            ..Default::default()
        };
        let mut img = (img + gated(&a.img, gate_msa)?)?;
        if let Some(attn2) = &self.attn2 {
            let norm_img2 = modulate(&img_n, &m[6], &m[7])?;
            let (o2, p2) = attn2.forward(&norm_img2, run.wants.attn2, run)?;
            capture.attn2 = p2;
            img = (img + gated(&o2, &m[8])?)?;
        }
        let h = modulate(&layer_norm(&img, NORM_EPS)?, shift_mlp, scale_mlp)?;
        let img = (&img + gated(&self.ff.forward(&h, grid)?, gate_mlp)?)?;

        let txt = match (&self.ff_context, a.txt) {
            (Some(ff), Some(ctx_out)) => {
                let t = (txt + gated(&ctx_out, &mc[2])?)?;
                let h = modulate(&layer_norm(&t, NORM_EPS)?, &mc[3], &mc[4])?;
                Some((&t + gated(&ff.forward(&h, (0, 0))?, &mc[5])?)?)
            }
            _ => None,
        };
        if run.wants.hidden_states {
            capture.hidden_img = Some(img.to_dtype(candle_core::DType::F32)?);
            capture.hidden_txt = match &txt {
                Some(t) => Some(t.to_dtype(candle_core::DType::F32)?),
                None => None,
            };
        }
        Ok(BlockOutput { img, txt, capture })
    }
}
