//! GGML's reference Q8_0 quantizer, giving the same blocks as candle's, several times faster.
//!
//! candle's version calls libm's `roundf` for every weight, one at a time: loading a
//! checkpoint at `--isq q8_0` spent about half its time there. Here the same arithmetic runs in
//! the same order (so the bytes are identical, which the tests check against candle), in AVX2
//! vectors where the CPU has them.

use half::f16;

use super::Quantizer;

/// Weights per block.
const QK: usize = 32;
/// Bytes per block: `d` (f16), then 32 signed codes.
pub(crate) const BLOCK_BYTES: usize = 34;

/// The Q8_0 quantizer.
pub(crate) const QUANTIZER: Quantizer = Quantizer {
    block_values: QK,
    block_bytes: BLOCK_BYTES,
    #[cfg(target_arch = "x86_64")]
    avx2: quantize_avx2,
    portable: quantize_blocks,
};

/// [`quantize_blocks`] in AVX2 vectors, with the same bytes: the maximum skips NaN as
/// `f32::max` does, `round` is `trunc(y ± (0.5 − 2⁻²⁵))` (exactly `roundf`, ties away from
/// zero, where adding 0.5 would carry 0.49999997 up to 1), and the clamp and NaN's zero are
/// those of Rust's saturating cast.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(x: &[f32], out: &mut [u8]) {
    use std::arch::x86_64::*;
    let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let (sign, below_half) = (_mm256_set1_ps(-0.0), _mm256_set1_ps(f32::from_bits(0x3EFF_FFFF)));
    let (lowest, highest) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    // `packs` interleaves 128-bit lanes; this permutation puts the dwords back in order.
    let in_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (x, block) in x.chunks_exact(QK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i)));
        let mut lanes = _mm256_setzero_ps();
        for v in v {
            // `vmaxps` returns its second operand where either is NaN.
            lanes = _mm256_max_ps(_mm256_and_ps(v, magnitude), lanes);
        }
        let mut wide = [0f32; 8];
        _mm256_storeu_ps(wide.as_mut_ptr(), lanes);
        let amax = wide.iter().fold(0f32, |m, &v| m.max(v));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        block[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        let to_int = |v: __m256| {
            let y = _mm256_mul_ps(v, id);
            let nudged = _mm256_add_ps(y, _mm256_or_ps(_mm256_and_ps(y, sign), below_half));
            let rounded = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(nudged);
            let finite = _mm256_and_ps(rounded, _mm256_cmp_ps::<_CMP_ORD_Q>(rounded, rounded));
            _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(finite, lowest), highest))
        };
        let [a, b, c, e] = v.map(to_int);
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, e));
        _mm256_storeu_si256(block.as_mut_ptr().add(2).cast(), _mm256_permutevar8x32_epi32(bytes, in_order));
    }
}

/// Each block as candle's `BlockQ8_0::from_float` computes it: `d = amax / 127` (the maximum
/// skipping NaN), codes `round(x / d)` with Rust's saturating cast (NaN to 0).
#[inline(always)]
fn quantize_blocks(x: &[f32], out: &mut [u8]) {
    for (x, block) in x.chunks_exact(QK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        block[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (q, v) in block[2..].iter_mut().zip(x) {
            *q = (v * id).round() as i8 as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;

    use super::*;

    #[test]
    fn blocks_equal_candles_byte_for_byte() {
        let mut x = super::super::weight_like_values(512 * QK, QK);
        // Zeros, a constant, tiny and huge magnitudes, exact rounding ties, a NaN and an infinity.
        x[0..32].fill(0.0);
        x[32..64].fill(0.7);
        x[64..96].iter_mut().for_each(|v| *v *= 1e-30);
        x[96..128].iter_mut().for_each(|v| *v *= 1e30);
        x[128..160].iter_mut().enumerate().for_each(|(i, v)| *v = (i as f32 - 15.5) / 31.0 * 127.0);
        // With 127 in the block, d = 1 and the codes are the values rounded: ties go away from
        // zero, and just below a half goes down.
        let below_half = f32::from_bits(0x3EFF_FFFF);
        for (i, v) in x[224..256].iter_mut().enumerate() {
            *v = match i {
                0 => 127.0,
                1 => below_half,
                2 => -below_half,
                3 => 1.0 + below_half,
                _ => (i as f32 - 16.0) + 0.5,
            };
        }
        x[170] = f32::NAN;
        x[200] = f32::INFINITY;
        super::super::assert_candles_bytes(&QUANTIZER, GgmlDType::Q8_0, &x);
    }
}
