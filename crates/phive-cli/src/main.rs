//! The `phive` command.

mod run;

use clap::{Parser, Subcommand};

/// Inference engine for the Phi vision-language models (Phi-3.5-vision).
#[derive(Parser)]
#[command(name = "phive", version, about, long_about = None)]
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
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
