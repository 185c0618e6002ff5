//! Q4_K, Q6_K, Q8_0 and Q4_0–Q5_1 weights stored once, at load, in the layout the panel
//! kernels read.
//!
//! GGML stores a weight row after row, each row a run of blocks. A batched decode step or a
//! prefill chunk multiplies many activation rows, and the fastest kernels for that
//! ([`super::q4k_panel`], [`super::q6k_panel`]) want the same 4-byte word of 16 consecutive
//! rows side by side in one 512-bit vector (or two 256-bit halves for the AVX2 kernels,
//! [`super::q4k_panel_avx2`] and its siblings). Gathering and transposing those words on every
//! call cost about two thirds of an 8-row step, so [`PanelMatrix`] does it once: for each panel of
//! 16 rows and each block, one 64-byte line per word of the block, each line holding one word
//! of that block of each of the 16 rows (in the order the kernel reads them). For Q4_K (144
//! bytes, 36 words) and Q8_0 (eight GGML blocks, 272 bytes, 68 words) this is a permutation of
//! the GGML bytes, the same memory; a Q6_K block (210 bytes) is padded to 53 words, 1% more.
//! It is the only copy of the weight; rows past the last whole panel stay in GGML's layout.
//! [`PanelMatrix::to_ggml`] undoes it for export and dequantization.

use std::ops::Range;

use rayon::prelude::*;

use super::gemm::SharedOut;
use super::q8_0::{BlockQ8x32, GGML_BLOCK_BYTES};
use super::q8k::{Q8KRows, QuantizedRows, QK};
use super::{by_rows, BlockFormat, QuantizedMatrix, SimdLevel};
use crate::Result;

/// Weight rows (output columns) per panel: one per 32-bit lane of a 512-bit vector.
pub const COLS: usize = 16;

/// 32-bit words per block, hence lines per block of a panel (a partial last word padded).
pub(super) const fn words(format: BlockFormat) -> usize {
    match format {
        BlockFormat::Q4K => super::q4k::BLOCK_BYTES.div_ceil(4),
        BlockFormat::Q6K => super::q6k::BLOCK_BYTES.div_ceil(4),
        BlockFormat::Q8_0 | BlockFormat::Small(_) => format.block_bytes() / 4,
    }
}

/// The bytes of a GGML block that each lane of line `j` of a panel block holds, as up to two
/// runs `(offset, length)` (a second of length 0 when there is one), in the order the kernel
/// first reads them, which the hardware prefetcher follows. Q4_K's order is GGML's (header,
/// then codes), a word per line. Q6_K's puts the scales (words 48–51) and `d` (52) first, then
/// each half of the block as its eight `ql`/`qh` word pairs read together, then its other
/// eight `ql` words; its last word is half padding. Q8_0's first four lines hold the scales
/// of GGML blocks `2i` and `2i + 1`, then each GGML block's 32 codes take eight lines. Q4_0
/// to Q5_1 are laid out as their AVX2 kernel ([`super::q4_q5_panel_avx2`]) describes; the VNNI
/// kernel reads the same lines.
fn source_bytes(format: BlockFormat, j: usize) -> [(usize, usize); 2] {
    let word = |w: usize| [(4 * w, 4.min(format.block_bytes() - 4 * w)), (0, 0)];
    match format {
        BlockFormat::Q4K => word(j),
        BlockFormat::Q6K => match j {
            0..5 => word(48 + j),
            _ => {
                let (half, k) = ((j - 5) / 24, (j - 5) % 24);
                word(match k {
                    0..16 if k.is_multiple_of(2) => 16 * half + k / 2,
                    0..16 => 32 + 8 * half + k / 2,
                    _ => 16 * half + k - 8,
                })
            }
        },
        BlockFormat::Q8_0 => match j {
            0..4 => [(2 * j * GGML_BLOCK_BYTES, 2), ((2 * j + 1) * GGML_BLOCK_BYTES, 2)],
            _ => {
                let (block, g) = ((j - 4) / 8, (j - 4) % 8);
                [(block * GGML_BLOCK_BYTES + 2 + 4 * g, 4), (0, 0)]
            }
        },
        BlockFormat::Small(small) => {
            let (bytes, scales, nibbles) =
                (small.block_bytes(), small.scale_lines(), small.nibble_lines_at());
            match (j, small.high_bits_at()) {
                // Without minimums, the scales of two blocks share a line.
                _ if j < scales && small.offset().is_some() => [(2 * j * bytes, 2), ((2 * j + 1) * bytes, 2)],
                _ if j < scales => [(j * bytes, 4), (0, 0)],
                (_, Some(high)) if j < nibbles => [((j - scales) * bytes + high, 4), (0, 0)],
                _ => {
                    let (block, g) = ((j - nibbles) / 4, (j - nibbles) % 4);
                    [(block * bytes + bytes - 16 + 4 * g, 4), (0, 0)]
                }
            }
        }
    }
}

/// Calls the panel kernel `$kernel::<R>(panel, tile, out)` for the activation rows `$acts` in
/// tiles of up to 8 rows (each tile shares every load of the panel's lines), writing `$out`.
/// `by_row_tiles!(4; …)`, `(3; …)` and `(2; …)` take tiles of up to 4, 3 or 2 rows: the
/// 256-bit kernels have half the registers to keep a tile's sums in (`(3; …)` gives a fourth
/// row a tile of 4 rather than one of its own).
#[cfg(target_arch = "x86_64")]
macro_rules! by_row_tiles {
    (2; $kernel:ident, $panel:expr, $acts:expr, $out:expr $(, $arg:expr)*) => {
        for (tile, dst) in $acts.chunks(2).zip($out.chunks_mut(2)) {
            match tile.len() {
                1 => $kernel::<1>($panel, tile, dst $(, $arg)*),
                _ => $kernel::<2>($panel, tile, dst $(, $arg)*),
            }
        }
    };
    (3; $kernel:ident $(::<$($g:tt),+>)?, $panel:expr, $acts:expr, $out:expr $(, $arg:expr)*) => {{
        // A last row alone would pass over the panel for itself: it joins the last tile.
        let whole = match $acts.len() {
            n if n >= 4 && n % 3 == 1 => n - 4,
            n => n,
        };
        for (tile, dst) in $acts[..whole].chunks(3).zip($out[..whole].chunks_mut(3)) {
            match tile.len() {
                1 => $kernel::<$($($g,)+)? 1>($panel, tile, dst $(, $arg)*),
                2 => $kernel::<$($($g,)+)? 2>($panel, tile, dst $(, $arg)*),
                _ => $kernel::<$($($g,)+)? 3>($panel, tile, dst $(, $arg)*),
            }
        }
        if whole < $acts.len() {
            $kernel::<$($($g,)+)? 4>($panel, &$acts[whole..], &mut $out[whole..] $(, $arg)*)
        }
    }};
    (4; $kernel:ident, $panel:expr, $acts:expr, $out:expr $(, $arg:expr)*) => {
        for (tile, dst) in $acts.chunks(4).zip($out.chunks_mut(4)) {
            match tile.len() {
                1 => $kernel::<1>($panel, tile, dst $(, $arg)*),
                2 => $kernel::<2>($panel, tile, dst $(, $arg)*),
                3 => $kernel::<3>($panel, tile, dst $(, $arg)*),
                _ => $kernel::<4>($panel, tile, dst $(, $arg)*),
            }
        }
    };
    ($kernel:ident $(::<$($g:tt),+>)?, $panel:expr, $acts:expr, $out:expr $(, $arg:expr)*) => {
        for (tile, dst) in $acts.chunks(8).zip($out.chunks_mut(8)) {
            match tile.len() {
                1 => $kernel::<$($($g,)+)? 1>($panel, tile, dst $(, $arg)*),
                2 => $kernel::<$($($g,)+)? 2>($panel, tile, dst $(, $arg)*),
                3 => $kernel::<$($($g,)+)? 3>($panel, tile, dst $(, $arg)*),
                4 => $kernel::<$($($g,)+)? 4>($panel, tile, dst $(, $arg)*),
                5 => $kernel::<$($($g,)+)? 5>($panel, tile, dst $(, $arg)*),
                6 => $kernel::<$($($g,)+)? 6>($panel, tile, dst $(, $arg)*),
                7 => $kernel::<$($($g,)+)? 7>($panel, tile, dst $(, $arg)*),
                _ => $kernel::<$($($g,)+)? 8>($panel, tile, dst $(, $arg)*),
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use by_row_tiles;

/// As a tile of `R` activation rows loads line `j` of a panel block (`block`, its `words`
/// lines), asks for the same line two blocks ahead into L2. With 2 or more rows, multiplying a
/// block takes long enough that the hardware prefetcher alone leaves the kernel waiting on its
/// loads: with this, an 8-row tile reads Q4_K weights from memory at 260–280 int8 GMAC/s
/// instead of 170–190, and 2- and 3-row tiles as fast as one row (about 1.0 ms for `gate_up`
/// against 1.1–1.8 ms without; Zen 4). One row waits less on memory than the prefetches cost
/// it (about 10% slower with them); the nearer L1 hint
/// evicts the activation rows that every panel reads again, and a burst of a whole block's
/// prefetches at once stalls on the outstanding misses.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn prefetch_ahead<const R: usize>(block: &[Line], words: usize, j: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    if R >= 2 {
        let ahead = block.as_ptr().wrapping_add(2 * words + j);
        // SAFETY: a prefetch is a hint; it never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(ahead.cast()) };
    }
}

/// Whether this CPU has the panel kernels (AVX2 at least).
pub(super) fn usable() -> bool {
    cfg!(target_arch = "x86_64") && super::simd_level() >= SimdLevel::Avx2
}

/// 64 bytes: one 4-byte word of each of a panel's 16 rows, aligned for vector loads.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line(pub(super) [u8; 64]);

/// A `[rows, cols]` Q4_K or Q6_K weight in panels of 16 rows (see the module docs).
pub struct PanelMatrix {
    /// Panel after panel; within a panel, block after block; [`words`] lines per block.
    lines: Vec<Line>,
    /// The last `rows % 16` rows, in GGML's layout.
    tail: Vec<u8>,
    format: BlockFormat,
    rows: usize,
    cols: usize,
}

impl std::fmt::Debug for PanelMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PanelMatrix([{}, {}] {:?})", self.rows, self.cols, self.format)
    }
}

impl PanelMatrix {
    /// `w` repacked into panels where this CPU has the panel kernels (AVX2); `None` otherwise
    /// (the scalar row kernels then read GGML's layout directly).
    pub fn pack(w: QuantizedMatrix) -> Option<PanelMatrix> {
        usable().then(|| Self::permute(w))
    }

    /// The permutation itself, whatever the CPU (its inverse is tested everywhere).
    fn permute(w: QuantizedMatrix) -> PanelMatrix {
        let (rows, cols, format) = (w.rows, w.cols, w.format);
        assert_eq!(
            w.data.len(),
            rows * cols / QK * format.block_bytes(),
            "a [{rows}, {cols}] {format:?} weight"
        );
        let panels = rows / COLS;
        let mut lines = vec![Line([0; 64]); panels * cols / QK * words(format)];
        // On both cores: a load permutes every quantized weight once.
        lines.par_iter_mut().enumerate().for_each(|(i, line)| {
            let (start, runs, row_bytes) = Self::ggml_source(format, cols, i);
            for (c, lane) in line.0.chunks_exact_mut(4).enumerate() {
                for (in_lane, in_block) in lane_runs(runs) {
                    lane[in_lane].copy_from_slice(&w.data[start + c * row_bytes..][in_block]);
                }
            }
        });
        let tail = w.data[panels * COLS * cols / QK * format.block_bytes()..].to_vec();
        PanelMatrix { lines, tail, format, rows, cols }
    }

    /// Where line `i` comes from in GGML's layout: the offset of lane 0's block, the runs of
    /// it that the lane holds ([`source_bytes`]), and the stride to the next lane's block (one
    /// weight row).
    fn ggml_source(format: BlockFormat, cols: usize, i: usize) -> (usize, [(usize, usize); 2], usize) {
        let (blocks, block_bytes, words) = (cols / QK, format.block_bytes(), words(format));
        let row_bytes = blocks * block_bytes;
        let (panel_block, line) = (i / words, i % words);
        let (p, b) = (panel_block / blocks, panel_block % blocks);
        (p * COLS * row_bytes + b * block_bytes, source_bytes(format, line), row_bytes)
    }

    /// The weight back in GGML's layout (export, dequantization).
    pub fn to_ggml(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.rows * self.cols / QK * self.format.block_bytes()];
        for (i, line) in self.lines.iter().enumerate() {
            let (start, runs, row_bytes) = Self::ggml_source(self.format, self.cols, i);
            for (c, lane) in line.0.chunks_exact(4).enumerate() {
                unpermute_lane(lane, runs, &mut out[start + c * row_bytes..]);
            }
        }
        let start = out.len() - self.tail.len();
        out[start..].copy_from_slice(&self.tail);
        out
    }

    /// Row `row`'s blocks in GGML's layout (one row of [`PanelMatrix::to_ggml`]).
    pub fn row_ggml(&self, row: usize) -> Vec<u8> {
        let row_bytes = self.cols / QK * self.format.block_bytes();
        let panels = self.rows / COLS;
        if row >= panels * COLS {
            let at = (row - panels * COLS) * row_bytes;
            return self.tail[at..at + row_bytes].to_vec();
        }
        let (panel, lane) = (row / COLS, row % COLS);
        let per_panel = self.panel_lines();
        let mut out = vec![0u8; row_bytes];
        for (i, line) in self.lines.iter().enumerate().skip(panel * per_panel).take(per_panel) {
            let (start, runs, _) = Self::ggml_source(self.format, self.cols, i);
            unpermute_lane(
                &line.0[4 * lane..4 * lane + 4],
                runs,
                &mut out[start - panel * COLS * row_bytes..],
            );
        }
        out
    }

    /// Lines of one panel: one per word of each of its blocks.
    fn panel_lines(&self) -> usize {
        self.cols / QK * words(self.format)
    }

    /// The blocks' format.
    pub fn format(&self) -> BlockFormat {
        self.format
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the weight occupies (as in GGML's layout, plus Q6_K's padding).
    pub fn size_in_bytes(&self) -> usize {
        self.lines.len() * std::mem::size_of::<Line>() + self.tail.len()
    }

    /// `x` (`[m, cols]` row-major f32) times the weight transposed: `[m, rows]`.
    pub fn matmul(&self, x: &[f32]) -> Result<Vec<f32>> {
        self.matmul_with(super::simd_level(), x)
    }

    /// [`PanelMatrix::matmul`] with the kernels of `level` (capped at the CPU's): AMX tiles,
    /// AVX-512 VNNI or AVX2 for the panels, that level's row kernel for the rows past them.
    /// Tests compare the levels on one machine.
    pub fn matmul_with(&self, level: SimdLevel, x: &[f32]) -> Result<Vec<f32>> {
        let level = level.min(super::simd::detected());
        let (n, k) = (self.rows, self.cols);
        if !x.len().is_multiple_of(k) {
            return Err(candle_core::Error::Msg(format!(
                "quantized matmul: {} activations for a [{n}, {k}] {:?} weight",
                x.len(),
                self.format
            ))
            .into());
        }
        let m = x.len() / k;
        // Not zeroed first: every element is written below, and a prefill's products are tens
        // of megabytes (zeroing them was 2% of a prefill).
        let mut out = Vec::with_capacity(m * n);
        let out_ptr = SharedOut::spare(&mut out);
        let panels = n / COLS;
        // The rows past the last panel go through the row kernels.
        let tail =
            QuantizedMatrix { data: &self.tail, format: self.format, rows: n - panels * COLS, cols: k };
        match self.format {
            format @ (BlockFormat::Q8_0 | BlockFormat::Small(_)) => {
                let acts = QuantizedRows::<BlockQ8x32>::quantize(x, k);
                self.panels_matmul32(level, &acts, out_ptr);
                by_rows(&acts, tail.into(), out_ptr, n, panels * COLS, |w, a, o| {
                    format.dot_rows32(level, w, a, o)
                });
            }
            format => {
                let acts = Q8KRows::quantize(x, k);
                self.panels_matmul(level, &acts, out_ptr);
                by_rows(&acts, tail.into(), out_ptr, n, panels * COLS, |w, a, o| {
                    format.dot_rows(level, w, a, o)
                });
            }
        }
        // SAFETY: the panels wrote columns `0..16·panels` of every row and `by_rows` the rest.
        unsafe { out.set_len(m * n) };
        Ok(out)
    }

    /// The whole panels of a weight in a 32-weight format (Q8_0, Q4_0 to Q5_1), in parallel,
    /// with its panel kernel.
    #[cfg(target_arch = "x86_64")]
    fn panels_matmul32(&self, level: SimdLevel, acts: &QuantizedRows<BlockQ8x32>, out: SharedOut) {
        let rows: Vec<&[BlockQ8x32]> = (0..acts.rows()).map(|r| acts.row(r)).collect();
        self.for_panel_groups(rows.len(), 0, out, |panel, results| {
            // SAFETY: as in `panels_matmul`.
            unsafe {
                match self.format {
                    BlockFormat::Q8_0 if level >= SimdLevel::Avx512Vnni => {
                        super::q8_0_panel::dot(panel, &rows, results)
                    }
                    BlockFormat::Q8_0 => super::q8_0_panel_avx2::dot(panel, &rows, results),
                    BlockFormat::Small(format) if level >= SimdLevel::Avx512Vnni => {
                        super::q4_q5_panel::dot(format, panel, &rows, results)
                    }
                    BlockFormat::Small(format) => super::q4_q5_panel_avx2::dot(format, panel, &rows, results),
                    BlockFormat::Q4K | BlockFormat::Q6K => {
                        unreachable!("k-quant panels take blocks of 256 activations")
                    }
                }
            }
        });
    }

    /// The whole panels of a k-quant, in parallel, with the panel kernels: for Q4_K on a CPU with AMX, the
    /// tile kernel takes the activation rows in steps of [`STEP_ROWS`](super::q4k_amx::STEP_ROWS)
    /// and the VNNI kernel the rest (both give the same bits).
    #[cfg(target_arch = "x86_64")]
    fn panels_matmul(&self, level: SimdLevel, acts: &Q8KRows, out: SharedOut) {
        let m = acts.rows();
        let rows: Vec<&[super::BlockQ8K]> = (0..m).map(|r| acts.row(r)).collect();
        let tiled = match (level, self.format) {
            (SimdLevel::Amx, BlockFormat::Q4K) => m / super::q4k_amx::STEP_ROWS * super::q4k_amx::STEP_ROWS,
            _ => 0,
        };
        if tiled > 0 {
            self.tiles_matmul(&rows[..tiled], out);
        }
        let rest = &rows[tiled..];
        if rest.is_empty() {
            return;
        }
        let vnni = level >= SimdLevel::Avx512Vnni;
        self.for_panel_groups(rest.len(), tiled, out, |panel, results| {
            // SAFETY: a `PanelMatrix` exists only where the CPU has AVX2, FMA and F16C
            // (`pack`), and `matmul_with` capped `level` at the CPU's; every activation row has
            // the panel's number of blocks (`matmul_with` checked the width).
            unsafe {
                match self.format {
                    BlockFormat::Q4K if vnni => super::q4k_panel::dot(panel, rest, results),
                    BlockFormat::Q4K => super::q4k_panel_avx2::dot(panel, rest, results),
                    BlockFormat::Q6K if vnni => super::q6k_panel::dot(panel, rest, results),
                    BlockFormat::Q6K => super::q6k_panel_avx2::dot(panel, rest, results),
                    BlockFormat::Q8_0 | BlockFormat::Small(_) => {
                        unreachable!("the 32-weight formats' panels take blocks of 32 activations")
                    }
                }
            }
        });
    }

    /// Q4_K panels times `rows` (a multiple of 32 of them) on AMX tiles, in chunks of rows
    /// that stay in the L2 cache while every panel passes over them.
    #[cfg(target_arch = "x86_64")]
    fn tiles_matmul(&self, rows: &[&[super::BlockQ8K]], out: SharedOut) {
        use super::q4k_amx::PackedRows;
        let chunk = PackedRows::chunk_rows(self.cols);
        for (c, chunk_rows) in rows.chunks(chunk).enumerate() {
            let packed = PackedRows::new(chunk_rows);
            self.for_panel_groups(chunk_rows.len(), c * chunk, out, |panel, results| {
                // SAFETY: the caller holds the AMX level, which `amx::usable` set and which
                // includes AVX-512 VNNI; every row has the panel's number of blocks.
                unsafe { super::q4k_amx::dot(panel, &packed, results) }
            });
        }
    }

    /// Runs `dot(panel, results)` for every panel, in parallel, each time for the `rows`
    /// activation rows from `first_row` on, and writes the results into `out`. Tasks take
    /// [`GROUP`] neighbouring panels and write their results row by row, so that each output
    /// row (a page apart from the next in a prefill's product) is visited once per group rather
    /// than once per panel: per panel, the scattered stores missed the TLB on every row.
    #[cfg(target_arch = "x86_64")]
    fn for_panel_groups(
        &self,
        rows: usize,
        first_row: usize,
        out: SharedOut,
        dot: impl Fn(&[Line], &mut [[f32; COLS]]) + Sync,
    ) {
        let lines = self.panel_lines();
        self.lines.par_chunks(lines * GROUP).enumerate().for_each_init(
            || vec![vec![[0f32; COLS]; rows]; GROUP],
            |results, (group, panels)| {
                let count = panels.len() / lines;
                for (panel, results) in panels.chunks_exact(lines).zip(results.iter_mut()) {
                    dot(panel, results);
                }
                // SAFETY: the group's panels alone write columns `16·GROUP·group…` of rows
                // `first_row…`, in bounds.
                unsafe { write_group(&results[..count], first_row, group * GROUP * COLS, self.rows, out) };
            },
        );
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn panels_matmul(&self, _level: SimdLevel, _acts: &Q8KRows, _out: SharedOut) {
        unreachable!("panels are packed only on x86-64 CPUs with AVX2")
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn panels_matmul32(&self, _level: SimdLevel, _acts: &QuantizedRows<BlockQ8x32>, _out: SharedOut) {
        unreachable!("panels are packed only on x86-64 CPUs with AVX2")
    }
}

/// Each of `runs` ([`source_bytes`]) as the byte range it fills in a lane, one after the
/// other, and the range it comes from in the GGML block.
fn lane_runs(runs: [(usize, usize); 2]) -> impl Iterator<Item = (Range<usize>, Range<usize>)> {
    runs.into_iter().scan(0, |at_lane, (offset, len)| {
        *at_lane += len;
        Some((*at_lane - len..*at_lane, offset..offset + len))
    })
}

/// Puts a lane's bytes back where `runs` ([`source_bytes`]) took them from in `block`.
fn unpermute_lane(lane: &[u8], runs: [(usize, usize); 2], block: &mut [u8]) {
    for (in_lane, in_block) in lane_runs(runs) {
        block[in_block].copy_from_slice(&lane[in_lane]);
    }
}

/// Panels per parallel task (see [`PanelMatrix::for_panel_groups`]).
const GROUP: usize = 8;

/// Writes a group's results (`results[g][r]`: panel `g`, row `r`) into the rows `first_row…`
/// of `out` (`width` columns), from column `first_col` on.
///
/// # Safety
/// The positions are in bounds and no other task writes them.
unsafe fn write_group(
    results: &[Vec<[f32; COLS]>],
    first_row: usize,
    first_col: usize,
    width: usize,
    out: SharedOut,
) {
    for r in 0..results.first().map_or(0, Vec::len) {
        let dst = out.at((first_row + r) * width + first_col);
        for (g, panel) in results.iter().enumerate() {
            std::ptr::copy_nonoverlapping(panel[r].as_ptr(), dst.add(g * COLS), COLS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::SmallBlock;

    #[test]
    fn the_permutation_is_undone_exactly() {
        let small = [SmallBlock::Q4_0, SmallBlock::Q4_1, SmallBlock::Q5_0, SmallBlock::Q5_1];
        let formats = [BlockFormat::Q4K, BlockFormat::Q6K, BlockFormat::Q8_0].into_iter();
        for format in formats.chain(small.map(BlockFormat::Small)) {
            for rows in [1, 16, 37, 48] {
                let blocks = 3;
                let data: Vec<u8> = (0..rows * blocks * format.block_bytes())
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
                    .collect();
                let w = QuantizedMatrix { data: &data, format, rows, cols: blocks * QK };
                let packed = PanelMatrix::permute(w);
                let padding = rows / COLS * COLS * blocks * (4 * words(format) - format.block_bytes());
                assert_eq!(packed.size_in_bytes(), data.len() + padding, "{format:?} {rows} rows");
                assert_eq!(packed.to_ggml(), data, "{format:?} {rows} rows");
                let row_bytes = blocks * format.block_bytes();
                for (row, want) in data.chunks_exact(row_bytes).enumerate() {
                    assert_eq!(packed.row_ggml(row), want, "{format:?} row {row} of {rows}");
                }
            }
        }
    }

    #[test]
    fn word_j_of_sixteen_rows_shares_a_line() {
        let (format, blocks) = (BlockFormat::Q6K, 2);
        let block_bytes = format.block_bytes();
        let row_bytes = blocks * block_bytes;
        let data: Vec<u8> = (0..32 * row_bytes).map(|i| (i % 251) as u8).collect();
        let packed = PanelMatrix::permute(QuantizedMatrix { data: &data, format, rows: 32, cols: 2 * QK });
        // Panel 1, block 1, row 16 + 3: `d` (two bytes, then padding) in line 4, the first
        // `qh` word in line 6, and the last `ql` word last.
        let block = &packed.lines[(blocks + 1) * words(format)..(blocks + 2) * words(format)];
        let at = 19 * row_bytes + block_bytes;
        assert_eq!(&block[4].0[12..16], &[data[at + 208], data[at + 209], 0, 0]);
        assert_eq!(&block[6].0[12..16], &data[at + 128..at + 132]);
        assert_eq!(&block[52].0[12..16], &data[at + 124..at + 128]);
    }
}
