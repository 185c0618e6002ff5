//! f32 products `x Wᵀ + bias`, then an optional map, for many activation rows: the vision
//! towers' projections, whose weights are stored compact (bf16, f16, Q8_0) and computed in f32.
//!
//! On the `gemm` crate the CLIP tower ran at about three quarters of the CPU's f32 peak: each
//! slab of the widened weight was packed again, and the bias and the activation were separate
//! passes over outputs of tens of MB (fresh pages, written and read again). Here the weight is
//! widened once per call straight into panels of `NR` output features (`[k][NR]`,
//! zero-padded), and a register-blocked microkernel (`sgemm_x86`) sums `MR × NR` outputs over
//! [`KC`] inputs at a time, reading its `MR` activation rows where they are (a packed copy of
//! them, made once per chunk of panels, took 6% of SigLIP's time). The bias and the map go
//! onto each finished tile while it is in L1, and [`mlp`] takes a block of rows through both
//! of a transformer MLP's products at once.
//!
//! Every output is one f32 FMA chain over the inputs in order, then the bias added: results
//! differ from another f32 product only in the order of its sums.

use rayon::prelude::*;

use super::elementwise::{map_in_place, Map};
use super::gemm::{with_scratch, SharedOut};
use super::simd::{simd_level, SimdLevel};

/// Inputs per pass of the microkernel over a tile. A weight sliver (`KC × NR` floats, 128 KB
/// with AVX-512) and a task's rows (`MC × KC`, 192 KB) stay in L2 while they meet; a
/// longer pass stores and reloads each tile's sums less often (128 → 512 inputs: 5–10% on
/// CLIP's shapes, Zen 4).
const KC: usize = 512;
/// Activation rows per register tile, the same for both microkernels.
pub(super) const MR: usize = 6;
/// Most activation rows per task block (a multiple of [`MR`]).
const MC: usize = 96;
/// Output features per chunk of a task's panels: its outputs (`MC × NC` floats, 384 KB)
/// stay in L2 between input blocks.
const NC: usize = 1024;

/// Most floats in a buffer of laid-out weights (32 MB): the towers' largest (SigLIP's MLP,
/// 20 MB) fit; a larger weight (the image projection's, 50 MB) is laid out and multiplied a
/// group of features at a time, so no call holds more than this beside the stored weight.
const POOLED_FLOATS: usize = 8 << 20;

/// Features widened and laid out together, and the side of the AVX-512 transposing block.
const GROUP: usize = 16;

/// The register tiles of the two x86 microkernels: rows × output features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tile {
    /// AVX-512: 6 rows × 64 features, 24 zmm sums.
    Avx512,
    /// AVX2 + FMA: 6 rows × 16 features, 12 ymm sums.
    Avx2,
}

impl Tile {
    /// The widest tile this CPU (and `PHIVE_SIMD`) allows, if any.
    pub(super) fn detect() -> Option<Tile> {
        let level = simd_level();
        if level >= SimdLevel::Avx512Vnni {
            Some(Tile::Avx512)
        } else if level >= SimdLevel::Avx2 {
            Some(Tile::Avx2)
        } else {
            None
        }
    }

    /// Output features per tile (and per weight panel).
    pub(super) const fn nr(self) -> usize {
        match self {
            Tile::Avx512 => 64,
            Tile::Avx2 => 16,
        }
    }
}

/// What happens to the finished sums: a bias per output feature added, then a map applied.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub map: Option<Map>,
}

impl Epilogue<'_> {
    /// Applies the epilogue to a finished `[m, n]` product, for kernels that do not fuse it.
    pub fn apply(self, out: &mut [f32], n: usize) {
        if self.bias.is_some() || self.map.is_some() {
            out.par_chunks_mut(n.max(1)).for_each(|row| finish(row, self.bias, self.map));
        }
    }
}

/// Writes weight rows `first..first + count` as f32 into `dst` (`count · k` floats).
pub(crate) type Widen<'a> = &'a (dyn Fn(usize, usize, &mut [f32]) + Sync);

/// `xs` `[m, k]` times the weight `[n, k]` transposed, then `epilogue`: `[m, n]` row-major.
/// `None` where the CPU has no AVX2, or `k` is 0 (the caller then uses another kernel).
pub(crate) fn matmul(
    xs: &[f32],
    (m, n, k): (usize, usize, usize),
    widen: Widen,
    epilogue: Epilogue,
) -> Option<Vec<f32>> {
    assert_eq!(xs.len(), m * k, "sgemm: activations are not [m, k]");
    assert!(epilogue.bias.is_none_or(|b| b.len() == n), "sgemm: bias is not [n]");
    let tile = Tile::detect().filter(|_| k > 0)?;
    let mut out = Vec::with_capacity(m * n);
    let shared = SharedOut::spare(&mut out);
    // The weight is laid out a group of features at a time, each group at most a kept buffer.
    let group = (POOLED_FLOATS / (k * tile.nr())).max(1) * tile.nr();
    for first in (0..n).step_by(group) {
        let features = first..(first + group).min(n);
        let group_rows = |row: usize, count: usize, dst: &mut [f32]| widen(first + row, count, dst);
        let bias = epilogue.bias.map(|b| &b[features.clone()]);
        let epilogue = Epilogue { bias, ..epilogue };
        with_packed_weight(tile, (features.len(), k), &group_rows, |weight| {
            let (block_rows, panels) = (row_block(m), features.len().div_ceil(tile.nr()));
            let blocks = m.div_ceil(block_rows);
            // Column chunks where there are too few row blocks to keep every thread busy.
            let chunks = (4 * rayon::current_num_threads()).div_ceil(blocks.max(1)).min(panels.max(1));
            let per_chunk = panels.div_ceil(chunks);
            (0..blocks * chunks).into_par_iter().for_each(|task| {
                let (block, chunk) = (task / chunks, task % chunks);
                let rows = block * block_rows..((block + 1) * block_rows).min(m);
                let panels = chunk * per_chunk..((chunk + 1) * per_chunk).min(panels);
                let xs = &xs[rows.start * k..rows.end * k];
                let out = Output { at: shared.at(rows.start * n + features.start), ld: n };
                multiply_block(tile, xs, weight, panels, epilogue, out)
            })
        });
    }
    // SAFETY: the tasks wrote every element of every row (each (row block, panel) once).
    unsafe { out.set_len(m * n) };
    Some(out)
}

/// A transformer MLP, `fc2(map(fc1(xs)))`: `xs` `[m, k]`, the first weight `[hidden, k]`, the
/// second `[n, hidden]`, each followed by its epilogue; `[m, n]` row-major. Each task takes a
/// block of rows through both products, its hidden activations in a reused buffer, so the
/// `[m, hidden]` intermediate (47 MB for CLIP's five crops, 123 MB for SigLIP's seven) is never
/// written to memory, faulted in or read back. `None` where the CPU has no AVX2, `k` or
/// `hidden` is 0, or a weight is larger than a kept buffer (32 MB laid out).
pub(crate) fn mlp(
    xs: &[f32],
    (m, k, hidden, n): (usize, usize, usize, usize),
    (widen1, epilogue1): (Widen, Epilogue),
    (widen2, epilogue2): (Widen, Epilogue),
) -> Option<Vec<f32>> {
    assert_eq!(xs.len(), m * k, "sgemm: activations are not [m, k]");
    assert!(epilogue1.bias.is_none_or(|b| b.len() == hidden), "sgemm: first bias is not [hidden]");
    assert!(epilogue2.bias.is_none_or(|b| b.len() == n), "sgemm: second bias is not [n]");
    let tile = Tile::detect()?;
    let fits = |features: usize, inputs: usize| {
        inputs > 0 && features.next_multiple_of(tile.nr()) * inputs <= POOLED_FLOATS
    };
    if !(fits(hidden, k) && fits(n, hidden)) {
        return None;
    }
    let mut out = Vec::with_capacity(m * n);
    with_packed_weight(tile, (hidden, k), widen1, |first| {
        with_packed_weight(tile, (n, hidden), widen2, |second| {
            let shared = SharedOut::spare(&mut out);
            let block_rows = row_block(m);
            (0..m.div_ceil(block_rows)).into_par_iter().for_each(|block| {
                let rows = block * block_rows..((block + 1) * block_rows).min(m);
                with_scratch(|[activations, _]| {
                    activations.resize(rows.len() * hidden, 0.0);
                    let xs = &xs[rows.start * k..rows.end * k];
                    let out = Output { at: activations.as_mut_ptr(), ld: hidden };
                    multiply_block(tile, xs, first, 0..hidden.div_ceil(tile.nr()), epilogue1, out);
                    let out = Output { at: shared.at(rows.start * n), ld: n };
                    multiply_block(tile, activations, second, 0..n.div_ceil(tile.nr()), epilogue2, out);
                })
            })
        })
    });
    // SAFETY: the tasks wrote every element of every row.
    unsafe { out.set_len(m * n) };
    Some(out)
}

/// Rows per task block for `m` rows: at most [`MC`], a multiple of [`MR`], and
/// as many blocks as make whole rounds of the threads, so no thread is left with one more
/// block than another (SigLIP's 1,025 rows: 12 blocks of 90, not 11 of 96).
fn row_block(m: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let blocks = m.div_ceil(MC).next_multiple_of(threads).max(1);
    m.div_ceil(blocks).next_multiple_of(MR).clamp(MR, MC)
}

/// A weight `[n, k]` laid out for a tile: panel `p` holds `[k][nr]`, the features past `n` zero.
#[derive(Clone, Copy)]
struct PackedWeight<'a> {
    values: &'a [f32],
    n: usize,
    k: usize,
}

/// Runs `f` on the weight laid out for `tile`. The buffers are kept between calls (tens of MB
/// for an MLP weight, which fresh pages would fault in on every call).
fn with_packed_weight<R>(
    tile: Tile,
    (n, k): (usize, usize),
    widen: Widen,
    f: impl FnOnce(PackedWeight) -> R,
) -> R {
    static POOL: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());
    let pool = || POOL.lock().unwrap_or_else(|e| e.into_inner());
    let mut packed = pool().pop().unwrap_or_default();
    let nr = tile.nr();
    packed.resize(n.div_ceil(nr) * k * nr, 0.0);
    packed.par_chunks_mut((k * nr).max(1)).enumerate().for_each(|(p, panel)| {
        with_scratch(|[rows, _]| {
            let count = nr.min(n - p * nr);
            // Sixteen features at a time, so their widened rows (275 KB at SigLIP's widest
            // input) stay in L2 while they are turned into the panel's columns.
            for first in (0..count).step_by(GROUP) {
                let features = GROUP.min(count - first);
                rows.resize(features * k, 0.0);
                widen(p * nr + first, features, rows);
                transpose_into(tile, (rows, k), (features, k), &mut panel[first..], nr);
            }
            for line in panel.chunks_exact_mut(nr) {
                line[count..].fill(0.0);
            }
        })
    });
    let result = f(PackedWeight { values: &packed, n, k });
    pool().push(packed);
    result
}

/// Writes `features` rows of `k` inputs, `src_ld` apart in `src`, transposed: input `i`'s
/// values go to `dst[i·ld..][..features]`.
pub(super) fn transpose_into(
    tile: Tile,
    (src, src_ld): (&[f32], usize),
    (features, k): (usize, usize),
    dst: &mut [f32],
    ld: usize,
) {
    assert!(features == 0 || src.len() >= (features - 1) * src_ld + k, "sgemm: rows out of bounds");
    debug_assert!(features <= ld && dst.len() >= k.saturating_sub(1) * ld + features);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if tile == Tile::Avx512 && features == GROUP {
        done = k - k % GROUP;
        for i in (0..done).step_by(GROUP) {
            // SAFETY: `Tile::detect` found AVX-512; 16 rows `src_ld` apart hold inputs
            // `i..i + 16` (asserted above), and `dst` has 16 lines of `ld` from `i·ld`.
            unsafe {
                super::sgemm_x86::transpose_16x16(src[i..].as_ptr(), src_ld, dst[i * ld..].as_mut_ptr(), ld)
            };
        }
    }
    for i in done..k {
        for j in 0..features {
            dst[i * ld + j] = src[j * src_ld + i];
        }
    }
}

/// Where a task's outputs go: its first row at `at`, rows `ld` floats apart.
#[derive(Clone, Copy)]
struct Output {
    at: *mut f32,
    ld: usize,
}

/// One task: the rows `xs` (`[rows, k]`) times the features of `panels`, then the epilogue,
/// into `out`. The panels go in chunks of at most [`NC`] features, input block by input block,
/// so a chunk's outputs stay in L2 between input blocks.
fn multiply_block(
    tile: Tile,
    xs: &[f32],
    weight: PackedWeight,
    panels: std::ops::Range<usize>,
    epilogue: Epilogue,
    out: Output,
) {
    let (nr, n, k) = (tile.nr(), weight.n, weight.k);
    let rows = xs.len() / k.max(1);
    // Input blocks of equal length (SigLIP's 1,152 inputs: 3 × 384, not 512 + 512 + 128).
    let kc_step = k.div_ceil(k.div_ceil(KC).max(1)).max(1);
    let panels_per_chunk = (NC / nr).max(1);
    for first_panel in panels.clone().step_by(panels_per_chunk) {
        let chunk = first_panel..(first_panel + panels_per_chunk).min(panels.end);
        for k0 in (0..k).step_by(kc_step) {
            let kc = kc_step.min(k - k0);
            let (first, last) = (k0 == 0, k0 + kc == k);
            for p in chunk.clone() {
                let w = weight.values[(p * k + k0) * nr..(p * k + k0 + kc) * nr].as_ptr();
                let cols = p * nr..((p + 1) * nr).min(n);
                for row0 in (0..rows).step_by(MR) {
                    let tile_rows = MR.min(rows - row0);
                    // A short sliver repeats its first row; those sums are not written out.
                    let row_at =
                        |i: usize| xs[(row0 + if i < tile_rows { i } else { 0 }) * k + k0..].as_ptr();
                    let a = std::array::from_fn(row_at);
                    // SAFETY: this task alone writes its rows × columns `cols` of the output;
                    // the tile's element (i, j) is at `(row0 + i)·ld + cols.start + j`; each row
                    // pointer has `kc` inputs from `k0` within its row, `w` `kc` lines of `nr`.
                    unsafe {
                        let c = out.at.add(row0 * out.ld + cols.start);
                        multiply_tile(tile, kc, a, (w, nr), (c, out.ld), (tile_rows, cols.len()), first);
                        if last {
                            for i in 0..tile_rows {
                                let row = std::slice::from_raw_parts_mut(c.add(i * out.ld), cols.len());
                                finish(row, epilogue.bias.map(|b| &b[cols.clone()]), epilogue.map);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds the bias to a row's finished sums, then applies the map, while the row is in L1.
fn finish(row: &mut [f32], bias: Option<&[f32]>, map: Option<Map>) {
    if let Some(bias) = bias {
        row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
    }
    if let Some(map) = map {
        map_in_place(map, row);
    }
}

/// Sums one tile: `c[i][j] (+)= Σ_p a[i][p]·w[p·ldw + j]` over `kc` inputs, `c`'s rows `ldc`
/// apart; with `first`, the sums start from zero instead of `c`. Only the `rows × cols` corner
/// of the tile is read and written.
///
/// # Safety
/// `tile` is one [`Tile::detect`] allows. `c` addresses `rows` rows of `cols` writable floats,
/// `ldc` apart; each of `a` (the `MR` activation rows) holds `kc` floats and `w` `kc` lines of
/// `tile.nr()` floats, `ldw` apart.
pub(super) unsafe fn multiply_tile(
    tile: Tile,
    kc: usize,
    a: [*const f32; MR],
    (w, ldw): (*const f32, usize),
    (c, ldc): (*mut f32, usize),
    (rows, cols): (usize, usize),
    first: bool,
) {
    let nr = tile.nr();
    debug_assert!(rows <= MR && cols <= nr);
    let run = |dst: *mut f32, ld: usize| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Tile::detect` checked the CPU; `dst` addresses a whole tile, `ld` apart.
        unsafe {
            match tile {
                Tile::Avx512 => super::sgemm_x86::tile_6x64(kc, a, (w, ldw), dst, ld, !first),
                Tile::Avx2 => super::sgemm_x86::tile_6x16(kc, a, (w, ldw), dst, ld, !first),
            }
        }
    };
    if rows == MR && cols == nr {
        return run(c, ldc);
    }
    // An edge tile goes through a full-size buffer, so the microkernels see whole tiles only.
    // (Only here: zeroing it for every tile took 1.6% of SigLIP's time.)
    let mut edge = [0f32; MR * Tile::Avx512.nr()];
    let corner = |from: *const f32, from_ld: usize, to: *mut f32, to_ld: usize| {
        for i in 0..rows {
            // SAFETY: the caller's corner of `rows × cols`; `edge` holds `MR × nr`.
            unsafe { std::ptr::copy_nonoverlapping(from.add(i * from_ld), to.add(i * to_ld), cols) };
        }
    };
    if !first {
        corner(c, ldc, edge.as_mut_ptr(), nr);
    }
    run(edge.as_mut_ptr(), nr);
    corner(edge.as_ptr(), nr, c, ldc);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain triple loop in f64, with the epilogue.
    fn reference(xs: &[f32], w: &[f32], (m, n, k): (usize, usize, usize), epilogue: Epilogue) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = epilogue.bias.map_or(0.0, |b| b[j] as f64);
                for p in 0..k {
                    s += xs[i * k + p] as f64 * w[j * k + p] as f64;
                }
                let mut y = [s as f32];
                if let Some(map) = epilogue.map {
                    map_in_place(map, &mut y);
                }
                out[i * n + j] = y[0];
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn check(shape: (usize, usize, usize), epilogue: Epilogue) {
        let (m, n, k) = shape;
        let xs = values(m * k, 1);
        let w = values(n * k, 2);
        let widen = |first: usize, count: usize, dst: &mut [f32]| {
            dst.copy_from_slice(&w[first * k..(first + count) * k])
        };
        let Some(got) = matmul(&xs, shape, &widen, epilogue) else {
            eprintln!("no AVX2 on this CPU: sgemm not tested");
            return;
        };
        let want = reference(&xs, &w, shape, epilogue);
        let tolerance = 1e-5 * (k as f32).sqrt() * 4.0;
        for (idx, (g, r)) in got.iter().zip(&want).enumerate() {
            assert!((g - r).abs() <= tolerance * r.abs().max(1.0), "{shape:?} at {idx}: {g} vs {r}");
        }
    }

    /// Whole tiles and ragged edges in every dimension: rows past a sliver and a block, features
    /// past a panel, inputs past an input block, and column chunks (few row blocks).
    #[test]
    fn matches_the_plain_product_on_odd_shapes() {
        let bias = values(300, 3);
        for shape in [(1, 1, 1), (12, 32, 128), (13, 33, 129), (97, 70, 300), (200, 300, 5), (40, 17, 257)] {
            check(shape, Epilogue::default());
            check(shape, Epilogue { bias: Some(&bias[..shape.1]), map: None });
            check(shape, Epilogue { bias: Some(&bias[..shape.1]), map: Some(Map::QuickGelu) });
        }
    }

    /// The fused MLP equals its two products with the map between them, over ragged row blocks
    /// and hidden widths that are not whole panels.
    #[test]
    fn mlp_matches_its_two_products() {
        let (m, k, hidden, n) = (200, 70, 130, 45);
        let xs = values(m * k, 6);
        let (w1, w2) = (values(hidden * k, 7), values(n * hidden, 8));
        let (b1, b2) = (values(hidden, 9), values(n, 10));
        let widen1 = |first: usize, count: usize, dst: &mut [f32]| {
            dst.copy_from_slice(&w1[first * k..(first + count) * k])
        };
        let widen2 = |first: usize, count: usize, dst: &mut [f32]| {
            dst.copy_from_slice(&w2[first * hidden..(first + count) * hidden])
        };
        let first = Epilogue { bias: Some(&b1), map: Some(Map::GeluTanh) };
        let second = Epilogue { bias: Some(&b2), map: None };
        let Some(fused) = mlp(&xs, (m, k, hidden, n), (&widen1, first), (&widen2, second)) else {
            eprintln!("no AVX2 on this CPU: sgemm not tested");
            return;
        };
        let hidden_rows = matmul(&xs, (m, hidden, k), &widen1, first).expect("AVX2");
        let apart = matmul(&hidden_rows, (m, n, hidden), &widen2, second).expect("AVX2");
        // The same kernels in the same order: the same bits.
        assert_eq!(fused, apart);
        let want = reference(&reference(&xs, &w1, (m, hidden, k), first), &w2, (m, n, hidden), second);
        for (g, r) in fused.iter().zip(&want) {
            assert!((g - r).abs() <= 1e-4 * r.abs().max(1.0), "{g} vs {r}");
        }
    }

    /// The AVX2 tile where the CPU has AVX-512 too: both kernels equal the plain product.
    #[test]
    fn both_tiles_match_the_plain_product() {
        let (m, n, k) = (30, 70, 200);
        let xs = values(m * k, 4);
        let w = values(n * k, 5);
        for tile in [Tile::Avx2, Tile::Avx512] {
            if Tile::detect().is_none_or(|best| best == Tile::Avx2 && tile == Tile::Avx512) {
                continue;
            }
            let nr = tile.nr();
            // One tile's worth through `multiply_tile`: the rows as they are, the weight packed.
            let a = std::array::from_fn(|i| xs[i.min(m - 1) * k..].as_ptr());
            let mut b = vec![0f32; k * nr];
            for p in 0..k {
                for j in 0..nr.min(n) {
                    b[p * nr + j] = w[j * k + p];
                }
            }
            let mut c = vec![f32::NAN; MR * nr];
            // SAFETY: `c` holds the tile; the CPU has the tile's instructions (checked above).
            unsafe { multiply_tile(tile, k, a, (b.as_ptr(), nr), (c.as_mut_ptr(), nr), (MR, nr), true) };
            let want = reference(&xs[..MR * k], &w[..nr * k], (MR, nr, k), Epilogue::default());
            for (g, r) in c.iter().zip(&want) {
                assert!((g - r).abs() <= 1e-4, "{tile:?}: {g} vs {r}");
            }
        }
    }
}
