//! f32 activations times bf16 weights on AMX tiles, to f32 accuracy: the vision towers'
//! products on Xeons that have AMX-BF16.
//!
//! A tile multiply takes bf16 operands. The weights are bf16 already; each activation `a` is
//! split into three bf16 parts, `a = hi + mid + lo` exactly (each part the top 8 significant
//! bits of what the previous ones left), so `a·w = hi·w + mid·w + lo·w`. Every product of two
//! bf16 values is exact in f32 and the tiles sum in f32, so the result is an f32 matrix product
//! that differs from any other only in the order of its sums. Even at three tile multiplies
//! per product, a thread does about 1.6× what its AVX-512 FMAs do in the f32 GEMM (Xeon,
//! BENCHMARKS.md).
//!
//! The weight is laid out as B tiles once per call ([`pack_weights`]). Each rayon task then
//! takes a run of activation rows: it splits them into their parts, laid out as A tiles in
//! blocks of 32 rows × [`KC`] inputs (24 KB, which stays in L1 while it meets every weight
//! panel of a column chunk), and sums each 32 × 32 output block in tiles across a block of
//! inputs at a time. The output block stays in L1 between input blocks, a column chunk of
//! the laid-out weight (1 MB at most) in L2.

use rayon::prelude::*;

use super::amx::{tile_dot_bf16, tile_load, tile_store, tile_zero, TileConfig};
use super::gemm::SharedOut;

/// Inputs per block of the activations' tiles: a multiple of 32 (one tile step).
const KC: usize = 128;
/// Activation rows per block and weight rows per panel: two tiles of 16.
const MB: usize = 32;
const NB: usize = 32;
/// Output columns per chunk: the laid-out weight rows one row block meets in turn.
const COL_CHUNK: usize = 128;
/// Most activation rows per rayon task.
const MAX_TASK_ROWS: usize = 256;
/// bf16 values per tile (16 rows of 64 bytes).
const TILE_VALUES: usize = 512;

/// `xs` `[m, k]` f32 times `w` `[n, k]` (bf16 bits) transposed: `[m, n]` f32, row-major.
///
/// # Safety
/// [`super::amx::usable_bf16`] returned true and the CPU has AVX-512 F and BW (both hold at
/// the `amx` SIMD level). The slices hold `m · k` and `n · k` values.
pub(super) unsafe fn matmul(xs: &[f32], w: &[u16], m: usize, n: usize, k: usize) -> Vec<f32> {
    debug_assert!(xs.len() == m * k && w.len() == n * k);
    let (m_pad, n_pad, k_pad) = (m.next_multiple_of(MB), n.next_multiple_of(NB), k.next_multiple_of(32));
    let shape = Shape { m, k, n_pad, k_pad };
    let mut weights = vec![0u16; n_pad * k_pad];
    pack_weights(w, (n, k), k_pad, &mut weights);
    let mut out = Vec::with_capacity(m_pad * n_pad);
    let shared = SharedOut::spare(&mut out);
    // Enough tasks for every thread to take several, each a whole number of row blocks.
    let task_rows =
        (m_pad / (4 * rayon::current_num_threads())).next_multiple_of(MB).clamp(MB, MAX_TASK_ROWS);
    (0..m_pad.div_ceil(task_rows)).into_par_iter().for_each(|task| {
        let rows = task * task_rows..((task + 1) * task_rows).min(m_pad);
        with_parts(|parts| {
            split_rows(xs, shape, rows.clone(), parts);
            // SAFETY: the caller's AMX check; the layouts are `split_rows`' and
            // `pack_weights`'; this task writes only its own output rows.
            unsafe { multiply_rows(parts, &weights, shape, rows, shared) };
        })
    });
    // SAFETY: every task stored all of its row blocks' panels after their last input block.
    unsafe { out.set_len(m_pad * n_pad) };
    if m_pad == m && n_pad == n {
        return out;
    }
    let mut trimmed = Vec::with_capacity(m * n);
    for row in out.chunks_exact(n_pad).take(m) {
        trimmed.extend_from_slice(&row[..n]);
    }
    trimmed
}

/// The product's sizes: rows and inputs of the activations, and the padded widths.
#[derive(Clone, Copy)]
struct Shape {
    m: usize,
    k: usize,
    n_pad: usize,
    k_pad: usize,
}

/// `f` with this thread's reused buffer for a task's activation parts.
fn with_parts<R>(f: impl FnOnce(&mut Vec<u16>) -> R) -> R {
    thread_local! {
        static PARTS: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    PARTS.with(|p| f(&mut p.borrow_mut()))
}

/// The input blocks of a padded row of `k_pad` values: `(first input, width)`.
fn input_blocks(k_pad: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..k_pad).step_by(KC).map(move |k0| (k0, KC.min(k_pad - k0)))
}

/// The three bf16 parts of `a`, largest first, whose sum is `a` exactly (for finite values
/// above f32's subnormals, which AMX reads as zero anyway).
#[inline(always)]
fn split(a: f32) -> [u16; 3] {
    let high = a.to_bits() & 0xFFFF_0000;
    let rest = a - f32::from_bits(high);
    let mid = rest.to_bits() & 0xFFFF_0000;
    let low = (rest - f32::from_bits(mid)).to_bits();
    [(high >> 16) as u16, (mid >> 16) as u16, (low >> 16) as u16]
}

/// Lays out the parts of activation rows `rows` (whole row blocks) as A tiles: for each block
/// of 32 rows and each input block `(k0, kc)`, the high, middle and low parts, each as the
/// tiles of its first 16 rows (one per step of 32 inputs) then those of the next 16, every
/// tile 1 KB in one piece. Zero past `k` and for the padding rows past `m`.
fn split_rows(xs: &[f32], shape: Shape, rows: std::ops::Range<usize>, parts: &mut Vec<u16>) {
    let Shape { m, k, k_pad, .. } = shape;
    parts.clear();
    parts.resize(rows.len() * k_pad * 3, 0);
    for (block, r0) in rows.step_by(MB).enumerate() {
        let block_parts = &mut parts[block * MB * k_pad * 3..(block + 1) * MB * k_pad * 3];
        for (k0, kc) in input_blocks(k_pad) {
            let (high, rest) = block_parts[3 * MB * k0..3 * MB * (k0 + kc)].split_at_mut(MB * kc);
            let (mid, low) = rest.split_at_mut(MB * kc);
            let steps = kc / 32;
            for i in 0..MB.min(m.saturating_sub(r0)) {
                let row = (r0 + i) * k;
                let values = &xs[row + k0.min(k)..row + (k0 + kc).min(k)];
                for (step, values) in values.chunks(32).enumerate() {
                    let at = ((i / 16) * steps + step) * TILE_VALUES + (i % 16) * 32;
                    let at = at..at + values.len();
                    // SAFETY: `matmul`'s contract: the CPU has AVX-512 F and BW.
                    unsafe {
                        split_values(values, &mut high[at.clone()], &mut mid[at.clone()], &mut low[at])
                    };
                }
            }
        }
    }
}

/// [`split`] over `values`, into the parts' rows, compiled for AVX-512 so that it vectorises.
///
/// # Safety
/// The CPU has AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn split_values(values: &[f32], high: &mut [u16], mid: &mut [u16], low: &mut [u16]) {
    for (((&a, h), md), l) in values.iter().zip(high).zip(mid).zip(low) {
        [*h, *md, *l] = split(a);
    }
}

/// Lays out the weight as B tiles: for each group of 16 weight rows and each step of 32
/// inputs, a tile whose row `i` holds, for each of the 16 weight rows, its inputs `2i` and
/// `2i + 1` of the step, `k_pad / 32` steps per group. Zero past `k` and for the padding rows
/// past `n`.
fn pack_weights(w: &[u16], (n, k): (usize, usize), k_pad: usize, weights: &mut [u16]) {
    weights.par_chunks_mut(k_pad * 16).enumerate().for_each(|(group, tiles)| {
        let first_row = (group * 16).min(n);
        let rows = &w[first_row * k..(first_row + 16).min(n) * k];
        for (step, tile) in tiles.chunks_exact_mut(TILE_VALUES).enumerate() {
            let first = step * 32;
            if k.is_multiple_of(2) && first + 32 <= k {
                // Whole pairs: the tile is the 16 × 16 transpose of the rows' 32-bit pairs.
                let tile: &mut [[u16; 2]] = bytemuck::cast_slice_mut(tile);
                for (col, row) in rows.chunks_exact(k).enumerate() {
                    let pairs: &[[u16; 2]] = bytemuck::cast_slice(&row[first..first + 32]);
                    for (i, &pair) in pairs.iter().enumerate() {
                        tile[i * 16 + col] = pair;
                    }
                }
                continue;
            }
            for (col, row) in rows.chunks_exact(k).enumerate() {
                for (j, &v) in row[first.min(k)..(first + 32).min(k)].iter().enumerate() {
                    tile[(j / 2) * 32 + col * 2 + j % 2] = v;
                }
            }
        }
    });
}

/// Writes the output rows `rows` (whole row blocks, their parts laid out by [`split_rows`]).
///
/// # Safety
/// AMX-BF16 is usable; `weights` is laid out by [`pack_weights`] for `shape`; `out` holds
/// `m_pad × n_pad` floats, and no other thread touches these rows meanwhile.
unsafe fn multiply_rows(
    parts: &[u16],
    weights: &[u16],
    shape: Shape,
    rows: std::ops::Range<usize>,
    out: SharedOut,
) {
    let Shape { n_pad, k_pad, .. } = shape;
    let out_stride = n_pad * 4;
    // The sums of a row block and a column chunk between input blocks, each panel's 32 × 32
    // contiguous: rows of the output itself are n_pad floats apart, a stride at which the
    // block's lines would crowd into a few cache sets.
    let mut sums = Sums([[0.0; NB * MB]; COL_CHUNK / NB]);
    let sums_stride = NB * 4;
    // SAFETY: every tile address below lies in `parts`, `weights`, `out` or `sums` by their
    // layouts.
    unsafe {
        TileConfig::FULL.load();
        for chunk in (0..n_pad).step_by(COL_CHUNK) {
            for (block, r0) in rows.clone().step_by(MB).enumerate() {
                let block_parts = parts.as_ptr().add(block * MB * k_pad * 3);
                for (k0, kc) in input_blocks(k_pad) {
                    let a = block_parts.add(3 * MB * k0);
                    let last = k0 + kc == k_pad;
                    for (panel, c0) in (chunk..(chunk + COL_CHUNK).min(n_pad)).step_by(NB).enumerate() {
                        let s = sums.0[panel].as_mut_ptr();
                        let held = [s, s.add(16), s.add(16 * NB), s.add(16 * NB + 16)];
                        if k0 == 0 {
                            tile_zero!(0);
                            tile_zero!(1);
                            tile_zero!(2);
                            tile_zero!(3);
                        } else {
                            tile_load!(0, held[0], sums_stride);
                            tile_load!(1, held[1], sums_stride);
                            tile_load!(2, held[2], sums_stride);
                            tile_load!(3, held[3], sums_stride);
                        }
                        multiply_steps(a, weights.as_ptr().add(c0 * k_pad + k0 * 16), kc, k_pad);
                        let (dst, stride) = if last {
                            let o = |r: usize, c: usize| out.at((r0 + r) * n_pad + c0 + c);
                            ([o(0, 0), o(0, 16), o(16, 0), o(16, 16)], out_stride)
                        } else {
                            (held, sums_stride)
                        };
                        tile_store!(0, dst[0], stride);
                        tile_store!(1, dst[1], stride);
                        tile_store!(2, dst[2], stride);
                        tile_store!(3, dst[3], stride);
                    }
                }
            }
        }
        super::amx::release();
    }
}

/// A column chunk's sums for one row block, 64-byte aligned for tile loads.
#[repr(C, align(64))]
struct Sums([[f32; NB * MB]; COL_CHUNK / NB]);

/// Adds one input block of a 32 × 32 output block to tiles 0–3: `a` is the block's activation
/// parts (`split_rows`' layout, `kc` inputs), `b` the first tile of the two weight groups'
/// step at the block's first input.
///
/// # Safety
/// Tiles are configured; `a` and `b` address the layouts above.
#[inline(always)]
unsafe fn multiply_steps(a: *const u16, b: *const u16, kc: usize, k_pad: usize) {
    let (steps, group) = (kc / 32, k_pad * 16);
    // SAFETY: the caller's.
    unsafe {
        for step in 0..steps {
            tile_load!(6, b.add(step * TILE_VALUES), 64usize);
            tile_load!(7, b.add(group + step * TILE_VALUES), 64usize);
            // The small parts first, so the largest is added to the smaller sums.
            for part in (0..3).rev() {
                let a = a.add(part * MB * kc + step * TILE_VALUES);
                tile_load!(4, a, 64usize);
                tile_dot_bf16!(0, 4, 6);
                tile_dot_bf16!(1, 4, 7);
                tile_load!(5, a.add(steps * TILE_VALUES), 64usize);
                tile_dot_bf16!(2, 5, 6);
                tile_dot_bf16!(3, 5, 7);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value with all 24 significant bits in use, positive and negative, over many scales.
    fn awkward(i: usize) -> f32 {
        let x = ((i as u64 * 2_654_435_761) % 1_000_003) as f32 / 1_000_003.0 - 0.5;
        x * (1.0 + (i % 7) as f32) * 1.000_000_1
    }

    #[test]
    fn split_parts_sum_to_the_value_exactly() {
        for i in 0..10_000 {
            let a = awkward(i) * 10f32.powi((i % 9) as i32 - 4);
            let [h, m, l] = split(a).map(|p| f32::from_bits((p as u32) << 16));
            assert_eq!(h + m + l, a, "{a:e}");
        }
    }

    #[test]
    fn matches_an_f64_product_on_odd_shapes() {
        if !super::super::amx::usable_bf16() {
            eprintln!("skipped: this CPU has no AMX-BF16");
            return;
        }
        for (m, n, k) in [(1, 1, 1), (33, 17, 31), (65, 48, 300), (40, 96, 513), (577, 64, 1024)] {
            let xs: Vec<f32> = (0..m * k).map(awkward).collect();
            let w: Vec<u16> = (0..n * k).map(|i| (awkward(i + 7).to_bits() >> 16) as u16).collect();
            // SAFETY: AMX-BF16 checked above; the slices have the shapes' sizes.
            let got = unsafe { matmul(&xs, &w, m, n, k) };
            assert_eq!(got.len(), m * n);
            for r in 0..m {
                for c in 0..n {
                    let (mut exact, mut magnitude) = (0f64, 0f64);
                    for i in 0..k {
                        let p = xs[r * k + i] as f64 * f32::from_bits((w[c * k + i] as u32) << 16) as f64;
                        exact += p;
                        magnitude += p.abs();
                    }
                    // f32 sums of k terms: a few units of f32 rounding of the terms' magnitude.
                    let bound = magnitude * k as f64 * f32::EPSILON as f64 / 4.0 + 1e-30;
                    let err = (got[r * n + c] as f64 - exact).abs();
                    assert!(
                        err <= bound,
                        "({m},{n},{k}) [{r},{c}]: {} vs {exact}, error {err:e} > {bound:e}",
                        got[r * n + c]
                    );
                }
            }
        }
    }
}
