//! Q4_K × Q8_K for one panel of 16 weight rows ([`super::panels`]) and any number of
//! activation rows: an outer-product kernel for CPUs with AVX-512 VNNI.
//!
//! The row kernel in [`super::q4k`] dots one weight row with a few activation rows, so every
//! activation byte is loaded again for every weight row. Here one 64-byte line holds the same
//! 4 codes bytes of all 16 rows (8 weights each, low and high nibbles), and each activation row
//! broadcasts 4 of its bytes against it: one `vpdpbusd` yields 4 multiply-adds for each of the
//! 16 output columns. The panel layout makes unpacking aligned loads, masks and shifts (no
//! gathers, no transposes), cheap enough to do again for every 8 activation rows.

use std::arch::x86_64::*;

use super::panels::{by_row_tiles, prefetch_ahead, words, Line, COLS};
use super::q8k::BlockQ8K;
use super::BlockFormat;

/// Lines per block.
const WORDS: usize = words(BlockFormat::Q4K);

/// `out[r][c] = acts[r] · row c` of the panel whose lines are `panel`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VNNI and F16C; `panel` holds [`WORDS`] lines per block and
/// every activation row has that many blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn dot(panel: &[Line], acts: &[&[BlockQ8K]], out: &mut [[f32; COLS]]) {
    by_row_tiles!(dot_rows, panel, acts, out)
}

/// The 16 rows' `d`, `dmin`, eight 6-bit scales (i32 lanes) and eight 6-bit minimums (as
/// i16 pairs `m[2k], m[2k+1]`, the operand of `vpdpwssd`) from a block's four header lines.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
#[inline]
pub(super) unsafe fn header(h: [__m512i; 4]) -> (__m512, __m512, [__m512i; 8], [__m512i; 4]) {
    let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h[0]));
    let dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(h[0])));
    // The twelve scale bytes, unpacked as in `q4k`, sixteen rows at a time: each word of
    // `sc_lo`/`sc_hi` holds scales 0–3/4–7 of its row, `mn_lo`/`mn_hi` the minimums.
    let (w0, w1, w2) = (h[1], h[2], h[3]);
    let low6 = _mm512_set1_epi32(0x3f3f_3f3f);
    let low4 = _mm512_set1_epi32(0x0f0f_0f0f);
    let top2 = _mm512_set1_epi32(0x0303_0303);
    let sc_lo = _mm512_and_si512(w0, low6);
    let sc_hi = _mm512_or_si512(
        _mm512_and_si512(w2, low4),
        _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w0), top2)),
    );
    let mn_lo = _mm512_and_si512(w1, low6);
    let mn_hi = _mm512_or_si512(
        _mm512_and_si512(_mm512_srli_epi32::<4>(w2), low4),
        _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(w1), top2)),
    );
    let byte = _mm512_set1_epi32(0xFF);
    let mut scales = [_mm512_setzero_si512(); 8];
    for (half, sc) in [sc_lo, sc_hi].into_iter().enumerate() {
        for (i, shift) in [0i32, 8, 16, 24].into_iter().enumerate() {
            scales[4 * half + i] = _mm512_and_si512(_mm512_srl_epi32(sc, _mm_cvtsi32_si128(shift)), byte);
        }
    }
    // Bytes (m0, m1) of a word become the i16 pair (m0, m1).
    let pair = |x: __m512i| {
        _mm512_or_si512(
            _mm512_and_si512(x, byte),
            _mm512_slli_epi32::<8>(_mm512_and_si512(x, _mm512_set1_epi32(0xFF00))),
        )
    };
    let mins = [
        pair(mn_lo),
        pair(_mm512_srli_epi32::<16>(mn_lo)),
        pair(mn_hi),
        pair(_mm512_srli_epi32::<16>(mn_hi)),
    ];
    (d, dmin, scales, mins)
}

/// `acc` plus one block's contribution to 16 outputs of one activation row: `d·a_d·sumi`
/// (`sumi` the scaled code products) minus `dmin·a_d·Σⱼ m[j]·sub_sums[j]`. The AMX kernel
/// calls this too, so both kernels round alike.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
#[inline]
pub(super) unsafe fn add_block(
    acc: __m512,
    sumi: __m512i,
    mins: &[__m512i; 4],
    (d, dmin): (__m512, __m512),
    a_d: f32,
    sub_sums: &[i16; 8],
) -> __m512 {
    // Σⱼ m[j]·(sum of activations j·32…): the activations' sub-block sums in pairs
    // (sub_sums[2k], sub_sums[2k+1]), broadcast from memory, against the minimum pairs.
    let pairs = sub_sums.as_ptr().cast::<i32>();
    let mut summ = _mm512_setzero_si512();
    for (k, m) in mins.iter().enumerate() {
        summ = _mm512_dpwssd_epi32(summ, *m, _mm512_set1_epi32(std::ptr::read_unaligned(pairs.add(k))));
    }
    let ad = _mm512_set1_ps(a_d);
    let acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_mul_ps(d, ad), acc);
    _mm512_fnmadd_ps(_mm512_cvtepi32_ps(summ), _mm512_mul_ps(dmin, ad), acc)
}

/// [`dot`] for a tile of `R` activation rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn dot_rows<const R: usize>(panel: &[Line], acts: &[&[BlockQ8K]], out: &mut [[f32; COLS]]) {
    let nibble = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); R];
    for (b, lines) in panel.chunks_exact(WORDS).enumerate() {
        let load = |j: usize| {
            prefetch_ahead::<R>(lines, WORDS, j);
            _mm512_load_si512(lines.as_ptr().add(j).cast())
        };
        let (d, dmin, scales, mins) = header([load(0), load(1), load(2), load(3)]);
        let blocks: [&BlockQ8K; R] = std::array::from_fn(|r| acts[r].get_unchecked(b));
        let mut sumi = [_mm512_setzero_si512(); R];
        for i in 0..4 {
            // Run i (lines 4 + 8i …): low nibbles are sub-block 2i, high ones 2i + 1, which
            // line up with activations 64i… and 64i + 32….
            let mut lo = [_mm512_setzero_si512(); R];
            let mut hi = [_mm512_setzero_si512(); R];
            for g in 0..8 {
                let v = load(4 + 8 * i + g);
                let (codes_lo, codes_hi) =
                    (_mm512_and_si512(v, nibble), _mm512_and_si512(_mm512_srli_epi32::<4>(v), nibble));
                for r in 0..R {
                    let q = blocks[r].qs.as_ptr().add(64 * i + 4 * g).cast::<i32>();
                    lo[r] =
                        _mm512_dpbusd_epi32(lo[r], codes_lo, _mm512_set1_epi32(std::ptr::read_unaligned(q)));
                    hi[r] = _mm512_dpbusd_epi32(
                        hi[r],
                        codes_hi,
                        _mm512_set1_epi32(std::ptr::read_unaligned(q.add(8))),
                    );
                }
            }
            for r in 0..R {
                let scaled = _mm512_add_epi32(
                    _mm512_mullo_epi32(lo[r], scales[2 * i]),
                    _mm512_mullo_epi32(hi[r], scales[2 * i + 1]),
                );
                sumi[r] = _mm512_add_epi32(sumi[r], scaled);
            }
        }
        for r in 0..R {
            let a = blocks[r];
            acc[r] = add_block(acc[r], sumi[r], &mins, (d, dmin), a.d, &a.sub_sums);
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}
