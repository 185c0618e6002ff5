//! Decode attention straight from the paged KV pool: one query per sequence, each over its own
//! block table and length, all sequences of a batch in one parallel pass.
//!
//! Gathering a long cache into a contiguous tensor on every decode step would copy as much
//! memory as attention reads, so this kernel reads the blocks in place. It computes, per
//! sequence and query head, `softmax(q·kⱼ · scale) · vⱼ` over the keys the causal (and sliding
//! window) mask allows, with grouped-query heads mapped as Hugging Face's `repeat_kv` does.
//! The inner loops keep eight independent accumulators so the compiler vectorizes them; an
//! AVX2 build of the same code is chosen at run time where the CPU has it (the sums are formed
//! in the same order either way, so results do not depend on the CPU).

use std::ops::RangeInclusive;

use rayon::prelude::*;

use super::kv_cache::KvPool;
use crate::Result;

/// One sequence's decode query.
#[derive(Debug, Clone, Copy)]
pub struct DecodeQuery<'a> {
    /// The sequence's block table.
    pub blocks: &'a [u32],
    /// Keys to attend: positions `0..len` (the query sits at `len - 1`).
    pub len: usize,
}

/// Attention of `q` `[rows, heads, head_dim]` (row-major) for the sequences in `queries` over
/// layer `layer` of `pool`; returns `[rows, heads, head_dim]`.
pub fn decode_attention(
    q: &[f32],
    queries: &[DecodeQuery],
    pool: &KvPool,
    layer: usize,
    heads: usize,
    scale: f32,
    sliding_window: Option<usize>,
) -> Result<Vec<f32>> {
    let g = pool.geometry();
    let d = g.head_dim;
    if q.len() != queries.len() * heads * d || g.kv_heads == 0 || !heads.is_multiple_of(g.kv_heads) {
        return Err(candle_core::Error::Msg(format!(
            "decode attention: {} query values for {} rows of {heads} heads x {d}",
            q.len(),
            queries.len()
        ))
        .into());
    }
    if let Some(bad) = queries.iter().find(|s| s.len == 0 || g.blocks_for(s.len) > s.blocks.len()) {
        return Err(candle_core::Error::Msg(format!(
            "decode attention over {} keys with {} blocks",
            bad.len,
            bad.blocks.len()
        ))
        .into());
    }
    let (keys, values) = pool.layer(layer);
    let group = heads / g.kv_heads;
    let mut out = vec![0f32; q.len()];
    out.par_chunks_mut(d).enumerate().for_each_init(Vec::new, |scores, (i, o)| {
        let (row, head) = (i / heads, i % heads);
        let seq = queries[row];
        let pos = seq.len - 1;
        let first = sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let block_at = |p: usize| {
            let block = seq.blocks[p / g.block_size] as usize;
            ((block * g.kv_heads + head / group) * g.block_size + p % g.block_size) * d
        };
        let head = Head { query: &q[i * d..(i + 1) * d], keys, values, scale };
        head.attend(first..=pos, block_at, scores, o);
    });
    Ok(out)
}

/// One query head against its sequence's keys and values in the pool.
struct Head<'a> {
    query: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    scale: f32,
}

impl Head<'_> {
    /// Adds `softmax(q·kₚ · scale) · vₚ` over `positions` to `out`, with the key and value of
    /// position `p` at `at(p)` in the pool (`scores` is scratch). The AVX2 build is chosen
    /// once per head, so the short dot products and updates inline into it.
    fn attend(
        &self,
        positions: RangeInclusive<usize>,
        at: impl Fn(usize) -> usize,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe { self.attend_avx2(positions, at, scores, out) };
        }
        self.attend_lanes(positions, at, scores, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2(
        &self,
        positions: RangeInclusive<usize>,
        at: impl Fn(usize) -> usize,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        self.attend_lanes(positions, at, scores, out)
    }

    #[inline(always)]
    fn attend_lanes(
        &self,
        positions: RangeInclusive<usize>,
        at: impl Fn(usize) -> usize,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let d = self.query.len();
        scores.resize(positions.end() + 1 - positions.start(), 0.0);
        for (s, p) in scores.iter_mut().zip(positions.clone()) {
            let at = at(p);
            *s = dot_lanes(self.query, &self.keys[at..at + d]) * self.scale;
        }
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for (p, &w) in positions.zip(scores.iter()) {
            let at = at(p);
            axpy_lanes(out, w / sum, &self.values[at..at + d]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[inline(always)]
fn axpy_lanes(out: &mut [f32], w: f32, x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o += w * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::attention::{attention, AttnMask};
    use crate::nn::kv_cache::KvGeometry;
    use crate::nn::test_util::{max_abs_diff, random_tensor};
    use candle_core::{Device, Tensor};

    /// Each sequence's decode attention equals the dense attention over its gathered cache.
    #[test]
    fn matches_dense_attention_per_sequence() {
        let (heads, kv_heads, d) = (6, 2, 12);
        let g = KvGeometry { num_layers: 1, kv_heads, head_dim: d, block_size: 4 };
        let mut pool = KvPool::new(g, 16);
        let tables: [Vec<u32>; 3] = [vec![3, 9, 1], vec![0], vec![15, 2, 4, 5, 6]];
        let lens = [11usize, 1, 18];
        for (i, (blocks, &len)) in tables.iter().zip(&lens).enumerate() {
            let k = random_tensor(&format!("k{i}"), &(len, kv_heads, d).into(), 1.0).unwrap();
            let v = random_tensor(&format!("v{i}"), &(len, kv_heads, d).into(), 1.0).unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            pool.write(0, blocks, 0, &flat(&k), &flat(&v)).unwrap();
        }
        let q = random_tensor("q", &(3, heads, d).into(), 1.0).unwrap();
        let queries: Vec<DecodeQuery> =
            tables.iter().zip(&lens).map(|(b, &len)| DecodeQuery { blocks: b, len }).collect();
        let scale = 1.0 / (d as f32).sqrt();
        for window in [None, Some(5)] {
            let qv = q.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = decode_attention(&qv, &queries, &pool, 0, heads, scale, window).unwrap();
            let got = Tensor::from_vec(got, (3, heads, d), &Device::Cpu).unwrap();
            for (r, s) in queries.iter().enumerate() {
                let (k, v) = pool.gather(0, s.blocks, s.len, &Device::Cpu).unwrap();
                let qr = q.narrow(0, r, 1).unwrap().reshape((1, heads, 1, d)).unwrap();
                let mask = AttnMask::Causal { offset: s.len - 1, sliding_window: window };
                let want = attention(&qr, &k, &v, scale as f64, mask).unwrap().reshape((heads, d)).unwrap();
                let diff = max_abs_diff(&got.get(r).unwrap(), &want);
                assert!(diff < 1e-5, "row {r} window {window:?}: {diff}");
            }
        }
        assert!(decode_attention(&[0.0; 3], &queries, &pool, 0, heads, scale, None).is_err());
    }
}
