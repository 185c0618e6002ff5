//! Continuous-batching benchmark: aggregate decode tokens/s while all streams decode, time to
//! first token and inter-token latency at several numbers of concurrent streams, prefill speed,
//! and the time to first token of a short text request sent while a large image prompt
//! prefills, against the same request alone. Requests go straight to the engine (no HTTP), as every front end submits them.
//!
//! ```sh
//! cargo run --release -p phive --example batch_bench -- --model /tmp/phi35-real --isq q4k \
//!     [--kv-cache-dtype auto|f32|f16] [--max-batched-tokens N] [--solo-prefill-chunk N]
//! ```

#[path = "common/flags.rs"]
mod flags;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use phive::engine::{Engine, EngineConfig, GenerationParams, KvCacheDtype};
use phive::pipeline::{LoadOptions, Pipeline, PreparedPrompt};
use phive::prompt::{ChatMessage, MessagePart};
use phive::IsqType;

use flags::Flags;
use phive::bench::{follow, percentile, picture, run_together, steady_decode_rate, CpuInfo};

/// What `--help` prints.
const USAGE: &str = "usage: batch_bench --model DIR [--isq TYPE] [--streams 1,2,4,8,16] [--decode-tokens N] \
     [--max-batched-tokens N] [--solo-prefill-chunk N] [--kv-cache-dtype auto|f32|f16] [--no-interference]";

struct Args {
    model: PathBuf,
    isq: Option<IsqType>,
    streams: Vec<usize>,
    decode: usize,
    max_batched_tokens: usize,
    solo_prefill_chunk: usize,
    /// Also measure a short request's TTFT during an image prefill.
    interference: bool,
    kv_cache_dtype: KvCacheDtype,
}

fn parse_args() -> Result<Args> {
    let mut flags = Flags::new(USAGE);
    let mut a = Args {
        model: PathBuf::new(),
        isq: None,
        streams: vec![1, 2, 4, 8, 16],
        decode: 64,
        max_batched_tokens: EngineConfig::default().max_batched_tokens,
        solo_prefill_chunk: EngineConfig::default().solo_prefill_chunk,
        kv_cache_dtype: KvCacheDtype::Auto,
        interference: true,
    };
    while let Some(flag) = flags.next_flag() {
        let mut value = || flags.value(&flag);
        match flag.as_str() {
            "--model" => a.model = value()?.into(),
            "--isq" => a.isq = Some(value()?.parse()?),
            "--streams" => a.streams = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--decode-tokens" => a.decode = value()?.parse()?,
            "--max-batched-tokens" => a.max_batched_tokens = value()?.parse()?,
            "--solo-prefill-chunk" => a.solo_prefill_chunk = value()?.parse()?,
            "--no-interference" => a.interference = false,
            "--kv-cache-dtype" => a.kv_cache_dtype = value()?.parse()?,
            other => return Err(flags.error(format!("unknown flag {other}"))),
        }
    }
    if a.model.as_os_str().is_empty() {
        return Err(flags.error("--model DIR is required"));
    }
    Ok(a)
}

fn text_prompt(pipeline: &Pipeline, i: usize) -> Result<PreparedPrompt> {
    let text = format!("Story {i}: write a long tale about a lighthouse keeper and the sea.");
    Ok(pipeline.prepare(&[ChatMessage::text("user", &text)], &[])?)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    println!("cpu: {}", CpuInfo::detect());
    let pipeline = Pipeline::load(&LoadOptions {
        model: args.model.to_string_lossy().into(),
        isq: args.isq,
        ..Default::default()
    })?;
    println!(
        "model: {} (isq {:?}), loaded in {:.1}s",
        pipeline.source(),
        args.isq,
        pipeline.load_time().as_secs_f64()
    );
    let config = EngineConfig {
        max_batched_tokens: args.max_batched_tokens,
        solo_prefill_chunk: args.solo_prefill_chunk,
        kv_cache_dtype: args.kv_cache_dtype,
        ..Default::default()
    };
    let engine = Arc::new(Engine::new(pipeline, config)?);
    println!("kv cache: {}", engine.kv_cache_dtype());
    let pipeline = engine.pipeline();
    let params = GenerationParams { max_tokens: Some(args.decode), ..Default::default() };

    // Warm-up: the first use of each quantized weight repacks it.
    let warm = GenerationParams { max_tokens: Some(4), ..Default::default() };
    run_together(&engine, vec![text_prompt(pipeline, 0)?, text_prompt(pipeline, 1)?], &warm)?;

    println!("\n| streams | aggregate decode tok/s | vs 1 stream | TTFT p50 / p99 s | inter-token p50 / p99 ms | tokens |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut single = None;
    for &n in &args.streams {
        let prompts = (0..n).map(|i| text_prompt(pipeline, 100 + i)).collect::<Result<Vec<_>>>()?;
        let traces = run_together(&engine, prompts, &params)?;
        // Steady state: while every stream decodes (see `steady_decode_rate`).
        let aggregate = steady_decode_rate(&traces).context("no tokens")?;
        let base = *single.get_or_insert(aggregate);
        let mut ttft: Vec<f64> = traces.iter().map(|t| t.ttft().as_secs_f64()).collect();
        let mut itl: Vec<f64> = traces.iter().flat_map(|t| t.gaps().map(|g| g * 1e3)).collect();
        let tokens: usize = traces.iter().map(|t| t.tokens()).sum();
        println!(
            "| {n} | {aggregate:.1} | {:.2}x | {:.2} / {:.2} | {:.0} / {:.0} | {tokens} |",
            aggregate / base,
            percentile(&mut ttft, 0.5),
            percentile(&mut ttft, 0.99),
            percentile(&mut itl, 0.5),
            percentile(&mut itl, 0.99),
        );
    }

    // Prefill speed: a ~1000-token text prompt alone (chunked by the step budget).
    let long_text = "The lighthouse keeper counted the waves and wrote them down. ".repeat(80);
    let long = pipeline.prepare(&[ChatMessage::text("user", &long_text)], &[])?;
    let long_tokens = long.tokens.ids.len();
    let one = GenerationParams { max_tokens: Some(1), ..Default::default() };
    let ttft = run_together(&engine, vec![long], &one)?[0].ttft().as_secs_f64();
    println!(
        "\nprefill: {long_tokens} text tokens alone in {ttft:.2}s ({:.0} tok/s)",
        long_tokens as f64 / ttft
    );
    if !args.interference {
        return Ok(());
    }
    // A short text request alone, then while a 1024x768 image prompt prefills.
    let short = GenerationParams { max_tokens: Some(8), ..Default::default() };
    let mut alone: Vec<f64> = (0..3)
        .map(|i| {
            Ok(run_together(&engine, vec![text_prompt(pipeline, 900 + i)?], &short)?[0].ttft().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    let alone = percentile(&mut alone, 0.5);
    let messages = [ChatMessage::new(
        "user",
        vec![MessagePart::Image, MessagePart::Text("Describe this picture in detail.".into())],
    )];
    let image_prompt = pipeline.prepare(&messages, &[picture()])?;
    let image_tokens = image_prompt.tokens.ids.len();
    let image_start = Instant::now();
    let image = engine.submit(image_prompt, short.clone(), 1)?;
    let image_thread = std::thread::spawn(move || follow(image_start, image));
    // Wait until the image is encoded and its prefill is under way.
    let before = engine.stats().prefill_tokens.sum;
    while engine.stats().prefill_tokens.sum <= before {
        std::thread::sleep(Duration::from_millis(5));
    }
    let during = run_together(&engine, vec![text_prompt(pipeline, 999)?], &short)?[0].ttft().as_secs_f64();
    let image_trace = image_thread.join().expect("image thread")?;
    println!(
        "\nshort text request TTFT: alone {alone:.3}s, during a {image_tokens}-token image prefill {during:.3}s ({:.2}x); \
         image request TTFT {:.2}s (encoding included); {} solo prefill steps abandoned",
        during / alone,
        image_trace.ttft().as_secs_f64(),
        engine.stats().interrupted_steps
    );
    Ok(())
}
