//! Reuse benchmark (issue 13), with the caches on and off side by side in one run:
//! - the time to first token of a chat's second turn about the same 1024x768 picture, against
//!   its first turn (the whole conversation is resent, as chat clients do);
//! - eight requests sent together behind one long system prompt: positions computed, time to
//!   first token and wall time.
//!
//! ```sh
//! cargo run --release -p phive --example prefix_bench -- --model /tmp/phi35-real --isq q4k
//! ```

#[path = "common/flags.rs"]
mod flags;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use flags::Flags;
use phive::engine::{Engine, EngineConfig, GenerationParams};
use phive::pipeline::{LoadOptions, Pipeline};
use phive::prompt::{ChatMessage, MessagePart};
use phive::IsqType;

use phive::bench::{percentile, picture, run_together, CpuInfo};

/// What `--help` prints.
const USAGE: &str = "usage: prefix_bench --model DIR [--isq TYPE] [--system-sentences N]";

struct Args {
    model: PathBuf,
    isq: Option<IsqType>,
    /// Sentences in the shared system prompt (about 20 tokens each).
    system_sentences: usize,
}

fn parse_args() -> Result<Args> {
    let mut flags = Flags::new(USAGE);
    let mut a = Args { model: PathBuf::new(), isq: None, system_sentences: 100 };
    while let Some(flag) = flags.next_flag() {
        let mut value = || flags.value(&flag);
        match flag.as_str() {
            "--model" => a.model = value()?.into(),
            "--isq" => a.isq = Some(value()?.parse()?),
            "--system-sentences" => a.system_sentences = value()?.parse()?,
            other => return Err(flags.error(format!("unknown flag {other}"))),
        }
    }
    if a.model.as_os_str().is_empty() {
        return Err(flags.error("--model DIR is required"));
    }
    Ok(a)
}

/// The engine over `pipeline` with both caches on or both off.
fn engine(pipeline: Pipeline, caches: bool) -> Result<Arc<Engine>> {
    let config = if caches {
        EngineConfig::default()
    } else {
        EngineConfig { prefix_cache: false, media_cache_bytes: 0, ..Default::default() }
    };
    let engine = Arc::new(Engine::new(pipeline, config)?);
    // Warm-up: the first use of each quantized weight repacks it.
    let warm = engine.pipeline().prepare(&[ChatMessage::text("user", "Hello there.")], &[])?;
    run_together(&engine, vec![warm], &GenerationParams { max_tokens: Some(4), ..Default::default() })?;
    Ok(engine)
}

/// A chat's first and second turn about the picture: their times to first token, and the
/// second turn's cached and prompt tokens.
fn two_turns(engine: &Arc<Engine>) -> Result<(f64, f64, usize, usize)> {
    let pipeline = engine.pipeline();
    let mut messages = vec![
        ChatMessage::text("system", "You are a helpful assistant."),
        ChatMessage::new(
            "user",
            vec![MessagePart::Image, MessagePart::Text("Describe this picture in detail.".into())],
        ),
    ];
    let params = GenerationParams { max_tokens: Some(24), ..Default::default() };
    let first = run_together(engine, vec![pipeline.prepare(&messages, &[picture()])?], &params)?.remove(0);
    let answer = first.completion.as_ref().context("no answer")?;
    messages.push(ChatMessage::text("assistant", &answer.text));
    messages.push(ChatMessage::text("user", "Which colours does it use?"));
    let second = run_together(engine, vec![pipeline.prepare(&messages, &[picture()])?], &params)?.remove(0);
    let usage = &second.completion.as_ref().context("no answer")?.usage;
    Ok((first.ttft().as_secs_f64(), second.ttft().as_secs_f64(), usage.cached_tokens, usage.prompt_tokens))
}

/// Eight questions behind one system prompt, sent together: (positions computed, TTFT p50,
/// TTFT max, wall seconds, prompt tokens each).
fn shared_system_prompt(engine: &Arc<Engine>, sentences: usize) -> Result<(f64, f64, f64, f64, usize)> {
    let system: String = (0..sentences)
        .map(|i| format!("Rule {i}: answer visitors of the museum kindly, briefly and with facts. "))
        .collect();
    let prompts = (0..8)
        .map(|i| {
            let question = format!("Visitor {i} asks: when does the museum open on Sundays?");
            Ok(engine.pipeline().prepare(
                &[ChatMessage::text("system", &system), ChatMessage::text("user", &question)],
                &[],
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    let prompt_tokens = prompts[0].tokens.ids.len();
    let before = engine.stats();
    let started = Instant::now();
    let traces =
        run_together(engine, prompts, &GenerationParams { max_tokens: Some(8), ..Default::default() })?;
    let wall = started.elapsed().as_secs_f64();
    let after = engine.stats();
    let computed = (after.prefill_tokens.sum + after.decode_tokens.sum)
        - (before.prefill_tokens.sum + before.decode_tokens.sum);
    let mut ttft: Vec<f64> = traces.iter().map(|t| t.ttft().as_secs_f64()).collect();
    let p50 = percentile(&mut ttft, 0.5);
    Ok((computed, p50, percentile(&mut ttft, 1.0), wall, prompt_tokens))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    println!("cpu: {}", CpuInfo::detect());
    let load = || {
        Pipeline::load(&LoadOptions {
            model: args.model.to_string_lossy().into(),
            isq: args.isq,
            ..Default::default()
        })
    };
    let pipeline = load()?;
    println!(
        "model: {} (isq {:?}), loaded in {:.1}s",
        pipeline.source(),
        args.isq,
        pipeline.load_time().as_secs_f64()
    );
    let engines = [("on", engine(pipeline, true)?), ("off", engine(load()?, false)?)];

    println!("\n| caches | turn 1 TTFT s | turn 2 TTFT s | turn 2 / turn 1 | turn 2 cached tokens |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, engine) in &engines {
        let (first, second, cached, prompt) = two_turns(engine)?;
        println!(
            "| {name} | {first:.2} | {second:.2} | {:.1}% | {cached} of {prompt} |",
            100.0 * second / first
        );
    }

    println!(
        "\n| caches | 8 requests behind a shared system prompt: prompt tokens each | positions computed | TTFT p50 / max s | wall s |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (name, engine) in &engines {
        let (computed, p50, max, wall, prompt) = shared_system_prompt(engine, args.system_sentences)?;
        println!("| {name} | {prompt} | {computed:.0} | {p50:.2} / {max:.2} | {wall:.1} |");
    }
    Ok(())
}
