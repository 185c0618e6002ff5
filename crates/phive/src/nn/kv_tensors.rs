//! Keys and values held as tensors on the model's device: the KV pool on a GPU.
//!
//! The CPU pool ([`super::kv_cache`]) keeps plain memory that hand-written kernels read head by
//! head. On a GPU the keys must stay in device memory, written and read by device operations
//! without a trip through the host. Each layer's keys (and values) are one tensor
//! `[num_blocks · block_size, kv_heads · head_dim]`: position `p` of a sequence lives in row
//! `slot(p) = block · block_size + p % block_size`, a token's heads side by side. A step's new
//! keys go in with one scatter per layer, and a sequence's keys come out with one row gather,
//! whatever the number of sequences and blocks.

use candle_core::{DType, Device, Tensor};

use super::kv_cache::{KvDtype, KvGeometry};
use crate::Result;

/// One pool's keys and values on a device (see the module docs).
#[derive(Debug)]
pub struct KvTensors {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
}

impl KvTensors {
    /// `num_blocks` zeroed blocks per layer on `device`.
    pub fn zeros(geometry: KvGeometry, num_blocks: usize, device: &Device) -> Result<Self> {
        let shape = (num_blocks * geometry.block_size, geometry.kv_heads * geometry.head_dim);
        let dtype = dtype_of(geometry.dtype);
        let store = || -> Result<Vec<Tensor>> {
            (0..geometry.num_layers).map(|_| Ok(Tensor::zeros(shape, dtype, device)?)).collect()
        };
        Ok(Self { keys: store()?, values: store()? })
    }

    /// The device the tensors live on.
    pub fn device(&self) -> &Device {
        self.keys.first().map_or(&Device::Cpu, Tensor::device)
    }

    /// Stores the new keys and values `[n, kv_heads · head_dim]` of layer `layer` in the rows
    /// `slots` (`[n, kv_heads · head_dim]` u32, each row its token's slot repeated; see
    /// [`slot_index`]).
    pub fn write(&self, layer: usize, slots: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
        let dtype = self.keys[layer].dtype();
        self.keys[layer].scatter_set(slots, &k.to_dtype(dtype)?.contiguous()?, 0)?;
        self.values[layer].scatter_set(slots, &v.to_dtype(dtype)?.contiguous()?, 0)?;
        Ok(())
    }

    /// Layer `layer`'s keys and values as stored, `[slots, kv_heads · head_dim]`.
    #[cfg(feature = "cuda")]
    pub(crate) fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Keys and values `[n, kv_heads · head_dim]` of the rows `slots` (`[n]` u32) of layer
    /// `layer`, in `dtype`.
    pub fn gather(&self, layer: usize, slots: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let k = self.keys[layer].index_select(slots, 0)?.to_dtype(dtype)?;
        let v = self.values[layer].index_select(slots, 0)?.to_dtype(dtype)?;
        Ok((k, v))
    }

    /// Copies block `src` into block `dst` in every layer.
    pub fn copy_block(&mut self, block_size: usize, src: u32, dst: u32) -> Result<()> {
        for store in self.keys.iter().chain(&self.values) {
            let block = store.narrow(0, src as usize * block_size, block_size)?.copy()?;
            store.slice_set(&block, 0, dst as usize * block_size)?;
        }
        Ok(())
    }

    /// Grows every layer to `num_blocks` blocks, keeping the contents.
    pub fn grow(&mut self, block_size: usize, num_blocks: usize) -> Result<()> {
        for store in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let (rows, width) = store.dims2()?;
            let more = num_blocks * block_size - rows;
            let zeros = Tensor::zeros((more, width), store.dtype(), store.device())?;
            *store = Tensor::cat(&[&*store, &zeros], 0)?;
        }
        Ok(())
    }
}

/// The tensor element type of a KV storage type.
fn dtype_of(dtype: KvDtype) -> DType {
    match dtype {
        KvDtype::F32 => DType::F32,
        KvDtype::F16 => DType::F16,
    }
}

/// Row of the pool that holds position `p` of the sequence with block table `blocks`.
pub fn slot(geometry: KvGeometry, blocks: &[u32], p: usize) -> u32 {
    blocks[p / geometry.block_size] * geometry.block_size as u32 + (p % geometry.block_size) as u32
}

/// The scatter index of [`KvTensors::write`] for tokens at `slots`: `[n, width]` u32, row `i`
/// all `slots[i]`.
pub fn slot_index(slots: &[u32], width: usize, device: &Device) -> Result<Tensor> {
    let index: Vec<u32> = slots.iter().flat_map(|&s| std::iter::repeat_n(s, width)).collect();
    Ok(Tensor::from_vec(index, (slots.len(), width), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_written_are_read_back_after_a_copy_and_a_growth() {
        let g = KvGeometry { num_layers: 2, kv_heads: 2, head_dim: 3, block_size: 4, dtype: KvDtype::F32 };
        let dev = Device::Cpu;
        let mut kv = KvTensors::zeros(g, 2, &dev).unwrap();
        let blocks = [1u32, 0];
        let slots: Vec<u32> = (0..6).map(|p| slot(g, &blocks, p)).collect();
        assert_eq!(slots, [4, 5, 6, 7, 0, 1]);
        let k = Tensor::arange(0f32, 36.0, &dev).unwrap().reshape((6, 6)).unwrap();
        let v = k.neg().unwrap();
        kv.write(1, &slot_index(&slots, 6, &dev).unwrap(), &k, &v).unwrap();
        kv.copy_block(4, 1, 0).unwrap();
        kv.grow(4, 3).unwrap();
        let read = Tensor::from_vec(vec![4u32, 5, 6, 7, 0, 1, 2, 3, 8], 9, &dev).unwrap();
        let (gk, gv) = kv.gather(1, &read, DType::F32).unwrap();
        let rows = gk.to_vec2::<f32>().unwrap();
        // Block 1 as written; block 0 now a copy of it; block 2 new and zero.
        assert_eq!(rows[..4].concat(), (0..24).map(|x| x as f32).collect::<Vec<_>>());
        assert_eq!(rows[4..8], rows[..4]);
        assert_eq!(rows[8], [0.0; 6]);
        assert_eq!(gv.to_vec2::<f32>().unwrap()[1][0], -6.0);
        // Layer 0 was not touched.
        assert_eq!(
            kv.gather(0, &read, DType::F32)
                .unwrap()
                .0
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
}
