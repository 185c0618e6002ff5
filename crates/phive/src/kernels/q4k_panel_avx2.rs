//! Q4_K × Q8_K for one panel of 16 weight rows ([`super::panels`]) on CPUs with AVX2 but no
//! AVX-512: the outer-product kernel of [`super::q4k_panel`] in 256-bit vectors, which take
//! the panel's 16 rows as two passes of 8.
//!
//! AVX2 has no `vpdpbusd`: `vpmaddubsw` multiplies the code bytes by 4 broadcast activation
//! bytes into two i16 sums per row, and those of a sub-block's eight lines are added in i16
//! (at most 8·2·15·128 = 30,720) before one `vpmaddwd` by the sub-block's scale widens them.
//! A row kernel needs that widening for every 32 products, so this does half its multiplies.
//! The integers are the VNNI kernel's and so are the float steps: the results are its bits.
//!
//! Tiles take 3 activation rows: a tile of 4 keeps 8 i16 sums, 4 i32 block sums and 4 f32
//! accumulators live, and LLVM spilled sums of the inner loop to the stack; tiles of 3 ran
//! 4–15% faster from 5 rows up on an AVX2-only Zen 3 (`BENCHMARKS.md`). Q6_K's kernel, whose
//! sums stay in registers, was 7–12% slower in tiles of 3 and keeps 4.

use std::arch::x86_64::*;

use super::panels::{by_row_tiles, Line, COLS};
use super::q8k::BlockQ8K;
use super::x86::{byte_pair_mask, byte_pairs, f16_halves, half_line};
use super::BlockFormat;

/// Lines per block.
const WORDS: usize = super::panels::words(BlockFormat::Q4K);

/// Scale `k % 4` of a word of four, as the i16 pair (scale, scale).
const SCALE_MASKS: [[i8; 32]; 4] =
    [byte_pair_mask(0, 0), byte_pair_mask(1, 1), byte_pair_mask(2, 2), byte_pair_mask(3, 3)];

/// Minimums `(0, 1)` and `(2, 3)` of a word of four, as i16 pairs.
const MIN_MASKS: [[i8; 32]; 2] = [byte_pair_mask(0, 1), byte_pair_mask(2, 3)];

/// `out[r][c] = acts[r] · row c` of the panel whose lines are `panel`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `panel` holds [`WORDS`] lines per block and every
/// activation row has that many blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot(panel: &[Line], acts: &[&[BlockQ8K]], out: &mut [[f32; COLS]]) {
    for half in 0..2 {
        by_row_tiles!(3; dot_rows, panel, acts, out, half)
    }
}

/// One block's header for 8 rows: `d`, `dmin`, the eight sub-block scales as i16 pairs
/// (scale, scale) and the minimums as pairs `(m[2k], m[2k+1])`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn header(h: [__m256i; 4]) -> (__m256, __m256, [__m256i; 8], [__m256i; 4]) {
    let (d, dmin) = f16_halves(h[0]);
    // The twelve scale bytes unpacked as in `q4k`, eight rows at a time: each word of
    // `sc_lo`/`sc_hi` holds scales 0–3/4–7 of its row, `mn_lo`/`mn_hi` the minimums.
    let (w0, w1, w2) = (h[1], h[2], h[3]);
    let low6 = _mm256_set1_epi32(0x3f3f_3f3f);
    let low4 = _mm256_set1_epi32(0x0f0f_0f0f);
    let top2 = _mm256_set1_epi32(0x0303_0303);
    let sc_lo = _mm256_and_si256(w0, low6);
    let sc_hi = _mm256_or_si256(
        _mm256_and_si256(w2, low4),
        _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<6>(w0), top2)),
    );
    let mn_lo = _mm256_and_si256(w1, low6);
    let mn_hi = _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi32::<4>(w2), low4),
        _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<6>(w1), top2)),
    );
    let mut scales = [_mm256_setzero_si256(); 8];
    for (k, s) in scales.iter_mut().enumerate() {
        *s = byte_pairs(if k < 4 { sc_lo } else { sc_hi }, &SCALE_MASKS[k % 4]);
    }
    let mins = [
        byte_pairs(mn_lo, &MIN_MASKS[0]),
        byte_pairs(mn_lo, &MIN_MASKS[1]),
        byte_pairs(mn_hi, &MIN_MASKS[0]),
        byte_pairs(mn_hi, &MIN_MASKS[1]),
    ];
    (d, dmin, scales, mins)
}

/// [`dot`] for a tile of `R` activation rows and half `half` of the panel's rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows<const R: usize>(
    panel: &[Line],
    acts: &[&[BlockQ8K]],
    out: &mut [[f32; COLS]],
    half: usize,
) {
    let nibble = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, lines) in panel.chunks_exact(WORDS).enumerate() {
        let load = |j: usize| half_line(lines, j, half);
        let (d, dmin, scales, mins) = header([load(0), load(1), load(2), load(3)]);
        let blocks: [&BlockQ8K; R] = std::array::from_fn(|r| acts[r].get_unchecked(b));
        let mut sumi = [_mm256_setzero_si256(); R];
        for i in 0..4 {
            // Run i (lines 4 + 8i …): low nibbles are sub-block 2i, high ones 2i + 1, which
            // line up with activations 64i… and 64i + 32….
            let mut lo = [_mm256_setzero_si256(); R];
            let mut hi = [_mm256_setzero_si256(); R];
            for g in 0..8 {
                let v = load(4 + 8 * i + g);
                let codes_lo = _mm256_and_si256(v, nibble);
                let codes_hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble);
                for r in 0..R {
                    let q = blocks[r].qs.as_ptr().add(64 * i + 4 * g).cast::<i32>();
                    let a_lo = _mm256_set1_epi32(std::ptr::read_unaligned(q));
                    let a_hi = _mm256_set1_epi32(std::ptr::read_unaligned(q.add(8)));
                    lo[r] = _mm256_add_epi16(lo[r], _mm256_maddubs_epi16(codes_lo, a_lo));
                    hi[r] = _mm256_add_epi16(hi[r], _mm256_maddubs_epi16(codes_hi, a_hi));
                }
            }
            for r in 0..R {
                let scaled = _mm256_add_epi32(
                    _mm256_madd_epi16(lo[r], scales[2 * i]),
                    _mm256_madd_epi16(hi[r], scales[2 * i + 1]),
                );
                sumi[r] = _mm256_add_epi32(sumi[r], scaled);
            }
        }
        for r in 0..R {
            // Σⱼ m[j]·(sum of activations j·32…), the sub-block sums broadcast in pairs.
            let a = blocks[r];
            let pairs = a.sub_sums.as_ptr().cast::<i32>();
            let mut summ = _mm256_setzero_si256();
            for (k, m) in mins.iter().enumerate() {
                let sums = _mm256_set1_epi32(std::ptr::read_unaligned(pairs.add(k)));
                summ = _mm256_add_epi32(summ, _mm256_madd_epi16(*m, sums));
            }
            let ad = _mm256_set1_ps(a.d);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[r]), _mm256_mul_ps(d, ad), acc[r]);
            acc[r] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(summ), _mm256_mul_ps(dmin, ad), acc[r]);
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * half), acc[r]);
    }
}
