//! Q4_K weight rows dotted with Q8_K activation rows, read straight from GGML's block layout
//! (no repacked copy).
//!
//! A Q4_K block covers 256 weights in 144 bytes: `d` and `dmin` (f16), twelve bytes packing
//! eight 6-bit scales and eight 6-bit minimums (one pair per 32 weights), then 128 bytes of
//! 4-bit codes. Weight `i` of sub-block `j` is `d·sc[j]·q − dmin·m[j]`. In each run of 32 code
//! bytes, the low nibbles are the 32 weights of one sub-block and the high nibbles those of the
//! next, so one run lines up with 64 consecutive activations.
//!
//! The dot with a Q8_K block is `d·a.d·Σⱼ sc[j]·Σ q·a − dmin·a.d·Σⱼ m[j]·bsum(j)`: integer
//! products of unsigned 4-bit codes and signed bytes, which is exactly what `vpmaddubsw` (AVX2)
//! and `vpdpbusd` (AVX-512 VNNI) compute. Each call dots one weight row with up to [`super::TILE`]
//! activation rows, so the weight bytes are unpacked once for all of them.

use half::f16;

use super::q8k::BlockQ8K;
use super::SimdLevel;

/// Bytes of one block.
pub const BLOCK_BYTES: usize = 144;

/// The eight 6-bit (scale, minimum) pairs packed in a block's twelve scale bytes.
#[inline(always)]
fn scales_and_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0xF) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

#[inline(always)]
fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The twelve scale bytes at `p` unpacked to `[sc0..sc7, m0..m7]` with word-wide masks (the
/// same values as [`scales_and_mins`], in a dozen integer operations).
///
/// # Safety
/// Twelve bytes are readable at `p`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn packed_scales_and_mins(p: *const u8) -> [u32; 4] {
    let w = |i: usize| std::ptr::read_unaligned(p.add(4 * i).cast::<u32>());
    let (w0, w1, w2) = (w(0), w(1), w(2));
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const TOP2: u32 = 0x0303_0303;
    [
        w0 & LOW6,
        (w2 & LOW4) | (((w0 >> 6) & TOP2) << 4),
        w1 & LOW6,
        ((w2 >> 4) & LOW4) | (((w1 >> 6) & TOP2) << 4),
    ]
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

/// The plain reference: one weight row with one activation row.
pub(super) fn dot_scalar(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut total = 0f32;
    for (blk, a) in w.chunks_exact(BLOCK_BYTES).zip(a) {
        let (sc, mn) = scales_and_mins(&blk[4..16]);
        let qs = &blk[16..];
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..8 {
            let run = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let acts = &a.qs[32 * j..32 * j + 32];
            let dot: i32 = run
                .iter()
                .zip(acts)
                .map(|(&b, &q)| (if j % 2 == 0 { b & 0xF } else { b >> 4 }) as i32 * q as i32)
                .sum();
            sumi += sc[j] as i32 * dot;
            summ += mn[j] as i32 * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
        }
        total += half_at(blk, 0) * a.d * sumi as f32 - half_at(blk, 2) * a.d * summ as f32;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{packed_scales_and_mins, BlockQ8K, BLOCK_BYTES};
    use crate::kernels::x86::{d_and_dmin, mins_pairs, row_sums256};

    /// `w` with each of the `R` activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; every row of `a` must have `w.len() / 144` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot<const R: usize>(w: &[u8], a: [&[BlockQ8K]; R]) -> [f32; R] {
        let nibble = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut macc = [_mm256_setzero_ps(); R];
        for (b, blk) in w.chunks_exact(BLOCK_BYTES).enumerate() {
            let p = blk.as_ptr();
            let (d, dmin) = d_and_dmin(p);
            let packed = packed_scales_and_mins(p.add(4));
            let sm: [u8; 16] = bytemuck::cast(packed);
            let qs = p.add(16);
            let mut lo = [_mm256_setzero_si256(); 4];
            let mut hi = [_mm256_setzero_si256(); 4];
            for i in 0..4 {
                let bytes = _mm256_loadu_si256(qs.add(32 * i).cast());
                lo[i] = _mm256_and_si256(bytes, nibble);
                hi[i] = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), nibble);
            }
            // dmin·m[j] per group of 16, as the activations' `dsums` are laid out.
            let pairs = mins_pairs(_mm_loadu_si128(sm.as_ptr().cast()));
            let widen = |half: __m128i| {
                _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(half)), _mm256_set1_ps(dmin))
            };
            let (mins, mins_hi) =
                (widen(_mm256_castsi256_si128(pairs)), widen(_mm256_extracti128_si256::<1>(pairs)));
            let vd = _mm256_set1_ps(d);
            for r in 0..R {
                let blk_a = a[r].get_unchecked(b);
                let q = blk_a.qs.as_ptr();
                let mut s = _mm256_setzero_si256();
                for i in 0..4 {
                    let p0 = _mm256_maddubs_epi16(lo[i], _mm256_loadu_si256(q.add(64 * i).cast()));
                    let p1 = _mm256_maddubs_epi16(hi[i], _mm256_loadu_si256(q.add(64 * i + 32).cast()));
                    let p0 = _mm256_madd_epi16(p0, _mm256_set1_epi16(sm[2 * i] as i16));
                    let p1 = _mm256_madd_epi16(p1, _mm256_set1_epi16(sm[2 * i + 1] as i16));
                    s = _mm256_add_epi32(s, _mm256_add_epi32(p0, p1));
                }
                let scale = _mm256_mul_ps(vd, _mm256_broadcast_ss(&blk_a.d));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[r]);
                let ds = blk_a.dsums.as_ptr();
                macc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(ds), mins, macc[r]);
                macc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(ds.add(8)), mins_hi, macc[r]);
            }
        }
        row_sums256(&acc, &macc)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{packed_scales_and_mins, BlockQ8K, BLOCK_BYTES};
    use crate::kernels::x86::{d_and_dmin, mins_pairs, row_sums512};

    /// `w` with each of the `R` activation rows.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VNNI, AVX2, FMA and F16C; every row of `a` must have
    /// `w.len() / 144` blocks.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot<const R: usize>(w: &[u8], a: [&[BlockQ8K]; R]) -> [f32; R] {
        let nibble = _mm512_set1_epi8(0x0F);
        // A run's 32 bytes in both halves of a vector, shifted by 0 (low nibbles: the first
        // sub-block) in the low half and by 4 (high nibbles: the second) in the high half.
        let shifts = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(4));
        // Run i's two sub-block scales, each over sixteen i16 lanes (the products' order).
        let mut pick = [_mm512_setzero_si512(); 4];
        for (i, v) in pick.iter_mut().enumerate() {
            let (lo, hi) = (2 * i as i16, 2 * i as i16 + 1);
            *v =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_set1_epi16(lo)), _mm256_set1_epi16(hi));
        }
        let mut acc = [_mm512_setzero_ps(); R];
        let mut macc = [_mm512_setzero_ps(); R];
        for (b, blk) in w.chunks_exact(BLOCK_BYTES).enumerate() {
            let p = blk.as_ptr();
            let (d, dmin) = d_and_dmin(p);
            let packed = packed_scales_and_mins(p.add(4));
            let sm = _mm_loadu_si128(packed.as_ptr().cast());
            let sc16 = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(sm));
            let qs = p.add(16);
            let mut codes = [_mm512_setzero_si512(); 4];
            let mut scales = [_mm512_setzero_si512(); 4];
            for i in 0..4 {
                let run = _mm512_broadcast_i64x4(_mm256_loadu_si256(qs.add(32 * i).cast()));
                codes[i] = _mm512_and_si512(_mm512_srlv_epi16(run, shifts), nibble);
                scales[i] = _mm512_permutexvar_epi16(pick[i], sc16);
            }
            // dmin·m[j] per group of 16, as the activations' `dsums` are laid out.
            let mins = _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(mins_pairs(sm))),
                _mm512_set1_ps(dmin),
            );
            let vd = _mm512_set1_ps(d);
            for r in 0..R {
                let blk_a = a[r].get_unchecked(b);
                let q = blk_a.qs.as_ptr();
                // Code × activation pairs summed in i16 (at most 2·15·127), then scaled and
                // summed into i32 by one VNNI instruction.
                let mut s = _mm512_setzero_si512();
                for i in 0..4 {
                    let pairs = _mm512_maddubs_epi16(codes[i], _mm512_loadu_si512(q.add(64 * i).cast()));
                    s = _mm512_dpwssd_epi32(s, pairs, scales[i]);
                }
                let scale = _mm512_mul_ps(vd, _mm512_set1_ps(blk_a.d));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[r]);
                macc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(blk_a.dsums.as_ptr()), mins, macc[r]);
            }
        }
        row_sums512(&acc, &macc)
    }
}
