//! The decoder's self-attention: the projections, then the keys and values written to the
//! paged pool and attention over it, through the CPU's kernels for a pool in host memory or in
//! device operations for a pool of device tensors.

use candle_core::{DType, Tensor};

use super::{BatchRow, DecoderLayer, Phi3Decoder};
use crate::nn::kv_cache::KvPool;
use crate::nn::kv_tensors::KvTensors;
use crate::nn::lora::AdapterSegment;
use crate::nn::paged_attention::{decode_attention, DecodeQuery, PagedLayer};
use crate::nn::prefill_attention::{prefill_attention, PrefillChunk};
use crate::nn::rotary::RopeTables;
use crate::nn::tensor_attention::TensorBatch;
use crate::Result;

impl Phi3Decoder {
    /// The layer's queries and keys (both rotated) and values, `[1, tokens, heads, head_dim]`.
    fn qkv(
        &self,
        layer: &DecoderLayer,
        x: &Tensor,
        tables: &RopeTables,
        segments: &[AdapterSegment],
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let t = x.dim(0)?;
        let (nh, nkv, hd) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim());
        let qkv = layer.qkv_proj.forward_segments(x, segments)?;
        let heads = |start: usize, n: usize| -> Result<Tensor> {
            Ok(qkv.narrow(1, start * hd, n * hd)?.reshape((1, t, n, hd))?)
        };
        Ok((tables.apply(&heads(0, nh)?)?, tables.apply(&heads(nh, nkv)?)?, heads(nh + nkv, nkv)?))
    }

    #[allow(clippy::too_many_arguments)] // one layer's inputs; a struct would only rename them
    pub(super) fn attn(
        &self,
        layer: &DecoderLayer,
        x: &Tensor,
        tables: &RopeTables,
        rows: &[BatchRow],
        segments: &[AdapterSegment],
        kv: &mut KvPool,
        index: usize,
    ) -> Result<Tensor> {
        let (nh, nkv, hd) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim());
        let t = x.dim(0)?;
        let (q, k, v) = self.qkv(layer, x, tables, segments)?;
        // The KV pool and attention are f32 whatever the model's dtype.
        let host =
            |t: Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?) };
        let (k, v) = (host(k)?, host(v)?);
        let kv_row = nkv * hd;
        let mut at = 0;
        for row in rows {
            let range = at * kv_row..(at + row.len) * kv_row;
            kv.write(index, row.blocks, row.position, &k[range.clone()], &v[range])?;
            at += row.len;
        }
        let out = self.attend(&q, rows, kv, index)?;
        let out = Tensor::from_vec(out, (t, nh * hd), x.device())?.to_dtype(x.dtype())?;
        layer.o_proj.forward_segments(&out, segments)
    }

    /// [`Phi3Decoder::attn`] over a pool of device tensors: the keys, values and attention stay
    /// on the model's device.
    pub(super) fn attn_on_device(
        &self,
        layer: &DecoderLayer,
        x: &Tensor,
        tables: &RopeTables,
        (batch, tensors): (&TensorBatch, &KvTensors),
        segments: &[AdapterSegment],
        index: usize,
    ) -> Result<Tensor> {
        let (nh, nkv, hd) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim());
        let t = x.dim(0)?;
        let (q, k, v) = self.qkv(layer, x, tables, segments)?;
        let (q, k, v) = (q.reshape((t, nh, hd))?, k.reshape((t, nkv * hd))?, v.reshape((t, nkv * hd))?);
        batch.write(tensors, index, &k, &v)?;
        let out = batch.attend(&q, tensors, index, 1.0 / (hd as f64).sqrt())?;
        layer.o_proj.forward_segments(&out.to_dtype(x.dtype())?, segments)
    }

    /// Attention output `[tokens, heads · head_dim]` (row-major) for the packed queries `q`
    /// `[1, tokens, heads, head_dim]` of `rows`, whose keys are already in `kv`.
    fn attend(&self, q: &Tensor, rows: &[BatchRow], kv: &KvPool, layer: usize) -> Result<Vec<f32>> {
        let (nh, hd) = (self.cfg.num_attention_heads, self.cfg.head_dim());
        let scale = 1.0 / (hd as f64).sqrt();
        let width = nh * hd;
        let q = &q.to_dtype(DType::F32)?;
        let q_all = q.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; q_all.len()];
        let paged = PagedLayer {
            pool: kv,
            layer,
            heads: nh,
            scale: scale as f32,
            sliding_window: self.cfg.sliding_window,
        };
        // Decode rows (one query each) go through the paged kernel together.
        let mut decode_q = Vec::new();
        let mut decode = Vec::new();
        let mut decode_at = Vec::new();
        let mut at = 0;
        for row in rows {
            if row.len == 1 {
                decode_q.extend_from_slice(&q_all[at * width..(at + 1) * width]);
                decode.push(DecodeQuery { blocks: row.blocks, len: row.position + 1 });
                decode_at.push(at);
            } else {
                let chunk = PrefillChunk { blocks: row.blocks, position: row.position, len: row.len };
                let o = prefill_attention(&q_all[at * width..(at + row.len) * width], chunk, paged)?;
                out[at * width..(at + row.len) * width].copy_from_slice(&o);
            }
            at += row.len;
        }
        if !decode.is_empty() {
            let o = decode_attention(&decode_q, &decode, paged)?;
            for (i, &at) in decode_at.iter().enumerate() {
                out[at * width..(at + 1) * width].copy_from_slice(&o[i * width..(i + 1) * width]);
            }
        }
        Ok(out)
    }
}
