//! Q4_0, Q4_1, Q5_0 and Q5_1 × [`BlockQ8x32`] for one panel of 16 weight rows on CPUs with
//! AVX-512 VNNI: [`super::q4_q5_panel_avx2`]'s panels (the same layout) with all 16 rows in
//! one 512-bit line and `vpdpbusd`, which adds four code × activation products straight into
//! i32 lanes: no i16 sums to split for the 5-bit codes and no widening step.
//!
//! Each block's products and offset (`o·Σa`, taken off up front) add up in integers, and the
//! float steps are the AVX2 kernel's in the same order, so both give the same bits.

use std::arch::x86_64::*;

use super::panels::{by_row_tiles, prefetch_ahead, Line, COLS};
use super::q4_q5::SmallBlock;
use super::q4_q5_panel_avx2::fifth_bit_selectors;
use super::q8_0::{BlockQ8x32, QK8_0};
use super::x86::f16_halves512;

/// GGML blocks per panel block.
const BLOCKS: usize = 8;

/// `out[r][c] = acts[r] · row c` of the panel whose lines are `panel`, in `format`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VNNI and F16C; `panel` holds [`super::panels::words`] lines
/// per block and every activation row has that many blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn dot(
    format: SmallBlock,
    panel: &[Line],
    acts: &[&[BlockQ8x32]],
    out: &mut [[f32; COLS]],
) {
    match format {
        SmallBlock::Q4_0 => by_row_tiles!(dot_rows::<false, false>, panel, acts, out),
        SmallBlock::Q4_1 => by_row_tiles!(dot_rows::<false, true>, panel, acts, out),
        SmallBlock::Q5_0 => by_row_tiles!(dot_rows::<true, false>, panel, acts, out),
        SmallBlock::Q5_1 => by_row_tiles!(dot_rows::<true, true>, panel, acts, out),
    }
}

/// The fifth bits of codes `first…first + 3` (`first` a multiple of 4) of each row, as 0x10 in
/// bytes 0–3 of its lane; `high` holds each row's 32 high bits.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn fifth_bits(high: __m512i, first: usize) -> __m512i {
    let (mask, bits) = fifth_bit_selectors(first);
    let byte = _mm512_shuffle_epi8(high, _mm512_broadcast_i64x4(_mm256_loadu_si256(mask.as_ptr().cast())));
    let bits = _mm512_set1_epi32(bits);
    _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(byte, bits), _mm512_set1_epi8(0x10))
}

/// [`dot`] for a tile of `R` activation rows, in the format that `HIGH` (5-bit codes) and
/// `MIN` (a stored minimum) name.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn dot_rows<const HIGH: bool, const MIN: bool, const R: usize>(
    panel: &[Line],
    acts: &[&[BlockQ8x32]],
    out: &mut [[f32; COLS]],
) {
    let format = const { SmallBlock::with(HIGH, MIN) };
    let words = super::panels::words(super::BlockFormat::Small(format));
    let (scale_lines, codes_at) = (format.scale_lines(), format.nibble_lines_at());
    let offset = format.offset().unwrap_or(0);
    let nibble = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); R];
    for (b, lines) in panel.chunks_exact(words).enumerate() {
        let load = |j: usize| {
            prefetch_ahead::<R>(lines, words, j);
            _mm512_load_si512(lines.as_ptr().add(j).cast())
        };
        let blocks: [&BlockQ8x32; R] = std::array::from_fn(|r| acts[r].get_unchecked(b));
        for pair in 0..BLOCKS / 2 {
            // Each block's `d` (and `m`): two blocks to a line, or a line each.
            let scales = if MIN {
                [f16_halves512(load(2 * pair)), f16_halves512(load(2 * pair + 1))]
            } else {
                let (even, odd) = f16_halves512(load(pair));
                [(even, _mm512_setzero_ps()), (odd, _mm512_setzero_ps())]
            };
            for (half, (d, m)) in scales.into_iter().enumerate() {
                let j = 2 * pair + half;
                let high = if HIGH { load(scale_lines + j) } else { _mm512_setzero_si512() };
                // The offset's `o·Σa` comes off up front.
                let mut sums: [__m512i; R] =
                    std::array::from_fn(|r| _mm512_set1_epi32(-offset * blocks[r].sums[j]));
                for g in 0..4 {
                    let v = load(codes_at + 4 * j + g);
                    let mut low = _mm512_and_si512(v, nibble);
                    let mut top = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble);
                    if HIGH {
                        low = _mm512_or_si512(low, fifth_bits(high, 4 * g));
                        top = _mm512_or_si512(top, fifth_bits(high, 16 + 4 * g));
                    }
                    for r in 0..R {
                        let q = blocks[r].qs.as_ptr().add(QK8_0 * j + 4 * g).cast::<i32>();
                        sums[r] =
                            _mm512_dpbusd_epi32(sums[r], low, _mm512_set1_epi32(std::ptr::read_unaligned(q)));
                        sums[r] = _mm512_dpbusd_epi32(
                            sums[r],
                            top,
                            _mm512_set1_epi32(std::ptr::read_unaligned(q.add(4))),
                        );
                    }
                }
                for r in 0..R {
                    let (da, sa) = (blocks[r].d[j], blocks[r].sums[j]);
                    acc[r] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(sums[r]),
                        _mm512_mul_ps(d, _mm512_set1_ps(da)),
                        acc[r],
                    );
                    if MIN {
                        acc[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(da * sa as f32), acc[r]);
                    }
                }
            }
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}
