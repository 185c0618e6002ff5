//! Q6_K weight rows dotted with Q8_K activation rows, read straight from GGML's block layout.
//!
//! A Q6_K block covers 256 weights in 210 bytes: 128 bytes of low nibbles (`ql`), 64 bytes of
//! high 2-bit pairs (`qh`), sixteen signed 8-bit scales (one per 16 weights) and `d` (f16).
//! Weight `i` is `d·sc[i/16]·(q − 32)` with `q` a 6-bit code. Each half of the block (128
//! weights) uses 64 `ql` bytes and 32 `qh` bytes: weights `l`, `l+32`, `l+64`, `l+96` take the
//! low nibble of `ql[l]`, of `ql[l+32]`, the high nibble of `ql[l]`, of `ql[l+32]`, and bits
//! 0–1, 2–3, 4–5, 6–7 of `qh[l]`.
//!
//! The dot with a Q8_K block is `d·a.d·(Σ_g sc[g]·Σ q·a − 32·Σ_g sc[g]·bsum(g))`: the codes are
//! unsigned, so the same integer instructions as Q4_K apply.

use half::f16;

use super::q8k::BlockQ8K;
use super::SimdLevel;

/// Bytes of one block.
pub const BLOCK_BYTES: usize = 210;

#[inline(always)]
fn scale_at(blk: &[u8], g: usize) -> i32 {
    blk[192 + g] as i8 as i32
}

#[inline(always)]
fn d_of(blk: &[u8]) -> f32 {
    f16::from_le_bytes([blk[208], blk[209]]).to_f32()
}

/// `out[r] = w · acts[r]` for each activation row, with the level's kernel.
pub(super) fn dot_rows(level: SimdLevel, w: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512Vnni | SimdLevel::Amx => {
            super::for_tile!(acts, out, |a| unsafe { avx512::dot(w, a) })
        }
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => super::for_tile!(acts, out, |a| unsafe { avx2::dot(w, a) }),
        _ => {
            for (o, a) in out.iter_mut().zip(acts) {
                *o = dot_scalar(w, a);
            }
        }
    }
}

/// The 6-bit code of weight `i` (0..256) of a block.
#[inline(always)]
fn code(blk: &[u8], i: usize) -> i32 {
    let (half, l) = (i / 128, i % 128);
    let (ql, qh) = (&blk[64 * half..], &blk[128 + 32 * half..]);
    let (quarter, l) = (l / 32, l % 32);
    let low = match quarter {
        0 => ql[l] & 0xF,
        1 => ql[l + 32] & 0xF,
        2 => ql[l] >> 4,
        _ => ql[l + 32] >> 4,
    };
    let high = (qh[l] >> (2 * quarter)) & 3;
    (low | (high << 4)) as i32
}

/// The plain reference: one weight row with one activation row.
pub(super) fn dot_scalar(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut total = 0f32;
    for (blk, a) in w.chunks_exact(BLOCK_BYTES).zip(a) {
        let mut sumi = 0i32;
        for g in 0..16 {
            let dot: i32 = (16 * g..16 * g + 16).map(|i| code(blk, i) * a.qs[i] as i32).sum();
            sumi += scale_at(blk, g) * (dot - 32 * a.bsums[g] as i32);
        }
        total += d_of(blk) * a.d * sumi as f32;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod x86_codes {
    use std::arch::x86_64::*;

    /// The four runs of 32 codes of half `h` of a block, in weight order.
    ///
    /// # Safety
    /// AVX2; `blk` points at a whole block.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn runs(blk: *const u8, h: usize) -> [__m256i; 4] {
        let nibble = _mm256_set1_epi8(0x0F);
        let two = _mm256_set1_epi8(3);
        let ql_a = _mm256_loadu_si256(blk.add(64 * h).cast());
        let ql_b = _mm256_loadu_si256(blk.add(64 * h + 32).cast());
        let qh = _mm256_loadu_si256(blk.add(128 + 32 * h).cast());
        let high = |shift: __m128i| {
            let bits = _mm256_and_si256(_mm256_srl_epi16(qh, shift), two);
            _mm256_slli_epi16::<4>(bits)
        };
        [
            _mm256_or_si256(_mm256_and_si256(ql_a, nibble), high(_mm_cvtsi32_si128(0))),
            _mm256_or_si256(_mm256_and_si256(ql_b, nibble), high(_mm_cvtsi32_si128(2))),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql_a), nibble),
                high(_mm_cvtsi32_si128(4)),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql_b), nibble),
                high(_mm_cvtsi32_si128(6)),
            ),
        ]
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::x86_codes::runs;
    use super::{BlockQ8K, BLOCK_BYTES};
    use crate::kernels::x86::{f16_at, row_sums256};

    /// `w` with each of the `R` activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; every row of `a` must have `w.len() / 210` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot<const R: usize>(w: &[u8], a: [&[BlockQ8K]; R]) -> [f32; R] {
        let mut acc = [_mm256_setzero_ps(); R];
        let mut oacc = [_mm256_setzero_ps(); R];
        for (b, blk) in w.chunks_exact(BLOCK_BYTES).enumerate() {
            let p = blk.as_ptr();
            let (h0, h1) = (runs(p, 0), runs(p, 1));
            let codes = [h0[0], h0[1], h0[2], h0[3], h1[0], h1[1], h1[2], h1[3]];
            // Scales as i16, each run's two groups of 16 over 8 lanes apiece.
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192).cast()));
            let mut scales = [_mm256_setzero_si256(); 8];
            let mut sc = [0i16; 16];
            _mm256_storeu_si256(sc.as_mut_ptr().cast(), sc16);
            for (run, s) in scales.iter_mut().enumerate() {
                let (lo, hi) = (_mm_set1_epi16(sc[2 * run]), _mm_set1_epi16(sc[2 * run + 1]));
                *s = _mm256_set_m128i(hi, lo);
            }
            let d = f16_at(p.add(208));
            let vd = _mm256_set1_ps(d);
            // 32·d·sc[g] per group, as the activations' `dsums` are laid out.
            let off = |half: __m128i| {
                _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(half)), _mm256_set1_ps(32.0 * d))
            };
            let offsets = [off(_mm256_castsi256_si128(sc16)), off(_mm256_extracti128_si256::<1>(sc16))];
            for r in 0..R {
                let blk_a = a[r].get_unchecked(b);
                let q = blk_a.qs.as_ptr();
                let mut s = _mm256_setzero_si256();
                for run in 0..8 {
                    let prod = _mm256_maddubs_epi16(codes[run], _mm256_loadu_si256(q.add(32 * run).cast()));
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(prod, scales[run]));
                }
                let scale = _mm256_mul_ps(vd, _mm256_broadcast_ss(&blk_a.d));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[r]);
                let ds = blk_a.dsums.as_ptr();
                oacc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(ds), offsets[0], oacc[r]);
                oacc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(ds.add(8)), offsets[1], oacc[r]);
            }
        }
        row_sums256(&acc, &oacc)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::x86_codes::runs;
    use super::{BlockQ8K, BLOCK_BYTES};
    use crate::kernels::x86::{f16_at, row_sums512};

    /// `w` with each of the `R` activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VNNI, AVX2, FMA and F16C; every row of `a` must have `w.len() / 210` blocks.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot<const R: usize>(w: &[u8], a: [&[BlockQ8K]; R]) -> [f32; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        let mut oacc = [_mm512_setzero_ps(); R];
        for (b, blk) in w.chunks_exact(BLOCK_BYTES).enumerate() {
            let p = blk.as_ptr();
            let (h0, h1) = (runs(p, 0), runs(p, 1));
            let join = |lo: __m256i, hi: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            let codes = [join(h0[0], h0[1]), join(h0[2], h0[3]), join(h1[0], h1[1]), join(h1[2], h1[3])];
            // Each 64-code vector spans four groups of 16: four scales, each over 4 lanes.
            let sc8 = _mm_loadu_si128(p.add(192).cast());
            let mut scales = [_mm512_setzero_si512(); 4];
            for (v, s) in scales.iter_mut().enumerate() {
                let g = 4 * v as i8;
                let pick = _mm_setr_epi8(
                    g,
                    g,
                    g,
                    g,
                    g + 1,
                    g + 1,
                    g + 1,
                    g + 1,
                    g + 2,
                    g + 2,
                    g + 2,
                    g + 2,
                    g + 3,
                    g + 3,
                    g + 3,
                    g + 3,
                );
                *s = _mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc8, pick));
            }
            let d = f16_at(p.add(208));
            let vd = _mm512_set1_ps(d);
            // 32·d·sc[g] per group, as the activations' `dsums` are laid out.
            let offsets =
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc8)), _mm512_set1_ps(32.0 * d));
            for r in 0..R {
                let blk_a = a[r].get_unchecked(b);
                let q = blk_a.qs.as_ptr();
                let mut s = _mm512_setzero_si512();
                for v in 0..4 {
                    let prod = _mm512_dpbusd_epi32(
                        _mm512_setzero_si512(),
                        codes[v],
                        _mm512_loadu_si512(q.add(64 * v).cast()),
                    );
                    s = _mm512_add_epi32(s, _mm512_mullo_epi32(prod, scales[v]));
                }
                let scale = _mm512_mul_ps(vd, _mm512_set1_ps(blk_a.d));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[r]);
                oacc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(blk_a.dsums.as_ptr()), offsets, oacc[r]);
            }
        }
        row_sums512(&acc, &oacc)
    }
}
