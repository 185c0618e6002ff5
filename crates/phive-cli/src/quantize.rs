//! `phive quantize`: quantize a checkpoint once and save it as GGUF, so later loads skip ISQ.

use std::path::PathBuf;

use clap::Args;
use phive::export::quantize_checkpoint;
use phive::pipeline::LoadOptions;
use phive::quant::IsqType;

/// Options of `phive quantize`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Model: a local checkpoint folder or a Hugging Face id.
    #[arg(short, long)]
    model: String,
    /// Hub revision (branch, tag or commit) when MODEL is a Hub id.
    #[arg(long)]
    revision: Option<String>,
    /// Quantization type for the language model's linear layers (case-insensitive): Q4_0, Q4_1,
    /// Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K, F16, BF16. lm_head gets the next higher type.
    #[arg(long)]
    isq: IsqType,
    /// Quantize the vision (and audio) encoders' projections too.
    #[arg(long)]
    isq_encoders: bool,
    /// Output folder: receives model.gguf plus the config, tokenizer and processor files.
    #[arg(short, long)]
    output: PathBuf,
}

/// Quantizes and writes the checkpoint, then prints what was written.
pub fn quantize(args: QuantizeArgs) -> anyhow::Result<()> {
    eprintln!("quantizing {} to {} ...", args.model, args.isq);
    let options = LoadOptions {
        model: args.model.clone(),
        revision: args.revision.clone(),
        isq: Some(args.isq),
        isq_encoders: args.isq_encoders,
        // The checkpoint's preprocessor_config.json is copied as is.
        preprocess: Default::default(),
        ..Default::default()
    };
    let report = quantize_checkpoint(&options, &args.output)?;
    eprintln!("{}", report.load);
    eprintln!(
        "wrote {} ({:.1} MB, {} tensors, {} of them quantized linears) and {}",
        report.gguf.display(),
        report.gguf_bytes as f64 / 1e6,
        report.tensors,
        report.quantized,
        report.copied.join(", ")
    );
    eprintln!("load it with: phive run -m {} -p ...", args.output.display());
    Ok(())
}
