//! The `phive` command.

mod answer;
mod bench;
mod chat;
mod engine_args;
mod guard_args;
mod model_args;
mod preprocess_args;
mod quantize;
mod run;
mod serve;

use clap::{Parser, Subcommand};

/// Inference engine for the Phi vision-language models (Phi-3.5-vision, Phi-4-multimodal).
#[derive(Parser)]
#[command(
    name = "phive",
    version,
    about,
    long_about = None,
    after_help = "Serve a model over HTTP (OpenAI API):\n  phive serve vision -p 1234 -m microsoft/Phi-3.5-vision-instruct\n\
                  The legacy form `phive --port 1234 vision-plain -m MODEL -a phi3v` is accepted too."
)]
struct Cli {
    /// Log filter (e.g. `info`, `phive=debug`); also read from RUST_LOG.
    #[arg(long, global = true, default_value = "warn", env = "RUST_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one prompt (with optional images) and stream the answer to stdout.
    Run(run::RunArgs),
    /// Chat with a model in the terminal: multi-turn, with /image, /audio, /system, /clear
    /// and /quit, streaming answers and line editing.
    Chat(chat::ChatArgs),
    /// Serve a model over an OpenAI-compatible HTTP API (chat and text completions, SSE
    /// streaming, /v1/models, /health, /metrics).
    Serve(serve::ServeArgs),
    /// Quantize a checkpoint (--isq TYPE) and save it as GGUF with its config and tokenizer, so
    /// `-m OUTPUT` later loads it without quantizing.
    Quantize(quantize::QuantizeArgs),
    /// Measure this machine's speed with a model: load time, peak memory, time to first token,
    /// prefill and decode tokens/s at several concurrency levels, against the measured memory
    /// bandwidth and matmul peak; --json writes the figures for tools/bench_compare.py.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse_from(serve::rewrite_legacy_args(std::env::args().collect()));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Chat(args) => chat::chat(args),
        Command::Serve(args) => serve::serve(args),
        Command::Quantize(args) => quantize::quantize(args),
        Command::Bench(args) => bench::bench(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
