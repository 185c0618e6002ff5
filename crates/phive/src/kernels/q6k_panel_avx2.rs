//! Q6_K × Q8_K for one panel of 16 weight rows ([`super::panels`]) on CPUs with AVX2 but no
//! AVX-512: the kernel of [`super::q6k_panel`] in 256-bit vectors, two passes of 8 rows, with
//! `vpmaddubsw` for `vpdpbusd` as in [`super::q4k_panel_avx2`].
//!
//! A 6-bit code times an activation byte, paired, reaches 2·63·128 = 16,128, so two lines'
//! pairs (not the four of a scale's 16 weights) are added in i16 before `vpmaddwd` multiplies
//! them by their signed scale into i32. The integers and float steps are the VNNI kernel's.

use std::arch::x86_64::*;

use super::panels::{by_row_tiles, Line, COLS};
use super::q8k::BlockQ8K;
use super::x86::{byte_pairs, f16_halves, half_line, lane_byte_mask};
use super::BlockFormat;

/// Lines per block.
const WORDS: usize = super::panels::words(BlockFormat::Q6K);

/// Masks that put byte `k` of each 32-bit lane in the high byte of both of its i16 halves, so
/// that an arithmetic shift by 8 leaves the signed pair (scale `k`, scale `k`).
const SCALE_MASKS: [[i8; 32]; 4] = [high_bytes(0), high_bytes(1), high_bytes(2), high_bytes(3)];

const fn high_bytes(k: usize) -> [i8; 32] {
    lane_byte_mask([None, Some(k), None, Some(k)])
}

/// `out[r][c] = acts[r] · row c` of the panel whose lines are `panel`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `panel` holds [`WORDS`] lines per block and every
/// activation row has that many blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot(panel: &[Line], acts: &[&[BlockQ8K]], out: &mut [[f32; COLS]]) {
    for half in 0..2 {
        by_row_tiles!(4; dot_rows, panel, acts, out, half)
    }
}

/// Bits `2k, 2k+1` of each `qh` byte moved to bits 4–5 (the code's top two bits).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn high_pair<const K: usize>(qh: __m256i) -> __m256i {
    // 16-bit shifts carry bits across bytes, but only into bits the mask clears.
    let shifted = match K {
        0 => _mm256_slli_epi16::<4>(qh),
        1 => _mm256_slli_epi16::<2>(qh),
        2 => qh,
        _ => _mm256_srli_epi16::<2>(qh),
    };
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x30))
}

/// Adds quarter `K` of half `part` of a block (weights `128·part + 32K …`, scales
/// `8·part + 2K`, `+1`) to each row's integer sum, for rows `8·half…` of the panel.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn quarter<const K: usize, const R: usize>(
    lines: &[Line],
    (part, half): (usize, usize),
    blocks: &[&BlockQ8K; R],
    scales: &[__m256i; 16],
    sumi: &mut [__m256i; R],
) {
    let load = |j: usize| half_line(lines, j, half);
    let low4 = _mm256_set1_epi8(0x0F);
    let base = 5 + 24 * part;
    for pair in 0..4 {
        let mut dots = [_mm256_setzero_si256(); R];
        for w in 2 * pair..2 * pair + 2 {
            let ql = load(if K.is_multiple_of(2) { base + 2 * w } else { base + 16 + w });
            let low = if K < 2 { ql } else { _mm256_srli_epi16::<4>(ql) };
            let codes = _mm256_or_si256(_mm256_and_si256(low, low4), high_pair::<K>(load(base + 2 * w + 1)));
            for r in 0..R {
                let q = blocks[r].qs.as_ptr().add(128 * part + 32 * K + 4 * w).cast::<i32>();
                let a = _mm256_set1_epi32(std::ptr::read_unaligned(q));
                dots[r] = _mm256_add_epi16(dots[r], _mm256_maddubs_epi16(codes, a));
            }
        }
        let s = scales[8 * part + 2 * K + pair / 2];
        for r in 0..R {
            sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(dots[r], s));
        }
    }
}

/// [`dot`] for a tile of `R` activation rows and half `half` of the panel's rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows<const R: usize>(
    panel: &[Line],
    acts: &[&[BlockQ8K]],
    out: &mut [[f32; COLS]],
    half: usize,
) {
    // As in the VNNI kernel: the i16 lanes of the activations' sixteen group sums that form
    // the pairs (bsum[4q], bsum[4q+2]) and (bsum[4q+1], bsum[4q+3]).
    let pair_order = _mm256_setr_epi8(
        0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15, 0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11,
        14, 15,
    );
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, lines) in panel.chunks_exact(WORDS).enumerate() {
        let load = |j: usize| half_line(lines, j, half);
        let blocks: [&BlockQ8K; R] = std::array::from_fn(|r| acts[r].get_unchecked(b));
        // The sixteen scales of the 8 rows, each as the signed i16 pair (scale, scale).
        let scale_words = [load(0), load(1), load(2), load(3)];
        let mut scales = [_mm256_setzero_si256(); 16];
        for (g, s) in scales.iter_mut().enumerate() {
            *s = _mm256_srai_epi16::<8>(byte_pairs(scale_words[g / 4], &SCALE_MASKS[g % 4]));
        }
        let mut sumi = [_mm256_setzero_si256(); R];
        for part in 0..2 {
            quarter::<0, R>(lines, (part, half), &blocks, &scales, &mut sumi);
            quarter::<1, R>(lines, (part, half), &blocks, &scales, &mut sumi);
            quarter::<2, R>(lines, (part, half), &blocks, &scales, &mut sumi);
            quarter::<3, R>(lines, (part, half), &blocks, &scales, &mut sumi);
        }
        // The −32 offset: Σ_g sc[g]·bsum(g), scales as i16 pairs (sc[4q], sc[4q+2]) and
        // (sc[4q+1], sc[4q+3]) against the same pairs of group sums.
        let mut scale_pairs = [_mm256_setzero_si256(); 8];
        for (q, w) in scale_words.into_iter().enumerate() {
            scale_pairs[2 * q] = _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(w));
            scale_pairs[2 * q + 1] = _mm256_srai_epi16::<8>(w);
        }
        let (d, _) = f16_halves(load(4));
        for r in 0..R {
            let a = blocks[r];
            let bsums = _mm256_shuffle_epi8(_mm256_loadu_si256(a.bsums.as_ptr().cast()), pair_order);
            let pairs: [i32; 8] = std::mem::transmute(bsums);
            let mut offset = _mm256_setzero_si256();
            for (p, sp) in pairs.iter().zip(&scale_pairs) {
                offset = _mm256_add_epi32(offset, _mm256_madd_epi16(*sp, _mm256_set1_epi32(*p)));
            }
            let total = _mm256_sub_epi32(sumi[r], _mm256_slli_epi32::<5>(offset));
            acc[r] =
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_mul_ps(d, _mm256_set1_ps(a.d)), acc[r]);
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * half), acc[r]);
    }
}
