//! Vision tower benchmark: Phi-3.5-vision's CLIP tower over a batch of 336×336 crops, as an
//! image request runs it, timed and set against this machine's f32 matmul peak.
//!
//! ```sh
//! cargo run --release -p phive --example tower_bench -- --model /tmp/phi35-real --crops 5 --passes 3
//! ```
//! The weights load as a quantizing (`--isq q4k`) load leaves them: the tower in the
//! checkpoint's precision, multiplied in f32. The pixels are random; the arithmetic does not
//! depend on them. GFLOP counts 2 × the multiply-adds of the patch embedding, the projections,
//! the MLPs and attention's two products.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use phive::bench::peak::matmul_flops;
use phive::checkpoint::Checkpoint;
use phive::models::phi3v::{Phi3V, Phi3VConfig};
use phive::nn::linear::LoadVb;
use phive::quant::{IsqType, LoadContext};

fn main() -> Result<()> {
    let (mut model_dir, mut crops, mut passes) = (String::new(), 5usize, 3usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => model_dir = value,
            "--crops" => crops = value.parse()?,
            "--passes" => passes = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if model_dir.is_empty() {
        bail!("--model DIR (a Phi-3.5-vision checkpoint) is required");
    }
    let ck = Checkpoint::open(&model_dir, None)?;
    let cfg = Phi3VConfig::from_json(&ck.config)?;
    let (vb, ctx) = LoadContext::open(&ck.weights, Some(IsqType::Q4K), false, &Device::Cpu)?;
    let model = Phi3V::new(&cfg, LoadVb::new(vb, &ctx))?;
    drop(ctx.finish());

    let v = cfg.vision_config();
    let layers = phive::vision::vit::hidden_state_index(cfg.img_processor.layer_idx, v.num_hidden_layers)?;
    let (t, c, i) = (v.num_patches() + 1, v.hidden_size, v.intermediate_size);
    let patch_macs = v.num_patches() * c * v.num_channels * v.patch_size.pow(2);
    let layer_macs = 4 * t * c * c + 2 * t * c * i + 2 * t * t * c;
    let gflop = 2.0 * (crops * (patch_macs + layers * layer_macs)) as f64 / 1e9;

    let pixels = Tensor::randn(0f32, 1.0, (crops, v.num_channels, v.image_size, v.image_size), &Device::Cpu)?;
    let peak = matmul_flops(1024, Duration::from_millis(500))? / 1e9;
    println!("CLIP: {layers} layers run, {t} tokens per crop, {crops} crops: {gflop:.1} GFLOP per pass");
    println!("f32 matmul peak (1024³, candle's gemm): {peak:.1} GFLOP/s");
    let mut best = f64::INFINITY;
    for pass in 1..=passes {
        let started = Instant::now();
        let features = model.clip_features(&pixels)?;
        let s = started.elapsed().as_secs_f64();
        std::hint::black_box(features);
        best = best.min(s);
        println!(
            "pass {pass}: {s:.2} s, {:.1} GFLOP/s ({:.0}% of peak)",
            gflop / s,
            100.0 * gflop / s / peak
        );
    }
    println!("best: {best:.2} s, {:.1} GFLOP/s ({:.0}% of peak)", gflop / best, 100.0 * gflop / best / peak);
    Ok(())
}
