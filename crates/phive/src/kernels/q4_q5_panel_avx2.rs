//! Q4_0, Q4_1, Q5_0 and Q5_1 × [`BlockQ8x32`] for one panel of 16 weight rows
//! ([`super::panels`]) on CPUs with AVX2: the outer product of [`super::q4k_panel_avx2`] for
//! GGML's 32-weight formats, whose row kernels ([`super::q4_q5`]) widen and scale every 32
//! products of every row.
//!
//! A panel block is eight GGML blocks (256 weights): first each block's scale `d` (two blocks
//! per line) or its `d` and minimum `m` (a block per line), then the 5-bit formats' 32 high
//! bits (a block per line), then each block's 16 nibble bytes as four lines. Line `g` of a
//! block holds codes `4g…4g + 3` in its low nibbles and `16 + 4g…` in its high ones, which
//! meet activations `4g…` and `16 + 4g…` of the block's run of 32.
//!
//! The codes are unsigned, so `vpmaddubsw` takes them against the signed activation bytes as
//! they are. A pair reaches 2·15·127 = 3,810 for 4-bit codes, so a block's eight products per
//! row add up in i16 (30,480); 5-bit pairs reach 7,874, so their low and high halves add up
//! apart (31,496 each). One `vpmaddwd` by ones per block and row widens them. As in the row
//! kernel, `d·(q − o)` takes `o·Σa` off in integers and `d·q + m` adds `m·d_a·Σa`.

use std::arch::x86_64::*;

use super::panels::{by_row_tiles, Line, COLS};
use super::q4_q5::SmallBlock;
use super::q8_0::{BlockQ8x32, QK8_0};
use super::x86::{f16_halves, half_line, lane_byte_mask};

/// GGML blocks per panel block.
const BLOCKS: usize = 8;

/// `vpshufb` masks that fill every byte of a lane with byte `k` of that lane's high bits.
const HIGH_BYTE_MASKS: [[i8; 32]; 4] = [spread(0), spread(1), spread(2), spread(3)];

const fn spread(k: usize) -> [i8; 32] {
    lane_byte_mask([Some(k), Some(k), Some(k), Some(k)])
}

/// Where the fifth bits of codes `first…first + 3` (`first` a multiple of 4) sit in a row's 32
/// high bits: the `vpshufb` mask that copies their byte into every byte of the row's lane, and
/// the lane of four bytes that tests bit `first + i` in byte `i`. Both kernels share them.
#[inline(always)]
pub(super) fn fifth_bit_selectors(first: usize) -> (&'static [i8; 32], i32) {
    let s = first % 8;
    (&HIGH_BYTE_MASKS[first / 8], i32::from_le_bytes([1 << s, 2 << s, 4 << s, 8 << s]))
}

/// `out[r][c] = acts[r] · row c` of the panel whose lines are `panel`, in `format`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `panel` holds [`super::panels::words`] lines per block
/// and every activation row has that many blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot(
    format: SmallBlock,
    panel: &[Line],
    acts: &[&[BlockQ8x32]],
    out: &mut [[f32; COLS]],
) {
    for half in 0..2 {
        match format {
            SmallBlock::Q4_0 => by_row_tiles!(3; dot_rows::<false, false>, panel, acts, out, half),
            SmallBlock::Q4_1 => by_row_tiles!(3; dot_rows::<false, true>, panel, acts, out, half),
            SmallBlock::Q5_0 => by_row_tiles!(3; dot_rows::<true, false>, panel, acts, out, half),
            SmallBlock::Q5_1 => by_row_tiles!(3; dot_rows::<true, true>, panel, acts, out, half),
        }
    }
}

/// The fifth bits of codes `first…first + 3` (`first` a multiple of 4) of each row, as 0x10 in
/// bytes 0–3 of its lane; `high` holds each row's 32 high bits.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn fifth_bits(high: __m256i, first: usize) -> __m256i {
    let (mask, bits) = fifth_bit_selectors(first);
    let byte = _mm256_shuffle_epi8(high, _mm256_loadu_si256(mask.as_ptr().cast()));
    let bits = _mm256_set1_epi32(bits);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(byte, bits), bits);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// [`dot`] for a tile of `R` activation rows and half `half` of the panel's rows, in the format
/// that `HIGH` (5-bit codes) and `MIN` (a stored minimum) name.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows<const HIGH: bool, const MIN: bool, const R: usize>(
    panel: &[Line],
    acts: &[&[BlockQ8x32]],
    out: &mut [[f32; COLS]],
    half: usize,
) {
    let format = const { SmallBlock::with(HIGH, MIN) };
    let words = super::panels::words(super::BlockFormat::Small(format));
    let (scale_lines, codes_at) = (format.scale_lines(), format.nibble_lines_at());
    let (nibble, ones) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi16(1));
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, lines) in panel.chunks_exact(words).enumerate() {
        let load = |j: usize| half_line(lines, j, half);
        let blocks: [&BlockQ8x32; R] = std::array::from_fn(|r| acts[r].get_unchecked(b));
        for j in 0..BLOCKS {
            let (d, m) = if MIN {
                f16_halves(load(j))
            } else {
                let (even, odd) = f16_halves(load(j / 2));
                (if j % 2 == 0 { even } else { odd }, _mm256_setzero_ps())
            };
            let high = if HIGH { load(scale_lines + j) } else { _mm256_setzero_si256() };
            // Low and high halves of the block's codes (summed together for 4-bit codes).
            let mut sums = [[_mm256_setzero_si256(); 2]; R];
            for g in 0..4 {
                let v = load(codes_at + 4 * j + g);
                let mut low = _mm256_and_si256(v, nibble);
                let mut top = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble);
                if HIGH {
                    low = _mm256_or_si256(low, fifth_bits(high, 4 * g));
                    top = _mm256_or_si256(top, fifth_bits(high, 16 + 4 * g));
                }
                for r in 0..R {
                    let q = blocks[r].qs.as_ptr().add(QK8_0 * j + 4 * g).cast::<i32>();
                    let a_low = _mm256_set1_epi32(std::ptr::read_unaligned(q));
                    let a_top = _mm256_set1_epi32(std::ptr::read_unaligned(q.add(4)));
                    let (p_low, p_top) = (_mm256_maddubs_epi16(low, a_low), _mm256_maddubs_epi16(top, a_top));
                    if HIGH {
                        sums[r][0] = _mm256_add_epi16(sums[r][0], p_low);
                        sums[r][1] = _mm256_add_epi16(sums[r][1], p_top);
                    } else {
                        sums[r][0] = _mm256_add_epi16(sums[r][0], _mm256_add_epi16(p_low, p_top));
                    }
                }
            }
            for r in 0..R {
                let mut qa = _mm256_madd_epi16(sums[r][0], ones);
                if HIGH {
                    qa = _mm256_add_epi32(qa, _mm256_madd_epi16(sums[r][1], ones));
                }
                let (da, sa) = (blocks[r].d[j], blocks[r].sums[j]);
                if let Some(o) = format.offset() {
                    qa = _mm256_sub_epi32(qa, _mm256_set1_epi32(o * sa));
                }
                acc[r] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(qa), _mm256_mul_ps(d, _mm256_set1_ps(da)), acc[r]);
                if MIN {
                    acc[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(da * sa as f32), acc[r]);
                }
            }
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * half), acc[r]);
    }
}
