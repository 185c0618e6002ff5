//! Hand-written CPU kernels, picked at run time from the CPU's features ([`simd_level`]).
//!
//! [`quantized_matmul`] multiplies f32 activations by GGML k-quant weights (Q4_K, Q6_K) the way
//! llama.cpp does: each activation row is quantized to 8-bit blocks (Q8_K) once, then integer
//! dot products run on the weights' blocks. Unlike candle's kernels, nothing is repacked on
//! first use, so there is no slow first call and no second copy in memory.
//! Every weight row is unpacked once per tile of [`TILE`] activation rows, so a batched decode
//! step or a prefill chunk reads each weight byte once for several tokens. On CPUs with AVX2,
//! the weights are instead permuted once at load into panels of 16 rows ([`PanelMatrix`]),
//! which one outer-product kernel per format and level (AVX-512 VNNI, or AVX2's `vpmaddubsw`)
//! multiplies with any number of rows. On CPUs with AMX tiles as well, Q4_K panels multiplied
//! with 32 or more activation rows take them 16 at a time through a tile kernel whose results
//! are bit for bit the VNNI kernel's. GGML's 32-weight formats Q4_0 to Q5_1 (candle multiplies
//! three of them with scalar code) have AVX2 row kernels on any width of whole blocks
//! ([`SmallBlock`]).
//!
//! On CPUs with AMX-BF16, f32 activations times bf16 weights (the vision towers' products) run
//! on the tiles to f32 accuracy (`bf16_matmul_amx`).
//!
//! [`elementwise`] holds the vectorised `exp`, softmax and GELU maps of the vision towers.
//!
//! Each kernel has a plain scalar version, the reference its SIMD versions are tested against.

#[cfg(target_arch = "x86_64")]
mod amx;
pub(crate) mod attend;
#[cfg(target_arch = "x86_64")]
mod bf16_amx;
pub mod elementwise;
pub(crate) mod gemm;
mod panels;
mod q4_q5;
#[cfg(target_arch = "x86_64")]
mod q4_q5_panel;
#[cfg(target_arch = "x86_64")]
mod q4_q5_panel_avx2;
mod q4k;
#[cfg(target_arch = "x86_64")]
mod q4k_amx;
#[cfg(target_arch = "x86_64")]
mod q4k_panel;
#[cfg(target_arch = "x86_64")]
mod q4k_panel_avx2;
mod q6k;
#[cfg(target_arch = "x86_64")]
mod q6k_panel;
#[cfg(target_arch = "x86_64")]
mod q6k_panel_avx2;
mod q8_0;
#[cfg(target_arch = "x86_64")]
mod q8_0_panel;
#[cfg(target_arch = "x86_64")]
mod q8_0_panel_avx2;
mod q8k;
pub(crate) mod sgemm;
#[cfg(target_arch = "x86_64")]
mod sgemm_x86;
mod simd;
#[cfg(target_arch = "x86_64")]
mod x86;

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

pub use panels::PanelMatrix;
pub use q4_q5::{matmul as small_block_matmul, SmallBlock};
pub use q8_0::BlockQ8x32;
pub use q8k::{ActivationBlock, BlockQ8K, Q8KRows, QuantizedRows};
pub use simd::{simd_level, SimdLevel};

use crate::Result;
use gemm::SharedOut;

/// Activation rows dotted with one weight row per kernel call.
pub const TILE: usize = 8;

/// Calls a const-generic tile kernel `$call` (with the array `$a` of activation rows) for the
/// 1 to [`TILE`] rows in `$acts`, writing its results to `$out`.
macro_rules! for_tile {
    ($acts:expr, $out:expr, |$a:ident| $call:expr) => {
        $crate::kernels::for_tile!(@arms $acts, $out, $a, $call; 1 2 3 4 5 6 7 8)
    };
    (@arms $acts:expr, $out:expr, $a:ident, $call:expr; $($n:literal)+) => {{
        match $acts.len() {
            $($n => {
                let $a: [&[_]; $n] = std::array::from_fn(|i| $acts[i]);
                $out[..$n].copy_from_slice(&$call)
            })+
            n => unreachable!("a tile of {n} activation rows"),
        }
    }};
}
pub(crate) use for_tile;

/// `xs` `[m, k]` f32 times the bf16 weight `w` `[n, k]` (its bits) transposed, `[m, n]` f32,
/// on AMX tiles to f32 accuracy; `None` where the CPU (or `PHIVE_SIMD`) rules the tiles out.
/// Worth it for many rows: the weight is laid out anew on each call.
pub(crate) fn bf16_matmul_amx(xs: &[f32], w: &[u16], m: usize, n: usize, k: usize) -> Option<Vec<f32>> {
    if xs.len() != m * k || w.len() != n * k {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if bf16_tiles_usable() {
        // SAFETY: AMX-BF16 is usable, the `amx` level implies AVX-512 F and BW, and the slices
        // hold the shapes' values (checked above).
        return Some(unsafe { bf16_amx::matmul(xs, w, m, n, k) });
    }
    None
}

/// Whether [`bf16_matmul_amx`] runs on this CPU (and `PHIVE_SIMD` allows it).
pub(crate) fn bf16_tiles_usable() -> bool {
    #[cfg(target_arch = "x86_64")]
    return simd_level() == SimdLevel::Amx && amx::usable_bf16();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The GGML block formats these kernels multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// 4-bit k-quant, 144 bytes per 256 weights.
    Q4K,
    /// 6-bit k-quant, 210 bytes per 256 weights.
    Q6K,
    /// 8-bit, one scale per 32 weights: eight GGML blocks, 272 bytes per 256 weights.
    Q8_0,
    /// Q4_0, Q4_1, Q5_0 or Q5_1: eight GGML blocks of 32 weights per 256 (only with the panel
    /// kernels; [`SmallBlock::for_weight`]'s row kernels take any width of whole blocks).
    Small(SmallBlock),
}

impl BlockFormat {
    /// The format of a GGML type, if it has kernels here.
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4K => Some(BlockFormat::Q4K),
            GgmlDType::Q6K => Some(BlockFormat::Q6K),
            GgmlDType::Q8_0 => Some(BlockFormat::Q8_0),
            other => SmallBlock::from_ggml(other).map(BlockFormat::Small),
        }
    }

    /// The format of a weight of type `dtype` with `cols` input features, if these kernels
    /// multiply it: they take whole blocks of 256, which the blocks of 32 need not fill.
    /// Q8_0 and the smaller 32-weight formats need the panel kernels (AVX2) too: without them
    /// only their scalar row kernels are left, and candle's kernels stay in charge.
    pub fn for_weight(dtype: GgmlDType, cols: usize) -> Option<Self> {
        Self::from_ggml(dtype)
            .filter(|f| matches!(f, BlockFormat::Q4K | BlockFormat::Q6K) || panels::usable())
            .filter(|_| cols.is_multiple_of(q8k::QK))
    }

    /// The GGML type of this format.
    pub fn ggml(self) -> GgmlDType {
        match self {
            BlockFormat::Q4K => GgmlDType::Q4K,
            BlockFormat::Q6K => GgmlDType::Q6K,
            BlockFormat::Q8_0 => GgmlDType::Q8_0,
            BlockFormat::Small(f) => f.ggml(),
        }
    }

    /// Bytes of one 256-weight block.
    pub const fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4K => q4k::BLOCK_BYTES,
            BlockFormat::Q6K => q6k::BLOCK_BYTES,
            BlockFormat::Q8_0 => q8_0::BLOCK_BYTES,
            BlockFormat::Small(f) => 8 * f.block_bytes(),
        }
    }

    /// `out[r] = w · acts[r]` for up to [`TILE`] activation rows of a k-quant.
    fn dot_rows(self, level: SimdLevel, w: &[u8], acts: &[&[BlockQ8K]], out: &mut [f32]) {
        match self {
            BlockFormat::Q4K => q4k::dot_rows(level, w, acts, out),
            BlockFormat::Q6K => q6k::dot_rows(level, w, acts, out),
            BlockFormat::Q8_0 | BlockFormat::Small(_) => {
                unreachable!("the 32-weight formats' rows are quantized in blocks of 32")
            }
        }
    }

    /// `out[r] = w · acts[r]` for up to [`TILE`] activation rows of a 32-weight format.
    fn dot_rows32(self, level: SimdLevel, w: &[u8], acts: &[&[BlockQ8x32]], out: &mut [f32]) {
        match self {
            BlockFormat::Q8_0 => q8_0::dot_rows(level, w, acts, out),
            BlockFormat::Small(format) => q4_q5::dot_rows(level, format, w, acts, out),
            BlockFormat::Q4K | BlockFormat::Q6K => {
                unreachable!("k-quant rows are quantized in blocks of 256")
            }
        }
    }
}

/// A `[rows, cols]` weight in a block format, borrowed from where it is stored.
#[derive(Debug, Clone, Copy)]
pub struct QuantizedMatrix<'a> {
    /// The blocks, row after row.
    pub data: &'a [u8],
    /// Their format.
    pub format: BlockFormat,
    /// Output features.
    pub rows: usize,
    /// Input features (a multiple of 256).
    pub cols: usize,
}

/// `x` (`[m, w.cols]` row-major f32) times `wᵀ`: `[m, w.rows]`, with this CPU's best kernels.
pub fn quantized_matmul(x: &[f32], w: QuantizedMatrix) -> Result<Vec<f32>> {
    quantized_matmul_with(simd_level(), x, w)
}

/// [`quantized_matmul`] with a chosen kernel level (tests compare levels on one machine).
pub fn quantized_matmul_with(level: SimdLevel, x: &[f32], w: QuantizedMatrix) -> Result<Vec<f32>> {
    let (n, k) = (w.rows, w.cols);
    let row_bytes = k / q8k::QK * w.format.block_bytes();
    if k == 0 || k % q8k::QK != 0 || !x.len().is_multiple_of(k) || w.data.len() != n * row_bytes {
        return Err(candle_core::Error::Msg(format!(
            "quantized matmul: {} activations, {} weight bytes for a [{n}, {k}] {:?} weight",
            x.len(),
            w.data.len(),
            w.format
        ))
        .into());
    }
    let m = x.len() / k;
    // Not zeroed first, as in `PanelMatrix::matmul_with`: `by_rows` writes every element.
    let mut out = Vec::with_capacity(m * n);
    let spare = SharedOut::spare(&mut out);
    match w.format {
        format @ (BlockFormat::Q8_0 | BlockFormat::Small(_)) => {
            let acts = QuantizedRows::<BlockQ8x32>::quantize(x, k);
            by_rows(&acts, w.into(), spare, n, 0, |w, a, o| format.dot_rows32(level, w, a, o));
        }
        format => {
            let acts = Q8KRows::quantize(x, k);
            by_rows(&acts, w.into(), spare, n, 0, |w, a, o| format.dot_rows(level, w, a, o));
        }
    }
    // SAFETY: the tasks of `by_rows` wrote all `n` columns of all `m` rows.
    unsafe { out.set_len(m * n) };
    Ok(out)
}

/// Weight rows of `row_bytes` bytes each, back to back.
#[derive(Debug, Clone, Copy)]
struct WeightRows<'a> {
    data: &'a [u8],
    rows: usize,
    row_bytes: usize,
}

impl<'a> From<QuantizedMatrix<'a>> for WeightRows<'a> {
    fn from(w: QuantizedMatrix<'a>) -> Self {
        WeightRows { data: w.data, rows: w.rows, row_bytes: w.cols / q8k::QK * w.format.block_bytes() }
    }
}

/// The rows of `w` dotted with every activation row by `dot` (a row kernel: one weight row,
/// up to [`TILE`] activation rows), in parallel: row `i`'s results go to column
/// `first_col + i` of `out` (`[m, width]` row-major).
fn by_rows<B: ActivationBlock>(
    acts: &QuantizedRows<B>,
    w: WeightRows,
    out: SharedOut,
    width: usize,
    first_col: usize,
    dot: impl Fn(&[u8], &[&[B]], &mut [f32]) + Sync,
) {
    let m = acts.rows();
    let row_bytes = w.row_bytes;
    let rows_per_task = rows_per_task(w.rows, m);
    (0..w.rows.div_ceil(rows_per_task)).into_par_iter().for_each(|task| {
        let first = task * rows_per_task;
        let last = (first + rows_per_task).min(w.rows);
        let mut results = [0f32; TILE];
        let mut tile: [&[B]; TILE] = [&[]; TILE];
        for r0 in (0..m).step_by(TILE) {
            let count = TILE.min(m - r0);
            for (i, t) in tile.iter_mut().enumerate().take(count) {
                *t = acts.row(r0 + i);
            }
            for row in first..last {
                let weights = &w.data[row * row_bytes..(row + 1) * row_bytes];
                dot(weights, &tile[..count], &mut results[..count]);
                for (i, v) in results[..count].iter().enumerate() {
                    // SAFETY: `(r0 + i) * width + first_col + row < m * width`, and each task
                    // writes only its own rows' columns, so no two tasks write one element.
                    unsafe { *out.at((r0 + i) * width + first_col + row) = *v };
                }
            }
        }
    });
}

/// Weight rows per rayon task: several tasks per thread for balance, few enough rows that a
/// task's weights stay in cache while every tile of activation rows passes over them.
fn rows_per_task(n: usize, m: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let balanced = n.div_ceil(threads * 8);
    let cap = if m > TILE { 16 } else { 64 };
    balanced.clamp(1, cap)
}

#[cfg(test)]
mod tests;
