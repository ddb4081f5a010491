//! Pictures in and out of the SD3 pipeline: centre-crop and resize to the model's square input
//! as a `[-1, 1]` tensor, and a decoded tensor back to RGB bytes (diffusers v0.42.1,
//! `image_processor.py` `VaeImageProcessor`: `normalize`, `denormalize`, `numpy_to_pil`).

use candle_core::{DType, Device, Tensor};
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};

use crate::error::{Error, Result};

/// The largest centred square of `img`, resized to `size × size` (Lanczos, diffusers' default
/// resampling). Alpha is dropped as PIL's `convert("RGB")` drops it (no compositing).
pub fn centre_square(img: &DynamicImage, size: usize) -> Result<RgbImage> {
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(Error::Input(format!("the image is empty ({w}×{h} pixels)")));
    }
    if size == 0 {
        return Err(Error::Input("the target size must be positive".into()));
    }
    let m = w.min(h);
    let rgb = img.to_rgb8();
    let crop = image::imageops::crop_imm(&rgb, (w - m) / 2, (h - m) / 2, m, m).to_image();
    if m as usize == size {
        return Ok(crop);
    }
    Ok(image::imageops::resize(
        &crop,
        size as u32,
        size as u32,
        FilterType::Lanczos3,
    ))
}

/// RGB bytes as a model input: `x / 255 · 2 − 1`.
///
/// # Shapes
/// `img: w × h` → `[1, 3, h, w]` f32 in [-1, 1]
pub fn rgb_to_tensor(img: &RgbImage, dev: &Device) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let t = Tensor::from_vec(img.as_raw().clone(), (h, w, 3), dev)?
        .permute((2, 0, 1))?
        .to_dtype(DType::F32)?;
    Ok(((t / 127.5)? - 1.0)?.unsqueeze(0)?)
}

/// A decoded image to RGB bytes: `round(clamp(x / 2 + 0.5, 0, 1) · 255)`.
///
/// # Shapes
/// `x: [1, 3, H, W]` → `W × H` RGB
pub fn tensor_to_rgb(x: &Tensor) -> Result<RgbImage> {
    let (b, c, h, w) = x.dims4()?;
    if b != 1 || c != 3 {
        return Err(Error::Input(format!(
            "expected one RGB image [1, 3, H, W], got {:?}",
            x.dims()
        )));
    }
    let v = ((x.to_dtype(DType::F32)? / 2.0)? + 0.5)?
        .clamp(0f32, 1f32)?
        .affine(255.0, 0.0)?
        .round()?
        .squeeze(0)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_dtype(DType::U8)?
        .to_vec1::<u8>()?;
    RgbImage::from_raw(w as u32, h as u32, v)
        .ok_or_else(|| Error::Input("decoded image has the wrong size".into()))
}
