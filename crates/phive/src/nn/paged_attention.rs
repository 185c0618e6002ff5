//! Decode attention straight from the paged KV pool: one query per sequence, each over its own
//! block table and length, all sequences of a batch in one parallel pass.
//!
//! Gathering a long cache into a contiguous tensor on every decode step would copy as much
//! memory as attention reads, so this kernel reads the blocks in place. It computes, per
//! sequence and query head, `softmax(q·kⱼ · scale) · vⱼ` over the keys the causal (and sliding
//! window) mask allows, with grouped-query heads mapped as Hugging Face's `repeat_kv` does.
//! It reads each block's keys and values as contiguous runs; an AVX2 build of the arithmetic is
//! chosen at run time where the CPU has it, forming the same sums in the same order, so results
//! do not depend on the CPU.

use rayon::prelude::*;

use half::f16;

use super::attention::visible_keys;
use super::kv_cache::{KvGeometry, KvLayer, KvPool};
use crate::Result;

/// One sequence's decode query.
#[derive(Debug, Clone, Copy)]
pub struct DecodeQuery<'a> {
    /// The sequence's block table.
    pub blocks: &'a [u32],
    /// Keys to attend: positions `0..len` (the query sits at `len - 1`).
    pub len: usize,
}

/// One layer of the paged pool as attention reads it: the layer, the query heads (a multiple of
/// the pool's KV heads), the score scale and Hugging Face's sliding window.
#[derive(Debug, Clone, Copy)]
pub struct PagedLayer<'a> {
    /// The pool.
    pub pool: &'a KvPool,
    /// Which of its layers.
    pub layer: usize,
    /// Query heads.
    pub heads: usize,
    /// Factor of the scores (`1/√head_dim`).
    pub scale: f32,
    /// Keys a query sees at most (the last ones), if the model limits them.
    pub sliding_window: Option<usize>,
}

/// Attention of `q` `[rows, heads, head_dim]` (row-major) for the sequences in `queries` over
/// `at`; returns `[rows, heads, head_dim]`.
pub fn decode_attention(q: &[f32], queries: &[DecodeQuery], at: PagedLayer) -> Result<Vec<f32>> {
    let PagedLayer { pool, layer, heads, scale, sliding_window } = at;
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
    let batch = Batch { q, queries, heads, scale, sliding_window, geometry: g };
    Ok(match pool.layer(layer)? {
        KvLayer::F32 { keys, values } => batch.attend(keys, values),
        KvLayer::F16 { keys, values } => batch.attend(keys, values),
    })
}

/// The decode queries of one step and how to attend them.
struct Batch<'a> {
    q: &'a [f32],
    queries: &'a [DecodeQuery<'a>],
    heads: usize,
    scale: f32,
    sliding_window: Option<usize>,
    geometry: KvGeometry,
}

impl Batch<'_> {
    /// Attention over one layer's `keys` and `values` stores (already validated).
    fn attend<E: Stored>(&self, keys: &[E], values: &[E]) -> Vec<f32> {
        let (g, q, scale) = (self.geometry, self.q, self.scale);
        let d = g.head_dim;
        let group = self.heads / g.kv_heads;
        let span = kv_heads_per_task(g.kv_heads, self.queries.len());
        let tasks_per_row = g.kv_heads / span;
        let head_stride = g.block_size * d;
        let mut out = vec![0f32; q.len()];
        let task_len = span * group * d;
        out.par_chunks_mut(task_len).enumerate().for_each_init(
            Scratch::default,
            |(runs, weights), (i, out)| {
                let (row, first_kv_head) = (i / tasks_per_row, (i % tasks_per_row) * span);
                let seq = self.queries[row];
                let pos = seq.len - 1;
                let first = visible_keys(pos, self.sliding_window).start;
                runs.clear();
                runs.extend((first / g.block_size..=pos / g.block_size).map(|b| {
                    let start = (b * g.block_size).max(first);
                    let end = ((b + 1) * g.block_size).min(pos + 1);
                    let offset = g.offset(seq.blocks[b], first_kv_head, start - b * g.block_size);
                    Run { offset, count: end - start }
                }));
                let queries = &q[i * task_len..(i + 1) * task_len];
                let task = Task { queries, keys, values, scale, kv_heads: span, head_dim: d, head_stride };
                task.attend(runs, pos + 1 - first, weights, out);
            },
        );
        out
    }
}

/// How many consecutive KV heads one parallel task takes: as many as still leave one task per
/// thread, because a block stores its heads one after another, so a task's reads are runs
/// of `span` heads' keys, long enough for the hardware prefetcher.
fn kv_heads_per_task(kv_heads: usize, rows: usize) -> usize {
    let tasks_per_row = rayon::current_num_threads().div_ceil(rows);
    (1..=kv_heads).rev().find(|&s| kv_heads.is_multiple_of(s) && kv_heads / s >= tasks_per_row).unwrap_or(1)
}

/// Per-thread scratch: the runs of one task and its weights.
type Scratch = (Vec<Run>, Vec<f32>);

/// Positions of one block that attention reads: `count` consecutive slots whose keys (and
/// values) of the task's first KV head start at `offset` in the layer's store, `head_dim`
/// floats apart; the next KV head's follow `head_stride` floats further.
#[derive(Debug, Clone, Copy)]
struct Run {
    offset: usize,
    count: usize,
}

/// Consecutive KV heads of one sequence, with the query heads that share them.
struct Task<'a, E> {
    /// The query heads' queries, `[kv_heads · group][head_dim]`.
    queries: &'a [f32],
    keys: &'a [E],
    values: &'a [E],
    scale: f32,
    kv_heads: usize,
    head_dim: usize,
    head_stride: usize,
}

impl<E: Stored> Task<'_, E> {
    /// Writes `softmax(q·kₚ · scale) · vₚ` of every query head over the `positions` positions
    /// of `runs` (in position order) to `out` (`weights` is scratch). Every dot product and
    /// every output element is one chain of fused multiply-adds over 8 lanes (see [`dot`] and
    /// [`accumulate`]); the AVX2 build forms the same chains, so results do not depend on the
    /// CPU, nor on how heads are split into tasks.
    fn attend(&self, runs: &[Run], positions: usize, weights: &mut Vec<f32>, out: &mut [f32]) {
        let d = self.head_dim;
        let query_heads = self.queries.len() / d;
        let group = query_heads / self.kv_heads;
        weights.clear();
        weights.resize(query_heads * positions, 0.0);
        // Query head `h`'s weights of the `n` positions from position index `at` on.
        let of = |h: usize, at: usize, n: usize| h * positions + at..h * positions + at + n;
        let mut at = 0;
        for run in runs {
            for kv in 0..self.kv_heads {
                let keys = self.rows(self.keys, run, kv);
                for h in kv * group..(kv + 1) * group {
                    let w = &mut weights[of(h, at, run.count)];
                    scores(&self.queries[h * d..(h + 1) * d], keys, self.scale, w);
                }
            }
            at += run.count;
        }
        for w in weights.chunks_exact_mut(positions) {
            let max = w.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut sum = 0f32;
            for x in w.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            for x in w.iter_mut() {
                *x /= sum;
            }
        }
        out.fill(0.0);
        let mut at = 0;
        for run in runs {
            for kv in 0..self.kv_heads {
                let values = self.rows(self.values, run, kv);
                for h in kv * group..(kv + 1) * group {
                    let w = &weights[of(h, at, run.count)];
                    accumulate(&mut out[h * d..(h + 1) * d], w, values);
                }
            }
            at += run.count;
        }
    }

    /// The keys (or values) of KV head `kv` of the task in `run`.
    fn rows<'a>(&self, store: &'a [E], run: &Run, kv: usize) -> &'a [E] {
        let start = run.offset + kv * self.head_stride;
        &store[start..start + run.count * self.head_dim]
    }
}

/// `q·kᵢ · scale` for each key `kᵢ` of `keys` (`head_dim`-long rows), into `scores`.
fn scores<E: Stored>(q: &[f32], keys: &[E], scale: f32, scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if q.len().is_multiple_of(8) && avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time); rows are whole lanes.
        return unsafe { x86::scores(q, keys, scale, scores) };
    }
    scores_portable(q, keys, scale, scores)
}

fn scores_portable<E: Stored>(q: &[f32], keys: &[E], scale: f32, scores: &mut [f32]) {
    for (s, k) in scores.iter_mut().zip(keys.chunks_exact(q.len())) {
        *s = dot(q, k) * scale;
    }
}

/// `out += Σᵢ wᵢ · vᵢ` over the rows `vᵢ` of `values`, in row order.
fn accumulate<E: Stored>(out: &mut [f32], weights: &[f32], values: &[E]) {
    #[cfg(target_arch = "x86_64")]
    if out.len().is_multiple_of(8) && avx2() {
        // SAFETY: as in `scores`.
        return unsafe { x86::accumulate(out, weights, values) };
    }
    accumulate_portable(out, weights, values)
}

fn accumulate_portable<E: Stored>(out: &mut [f32], weights: &[f32], values: &[E]) {
    for (&w, v) in weights.iter().zip(values.chunks_exact(out.len())) {
        for (o, &x) in out.iter_mut().zip(v) {
            *o = w.mul_add(x.widen(), *o);
        }
    }
}

/// `q·k` as 8 lanes of fused multiply-add chains, summed as an AVX register would be
/// (high half onto low, then pairs); a tail shorter than a lane is added last.
fn dot<E: Stored>(q: &[f32], k: &[E]) -> f32 {
    let mut lanes = [0f32; 8];
    let (qc, kc) = (q.chunks_exact(8), k.chunks_exact(8));
    let tail: f32 = qc.remainder().iter().zip(kc.remainder()).map(|(x, y)| x * y.widen()).sum();
    for (x, y) in qc.zip(kc) {
        for l in 0..8 {
            lanes[l] = x[l].mul_add(y[l].widen(), lanes[l]);
        }
    }
    let half = [lanes[0] + lanes[4], lanes[1] + lanes[5], lanes[2] + lanes[6], lanes[3] + lanes[7]];
    ((half[0] + half[2]) + (half[1] + half[3])) + tail
}

/// A number type the pool stores, widened exactly to f32 for the arithmetic.
trait Stored: Copy + Send + Sync {
    /// Whether this is `f16` (else `f32`): the AVX2 code picks its load by this constant.
    const HALF: bool;

    fn widen(self) -> f32;
}

impl Stored for f32 {
    const HALF: bool = false;

    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Stored for f16 {
    const HALF: bool = true;

    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// AVX2 builds of [`scores`] and [`accumulate`] for rows that are whole 8-float lanes: four
/// keys at a time (four independent chains), and the output of up to 64 floats held in
/// registers over a run of values.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Stored;

    /// Eight consecutive stored numbers from `p`, widened to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<E: Stored>(p: *const E) -> __m256 {
        if E::HALF {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        } else {
            _mm256_loadu_ps(p.cast())
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores<E: Stored>(q: &[f32], keys: &[E], scale: f32, out: &mut [f32]) {
        let d = q.len();
        let rows = keys.len() / d;
        let (q, k) = (q.as_ptr(), keys.as_ptr());
        let mut r = 0;
        while r + 4 <= rows {
            let mut acc = [_mm256_setzero_ps(); 4];
            for c in (0..d).step_by(8) {
                let qv = _mm256_loadu_ps(q.add(c));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qv, load8(k.add((r + j) * d + c)), *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                out[r + j] = sum(*a) * scale;
            }
            r += 4;
        }
        for (r, score) in out.iter_mut().enumerate().take(rows).skip(r) {
            let mut acc = _mm256_setzero_ps();
            for c in (0..d).step_by(8) {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(c)), load8(k.add(r * d + c)), acc);
            }
            *score = sum(acc) * scale;
        }
    }

    /// The lanes of `a` summed in [`super::dot`]'s order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sum(a: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn accumulate<E: Stored>(out: &mut [f32], weights: &[f32], values: &[E]) {
        let d = out.len();
        let mut c = 0;
        while c < d {
            let (o, v) = (out.as_mut_ptr().add(c), values.as_ptr().add(c));
            match ((d - c) / 8).min(8) {
                8 => columns::<8, E>(o, weights, v, d),
                7 => columns::<7, E>(o, weights, v, d),
                6 => columns::<6, E>(o, weights, v, d),
                5 => columns::<5, E>(o, weights, v, d),
                4 => columns::<4, E>(o, weights, v, d),
                3 => columns::<3, E>(o, weights, v, d),
                2 => columns::<2, E>(o, weights, v, d),
                _ => columns::<1, E>(o, weights, v, d),
            }
            c += 64;
        }
    }

    /// `N` lanes of the output, starting at `out`, over every weighted row of `values`
    /// (rows `stride` floats apart).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn columns<const N: usize, E: Stored>(
        out: *mut f32,
        weights: &[f32],
        values: *const E,
        stride: usize,
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm256_loadu_ps(out.add(8 * j));
        }
        for (i, &w) in weights.iter().enumerate() {
            let (w, row) = (_mm256_set1_ps(w), values.add(i * stride));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(w, load8(row.add(8 * j)), *a);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(8 * j), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::attention::{attention, AttnMask};
    use crate::nn::kv_cache::{KvDtype, KvGeometry};
    use crate::nn::test_util::{max_abs_diff, random_tensor};
    use candle_core::{Device, Tensor};

    /// Each sequence's decode attention equals the dense attention over its gathered cache.
    #[test]
    fn matches_dense_attention_per_sequence() {
        let (heads, kv_heads, d) = (6, 2, 12);
        let g = KvGeometry { num_layers: 1, kv_heads, head_dim: d, block_size: 4, dtype: KvDtype::F32 };
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
            let got = decode_attention(
                &qv,
                &queries,
                PagedLayer { pool: &pool, layer: 0, heads, scale, sliding_window: window },
            )
            .unwrap();
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
        assert!(decode_attention(
            &[0.0; 3],
            &queries,
            PagedLayer { pool: &pool, layer: 0, heads, scale, sliding_window: None }
        )
        .is_err());
    }

    /// The AVX2 builds form exactly the portable sums, so answers do not depend on the CPU.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_arithmetic_is_bitwise_the_portable_arithmetic() {
        if !avx2() {
            return;
        }
        let values =
            |name: &str, n: usize| random_tensor(name, &(n,).into(), 1.0).unwrap().to_vec1::<f32>().unwrap();
        fn same<E: Stored>(q: &[f32], k: &[E], w: &[f32], what: &str) {
            let (mut fast, mut slow) = (vec![0f32; w.len()], vec![0f32; w.len()]);
            unsafe { x86::scores(q, k, 0.3, &mut fast) };
            scores_portable(q, k, 0.3, &mut slow);
            assert_eq!(fast, slow, "scores, {what}");
            let (mut fast, mut slow) = (q.to_vec(), q.to_vec());
            unsafe { x86::accumulate(&mut fast, w, k) };
            accumulate_portable(&mut slow, w, k);
            assert_eq!(fast, slow, "weighted values, {what}");
        }
        for (d, keys) in [(96, 37), (128, 5), (8, 3)] {
            let (q, k, w) = (values("q", d), values("k", d * keys), values("w", keys));
            same(&q, &k, &w, &format!("f32, head_dim {d}"));
            let k16: Vec<f16> = k.iter().map(|&x| f16::from_f32(x)).collect();
            same(&q, &k16, &w, &format!("f16, head_dim {d}"));
        }
    }

    /// An f16 pool attends exactly as an f32 pool holding the same numbers rounded to f16:
    /// only the storage changes, not the arithmetic.
    #[test]
    fn f16_pool_is_the_f32_arithmetic_on_rounded_keys_and_values() {
        let (heads, kv_heads, d) = (8, 4, 16);
        let g = KvGeometry { num_layers: 1, kv_heads, head_dim: d, block_size: 4, dtype: KvDtype::F32 };
        let (mut exact, mut half) = (KvPool::new(g, 8), KvPool::new(g.with_dtype(KvDtype::F16), 8));
        let blocks = [5u32, 2, 7, 0];
        let len = 14;
        let flat = |name: &str| {
            random_tensor(name, &(len * kv_heads * d,).into(), 3.0).unwrap().to_vec1::<f32>().unwrap()
        };
        let (k, v) = (flat("k"), flat("v"));
        let round = |x: &[f32]| x.iter().map(|&x| f16::from_f32(x).to_f32()).collect::<Vec<_>>();
        exact.write(0, &blocks, 0, &round(&k), &round(&v)).unwrap();
        half.write(0, &blocks, 0, &k, &v).unwrap();
        let q = random_tensor("q", &(heads * d,).into(), 1.0).unwrap().to_vec1::<f32>().unwrap();
        let queries = [DecodeQuery { blocks: &blocks, len }];
        for window in [None, Some(6)] {
            let want = decode_attention(
                &q,
                &queries,
                PagedLayer { pool: &exact, layer: 0, heads, scale: 0.25, sliding_window: window },
            )
            .unwrap();
            let got = decode_attention(
                &q,
                &queries,
                PagedLayer { pool: &half, layer: 0, heads, scale: 0.25, sliding_window: window },
            )
            .unwrap();
            assert_eq!(got, want, "window {window:?}");
        }
        let (gk, _) = half.gather(0, &blocks, len, &Device::Cpu).unwrap();
        let (wk, _) = exact.gather(0, &blocks, len, &Device::Cpu).unwrap();
        assert_eq!(max_abs_diff(&gk, &wk), 0.0);
        assert_eq!(half.geometry().bytes_per_block() * 2, exact.geometry().bytes_per_block());
    }
}
