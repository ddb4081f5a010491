//! Typed, opt-in capture of what happens inside attention: which quantities to record
//! (`CaptureSpec`) and the per-block records attention layers return (`AttnCapture`, `BlockCapture`).

use candle_core::Tensor;

/// Which quantities to capture, and at which blocks. Everything is off by default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaptureSpec {
    /// Image-query × text-key probabilities `[B,H,N,L]`.
    pub i2t: bool,
    /// Text-query × image-key probabilities `[B,H,L,N]`.
    pub t2i: bool,
    /// Mean share of attention per block of the joint matrix `[B,H,4]` (I2I, I2T, T2I, T2T).
    pub row_share: bool,
    /// L2 norms of value vectors, `vnorm_img [B,H,N]` and `vnorm_txt [B,H,L]`.
    pub value_norm: bool,
    /// Blocks whose image-token Q/K/V features `[B,N,D]` are kept (for PCA).
    pub qkv_layers: Vec<usize>,
    /// MMDiT-X second-attention probabilities `[B,H,N,N]` (image only; quadratic memory).
    pub attn2: bool,
    /// Each block's output streams `hidden_img [B,N,D]`, `hidden_txt [B,L,D]`.
    pub hidden_states: bool,
    /// Restrict capture to these blocks (`None` = all).
    pub layers: Option<Vec<usize>>,
}

impl CaptureSpec {
    /// The attention maps and statistics the paper analyses, at every block.
    pub fn maps() -> Self {
        Self {
            i2t: true,
            t2i: true,
            row_share: true,
            value_norm: true,
            ..Self::default()
        }
    }

    /// What block `i` must record.
    pub fn for_block(&self, i: usize) -> BlockWants {
        let on = self.layers.as_ref().is_none_or(|l| l.contains(&i));
        BlockWants {
            i2t: on && self.i2t,
            t2i: on && self.t2i,
            row_share: on && self.row_share,
            value_norm: on && self.value_norm,
            qkv: self.qkv_layers.contains(&i),
            attn2: on && self.attn2,
            hidden_states: on && self.hidden_states,
        }
    }

    /// Whether nothing at all is captured.
    pub fn is_empty(&self) -> bool {
        !(self.i2t
            || self.t2i
            || self.row_share
            || self.value_norm
            || self.attn2
            || self.hidden_states)
            && self.qkv_layers.is_empty()
    }
}

/// What one block records (derived from a `CaptureSpec`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockWants {
    pub i2t: bool,
    pub t2i: bool,
    pub row_share: bool,
    pub value_norm: bool,
    pub qkv: bool,
    pub attn2: bool,
    pub hidden_states: bool,
}

impl BlockWants {
    /// Whether any joint-attention probability statistic is needed.
    pub fn any_probs(&self) -> bool {
        self.i2t || self.t2i || self.row_share
    }
}

/// What a joint attention recorded (all f32; image and text named explicitly).
#[derive(Debug, Clone, Default)]
pub struct AttnCapture {
    /// `[B,H,N,L]` post-softmax, image queries × text keys.
    pub i2t: Option<Tensor>,
    /// `[B,H,L,N]` post-softmax, text queries × image keys.
    pub t2i: Option<Tensor>,
    /// `[B,H,4]`: (ΣI2I/N, ΣI2T/N, ΣT2I/L, ΣT2T/L).
    pub row_share: Option<Tensor>,
    /// `[B,H,N]`
    pub vnorm_img: Option<Tensor>,
    /// `[B,H,L]`
    pub vnorm_txt: Option<Tensor>,
    /// `[B,N,D]` image queries after qk-norm.
    pub q_img: Option<Tensor>,
    /// `[B,N,D]` image keys after qk-norm.
    pub k_img: Option<Tensor>,
    /// `[B,N,D]` image values.
    pub v_img: Option<Tensor>,
}

/// Everything one block recorded.
#[derive(Debug, Clone, Default)]
pub struct BlockCapture {
    pub attn: AttnCapture,
    /// `[B,H,N,N]` MMDiT-X second attention.
    pub attn2: Option<Tensor>,
    /// `[B,N,D]` block output, image stream.
    pub hidden_img: Option<Tensor>,
    /// `[B,L,D]` block output, text stream (absent for a context-pre-only block).
    pub hidden_txt: Option<Tensor>,
}

impl BlockCapture {
    /// The captured tensors under the engine's names: `{prefix}attn.i2t`, `{prefix}attn2.probs`, ….
    pub fn named(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let a = &self.attn;
        let items: [(&str, &Option<Tensor>); 11] = [
            ("attn.i2t", &a.i2t),
            ("attn.t2i", &a.t2i),
            ("attn.row_share", &a.row_share),
            ("attn.vnorm_img", &a.vnorm_img),
            ("attn.vnorm_txt", &a.vnorm_txt),
            ("attn.q_img", &a.q_img),
            ("attn.k_img", &a.k_img),
            ("attn.v_img", &a.v_img),
            ("attn2.probs", &self.attn2),
            ("hidden_img", &self.hidden_img),
            ("hidden_txt", &self.hidden_txt),
        ];
        items
            .into_iter()
            .filter_map(|(k, t)| t.as_ref().map(|t| (format!("{prefix}{k}"), t.clone())))
            .collect()
    }
}
