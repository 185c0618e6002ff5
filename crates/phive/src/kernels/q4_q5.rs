//! GGML's 32-weight formats Q4_0, Q4_1, Q5_0 and Q5_1 times f32 activations, read straight
//! from GGML's blocks, on any width that is a multiple of 32.
//!
//! candle multiplies Q4_1, Q5_0 and Q5_1 with scalar code (a Q5_0 language model decoded at a
//! thirteenth of Q4_K's speed), and these are the types the k-quants fall back to on widths that
//! are not multiples of 256: Phi-4's SigLIP tower (width 1,152) under `--isq-encoders` ran its
//! projections as Q5_0.
//!
//! A block holds 32 unsigned codes `q` (4 bits, or 4 + 1 high bit from `qh`) and a scale `d`:
//! weight `i` is `d·(q[i] − o)` with `o` 8 or 16 (Q4_0, Q5_0), or `d·q[i] + m` with the block's
//! stored minimum `m` (Q4_1, Q5_1). As for Q8_0 ([`super::q8_0`]), the activations are
//! quantized in runs of 32 with a scale `d_a` each ([`BlockQ8x32`]), so a block's dot is
//! `d·d_a·(Σ q·a − o·Σ a)` or `d·d_a·Σ q·a + m·d_a·Σ a`: one integer dot product
//! (`vpmaddubsw` takes the unsigned codes against the signed activations; a pair reaches at
//! most 2·31·127) and the run's sum, which the symmetric formats take off in integers.

use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

use super::gemm::SharedOut;
use super::q8_0::{BlockQ8x32, QK8_0};
use super::q8k::{QuantizedRows, QK};
use super::{by_rows, SimdLevel, WeightRows};
use crate::Result;

/// One of GGML's 32-weight formats with 4- or 5-bit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmallBlock {
    /// `d`, 16 bytes of nibbles: `d·(q − 8)`; 18 bytes.
    Q4_0,
    /// `d`, `m`, 16 bytes of nibbles: `d·q + m`; 20 bytes.
    Q4_1,
    /// `d`, 32 high bits, 16 bytes of nibbles: `d·(q − 16)`; 22 bytes.
    Q5_0,
    /// `d`, `m`, 32 high bits, 16 bytes of nibbles: `d·q + m`; 24 bytes.
    Q5_1,
}

impl SmallBlock {
    /// The format of a GGML type, if it is one of these.
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(SmallBlock::Q4_0),
            GgmlDType::Q4_1 => Some(SmallBlock::Q4_1),
            GgmlDType::Q5_0 => Some(SmallBlock::Q5_0),
            GgmlDType::Q5_1 => Some(SmallBlock::Q5_1),
            _ => None,
        }
    }

    /// The format with 5-bit codes (`high`) or 4-bit ones, and a stored minimum (`min`) or a
    /// fixed offset.
    pub(super) const fn with(high: bool, min: bool) -> Self {
        match (high, min) {
            (false, false) => SmallBlock::Q4_0,
            (false, true) => SmallBlock::Q4_1,
            (true, false) => SmallBlock::Q5_0,
            (true, true) => SmallBlock::Q5_1,
        }
    }

    /// The GGML type.
    pub fn ggml(self) -> GgmlDType {
        match self {
            SmallBlock::Q4_0 => GgmlDType::Q4_0,
            SmallBlock::Q4_1 => GgmlDType::Q4_1,
            SmallBlock::Q5_0 => GgmlDType::Q5_0,
            SmallBlock::Q5_1 => GgmlDType::Q5_1,
        }
    }

    /// The format of a weight of type `dtype` with `cols` input features, if these kernels
    /// multiply it here: whole blocks, on a CPU with AVX2 (without it, candle's scalar code is
    /// no slower than the scalar reference here).
    pub fn for_weight(dtype: GgmlDType, cols: usize) -> Option<Self> {
        Self::from_ggml(dtype)
            .filter(|_| cols.is_multiple_of(QK8_0) && super::simd_level() >= SimdLevel::Avx2)
    }

    /// Bytes of one block.
    pub const fn block_bytes(self) -> usize {
        match self {
            SmallBlock::Q4_0 => 18,
            SmallBlock::Q4_1 => 20,
            SmallBlock::Q5_0 => 22,
            SmallBlock::Q5_1 => 24,
        }
    }

    /// Lines of a panel block of eight blocks ([`super::panels`]) that hold the scales: one
    /// per two blocks, or one per block beside its minimum.
    pub(super) const fn scale_lines(self) -> usize {
        if self.offset().is_some() {
            4
        } else {
            8
        }
    }

    /// The first line of a panel block that holds nibbles: after the scales and the 5-bit
    /// formats' high bits, a line per block.
    pub(super) const fn nibble_lines_at(self) -> usize {
        self.scale_lines() + if self.high_bits_at().is_some() { 8 } else { 0 }
    }

    /// Where the 32 high bits start, for the 5-bit formats.
    pub(super) const fn high_bits_at(self) -> Option<usize> {
        match self {
            SmallBlock::Q5_0 => Some(2),
            SmallBlock::Q5_1 => Some(4),
            SmallBlock::Q4_0 | SmallBlock::Q4_1 => None,
        }
    }

    /// The codes' offset `o` of the symmetric formats (weight `d·(q − o)`); `None` for the
    /// formats that store a minimum instead.
    pub(super) const fn offset(self) -> Option<i32> {
        match self {
            SmallBlock::Q4_0 => Some(8),
            SmallBlock::Q5_0 => Some(16),
            SmallBlock::Q4_1 | SmallBlock::Q5_1 => None,
        }
    }

    /// The block's scale `d`.
    fn scale(block: &[u8]) -> f32 {
        f16::from_le_bytes([block[0], block[1]]).to_f32()
    }

    /// The block's stored minimum `m` (Q4_1, Q5_1: weight `d·q + m`).
    fn min(block: &[u8]) -> f32 {
        f16::from_le_bytes([block[2], block[3]]).to_f32()
    }

    /// The 32 high bits of a 5-bit block (bit `i` is code `i`'s fifth bit), 0 for 4 bits.
    fn high_bits(self, block: &[u8]) -> u32 {
        self.high_bits_at()
            .map_or(0, |at| u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]))
    }

    /// The block's 16 bytes of nibbles: code `i` is the low nibble of byte `i`, code `i + 16`
    /// its high nibble.
    fn nibbles(self, block: &[u8]) -> &[u8] {
        &block[self.block_bytes() - 16..]
    }

    /// The 32 codes of a block, `0..16` or `0..32`.
    fn codes(self, block: &[u8]) -> [u8; 32] {
        let (nibbles, high) = (self.nibbles(block), self.high_bits(block));
        std::array::from_fn(|i| {
            let nibble = if i < 16 { nibbles[i] & 0x0F } else { nibbles[i - 16] >> 4 };
            nibble | (((high >> i) & 1) as u8) << 4
        })
    }
}

/// `x` (`[m, cols]` row-major f32) times `wᵀ` for the `rows × cols` weight `data` in `format`:
/// `[m, rows]`, with the level's kernel (the scalar reference below AVX2), capped at what the
/// CPU has.
pub fn matmul(
    level: SimdLevel,
    x: &[f32],
    data: &[u8],
    format: SmallBlock,
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>> {
    let row_bytes = cols / QK8_0 * format.block_bytes();
    if cols == 0
        || !cols.is_multiple_of(QK8_0)
        || !x.len().is_multiple_of(cols)
        || data.len() != rows * row_bytes
    {
        return Err(candle_core::Error::Msg(format!(
            "quantized matmul: {} activations, {} weight bytes for a [{rows}, {cols}] {format:?} weight",
            x.len(),
            data.len()
        ))
        .into());
    }
    let level = level.min(super::simd::detected());
    let m = x.len() / cols;
    let acts = quantize_runs(x, cols);
    let mut out = Vec::with_capacity(m * rows);
    let spare = SharedOut::spare(&mut out);
    let weights = WeightRows { data, rows, row_bytes };
    by_rows(&acts, weights, spare, rows, 0, |w, a, o| dot_rows(level, format, w, a, o));
    // SAFETY: the tasks of `by_rows` wrote all `rows` columns of all `m` rows.
    unsafe { out.set_len(m * rows) };
    Ok(out)
}

/// The activation rows `x` (`cols` each) in runs of 32. They go in blocks of 256; a width
/// short of the next multiple is padded with zeros, runs that no weight block reads.
fn quantize_runs(x: &[f32], cols: usize) -> QuantizedRows<BlockQ8x32> {
    let padded = cols.next_multiple_of(QK);
    if padded == cols {
        return QuantizedRows::quantize(x, cols);
    }
    let mut wide = vec![0f32; x.len() / cols * padded];
    wide.par_chunks_exact_mut(padded)
        .zip(x.par_chunks_exact(cols))
        .for_each(|(w, r)| w[..cols].copy_from_slice(r));
    QuantizedRows::quantize(&wide, padded)
}

/// `out[r] = w · acts[r]` for each activation row, with the level's kernel.
pub(super) fn dot_rows(
    level: SimdLevel,
    format: SmallBlock,
    w: &[u8],
    acts: &[&[BlockQ8x32]],
    out: &mut [f32],
) {
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 | SimdLevel::Avx512Vnni | SimdLevel::Amx => {
            // SAFETY: every level from AVX2 up has AVX2, FMA and F16C; `matmul` checked the sizes.
            match format {
                SmallBlock::Q4_0 => {
                    super::for_tile!(acts, out, |a| unsafe { avx2::dot::<false, false, _>(w, a) })
                }
                SmallBlock::Q4_1 => {
                    super::for_tile!(acts, out, |a| unsafe { avx2::dot::<false, true, _>(w, a) })
                }
                SmallBlock::Q5_0 => {
                    super::for_tile!(acts, out, |a| unsafe { avx2::dot::<true, false, _>(w, a) })
                }
                SmallBlock::Q5_1 => {
                    super::for_tile!(acts, out, |a| unsafe { avx2::dot::<true, true, _>(w, a) })
                }
            }
        }
        _ => {
            for (o, a) in out.iter_mut().zip(acts) {
                *o = dot_scalar(format, w, a);
            }
        }
    }
}

/// The activations' run `j` (of 32): its bytes, scale and sum.
fn run(acts: &[BlockQ8x32], j: usize) -> (&[i8], f32, i32) {
    let (block, k) = (&acts[j / 8], j % 8);
    (&block.qs[QK8_0 * k..QK8_0 * (k + 1)], block.d[k], block.sums[k])
}

/// The reference: one weight row against one activation row, block after block.
fn dot_scalar(format: SmallBlock, w: &[u8], acts: &[BlockQ8x32]) -> f32 {
    let mut sum = 0f32;
    for (j, block) in w.chunks_exact(format.block_bytes()).enumerate() {
        let (a, da, sa) = run(acts, j);
        let d = SmallBlock::scale(block);
        let qa: i32 = format.codes(block).iter().zip(a).map(|(&q, &a)| q as i32 * a as i32).sum();
        sum += match format.offset() {
            Some(o) => d * da * (qa - o * sa) as f32,
            None => d * da * qa as f32 + SmallBlock::min(block) * da * sa as f32,
        };
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{run, BlockQ8x32, SmallBlock};

    /// The f16 at `block[at..at + 2]` in all 8 lanes. Converted as a whole vector: a scalar
    /// `vcvtph2ps` lets LLVM insert the word into whatever register is at hand (it chose the
    /// accumulator, chaining every block to the one before it).
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn half(block: &[u8], at: usize) -> __m256 {
        let bits = u16::from_le_bytes([block[at], block[at + 1]]);
        _mm256_cvtph_ps(_mm_set1_epi16(bits as i16))
    }

    /// A block's 32 codes as bytes, code `i` in byte `i`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn codes(format: SmallBlock, block: &[u8]) -> __m256i {
        let nibbles = _mm_loadu_si128(format.nibbles(block).as_ptr().cast());
        let low4 = _mm_set1_epi8(0x0F);
        let low = _mm_and_si128(nibbles, low4);
        let high = _mm_and_si128(_mm_srli_epi16::<4>(nibbles), low4);
        let codes = _mm256_set_m128i(high, low);
        if format.high_bits_at().is_none() {
            return codes;
        }
        // Byte i takes byte i/8 of the 32 bits (each 128-bit lane holds all four of them),
        // keeps its own bit i%8, and becomes 0x10 where that bit is set.
        let bits = _mm256_set1_epi32(format.high_bits(block) as i32);
        let spread = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(bits, spread), bit), bit);
        _mm256_or_si256(codes, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
    }

    /// `[w · acts[r]]` for a tile of `R` activation rows, `w` in the format that `HIGH` and
    /// `MIN` name (a kernel per format, so that its layout is constant).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `w` is whole blocks of that format and every
    /// activation row covers as many runs of 32.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot<const HIGH: bool, const MIN: bool, const R: usize>(
        w: &[u8],
        acts: [&[BlockQ8x32]; R],
    ) -> [f32; R] {
        let format = const { SmallBlock::with(HIGH, MIN) };
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins = [0f32; R];
        for (j, block) in w.chunks_exact(format.block_bytes()).enumerate() {
            let q = codes(format, block);
            let d = half(block, 0);
            for r in 0..R {
                let (a, da, sa) = run(acts[r], j);
                let products = _mm256_maddubs_epi16(q, _mm256_loadu_si256(a.as_ptr().cast()));
                let mut qa = _mm256_madd_epi16(products, ones);
                match format.offset() {
                    // Σ q·a − o·Σ a, the offset taken off in the first lane.
                    Some(o) => qa = _mm256_sub_epi32(qa, _mm256_castsi128_si256(_mm_cvtsi32_si128(o * sa))),
                    None => mins[r] += _mm256_cvtss_f32(half(block, 2)) * da * sa as f32,
                }
                acc[r] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(qa), _mm256_mul_ps(d, _mm256_set1_ps(da)), acc[r]);
            }
        }
        std::array::from_fn(|r| {
            let v = acc[r];
            let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
            let one = _mm_add_ss(pair, _mm_movehdup_ps(pair));
            _mm_cvtss_f32(one) + mins[r]
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::kernels::tests::pseudo_random;
    use crate::quant::quantize;

    const FORMATS: [(SmallBlock, GgmlDType); 4] = [
        (SmallBlock::Q4_0, GgmlDType::Q4_0),
        (SmallBlock::Q4_1, GgmlDType::Q4_1),
        (SmallBlock::Q5_0, GgmlDType::Q5_0),
        (SmallBlock::Q5_1, GgmlDType::Q5_1),
    ];

    /// A `[rows, cols]` weight in `dtype`: its blocks and candle's dequantized values.
    fn weight(rows: usize, cols: usize, dtype: GgmlDType) -> (Vec<u8>, Vec<f32>) {
        let w = Tensor::from_vec(pseudo_random(rows * cols, 7, 1.0), (rows, cols), &Device::Cpu).unwrap();
        let q = quantize(&w, dtype).unwrap();
        let values = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (q.data().unwrap().into_owned(), values)
    }

    /// The codes, scale and minimum read back give candle's dequantized weights.
    #[test]
    fn blocks_read_as_ggml_defines_them() {
        for (format, dtype) in FORMATS {
            let (data, values) = weight(3, 96, dtype);
            for (b, block) in data.chunks_exact(format.block_bytes()).enumerate() {
                let d = SmallBlock::scale(block);
                for (i, q) in format.codes(block).into_iter().enumerate() {
                    let value = match format.offset() {
                        Some(o) => d * (q as i32 - o) as f32,
                        None => d * q as f32 + SmallBlock::min(block),
                    };
                    let want = values[32 * b + i];
                    assert!(
                        (value - want).abs() <= 1e-6 * want.abs().max(1e-3),
                        "{format:?} block {b} code {i}"
                    );
                }
            }
        }
    }

    /// Products against f64 arithmetic on the dequantized weights and the quantized
    /// activations, on widths that are and are not multiples of 256, with 1 to 9 activation
    /// rows (one tile and more); every level this CPU has gives the reference's results.
    #[test]
    fn matmul_matches_exact_arithmetic_at_every_level() {
        for (format, dtype) in FORMATS {
            for (rows, cols, m) in [(5, 32, 1), (17, 96, 3), (9, 1152, 9), (33, 512, 8), (4, 288, 2)] {
                let (data, values) = weight(rows, cols, dtype);
                let x = pseudo_random(m * cols, 11 + cols as u64, 1.0);
                let reference = matmul(SimdLevel::Scalar, &x, &data, format, rows, cols).unwrap();
                let acts = quantize_runs(&x, cols);
                for r in 0..m {
                    for c in 0..rows {
                        let exact: f64 = (0..cols)
                            .map(|i| {
                                let (a, da, _) = run(acts.row(r), i / 32);
                                values[c * cols + i] as f64 * da as f64 * a[i % 32] as f64
                            })
                            .sum();
                        let got = reference[r * rows + c] as f64;
                        assert!(
                            (got - exact).abs() < 1e-4,
                            "{format:?} [{rows}x{cols}] row {r} col {c}: {got} vs {exact}"
                        );
                    }
                }
                for level in SimdLevel::available() {
                    let y = matmul(level, &x, &data, format, rows, cols).unwrap();
                    for (i, (a, b)) in y.iter().zip(&reference).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                            "{format:?} {level:?} [{rows}x{cols}] {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    /// Codes at both ends of their range (0 and 15 or 31) against activations at ±127, which
    /// quantize exactly: the products equal the dequantized weights' dot.
    #[test]
    fn extreme_codes_multiply_exactly() {
        for (format, dtype) in FORMATS {
            let cols = 64;
            let w: Vec<f32> = (0..cols).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
            let q = quantize(&Tensor::from_vec(w.clone(), (1, cols), &Device::Cpu).unwrap(), dtype).unwrap();
            let data = q.data().unwrap().into_owned();
            let block = &data[..format.block_bytes()];
            let codes = format.codes(block);
            let top = if format.high_bits_at().is_some() { 31 } else { 15 };
            assert!(codes.contains(&0) && codes.contains(&top), "{format:?}: {codes:?}");
            let values = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let x: Vec<f32> = w.iter().map(|v| -3.0 * v).collect();
            let want: f32 = values.iter().zip(&x).map(|(a, b)| a * b).sum();
            for level in SimdLevel::available() {
                let y = matmul(level, &x, &data, format, 1, cols).unwrap();
                assert!((y[0] - want).abs() < 1e-4 * want.abs(), "{format:?} {level:?}: {} vs {want}", y[0]);
            }
        }
    }

    #[test]
    fn mismatched_sizes_are_errors() {
        let (data, _) = weight(2, 64, GgmlDType::Q5_0);
        assert!(matmul(SimdLevel::Scalar, &[0.0; 63], &data, SmallBlock::Q5_0, 2, 64).is_err());
        assert!(matmul(SimdLevel::Scalar, &[0.0; 64], &data[1..], SmallBlock::Q5_0, 2, 64).is_err());
        assert!(matmul(SimdLevel::Scalar, &[0.0; 48], &data, SmallBlock::Q5_0, 2, 48).is_err());
    }
}
