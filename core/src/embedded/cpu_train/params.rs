//! The training engine's parameters: every variable of the transformer and text-encoder stores
//! in one flat f32 buffer (sorted by name, `transformer.…` then `text.…`), with which of them the
//! optimiser updates, and the copy back into the candle variables for saving and sampling.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::error::{Error, Result};

/// One variable's place in the flat buffer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `transformer.NAME` or `text.NAME`.
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
    pub trainable: bool,
    var: Var,
}

/// All variables, flat.
#[derive(Debug, Clone)]
pub struct Params {
    pub data: Vec<f32>,
    pub entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

/// A `[rows, cols]` matrix (or vector when `cols == 1`) at `offset` of the flat buffer.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub offset: usize,
    pub len: usize,
}

impl Params {
    /// Flattens the stores; `trainable(full_name)` says which variables the optimiser updates.
    pub fn from_varmaps(
        stores: &[(&str, &VarMap)],
        trainable: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        let mut entries = vec![];
        let mut data = vec![];
        for (prefix, vm) in stores {
            let d = vm
                .data()
                .lock()
                .map_err(|_| Error::Input("variable store poisoned".into()))?;
            let mut vars: Vec<(String, Var)> =
                d.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (k, var) in vars {
                let name = format!("{prefix}{k}");
                let v: Vec<f32> = var
                    .as_tensor()
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1()?;
                entries.push(Entry {
                    trainable: trainable(&name),
                    shape: var.dims().to_vec(),
                    offset: data.len(),
                    len: v.len(),
                    name,
                    var,
                });
                data.extend_from_slice(&v);
            }
        }
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Ok(Self {
            data,
            entries,
            index,
        })
    }

    /// The slot of a variable, checked against the expected shape; a missing one is named.
    pub fn slot(&self, name: &str, shape: &[usize]) -> Result<Slot> {
        let e = self
            .index
            .get(name)
            .map(|&i| &self.entries[i])
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
            })?;
        if e.shape != shape {
            return Err(Error::WrongShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: e.shape.clone(),
            });
        }
        Ok(Slot {
            offset: e.offset,
            len: e.len,
        })
    }

    /// Whether a variable exists.
    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Copies the flat values back into the candle variables.
    pub fn write_back(&self) -> Result<()> {
        for e in &self.entries {
            let t = Tensor::from_slice(
                &self.data[e.offset..e.offset + e.len],
                e.shape.as_slice(),
                e.var.device(),
            )?;
            e.var.set(&t)?;
        }
        Ok(())
    }

    /// A tensor of the values `buf` holds for entry `e` (moments, gradients).
    pub fn tensor_of(&self, e: &Entry, buf: &[f32]) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &buf[e.offset..e.offset + e.len],
            e.shape.as_slice(),
            e.var.device(),
        )?)
    }
}
