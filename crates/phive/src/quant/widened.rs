//! `x Wᵀ` with `W` stored as f16/bf16 and everything computed in f32.
//!
//! candle's CPU backend has no bf16 gemm: a bf16 matmul widens both operands on every call
//! (about 25 ms for one 3072×3072 decode matmul, 30× slower than f32), and its f16 gemm rounds
//! the activations to f16. Here, for the few rows of a decode step, each weight row is widened
//! into an L1-resident buffer and dotted with the f32 activations, so the memory traffic is the
//! 2-byte weight; for a prefill chunk's or a batch's few dozen rows each task widens a panel of
//! weight rows into a reused buffer; for encoder-sized inputs the weight is widened once per call
//! and the f32 gemm amortises that over the rows.

use candle_core::{DType, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::kernels::gemm::{product, with_scratch, SharedOut, Strided};
use crate::Result;

/// Up to this many activation rows, the row kernel dots each weight row straight from storage.
const ROW_KERNEL_MAX_M: usize = 8;
/// Up to this many rows, each task widens a panel of the weight into its thread's reused buffer
/// ([`panels_kernel`]); above, the whole weight is widened once per call.
const PANEL_KERNEL_MAX_M: usize = 64;
/// Floats in one widened panel (256 KB: it stays in the core's L2 while the rows use it).
const PANEL_FLOATS: usize = 64 * 1024;
/// Output features per rayon task in the row kernel.
const ROWS_PER_TASK: usize = 64;

/// `x` `[m, k]` f32 (contiguous) times `w` `[n, k]` f16/bf16, transposed, plus `bias` `[n]` when
/// given: `[m, n]` f32. The bias is added in place to the product (the same sums as adding it
/// as a tensor, without a second output of the product's size).
pub(crate) fn matmul_half(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let (n, wk) = w.dims2()?;
    if wk != k {
        return Err(candle_core::Error::Msg(format!("half matmul: x has {k} features, weight {wk}")).into());
    }
    if !w.is_contiguous() || !x.device().is_cpu() {
        let y = x.matmul(&w.to_dtype(DType::F32)?.t()?)?;
        return Ok(match bias {
            Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?)?,
            None => y,
        });
    }
    let bias: Option<Vec<f32>> = bias.map(|b| b.to_dtype(DType::F32)?.to_vec1()).transpose()?;
    if m > ROW_KERNEL_MAX_M {
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            return Err(candle_core::Error::Msg("half matmul runs on the CPU only".into()).into());
        };
        let xs = &cpu.as_slice::<f32>()?[layout.start_offset()..layout.start_offset() + m * k];
        let mut out = if m > PANEL_KERNEL_MAX_M {
            // Widened on all cores with SIMD conversions (candle's `to_dtype` is one element
            // at a time on one core: for an encoder's layers that was seconds per image).
            gemm_nt(xs, &widen(w)?, m, n, k)
        } else {
            with_half_values(w, |values| match values {
                HalfValues::Bf16(ws) => panels_kernel(ws, xs, m, n, k),
                HalfValues::F16(ws) => panels_kernel(ws, xs, m, n, k),
            })?
        };
        if let Some(b) = &bias {
            out.par_chunks_mut(n).for_each(|row| row.iter_mut().zip(b).for_each(|(y, b)| *y += b));
        }
        drop(storage);
        return Ok(Tensor::from_vec(out, (m, n), x.device())?);
    }
    let xs: Vec<f32> = x.flatten_all()?.to_vec1::<f32>()?;
    let mut out_t = vec![0f32; n * m];
    with_half_values(w, |values| match values {
        HalfValues::Bf16(ws) => rows_kernel(ws, &xs, m, k, &mut out_t, true, Widen::widen),
        HalfValues::F16(ws) => rows_kernel(ws, &xs, m, k, &mut out_t, false, Widen::widen),
    })?;
    if let Some(b) = &bias {
        out_t.chunks_mut(m).zip(b).for_each(|(col, b)| col.iter_mut().for_each(|y| *y += b));
    }
    // out_t is [n, m]; m ≤ 8, so the transpose is cheap.
    let out = Tensor::from_vec(out_t, (n, m), x.device())?;
    Ok(out.t()?.contiguous()?)
}

/// `x` `[m, k]` times `w` `[n, k]` transposed, row-major `[m, n]`, on all cores: the gemm call
/// candle's f32 matmul makes for `x.matmul(&w.t())`, so the sums are the same.
fn gemm_nt(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    // SAFETY: `x` holds m·k values (rows k apart), `w` n·k (read as its transpose), `out` m·n.
    unsafe {
        product(
            m,
            n,
            k,
            out.as_mut_ptr(),
            n,
            Strided::rows(x.as_ptr(), k),
            Strided::transposed(w.as_ptr(), k),
            1.0,
            true,
        )
    };
    out
}

/// `x` `[m, k]` times `w` `[n, k]` (half) transposed, row-major `[m, n]`, for a prefill chunk's
/// or a batch's few rows: widening the whole weight per call would write (and page-fault) a
/// full f32 copy that these rows use once (Phi-4's LoRA matrices, 46 MB per layer per chunk).
/// Instead each task widens a panel of weight rows into its thread's reused buffer and multiplies
/// it with all rows of `x`.
fn panels_kernel<T: Widen>(ws: &[T], xs: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let rows = (PANEL_FLOATS / k.max(1)).clamp(8, 128);
    let mut out = vec![0f32; m * n];
    let shared = SharedOut::new(&mut out);
    (0..n.div_ceil(rows)).into_par_iter().for_each(|p| {
        with_scratch(|[panel, _, _]| {
            let (first, count) = (p * rows, rows.min(n - p * rows));
            panel.resize(count * k, 0.0);
            T::widen(&ws[first * k..(first + count) * k], panel);
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

/// Half-precision values widened to f32, exactly.
trait Widen: Sized + Sync {
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl Widen for bf16 {
    /// A shift the compiler vectorises (`half` converts bf16 one value at a time, with a branch
    /// for NaNs; a NaN stays a NaN here too).
    fn widen(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
}

impl Widen for f16 {
    /// `half`'s conversion, with F16C where the CPU has it.
    fn widen(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst)
    }
}

/// The values of a contiguous f16/bf16 CPU tensor as f32, converted in parallel chunks.
fn widen(w: &Tensor) -> Result<Vec<f32>> {
    fn convert<T: Widen>(src: &[T], out: &mut [f32]) {
        const CHUNK: usize = 1 << 16;
        out.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(o, s)| T::widen(s, o));
    }
    let mut out = vec![0f32; w.elem_count()];
    with_half_values(w, |values| match values {
        HalfValues::Bf16(src) => convert(src, &mut out),
        HalfValues::F16(src) => convert(src, &mut out),
    })?;
    Ok(out)
}

/// The values of a contiguous f16/bf16 CPU tensor, borrowed in their type.
enum HalfValues<'a> {
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

/// `f` over the values of `w` (a contiguous f16/bf16 CPU tensor); an error for other tensors.
fn with_half_values<R>(w: &Tensor, f: impl FnOnce(HalfValues) -> R) -> Result<R> {
    let (storage, layout) = w.storage_and_layout();
    let (start, len) = (layout.start_offset(), w.elem_count());
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg("half matmul runs on the CPU only".into()).into());
    };
    Ok(match w.dtype() {
        DType::BF16 => f(HalfValues::Bf16(&cpu.as_slice::<bf16>()?[start..start + len])),
        DType::F16 => f(HalfValues::F16(&cpu.as_slice::<f16>()?[start..start + len])),
        other => return Err(candle_core::Error::Msg(format!("half matmul: weight dtype {other:?}")).into()),
    })
}

/// The decode kernel: AVX2/FMA (runtime-detected) widening and dotting 8 weights at a time
/// straight from the 2-byte storage; a portable widen-then-dot fallback elsewhere.
fn rows_kernel<T: Sync>(
    ws: &[T],
    xs: &[f32],
    m: usize,
    k: usize,
    out_t: &mut [f32],
    bf16: bool,
    widen: impl Fn(&[T], &mut [f32]) + Sync,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::mem::size_of::<T>() == 2
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            // SAFETY: T is f16 or bf16 (2 bytes, checked above): the slice can be read as u16.
            let raw: &[u16] = unsafe { std::slice::from_raw_parts(ws.as_ptr().cast::<u16>(), ws.len()) };
            out_t.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(task, out)| {
                for (j, dst) in out.chunks_mut(m).enumerate() {
                    let r = task * ROWS_PER_TASK + j;
                    let row = &raw[r * k..(r + 1) * k];
                    // SAFETY: the CPU features were detected above; slices bound every access.
                    unsafe {
                        if bf16 {
                            avx2::row_dots::<true>(row, xs, dst)
                        } else {
                            avx2::row_dots::<false>(row, xs, dst)
                        }
                    }
                }
            });
            return;
        }
    }
    let _ = bf16;
    rows_kernel_portable(ws, xs, m, k, out_t, widen)
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
}

fn rows_kernel_portable<T: Sync>(
    ws: &[T],
    xs: &[f32],
    m: usize,
    k: usize,
    out_t: &mut [f32],
    widen: impl Fn(&[T], &mut [f32]) + Sync,
) {
    out_t.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(task, out)| {
        let mut row = vec![0f32; k];
        for (j, dst) in out.chunks_mut(m).enumerate() {
            let r = task * ROWS_PER_TASK + j;
            widen(&ws[r * k..(r + 1) * k], &mut row);
            for (i, d) in dst.iter_mut().enumerate() {
                *d = dot(&row, &xs[i * k..(i + 1) * k]);
            }
        }
    });
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
                let got = matmul_half(&x, &wh, None).unwrap();
                assert_eq!(got.dims(), &[m, 70]);
                let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(d < 1e-3, "{dt:?} m={m}: {d}");
                // The bias is added to the product's own sums, whatever the path.
                let b = Tensor::randn(0f32, 1.0, 70, &dev).unwrap();
                let biased = matmul_half(&x, &wh, Some(&b)).unwrap();
                let want = matmul_half(&x, &wh, None).unwrap().broadcast_add(&b).unwrap();
                assert_eq!(biased.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap(), "{dt:?} m={m}");
            }
        }
    }
}
