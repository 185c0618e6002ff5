//! GGML's reference Q4_K quantizer, giving the same blocks as candle's, several times faster.
//!
//! candle's version allocates a buffer per 32-weight sub-block and calls libm's `roundf` for
//! every weight in each of up to five refinement passes: at full depth it took most of the
//! load. Here the same arithmetic runs in the same order for each sub-block (so the bytes are
//! identical, which the tests check against candle), the eight sub-blocks of a block side by side
//! in vector lanes, with no allocation, in a function compiled for AVX2 where rounding half away
//! from zero is an inline instruction sequence with `roundf`'s results.

use half::f16;

use super::Quantizer;

/// Weights per block.
const QK: usize = 256;
/// Bytes per block: `d`, `dmin` (f16), twelve scale bytes, 128 code bytes.
pub(crate) const BLOCK_BYTES: usize = 144;

/// The Q4_K quantizer.
pub(crate) const QUANTIZER: Quantizer = Quantizer {
    block_values: QK,
    block_bytes: BLOCK_BYTES,
    #[cfg(target_arch = "x86_64")]
    avx2: quantize_avx2,
    portable: quantize_blocks,
};

/// [`quantize_blocks`] compiled with AVX2 (eight lanes, inline rounding; no FMA, which would
/// change the results).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(x: &[f32], out: &mut [u8]) {
    quantize_blocks(x, out);
}

/// The blocks of `x`, in plain Rust.
#[inline(always)]
fn quantize_blocks(x: &[f32], out: &mut [u8]) {
    for (x, block) in x.chunks_exact(QK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        quantize_block(x, block);
    }
}

/// `v` rounded half away from zero, as GGML's `nearest_int` in candle.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    v.round() as i32
}

/// `v`'s bits as an i32 that orders as `f32::total_cmp` orders floats (negative values have
/// their magnitude bits flipped). The map is its own inverse.
#[inline(always)]
fn total_key(v: f32) -> i32 {
    let bits = v.to_bits() as i32;
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// The float whose [`total_key`] is `key`.
#[inline(always)]
fn from_total_key(key: i32) -> f32 {
    f32::from_bits(total_key(f32::from_bits(key as u32)) as u32)
}

/// `nearest_int(v).clamp(0, max)` in float operations the compiler keeps in vector lanes
/// (Rust's saturating float-to-int cast does not vectorize): the same value for every `v`,
/// NaN included (`f32::max` drops it, as the cast makes it 0).
#[inline(always)]
fn nearest_code(v: f32, max: f32) -> i32 {
    let clamped = v.round().max(0.0).min(max);
    // SAFETY: `clamped` is finite and within 0..=max, which fits an i32.
    unsafe { clamped.to_int_unchecked::<i32>() }
}

/// One block, as candle's `BlockQ4K::from_float` computes it.
#[inline(always)]
fn quantize_block(x: &[f32], block: &mut [u8]) {
    let (scales, mins) = scales_and_mins(x);
    let max_scale = scales.iter().fold(0.0, |max: f32, &v| v.max(max));
    let max_min = mins.iter().fold(0.0, |max: f32, &v| v.max(max));
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..QK / 32 {
        let ls = nearest_int(inv_scale * scales[j]).min(63) as u8;
        let lm = nearest_int(inv_min * mins[j]).min(63) as u8;
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    let mut codes = [0u8; QK];
    for j in 0..QK / 32 {
        let (sc, m) = if j < 4 {
            (packed[j] & 63, packed[j + 4] & 63)
        } else {
            (
                (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4),
                (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
            )
        };
        let dj = d.to_f32() * sc as f32;
        if dj != 0.0 {
            let dm = dmin.to_f32() * m as f32;
            for i in 0..32 {
                codes[32 * j + i] = nearest_code((x[32 * j + i] + dm) / dj, 15.0) as u8;
            }
        }
    }
    block[0..2].copy_from_slice(&d.to_le_bytes());
    block[2..4].copy_from_slice(&dmin.to_le_bytes());
    block[4..16].copy_from_slice(&packed);
    for run in 0..4 {
        for i in 0..32 {
            block[16 + 32 * run + i] = codes[64 * run + i] | (codes[64 * run + 32 + i] << 4);
        }
    }
}

/// The scale and (negated) minimum of each 32-weight sub-block: GGML's `make_qkx1_quants` with
/// 15 levels and up to five refinement passes, in candle's order of operations for each
/// sub-block, the eight sub-blocks side by side in the lanes of plain arrays (so the compiler
/// vectorizes across them while every sub-block's sums keep their sequential order). A
/// sub-block stops refining after the first pass that changes none of its codes, as in GGML.
#[inline(always)]
fn scales_and_mins(x: &[f32]) -> ([f32; 8], [f32; 8]) {
    const NMAX: i32 = 15;
    const LANES: usize = QK / 32;
    // xt[i][k]: weight i of sub-block k.
    let mut xt = [[0f32; LANES]; 32];
    for (k, sub) in x.chunks_exact(32).enumerate() {
        for (i, &v) in sub.iter().enumerate() {
            xt[i][k] = v;
        }
    }
    let mut scale = [0f32; LANES];
    let mut min = [0f32; LANES];
    let mut iscale = [0f32; LANES];
    let mut active = [false; LANES];
    for (k, sub) in x.chunks_exact(32).enumerate() {
        // The least and greatest in `f32::total_cmp`'s order (as candle takes them), through
        // integer keys whose minimum and maximum vectorize.
        let lo = from_total_key(sub.iter().fold(i32::MAX, |m, &v| m.min(total_key(v))));
        let hi = from_total_key(sub.iter().fold(i32::MIN, |m, &v| m.max(total_key(v))));
        if hi != lo {
            min[k] = lo.min(0.);
            iscale[k] = NMAX as f32 / (hi - min[k]);
            scale[k] = 1.0 / iscale[k];
            active[k] = true;
        }
    }
    let mut l = [[0i32; LANES]; 32];
    for _ in 0..5 {
        if !active.contains(&true) {
            break;
        }
        let mut sumlx = [0f32; LANES];
        let mut suml2 = [0i32; LANES];
        let mut changed = [false; LANES];
        for (xi, li) in xt.iter().zip(l.iter_mut()) {
            for k in 0..LANES {
                let q = nearest_code(iscale[k] * (xi[k] - min[k]), NMAX as f32);
                changed[k] |= q != li[k];
                li[k] = q;
                sumlx[k] += (xi[k] - min[k]) * q as f32;
                suml2[k] += q * q;
            }
        }
        let mut next_scale = [0f32; LANES];
        for k in 0..LANES {
            next_scale[k] = sumlx[k] / suml2[k] as f32;
        }
        let mut sum = [0f32; LANES];
        for (xi, li) in xt.iter().zip(l.iter()) {
            for k in 0..LANES {
                sum[k] += xi[k] - next_scale[k] * li[k] as f32;
            }
        }
        for k in 0..LANES {
            if active[k] {
                scale[k] = next_scale[k];
                let m = sum[k] / 32.0;
                min[k] = if m > 0.0 { 0.0 } else { m };
                iscale[k] = 1.0 / scale[k];
                active[k] = changed[k];
            }
        }
    }
    let mut scales = [0f32; LANES];
    let mut mins = [0f32; LANES];
    for k in 0..LANES {
        // A constant sub-block never started: (0, 0), as GGML returns it.
        if iscale[k] != 0.0 || scale[k] != 0.0 {
            (scales[k], mins[k]) = (scale[k], -min[k]);
        }
    }
    (scales, mins)
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;

    use super::*;

    /// Rows of every kind a checkpoint has, and the corner cases of the search: constant
    /// sub-blocks, all-negative and all-positive ones, zeros, large and tiny magnitudes,
    /// non-finite values.
    fn rows() -> Vec<f32> {
        let mut x = super::super::weight_like_values(64 * QK, QK);
        x[0..32].fill(0.0);
        x[32..64].fill(0.7);
        x[64..96].iter_mut().for_each(|v| *v = -v.abs() - 0.01);
        x[96..128].iter_mut().for_each(|v| *v = v.abs() * 1e4);
        x[128..160].iter_mut().for_each(|v| *v *= 1e-6);
        // Signed zeros, which `total_cmp` orders (−0 before +0).
        x[192..224].iter_mut().enumerate().for_each(|(i, v)| *v = if i % 2 == 0 { -0.0 } else { 0.0 });
        x[200] = 0.3;
        x[224..256].iter_mut().enumerate().for_each(|(i, v)| *v = if i % 3 == 0 { -0.0 } else { -0.2 });
        // Non-finite weights: the codes' clamp must treat them as the saturating cast does.
        x[3 * QK + 5] = f32::NAN;
        x[4 * QK + 40] = f32::INFINITY;
        x[5 * QK + 70] = f32::NEG_INFINITY;
        x[QK..2 * QK].fill(0.0);
        x
    }

    #[test]
    fn blocks_equal_candles_byte_for_byte() {
        super::super::assert_candles_bytes(&QUANTIZER, GgmlDType::Q4K, &rows());
    }
}
