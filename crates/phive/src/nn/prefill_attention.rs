//! Causal attention for a prefill chunk, over the keys of the paged KV pool.
//!
//! A chunk of `len` queries of one sequence at positions `position..position + len` attends to
//! all `position + len` keys. Gathering them into one tensor per layer allocated and copied the
//! whole sequence's K/V for every chunk (tens of MB, page faults included). Here one task per KV
//! head copies that head's keys and values into its thread's reused buffers (cache-sized), computes
//! the scores of its query heads with one product each, takes the masked softmax in place with
//! the vectorised `exp`, and writes the product with V straight into the output rows.

use rayon::prelude::*;

use super::attention::visible_keys;
use super::paged_attention::PagedLayer;
use crate::kernels::attend::attend_head;
use crate::kernels::gemm::{with_scratch, SharedOut};
use crate::Result;

/// One sequence's prefill chunk.
#[derive(Debug, Clone, Copy)]
pub struct PrefillChunk<'a> {
    /// The sequence's block table.
    pub blocks: &'a [u32],
    /// Position of the chunk's first query.
    pub position: usize,
    /// Queries in the chunk.
    pub len: usize,
}

/// Attention of the chunk's queries `q` `[len, heads, head_dim]` (row-major) over `at`, each
/// query seeing the keys up to its own position (and, with a sliding window `w`, only the last
/// `w` of them, Hugging Face's convention); returns `[len, heads, head_dim]`. Query head `h`
/// uses KV head `h / (heads / kv_heads)`.
pub fn prefill_attention(q: &[f32], chunk: PrefillChunk, at: PagedLayer) -> Result<Vec<f32>> {
    let PagedLayer { pool, layer, heads, scale, sliding_window } = at;
    let g = pool.geometry();
    let (d, len) = (g.head_dim, chunk.len);
    let keys = chunk.position + len;
    if q.len() != len * heads * d || g.kv_heads == 0 || !heads.is_multiple_of(g.kv_heads) || len == 0 {
        return Err(candle_core::Error::Msg(format!(
            "prefill attention: {} query values for {len} rows of {heads} heads x {d}",
            q.len()
        ))
        .into());
    }
    if g.blocks_for(keys) > chunk.blocks.len() {
        return Err(candle_core::Error::Msg(format!(
            "prefill attention over {keys} keys with {} blocks",
            chunk.blocks.len()
        ))
        .into());
    }
    let stores = pool.layer(layer)?;
    let group = heads / g.kv_heads;
    let width = heads * d;
    let mut out = vec![0f32; len * width];
    let out_at = SharedOut::new(&mut out);
    (0..g.kv_heads).into_par_iter().for_each(|kv_head| {
        with_scratch(|[key_buf, value_buf]| {
            key_buf.clear();
            value_buf.clear();
            stores.read_head(g, chunk.blocks, keys, kv_head, key_buf, value_buf);
            // Query `r` sits at `position + r`: it sees the keys up to there, within the window.
            let visible = |r: usize| visible_keys(chunk.position + r, sliding_window);
            for h in kv_head * group..(kv_head + 1) * group {
                // SAFETY: `q` holds `len` rows of `width` values, the head's `d` columns start at
                // `h·d`; the key and value buffers hold `keys` rows of `d`; this head's output
                // columns belong to this task alone.
                unsafe {
                    attend_head(
                        (len, keys, d),
                        (q[h * d..].as_ptr(), width),
                        (key_buf.as_ptr(), d),
                        (value_buf.as_ptr(), d),
                        scale,
                        visible,
                        (out_at.at(h * d), width),
                    )
                };
            }
        })
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::attention::{attention, AttnMask};
    use crate::nn::kv_cache::{KvDtype, KvGeometry, KvPool};
    use candle_core::{Device, Tensor};

    /// The chunk's output equals the general causal kernel over the gathered keys, with
    /// grouped-query heads, scattered blocks, a chunk that starts mid-block, a sliding window,
    /// and an f16 pool.
    #[test]
    fn matches_attention_over_the_gathered_cache() {
        let (heads, kv_heads, d, bs) = (6, 2, 8, 4);
        for dtype in [KvDtype::F32, KvDtype::F16] {
            for (position, len, window) in [(0, 7, None), (5, 6, None), (9, 5, Some(6)), (3, 1, None)] {
                let geometry = KvGeometry { num_layers: 1, kv_heads, head_dim: d, block_size: bs, dtype };
                let keys = position + len;
                let blocks: Vec<u32> =
                    (0..geometry.blocks_for(keys) as u32).rev().map(|b| b * 2 + 1).collect();
                let mut pool = KvPool::new(geometry, 2 * blocks.len() + 2);
                let kv = |seed: usize| -> Vec<f32> {
                    (0..keys * kv_heads * d)
                        .map(|i| (((i + seed) * 7919) % 1000) as f32 / 500.0 - 1.0)
                        .collect()
                };
                pool.write(0, &blocks, 0, &kv(1), &kv(2)).unwrap();
                let q: Vec<f32> =
                    (0..len * heads * d).map(|i| ((i * 104_729) % 997) as f32 / 400.0 - 1.2).collect();
                let scale = 0.3;
                let chunk = PrefillChunk { blocks: &blocks, position, len };
                let at = PagedLayer { pool: &pool, layer: 0, heads, scale, sliding_window: window };
                let got = prefill_attention(&q, chunk, at).unwrap();
                let (k, v) = pool.gather(0, &blocks, keys, &Device::Cpu).unwrap();
                let qt = Tensor::from_vec(q.clone(), (1, len, heads, d), &Device::Cpu)
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap();
                let mask = AttnMask::Causal { offset: position, sliding_window: window };
                let want = attention(&qt, &k, &v, scale as f64, mask)
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err < 1e-5, "{dtype} position {position} len {len} window {window:?}: {err}");
            }
        }
        let geometry =
            KvGeometry { num_layers: 1, kv_heads, head_dim: d, block_size: bs, dtype: KvDtype::F32 };
        let pool = KvPool::new(geometry, 2);
        let chunk = PrefillChunk { blocks: &[0, 1], position: 6, len: 4 };
        let at = PagedLayer { pool: &pool, layer: 0, heads, scale: 1.0, sliding_window: None };
        assert!(prefill_attention(&vec![0.0; 4 * heads * d], chunk, at).is_err());
    }
}
