//! One attention head, `softmax(scale · q kᵀ) v` with each query seeing a range of the keys:
//! the vision towers' attention (every key visible) and the language model's prefill (causal).
//!
//! Both products run on [`super::sgemm`]'s register tiles, at the projections' rate (the
//! `gemm` crate, still used for a few queries, was close to it on the towers' heads: the wall
//! time measured about even), and causal blocks skip the keys no row of theirs may see, which
//! the crate's square product could not. K is laid out once per head in panels of
//! keys (its transpose, by the same in-register transposes as the weights); the queries go a
//! block at a time: their scores against the keys they may see, the softmax in place, then the
//! product with V, whose rows are the weight lines as they lie in memory. A block's scores stay
//! in L2 between the two products. Features go in panels of 64 where the CPU has AVX-512, then
//! of 16, so a head of 72 features (SigLIP) wastes 8 of 80 columns, not 56 of 128; a narrow
//! tile runs as fast per FMA on Zen 4, whose 512-bit FMAs are two 256-bit ones.

use std::ops::Range;

use super::elementwise::softmax_in_place;
use super::gemm::{product, Strided};
use super::sgemm::{multiply_tile, transpose_into, Tile, MR};

/// Queries per block: their scores (`QB × keys` floats, 96 KB at 1,024 keys) stay in L2
/// beside K's panels and the V rows they meet.
const QB: usize = 4 * MR;
/// Fewer queries than this go to the `gemm` crate: laying K out costs as much as a few rows
/// of the products (a short prefill chunk after a long prompt).
const MIN_QUERIES: usize = 2 * MR;
/// The narrow tile's width: the panel width after the 64-wide ones.
const NARROW: usize = Tile::Avx2.nr();

/// The buffers of one thread's heads, kept between calls.
#[derive(Default)]
struct Buffers {
    /// K laid out in panels of keys, or the fallback's scores.
    panels: Vec<f32>,
    /// A block of queries' scores, then their probabilities.
    scores: Vec<f32>,
    /// V's last features when the head width is not a multiple of [`NARROW`], zero-padded.
    tail: Vec<f32>,
}

/// One attention head: `out = softmax(scale · q kᵀ) v` with `q` `[queries, dim]` and `k`, `v`
/// `[keys, dim]` (row-major, rows `stride` apart each), query row `r` seeing only the keys in
/// `visible(r)` (the others weigh exactly 0; a row that sees none is 0). `out` is row-major with
/// rows `out_stride` apart. Runs on the calling thread.
///
/// # Safety
/// The operands must hold the rows their shapes and strides address, and no other thread may
/// touch `out`'s `queries × dim` elements meanwhile.
pub(crate) unsafe fn attend_head(
    (queries, keys, dim): (usize, usize, usize),
    q: (*const f32, usize),
    k: (*const f32, usize),
    v: (*const f32, usize),
    scale: f32,
    visible: impl Fn(usize) -> Range<usize>,
    out: (*mut f32, usize),
) {
    thread_local! {
        static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers::default());
    }
    let head = Head { queries, keys, dim, q, k, v, scale, out };
    BUFFERS.with(|b| {
        let buffers = &mut b.borrow_mut();
        match Tile::detect() {
            // SAFETY (both): the caller's contract.
            Some(tile) if queries >= MIN_QUERIES && dim > 0 => unsafe { head.tiled(tile, &visible, buffers) },
            _ => unsafe { head.on_gemm(&visible, &mut buffers.panels) },
        }
    })
}

/// A head's shape and operands, as [`attend_head`] takes them.
#[derive(Clone, Copy)]
struct Head {
    queries: usize,
    keys: usize,
    dim: usize,
    q: (*const f32, usize),
    k: (*const f32, usize),
    v: (*const f32, usize),
    scale: f32,
    out: (*mut f32, usize),
}

impl Head {
    /// The head on the register tiles.
    ///
    /// # Safety
    /// [`attend_head`]'s contract; `tile` is one [`Tile::detect`] allows.
    unsafe fn tiled(&self, tile: Tile, visible: &impl Fn(usize) -> Range<usize>, b: &mut Buffers) {
        let Head { queries, keys, dim, k, v, scale, .. } = *self;
        let k_len = if keys == 0 { 0 } else { (keys - 1) * k.1 + dim };
        // SAFETY: the caller's contract: `keys` rows of `dim` values, `k.1` apart.
        let k_rows = unsafe { std::slice::from_raw_parts(k.0, k_len) };
        lay_out_keys(tile, (k_rows, k.1), (keys, dim), &mut b.panels);
        let tail_start = dim / NARROW * NARROW;
        if tail_start < dim {
            b.tail.clear();
            b.tail.resize(keys * NARROW, 0.0);
            for (j, line) in b.tail.chunks_exact_mut(NARROW).enumerate() {
                // SAFETY: the caller's contract: row `j` of V holds `dim` values.
                let row = unsafe { std::slice::from_raw_parts(v.0.add(j * v.1), dim) };
                line[..dim - tail_start].copy_from_slice(&row[tail_start..]);
            }
        }
        let ld = keys.next_multiple_of(NARROW);
        b.scores.resize(QB * ld, 0.0);
        for r0 in (0..queries).step_by(QB) {
            let rows = r0..(r0 + QB).min(queries);
            let seen: Vec<Range<usize>> = rows.clone().map(|r| clamp(visible(r), keys)).collect();
            // The keys any row of the block sees.
            let lo = seen.iter().filter(|s| !s.is_empty()).map(|s| s.start).min().unwrap_or(0);
            let hi = seen.iter().map(|s| s.end).max().unwrap_or(0).max(lo);
            // SAFETY: the caller's contract; `scores` holds `QB` rows of `ld`.
            unsafe { self.scores(tile, rows.clone(), lo..hi, &b.panels, (b.scores.as_mut_ptr(), ld)) };
            for (i, seen) in seen.iter().enumerate() {
                let seen = if seen.is_empty() { 0..0 } else { seen.start - lo..seen.end - lo };
                softmax_of(&mut b.scores[i * ld + lo..i * ld + hi], seen, scale);
            }
            // SAFETY: as above; `tail` holds V's last features where `dim` needs them.
            unsafe { self.times_values(tile, rows, lo..hi, &b.tail, (b.scores.as_ptr(), ld)) };
        }
    }

    /// The scores of query `rows` against the keys of the panels that meet `seen`, into the
    /// rows of `scores` (the block's first row first, rows `ld` apart, column = key).
    ///
    /// # Safety
    /// [`attend_head`]'s contract; `panels` holds K as [`lay_out_keys`] leaves it; `scores`
    /// addresses `rows.len()` rows of `ld` ≥ `keys` floats.
    unsafe fn scores(
        &self,
        tile: Tile,
        rows: Range<usize>,
        seen: Range<usize>,
        panels_of_k: &[f32],
        (scores, ld): (*mut f32, usize),
    ) {
        let Head { keys, dim, q, .. } = *self;
        for (start, panel) in panels(keys, tile) {
            let width = panel.nr().min(keys - start);
            if start + width <= seen.start || start >= seen.end {
                continue;
            }
            let lines = (panels_of_k[start * dim..].as_ptr(), panel.nr());
            // SAFETY: query rows hold `dim` values, the panel `dim` lines of `nr`, the score
            // rows `width` floats from column `start`.
            unsafe {
                let row = |i: usize| q.0.add(i * q.1);
                multiply_rows(panel, dim, (rows.clone(), row), lines, (scores.add(start), ld), width)
            };
        }
    }

    /// `out`'s query `rows`: their probabilities over the keys `seen` (in `probabilities`, laid
    /// out as [`Self::scores`] leaves them) times V's rows `seen`.
    ///
    /// # Safety
    /// [`attend_head`]'s contract; `tail` holds V's features from `dim / NARROW · NARROW` on,
    /// `NARROW` per key and zero-padded, when `dim` is not a multiple of [`NARROW`].
    unsafe fn times_values(
        &self,
        tile: Tile,
        rows: Range<usize>,
        seen: Range<usize>,
        tail: &[f32],
        (probabilities, ld): (*const f32, usize),
    ) {
        let Head { dim, v, out, .. } = *self;
        for (start, panel) in panels(dim, tile) {
            let width = panel.nr().min(dim - start);
            let lines = if start + panel.nr() <= dim {
                // SAFETY: rows `seen` of V hold features `start..start + nr`.
                (unsafe { v.0.add(seen.start * v.1 + start) }, v.1)
            } else {
                (tail[seen.start * NARROW..].as_ptr(), NARROW)
            };
            // SAFETY: probability rows hold `seen.len()` values from `seen.start`; `out`'s rows
            // this head's `dim` columns, for this task alone.
            unsafe {
                let row = |i: usize| probabilities.add((i - rows.start) * ld + seen.start);
                let dst = (out.0.add(rows.start * out.1 + start), out.1);
                multiply_rows(panel, seen.len(), (rows.clone(), row), lines, dst, width)
            };
        }
    }

    /// The head as two `gemm` crate products around the softmax, for a few queries or where
    /// the CPU has no tile.
    ///
    /// # Safety
    /// [`attend_head`]'s contract.
    unsafe fn on_gemm(&self, visible: &impl Fn(usize) -> Range<usize>, scores: &mut Vec<f32>) {
        let Head { queries, keys, dim, q, k, v, scale, out } = *self;
        scores.resize(queries * keys, 0.0);
        // SAFETY: the caller's contract; `scores` holds `queries` rows of `keys`.
        unsafe {
            let (q, kt) = (Strided::rows(q.0, q.1), Strided::transposed(k.0, k.1));
            product(queries, keys, dim, scores.as_mut_ptr(), keys, q, kt, 1.0, false)
        };
        for (r, row) in scores.chunks_exact_mut(keys.max(1)).enumerate() {
            softmax_of(row, clamp(visible(r), keys), scale);
        }
        // SAFETY: as above.
        unsafe {
            let (p, v) = (Strided::rows(scores.as_ptr(), keys), Strided::rows(v.0, v.1));
            product(queries, dim, keys, out.0, out.1, p, v, 1.0, false)
        };
    }
}

/// The softmax of `scale · row[seen]` in place, the rest of `row` zero.
fn softmax_of(row: &mut [f32], seen: Range<usize>, scale: f32) {
    row[..seen.start].fill(0.0);
    row[seen.end..].fill(0.0);
    softmax_in_place(&mut row[seen], scale);
}

/// `range` within `0..keys`.
fn clamp(range: Range<usize>, keys: usize) -> Range<usize> {
    let end = range.end.min(keys);
    range.start.min(end)..end
}

/// The panels that cover `features`: 64 wide where `tile` is the AVX-512 one, then
/// [`NARROW`] wide; each as (first feature, tile).
fn panels(features: usize, tile: Tile) -> impl Iterator<Item = (usize, Tile)> {
    let wide = if tile == Tile::Avx512 { features / tile.nr() * tile.nr() } else { 0 };
    let wide_panels = (0..wide).step_by(Tile::Avx512.nr()).map(|s| (s, Tile::Avx512));
    wide_panels.chain((wide..features).step_by(NARROW).map(|s| (s, Tile::Avx2)))
}

/// Lays K (`keys` rows of `dim`, `ld` apart) out as [`panels`]: the panel from key `s`, `nr`
/// wide, at `dst[s·dim..]` holds `[dim][nr]`, the keys past the last zero.
fn lay_out_keys(tile: Tile, (k, ld): (&[f32], usize), (keys, dim): (usize, usize), dst: &mut Vec<f32>) {
    dst.clear();
    dst.resize(keys.next_multiple_of(NARROW) * dim, 0.0);
    for (start, panel) in panels(keys, tile) {
        let nr = panel.nr();
        let lines = &mut dst[start * dim..(start + nr) * dim];
        // Sixteen keys at a time: the AVX-512 transposing block.
        for first in (0..nr.min(keys - start)).step_by(NARROW) {
            let count = NARROW.min(keys - start - first);
            let rows = &k[(start + first) * ld..];
            transpose_into(tile, (rows, ld), (count, dim), &mut lines[first..], nr);
        }
    }
}

/// One panel's `width` columns for `rows`: the first row's at `dst`, rows `ld` apart, each the
/// sum over `kc` inputs of the row's values (`row(i)` for row `i`) times the panel's `lines`
/// (`kc` of `panel.nr()` floats, their stride apart). The rows go through the tile [`MR`] at a
/// time; a short sliver repeats its first row, whose extra sums are not written.
///
/// # Safety
/// As [`multiply_tile`], for every sliver: `panel` is a tile the CPU has, each `row(i)` holds
/// `kc` floats, and `dst` addresses `rows.len()` rows of `width` writable floats.
unsafe fn multiply_rows(
    panel: Tile,
    kc: usize,
    (rows, row): (Range<usize>, impl Fn(usize) -> *const f32),
    lines: (*const f32, usize),
    (dst, ld): (*mut f32, usize),
    width: usize,
) {
    for first in rows.clone().step_by(MR) {
        let count = MR.min(rows.end - first);
        let a = std::array::from_fn(|i| row(first + if i < count { i } else { 0 }));
        // SAFETY: the caller's contract; the sliver's output rows start `first - rows.start`
        // rows into `dst`.
        unsafe {
            let c = (dst.add((first - rows.start) * ld), ld);
            multiply_tile(panel, kc, a, lines, c, (count, width), true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::pseudo_random;

    /// The head in f64, row by row.
    fn reference(
        (queries, keys, dim): (usize, usize, usize),
        (q, k, v): (&[f32], &[f32], &[f32]),
        stride: usize,
        scale: f32,
        visible: impl Fn(usize) -> Range<usize>,
    ) -> Vec<f64> {
        let mut out = vec![0f64; queries * dim];
        for r in 0..queries {
            let seen = clamp(visible(r), keys);
            let scores: Vec<f64> = seen
                .clone()
                .map(|j| {
                    scale as f64
                        * (0..dim).map(|x| q[r * stride + x] as f64 * k[j * stride + x] as f64).sum::<f64>()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for (j, s) in seen.zip(&scores) {
                for x in 0..dim {
                    out[r * dim + x] += (s - max).exp() / total * v[j * stride + x] as f64;
                }
            }
        }
        out
    }

    fn check(shape: (usize, usize, usize), causal: Option<usize>) {
        let (queries, keys, dim) = shape;
        // Heads side by side, as the projections lay them out: this head is the second of three.
        let stride = 3 * dim;
        let q = pseudo_random(queries * stride, 1, 1.0);
        let k = pseudo_random(keys * stride, 2, 1.0);
        let v = pseudo_random(keys * stride, 3, 1.0);
        let visible = |r: usize| match causal {
            Some(position) => (position + r + 1).saturating_sub(40)..position + r + 1,
            None => 0..keys,
        };
        let scale = (dim as f32).powf(-0.5);
        let mut out = vec![f32::NAN; queries * (dim + 3)];
        // SAFETY: the operands hold the rows their strides address; `out` holds `dim + 3`-wide rows.
        unsafe {
            attend_head(
                shape,
                (q[dim..].as_ptr(), stride),
                (k[dim..].as_ptr(), stride),
                (v[dim..].as_ptr(), stride),
                scale,
                visible,
                (out.as_mut_ptr(), dim + 3),
            )
        };
        let want = reference(shape, (&q[dim..], &k[dim..], &v[dim..]), stride, scale, visible);
        for r in 0..queries {
            for x in 0..dim {
                let (g, w) = (out[r * (dim + 3) + x], want[r * dim + x]);
                assert!((g as f64 - w).abs() < 2e-6, "{shape:?} causal {causal:?} at ({r}, {x}): {g} vs {w}");
            }
            assert!(
                out[r * (dim + 3) + dim..(r + 1) * (dim + 3)].iter().all(|x| x.is_nan()),
                "padding written"
            );
        }
    }

    /// Both paths (few queries on the `gemm` crate, more on the tiles) on head widths of whole
    /// wide panels, narrow ones and a ragged tail, key counts past a panel, and query blocks
    /// past a sliver and a block.
    #[test]
    fn matches_the_f64_head_on_odd_shapes() {
        for shape in [(5, 9, 8), (13, 9, 7), (30, 77, 72), (25, 130, 64), (61, 577, 96), (12, 1, 3)] {
            check(shape, None);
        }
    }

    /// Causal rows with a window: a block's rows see different ranges of the keys, some of
    /// them none of the block's first panel.
    #[test]
    fn causal_windows_match_the_f64_head() {
        check((50, 150, 72), Some(100));
        check((100, 100, 64), Some(0));
    }

    /// Every width is covered once, wide panels first.
    #[test]
    fn panels_cover_the_features() {
        let starts = |features, tile| panels(features, tile).map(|(s, t)| (s, t.nr())).collect::<Vec<_>>();
        assert_eq!(starts(72, Tile::Avx512), vec![(0, 64), (64, 16)]);
        assert_eq!(starts(130, Tile::Avx512), vec![(0, 64), (64, 64), (128, 16)]);
        assert_eq!(starts(40, Tile::Avx2), vec![(0, 16), (16, 16), (32, 16)]);
        assert!(starts(0, Tile::Avx512).is_empty());
    }
}
