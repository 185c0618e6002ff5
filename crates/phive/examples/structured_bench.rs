//! Decode speed with a JSON schema against without one, at concurrency 1 and 8, side by side in
//! one run (the goal: the grammar costs at most 10%).
//!
//! ```sh
//! cargo run --release -p phive --example structured_bench -- --model /tmp/phi35-real --isq q4k
//! ```
//! Every request decodes exactly `--tokens` tokens: the schema is an array of exactly that many
//! one-digit integers (each integer and each separator a token), and the free requests run to
//! `max_tokens`.

#[path = "common/flags.rs"]
mod flags;

use std::sync::Arc;

use anyhow::Result;
use flags::Flags;
use phive::bench::{run_together, CpuInfo, Trace};
use phive::engine::{Engine, EngineConfig, GenerationParams, Grammar};
use phive::pipeline::{LoadOptions, Pipeline};
use phive::prompt::ChatMessage;
use phive::IsqType;

/// What `--help` prints.
const USAGE: &str = "usage: structured_bench [--model DIR] [--isq TYPE] [--tokens N] [--rounds N]";

struct Args {
    model: String,
    isq: Option<IsqType>,
    tokens: usize,
    rounds: usize,
}

fn args() -> Result<Args> {
    let mut args = Args { model: "/tmp/phi35-real".into(), isq: None, tokens: 64, rounds: 2 };
    let mut flags = Flags::new(USAGE);
    while let Some(flag) = flags.next_flag() {
        let mut value = || flags.value(&flag);
        match flag.as_str() {
            "--model" => args.model = value()?,
            "--isq" => args.isq = Some(value()?.parse()?),
            "--tokens" => args.tokens = value()?.parse()?,
            "--rounds" => args.rounds = value()?.parse()?,
            other => return Err(flags.error(format!("unknown flag {other}"))),
        }
    }
    Ok(args)
}

/// Decode tokens per second over all requests of a round: tokens after each request's first,
/// over the time from the first request's first token to the last request's end.
fn decode_rate(traces: &[Trace]) -> f64 {
    let first = traces.iter().filter_map(|t| t.deltas.first()).map(|d| d.at).min();
    let end = traces.iter().map(|t| t.done).max();
    let tokens: usize = traces.iter().map(|t| t.tokens().saturating_sub(1)).sum();
    match (first, end) {
        (Some(first), Some(end)) => tokens as f64 / (end - first).as_secs_f64(),
        _ => f64::NAN,
    }
}

fn main() -> Result<()> {
    let args = args()?;
    let options = LoadOptions { model: args.model.clone(), isq: args.isq, ..Default::default() };
    let engine = Arc::new(Engine::new(Pipeline::load(&options)?, EngineConfig::default())?);
    let digits = serde_json::json!({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
        "minItems": args.tokens, "maxItems": args.tokens});
    let free = GenerationParams { max_tokens: Some(args.tokens), ..Default::default() };
    let constrained = GenerationParams { grammar: Some(Grammar::JsonSchema(digits)), ..free.clone() };
    let prompt = |i: usize| {
        let text = format!("List some digits, request {i}.");
        engine.pipeline().prepare(&[ChatMessage::text("user", text)], &[])
    };
    // Warm up: first use of each weight, and the grammar's token trie.
    run_together(&engine, vec![prompt(0)?], &constrained)?;
    println!("CPU: {}", CpuInfo::detect());
    println!("model {} isq {:?}, {} decoded tokens per request", args.model, args.isq, args.tokens);
    println!("| concurrency | free tok/s | JSON schema tok/s | ratio |");
    println!("|---|---|---|---|");
    for concurrency in [1, 8] {
        let (mut free_rates, mut schema_rates) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            // Alternate which variant runs first so drift on a shared machine hits both.
            let variants = if round % 2 == 0 { [&free, &constrained] } else { [&constrained, &free] };
            for params in variants {
                let prompts = (0..concurrency).map(prompt).collect::<Result<Vec<_>, _>>()?;
                let traces = run_together(&engine, prompts, params)?;
                let rate = decode_rate(&traces);
                if params.grammar.is_some() {
                    schema_rates.push(rate);
                } else {
                    free_rates.push(rate);
                }
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (f, s) = (mean(&free_rates), mean(&schema_rates));
        println!("| {concurrency} | {f:.2} | {s:.2} | {:.3} |", s / f);
    }
    Ok(())
}
