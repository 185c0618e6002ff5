//! Per-sequence key/value cache for the decoder layers.
//!
//! Each layer keeps K and V buffers `[1, kv_heads, capacity, head_dim]` that grow in steps of
//! [`KvCache::GROW_STEP`] positions; new entries are written in place, so a decode step copies
//! only its own keys instead of re-concatenating the whole history.

use candle_core::{Device, Tensor};

use crate::Result;

#[derive(Debug, Clone, Default)]
struct LayerKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

/// The KV cache of one sequence: one K/V pair per decoder layer.
///
/// Not `Clone`: the buffers are written in place, so a shallow copy would alias them.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
}

impl KvCache {
    /// Capacity granularity, in positions.
    pub const GROW_STEP: usize = 512;

    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![LayerKv::default(); num_layers] }
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Number of cached positions (the position of the next token).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything after the first `len` positions (e.g. to reuse a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        for l in &mut self.layers {
            l.len = l.len.min(len);
        }
    }

    /// Drops all entries and frees the buffers.
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            *l = LayerKv::default();
        }
    }

    /// Bytes held by the buffers (capacity, not length).
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [&l.k, &l.v])
            .flatten()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Appends `k`, `v` `[1, kv_heads, seq, head_dim]` to layer `layer` and returns views of all
    /// cached keys and values `[1, kv_heads, len, head_dim]` (including the new ones).
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n_layers = self.layers.len();
        let entry = self.layers.get_mut(layer).ok_or_else(|| {
            candle_core::Error::Msg(format!("kv cache has {n_layers} layers, asked for layer {layer}"))
        })?;
        let (b, h, s, d) = k.dims4()?;
        if v.dims4()? != (b, h, s, d) || b != 1 {
            return Err(candle_core::Error::Msg(format!(
                "kv cache expects k and v of equal shape [1, heads, seq, dim], got {:?} and {:?}",
                k.shape(),
                v.shape()
            ))
            .into());
        }
        let needed = entry.len + s;
        let cap = entry.k.as_ref().map_or(0, |t| t.dim(2).unwrap_or(0));
        if needed > cap || entry.k.as_ref().is_some_and(|t| t.dims4().ok() != Some((1, h, cap, d))) {
            let new_cap = needed.div_ceil(Self::GROW_STEP) * Self::GROW_STEP;
            entry.k = Some(grow(entry.k.take(), entry.len, (1, h, new_cap, d), k.dtype(), k.device())?);
            entry.v = Some(grow(entry.v.take(), entry.len, (1, h, new_cap, d), v.dtype(), v.device())?);
        }
        let (kb, vb) = match (&entry.k, &entry.v) {
            (Some(kb), Some(vb)) => (kb, vb),
            _ => unreachable!("buffers allocated above"),
        };
        kb.slice_set(&k.contiguous()?, 2, entry.len)?;
        vb.slice_set(&v.contiguous()?, 2, entry.len)?;
        entry.len = needed;
        Ok((kb.narrow(2, 0, needed)?, vb.narrow(2, 0, needed)?))
    }
}

/// A new zeroed buffer of `shape` holding the first `len` positions of `old`.
fn grow(
    old: Option<Tensor>,
    len: usize,
    shape: (usize, usize, usize, usize),
    dtype: candle_core::DType,
    device: &Device,
) -> Result<Tensor> {
    let buf = Tensor::zeros(shape, dtype, device)?;
    if let Some(old) = old {
        if len > 0 {
            buf.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
        }
    }
    Ok(buf)
}
