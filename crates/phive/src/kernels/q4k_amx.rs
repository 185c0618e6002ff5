//! Q4_K × Q8_K for one panel of 16 weight rows and 32 activation rows at a time, on AMX tiles
//! ([`super::amx`]): the prefill kernel of Xeons that have them.
//!
//! A tile multiply sums 64 products per output without a break, but Q4_K scales its codes per
//! sub-block of 32. So the scales go into the weights before the multiply: each code times its
//! sub-block's 6-bit scale (at most 945) is split into its low byte and its high byte (at most
//! 3), both valid unsigned operands, and two multiplies over the whole block give `Σ lo·a` and
//! `Σ hi·a`, whose sum `lo + 256·hi` is the VNNI kernel's integer `Σ sc·(q·a)` exactly. The
//! minimums and the float steps are then the VNNI kernel's own ([`super::q4k_panel::add_block`]),
//! so this kernel's results are bit for bit the VNNI kernel's, whichever one a row meets.
//!
//! Each weight tile is loaded once for 32 activation rows (on the Xeon a tile load costs about
//! as much as a multiply, so 16 rows per load ran 1.1–1.3× slower). Work overlaps across the
//! two kinds of unit: a block's scaled weights (8 KiB) are readied by the vector units while
//! the tiles multiply, and the tiles multiply the next 32 rows while the vector units turn the
//! last 32 rows' sums into floats.

use std::arch::x86_64::*;

use super::amx::{tile_dot_su, tile_load, tile_store, tile_zero, TileConfig};
use super::panels::{prefetch_ahead, words, Line, COLS};
use super::q4k_panel::{add_block, header};
use super::q8k::BlockQ8K;
use super::BlockFormat;

/// Lines per block.
const WORDS: usize = words(BlockFormat::Q4K);

/// Activation rows per step of the kernel (two tiles of 16), and the fewest it takes:
/// readying a block's weights costs about what multiplying 16 rows does, so the tiles pay
/// from 32 rows on (the 16-row kernel ran at 0.8–1.07× the VNNI one at 16 rows, at
/// 1.24–1.42× at 32; Xeon, `kernel_bench`, BENCHMARKS.md).
pub(super) const STEP_ROWS: usize = 32;

/// One tile's bytes: 16 rows of 64.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Tile([[u8; 64]; 16]);

/// A block of the panel made ready for the tiles: for each run of 64 inputs, the low and the
/// high bytes of the codes times their sub-block's scale, and the header's other values.
struct ScaledBlock {
    low: [Tile; 4],
    high: [Tile; 4],
    d: __m512,
    dmin: __m512,
    /// The minimums as i16 pairs (see [`header`]).
    mins: [__m512i; 4],
}

impl ScaledBlock {
    fn new() -> Box<ScaledBlock> {
        // SAFETY: every field is plain bytes, valid when zero.
        unsafe { Box::new(std::mem::zeroed()) }
    }
}

/// Activation rows laid out for tile loads: for each block, each row's 256 codes on their
/// own 64-byte lines (a tile row is then one aligned line), and beside them the scale and
/// sub-block sums the float steps read. A chunk of rows small enough to stay in the core's
/// L2 cache is packed once and serves every panel.
pub(super) struct PackedRows {
    /// `[block][row][run]`: the 64 codes of run `i` of a row's block.
    codes: Vec<Line>,
    /// `[block][row]`: the block's `d`.
    scales: Vec<f32>,
    /// `[block][row]`: the block's 32-value sums.
    sub_sums: Vec<[i16; 8]>,
    rows: usize,
}

impl PackedRows {
    /// Rows per chunk for `cols` inputs: about 1 MiB of codes, in steps of [`STEP_ROWS`].
    pub(super) fn chunk_rows(cols: usize) -> usize {
        ((1 << 20) / cols / STEP_ROWS).max(1) * STEP_ROWS
    }

    /// Packs the activation rows `rows` (a multiple of [`STEP_ROWS`] of them).
    pub(super) fn new(rows: &[&[BlockQ8K]]) -> PackedRows {
        debug_assert!(rows.len().is_multiple_of(STEP_ROWS));
        let blocks = rows.first().map_or(0, |r| r.len());
        let count = rows.len();
        let mut codes = vec![Line([0; 64]); blocks * count * 4];
        let mut scales = vec![0f32; blocks * count];
        let mut sub_sums = vec![[0i16; 8]; blocks * count];
        for (r, row) in rows.iter().enumerate() {
            for (b, block) in row.iter().enumerate() {
                let at = b * count + r;
                for (i, line) in codes[4 * at..4 * at + 4].iter_mut().enumerate() {
                    line.0.copy_from_slice(bytemuck::cast_slice(&block.qs[64 * i..64 * i + 64]));
                }
                scales[at] = block.d;
                sub_sums[at] = block.sub_sums;
            }
        }
        PackedRows { codes, scales, sub_sums, rows: count }
    }
}

/// `out[r][c] = row r of acts · row c` of the panel `panel`.
///
/// # Safety
/// [`super::amx::usable`] returned true and the CPU has AVX-512 F/BW/VNNI and F16C; `panel`
/// holds [`WORDS`] lines per block, as many blocks as `acts` has, and `out` has a slot per row.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn dot(panel: &[Line], acts: &PackedRows, out: &mut [[f32; COLS]]) {
    debug_assert!(out.len() == acts.rows);
    TileConfig::FULL.load();
    out.fill([0.0; COLS]);
    let blocks: Vec<&[Line]> = panel.chunks_exact(WORDS).collect();
    let steps = acts.rows / STEP_ROWS;
    let mut scaled = [ScaledBlock::new(), ScaledBlock::new()];
    let mut sums = [Tile([[0; 64]; 16]); 4];
    // The codes of step `j` (block `j / steps`, rows `32·(j % steps)…`).
    let codes = |j: usize| &acts.codes[4 * ((j / steps) * acts.rows + (j % steps) * STEP_ROWS)..];
    prepare(blocks[0], &mut scaled[0]);
    multiply_step(&scaled[0], codes(0));
    let last = blocks.len() * steps - 1;
    for j in 0..=last {
        let (b, step) = (j / steps, j % steps);
        if step == 0 && b + 1 < blocks.len() {
            // The vector units ready the next block while the tiles multiply step j (its
            // first step, which may be its last).
            prepare(blocks[b + 1], &mut scaled[(b + 1) % 2]);
        }
        store_sums(&mut sums);
        // Step j + 1 goes to the tiles before step j's sums are turned into floats, so that
        // the vector units work while the tiles do.
        if j < last {
            multiply_step(&scaled[((j + 1) / steps) % 2], codes(j + 1));
        }
        let block = &scaled[b % 2];
        let first = b * acts.rows + step * STEP_ROWS;
        let dst = &mut out[step * STEP_ROWS..(step + 1) * STEP_ROWS];
        for (r, acc) in dst.iter_mut().enumerate() {
            let (low, high) = (&sums[2 * (r / 16)].0[r % 16], &sums[2 * (r / 16) + 1].0[r % 16]);
            let sumi = _mm512_add_epi32(
                _mm512_load_si512(low.as_ptr().cast()),
                _mm512_slli_epi32::<8>(_mm512_load_si512(high.as_ptr().cast())),
            );
            let (a_d, sub_sums) =
                (*acts.scales.get_unchecked(first + r), acts.sub_sums.get_unchecked(first + r));
            let v = add_block(
                _mm512_loadu_ps(acc.as_ptr()),
                sumi,
                &block.mins,
                (block.d, block.dmin),
                a_d,
                sub_sums,
            );
            _mm512_storeu_ps(acc.as_mut_ptr(), v);
        }
    }
    super::amx::release();
}

/// Readies a block's lines for the tiles: its header, and its codes scaled (see
/// [`scale_codes`]).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn prepare(lines: &[Line], scaled: &mut ScaledBlock) {
    let load = |j: usize| {
        prefetch_ahead::<STEP_ROWS>(lines, WORDS, j);
        _mm512_load_si512(lines.as_ptr().add(j).cast())
    };
    let (d, dmin, scales, mins) = header([load(0), load(1), load(2), load(3)]);
    (scaled.d, scaled.dmin, scaled.mins) = (d, dmin, mins);
    scale_codes(lines, &scales, scaled);
}

/// Fills `scaled` from a block's code lines: run `i`'s tiles have, in rows 0–7, the low
/// nibbles of lines `4 + 8i …` (sub-block `2i`) and in rows 8–15 their high nibbles (sub-block
/// `2i + 1`), each code times its row's scale (at most 15 · 63 = 945), split into its low byte
/// (`low`) and its high byte (`high`, at most 3).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn scale_codes(lines: &[Line], scales: &[__m512i; 8], scaled: &mut ScaledBlock) {
    let nibble = _mm512_set1_epi8(0x0F);
    let low_bytes = _mm512_set1_epi16(0x00FF);
    // `vpmaddubsw` against a scale in bytes 0 and 2 of each 32-bit lane (`even`) yields the
    // even bytes' products as 16-bit lanes; in bytes 1 and 3 (`odd`), the odd bytes'.
    let split = |codes: __m512i, even: __m512i| {
        let e = _mm512_maddubs_epi16(codes, even);
        let o = _mm512_maddubs_epi16(codes, _mm512_slli_epi32::<8>(even));
        // Low bytes: (e & 0x00FF) | (o << 8). High bytes: (e >> 8) | (o & 0xFF00).
        let low = _mm512_ternarylogic_epi32::<0xEC>(e, _mm512_slli_epi16::<8>(o), low_bytes);
        let high = _mm512_ternarylogic_epi32::<0xF4>(_mm512_srli_epi16::<8>(e), o, low_bytes);
        (low, high)
    };
    let store =
        |tile: &mut Tile, row: usize, x: __m512i| _mm512_store_si512(tile.0[row].as_mut_ptr().cast(), x);
    for i in 0..4 {
        let even = |s: __m512i| _mm512_or_si512(s, _mm512_slli_epi32::<16>(s));
        let (scale_lo, scale_hi) = (even(scales[2 * i]), even(scales[2 * i + 1]));
        for g in 0..8 {
            prefetch_ahead::<STEP_ROWS>(lines, WORDS, 4 + 8 * i + g);
            let v = _mm512_load_si512(lines.as_ptr().add(4 + 8 * i + g).cast());
            let (codes_lo, codes_hi) =
                (_mm512_and_si512(v, nibble), _mm512_and_si512(_mm512_srli_epi32::<4>(v), nibble));
            let (low, high) = split(codes_lo, scale_lo);
            store(&mut scaled.low[i], g, low);
            store(&mut scaled.high[i], g, high);
            let (low, high) = split(codes_hi, scale_hi);
            store(&mut scaled.low[i], 8 + g, low);
            store(&mut scaled.high[i], 8 + g, high);
        }
    }
}

/// 32 packed activation rows (their lines from `codes` on, for one block) against the scaled
/// block: the first 16 rows into tiles 0 (against the low bytes) and 1 (the high bytes), the
/// next 16 into tiles 2 and 3, all 32-bit. The activation tiles are 4 and 5, the weights' 6
/// and 7: each weight tile is loaded once for 32 rows, since a load costs the tiles nearly
/// as much as a multiply.
#[inline]
unsafe fn multiply_step(scaled: &ScaledBlock, codes: &[Line]) {
    // A row's four runs are consecutive lines, so a tile of one run steps 256 bytes per row.
    let (rows, next_rows) = (codes.as_ptr(), codes.as_ptr().add(4 * 16));
    tile_zero!(0);
    tile_zero!(1);
    tile_zero!(2);
    tile_zero!(3);
    for i in 0..4 {
        tile_load!(6, scaled.low[i].0.as_ptr(), 64usize);
        tile_load!(7, scaled.high[i].0.as_ptr(), 64usize);
        tile_load!(4, rows.add(i), 256usize);
        tile_dot_su!(0, 4, 6);
        tile_dot_su!(1, 4, 7);
        tile_load!(5, next_rows.add(i), 256usize);
        tile_dot_su!(2, 5, 6);
        tile_dot_su!(3, 5, 7);
    }
}

/// Tiles 0–3 (see [`multiply_step`]) into `sums`: [low, high] of the first 16 rows, then of
/// the next 16.
#[inline]
unsafe fn store_sums(sums: &mut [Tile; 4]) {
    tile_store!(0, sums[0].0.as_mut_ptr(), 64usize);
    tile_store!(1, sums[1].0.as_mut_ptr(), 64usize);
    tile_store!(2, sums[2].0.as_mut_ptr(), 64usize);
    tile_store!(3, sums[3].0.as_mut_ptr(), 64usize);
}
