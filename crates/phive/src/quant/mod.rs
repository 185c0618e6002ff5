//! In-situ quantization (ISQ): the language model's projection weights are quantized to a GGML
//! block type (or stored as dense f16/bf16) while the checkpoint is read, one tensor at a time,
//! so the full-precision model never exists in memory.
//!
//! * [`IsqType`] names the targets (`--isq Q4K`); GGML's conventions pick a higher type for
//!   `lm_head` ([`IsqType::promoted`]) and a fallback for widths that do not fit the block
//!   ([`IsqType::fit`]).
//! * [`LoadContext`] travels with the weights into the model constructors
//!   ([`crate::nn::linear::LoadVb`]); [`crate::nn::linear::Linear::load`] asks it, with the
//!   tensor's full name, whether and how to quantize. Model code knows nothing of quantization.
//! * [`quantize`] splits a weight's rows over the rayon pool (candle's `QTensor::quantize` is
//!   single-threaded) and concatenates the blocks.
//! * [`gguf`] reads back a quantized model saved by [`crate::export`] (`phive quantize`)
//!   without re-quantizing.

pub mod context;
pub mod gguf;
mod q4k;
mod q8_0;
mod types;
mod widened;

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

pub use context::{LoadContext, LoadReport, TensorRole};
pub use types::{IsqType, ParseIsqTypeError};
pub(crate) use widened::{matmul_half, matmul_q8_0, mlp_half, with_cpu_rows};

use crate::Result;

/// Rows quantized per rayon task: enough work per task (≥ ~256 K weights) to amortise the
/// scheduling, small enough that two cores stay busy on the smallest Phi-3.5 weight.
const MIN_WEIGHTS_PER_TASK: usize = 256 * 1024;

/// Quantizes a `[rows, cols]` weight (any float dtype) to `dtype` using the whole rayon pool.
///
/// Rows are independent in every GGML format (blocks never cross a row because `cols` must be a
/// multiple of the block size), so each task converts its rows to f32, quantizes them with
/// candle's reference quantizer (or, for Q4K and Q8_0, the faster copies of it in `q4k` and
/// `q8_0`) and copies the blocks into its slice of the output: the result is byte-identical to
/// `QTensor::quantize` on the whole tensor, and the only full-precision transient is one
/// task's f32 rows.
pub fn quantize(weight: &Tensor, dtype: GgmlDType) -> Result<QTensor> {
    let (rows, cols) = weight.dims2()?;
    let block = dtype.block_size();
    if cols % block != 0 {
        return Err(candle_core::Error::Msg(format!(
            "cannot quantize a [{rows}, {cols}] weight to {dtype:?}: {cols} is not a multiple of its block size {block}"
        ))
        .into());
    }
    let row_bytes = cols / block * dtype.type_size();
    let total = rows * row_bytes;
    let threads = rayon::current_num_threads().max(1);
    let rows_per_task =
        (MIN_WEIGHTS_PER_TASK / cols.max(1)).max(rows.div_ceil(threads * 8)).clamp(1, rows.max(1));
    // u64 backing: every GGML block type needs at most 4-byte alignment, which candle asserts.
    let mut backing = vec![0u64; total.div_ceil(8)];
    let bytes = as_bytes_mut(&mut backing, total);
    bytes.par_chunks_mut(rows_per_task * row_bytes).enumerate().try_for_each(|(i, out)| -> Result<()> {
        let start = i * rows_per_task;
        let n = out.len() / row_bytes;
        // A fresh f32 buffer: candle's quantizer reads the storage from its start, ignoring
        // a view's offset, so a narrowed f32 view must be copied (other dtypes convert).
        let rows = weight.narrow(0, start, n)?;
        let part =
            if rows.dtype() == DType::F32 { rows.force_contiguous()? } else { rows.to_dtype(DType::F32)? };
        // The same blocks as candle's quantizer, without its per-weight libm calls.
        let ours = match dtype {
            GgmlDType::Q4K => Some(q4k::QUANTIZER),
            GgmlDType::Q8_0 => Some(q8_0::QUANTIZER),
            _ => None,
        };
        if let Some(quantizer) = ours {
            quantizer.run(&part.flatten_all()?.to_vec1::<f32>()?, out);
            return Ok(());
        }
        let q = QTensor::quantize(&part, dtype)?;
        let data = q.data()?;
        if data.len() != out.len() {
            return Err(candle_core::Error::Msg(format!(
                "quantized {n} rows to {} bytes, expected {}",
                data.len(),
                out.len()
            ))
            .into());
        }
        out.copy_from_slice(&data);
        Ok(())
    })?;
    let storage =
        QStorage::from_data(Cow::Borrowed(&as_bytes_mut(&mut backing, total)[..]), &Device::Cpu, dtype)?;
    Ok(QTensor::new(storage, (rows, cols))?)
}

/// One of phive's GGML block quantizers: each writes the bytes of candle's reference
/// quantizer for its type, faster, with an AVX2 build picked at run time.
pub(crate) struct Quantizer {
    /// Values per block.
    block_values: usize,
    /// Bytes per block.
    block_bytes: usize,
    /// The AVX2 build (unsafe: the CPU must have AVX2).
    #[cfg(target_arch = "x86_64")]
    avx2: unsafe fn(&[f32], &mut [u8]),
    /// The plain build, for every other CPU.
    portable: fn(&[f32], &mut [u8]),
}

impl Quantizer {
    /// Quantizes `x` (whole blocks) into `out` (their bytes).
    fn run(&self, x: &[f32], out: &mut [u8]) {
        debug_assert!(
            x.len().is_multiple_of(self.block_values)
                && out.len() == x.len() / self.block_values * self.block_bytes
        );
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { (self.avx2)(x, out) };
            return;
        }
        (self.portable)(x, out)
    }
}

/// `n` deterministic values in ±0.07 whose scale changes every `block` values, like a weight's
/// rows: the quantizers' tests compare their bytes with candle's on them.
#[cfg(test)]
fn weight_like_values(n: usize, block: usize) -> Vec<f32> {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 0.01 * (1 + (i / block) % 7) as f32
        })
        .collect()
}

/// Asserts that `quantizer`, both its builds, writes the bytes candle's `dtype` quantizer does
/// for `x` (whole 256-value rows).
#[cfg(test)]
fn assert_candles_bytes(quantizer: &Quantizer, dtype: GgmlDType, x: &[f32]) {
    let rows = Tensor::from_vec(x.to_vec(), (x.len() / 256, 256), &Device::Cpu).unwrap();
    let want = QTensor::quantize(&rows, dtype).unwrap().data().unwrap().into_owned();
    let mut got = vec![0u8; x.len() / quantizer.block_values * quantizer.block_bytes];
    quantizer.run(x, &mut got);
    assert_eq!(got.len(), want.len());
    for (b, (g, w)) in got.chunks(quantizer.block_bytes).zip(want.chunks(quantizer.block_bytes)).enumerate() {
        assert_eq!(g, w, "{dtype:?} block {b}");
    }
    let mut portable = vec![0u8; got.len()];
    (quantizer.portable)(x, &mut portable);
    assert_eq!(portable, got, "{dtype:?}: the portable build");
}

/// A CPU `QTensor` from raw GGML block bytes, copied through an 8-byte-aligned buffer (candle
/// asserts the block alignment, which a `Vec<u8>` does not guarantee).
pub(crate) fn qtensor_from_bytes(
    bytes: &[u8],
    dtype: GgmlDType,
    shape: candle_core::Shape,
) -> Result<QTensor> {
    let mut backing = vec![0u64; bytes.len().div_ceil(8)];
    as_bytes_mut(&mut backing, bytes.len()).copy_from_slice(bytes);
    let storage = QStorage::from_data(
        Cow::Borrowed(&as_bytes_mut(&mut backing, bytes.len())[..]),
        &Device::Cpu,
        dtype,
    )?;
    Ok(QTensor::new(storage, shape)?)
}

fn as_bytes_mut(backing: &mut [u64], len: usize) -> &mut [u8] {
    debug_assert!(len <= backing.len() * 8);
    // SAFETY: u8 has no invalid bit patterns and no alignment requirement; `len` is within the
    // allocation (checked by the caller's sizing `len.div_ceil(8)` u64s).
    unsafe { std::slice::from_raw_parts_mut(backing.as_mut_ptr().cast::<u8>(), len) }
}

/// Relative RMS error `‖dequantize(quantize(x)) − x‖ / ‖x‖` of storing `x` as `ty`, the figure the
/// round-trip tests and the benchmark report per type.
pub fn round_trip_error(x: &Tensor, ty: IsqType) -> Result<f64> {
    let x = x.to_dtype(DType::F32)?;
    let back = if ty.is_dense() {
        x.to_dtype(if ty == IsqType::F16 { DType::F16 } else { DType::BF16 })?.to_dtype(DType::F32)?
    } else {
        quantize(&x, ty.ggml())?.dequantize(&Device::Cpu)?
    };
    let err = (back - &x)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    let norm = x.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok((err / norm.max(f64::MIN_POSITIVE)).sqrt())
}

/// Process memory from `/proc/self/status` (Linux; zeros elsewhere), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// `VmHWM`: peak resident set since the process started or the last [`reset_peak_rss`].
    pub peak_rss: u64,
    /// `VmRSS`: resident set now.
    pub rss: u64,
    /// `RssAnon`: anonymous resident memory (heap): the model's tensors, not file pages.
    pub rss_anon: u64,
    /// `RssFile`: resident file-backed pages (memory-mapped checkpoints, the binary).
    pub rss_file: u64,
}

/// Reads [`MemoryStats`] for this process.
pub fn memory_stats() -> MemoryStats {
    let Ok(text) = std::fs::read_to_string("/proc/self/status") else {
        return MemoryStats::default();
    };
    let field = |key: &str| kb_field(&text, key).unwrap_or(0);
    MemoryStats {
        peak_rss: field("VmHWM:"),
        rss: field("VmRSS:"),
        rss_anon: field("RssAnon:"),
        rss_file: field("RssFile:"),
    }
}

/// `MemAvailable` from `/proc/meminfo`: memory the system can give without swapping, in bytes
/// (`None` where unknown).
pub fn available_memory_bytes() -> Option<u64> {
    kb_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemAvailable:")
}

/// The value of a `Key:   123 kB` line, in bytes.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Resets the kernel's peak-RSS counter (`VmHWM`) to the current RSS (`echo 5 >
/// /proc/self/clear_refs`), so a later [`memory_stats`] reports the peak of what followed.
/// Best effort: returns false where unsupported.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
