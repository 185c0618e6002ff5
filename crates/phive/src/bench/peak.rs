//! Short probes of what this machine can do at best, so a benchmark can say how close to the
//! hardware each phase runs: decode is bound by reading the weights from memory, prefill by
//! arithmetic. Both probes take a few hundred milliseconds on all cores and report the best of
//! several passes; they are phive's own quick measurements, not vendor figures or STREAM.

use std::hint::black_box;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::Result;

/// Read bandwidth in bytes per second: every thread sums its share of a `bytes`-sized buffer
/// (written first, so its pages are real memory and not the shared zero page), best of the
/// passes made within about `budget`.
pub fn memory_read_bandwidth(bytes: usize, budget: Duration) -> f64 {
    let words = (bytes / 8).max(1 << 16);
    const CHUNK: usize = 1 << 16;
    let mut buffer = vec![0u64; words];
    buffer.par_chunks_mut(CHUNK).enumerate().for_each(|(i, chunk)| {
        for (j, x) in chunk.iter_mut().enumerate() {
            *x = (i * CHUNK + j) as u64;
        }
    });
    let started = Instant::now();
    let mut best = f64::INFINITY;
    for pass in 0.. {
        let t = Instant::now();
        let sum = buffer
            .par_chunks(CHUNK)
            .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
            .reduce(|| 0, u64::wrapping_add);
        black_box(sum);
        best = best.min(t.elapsed().as_secs_f64());
        if pass >= 2 && started.elapsed() >= budget {
            break;
        }
    }
    (words * 8) as f64 / best
}

/// f32 matmul speed in FLOP/s: square `n`x`n` products on all cores (candle's CPU gemm, the
/// kernel of f32 prefill), best of the products made within about `budget`.
pub fn matmul_flops(n: usize, budget: Duration) -> Result<f64> {
    let a = Tensor::arange(0f32, (n * n) as f32, &Device::Cpu)?.reshape((n, n))?.affine(1e-6, 0.0)?;
    let b = a.t()?.contiguous()?.to_dtype(DType::F32)?;
    let started = Instant::now();
    let mut best = f64::INFINITY;
    for round in 0.. {
        let t = Instant::now();
        black_box(a.matmul(&b)?);
        best = best.min(t.elapsed().as_secs_f64());
        if round >= 2 && started.elapsed() >= budget {
            break;
        }
    }
    Ok(2.0 * (n as f64).powi(3) / best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_report_positive_rates() {
        let bw = memory_read_bandwidth(8 << 20, Duration::from_millis(10));
        assert!(bw.is_finite() && bw > 1e8, "{bw}");
        let flops = matmul_flops(128, Duration::from_millis(10)).unwrap();
        assert!(flops.is_finite() && flops > 1e7, "{flops}");
    }
}
