//! Small x86 helpers the quantized kernels share.

use std::arch::x86_64::*;

/// The sum of the eight lanes.
///
/// # Safety
/// The CPU must have AVX.
#[target_feature(enable = "avx")]
#[inline]
pub(super) unsafe fn hsum256(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair)))
}

/// The eight minimums in bytes 8..16 of `scales_mins` as sixteen i16 lanes `m0 m0 m1 m1 …`,
/// lined up with a Q8_K block's sixteen group sums (two groups of 16 per 32-weight sub-block).
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn mins_pairs(scales_mins: __m128i) -> __m256i {
    let twice = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    _mm256_cvtepu8_epi16(_mm_shuffle_epi8(scales_mins, twice))
}

/// The two f16 values at the start of a Q4_K block (`d`, `dmin`) as f32.
///
/// # Safety
/// The CPU must have F16C; four bytes are readable at `p`.
#[target_feature(enable = "f16c")]
#[inline]
pub(super) unsafe fn d_and_dmin(p: *const u8) -> (f32, f32) {
    let both = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p.cast::<i32>())));
    (_mm_cvtss_f32(both), _mm_cvtss_f32(_mm_movehdup_ps(both)))
}

/// The f16 at `p` as f32.
///
/// # Safety
/// The CPU must have F16C; two bytes are readable at `p`.
#[target_feature(enable = "f16c")]
#[inline]
pub(super) unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = std::ptr::read_unaligned(p.cast::<u16>());
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// `Σ lanes (a[r] − b[r])` for each row: the 256-bit kernels' final sums (a loop, not
/// `array::from_fn`, whose closure would not inherit the target features).
///
/// # Safety
/// The CPU must have AVX.
#[target_feature(enable = "avx")]
#[inline]
pub(super) unsafe fn row_sums256<const R: usize>(a: &[__m256; R], b: &[__m256; R]) -> [f32; R] {
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = hsum256(_mm256_sub_ps(a[r], b[r]));
    }
    out
}

/// [`row_sums256`] for 512-bit accumulators.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn row_sums512<const R: usize>(a: &[__m512; R], b: &[__m512; R]) -> [f32; R] {
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = _mm512_reduce_add_ps(_mm512_sub_ps(a[r], b[r]));
    }
    out
}

/// Half `half` (rows `8·half…`) of line `j` of a panel block: the 256-bit kernels take a
/// 16-row panel as two passes of 8 rows.
///
/// # Safety
/// The CPU must have AVX; `lines` holds line `j`.
#[target_feature(enable = "avx")]
#[inline]
pub(super) unsafe fn half_line(lines: &[super::panels::Line], j: usize, half: usize) -> __m256i {
    _mm256_load_si256(lines.as_ptr().add(j).cast::<__m256i>().add(half))
}

/// The two f16 values of each 32-bit lane (low half, high half) as two vectors of f32: the
/// panel lines that hold two scales per row.
///
/// # Safety
/// The CPU must have AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
#[inline]
pub(super) unsafe fn f16_halves(v: __m256i) -> (__m256, __m256) {
    // Each 128-bit lane: the four low halves, then the four high ones; then the 64-bit
    // quarters reordered so that all eight low halves come first.
    let split = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11,
        14, 15,
    );
    let ordered = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(v, split));
    (
        _mm256_cvtph_ps(_mm256_castsi256_si128(ordered)),
        _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(ordered)),
    )
}

/// [`f16_halves`] for a 512-bit line: the low halves of its sixteen lanes, then the high ones.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn f16_halves512(v: __m512i) -> (__m512, __m512) {
    (
        _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v)),
        _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(v))),
    )
}

/// A `vpshufb` mask that rebuilds every 32-bit lane from its own bytes: byte `i` of the lane
/// becomes its byte `picks[i]`, or zero where that is `None`.
pub(super) const fn lane_byte_mask(picks: [Option<usize>; 4]) -> [i8; 32] {
    let mut mask = [-1i8; 32];
    let mut at = 0;
    while at < 32 {
        if let Some(byte) = picks[at % 4] {
            // `vpshufb` indexes within each 128-bit half: four lanes of four bytes.
            mask[at] = (at % 16 / 4 * 4 + byte) as i8;
        }
        at += 1;
    }
    mask
}

/// A [`lane_byte_mask`] that makes each 32-bit lane the i16 pair (byte `a`, byte `b`) of that
/// lane, zero-extended: the operand `vpmaddwd` multiplies i16 pairs with.
pub(super) const fn byte_pair_mask(a: usize, b: usize) -> [i8; 32] {
    lane_byte_mask([Some(a), None, Some(b), None])
}

/// `v`'s lanes rebuilt by a [`lane_byte_mask`].
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn byte_pairs(v: __m256i, mask: &[i8; 32]) -> __m256i {
    _mm256_shuffle_epi8(v, _mm256_loadu_si256(mask.as_ptr().cast()))
}
