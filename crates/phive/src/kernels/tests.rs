//! The kernels against plain arithmetic on the values the blocks stand for, on odd shapes, and
//! every SIMD level this CPU has against the scalar reference.

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

use super::*;
use crate::quant::quantize;

/// A `[rows, cols]` weight quantized to `dtype`: its blocks and its dequantized values.
fn quantized_weight(rows: usize, cols: usize, dtype: GgmlDType, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let w = pseudo_random(rows * cols, seed, 0.05);
    let w = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
    let q = quantize(&w, dtype).unwrap();
    let values = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (q.data().unwrap().into_owned(), values)
}

/// Deterministic values in `[-scale, scale]` (no RNG dependency in the kernels' tests).
pub(super) fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The activations `x` (`k` per row) as `format`'s kernels quantize them, dequantized: `d·q`.
fn quantized_activations(format: BlockFormat, x: &[f32], k: usize) -> Vec<Vec<f64>> {
    if matches!(format, BlockFormat::Q8_0 | BlockFormat::Small(_)) {
        let acts = QuantizedRows::<BlockQ8x32>::quantize(x, k);
        let value = |b: &BlockQ8x32, i: usize| b.d[i / 32] as f64 * b.qs[i] as f64;
        return (0..acts.rows())
            .map(|r| acts.row(r).iter().flat_map(|b| (0..256).map(|i| value(b, i))).collect())
            .collect();
    }
    let acts = Q8KRows::quantize(x, k);
    (0..acts.rows())
        .map(|r| acts.row(r).iter().flat_map(|b| b.qs.iter().map(move |&q| b.d as f64 * q as f64)).collect())
        .collect()
}

/// `x · wᵀ` in f64 over the dequantized activations `d·q` and weights: what the integer
/// kernels must compute, up to f32 rounding.
fn exact(format: BlockFormat, x: &[f32], w: &[f32], n: usize, k: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for a in quantized_activations(format, x, k) {
        for c in 0..n {
            out.push(a.iter().zip(&w[c * k..(c + 1) * k]).map(|(x, y)| x * *y as f64).sum());
        }
    }
    out
}

fn formats() -> [(BlockFormat, GgmlDType); 7] {
    [
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
    ]
    .map(|dtype| (BlockFormat::from_ggml(dtype).expect("a format with kernels"), dtype))
}

/// `x` times `w` by each SIMD level this CPU has, and by the panels (with each level that has
/// panel kernels) where it has them, each named.
fn every_kernel(x: &[f32], w: QuantizedMatrix) -> Vec<(String, Vec<f32>)> {
    let mut out: Vec<(String, Vec<f32>)> = SimdLevel::available()
        .into_iter()
        .map(|level| (level.to_string(), quantized_matmul_with(level, x, w).unwrap()))
        .collect();
    if let Some(panels) = PanelMatrix::pack(w) {
        for level in SimdLevel::available().into_iter().filter(|l| *l >= SimdLevel::Avx2) {
            out.push((format!("panels {level}"), panels.matmul_with(level, x).unwrap()));
        }
    }
    out
}

#[test]
fn every_level_computes_the_exact_product_of_the_quantized_values() {
    for (format, dtype) in formats() {
        // 16-row panels with a remainder (37 = 2·16 + 5) or none (48), and row counts around
        // every tile size and the panel threshold.
        for (m, n, k) in [
            (1, 1, 256),
            (2, 5, 512),
            (3, 67, 256),
            (4, 9, 768),
            (5, 33, 256),
            (9, 7, 512),
            (17, 37, 512),
            (6, 32, 256),
            (8, 48, 256),
            // Steps of 32 rows for the AMX kernel, with a remainder (70 = 2·32 + 6) or none.
            (70, 37, 512),
            (64, 48, 768),
            // Panels in parallel groups of eight: two whole groups and a part (19 panels).
            (40, 307, 256),
        ] {
            let (data, w) = quantized_weight(n, k, dtype, (m * 31 + n * 7 + k) as u64);
            let x = pseudo_random(m * k, n as u64 + 5, 2.0);
            let want = exact(format, &x, &w, n, k);
            let scale = want.iter().fold(0f64, |a, v| a.max(v.abs())).max(1e-3);
            let matrix = QuantizedMatrix { data: &data, format, rows: n, cols: k };
            for (kernel, got) in every_kernel(&x, matrix) {
                assert_eq!(got.len(), m * n);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - w).abs() <= 2e-5 * scale,
                        "{format:?} {kernel} m={m} n={n} k={k} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }
}

/// The AMX kernel folds the sub-block scales into the weights and sums whole blocks; the VNNI
/// kernel scales each sub-block's sum. Both must form the same integers and the same float
/// steps, so that a row's result never depends on how many rows it was batched with.
#[test]
fn the_amx_kernel_matches_the_vnni_kernel_bit_for_bit() {
    // Panels are packed for the level in use, which `PHIVE_SIMD` may cap below the CPU's.
    if super::simd_level() != SimdLevel::Amx {
        eprintln!("no AMX on this CPU (or PHIVE_SIMD caps it): nothing to compare");
        return;
    }
    let (n, k) = (64, 1024);
    let (data, _) = quantized_weight(n, k, GgmlDType::Q4K, 9);
    let panels =
        PanelMatrix::pack(QuantizedMatrix { data: &data, format: BlockFormat::Q4K, rows: n, cols: k })
            .expect("panels on a CPU with AMX");
    // One step of 32 rows on the tiles (each block readied just before its only step), then
    // three steps; the rows past the last whole step go to the VNNI kernel.
    for m in [45, 113] {
        let x = pseudo_random(m * k, 13, 3.0);
        let tiles = panels.matmul_with(SimdLevel::Amx, &x).unwrap();
        let vnni = panels.matmul_with(SimdLevel::Avx512Vnni, &x).unwrap();
        let differ = tiles.iter().zip(&vnni).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{m} rows: {differ} of {} results differ", m * n);
    }
}

/// The 32-weight formats' VNNI panels sum each block in i32 lanes where the AVX2 panels sum
/// in i16 and widen; both must reach the same integers and take the same float steps, so that
/// a machine's answers do not depend on which of the two kernels it has.
#[test]
fn the_small_block_vnni_panels_match_the_avx2_panels_bit_for_bit() {
    if super::simd_level() < SimdLevel::Avx512Vnni {
        eprintln!("no AVX-512 VNNI on this CPU (or PHIVE_SIMD caps it): nothing to compare");
        return;
    }
    let (n, k, m) = (48, 512, 13);
    let x = pseudo_random(m * k, 17, 3.0);
    for (format, dtype) in formats().into_iter().filter(|(f, _)| matches!(f, BlockFormat::Small(_))) {
        let (data, _) = quantized_weight(n, k, dtype, 5);
        let panels = PanelMatrix::pack(QuantizedMatrix { data: &data, format, rows: n, cols: k })
            .expect("panels on a CPU with AVX2");
        let vnni = panels.matmul_with(SimdLevel::Avx512Vnni, &x).unwrap();
        let avx2 = panels.matmul_with(SimdLevel::Avx2, &x).unwrap();
        let differ = vnni.iter().zip(&avx2).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{format:?}: {differ} of {} results differ", m * n);
    }
}

#[test]
fn product_is_close_to_the_f32_product_of_the_dequantized_weight() {
    let (m, n, k) = (6, 40, 1024);
    for (format, dtype) in formats() {
        let (data, w) = quantized_weight(n, k, dtype, 3);
        let x = pseudo_random(m * k, 11, 1.0);
        let got = quantized_matmul(&x, QuantizedMatrix { data: &data, format, rows: n, cols: k }).unwrap();
        let (mut err, mut norm) = (0f64, 0f64);
        for r in 0..m {
            for c in 0..n {
                let want: f64 = (0..k).map(|j| x[r * k + j] as f64 * w[c * k + j] as f64).sum();
                err += (got[r * n + c] as f64 - want).powi(2);
                norm += want * want;
            }
        }
        // Only the activations' 8-bit rounding separates the two.
        assert!((err / norm).sqrt() < 0.01, "{format:?}: relative error {}", (err / norm).sqrt());
    }
}

#[test]
fn extreme_codes_and_activations_do_not_overflow() {
    // Every activation at ±127 and weights at the ends of their range: the integer sums the
    // SIMD kernels form in 16-bit lanes reach their largest values.
    let (n, k) = (19, 512);
    for (format, dtype) in formats() {
        let w: Vec<f32> = (0..n * k).map(|i| if (i / 7) % 3 == 0 { -1.0 } else { 1.0 }).collect();
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let q = quantize(&wt, dtype).unwrap();
        let values = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let data = q.data().unwrap().into_owned();
        let x: Vec<f32> = (0..2 * k).map(|i| if i % 5 == 0 { -3.0 } else { 3.0 }).collect();
        let want = exact(format, &x, &values, n, k);
        let matrix = QuantizedMatrix { data: &data, format, rows: n, cols: k };
        for (kernel, got) in every_kernel(&x, matrix) {
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() <= 1e-4 * w.abs().max(1.0), "{format:?} {kernel}: {g} vs {w}");
            }
        }
    }
}

/// A row's products do not depend on the rows multiplied beside it (the engine's promise
/// that batching never changes an answer): 45 rows at once give, bit for bit, each row alone.
#[test]
fn each_row_gets_the_same_bits_alone_or_batched() {
    let (m, n, k) = (45, 37, 512);
    for (format, dtype) in formats() {
        let (data, _) = quantized_weight(n, k, dtype, 21);
        let x = pseudo_random(m * k, 17, 2.0);
        let matrix = QuantizedMatrix { data: &data, format, rows: n, cols: k };
        let batched = every_kernel(&x, matrix);
        for r in [0, 7, 8, 31, 32, 44] {
            let alone = every_kernel(&x[r * k..(r + 1) * k], matrix);
            for ((kernel, all), (_, one)) in batched.iter().zip(&alone) {
                let row = &all[r * n..(r + 1) * n];
                assert!(
                    row.iter().zip(one).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{format:?} {kernel}: row {r} of {m} differs from the row alone"
                );
            }
        }
    }
}

/// GGML's quantizer writes Q8_0 codes in −127..=127, but a GGUF file may hold −128: the
/// kernels' sign and offset tricks must take every byte.
#[test]
fn q8_0_takes_every_code_byte() {
    let (n, k) = (21, 512);
    let mut data = Vec::new();
    let mut values = Vec::new();
    for block in 0..n * k / 32 {
        let d = half::f16::from_f32(0.25 + (block % 5) as f32 * 0.125);
        data.extend(d.to_le_bytes());
        for i in 0..32 {
            let q = ((block * 32 + i) * 97 % 256) as u8 as i8;
            data.push(q as u8);
            values.push(d.to_f32() * q as f32);
        }
    }
    let x: Vec<f32> = (0..3 * k).map(|i| if i % 3 == 0 { -2.0 } else { 2.0 + (i % 7) as f32 }).collect();
    let want = exact(BlockFormat::Q8_0, &x, &values, n, k);
    let matrix = QuantizedMatrix { data: &data, format: BlockFormat::Q8_0, rows: n, cols: k };
    for (kernel, got) in every_kernel(&x, matrix) {
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0), "{kernel}: {g} vs {w}");
        }
    }
}

#[test]
fn mismatched_shapes_are_errors() {
    let (data, _) = quantized_weight(2, 256, GgmlDType::Q4K, 1);
    let matrix = QuantizedMatrix { data: &data, format: BlockFormat::Q4K, rows: 2, cols: 256 };
    assert!(quantized_matmul(&[0.0; 100], matrix).is_err());
    let wrong = QuantizedMatrix { rows: 3, ..matrix };
    assert!(quantized_matmul(&[0.0; 256], wrong).is_err());
}
