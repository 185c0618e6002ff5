//! Attention over a KV pool of device tensors ([`KvTensors`]), in device operations only: the
//! GPU's counterpart of the CPU's paged kernels ([`super::paged_attention`],
//! [`super::prefill_attention`]).
//!
//! Everything a step needs besides the numbers (which pool rows each token writes, which rows
//! each sequence reads, the decode rows' padding mask) depends only on the batch's block
//! tables, so [`TensorBatch::new`] uploads it once per forward pass and every layer reuses it.
//! Decode rows attend together: their keys are gathered into one `[rows, kv_heads, longest,
//! head_dim]` batch, the shorter rows' padding masked out, so a step costs a fixed number of
//! device operations per layer whatever the number of sequences. On CUDA the decode rows skip
//! the gathered copy instead: one fused kernel per layer reads the pool in place (see
//! `nn::cuda_attention`), chosen when the batch is built. Prefill chunks attend one by one over
//! their sequence's gathered keys with the causal mask.

use candle_core::{DType, Device, Tensor};

use super::attention::{attention, visible_keys, AttnMask};
use super::kv_cache::KvGeometry;
use super::kv_tensors::{slot, slot_index, KvTensors};
use crate::Result;

/// One sequence's part of a batch: its block table, the position of its first new token and
/// the number of new tokens (1 for a decode step).
#[derive(Debug, Clone, Copy)]
pub struct RowSpan<'a> {
    /// The sequence's KV blocks, covering positions `0..position + len`.
    pub blocks: &'a [u32],
    /// Position of the first new token.
    pub position: usize,
    /// New tokens in the batch.
    pub len: usize,
}

/// A batch's indices on the device (see the module docs).
#[derive(Debug)]
pub struct TensorBatch {
    /// The scatter index of the batch's new keys ([`slot_index`]).
    write_index: Tensor,
    /// How each row attends, in row order.
    rows: Vec<RowAttention>,
    /// The decode rows together, when there are any.
    decode: Option<DecodeRows>,
    geometry: KvGeometry,
    sliding_window: Option<usize>,
}

#[derive(Debug)]
enum RowAttention {
    /// A prefill chunk: its query rows start at token `at`; it reads pool rows `slots`.
    Chunk { at: usize, len: usize, position: usize, slots: Tensor },
    /// Row `index` of the decode batch.
    Decode { index: usize },
}

/// The decode rows of a batch: their query tokens, pool rows `[rows · longest]` (padding reads
/// row 0) and how they attend.
#[derive(Debug)]
struct DecodeRows {
    tokens: Tensor,
    slots: Tensor,
    kernel: DecodeKernel,
}

/// How a batch's decode rows attend, chosen once per batch.
#[derive(Debug)]
enum DecodeKernel {
    /// Over their gathered keys, padded to the longest row, with this additive mask `[rows, 1,
    /// 1, longest]` in the queries' dtype (0, or −∞ past a row's keys and outside its window).
    Masked(Tensor),
    /// In the fused CUDA kernel, which reads the pool in place: each row's visible positions
    /// `[rows, 2]` (the first, and one past the last).
    #[cfg(feature = "cuda")]
    Fused(Tensor),
}

impl TensorBatch {
    /// The indices of `rows` (packed in this order along the token axis) for a pool of shape
    /// `geometry` on `device`, for queries in `dtype`.
    pub fn new(
        geometry: KvGeometry,
        rows: &[RowSpan],
        sliding_window: Option<usize>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let width = geometry.kv_heads * geometry.head_dim;
        let mut write_slots = Vec::new();
        let mut attention = Vec::with_capacity(rows.len());
        let (mut decode_tokens, mut decode_spans) = (Vec::new(), Vec::new());
        let mut at = 0;
        for row in rows {
            let end = row.position + row.len;
            write_slots.extend((row.position..end).map(|p| slot(geometry, row.blocks, p)));
            if row.len == 1 {
                attention.push(RowAttention::Decode { index: decode_spans.len() });
                decode_tokens.push(at as u32);
                decode_spans.push(*row);
            } else {
                let slots: Vec<u32> = (0..end).map(|p| slot(geometry, row.blocks, p)).collect();
                let slots = Tensor::from_vec(slots, end, device)?;
                attention.push(RowAttention::Chunk { at, len: row.len, position: row.position, slots });
            }
            at += row.len;
        }
        let decode = if decode_spans.is_empty() {
            None
        } else {
            Some(DecodeRows::new(geometry, &decode_spans, decode_tokens, sliding_window, device, dtype)?)
        };
        Ok(Self {
            write_index: slot_index(&write_slots, width, device)?,
            rows: attention,
            decode,
            geometry,
            sliding_window,
        })
    }

    /// Stores layer `layer`'s new keys and values `[tokens, kv_heads · head_dim]` in `kv`.
    pub fn write(&self, kv: &KvTensors, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        kv.write(layer, &self.write_index, k, v)
    }

    /// Attention output `[tokens, heads · head_dim]` of the queries `q` `[tokens, heads,
    /// head_dim]` over layer `layer` of `kv`, in `q`'s dtype.
    pub fn attend(&self, q: &Tensor, kv: &KvTensors, layer: usize, scale: f64) -> Result<Tensor> {
        let (_, heads, d) = q.dims3()?;
        let kv_heads = self.geometry.kv_heads;
        // `[n, kv_heads · d]` rows of the pool as `[batch, kv_heads, n / batch, d]`.
        let split = |t: Tensor, batch: usize| -> Result<Tensor> {
            let n = t.dim(0)? / batch;
            Ok(t.reshape((batch, n, kv_heads, d))?.transpose(1, 2)?.contiguous()?)
        };
        let decoded = match &self.decode {
            #[cfg(feature = "cuda")]
            Some(DecodeRows { tokens, slots, kernel: DecodeKernel::Fused(spans) }) => {
                Some(super::cuda_attention::paged_decode(
                    &q.index_select(tokens, 0)?,
                    kv.layer(layer),
                    (slots, spans),
                    kv_heads,
                    scale as f32,
                )?)
            }
            Some(DecodeRows { tokens, slots, kernel: DecodeKernel::Masked(mask) }) => {
                let b = mask.dim(0)?;
                let (k, v) = kv.gather(layer, slots, q.dtype())?;
                let (k, v) = (split(k, b)?, split(v, b)?);
                let q = (q.index_select(tokens, 0)? * scale)?.reshape((b, kv_heads, heads / kv_heads, d))?;
                let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                Some(probs.matmul(&v)?.reshape((b, heads * d))?)
            }
            None => None,
        };
        let mut outs = Vec::with_capacity(self.rows.len());
        for row in &self.rows {
            outs.push(match row {
                RowAttention::Decode { index } => match &decoded {
                    Some(all) => all.narrow(0, *index, 1)?,
                    None => return Err(crate::Error::Internal("a decode row without a decode batch".into())),
                },
                RowAttention::Chunk { at, len, position, slots } => {
                    let (k, v) = kv.gather(layer, slots, q.dtype())?;
                    let qr = q.narrow(0, *at, *len)?.unsqueeze(0)?.transpose(1, 2)?;
                    let mask = AttnMask::Causal { offset: *position, sliding_window: self.sliding_window };
                    let o = attention(&qr, &split(k, 1)?, &split(v, 1)?, scale, mask)?;
                    o.squeeze(0)?.transpose(0, 1)?.reshape((*len, heads * d))?
                }
            });
        }
        Ok(Tensor::cat(&outs, 0)?)
    }
}

impl DecodeRows {
    fn new(
        geometry: KvGeometry,
        spans: &[RowSpan],
        tokens: Vec<u32>,
        sliding_window: Option<usize>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let longest = spans.iter().map(|r| r.position + 1).max().unwrap_or(1);
        let b = spans.len();
        let slots: Vec<u32> = spans
            .iter()
            .flat_map(|row| {
                (0..longest).map(|j| if j <= row.position { slot(geometry, row.blocks, j) } else { 0 })
            })
            .collect();
        let visible: Vec<_> = spans.iter().map(|row| visible_keys(row.position, sliding_window)).collect();
        let (tokens, slots) =
            (Tensor::from_vec(tokens, b, device)?, Tensor::from_vec(slots, b * longest, device)?);
        #[cfg(feature = "cuda")]
        if device.is_cuda()
            && geometry.head_dim <= super::cuda_attention::MAX_HEAD_DIM
            && super::cuda_attention::available()
        {
            let ends: Vec<u32> = visible.iter().flat_map(|v| [v.start as u32, v.end as u32]).collect();
            return Ok(Self {
                tokens,
                slots,
                kernel: DecodeKernel::Fused(Tensor::from_vec(ends, (b, 2), device)?),
            });
        }
        let mask: Vec<f32> = visible
            .iter()
            .flat_map(|v| (0..longest).map(|j| if v.contains(&j) { 0f32 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (b, 1, 1, longest), device)?.to_dtype(dtype)?;
        Ok(Self { tokens, slots, kernel: DecodeKernel::Masked(mask) })
    }
}
