//! Q8_0 weight rows dotted with activation rows quantized the same way, read straight from
//! GGML's block layout (no repacked copy).
//!
//! A GGML Q8_0 block is 32 signed bytes and one f16 scale `d` (34 bytes): weight `i` is
//! `d·q[i]`. As llama.cpp does for this format, the activations are quantized in blocks of 32
//! with a scale each ([`BlockQ8x32`]), not in Q8_K's blocks of 256: an activation outlier then
//! coarsens 31 neighbours rather than 255, which keeps Q8_0 the near-lossless choice it is
//! meant to be. The dot of two blocks is `d·a.d·Σ q·a`.
//!
//! The kernels take eight GGML blocks (256 weights, 272 bytes) as one block, so that the
//! row tiling and the panels ([`super::panels`]) serve this format as they serve the k-quants.
//! Models use them where the CPU has the panel kernels ([`super::q8_0_panel`],
//! [`super::q8_0_panel_avx2`]); widths that are not a multiple of 256, and CPUs without AVX2,
//! keep candle's kernels ([`super::BlockFormat::for_weight`]). The row kernels here serve the
//! rows past the last panel, and the tests.

use half::f16;

use super::q8k::{ActivationBlock, QK};
use super::SimdLevel;

/// Weights per GGML block.
pub const QK8_0: usize = 32;

/// Bytes of one GGML block: `d` (f16), then the 32 codes.
pub const GGML_BLOCK_BYTES: usize = 34;

/// Bytes of the eight GGML blocks these kernels take as one.
pub const BLOCK_BYTES: usize = 8 * GGML_BLOCK_BYTES;

/// 256 activations in eight blocks of 32, each with its own scale: `x ≈ d[j]·q`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8x32 {
    /// The quantized values.
    pub qs: [i8; QK],
    /// `d[j]`: the scale of values `32j…32j + 32`.
    pub d: [f32; QK / QK8_0],
    /// `sums[j] = Σ qs[32j..32j+32]`: the VNNI kernel multiplies unsigned bytes, so it
    /// offsets the weights by 128 and takes `128·sums[j]` back off.
    pub sums: [i32; QK / QK8_0],
}

impl ActivationBlock for BlockQ8x32 {
    /// Each run of 32: the largest magnitude maps to ±127, the rest round to nearest (half
    /// away from zero), as in [`BlockQ8K`](super::BlockQ8K): a run of zeros gets `d` 0, one
    /// holding an infinity `d` NaN (so its products are NaN), and a NaN value quantizes to 0.
    fn quantize(x: &[f32]) -> Self {
        let mut b = BlockQ8x32 { qs: [0; QK], d: [0.0; QK / QK8_0], sums: [0; QK / QK8_0] };
        for (j, run) in x.chunks_exact(QK8_0).enumerate() {
            let amax = run.iter().fold(0f32, |m, v| m.max(v.abs()));
            if amax == 0.0 || !amax.is_finite() {
                b.d[j] = if amax == 0.0 { 0.0 } else { f32::NAN };
                continue;
            }
            let iscale = 127.0 / amax;
            b.d[j] = amax / 127.0;
            let qs = &mut b.qs[QK8_0 * j..QK8_0 * (j + 1)];
            for (q, v) in qs.iter_mut().zip(run) {
                // Round half away from zero without a libm call: truncate `y ± 0.5`.
                let y = v * iscale;
                *q = (y + 0.5f32.copysign(y)) as i8;
            }
            b.sums[j] = qs.iter().map(|&q| q as i32).sum();
        }
        b
    }
}

/// `out[r] = w · acts[r]` for each activation row, with the level's kernel (AVX2 at every
/// level from AVX2 up: the wider CPUs multiply whole panels, [`super::q8_0_panel`]).
pub(super) fn dot_rows(level: SimdLevel, w: &[u8], acts: &[&[BlockQ8x32]], out: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 | SimdLevel::Avx512Vnni | SimdLevel::Amx => {
            super::for_tile!(acts, out, |a| unsafe { avx2::dot(w, a) })
        }
        _ => {
            for (o, a) in out.iter_mut().zip(acts) {
                *o = dot_scalar(w, a);
            }
        }
    }
}

/// The plain reference: one weight row with one activation row.
pub(super) fn dot_scalar(w: &[u8], a: &[BlockQ8x32]) -> f32 {
    let mut total = 0f32;
    for (blk, a) in w.chunks_exact(BLOCK_BYTES).zip(a) {
        for (j, g) in blk.chunks_exact(GGML_BLOCK_BYTES).enumerate() {
            let d = f16::from_le_bytes([g[0], g[1]]).to_f32();
            let acts = &a.qs[QK8_0 * j..QK8_0 * (j + 1)];
            let sumi: i32 = g[2..].iter().zip(acts).map(|(&w, &q)| w as i8 as i32 * q as i32).sum();
            total += d * a.d[j] * sumi as f32;
        }
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockQ8x32, BLOCK_BYTES, GGML_BLOCK_BYTES, QK8_0};
    use crate::kernels::x86::hsum256;

    /// `w` with each of the `R` activation rows: per GGML block, `vpmaddubsw` of the weights'
    /// magnitudes with the activations carrying the weights' signs (GGML's trick for a
    /// signed × signed byte product), summed to 32 bits and scaled in f32.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; every row of `a` must have `w.len() / 272` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot<const R: usize>(w: &[u8], a: [&[BlockQ8x32]; R]) -> [f32; R] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, blk) in w.chunks_exact(BLOCK_BYTES).enumerate() {
            for j in 0..BLOCK_BYTES / GGML_BLOCK_BYTES {
                let p = blk.as_ptr().add(GGML_BLOCK_BYTES * j);
                let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                    std::ptr::read_unaligned(p.cast::<u16>()) as i32,
                )));
                let q = _mm256_loadu_si256(p.add(2).cast());
                let magnitude = _mm256_sign_epi8(q, q);
                for r in 0..R {
                    let blocks = a[r].get_unchecked(b);
                    let x = _mm256_loadu_si256(blocks.qs.as_ptr().add(QK8_0 * j).cast());
                    let pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(x, q));
                    let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                    acc[r] = _mm256_fmadd_ps(sums, _mm256_set1_ps(d * blocks.d[j]), acc[r]);
                }
            }
        }
        std::array::from_fn(|r| hsum256(acc[r]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_32_reconstruct_their_values_and_sum_their_codes() {
        // One run of small values beside one of large ones: each keeps its own scale.
        let x: Vec<f32> =
            (0..QK).map(|i| ((i * 37 % 101) as f32 - 50.0) * if i < 32 { 1e-3 } else { 3.0 }).collect();
        let b = BlockQ8x32::quantize(&x);
        for j in 0..QK / QK8_0 {
            let run = &x[QK8_0 * j..QK8_0 * (j + 1)];
            let amax = run.iter().fold(0f32, |m, v| m.max(v.abs()));
            let qs = &b.qs[QK8_0 * j..QK8_0 * (j + 1)];
            for (q, v) in qs.iter().zip(run) {
                assert!((b.d[j] * *q as f32 - v).abs() <= 0.5 * amax / 127.0 * 1.0001, "run {j}");
            }
            assert!(qs.iter().any(|q| q.abs() == 127));
            assert_eq!(b.sums[j], qs.iter().map(|&q| q as i32).sum::<i32>());
        }
    }

    #[test]
    fn zero_runs_stay_zero_and_non_finite_runs_stay_non_finite() {
        let mut x = vec![1f32; QK];
        x[..QK8_0].fill(0.0);
        x[40] = f32::INFINITY;
        let b = BlockQ8x32::quantize(&x);
        assert_eq!((b.d[0], b.sums[0]), (0.0, 0));
        assert!(b.d[1].is_nan());
        assert_eq!(b.d[2], 1.0 / 127.0);
    }
}
