//! Q8_0 × Q8_0 for one panel of 16 weight rows ([`super::panels`]) and any number of
//! activation rows: the outer-product kernel of [`super::q4k_panel`] for Q8_0.
//!
//! A panel block (eight GGML blocks of 16 rows) is 68 lines: four lines of scales, each lane
//! holding its row's `d` of GGML blocks `2i` (low half) and `2i + 1` (high half), then the
//! codes, eight lines per GGML block, each lane 4 code bytes of its row. `vpdpbusd` multiplies
//! unsigned by signed bytes, so each code line is flipped to `q + 128` and `128·Σ a` (the
//! activations' run sums) is taken back off.

use std::arch::x86_64::*;

use super::panels::{by_row_tiles, prefetch_ahead, words, Line, COLS};
use super::q8_0::{BlockQ8x32, QK8_0};
use super::x86::f16_halves512;
use super::BlockFormat;

/// Lines per block.
const WORDS: usize = words(BlockFormat::Q8_0);

/// Blocks of the panel that every tile of activation rows takes in turn before the next
/// blocks: a whole panel of 3,072 inputs (52 KB) does not stay in the core's L1 cache from one
/// tile to the next, four blocks (17 KB) do.
const CHUNK: usize = 4;

/// `out[r][c] = acts[r] · row c` of the panel whose lines are `panel`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VNNI and F16C; `panel` holds [`WORDS`] lines per block and
/// every activation row has that many blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn dot(panel: &[Line], acts: &[&[BlockQ8x32]], out: &mut [[f32; COLS]]) {
    out.fill([0.0; COLS]);
    for (c, chunk) in panel.chunks(CHUNK * WORDS).enumerate() {
        by_row_tiles!(add_rows, chunk, acts, out, CHUNK * c)
    }
}

/// Adds the blocks of `panel` (a chunk whose first block is block `first` of the rows) times
/// the activation rows' blocks to `out`, for a tile of `R` rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn add_rows<const R: usize>(
    panel: &[Line],
    acts: &[&[BlockQ8x32]],
    out: &mut [[f32; COLS]],
    first: usize,
) {
    let flip = _mm512_set1_epi8(i8::MIN);
    let mut acc: [__m512; R] = std::array::from_fn(|r| _mm512_loadu_ps(out[r].as_ptr()));
    for (b, lines) in panel.chunks_exact(WORDS).enumerate() {
        let load = |j: usize| {
            prefetch_ahead::<R>(lines, WORDS, j);
            _mm512_load_si512(lines.as_ptr().add(j).cast())
        };
        let blocks: [&BlockQ8x32; R] = std::array::from_fn(|r| acts[r].get_unchecked(first + b));
        for pair in 0..4 {
            let (even, odd) = f16_halves512(load(pair));
            for (half, d) in [even, odd].into_iter().enumerate() {
                let j = 2 * pair + half;
                let mut sums: [__m512i; R] =
                    std::array::from_fn(|r| _mm512_set1_epi32(-128 * blocks[r].sums[j]));
                for g in 0..QK8_0 / 4 {
                    let codes = _mm512_xor_si512(load(4 + 8 * j + g), flip);
                    for r in 0..R {
                        let q = blocks[r].qs.as_ptr().add(QK8_0 * j + 4 * g).cast::<i32>();
                        sums[r] = _mm512_dpbusd_epi32(
                            sums[r],
                            codes,
                            _mm512_set1_epi32(std::ptr::read_unaligned(q)),
                        );
                    }
                }
                for r in 0..R {
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(blocks[r].d[j]));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r]), scale, acc[r]);
                }
            }
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}
