//! Paged key/value memory for the decoder layers.
//!
//! Keys and values live in fixed-size blocks of [`KvGeometry::block_size`] positions taken from
//! one [`KvPool`]. A sequence reaches its positions through a block table (block ids in position
//! order), so sequences of any length share one pool without fragmentation, a batched step can
//! attend every sequence through its own table, and blocks can be shared between sequences
//! (`n > 1` choices, and later prefix reuse). Which blocks are free or shared is the engine's
//! business; this module only stores numbers.
//!
//! Layout of each layer's K and V: `[block][kv_head][slot][head_dim]`, so one head's keys inside
//! a block are contiguous: the decode kernel streams them, and gathering a sequence for a
//! prefill chunk copies `block_size · head_dim` runs.
//!
//! On a GPU the pool's memory is device tensors instead ([`super::kv_tensors`]), written and
//! read by device operations; [`KvPool::for_device`] picks the memory for the model's device.
//!
//! [`KvCache`] is one sequence over a private, growing pool: the single-sequence API that the
//! model tests and benchmarks use; it runs the same batched code path as the engine.

use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;

use super::kv_tensors::KvTensors;
use super::kv_warmer::{Regions, Warmer, AHEAD_BYTES};
use crate::Result;

/// How the pool stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// The model's f32 keys and values, exactly (what the reference comparisons use).
    #[default]
    F32,
    /// IEEE half precision: half the memory, and half the bytes a long-context decode step
    /// reads; each key and value keeps 11 significant bits (attention computes in f32).
    F16,
}

impl KvDtype {
    /// Bytes of one stored number.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

impl FromStr for KvDtype {
    type Err = crate::Error;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            _ => Err(crate::Error::InvalidRequest(format!("unknown KV cache dtype {s:?}: use f32 or f16"))),
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
        })
    }
}

/// Shape of the KV memory of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    /// Decoder layers.
    pub num_layers: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Positions per block.
    pub block_size: usize,
    /// How keys and values are stored.
    pub dtype: KvDtype,
}

impl KvGeometry {
    /// Block size the engine uses: small enough that a sequence wastes little of its last block,
    /// large enough that block tables stay short.
    pub const DEFAULT_BLOCK_SIZE: usize = 16;

    /// The same shape stored as `dtype`.
    pub fn with_dtype(self, dtype: KvDtype) -> Self {
        Self { dtype, ..self }
    }

    /// Offset of `(block, head, slot)` in a layer's K (or V) store.
    pub(crate) fn offset(&self, block: u32, head: usize, slot: usize) -> usize {
        ((block as usize * self.kv_heads + head) * self.block_size + slot) * self.head_dim
    }

    /// Numbers of one block in one layer's K (or V) store.
    fn block_elems(&self) -> usize {
        self.kv_heads * self.block_size * self.head_dim
    }

    /// Bytes one block takes over all layers, keys and values.
    pub fn bytes_per_block(&self) -> usize {
        2 * self.num_layers * self.block_elems() * self.dtype.size()
    }

    /// Blocks needed to hold `positions` positions.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_size)
    }
}

/// The KV memory of every sequence: `num_blocks` blocks per layer.
///
/// In host memory, the stores are zero-initialised allocations, so the operating system backs
/// only the pages that sequences have written: a large pool costs resident memory only as it
/// fills.
#[derive(Debug)]
pub struct KvPool {
    geometry: KvGeometry,
    num_blocks: usize,
    /// Faults in fresh host blocks ahead of use. Declared before `memory` so that it stops
    /// before the stores it works on are freed.
    warmer: Option<Warmer>,
    memory: Memory,
}

/// Where a pool's numbers live.
#[derive(Debug)]
enum Memory {
    /// Host memory, one store per layer for keys and one for values.
    Host { keys: Vec<Store>, values: Vec<Store> },
    /// Tensors on the model's device.
    Tensors(KvTensors),
}

/// One layer's keys (or values), `[block][kv_head][slot][head_dim]`.
#[derive(Debug)]
enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Store {
    /// `len` zeros from the allocator's zeroed memory, which the OS backs only as it is
    /// written. (`vec![f16::ZERO; len]` would write every element: `f16` is not a type the
    /// standard library knows to be zero, so an 8 GiB pool became 8 GiB resident at start.)
    fn zeros(dtype: KvDtype, len: usize) -> Self {
        match dtype {
            KvDtype::F32 => Store::F32(vec![0.0; len]),
            KvDtype::F16 => Store::F16(vec![0u16; len].reinterpret_into()),
        }
    }

    /// Stores `src` from `at` on, rounded to the store's type.
    fn set(&mut self, at: usize, src: &[f32]) {
        match self {
            Store::F32(v) => v[at..at + src.len()].copy_from_slice(src),
            Store::F16(v) => v[at..at + src.len()].convert_from_f32_slice(src),
        }
    }

    fn copy_within(&mut self, src: std::ops::Range<usize>, dst: usize) {
        match self {
            Store::F32(v) => v.copy_within(src, dst),
            Store::F16(v) => v.copy_within(src, dst),
        }
    }

    /// Address and length in bytes of the numbers.
    fn region(&self) -> (usize, usize) {
        match self {
            Store::F32(v) => (v.as_ptr() as usize, std::mem::size_of_val(v.as_slice())),
            Store::F16(v) => (v.as_ptr() as usize, std::mem::size_of_val(v.as_slice())),
        }
    }

    fn resize(&mut self, len: usize) {
        match self {
            Store::F32(v) => v.resize(len, 0.0),
            Store::F16(v) => v.resize(len, f16::ZERO),
        }
    }
}

/// One layer's key and value stores, `[block][kv_head][slot][head_dim]`, in their type.
#[derive(Debug, Clone, Copy)]
pub enum KvLayer<'a> {
    /// Stored as f32.
    F32 {
        /// Keys.
        keys: &'a [f32],
        /// Values.
        values: &'a [f32],
    },
    /// Stored as f16.
    F16 {
        /// Keys.
        keys: &'a [f16],
        /// Values.
        values: &'a [f16],
    },
}

impl KvLayer<'_> {
    /// Appends KV head `head`'s keys to `k` and values to `v` for positions `0..len` of the
    /// sequence with block table `blocks`: `[len, head_dim]` each, as f32.
    pub(crate) fn read_head(
        &self,
        g: KvGeometry,
        blocks: &[u32],
        len: usize,
        head: usize,
        k: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) {
        let mut p = 0;
        while p < len {
            let n = (len - p).min(g.block_size);
            let start = g.offset(blocks[p / g.block_size], head, 0);
            let run = start..start + n * g.head_dim;
            match self {
                KvLayer::F32 { keys, values } => {
                    k.extend_from_slice(&keys[run.clone()]);
                    v.extend_from_slice(&values[run]);
                }
                KvLayer::F16 { keys, values } => {
                    k.extend(keys[run.clone()].iter().map(|x| x.to_f32()));
                    v.extend(values[run].iter().map(|x| x.to_f32()));
                }
            }
            p += n;
        }
    }
}

impl KvPool {
    /// A pool of `num_blocks` blocks in host memory.
    pub fn new(geometry: KvGeometry, num_blocks: usize) -> Self {
        let elems = num_blocks * geometry.block_elems();
        let store = || (0..geometry.num_layers).map(|_| Store::zeros(geometry.dtype, elems)).collect();
        Self { geometry, num_blocks, warmer: None, memory: Memory::Host { keys: store(), values: store() } }
    }

    /// A pool of `num_blocks` blocks as tensors on `device` (any device: tests run the GPU's
    /// code path on the CPU this way).
    pub fn on_device(geometry: KvGeometry, num_blocks: usize, device: &Device) -> Result<Self> {
        let tensors = KvTensors::zeros(geometry, num_blocks, device)?;
        Ok(Self { geometry, num_blocks, warmer: None, memory: Memory::Tensors(tensors) })
    }

    /// The pool for a model on `device`: host memory for the CPU's kernels, whose fresh blocks
    /// a background thread faults in ahead of use ([`KvPool::warm_ahead`]), device tensors
    /// anywhere else.
    pub fn for_device(geometry: KvGeometry, num_blocks: usize, device: &Device) -> Result<Self> {
        if device.is_cpu() {
            let mut pool = Self::new(geometry, num_blocks);
            if let Memory::Host { keys, values } = &pool.memory {
                let stores = keys.iter().chain(values).map(Store::region).collect();
                let block_bytes = geometry.block_elems() * geometry.dtype.size();
                // SAFETY: the stores never move or shrink: only `grow` reallocates them, and it
                // stops the warmer first; the warmer is dropped before them.
                pool.warmer = unsafe { Warmer::spawn(Regions { stores, block_bytes }) };
            }
            pool.warm_ahead(0);
            Ok(pool)
        } else {
            Self::on_device(geometry, num_blocks, device)
        }
    }

    /// The device tensors, where the pool keeps its numbers on a device.
    pub fn tensors(&self) -> Option<&KvTensors> {
        match &self.memory {
            Memory::Tensors(t) => Some(t),
            Memory::Host { .. } => None,
        }
    }

    /// The host stores, or an error for a pool of device tensors.
    fn host_mut(&mut self) -> Result<(&mut [Store], &mut [Store])> {
        match &mut self.memory {
            Memory::Host { keys, values } => Ok((keys, values)),
            Memory::Tensors(_) => Err(on_device_error()),
        }
    }

    /// Checks that the block table `blocks` covers positions `0..end` with blocks of this pool.
    pub fn check_table(&self, blocks: &[u32], end: usize) -> Result<()> {
        if self.geometry.blocks_for(end) > blocks.len()
            || blocks.iter().any(|&b| b as usize >= self.num_blocks)
        {
            return Err(candle_core::Error::Msg(format!(
                "{end} positions in blocks {blocks:?} do not fit a pool of {} blocks",
                self.num_blocks
            ))
            .into());
        }
        Ok(())
    }

    /// Has the blocks after the first `in_use` (those the allocator hands out next, fresh
    /// blocks going in ascending order) faulted in ahead of use, 256 MiB's worth, where
    /// a warmer runs.
    pub fn warm_ahead(&self, in_use: usize) {
        if let Some(warmer) = &self.warmer {
            let ahead = (AHEAD_BYTES / self.geometry.bytes_per_block().max(1)).max(4);
            warmer.warm_through((in_use + ahead).min(self.num_blocks));
        }
    }

    /// The shape of the memory.
    pub fn geometry(&self) -> KvGeometry {
        self.geometry
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Writes keys and values `[n, kv_heads, head_dim]` (row-major slices) of positions
    /// `position..position + n` of the sequence with block table `blocks` into layer `layer`.
    pub fn write(
        &mut self,
        layer: usize,
        blocks: &[u32],
        position: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<()> {
        let g = self.geometry;
        let row = g.kv_heads * g.head_dim;
        let n = k.len() / row.max(1);
        if k.len() != n * row || v.len() != k.len() {
            return Err(candle_core::Error::Msg(format!(
                "kv write of {} key and {} value numbers in rows of {row}",
                k.len(),
                v.len()
            ))
            .into());
        }
        self.check_table(blocks, position + n)?;
        let (keys, values) = self.host_mut()?;
        for i in 0..n {
            let p = position + i;
            let block = blocks[p / g.block_size];
            for h in 0..g.kv_heads {
                let dst = g.offset(block, h, p % g.block_size);
                let src = i * row + h * g.head_dim;
                keys[layer].set(dst, &k[src..src + g.head_dim]);
                values[layer].set(dst, &v[src..src + g.head_dim]);
            }
        }
        Ok(())
    }

    /// Keys and values `[1, kv_heads, len, head_dim]` of the first `len` positions of a sequence,
    /// copied out of its blocks (a reference for the attention kernels' tests).
    pub fn gather(
        &self,
        layer: usize,
        blocks: &[u32],
        len: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let g = self.geometry;
        let stores = self.layer(layer)?;
        let mut k = Vec::with_capacity(g.kv_heads * len * g.head_dim);
        let mut v = Vec::with_capacity(k.capacity());
        for h in 0..g.kv_heads {
            stores.read_head(g, blocks, len, h, &mut k, &mut v);
        }
        let shape = (1, g.kv_heads, len, g.head_dim);
        Ok((Tensor::from_vec(k, shape, device)?, Tensor::from_vec(v, shape, device)?))
    }

    /// Key and value stores of one layer in host memory (an error for a pool of device tensors,
    /// which the CPU's kernels cannot read).
    pub fn layer(&self, layer: usize) -> Result<KvLayer<'_>> {
        match &self.memory {
            Memory::Host { keys, values } => Ok(match (&keys[layer], &values[layer]) {
                (Store::F32(keys), Store::F32(values)) => KvLayer::F32 { keys, values },
                (Store::F16(keys), Store::F16(values)) => KvLayer::F16 { keys, values },
                _ => unreachable!("a pool's stores share one type"),
            }),
            Memory::Tensors(_) => Err(on_device_error()),
        }
    }

    /// Copies block `src` into block `dst` in every layer (copy-on-write of a shared block).
    pub fn copy_block(&mut self, src: u32, dst: u32) -> Result<()> {
        let block_size = self.geometry.block_size;
        let n = self.geometry.block_elems();
        let (s, d) = (src as usize * n, dst as usize * n);
        match &mut self.memory {
            Memory::Host { keys, values } => {
                for store in keys.iter_mut().chain(values.iter_mut()) {
                    store.copy_within(s..s + n, d);
                }
                Ok(())
            }
            Memory::Tensors(t) => t.copy_block(block_size, src, dst),
        }
    }

    /// Grows the pool to at least `num_blocks` blocks, keeping the contents.
    fn grow(&mut self, num_blocks: usize) -> Result<()> {
        if num_blocks <= self.num_blocks {
            return Ok(());
        }
        let elems = num_blocks * self.geometry.block_elems();
        // Resizing moves the stores under the warmer.
        self.warmer = None;
        match &mut self.memory {
            Memory::Host { keys, values } => {
                for store in keys.iter_mut().chain(values.iter_mut()) {
                    store.resize(elems);
                }
            }
            Memory::Tensors(t) => t.grow(self.geometry.block_size, num_blocks)?,
        }
        self.num_blocks = num_blocks;
        Ok(())
    }
}

fn on_device_error() -> crate::Error {
    candle_core::Error::Msg("the KV pool is on a device; the CPU's attention kernels cannot read it".into())
        .into()
}

/// The KV cache of one sequence on a private pool whose blocks are `0, 1, 2, …` in order.
///
/// Not `Clone`: a copy would duplicate the whole pool; fork sequences in the engine instead.
#[derive(Debug)]
pub struct KvCache {
    pool: KvPool,
    /// Where the pool's memory is made when the first positions arrive.
    device: Device,
    blocks: Vec<u32>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new(geometry: KvGeometry) -> Self {
        Self { pool: KvPool::new(geometry, 0), device: Device::Cpu, blocks: Vec::new(), len: 0 }
    }

    /// An empty cache whose pool suits a model on `device` ([`KvPool::for_device`]).
    pub fn for_device(geometry: KvGeometry, device: &Device) -> Self {
        Self { device: device.clone(), ..Self::new(geometry) }
    }

    /// Number of cached positions (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the pool (capacity, not length).
    pub fn allocated_bytes(&self) -> usize {
        self.pool.num_blocks * self.pool.geometry.bytes_per_block()
    }

    /// Makes room for `n` more positions and returns the block table and the pool to write
    /// them through; call [`KvCache::advance`] once they are written.
    pub(crate) fn reserve(&mut self, n: usize) -> Result<(&[u32], &mut KvPool)> {
        let needed = self.pool.geometry.blocks_for(self.len + n);
        if needed > self.pool.num_blocks {
            // Grow geometrically so a long decode does not copy the pool every block.
            let blocks = needed.max(2 * self.pool.num_blocks);
            if self.pool.num_blocks == 0 {
                self.pool = KvPool::for_device(self.pool.geometry, blocks, &self.device)?;
            } else {
                self.pool.grow(blocks)?;
            }
        }
        while self.blocks.len() < needed {
            self.blocks.push(self.blocks.len() as u32);
        }
        Ok((&self.blocks, &mut self.pool))
    }

    /// Records that `n` more positions are cached.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> KvGeometry {
        KvGeometry { num_layers: 2, kv_heads: 2, head_dim: 3, block_size: 4, dtype: KvDtype::F32 }
    }

    #[test]
    fn gather_reads_back_what_write_stored_across_scattered_blocks() {
        let g = geometry();
        let mut pool = KvPool::new(g, 6);
        let blocks = [4u32, 1, 3];
        let n = 10;
        let k: Vec<f32> = (0..n * 6).map(|i| i as f32).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        // Written in two pieces, as a prefill chunk and a decode step would.
        pool.write(1, &blocks, 0, &k[..7 * 6], &v[..7 * 6]).unwrap();
        pool.write(1, &blocks, 7, &k[7 * 6..], &v[7 * 6..]).unwrap();
        let (gk, gv) = pool.gather(1, &blocks, n, &Device::Cpu).unwrap();
        let want = Tensor::from_vec(k, (n, 2, 3), &Device::Cpu).unwrap().transpose(0, 1).unwrap();
        let got = gk.squeeze(0).unwrap();
        assert_eq!(got.to_vec3::<f32>().unwrap(), want.to_vec3::<f32>().unwrap());
        assert_eq!(gv.sum_all().unwrap().to_scalar::<f32>().unwrap(), -(0..60).sum::<i32>() as f32);
        // Layer 0 was not touched.
        assert!(
            matches!(pool.layer(0).unwrap(), KvLayer::F32 { keys, .. } if keys.iter().all(|&x| x == 0.0))
        );
        // Copy-on-write copies every layer's block.
        pool.copy_block(4, 0).unwrap();
        let (ck, _) = pool.gather(1, &[0], 4, &Device::Cpu).unwrap();
        let (ok, _) = pool.gather(1, &[4], 4, &Device::Cpu).unwrap();
        assert_eq!(
            ck.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            ok.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn writes_beyond_the_block_table_are_errors() {
        let mut pool = KvPool::new(geometry(), 2);
        let row = vec![0f32; 6];
        assert!(pool.write(0, &[0], 4, &row, &row).is_err());
        assert!(pool.write(0, &[7], 0, &row, &row).is_err());
    }

    #[test]
    fn cache_grows_with_its_sequence() {
        let mut c = KvCache::new(geometry());
        assert!(c.is_empty());
        let (blocks, _) = c.reserve(9).unwrap();
        assert_eq!(blocks, &[0, 1, 2]);
        c.advance(9);
        assert_eq!(c.len(), 9);
        assert_eq!(c.allocated_bytes(), 3 * geometry().bytes_per_block());
    }
}
