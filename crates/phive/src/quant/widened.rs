//! `x Wᵀ` with `W` stored compact (f16, bf16 or GGML's Q8_0 blocks) and everything computed in
//! f32: the weight's values are widened to f32 exactly, so the activations are never rounded.
//!
//! candle's CPU backend has no bf16 gemm: a bf16 matmul widens both operands on every call
//! (about 25 ms for one 3072×3072 decode matmul, 30× slower than f32), its f16 gemm rounds the
//! activations to f16, and its Q8_0 matmul rounds them to 8 bits. Here, for the few rows of a
//! decode step, each weight row is widened in registers (or into an L1-resident buffer) and
//! dotted with the f32 activations, so the memory traffic is the compact weight; for a prefill
//! chunk's or a batch's few dozen rows each task widens a panel of weight rows into a reused
//! buffer; for encoder-sized inputs the weight is widened a cache-sized slab at a time and the
//! f32 gemm amortises that over the rows, or, on CPUs with AMX-BF16, bf16 weights go to the
//! tiles with the activations split into exact bf16 parts (`kernels::bf16_amx`).

use candle_core::{DType, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::kernels::elementwise::{map_in_place, Map};
use crate::kernels::gemm::{product, with_scratch, SharedOut, Strided};
use crate::kernels::sgemm::{self, Epilogue};
use crate::Result;

/// Up to this many activation rows, the row kernel dots each weight row straight from storage.
const ROW_KERNEL_MAX_M: usize = 8;
/// Up to this many rows, each task widens a panel of the weight into its thread's reused buffer
/// ([`panels_kernel`]); above, the weight is widened a large panel at a time ([`slabs_kernel`]).
const PANEL_KERNEL_MAX_M: usize = 64;
/// Floats in one widened panel (256 KB: it stays in the core's L2 while the rows use it).
const PANEL_FLOATS: usize = 64 * 1024;
/// Floats in one widened slab of [`slabs_kernel`] (4 MB).
const SLAB_FLOATS: usize = 1 << 20;
/// Output features per rayon task in the row kernel.
const ROWS_PER_TASK: usize = 64;
/// Weights in one Q8_0 block, and the block's bytes (an f16 scale, then 32 signed bytes).
const Q8_0_BLOCK: usize = 32;
const Q8_0_BYTES: usize = 34;

/// A weight `[n, k]` in CPU memory, row-major, in one of the compact formats.
#[derive(Debug, Clone, Copy)]
enum CompactWeight<'a> {
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
    /// GGML Q8_0 blocks, as `QTensor::data` gives them: `k / 32` blocks per row.
    Q8_0(&'a [u8]),
}

impl CompactWeight<'_> {
    /// Widens rows `first..first + count` (each of `k` values) into `dst` (`count · k` floats).
    fn widen_rows(self, first: usize, count: usize, k: usize, dst: &mut [f32]) {
        match self {
            CompactWeight::Bf16(ws) => {
                // A shift the compiler vectorises (`half` converts bf16 one value at a time, with
                // a branch for NaNs; a NaN stays a NaN here too).
                for (d, s) in dst.iter_mut().zip(&ws[first * k..(first + count) * k]) {
                    *d = f32::from_bits((s.to_bits() as u32) << 16);
                }
            }
            // `half`'s conversion, with F16C where the CPU has it.
            CompactWeight::F16(ws) => ws[first * k..(first + count) * k].convert_to_f32_slice(dst),
            CompactWeight::Q8_0(bytes) => {
                let row_bytes = k / Q8_0_BLOCK * Q8_0_BYTES;
                let blocks = bytes[first * row_bytes..(first + count) * row_bytes].chunks_exact(Q8_0_BYTES);
                for (block, out) in blocks.zip(dst.chunks_exact_mut(Q8_0_BLOCK)) {
                    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
                    // q·d is exact in f32: an 8-bit integer times an 11-bit significand.
                    for (o, &q) in out.iter_mut().zip(&block[2..]) {
                        *o = q as i8 as f32 * d;
                    }
                }
            }
        }
    }
}

/// `x` `[m, k]` f32 (contiguous) times `w` `[n, k]` f16/bf16, transposed, plus `bias` `[n]` when
/// given, then `map` when given: `[m, n]` f32. The bias and the map go onto the product in
/// place (the same values as adding the bias as a tensor and mapping it, without more outputs
/// of the product's size); the kernel for many rows fuses them into its tiles.
pub(crate) fn matmul_half(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, map: Option<Map>) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    if !w.is_contiguous() || !x.device().is_cpu() {
        let y = x.matmul(&w.to_dtype(DType::F32)?.t()?)?;
        let y = match bias {
            Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?)?,
            None => y,
        };
        let Some(map) = map else { return Ok(y) };
        if !y.device().is_cpu() {
            return Err(candle_core::Error::Msg("a fused map runs on the CPU only".into()).into());
        }
        let mut values = y.flatten_all()?.to_vec1::<f32>()?;
        map_in_place(map, &mut values);
        return Ok(Tensor::from_vec(values, y.shape(), y.device())?);
    }
    let bias = bias_values(bias)?;
    with_half_weight(w, |weight| matmul_compact(x, weight, n, k, Epilogue { bias: bias.as_deref(), map }))?
}

/// `fc2(map(fc1(x)))` for `x` `[m, k]` f32 and `(weight, bias)` pairs of half weights, on the
/// CPU: each block of rows goes through both products and the map in one pass
/// (`kernels::sgemm::mlp`). `None` where that kernel does not apply (a few rows, which the
/// separate products handle as well, tensors off the CPU or non-contiguous, no AVX2) or where
/// the separate products are faster (bf16 weights on AMX tiles).
pub(crate) fn mlp_half(
    x: &Tensor,
    (w1, b1): (&Tensor, Option<&Tensor>),
    map: Map,
    (w2, b2): (&Tensor, Option<&Tensor>),
) -> Result<Option<Tensor>> {
    let ((m, k), (hidden, k1), (n, hidden2)) = (x.dims2()?, w1.dims2()?, w2.dims2()?);
    let on_cpu = |t: &Tensor| t.device().is_cpu() && t.is_contiguous();
    let tiles = crate::kernels::bf16_tiles_usable() && [w1, w2].iter().any(|w| w.dtype() == DType::BF16);
    if tiles
        || m <= PANEL_KERNEL_MAX_M
        || k1 != k
        || hidden2 != hidden
        || !(on_cpu(x) && on_cpu(w1) && on_cpu(w2))
    {
        return Ok(None);
    }
    let (b1, b2) = (bias_values(b1)?, bias_values(b2)?);
    let out = with_cpu_rows(x, |xs| {
        with_half_weight(w1, |first| {
            with_half_weight(w2, |second| {
                let widen1 = |row: usize, count: usize, dst: &mut [f32]| first.widen_rows(row, count, k, dst);
                let widen2 =
                    |row: usize, count: usize, dst: &mut [f32]| second.widen_rows(row, count, hidden, dst);
                sgemm::mlp(
                    xs,
                    (m, k, hidden, n),
                    (&widen1, Epilogue { bias: b1.as_deref(), map: Some(map) }),
                    (&widen2, Epilogue { bias: b2.as_deref(), map: None }),
                )
            })
        })?
    })?;
    Ok(out.flatten().map(|out| Tensor::from_vec(out, (m, n), x.device())).transpose()?)
}

/// `f` over the values of `x` (f32, contiguous), borrowed in place; `None` if `x` is not in
/// CPU memory.
pub(crate) fn with_cpu_rows<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<Option<R>> {
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let start = layout.start_offset();
    Ok(Some(f(&cpu.as_slice::<f32>()?[start..start + x.elem_count()])?))
}

/// A bias as f32 values.
fn bias_values(bias: Option<&Tensor>) -> Result<Option<Vec<f32>>> {
    Ok(bias.map(|b| b.to_dtype(DType::F32)?.to_vec1()).transpose()?)
}

/// `f` on the values of a contiguous f16/bf16 CPU weight.
fn with_half_weight<R>(w: &Tensor, f: impl FnOnce(CompactWeight) -> R) -> Result<R> {
    let (storage, layout) = w.storage_and_layout();
    let (start, len) = (layout.start_offset(), w.elem_count());
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg("half matmul runs on the CPU only".into()).into());
    };
    let weight = match w.dtype() {
        DType::BF16 => CompactWeight::Bf16(&cpu.as_slice::<bf16>()?[start..start + len]),
        DType::F16 => CompactWeight::F16(&cpu.as_slice::<f16>()?[start..start + len]),
        other => return Err(candle_core::Error::Msg(format!("half matmul: weight dtype {other:?}")).into()),
    };
    Ok(f(weight))
}

/// `x` `[m, k]` f32 (on the CPU) times the `[n, k]` weight held as GGML Q8_0 `blocks`,
/// transposed: `[m, n]` f32.
pub(crate) fn matmul_q8_0(x: &Tensor, blocks: &[u8], n: usize, k: usize) -> Result<Tensor> {
    if !k.is_multiple_of(Q8_0_BLOCK) || blocks.len() != n * k / Q8_0_BLOCK * Q8_0_BYTES {
        return Err(candle_core::Error::Msg(format!(
            "Q8_0 matmul: {} bytes do not hold a [{n}, {k}] weight",
            blocks.len()
        ))
        .into());
    }
    matmul_compact(x, CompactWeight::Q8_0(blocks), n, k, Epilogue::default())
}

fn matmul_compact(x: &Tensor, w: CompactWeight, n: usize, k: usize, epilogue: Epilogue) -> Result<Tensor> {
    let (m, xk) = x.dims2()?;
    if xk != k {
        return Err(
            candle_core::Error::Msg(format!("compact matmul: x has {xk} features, weight {k}")).into()
        );
    }
    let x = x.contiguous()?;
    let out = with_cpu_rows(&x, |xs| {
        if m > PANEL_KERNEL_MAX_M {
            return Ok(slabs_kernel(w, xs, m, n, k, epilogue));
        }
        let mut out = if m <= ROW_KERNEL_MAX_M {
            let mut out_t = vec![0f32; n * m];
            rows_kernel(w, xs, m, k, &mut out_t);
            // out_t is [n, m]; m ≤ 8, so the transpose is cheap.
            (0..m * n).map(|idx| out_t[(idx % n) * m + idx / n]).collect()
        } else {
            panels_kernel(w, xs, m, n, k)
        };
        epilogue.apply(&mut out, n);
        Ok(out)
    })?
    .ok_or_else(|| candle_core::Error::Msg("compact matmul runs on the CPU only".into()))?;
    Ok(Tensor::from_vec(out, (m, n), x.device())?)
}

/// `x` `[m, k]` times `w` `[n, k]` transposed, row-major `[m, n]`, for encoder-sized inputs and
/// long prefill chunks: slab after slab of weight rows is widened on all cores (SIMD
/// conversions; candle's `to_dtype` is one element at a time on one core) into one reused
/// buffer and multiplied with all rows of `x` by a gemm on all cores. Widening the whole weight
/// instead wrote, page-faulted and read back a full f32 copy per call (200 MB for a Phi-3.5
/// MLP weight at Q8_0); a slab is cache-sized and `x` is packed once per slab. bf16 weights
/// go to the AMX tiles instead where the CPU has them (the same f32 sums, in another order).
fn slabs_kernel(w: CompactWeight, xs: &[f32], m: usize, n: usize, k: usize, epilogue: Epilogue) -> Vec<f32> {
    if let CompactWeight::Bf16(ws) = w {
        if let Some(mut out) = crate::kernels::bf16_matmul_amx(xs, as_bits(ws), m, n, k) {
            epilogue.apply(&mut out, n);
            return out;
        }
    }
    let widen = |first: usize, count: usize, dst: &mut [f32]| w.widen_rows(first, count, k, dst);
    if let Some(out) = sgemm::matmul(xs, (m, n, k), &widen, epilogue) {
        return out;
    }
    let rows = (SLAB_FLOATS / k.max(1)).clamp(1, n.max(1));
    let chunk_rows = (PANEL_FLOATS / k.max(1)).max(1);
    let mut out = vec![0f32; m * n];
    let mut slab = vec![0f32; rows * k];
    for first in (0..n).step_by(rows) {
        let count = rows.min(n - first);
        let slab = &mut slab[..count * k];
        slab.par_chunks_mut(chunk_rows * k)
            .enumerate()
            .for_each(|(i, dst)| w.widen_rows(first + i * chunk_rows, dst.len() / k, k, dst));
        // SAFETY: `xs` holds m rows of k, `slab` count rows of k (read as its transpose); the
        // product writes the output columns `first..first + count` of the m rows (n apart).
        unsafe {
            product(
                m,
                count,
                k,
                out.as_mut_ptr().add(first),
                n,
                Strided::rows(xs.as_ptr(), k),
                Strided::transposed(slab.as_ptr(), k),
                1.0,
                true,
            )
        };
    }
    epilogue.apply(&mut out, n);
    out
}

/// `x` `[m, k]` times `w` `[n, k]` transposed, row-major `[m, n]`, for a prefill chunk's or a
/// batch's few rows: widening the whole weight per call would write (and page-fault) a full f32
/// copy that these rows use once (Phi-4's LoRA matrices, 46 MB per layer per chunk). Instead
/// each task widens a panel of weight rows into its thread's reused buffer and multiplies it
/// with all rows of `x`.
fn panels_kernel(w: CompactWeight, xs: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let rows = (PANEL_FLOATS / k.max(1)).clamp(8, 128);
    let mut out = vec![0f32; m * n];
    let shared = SharedOut::new(&mut out);
    (0..n.div_ceil(rows)).into_par_iter().for_each(|p| {
        with_scratch(|[panel, _]| {
            let (first, count) = (p * rows, rows.min(n - p * rows));
            panel.resize(count * k, 0.0);
            w.widen_rows(first, count, k, panel);
            // SAFETY: `xs` holds m rows of k, `panel` count rows of k; this task writes only the
            // output columns `first..first + count` of the m rows (n apart).
            unsafe {
                product(
                    m,
                    count,
                    k,
                    shared.at(first),
                    n,
                    Strided::rows(xs.as_ptr(), k),
                    Strided::transposed(panel.as_ptr(), k),
                    1.0,
                    false,
                )
            };
        })
    });
    out
}

/// The decode kernel: each task dots its weight rows with the `m` activation rows, widening
/// them in registers with AVX2/FMA (runtime-detected), or into a row buffer elsewhere.
/// `out_t` is `[n, m]`.
fn rows_kernel(w: CompactWeight, xs: &[f32], m: usize, k: usize, out_t: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    let simd = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    out_t.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(task, out)| {
        let mut row = Vec::new();
        for (j, dst) in out.chunks_mut(m).enumerate() {
            let r = task * ROWS_PER_TASK + j;
            if simd {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU features were detected above; slices bound every access.
                unsafe {
                    match w {
                        CompactWeight::Bf16(ws) => {
                            avx2::row_dots::<true>(as_bits(&ws[r * k..(r + 1) * k]), xs, dst)
                        }
                        CompactWeight::F16(ws) => {
                            avx2::row_dots::<false>(as_bits(&ws[r * k..(r + 1) * k]), xs, dst)
                        }
                        CompactWeight::Q8_0(bytes) => {
                            let row_bytes = k / Q8_0_BLOCK * Q8_0_BYTES;
                            avx2::q8_0_row_dots(&bytes[r * row_bytes..(r + 1) * row_bytes], xs, dst)
                        }
                    }
                }
                continue;
            }
            row.resize(k, 0.0);
            w.widen_rows(r, 1, k, &mut row);
            for (i, d) in dst.iter_mut().enumerate() {
                *d = dot(&row, &xs[i * k..(i + 1) * k]);
            }
        }
    });
}

/// The bits of f16/bf16 values.
fn as_bits<T: bytemuck::Pod>(values: &[T]) -> &[u16] {
    bytemuck::cast_slice(values)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `out[i] = Σ_j w[j]·x_i[j]` for each of the `out.len()` rows of `xs` (`[m, k]`), `w` a row
    /// of `k` bf16 (`BF`) or f16 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn row_dots<const BF: bool>(w: &[u16], xs: &[f32], out: &mut [f32]) {
        let k = w.len();
        let m = out.len();
        let widen = |p: *const u16| -> __m256 {
            // SAFETY (caller): 8 u16 readable at p.
            unsafe {
                let raw = _mm_loadu_si128(p.cast::<__m128i>());
                if BF {
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
                } else {
                    _mm256_cvtph_ps(raw)
                }
            }
        };
        let hsum = |v: __m256| -> f32 {
            let mut a = [0f32; 8];
            // SAFETY: a has 8 f32.
            unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
            a.iter().sum()
        };
        let tail = |x: &[f32], from: usize| -> f32 {
            (from..k)
                .map(|j| {
                    let v = if BF {
                        f32::from_bits((w[j] as u32) << 16)
                    } else {
                        half::f16::from_bits(w[j]).to_f32()
                    };
                    v * x[j]
                })
                .sum()
        };
        let body = k / 16 * 16;
        let wp = w.as_ptr();
        for (i, o) in out.iter_mut().enumerate().take(m) {
            let x = &xs[i * k..(i + 1) * k];
            let xp = x.as_ptr();
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut j = 0;
            while j < body {
                a0 = _mm256_fmadd_ps(widen(wp.add(j)), _mm256_loadu_ps(xp.add(j)), a0);
                a1 = _mm256_fmadd_ps(widen(wp.add(j + 8)), _mm256_loadu_ps(xp.add(j + 8)), a1);
                j += 16;
            }
            *o = hsum(_mm256_add_ps(a0, a1)) + tail(x, body);
        }
    }

    /// `out[i] = Σ_j w[j]·x_i[j]` for each of the `out.len()` rows of `xs`, `w` one row of Q8_0
    /// blocks: each block's 32 bytes are widened and dotted in f32, then scaled by its `d`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q8_0_row_dots(w: &[u8], xs: &[f32], out: &mut [f32]) {
        use super::{Q8_0_BLOCK, Q8_0_BYTES};
        let blocks = w.len() / Q8_0_BYTES;
        let k = blocks * Q8_0_BLOCK;
        for (i, o) in out.iter_mut().enumerate() {
            let x = &xs[i * k..(i + 1) * k];
            let mut acc = _mm256_setzero_ps();
            for (b, block) in w.chunks_exact(Q8_0_BYTES).enumerate() {
                let scale = _mm256_set1_ps(half::f16::from_le_bytes([block[0], block[1]]).to_f32());
                let (q, xp) = (block.as_ptr().add(2), x.as_ptr().add(b * Q8_0_BLOCK));
                let mut sum = _mm256_setzero_ps();
                for l in 0..4 {
                    let bytes = _mm_loadl_epi64(q.add(8 * l).cast::<__m128i>());
                    let values = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
                    sum = _mm256_fmadd_ps(values, _mm256_loadu_ps(xp.add(8 * l)), sum);
                }
                acc = _mm256_fmadd_ps(sum, scale, acc);
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            *o = lanes.iter().sum();
        }
    }
}

/// Eight independent accumulators so the loop vectorises without `-ffast-math` reassociation.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_f32_matmul_for_decode_and_prefill_sizes() {
        let dev = Device::Cpu;
        // 1,100 features: the panel kernel's panels hold 59 weight rows, so 70 rows end ragged.
        let w = Tensor::randn(0f32, 1.0, (70, 1100), &dev).unwrap();
        for dt in [DType::BF16, DType::F16] {
            let wh = w.to_dtype(dt).unwrap();
            let wf = wh.to_dtype(DType::F32).unwrap();
            for m in [1, 3, 8, 9, 40, 65] {
                let x = Tensor::randn(0f32, 1.0, (m, 1100), &dev).unwrap();
                let want = x.matmul(&wf.t().unwrap()).unwrap();
                let got = matmul_half(&x, &wh, None, None).unwrap();
                assert_eq!(got.dims(), &[m, 70]);
                let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(d < 1e-3, "{dt:?} m={m}: {d}");
                // The bias is added to the product's own sums, whatever the path.
                let b = Tensor::randn(0f32, 1.0, 70, &dev).unwrap();
                let biased = matmul_half(&x, &wh, Some(&b), None).unwrap();
                let want = matmul_half(&x, &wh, None, None).unwrap().broadcast_add(&b).unwrap();
                assert_eq!(biased.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap(), "{dt:?} m={m}");
            }
        }
    }

    /// A map given to the product equals the map applied to its output, on every path (row,
    /// panel and many-row kernels); the fused MLP equals its two products and the f32 tensors'
    /// MLP.
    #[test]
    fn fused_maps_and_the_mlp_match_the_separate_steps() {
        let dev = Device::Cpu;
        let (k, hidden, n) = (96, 200, 70);
        let w1 = Tensor::randn(0f32, 0.2, (hidden, k), &dev).unwrap().to_dtype(DType::BF16).unwrap();
        let w2 = Tensor::randn(0f32, 0.2, (n, hidden), &dev).unwrap().to_dtype(DType::BF16).unwrap();
        let b1 = Tensor::randn(0f32, 1.0, hidden, &dev).unwrap();
        let b2 = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
        for m in [3, 40, 150] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let mapped = matmul_half(&x, &w1, Some(&b1), Some(Map::QuickGelu)).unwrap();
            let mut want = matmul_half(&x, &w1, Some(&b1), None)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            map_in_place(Map::QuickGelu, &mut want);
            assert_eq!(mapped.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want, "m={m}");
            let fused = mlp_half(&x, (&w1, Some(&b1)), Map::QuickGelu, (&w2, Some(&b2))).unwrap();
            let apart = matmul_half(&mapped, &w2, Some(&b2), None).unwrap();
            let Some(fused) = fused else {
                use crate::kernels::{bf16_tiles_usable, simd_level, SimdLevel};
                assert!(m <= PANEL_KERNEL_MAX_M || simd_level() < SimdLevel::Avx2 || bf16_tiles_usable());
                continue;
            };
            assert_eq!(fused.to_vec2::<f32>().unwrap(), apart.to_vec2::<f32>().unwrap(), "m={m}");
            let h =
                x.matmul(&w1.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap().broadcast_add(&b1).unwrap();
            let h = (&h * candle_nn::ops::sigmoid(&(&h * 1.702).unwrap()).unwrap()).unwrap();
            let y =
                h.matmul(&w2.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap().broadcast_add(&b2).unwrap();
            let d = (fused - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4, "m={m}: {d}");
        }
    }

    /// Q8_0 blocks multiply like their dequantized values with unrounded activations, at every
    /// row count, and a row's result does not depend on the rows beside it (beyond the order of
    /// the f32 sums).
    #[test]
    fn q8_0_matches_its_dequantized_values_at_every_row_count() {
        use candle_core::quantized::GgmlDType;
        let dev = Device::Cpu;
        // 1,120 features (35 blocks): the panels hold 58 weight rows, so 70 rows end ragged.
        let w = Tensor::randn(0f32, 1.0, (70, 1120), &dev).unwrap();
        let q = crate::quant::quantize(&w, GgmlDType::Q8_0).unwrap();
        let (blocks, wf) = (q.data().unwrap(), q.dequantize(&dev).unwrap());
        let x = Tensor::randn(0f32, 1.0, (65, 1120), &dev).unwrap();
        let alone = matmul_q8_0(&x.narrow(0, 0, 1).unwrap(), &blocks, 70, 1120).unwrap();
        for m in [1, 3, 8, 9, 40, 65] {
            let x = x.narrow(0, 0, m).unwrap();
            let want = x.matmul(&wf.t().unwrap()).unwrap();
            let got = matmul_q8_0(&x, &blocks, 70, 1120).unwrap();
            assert_eq!(got.dims(), &[m, 70]);
            let d = (&got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-3, "m={m}: {d}");
            let first = (got.narrow(0, 0, 1).unwrap() - &alone).unwrap();
            let d = first.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-3, "row 0 with {m} rows vs alone: {d}");
        }
        // A weight of more than one slab (1,200 rows of 1,024: 1,024 rows, then 176).
        let w = Tensor::randn(0f32, 1.0, (1200, 1024), &dev).unwrap();
        let q = crate::quant::quantize(&w, GgmlDType::Q8_0).unwrap();
        let x70 = Tensor::randn(0f32, 1.0, (70, 1024), &dev).unwrap();
        let want = x70.matmul(&q.dequantize(&dev).unwrap().t().unwrap()).unwrap();
        let got = matmul_q8_0(&x70, &q.data().unwrap(), 1200, 1024).unwrap();
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-3, "two slabs: {d}");
        assert!(matmul_q8_0(&x, &blocks[1..], 70, 1120).is_err());
        assert!(matmul_q8_0(&x.narrow(1, 0, 1100).unwrap(), &blocks, 70, 1100).is_err());
    }
}
