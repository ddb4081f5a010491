//! Reading the VAE's tensors under diffusers' names, from a diffusers `vae/` folder or from
//! Stability's single file (`first_stage_model.*`, LDM names). The LDM → diffusers renaming is
//! the inverse lookup of diffusers' `convert_ldm_vae_checkpoint` (diffusers v0.42.1,
//! `loaders/single_file_utils.py`, with `update_vae_resnet_ldm_to_diffusers` and
//! `update_vae_attentions_ldm_to_diffusers`): the same names, and 1×1-conv attention weights
//! read as linear ones.

use std::collections::BTreeSet;
use std::path::PathBuf;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};

use crate::error::{Error, Result};

/// How names are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VaeLayout {
    /// diffusers' `AutoencoderKL` names.
    Diffusers,
    /// LDM names (`encoder.down.0.block.0…`, `mid.attn_1.q…`) of Stability's files; the number
    /// of up blocks is needed because LDM numbers them in the other order.
    Ldm { num_blocks: usize },
}

/// The VAE tensors of one file.
pub(super) struct VaeWeights {
    st: MmapedSafetensors,
    names: BTreeSet<String>,
    /// The first (usually only) file, for messages.
    pub file: PathBuf,
    pub prefix: String,
    pub layout: VaeLayout,
}

impl VaeWeights {
    /// Opens `files` (one, or the shards of a folder), keeping the tensors under `prefix`.
    pub fn open(files: &[PathBuf], prefix: &str, ldm: bool) -> Result<Self> {
        let file = files
            .first()
            .ok_or_else(|| Error::Load("no VAE weight file given".into()))?;
        // SAFETY: mapped read-only; DiT Lens never writes to a checkpoint it reads.
        let st = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| Error::NotSafetensors {
            path: file.clone(),
            reason: e.to_string().lines().next().unwrap_or("").to_string(),
        })?;
        let names: BTreeSet<String> = st
            .tensors()
            .into_iter()
            .filter_map(|(n, _)| n.strip_prefix(prefix).map(str::to_string))
            .collect();
        if names.is_empty() {
            return Err(Error::Load(format!(
                "{} has no VAE tensors (none named `{prefix}*`)",
                file.display()
            )));
        }
        let mut w = Self {
            st,
            names,
            file: file.to_path_buf(),
            prefix: prefix.to_string(),
            layout: VaeLayout::Diffusers,
        };
        if ldm {
            let num_blocks = (0..)
                .take_while(|i| {
                    w.names
                        .contains(&format!("decoder.up.{i}.block.0.conv1.weight"))
                })
                .count();
            w.layout = VaeLayout::Ldm { num_blocks };
        }
        Ok(w)
    }

    /// The key under which the diffusers-named tensor is stored (prefix included).
    pub fn stored_name(&self, name: &str) -> String {
        let key = match self.layout {
            VaeLayout::Diffusers => name.to_string(),
            VaeLayout::Ldm { num_blocks } => ldm_name(name, num_blocks),
        };
        format!("{}{key}", self.prefix)
    }

    fn key(&self, name: &str) -> String {
        self.stored_name(name)[self.prefix.len()..].to_string()
    }

    /// Whether the diffusers-named tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(&self.key(name))
    }

    /// Shape of the diffusers-named tensor as stored.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        let view = self.st.get(&self.stored_name(name)).ok()?;
        Some(view.shape().to_vec())
    }

    /// The shape of a tensor that must exist.
    pub fn need_shape(&self, name: &str) -> Result<Vec<usize>> {
        self.shape_of(name).ok_or_else(|| self.missing(name))
    }

    fn missing(&self, name: &str) -> Error {
        Error::Load(format!(
            "{}: VAE tensor `{}` is missing",
            self.file.display(),
            self.stored_name(name)
        ))
    }

    /// Loads the diffusers-named tensor; a stored `[a, b, 1, 1]` is read as `[a, b]` when
    /// `expected` is 2-D (LDM stores the attention projections as 1×1 convolutions).
    pub fn load(
        &self,
        name: &str,
        expected: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        if !self.contains(name) {
            return Err(self.missing(name));
        }
        let key = self.stored_name(name);
        let mut t = self.st.load(&key, dev)?;
        if let Some(exp) = expected {
            if exp.rank() == 2 && t.rank() == 4 && t.dims()[2..] == [1, 1] {
                t = t.squeeze(3)?.squeeze(2)?;
            }
            if t.dims() != exp.dims() {
                return Err(Error::Load(format!(
                    "{}: VAE tensor `{key}` has shape {:?}, expected {:?}",
                    self.file.display(),
                    t.dims(),
                    exp.dims()
                )));
            }
        }
        Ok(t.to_dtype(dtype)?)
    }
}

/// The LDM name of a diffusers `AutoencoderKL` tensor (`num_blocks` down/up blocks).
pub(super) fn ldm_name(name: &str, num_blocks: usize) -> String {
    let Some((part, rest)) = name.split_once('.') else {
        return name.to_string();
    };
    if part != "encoder" && part != "decoder" {
        return name.to_string(); // quant_conv, post_quant_conv
    }
    let shortcut = |s: &str| s.replace("conv_shortcut", "nin_shortcut");
    let mapped = if let Some(r) = rest.strip_prefix("conv_norm_out.") {
        format!("norm_out.{r}")
    } else if let Some(r) = rest.strip_prefix("down_blocks.") {
        let (i, r) = r.split_once('.').unwrap_or((r, ""));
        if let Some(r) = r.strip_prefix("resnets.") {
            format!("down.{i}.block.{}", shortcut(r))
        } else if let Some(r) = r.strip_prefix("downsamplers.0.") {
            format!("down.{i}.downsample.{r}")
        } else {
            return name.to_string();
        }
    } else if let Some(r) = rest.strip_prefix("up_blocks.") {
        let (i, r) = r.split_once('.').unwrap_or((r, ""));
        let Some(b) = i
            .parse::<usize>()
            .ok()
            .and_then(|i| num_blocks.checked_sub(i + 1))
        else {
            return name.to_string();
        };
        if let Some(r) = r.strip_prefix("resnets.") {
            format!("up.{b}.block.{}", shortcut(r))
        } else if let Some(r) = r.strip_prefix("upsamplers.0.") {
            format!("up.{b}.upsample.{r}")
        } else {
            return name.to_string();
        }
    } else if let Some(r) = rest.strip_prefix("mid_block.resnets.") {
        let (k, r) = r.split_once('.').unwrap_or((r, ""));
        match k.parse::<usize>() {
            Ok(k) => format!("mid.block_{}.{}", k + 1, shortcut(r)),
            Err(_) => return name.to_string(),
        }
    } else if let Some(r) = rest.strip_prefix("mid_block.attentions.0.") {
        let table = [
            ("group_norm.", "norm."),
            ("to_q.", "q."),
            ("to_k.", "k."),
            ("to_v.", "v."),
            ("to_out.0.", "proj_out."),
        ];
        match table
            .iter()
            .find_map(|(d, l)| r.strip_prefix(d).map(|x| (l, x)))
        {
            Some((l, x)) => format!("mid.attn_1.{l}{x}"),
            None => return name.to_string(),
        }
    } else {
        rest.to_string()
    };
    format!("{part}.{mapped}")
}

/// Lets candle's blocks load by diffusers names (`crate::named_backend::NamedBackend`).
impl crate::named_backend::NamedTensors for VaeWeights {
    fn load_named(
        &self,
        name: &str,
        expected: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        self.load(name, expected, dtype, dev)
    }

    fn has(&self, name: &str) -> bool {
        self.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::ldm_name;

    #[test]
    fn ldm_names() {
        let cases = [
            ("encoder.conv_in.weight", "encoder.conv_in.weight"),
            ("encoder.conv_norm_out.bias", "encoder.norm_out.bias"),
            (
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
                "encoder.down.1.block.0.nin_shortcut.weight",
            ),
            (
                "encoder.down_blocks.2.downsamplers.0.conv.bias",
                "encoder.down.2.downsample.conv.bias",
            ),
            (
                "decoder.up_blocks.0.resnets.2.norm1.weight",
                "decoder.up.3.block.2.norm1.weight",
            ),
            (
                "decoder.up_blocks.1.upsamplers.0.conv.weight",
                "decoder.up.2.upsample.conv.weight",
            ),
            (
                "decoder.mid_block.resnets.1.conv2.weight",
                "decoder.mid.block_2.conv2.weight",
            ),
            (
                "encoder.mid_block.attentions.0.to_out.0.weight",
                "encoder.mid.attn_1.proj_out.weight",
            ),
            (
                "encoder.mid_block.attentions.0.group_norm.weight",
                "encoder.mid.attn_1.norm.weight",
            ),
            (
                "decoder.mid_block.attentions.0.to_k.bias",
                "decoder.mid.attn_1.k.bias",
            ),
            ("quant_conv.weight", "quant_conv.weight"),
        ];
        for (d, l) in cases {
            assert_eq!(ldm_name(d, 4), l, "{d}");
        }
    }
}
