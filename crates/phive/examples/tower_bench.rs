//! Vision tower benchmark: the image tower of a Phi-3.5-vision (CLIP) or Phi-4-multimodal
//! (SigLIP) checkpoint over one image's crops, as an image request runs it, timed and set against
//! this machine's f32 matmul peak.
//!
//! ```sh
//! cargo run --release -p phive --example tower_bench -- --model /tmp/phi35-real --image IMG.png --passes 3
//! ```
//! The weights load as a quantizing (`--isq q4k`) load leaves them: the tower in the
//! checkpoint's precision, multiplied in f32. The image goes through the model's own
//! preprocessing (its default crop limit). GFLOP counts 2 × the multiply-adds of the patch
//! embedding, the projections, the MLPs and attention's two products (every patch as a key).

#[path = "common/flags.rs"]
mod flags;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::Device;
use flags::Flags;
use phive::bench::peak::matmul_flops;
use phive::checkpoint::{Architecture, Checkpoint};
use phive::models::phi3v::{Phi3V, Phi3VConfig};
use phive::models::phi4mm::{Phi4MM, Phi4MMConfig};
use phive::nn::linear::LoadVb;
use phive::quant::{IsqType, LoadContext};
use phive::vision::vit::{hidden_state_index, VitConfig};
use phive::vision::{phi3v_hd, phi4mm_hd};

/// What `--help` prints.
const USAGE: &str = "usage: tower_bench --model DIR --image FILE [--passes N]";

/// One forward pass of the tower over the prepared image.
type Pass = Box<dyn Fn() -> phive::Result<()>>;

/// Multiply-adds of `layers` encoder layers and the patch embedding over one crop of `t` tokens.
fn crop_macs<T>(v: &VitConfig<T>, layers: usize, t: usize) -> usize {
    let (c, i) = (v.hidden_size, v.intermediate_size);
    let patch = v.num_patches() * c * v.num_channels * v.patch_size.pow(2);
    patch + layers * (4 * t * c * c + 2 * t * c * i + 2 * t * t * c)
}

fn main() -> Result<()> {
    let (mut model_dir, mut image, mut passes) = (String::new(), String::new(), 3usize);
    let mut flags = Flags::new(USAGE);
    while let Some(flag) = flags.next_flag() {
        let mut value = || flags.value(&flag);
        match flag.as_str() {
            "--model" => model_dir = value()?,
            "--image" => image = value()?,
            "--passes" => passes = value()?.parse()?,
            other => return Err(flags.error(format!("unknown flag {other}"))),
        }
    }
    if model_dir.is_empty() || image.is_empty() {
        return Err(flags.error("--model DIR and --image FILE are required"));
    }
    let ck = Checkpoint::open(&model_dir, None)?;
    let picture = image::open(&image).with_context(|| format!("reading {image}"))?;
    let preprocessor =
        ck.preprocessor_config.clone().context("the checkpoint has no preprocessor_config.json")?;
    let (vb, ctx) = LoadContext::open(&ck.weights, Some(IsqType::Q4K), false, &Device::Cpu)?;
    let vb = LoadVb::new(vb, &ctx);
    // The tower's forward pass, its name, crops and GFLOP per pass.
    let (name, crops, gflop, run): (&str, usize, f64, Pass) = match ck.architecture {
        Architecture::Phi3V => {
            let cfg = Phi3VConfig::from_json(&ck.config)?;
            let model = Phi3V::new(&cfg, vb)?;
            let prep = phi3v_hd::Phi3VImageProcessorConfig::from_file(&preprocessor)?;
            let img = phi3v_hd::preprocess(&picture, &prep)?;
            let v = cfg.vision_config();
            let layers = hidden_state_index(cfg.img_processor.layer_idx, v.num_hidden_layers)?;
            let n = img.num_crops();
            let gflop = 2.0 * (n * crop_macs(&v, layers, v.num_patches() + 1)) as f64 / 1e9;
            ("CLIP", n, gflop, Box::new(move || model.clip_features(&img.pixel_values).map(drop)))
        }
        Architecture::Phi4MM => {
            let cfg = Phi4MMConfig::from_json(&ck.config)?;
            let model = Phi4MM::new(&cfg, vb)?;
            let prep = phi4mm_hd::Phi4MMImageProcessorConfig::from_file(&preprocessor)?;
            let img = phi4mm_hd::preprocess(&picture, &prep)?;
            let v = cfg.vision_config();
            let layers = hidden_state_index(cfg.img_processor().layer_idx, v.num_hidden_layers)?;
            let n = img.num_crops();
            let gflop = 2.0 * (n * crop_macs(&v, layers, v.num_patches())) as f64 / 1e9;
            ("SigLIP", n, gflop, Box::new(move || model.siglip_features(&img).map(drop)))
        }
    };
    drop(ctx.finish());
    let peak = matmul_flops(1024, Duration::from_millis(500))? / 1e9;
    println!("{name}: {crops} crops of {image}: {gflop:.1} GFLOP per pass");
    println!("f32 matmul peak (1024³, candle's gemm): {peak:.1} GFLOP/s");
    let mut best = f64::INFINITY;
    for pass in 1..=passes {
        let started = Instant::now();
        run()?;
        let s = started.elapsed().as_secs_f64();
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
