//! Activations quantized to 8-bit blocks of 256 (GGML's Q8_K), the other operand of every
//! k-quant dot product.
//!
//! Each block holds a scale `d`, 256 signed bytes `q` with `x ≈ d·q`, and the sums of each run
//! of 16 bytes: the k-quant formats store weights as unsigned codes with an offset (Q4_K's
//! minimum, Q6_K's −32), and `Σ offset·q` over a group is `offset·bsum`, so the kernels fold the
//! offset in once per group instead of once per weight.

use rayon::prelude::*;

/// Values per block.
pub const QK: usize = 256;

/// One block of 256 quantized activations.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8K {
    /// Scale: `x ≈ d · q`.
    pub d: f32,
    /// The quantized values.
    pub qs: [i8; QK],
    /// `bsums[g] = Σ qs[16g..16g+16]`.
    pub bsums: [i16; QK / 16],
    /// `sub_sums[j] = Σ qs[32j..32j+32]`: the sums of Q4_K's 32-value sub-blocks, stored so
    /// that each adjacent pair is one 32-bit word the panel kernel broadcasts from memory.
    pub sub_sums: [i16; QK / 32],
    /// `d · bsums[g]`: the group sums as the values they stand for, so the SIMD kernels fold
    /// a weight block's offsets in with one multiply-add per block and row.
    pub dsums: [f32; QK / 16],
}

impl BlockQ8K {
    const ZERO: BlockQ8K =
        BlockQ8K { d: 0.0, qs: [0; QK], bsums: [0; QK / 16], sub_sums: [0; QK / 32], dsums: [0.0; QK / 16] };

    /// Quantizes 256 values: the largest magnitude maps to ±127, the rest round to nearest
    /// (half away from zero), as GGML's reference quantizer does.
    fn quantize(x: &[f32]) -> BlockQ8K {
        #[cfg(target_arch = "x86_64")]
        if super::simd_level() >= super::SimdLevel::Avx2 {
            // SAFETY: the CPU has AVX2 (checked by `simd_level`).
            return unsafe { Self::quantize_avx2(x) };
        }
        Self::quantize_portable(x)
    }

    /// [`BlockQ8K::quantize_portable`] in AVX2 vectors, with the same bits: the maximum skips
    /// NaN as `f32::max` does, and the rounding, the saturation and NaN's zero are those of
    /// Rust's float-to-int cast.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn quantize_avx2(x: &[f32]) -> BlockQ8K {
        use std::arch::x86_64::*;
        assert_eq!(x.len(), QK);
        // SAFETY: `i < QK / 8` below, so the eight values are inside `x`.
        let load = |i: usize| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) };
        let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let mut lanes = _mm256_setzero_ps();
        for i in 0..QK / 8 {
            // `vmaxps` returns its second operand where either is NaN.
            lanes = _mm256_max_ps(_mm256_and_ps(load(i), magnitude), lanes);
        }
        let mut wide = [0f32; 8];
        // SAFETY: `wide` has the eight lanes' room.
        unsafe { _mm256_storeu_ps(wide.as_mut_ptr(), lanes) };
        let amax = wide.iter().fold(0f32, |m, &v| m.max(v));
        if amax == 0.0 || !amax.is_finite() {
            return Self::non_finite(amax);
        }
        let iscale = _mm256_set1_ps(127.0 / amax);
        let (sign, half) = (_mm256_set1_ps(-0.0), _mm256_set1_ps(0.5));
        let (lowest, highest) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
        let to_int = |v: __m256| {
            let y = _mm256_mul_ps(v, iscale);
            let rounded = _mm256_add_ps(y, _mm256_or_ps(_mm256_and_ps(y, sign), half));
            let finite = _mm256_and_ps(rounded, _mm256_cmp_ps::<_CMP_ORD_Q>(rounded, rounded));
            _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(finite, lowest), highest))
        };
        // `packs` interleaves 128-bit lanes; this permutation puts the dwords back in order.
        let in_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let (ones8, ones16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
        let mut b = BlockQ8K { d: amax / 127.0, ..BlockQ8K::ZERO };
        // The sums of each 32-byte run's quads of bytes: dwords 0–3 are group 2i's, 4–7 2i + 1's.
        let mut quads = [_mm256_setzero_si256(); QK / 32];
        for (i, quad) in quads.iter_mut().enumerate() {
            let [a, c, e, g] = std::array::from_fn(|k| to_int(load(4 * i + k)));
            let bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, c), _mm256_packs_epi32(e, g));
            let q = _mm256_permutevar8x32_epi32(bytes, in_order);
            // SAFETY: bytes `32i…32i + 32` of the 256 in `qs`.
            unsafe { _mm256_storeu_si256(b.qs.as_mut_ptr().add(32 * i).cast(), q) };
            *quad = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16);
        }
        // Two rounds of pairwise sums leave groups 0, 2, 4, 6 in the low lane, 1, 3, 5, 7 in
        // the high one.
        let groups = |q: &[__m256i]| {
            let sums = _mm256_hadd_epi32(_mm256_hadd_epi32(q[0], q[1]), _mm256_hadd_epi32(q[2], q[3]));
            _mm256_permutevar8x32_epi32(sums, in_order)
        };
        let (first, second) = (groups(&quads[..4]), groups(&quads[4..]));
        let bsums = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(first, second));
        let d = _mm256_set1_ps(b.d);
        // SAFETY: sixteen i16 `bsums` and sixteen f32 `dsums`.
        unsafe {
            _mm256_storeu_si256(b.bsums.as_mut_ptr().cast(), bsums);
            _mm256_storeu_ps(b.dsums.as_mut_ptr(), _mm256_mul_ps(d, _mm256_cvtepi32_ps(first)));
            _mm256_storeu_ps(b.dsums.as_mut_ptr().add(8), _mm256_mul_ps(d, _mm256_cvtepi32_ps(second)));
        }
        b.sum_sub_blocks();
        b
    }

    /// The block of a row whose largest magnitude `amax` is zero (all zero) or not finite
    /// (`d` NaN, so that the row's products are NaN rather than silently finite).
    fn non_finite(amax: f32) -> BlockQ8K {
        let mut b = BlockQ8K::ZERO;
        if amax != 0.0 {
            b.d = f32::NAN;
        }
        b
    }

    /// `sub_sums` from `bsums`.
    fn sum_sub_blocks(&mut self) {
        for (j, s) in self.sub_sums.iter_mut().enumerate() {
            *s = self.bsums[2 * j] + self.bsums[2 * j + 1];
        }
    }

    fn quantize_portable(x: &[f32]) -> BlockQ8K {
        // Eight running maxima so the loop vectorizes (`f32::max` does not reassociate).
        let mut lanes = [0f32; 8];
        for chunk in x.chunks_exact(8) {
            for (m, v) in lanes.iter_mut().zip(chunk) {
                *m = m.max(v.abs());
            }
        }
        let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
        if amax == 0.0 || !amax.is_finite() {
            return Self::non_finite(amax);
        }
        let iscale = 127.0 / amax;
        let mut b = BlockQ8K { d: amax / 127.0, ..BlockQ8K::ZERO };
        for (q, v) in b.qs.iter_mut().zip(x) {
            // Round half away from zero without a libm call: truncate `y ± 0.5`.
            let y = v * iscale;
            *q = (y + 0.5f32.copysign(y)) as i8;
        }
        for ((s, f), g) in b.bsums.iter_mut().zip(&mut b.dsums).zip(b.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
            *f = b.d * *s as f32;
        }
        b.sum_sub_blocks();
        b
    }
}

/// A block of 256 activations quantized for one weight format's kernels.
pub trait ActivationBlock: Sized + Send + Sync {
    /// Quantizes 256 values.
    fn quantize(x: &[f32]) -> Self;
}

impl ActivationBlock for BlockQ8K {
    fn quantize(x: &[f32]) -> Self {
        BlockQ8K::quantize(x)
    }
}

/// `rows` activation rows of `cols` values (a multiple of 256), quantized row by row into
/// blocks of type `B`.
pub struct QuantizedRows<B> {
    blocks: Vec<B>,
    blocks_per_row: usize,
}

/// Activation rows for the k-quant kernels.
pub type Q8KRows = QuantizedRows<BlockQ8K>;

impl<B: ActivationBlock> QuantizedRows<B> {
    /// Quantizes `x` (`rows × cols`, row-major); rows are split over the rayon pool when there
    /// are enough of them to pay for it.
    pub fn quantize(x: &[f32], cols: usize) -> Self {
        debug_assert!(cols.is_multiple_of(QK) && x.len().is_multiple_of(cols));
        let blocks_per_row = cols / QK;
        // Collected, not zeroed and then overwritten: a prefill's blocks are megabytes.
        let mut blocks = Vec::with_capacity(x.len() / QK);
        if x.len() / QK >= 64 {
            x.par_chunks_exact(QK).map(B::quantize).collect_into_vec(&mut blocks);
        } else {
            blocks.extend(x.chunks_exact(QK).map(B::quantize));
        }
        QuantizedRows { blocks, blocks_per_row }
    }

    /// The blocks of row `r`.
    pub fn row(&self, r: usize) -> &[B] {
        &self.blocks[r * self.blocks_per_row..(r + 1) * self.blocks_per_row]
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.blocks.len().checked_div(self.blocks_per_row).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_reconstruct_their_values_and_sum_their_groups() {
        let x: Vec<f32> = (0..2 * QK).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let rows = Q8KRows::quantize(&x, QK);
        assert_eq!(rows.rows(), 2);
        for r in 0..2 {
            let b = &rows.row(r)[0];
            let amax = x[r * QK..(r + 1) * QK].iter().fold(0f32, |m, v| m.max(v.abs()));
            for (q, v) in b.qs.iter().zip(&x[r * QK..]) {
                assert!((b.d * *q as f32 - v).abs() <= 0.5 * amax / 127.0 + 1e-7);
            }
            assert!(b.qs.iter().any(|q| q.abs() == 127));
            for g in 0..16 {
                let sum: i32 = b.qs[16 * g..16 * g + 16].iter().map(|&q| q as i32).sum();
                assert_eq!(b.bsums[g] as i32, sum);
                assert_eq!(b.dsums[g], b.d * sum as f32);
            }
            for j in 0..8 {
                let sum: i32 = b.qs[32 * j..32 * j + 32].iter().map(|&q| q as i32).sum();
                assert_eq!(b.sub_sums[j] as i32, sum);
            }
        }
    }

    /// The AVX2 build of the quantizer gives the portable one's bits, rounding ties included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_build_gives_the_portable_bits() {
        if crate::kernels::simd_level() < crate::kernels::SimdLevel::Avx2 {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        }
        for seed in 0..60usize {
            let scale = 10f32.powi(seed as i32 % 7 - 3);
            // Multiples of 1/254 of the largest value land exactly on rounding ties.
            let mut x: Vec<f32> =
                (0..QK).map(|i| ((i * 37 + seed * 11) % 255) as f32 / 254.0 * scale - scale / 2.0).collect();
            match seed {
                // A NaN among finite values is skipped by the maximum and quantized to 0.
                50..=52 => x[seed * 4] = f32::NAN,
                53 => x[7] = f32::NEG_INFINITY,
                // Values so small that 127 / amax overflows to infinity: the casts saturate.
                54..=56 => x.iter_mut().for_each(|v| *v *= 1e-38),
                57 => x.iter_mut().for_each(|v| *v = 0.0),
                _ => {}
            }
            // SAFETY: AVX2 checked above.
            let (simd, portable) = (unsafe { BlockQ8K::quantize_avx2(&x) }, BlockQ8K::quantize_portable(&x));
            assert_eq!(
                (simd.d.to_bits(), simd.qs, simd.bsums),
                (portable.d.to_bits(), portable.qs, portable.bsums)
            );
            assert_eq!(
                (simd.sub_sums, simd.dsums.map(f32::to_bits)),
                (portable.sub_sums, portable.dsums.map(f32::to_bits))
            );
        }
    }

    #[test]
    fn zero_rows_stay_zero_and_non_finite_rows_stay_non_finite() {
        let rows = Q8KRows::quantize(&[0f32; QK], QK);
        assert_eq!(rows.row(0)[0].d, 0.0);
        let mut x = vec![1f32; QK];
        x[3] = f32::INFINITY;
        assert!(Q8KRows::quantize(&x, QK).row(0)[0].d.is_nan());
    }
}
