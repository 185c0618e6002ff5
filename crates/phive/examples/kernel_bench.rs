//! Quantized matmul kernels side by side: phive's (each SIMD level this CPU has, and the
//! weight permuted into panels where the CPU has the panel kernels) against
//! candle's, on the Phi-3.5 language model's projection shapes, for decode-sized and
//! prefill-sized inputs. Reports the first call (candle repacks its weights then), the median
//! of the following calls, weight GB/s and int8 GMAC/s.
//!
//! ```sh
//! cargo run --release -p phive --example kernel_bench -- [--format q4k|q6k|q8_0|q4_0|q4_1|q5_0|q5_1] [--rows 1,8,64,512] [--shape qkv|o|gate_up|down|lm_head] [--reps N]
//! ```

#[path = "common/flags.rs"]
mod flags;

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use flags::Flags;
use phive::kernels::{quantized_matmul_with, BlockFormat, PanelMatrix, QuantizedMatrix, SimdLevel};

/// (name, output features, input features) of the Phi-3.5 decoder's projections.
const SHAPES: &[(&str, usize, usize)] = &[
    ("qkv", 9216, 3072),
    ("o", 3072, 3072),
    ("gate_up", 16384, 3072),
    ("down", 3072, 8192),
    ("lm_head", 32064, 3072),
];

/// What `--help` prints.
const USAGE: &str = "usage: kernel_bench [--format q4k|q6k|q8_0|q4_0|q4_1|q5_0|q5_1] [--rows 1,8,64,512] \
     [--shape qkv|o|gate_up|down|lm_head] [--reps N]";

/// Copies of a weight that the "from memory" rows rotate over (8 × 28 MB for `gate_up`).
const COLD_COPIES: usize = 8;

/// Seconds of the first call and the fastest of the next `reps` (the least disturbed by
/// whatever else this shared machine runs).
fn time(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    let t = Instant::now();
    f()?;
    let first = t.elapsed().as_secs_f64();
    let mut rest = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        rest.push(t.elapsed().as_secs_f64());
    }
    Ok((first, rest.into_iter().fold(f64::INFINITY, f64::min)))
}

fn main() -> Result<()> {
    let mut dtype = GgmlDType::Q4K;
    let mut rows = vec![1usize, 8, 64, 512];
    let mut only: Option<String> = None;
    let mut reps: Option<usize> = None;
    let mut flags = Flags::new(USAGE);
    while let Some(flag) = flags.next_flag() {
        let mut value = || flags.value(&flag);
        match flag.as_str() {
            "--format" => {
                dtype = match value()?.to_ascii_lowercase().as_str() {
                    "q4k" => GgmlDType::Q4K,
                    "q6k" => GgmlDType::Q6K,
                    "q8_0" => GgmlDType::Q8_0,
                    "q4_0" => GgmlDType::Q4_0,
                    "q4_1" => GgmlDType::Q4_1,
                    "q5_0" => GgmlDType::Q5_0,
                    "q5_1" => GgmlDType::Q5_1,
                    other => return Err(flags.error(format!("unknown format {other}"))),
                }
            }
            "--rows" => rows = value()?.split(',').map(|v| v.trim().parse()).collect::<Result<_, _>>()?,
            "--shape" => only = Some(value()?),
            "--reps" => reps = Some(value()?.parse()?),
            other => return Err(flags.error(format!("unknown flag {other}"))),
        }
    }
    let format = BlockFormat::from_ggml(dtype).context("no phive kernel for this format")?;
    println!("machine: {}; format {dtype:?}", phive::bench::CpuInfo::detect());
    println!("| shape | rows | kernel | first call ms | best ms | weight GB/s | GMAC/s |");
    println!("|---|---|---|---|---|---|---|");
    let dev = Device::Cpu;
    for &(name, n, k) in SHAPES.iter().filter(|s| only.as_deref().is_none_or(|o| o == s.0)) {
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
        let q = phive::quant::quantize(&w, dtype)?;
        drop(w);
        let bytes = q.storage_size_in_bytes() as f64;
        for &m in &rows {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let reps = reps.unwrap_or(if m >= 64 { 3 } else { 10 });
            let report = |kernel: &str, (first, med): (f64, f64)| {
                let gbs = bytes / med / 1e9;
                let gmacs = (m * n * k) as f64 / med / 1e9;
                println!(
                    "| {name} [{n}x{k}] | {m} | {kernel} | {:.1} | {:.2} | {gbs:.1} | {gmacs:.1} |",
                    first * 1e3,
                    med * 1e3
                );
            };
            // A fresh copy of the weight for candle, so its repack is part of its first call.
            let fresh = phive::quant::quantize(&q.dequantize(&dev)?, dtype)?;
            report(
                "candle",
                time(reps, || {
                    let _: () = drop(x.apply_op1_no_bwd(&fresh)?);
                    Ok(())
                })?,
            );
            let data = q.data()?;
            let matrix = QuantizedMatrix { data: &data, format, rows: n, cols: k };
            let panel_levels = SimdLevel::available().into_iter().filter(|l| *l >= SimdLevel::Avx2);
            if let Some(panels) = PanelMatrix::pack(matrix) {
                // Calls rotating over copies larger than the last-level cache: the weights come
                // from memory, as in a model's forward pass.
                let copies: Vec<PanelMatrix> =
                    (0..COLD_COPIES).filter_map(|_| PanelMatrix::pack(matrix)).collect();
                for level in panel_levels {
                    report(
                        &format!("phive panels {level}"),
                        time(reps, || {
                            let _: () = drop(panels.matmul_with(level, &xs)?);
                            Ok(())
                        })?,
                    );
                    let mut next = copies.iter().cycle();
                    report(
                        &format!("phive panels {level}, from memory"),
                        time(reps, || {
                            let _: () = drop(next.next().expect("copies").matmul_with(level, &xs)?);
                            Ok(())
                        })?,
                    );
                }
            }
            for level in SimdLevel::available() {
                if level == SimdLevel::Scalar && m > 8 {
                    continue;
                }
                report(
                    &format!("phive {level}"),
                    time(reps, || {
                        let _: () = drop(quantized_matmul_with(level, &xs, matrix)?);
                        Ok(())
                    })?,
                );
            }
        }
    }
    Ok(())
}
