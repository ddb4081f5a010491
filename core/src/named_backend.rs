//! A candle `VarBuilder` backend over any weight store that loads tensors by their diffusers
//! name (the transformer's `Checkpoint`, the VAE's weights), so layers load via `vb.pp(..)`.

use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::error::Result;

/// A store of tensors addressed by diffusers name.
pub trait NamedTensors: Send + Sync {
    /// Loads `name`, checking its shape against `expected` where given.
    fn load_named(
        &self,
        name: &str,
        expected: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor>;
    /// Whether `name` is stored.
    fn has(&self, name: &str) -> bool;
}

/// The backend; errors travel through candle as messages (see `mmdit::checkpoint::loading_error`).
pub struct NamedBackend<T: NamedTensors>(pub Arc<T>);

impl<T: NamedTensors> SimpleBackend for NamedBackend<T> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .load_named(name, Some(&s), dtype, dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0
            .load_named(name, None, dtype, dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.has(name)
    }
}
