//! Mean L2 norm of value vectors per block, for image tokens, all text tokens and prompt tokens.

use std::fmt::Write as _;

use super::error::{check_len, check_nonzero, Result};

/// Shape of one block's value-norm buffers: `vnorm_img [B,H,N]` and `vnorm_txt [B,H,L]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueNormDims {
    /// Batch size B.
    pub batch: usize,
    /// Head count H.
    pub heads: usize,
    /// Image tokens N.
    pub n_img: usize,
    /// Text tokens L.
    pub n_txt: usize,
}

/// Mean value norms of one block, averaged over batch, heads and tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerValueNorm {
    /// Mean over image tokens.
    pub image: f32,
    /// Mean over all text tokens (padding and special tokens included).
    pub text: f32,
    /// Mean over prompt tokens only; `NaN` when the mask selects no token.
    pub prompt: f32,
}

/// Value norms of every block, in block order.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueNorms {
    /// One entry per block.
    pub layers: Vec<LayerValueNorm>,
}

/// Prompt mask from the text-token flags: a token is a prompt token when it is neither
/// padding nor special (BOS/EOS).
pub fn prompt_mask(is_padding: &[bool], is_special: &[bool]) -> Result<Vec<bool>> {
    check_len("is_special flags", is_padding.len(), is_special.len())?;
    Ok(is_padding
        .iter()
        .zip(is_special)
        .map(|(&p, &s)| !p && !s)
        .collect())
}

/// Mean value norms of one block. `prompt` has one flag per text token (length L).
pub fn layer_value_norm(
    vnorm_img: &[f32],
    vnorm_txt: &[f32],
    dims: ValueNormDims,
    prompt: &[bool],
) -> Result<LayerValueNorm> {
    check_nonzero("batch size is 0", dims.batch)?;
    check_nonzero("head count is 0", dims.heads)?;
    check_nonzero("no image tokens", dims.n_img)?;
    check_nonzero("no text tokens", dims.n_txt)?;
    let bh = dims.batch * dims.heads;
    check_len("vnorm_img [B,H,N]", bh * dims.n_img, vnorm_img.len())?;
    check_len("vnorm_txt [B,H,L]", bh * dims.n_txt, vnorm_txt.len())?;
    check_len("prompt mask [L]", dims.n_txt, prompt.len())?;

    let mean = |xs: &[f32]| xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len() as f64;
    let (mut sum, mut count) = (0.0f64, 0usize);
    for row in vnorm_txt.chunks_exact(dims.n_txt) {
        for (&x, _) in row.iter().zip(prompt).filter(|(_, &p)| p) {
            sum += f64::from(x);
            count += 1;
        }
    }
    let prompt_mean = if count == 0 {
        f32::NAN
    } else {
        (sum / count as f64) as f32
    };
    Ok(LayerValueNorm {
        image: mean(vnorm_img) as f32,
        text: mean(vnorm_txt) as f32,
        prompt: prompt_mean,
    })
}

impl ValueNorms {
    /// Value norms of every block; `img[i]` and `txt[i]` are block i's buffers, all of shape `dims`.
    pub fn from_layers<A: AsRef<[f32]>, B: AsRef<[f32]>>(
        img: &[A],
        txt: &[B],
        dims: ValueNormDims,
        prompt: &[bool],
    ) -> Result<Self> {
        check_nonzero("no layers", img.len())?;
        check_len("text value-norm layers", img.len(), txt.len())?;
        let layers = img
            .iter()
            .zip(txt)
            .map(|(i, t)| layer_value_norm(i.as_ref(), t.as_ref(), dims, prompt))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// CSV with header `layer,image,text,prompt`, one row per block (`NaN` for no prompt token).
    pub fn to_csv(&self) -> String {
        let mut out = String::from("layer,image,text,prompt\n");
        for (l, v) in self.layers.iter().enumerate() {
            let _ = writeln!(out, "{l},{},{},{}", v.image, v.text, v.prompt);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIMS: ValueNormDims = ValueNormDims {
        batch: 1,
        heads: 2,
        n_img: 2,
        n_txt: 3,
    };

    #[test]
    fn means_by_hand() {
        let img = [1.0, 3.0, 5.0, 7.0];
        // Tokens: BOS, prompt, padding.
        let txt = [10.0, 2.0, 0.0, 20.0, 4.0, 0.0];
        let mask = prompt_mask(&[false, false, true], &[true, false, false]).unwrap();
        assert_eq!(mask, [false, true, false]);
        let v = layer_value_norm(&img, &txt, DIMS, &mask).unwrap();
        assert_eq!(v.image, 4.0);
        assert_eq!(v.text, 6.0);
        assert_eq!(v.prompt, 3.0);
    }

    #[test]
    fn batch_and_csv() {
        let dims = ValueNormDims {
            batch: 2,
            heads: 1,
            n_img: 1,
            n_txt: 2,
        };
        let img = vec![vec![2.0, 4.0], vec![1.0, 1.0]];
        let txt = vec![vec![1.0, 3.0, 5.0, 7.0], vec![0.5, 0.5, 0.5, 0.5]];
        let v = ValueNorms::from_layers(&img, &txt, dims, &[false, true]).unwrap();
        assert_eq!(v.layers[0].prompt, 5.0);
        assert_eq!(
            v.to_csv(),
            "layer,image,text,prompt\n0,3,4,5\n1,1,0.5,0.5\n"
        );
    }

    #[test]
    fn no_prompt_token_gives_nan() {
        let v = layer_value_norm(&[1.0; 4], &[1.0; 6], DIMS, &[false; 3]).unwrap();
        assert!(v.prompt.is_nan());
        let csv = ValueNorms { layers: vec![v] }.to_csv();
        assert!(csv.ends_with("0,1,1,NaN\n"));
    }

    #[test]
    fn bad_input_is_an_error() {
        let mask = [true; 3];
        assert!(layer_value_norm(&[1.0; 3], &[1.0; 6], DIMS, &mask).is_err());
        assert!(layer_value_norm(&[1.0; 4], &[1.0; 5], DIMS, &mask).is_err());
        assert!(layer_value_norm(&[1.0; 4], &[1.0; 6], DIMS, &mask[..2]).is_err());
        let zero = ValueNormDims { heads: 0, ..DIMS };
        assert!(layer_value_norm(&[], &[], zero, &mask).is_err());
        let none: [Vec<f32>; 0] = [];
        assert!(ValueNorms::from_layers(&none, &none, DIMS, &mask).is_err());
        assert!(prompt_mask(&[true], &[]).is_err());
    }
}
