//! Q8_0 × Q8_0 for one panel of 16 weight rows ([`super::panels`]) on CPUs with AVX2 but no
//! AVX-512: the kernel of [`super::q8_0_panel`] in 256-bit vectors, each line's 16 rows as two
//! halves of 8.
//!
//! `vpmaddubsw` multiplies unsigned by signed bytes, and the VNNI kernel's `q + 128` would
//! overflow its i16 pairs (2·255·127). So, as llama.cpp does, each code line becomes `|q|`
//! once and each broadcast activation takes the code's sign (`vpsignb`): `|q|·sign(q)·a`.
//! A pair of those reaches 2·128·127 = 32,512, so every line's pairs are widened to i32 at
//! once (`vpmaddwd` by ones). The integers and float steps are the VNNI kernel's.

use std::arch::x86_64::*;

use super::panels::{by_row_tiles, Line, COLS};
use super::q8_0::{BlockQ8x32, QK8_0};
use super::x86::{f16_halves, half_line};
use super::BlockFormat;

/// Lines per block.
const WORDS: usize = super::panels::words(BlockFormat::Q8_0);

/// Blocks of the panel that every tile of activation rows takes in turn, as in the VNNI
/// kernel: the lines of four blocks stay in L1 from one tile to the next.
const CHUNK: usize = 4;

/// `out[r][c] = acts[r] · row c` of the panel whose lines are `panel`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `panel` holds [`WORDS`] lines per block and every
/// activation row has that many blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot(panel: &[Line], acts: &[&[BlockQ8x32]], out: &mut [[f32; COLS]]) {
    out.fill([0.0; COLS]);
    for (c, chunk) in panel.chunks(CHUNK * WORDS).enumerate() {
        by_row_tiles!(2; add_rows, chunk, acts, out, CHUNK * c)
    }
}

/// Adds the blocks of `panel` (a chunk whose first block is block `first` of the rows) times
/// the activation rows' blocks to `out`, for a tile of `R` rows. Both halves of each line
/// (rows 0–7 and 8–15) are taken at once: one or two activation rows (a decode step) ran
/// 1.5× faster so than in two passes of 8 rows with tiles of 4, and more rows as fast.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn add_rows<const R: usize>(
    panel: &[Line],
    acts: &[&[BlockQ8x32]],
    out: &mut [[f32; COLS]],
    first: usize,
) {
    let ones = _mm256_set1_epi16(1);
    let mut acc: [[__m256; 2]; R] =
        std::array::from_fn(|r| [_mm256_loadu_ps(out[r].as_ptr()), _mm256_loadu_ps(out[r].as_ptr().add(8))]);
    for (b, lines) in panel.chunks_exact(WORDS).enumerate() {
        let load = |j: usize| [half_line(lines, j, 0), half_line(lines, j, 1)];
        let blocks: [&BlockQ8x32; R] = std::array::from_fn(|r| acts[r].get_unchecked(first + b));
        for pair in 0..4 {
            // The scales of GGML blocks 2·pair (low f16 of each lane) and 2·pair + 1.
            let [(even0, odd0), (even1, odd1)] = load(pair).map(|v| f16_halves(v));
            for (k, d) in [[even0, even1], [odd0, odd1]].into_iter().enumerate() {
                let j = 2 * pair + k;
                let mut sums = [[_mm256_setzero_si256(); 2]; R];
                for g in 0..QK8_0 / 4 {
                    let codes = load(4 + 8 * j + g);
                    let magnitudes = codes.map(|c| _mm256_abs_epi8(c));
                    for r in 0..R {
                        let q = blocks[r].qs.as_ptr().add(QK8_0 * j + 4 * g).cast::<i32>();
                        let a = _mm256_set1_epi32(std::ptr::read_unaligned(q));
                        for h in 0..2 {
                            let pairs = _mm256_maddubs_epi16(magnitudes[h], _mm256_sign_epi8(a, codes[h]));
                            sums[r][h] = _mm256_add_epi32(sums[r][h], _mm256_madd_epi16(pairs, ones));
                        }
                    }
                }
                for r in 0..R {
                    let a_d = _mm256_set1_ps(blocks[r].d[j]);
                    for h in 0..2 {
                        let scale = _mm256_mul_ps(d[h], a_d);
                        acc[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[r][h]), scale, acc[r][h]);
                    }
                }
            }
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r][0]);
        _mm256_storeu_ps(out[r].as_mut_ptr().add(8), acc[r][1]);
    }
}
