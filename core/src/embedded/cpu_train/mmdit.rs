//! The SD3 transformer of the embedded model, forward and backward for one sample at a time,
//! over the flat parameters: the same computation as [`crate::mmdit::Mmdit::forward`] (patch
//! embedding, timestep + constant pooled embedding, joint blocks with adaLN-Zero, the
//! context-pre-only last block, final adaLN and unpatchify), checked against it in the tests.

use super::attention::{self, AttnDims};
use super::grid_conv::GridConv;
use super::layers::{gated_add, gated_backward, modulate, modulate_backward, Lin};
use super::linalg::{
    gelu, gelu_backward, layer_norm_rows, layer_norm_rows_backward, silu, silu_grad,
};
use super::params::{Params, Slot};
use super::stem::{Stem, StemCache};
use crate::error::{Error, Result};
use crate::mmdit::embed::TIMESTEP_FEATURES;
use crate::mmdit::MmditConfig;

const EPS: f32 = 1e-6;

#[derive(Debug, Clone)]
struct BlockW {
    norm1: Lin,
    norm1_ctx: Lin,
    q: Lin,
    k: Lin,
    v: Lin,
    aq: Lin,
    ak: Lin,
    av: Lin,
    out: Lin,
    add_out: Option<Lin>,
    ff1: Lin,
    ff2: Lin,
    ff_conv: Option<GridConv>,
    ffc: Option<(Lin, Lin)>,
}

/// Where every weight of the transformer sits.
#[derive(Debug, Clone)]
pub struct MmditW {
    d: usize,
    heads: usize,
    patch: usize,
    channels: usize,
    grid: usize,
    pos_max: usize,
    joint_dim: usize,
    stem: Stem,
    patch_embed: Lin,
    pos: Slot,
    t1: Lin,
    t2: Lin,
    /// Bias of the pooled projection's first linear (its input, the pooled vector, is zero).
    pe1_bias: Slot,
    pe2: Lin,
    ctx: Lin,
    blocks: Vec<BlockW>,
    norm_out: Lin,
    proj_out: Lin,
}

/// What one block's forward keeps for the backward pass.
#[derive(Debug, Clone, Default)]
struct BlockCache {
    m: Vec<f32>,
    mc: Vec<f32>,
    xhat_i: Vec<f32>,
    rstd_i: Vec<f32>,
    ni: Vec<f32>,
    xhat_t: Vec<f32>,
    rstd_t: Vec<f32>,
    nt: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    p: Vec<f32>,
    o: Vec<f32>,
    a_i: Vec<f32>,
    ff_i: FfCache,
    a_t: Vec<f32>,
    ff_t: FfCache,
}

/// What one feed-forward (LN → modulate → fc1 → [grid conv] → GELU → fc2) keeps.
#[derive(Debug, Clone, Default)]
struct FfCache {
    xhat: Vec<f32>,
    rstd: Vec<f32>,
    h: Vec<f32>,
    /// fc1's output.
    u: Vec<f32>,
    /// The GELU's input: `u` plus the grid convolution (empty without one).
    v: Vec<f32>,
    g: Vec<f32>,
    f: Vec<f32>,
}

/// One sample's forward state.
#[derive(Debug, Clone, Default)]
pub struct SampleCache {
    stem: StemCache,
    patches: Vec<f32>,
    tfeat: Vec<f32>,
    u1: Vec<f32>,
    s1: Vec<f32>,
    temb: Vec<f32>,
    c: Vec<f32>,
    spe: Vec<f32>,
    ctx_in: Vec<f32>,
    blocks: Vec<BlockCache>,
    xhat_f: Vec<f32>,
    rstd_f: Vec<f32>,
    mo: Vec<f32>,
    hf: Vec<f32>,
    /// Predicted velocity `[C, H, W]`.
    pub sample: Vec<f32>,
    /// Head-mean I2T maps of the requested block, `[L, N]` (text token major).
    pub i2t_mean: Vec<f32>,
    n_txt: usize,
}

impl MmditW {
    /// Reads the layout from the parameters; configurations the engine does not implement
    /// (qk-norm, MMDiT-X's second attention, non-square or cropped grids) are errors.
    pub fn new(p: &Params, cfg: &MmditConfig, image_size: usize) -> Result<Self> {
        if cfg.has_qk_norm() || !cfg.dual_attention_layers.is_empty() {
            return Err(Error::Config(
                "the CPU training engine supports SD3 blocks without qk-norm or attn2".into(),
            ));
        }
        let d = cfg.inner_dim();
        let t = |n: &str| format!("transformer.{n}");
        let lin = |n: &str, din: usize, dout: usize| Lin::new(p, &t(n), din, dout);
        let patch = cfg.patch_size;
        let grid = image_size / patch;
        let m = cfg.pos_embed_max_size;
        let mut blocks = vec![];
        for i in 0..cfg.num_layers {
            let last = i + 1 == cfg.num_layers;
            let b = |n: &str| format!("transformer_blocks.{i}.{n}");
            blocks.push(BlockW {
                norm1: lin(&b("norm1.linear"), d, 6 * d)?,
                norm1_ctx: lin(&b("norm1_context.linear"), d, if last { 2 } else { 6 } * d)?,
                q: lin(&b("attn.to_q"), d, d)?,
                k: lin(&b("attn.to_k"), d, d)?,
                v: lin(&b("attn.to_v"), d, d)?,
                aq: lin(&b("attn.add_q_proj"), d, d)?,
                ak: lin(&b("attn.add_k_proj"), d, d)?,
                av: lin(&b("attn.add_v_proj"), d, d)?,
                out: lin(&b("attn.to_out.0"), d, d)?,
                add_out: if last {
                    None
                } else {
                    Some(lin(&b("attn.to_add_out"), d, d)?)
                },
                ff1: lin(&b("ff.net.0.proj"), d, 4 * d)?,
                ff2: lin(&b("ff.net.2"), 4 * d, d)?,
                ff_conv: if cfg.ff_conv {
                    Some(GridConv::new(p, &t(&b("ff.conv")), 4 * d, grid)?)
                } else {
                    None
                },
                ffc: if last {
                    None
                } else {
                    Some((
                        lin(&b("ff_context.net.0.proj"), d, 4 * d)?,
                        lin(&b("ff_context.net.2"), 4 * d, d)?,
                    ))
                },
            });
        }
        let dp = cfg.pooled_projection_dim;
        p.slot(
            &t("time_text_embed.text_embedder.linear_1.weight"),
            &[d, dp],
        )?;
        Ok(Self {
            d,
            heads: cfg.num_attention_heads,
            patch,
            channels: cfg.in_channels,
            grid,
            pos_max: m,
            joint_dim: cfg.joint_attention_dim,
            stem: Stem::new(
                p,
                &t("pos_embed.stem"),
                cfg.in_channels,
                &cfg.conv_stem,
                image_size,
            )?,
            patch_embed: Lin::conv_patch(
                p,
                &t("pos_embed.proj"),
                cfg.patch_in_channels(),
                patch,
                d,
            )?,
            pos: p.slot(&t("pos_embed.pos_embed"), &[1, m * m, d])?,
            t1: lin(
                "time_text_embed.timestep_embedder.linear_1",
                TIMESTEP_FEATURES,
                d,
            )?,
            t2: lin("time_text_embed.timestep_embedder.linear_2", d, d)?,
            pe1_bias: p.slot(&t("time_text_embed.text_embedder.linear_1.bias"), &[d])?,
            pe2: lin("time_text_embed.text_embedder.linear_2", d, d)?,
            ctx: lin("context_embedder", cfg.joint_attention_dim, d)?,
            blocks,
            norm_out: lin("norm_out.linear", d, 2 * d)?,
            proj_out: lin("proj_out", d, patch * patch * cfg.out_channels())?,
        })
    }

    /// Calls `f(at, from)` for every entry of the patch rows `[N, pc·p·p]` (ordered
    /// `(c, ky, kx)`): `at` indexes the rows, `from` the pixel-major map `[H·W, pc]`.
    fn for_each_patch_entry(&self, pc: usize, mut f: impl FnMut(usize, usize)) {
        let (g, ps) = (self.grid, self.patch);
        let (side, pd) = (g * ps, pc * ps * ps);
        for gy in 0..g {
            for gx in 0..g {
                for c in 0..pc {
                    for ky in 0..ps {
                        for kx in 0..ps {
                            f(
                                (gy * g + gx) * pd + (c * ps + ky) * ps + kx,
                                ((gy * ps + ky) * side + gx * ps + kx) * pc + c,
                            );
                        }
                    }
                }
            }
        }
    }

    fn n_img(&self) -> usize {
        self.grid * self.grid
    }

    /// Width of the text context the transformer reads.
    pub fn joint_dim(&self) -> usize {
        self.joint_dim
    }

    /// Pixels of one sample (`C·H·W`).
    pub fn sample_len(&self) -> usize {
        self.channels * self.n_img() * self.patch * self.patch
    }

    /// One forward pass; keeps the head-mean I2T maps of block `i2t_layer`.
    ///
    /// # Shapes
    /// `x: [C, H, W]` noised image, `t` model timestep (σ·1000), `ctx: [L, Dj]` →
    /// `cache.sample: [C, H, W]`, `cache.i2t_mean: [L, N]`
    pub fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        t: f32,
        ctx: &[f32],
        i2t_layer: Option<usize>,
    ) -> SampleCache {
        let (d, n, ps, ch, g) = (self.d, self.n_img(), self.patch, self.channels, self.grid);
        let l = ctx.len() / self.joint_dim;
        let side = g * ps;
        let mut cache = SampleCache {
            n_txt: l,
            ..Default::default()
        };
        // The stem over the pixel-major image, then patchify (c, ky, kx) and embed, plus the
        // centre-cropped position table.
        let hw = side * side;
        let mut pix = vec![0f32; hw * ch];
        for c in 0..ch {
            for i in 0..hw {
                pix[i * ch + c] = x[c * hw + i];
            }
        }
        let act = self.stem.forward(p, pix, &mut cache.stem);
        let pc = self.stem.out_channels();
        let pd = pc * ps * ps;
        let mut patches = vec![0f32; n * pd];
        self.for_each_patch_entry(pc, |at, from| patches[at] = act[from]);
        let mut img = vec![0f32; n * d];
        self.patch_embed.forward(p, &patches, n, &mut img);
        let top = (self.pos_max - g) / 2;
        for gy in 0..g {
            for gx in 0..g {
                let src = self.pos.offset + ((top + gy) * self.pos_max + top + gx) * d;
                let dst = &mut img[(gy * g + gx) * d..(gy * g + gx + 1) * d];
                dst.iter_mut()
                    .zip(&p[src..src + d])
                    .for_each(|(a, b)| *a += b);
            }
        }
        cache.patches = patches;
        // Timestep features [cos, sin] (flip_sin_to_cos), MLP, plus the pooled projection.
        let half = TIMESTEP_FEATURES / 2;
        let mut tf = vec![0f32; TIMESTEP_FEATURES];
        for i in 0..half {
            let freq = (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32;
            let a = t * freq;
            tf[i] = a.cos();
            tf[half + i] = a.sin();
        }
        let mut u1 = vec![0f32; d];
        self.t1.forward(p, &tf, 1, &mut u1);
        let s1: Vec<f32> = u1.iter().map(|&v| silu(v)).collect();
        let mut temb = vec![0f32; d];
        self.t2.forward(p, &s1, 1, &mut temb);
        let spe: Vec<f32> = p[self.pe1_bias.offset..self.pe1_bias.offset + d]
            .iter()
            .map(|&v| silu(v))
            .collect();
        let mut pe = vec![0f32; d];
        self.pe2.forward(p, &spe, 1, &mut pe);
        temb.iter_mut().zip(&pe).for_each(|(a, b)| *a += b);
        let c: Vec<f32> = temb.iter().map(|&v| silu(v)).collect();
        let mut txt = vec![0f32; l * d];
        self.ctx.forward(p, ctx, l, &mut txt);
        cache.ctx_in = ctx.to_vec();
        for (i, bw) in self.blocks.iter().enumerate() {
            let (bc, maps) =
                self.block_forward(bw, p, &c, &mut img, &mut txt, i2t_layer == Some(i));
            if let Some(m) = maps {
                cache.i2t_mean = m;
            }
            cache.blocks.push(bc);
        }
        // Final adaLN (AdaLayerNormContinuous: scale, shift) and projection.
        let mut mo = vec![0f32; 2 * d];
        self.norm_out.forward(p, &c, 1, &mut mo);
        let mut xhat = vec![0f32; n * d];
        let mut rstd = vec![0f32; n];
        layer_norm_rows(&img, d, EPS, &mut xhat, &mut rstd);
        let mut hf = vec![0f32; n * d];
        modulate(&xhat, &mo[d..], &mo[..d], &mut hf);
        let po = self.proj_out.dout;
        let mut out = vec![0f32; n * po];
        self.proj_out.forward(p, &hf, n, &mut out);
        let mut sample = vec![0f32; ch * side * side];
        for gy in 0..g {
            for gx in 0..g {
                let row = &out[(gy * g + gx) * po..];
                for py in 0..ps {
                    for px in 0..ps {
                        for cc in 0..ch {
                            sample[(cc * side + gy * ps + py) * side + gx * ps + px] =
                                row[(py * ps + px) * ch + cc];
                        }
                    }
                }
            }
        }
        cache.sample = sample;
        cache.tfeat = tf;
        cache.u1 = u1;
        cache.s1 = s1;
        cache.temb = temb;
        cache.c = c;
        cache.spe = spe;
        cache.xhat_f = xhat;
        cache.rstd_f = rstd;
        cache.mo = mo;
        cache.hf = hf;
        cache
    }

    fn block_forward(
        &self,
        bw: &BlockW,
        p: &[f32],
        c: &[f32],
        img: &mut [f32],
        txt: &mut [f32],
        keep_i2t: bool,
    ) -> (BlockCache, Option<Vec<f32>>) {
        let (d, n) = (self.d, self.n_img());
        let l = txt.len() / d;
        let last = bw.add_out.is_none();
        let s = n + l;
        let rq = if last { n } else { s };
        let mut bc = BlockCache {
            m: vec![0f32; 6 * d],
            mc: vec![0f32; bw.norm1_ctx.dout],
            ..Default::default()
        };
        bw.norm1.forward(p, c, 1, &mut bc.m);
        bw.norm1_ctx.forward(p, c, 1, &mut bc.mc);
        let m = |k: usize| &bc.m[k * d..(k + 1) * d];
        // Normalised, modulated streams.
        bc.xhat_i = vec![0f32; n * d];
        bc.rstd_i = vec![0f32; n];
        layer_norm_rows(img, d, EPS, &mut bc.xhat_i, &mut bc.rstd_i);
        bc.ni = vec![0f32; n * d];
        modulate(&bc.xhat_i, m(0), m(1), &mut bc.ni);
        bc.xhat_t = vec![0f32; l * d];
        bc.rstd_t = vec![0f32; l];
        layer_norm_rows(txt, d, EPS, &mut bc.xhat_t, &mut bc.rstd_t);
        bc.nt = vec![0f32; l * d];
        let mc = &bc.mc;
        if last {
            modulate(&bc.xhat_t, &mc[d..2 * d], &mc[..d], &mut bc.nt);
        } else {
            modulate(&bc.xhat_t, &mc[..d], &mc[d..2 * d], &mut bc.nt);
        }
        // Joint q, k, v in diffusers' order [image, text].
        bc.q = vec![0f32; rq * d];
        bc.k = vec![0f32; s * d];
        bc.v = vec![0f32; s * d];
        bw.q.forward(p, &bc.ni, n, &mut bc.q[..n * d]);
        bw.k.forward(p, &bc.ni, n, &mut bc.k[..n * d]);
        bw.v.forward(p, &bc.ni, n, &mut bc.v[..n * d]);
        if !last {
            bw.aq.forward(p, &bc.nt, l, &mut bc.q[n * d..]);
        }
        bw.ak.forward(p, &bc.nt, l, &mut bc.k[n * d..]);
        bw.av.forward(p, &bc.nt, l, &mut bc.v[n * d..]);
        let dims = AttnDims {
            rq,
            s,
            heads: self.heads,
            head_dim: d / self.heads,
            ldq: d,
            ldk: d,
            ldv: d,
        };
        bc.p = vec![0f32; self.heads * rq * s];
        bc.o = vec![0f32; rq * d];
        attention::forward(&bc.q, &bc.k, &bc.v, dims, &mut bc.p, &mut bc.o);
        let maps = keep_i2t.then(|| {
            let mut mp = vec![0f32; l * n];
            let inv = 1.0 / self.heads as f32;
            for h in 0..self.heads {
                let ph = &bc.p[h * rq * s..];
                for i in 0..n {
                    for j in 0..l {
                        mp[j * n + i] += ph[i * s + n + j] * inv;
                    }
                }
            }
            mp
        });
        // Image stream: attention residual, then the feed-forward.
        bc.a_i = vec![0f32; n * d];
        bw.out.forward(p, &bc.o[..n * d], n, &mut bc.a_i);
        gated_add(img, m(2), &bc.a_i);
        bc.ff_i = self.ff_forward(p, &bw.ff1, &bw.ff2, bw.ff_conv.as_ref(), img, m(3), m(4));
        gated_add(img, m(5), &bc.ff_i.f);
        if let (Some(add_out), Some((f1, f2))) = (&bw.add_out, &bw.ffc) {
            let mc = |k: usize| &bc.mc[k * d..(k + 1) * d];
            bc.a_t = vec![0f32; l * d];
            add_out.forward(p, &bc.o[n * d..], l, &mut bc.a_t);
            gated_add(txt, mc(2), &bc.a_t);
            bc.ff_t = self.ff_forward(p, f1, f2, None, txt, mc(3), mc(4));
            gated_add(txt, mc(5), &bc.ff_t.f);
        }
        (bc, maps)
    }

    /// LN → modulate → fc1 → [grid conv] → GELU → fc2 on `x`; returns every intermediate.
    #[allow(clippy::too_many_arguments)]
    fn ff_forward(
        &self,
        p: &[f32],
        f1: &Lin,
        f2: &Lin,
        conv: Option<&GridConv>,
        x: &[f32],
        shift: &[f32],
        scale: &[f32],
    ) -> FfCache {
        let d = self.d;
        let t = x.len() / d;
        let mut xhat = vec![0f32; t * d];
        let mut rstd = vec![0f32; t];
        layer_norm_rows(x, d, EPS, &mut xhat, &mut rstd);
        let mut h = vec![0f32; t * d];
        modulate(&xhat, shift, scale, &mut h);
        let mut u = vec![0f32; t * f1.dout];
        f1.forward(p, &h, t, &mut u);
        let v = conv.map(|c| c.forward(p, &u)).unwrap_or_default();
        let mut g = vec![0f32; u.len()];
        gelu(if conv.is_some() { &v } else { &u }, &mut g);
        let mut f = vec![0f32; t * d];
        f2.forward(p, &g, t, &mut f);
        FfCache {
            xhat,
            rstd,
            h,
            u,
            v,
            g,
            f,
        }
    }

    /// Backward of [`MmditW::forward`]: accumulates parameter gradients into `g` and returns
    /// the gradient on the text context `[L, Dj]`.
    ///
    /// # Shapes
    /// `dsample: [C, H, W]`, `di2t: [L, N]` (gradient on the kept head-mean maps) → `[L, Dj]`
    pub fn backward(
        &self,
        p: &[f32],
        g: &mut [f32],
        cache: &SampleCache,
        dsample: &[f32],
        i2t: Option<(usize, &[f32])>,
    ) -> Vec<f32> {
        let (d, n, ps, ch, gr) = (self.d, self.n_img(), self.patch, self.channels, self.grid);
        let l = cache.n_txt;
        let side = gr * ps;
        let po = self.proj_out.dout;
        let mut dout = vec![0f32; n * po];
        for gy in 0..gr {
            for gx in 0..gr {
                let row = &mut dout[(gy * gr + gx) * po..];
                for py in 0..ps {
                    for px in 0..ps {
                        for cc in 0..ch {
                            row[(py * ps + px) * ch + cc] =
                                dsample[(cc * side + gy * ps + py) * side + gx * ps + px];
                        }
                    }
                }
            }
        }
        let mut dhf = vec![0f32; n * d];
        self.proj_out
            .backward(p, g, &cache.hf, &dout, n, Some(&mut dhf), false);
        let mut dmo = vec![0f32; 2 * d];
        let mut dxhat = vec![0f32; n * d];
        {
            let (dscale, dshift) = dmo.split_at_mut(d);
            modulate_backward(
                &cache.xhat_f,
                &cache.mo[..d],
                &dhf,
                dshift,
                dscale,
                &mut dxhat,
            );
        }
        let mut dimg = vec![0f32; n * d];
        layer_norm_rows_backward(&cache.xhat_f, &cache.rstd_f, &dxhat, d, &mut dimg, false);
        let mut dc = vec![0f32; d];
        self.norm_out
            .backward(p, g, &cache.c, &dmo, 1, Some(&mut dc), true);
        let mut dtxt = vec![0f32; l * d];
        let mut scratch = vec![];
        for (i, (bw, bc)) in self.blocks.iter().zip(&cache.blocks).enumerate().rev() {
            let di2t = i2t.filter(|(layer, _)| *layer == i).map(|(_, m)| m);
            self.block_backward(
                bw,
                bc,
                p,
                g,
                &cache.c,
                &mut dimg,
                &mut dtxt,
                &mut dc,
                di2t,
                &mut scratch,
            );
        }
        if self.stem.is_empty() {
            self.patch_embed
                .backward(p, g, &cache.patches, &dimg, n, None, false);
        } else {
            let pc = self.stem.out_channels();
            let pd = pc * ps * ps;
            let mut dpatches = vec![0f32; n * pd];
            self.patch_embed
                .backward(p, g, &cache.patches, &dimg, n, Some(&mut dpatches), false);
            let mut dact = vec![0f32; side * side * pc];
            self.for_each_patch_entry(pc, |at, from| dact[from] = dpatches[at]);
            self.stem.backward(p, g, &cache.stem, dact);
        }
        let mut dctx = vec![0f32; l * self.joint_dim];
        self.ctx
            .backward(p, g, &cache.ctx_in, &dtxt, l, Some(&mut dctx), false);
        // c = silu(temb), temb = t2(silu(t1(f))) + pe2(silu(pe1_bias)).
        let dtemb: Vec<f32> = dc
            .iter()
            .zip(&cache.temb)
            .map(|(a, &x)| a * silu_grad(x))
            .collect();
        let mut ds1 = vec![0f32; d];
        self.t2
            .backward(p, g, &cache.s1, &dtemb, 1, Some(&mut ds1), false);
        let du1: Vec<f32> = ds1
            .iter()
            .zip(&cache.u1)
            .map(|(a, &x)| a * silu_grad(x))
            .collect();
        self.t1.backward(p, g, &cache.tfeat, &du1, 1, None, false);
        let mut dspe = vec![0f32; d];
        self.pe2
            .backward(p, g, &cache.spe, &dtemb, 1, Some(&mut dspe), false);
        let b1 = self.pe1_bias.offset;
        for j in 0..d {
            g[b1 + j] += dspe[j] * silu_grad(p[b1 + j]);
        }
        dctx
    }

    #[allow(clippy::too_many_arguments)]
    fn block_backward(
        &self,
        bw: &BlockW,
        bc: &BlockCache,
        p: &[f32],
        g: &mut [f32],
        c: &[f32],
        dimg: &mut [f32],
        dtxt: &mut [f32],
        dc: &mut [f32],
        di2t: Option<&[f32]>,
        scratch: &mut Vec<f32>,
    ) {
        let (d, n) = (self.d, self.n_img());
        let l = dtxt.len() / d;
        let last = bw.add_out.is_none();
        let s = n + l;
        let rq = if last { n } else { s };
        let mut dm = vec![0f32; 6 * d];
        let mut dmc = vec![0f32; bw.norm1_ctx.dout];
        let m = |k: usize| &bc.m[k * d..(k + 1) * d];
        let mut do_ = vec![0f32; rq * d];
        // Image feed-forward and attention residual.
        {
            let (dm_lo, dm_hi) = dm.split_at_mut(3 * d);
            let (dshift2, rest) = dm_hi.split_at_mut(d);
            let (dscale2, dgate2) = rest.split_at_mut(d);
            self.ff_backward(
                p,
                g,
                (&bw.ff1, &bw.ff2, bw.ff_conv.as_ref()),
                dimg,
                m(4),
                m(5),
                &bc.ff_i,
                dshift2,
                dscale2,
                dgate2,
            );
            let mut da = vec![0f32; n * d];
            gated_backward(dimg, m(2), &bc.a_i, &mut da, &mut dm_lo[2 * d..3 * d]);
            bw.out
                .backward(p, g, &bc.o[..n * d], &da, n, Some(&mut do_[..n * d]), false);
        }
        if let (Some(add_out), Some((f1, f2))) = (&bw.add_out, &bw.ffc) {
            let mc = |k: usize| &bc.mc[k * d..(k + 1) * d];
            let (dmc_lo, dmc_hi) = dmc.split_at_mut(3 * d);
            let (dshift2, rest) = dmc_hi.split_at_mut(d);
            let (dscale2, dgate2) = rest.split_at_mut(d);
            self.ff_backward(
                p,
                g,
                (f1, f2, None),
                dtxt,
                mc(4),
                mc(5),
                &bc.ff_t,
                dshift2,
                dscale2,
                dgate2,
            );
            let mut da = vec![0f32; l * d];
            gated_backward(dtxt, mc(2), &bc.a_t, &mut da, &mut dmc_lo[2 * d..3 * d]);
            add_out.backward(p, g, &bc.o[n * d..], &da, l, Some(&mut do_[n * d..]), false);
        }
        // Attention.
        let dims = AttnDims {
            rq,
            s,
            heads: self.heads,
            head_dim: d / self.heads,
            ldq: d,
            ldk: d,
            ldv: d,
        };
        let inv_h = 1.0 / self.heads as f32;
        let extra = |_h: usize, dp: &mut [f32]| {
            if let Some(dmap) = di2t {
                for i in 0..n {
                    let row = &mut dp[i * s + n..i * s + s];
                    for (j, r) in row.iter_mut().enumerate() {
                        *r += dmap[j * n + i] * inv_h;
                    }
                }
            }
        };
        let mut dq = vec![0f32; rq * d];
        let mut dk = vec![0f32; s * d];
        let mut dv = vec![0f32; s * d];
        attention::backward(
            &bc.q, &bc.k, &bc.v, &bc.p, &do_, dims, &extra, &mut dq, &mut dk, &mut dv, scratch,
        );
        let mut dni = vec![0f32; n * d];
        bw.q.backward(p, g, &bc.ni, &dq[..n * d], n, Some(&mut dni), false);
        bw.k.backward(p, g, &bc.ni, &dk[..n * d], n, Some(&mut dni), true);
        bw.v.backward(p, g, &bc.ni, &dv[..n * d], n, Some(&mut dni), true);
        let mut dnt = vec![0f32; l * d];
        if !last {
            bw.aq
                .backward(p, g, &bc.nt, &dq[n * d..], l, Some(&mut dnt), false);
        }
        bw.ak
            .backward(p, g, &bc.nt, &dk[n * d..], l, Some(&mut dnt), !last);
        bw.av
            .backward(p, g, &bc.nt, &dv[n * d..], l, Some(&mut dnt), true);
        // Modulation and layer norm of both streams.
        let mut dxhat = vec![0f32; n * d];
        {
            let (dshift, rest) = dm.split_at_mut(d);
            modulate_backward(&bc.xhat_i, m(1), &dni, dshift, &mut rest[..d], &mut dxhat);
        }
        layer_norm_rows_backward(&bc.xhat_i, &bc.rstd_i, &dxhat, d, dimg, true);
        let mut dxhat_t = vec![0f32; l * d];
        {
            let (a, b) = dmc.split_at_mut(d);
            if last {
                // (scale, shift)
                modulate_backward(&bc.xhat_t, &bc.mc[..d], &dnt, &mut b[..d], a, &mut dxhat_t);
            } else {
                modulate_backward(
                    &bc.xhat_t,
                    &bc.mc[d..2 * d],
                    &dnt,
                    a,
                    &mut b[..d],
                    &mut dxhat_t,
                );
            }
        }
        layer_norm_rows_backward(&bc.xhat_t, &bc.rstd_t, &dxhat_t, d, dtxt, true);
        bw.norm1.backward(p, g, c, &dm, 1, Some(dc), true);
        bw.norm1_ctx.backward(p, g, c, &dmc, 1, Some(dc), true);
    }

    /// Backward of `x_out = x + gate ⊙ ff(modulate(LN(x)))`, in place on `dx`.
    #[allow(clippy::too_many_arguments)]
    fn ff_backward(
        &self,
        p: &[f32],
        g: &mut [f32],
        (f1, f2, conv): (&Lin, &Lin, Option<&GridConv>),
        dx: &mut [f32],
        scale: &[f32],
        gate: &[f32],
        c: &FfCache,
        dshift: &mut [f32],
        dscale: &mut [f32],
        dgate: &mut [f32],
    ) {
        let d = self.d;
        let t = dx.len() / d;
        let mut df = vec![0f32; t * d];
        gated_backward(dx, gate, &c.f, &mut df, dgate);
        let mut dgl = vec![0f32; c.g.len()];
        f2.backward(p, g, &c.g, &df, t, Some(&mut dgl), false);
        let du = match conv {
            Some(conv) => {
                gelu_backward(&c.v, &mut dgl);
                conv.backward(p, g, &c.u, &dgl)
            }
            None => {
                gelu_backward(&c.u, &mut dgl);
                dgl
            }
        };
        let mut dh = vec![0f32; t * d];
        f1.backward(p, g, &c.h, &du, t, Some(&mut dh), false);
        let mut dxhat = vec![0f32; t * d];
        modulate_backward(&c.xhat, scale, &dh, dshift, dscale, &mut dxhat);
        layer_norm_rows_backward(&c.xhat, &c.rstd, &dxhat, d, dx, true);
    }
}
