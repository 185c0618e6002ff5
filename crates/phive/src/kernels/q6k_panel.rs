//! Q6_K × Q8_K for one panel of 16 weight rows ([`super::panels`]) and any number of
//! activation rows: the outer-product kernel of [`super::q4k_panel`] for Q6_K, used by the
//! output head (`lm_head`) of Q4_K models.
//!
//! A panel block's lines are the words of the GGML block (see [`super::q6k`]) in the order
//! this kernel reads them: lines 0–3 the sixteen signed scales, 4 `d`, then for each half of
//! the block its words `ql[0..8]` paired with the bit pairs `qh[0..8]`, then `ql[8..16]`.
//! Four code bytes of the 16 rows come from one `ql` line (low or high nibbles) and one `qh`
//! line (one bit pair), and multiply 4 broadcast activation bytes with one `vpdpbusd`. The
//! codes are unsigned (`q` in 0..64 for the weight `q − 32`), so the −32 is folded in once per
//! block from the activations' group sums.

use std::arch::x86_64::*;

use super::panels::{by_row_tiles, prefetch_ahead, words, Line, COLS};
use super::q8k::BlockQ8K;
use super::BlockFormat;

/// Lines per block.
const WORDS: usize = words(BlockFormat::Q6K);

/// `out[r][c] = acts[r] · row c` of the panel whose lines are `panel`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VNNI and F16C; `panel` holds [`WORDS`] lines per block and
/// every activation row has that many blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn dot(panel: &[Line], acts: &[&[BlockQ8K]], out: &mut [[f32; COLS]]) {
    by_row_tiles!(dot_rows, panel, acts, out)
}

/// Bits `2k, 2k+1` of each `qh` byte moved to bits 4–5 (the code's top two bits).
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn high_pair<const K: usize>(qh: __m512i) -> __m512i {
    // 16-bit shifts carry bits across bytes, but only into bits the mask clears.
    let shifted = match K {
        0 => _mm512_slli_epi16::<4>(qh),
        1 => _mm512_slli_epi16::<2>(qh),
        2 => qh,
        _ => _mm512_srli_epi16::<2>(qh),
    };
    _mm512_and_si512(shifted, _mm512_set1_epi8(0x30))
}

/// Adds quarter `K` of half `half` of a block (weights `128·half + 32K …`, scales
/// `8·half + 2K`, `+1`) to each row's integer sum: the low (K < 2) or high nibbles of
/// `ql[l]` (K even) or `ql[l + 32]` (K odd), and bits 2K, 2K+1 of `qh[l]`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn quarter<const K: usize, const R: usize>(
    lines: &[Line],
    half: usize,
    blocks: &[&BlockQ8K; R],
    scales: &[__m512i; 16],
    sumi: &mut [__m512i; R],
) {
    // Quarters 0 and 1 load each of the half's lines first; 2 and 3 load them again.
    let load = |j: usize| {
        if K < 2 {
            prefetch_ahead::<R>(lines, WORDS, j);
        }
        _mm512_load_si512(lines.as_ptr().add(j).cast())
    };
    let low4 = _mm512_set1_epi8(0x0F);
    let base = 5 + 24 * half;
    for group in 0..2 {
        let mut dots = [_mm512_setzero_si512(); R];
        for w in 4 * group..4 * group + 4 {
            let ql = load(if K.is_multiple_of(2) { base + 2 * w } else { base + 16 + w });
            let low = if K < 2 { ql } else { _mm512_srli_epi16::<4>(ql) };
            let codes = _mm512_or_si512(_mm512_and_si512(low, low4), high_pair::<K>(load(base + 2 * w + 1)));
            for r in 0..R {
                let q = blocks[r].qs.as_ptr().add(128 * half + 32 * K + 4 * w).cast::<i32>();
                dots[r] = _mm512_dpbusd_epi32(dots[r], codes, _mm512_set1_epi32(std::ptr::read_unaligned(q)));
            }
        }
        let s = scales[8 * half + 2 * K + group];
        for r in 0..R {
            sumi[r] = _mm512_add_epi32(sumi[r], _mm512_mullo_epi32(dots[r], s));
        }
    }
}

/// [`dot`] for a tile of `R` activation rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn dot_rows<const R: usize>(panel: &[Line], acts: &[&[BlockQ8K]], out: &mut [[f32; COLS]]) {
    // Per i32 lane of the activations' sixteen group sums: which i16 lanes form the pairs
    // (bsum[4q], bsum[4q+2]) and (bsum[4q+1], bsum[4q+3]) that meet the scale pairs below.
    let pair_order = _mm256_setr_epi8(
        0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15, 0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11,
        14, 15,
    );
    let mut acc = [_mm512_setzero_ps(); R];
    for (b, lines) in panel.chunks_exact(WORDS).enumerate() {
        let load = |j: usize| {
            prefetch_ahead::<R>(lines, WORDS, j);
            _mm512_load_si512(lines.as_ptr().add(j).cast())
        };
        let blocks: [&BlockQ8K; R] = std::array::from_fn(|r| acts[r].get_unchecked(b));
        // The sixteen scales of the 16 rows, sign-extended to i32 lanes.
        let scale_words = [load(0), load(1), load(2), load(3)];
        let mut scales = [_mm512_setzero_si512(); 16];
        for (q, w) in scale_words.into_iter().enumerate() {
            scales[4 * q] = _mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(w));
            scales[4 * q + 1] = _mm512_srai_epi32::<24>(_mm512_slli_epi32::<16>(w));
            scales[4 * q + 2] = _mm512_srai_epi32::<24>(_mm512_slli_epi32::<8>(w));
            scales[4 * q + 3] = _mm512_srai_epi32::<24>(w);
        }
        let mut sumi = [_mm512_setzero_si512(); R];
        for half in 0..2 {
            quarter::<0, R>(lines, half, &blocks, &scales, &mut sumi);
            quarter::<1, R>(lines, half, &blocks, &scales, &mut sumi);
            quarter::<2, R>(lines, half, &blocks, &scales, &mut sumi);
            quarter::<3, R>(lines, half, &blocks, &scales, &mut sumi);
        }
        // The −32 offset: Σ_g sc[g]·bsum(g), scales as i16 pairs (sc[4q], sc[4q+2]) and
        // (sc[4q+1], sc[4q+3]) against the same pairs of group sums.
        let mut scale_pairs = [_mm512_setzero_si512(); 8];
        for (q, w) in scale_words.into_iter().enumerate() {
            scale_pairs[2 * q] = _mm512_srai_epi16::<8>(_mm512_slli_epi16::<8>(w));
            scale_pairs[2 * q + 1] = _mm512_srai_epi16::<8>(w);
        }
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(load(4)));
        for r in 0..R {
            let a = blocks[r];
            let bsums = _mm256_shuffle_epi8(_mm256_loadu_si256(a.bsums.as_ptr().cast()), pair_order);
            let pairs: [i32; 8] = std::mem::transmute(bsums);
            let mut offset = _mm512_setzero_si512();
            for (p, sp) in pairs.iter().zip(&scale_pairs) {
                offset = _mm512_dpwssd_epi32(offset, *sp, _mm512_set1_epi32(*p));
            }
            let total = _mm512_sub_epi32(sumi[r], _mm512_slli_epi32::<5>(offset));
            acc[r] =
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_mul_ps(d, _mm512_set1_ps(a.d)), acc[r]);
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}
