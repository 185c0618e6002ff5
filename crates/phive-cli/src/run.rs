//! `phive run`: one prompt, streamed to stdout, with a timing summary on stderr.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use phive::engine::{Engine, Event, GenerationParams, SamplingParams};
use phive::media::{load_audio, load_image, MediaPolicy};
use phive::pipeline::{LoadOptions, Pipeline};
use phive::prompt::{ChatMessage, MessagePart};

use crate::engine_args::EngineArgs;

/// Options of `phive run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Model: a local checkpoint folder or a Hugging Face id (e.g. microsoft/Phi-3.5-vision-instruct).
    #[arg(short, long)]
    model: String,
    /// Hub revision (branch, tag or commit) when MODEL is a Hub id.
    #[arg(long)]
    revision: Option<String>,
    /// Quantize the language model's linear layers in situ while loading (case-insensitive):
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K, F16, BF16. Q4K and Q6K have
    /// the fastest CPU kernels; lm_head gets the next higher type.
    #[arg(long, value_name = "TYPE")]
    isq: Option<phive::quant::IsqType>,
    /// With --isq, quantize the vision (and audio) encoders' projections too.
    #[arg(long, requires = "isq")]
    isq_encoders: bool,
    /// The user prompt. Images are placed before it unless it contains <|image_N|> tags.
    #[arg(short, long)]
    prompt: String,
    /// An image: a local path, an http(s) URL, a data: URL or base64. Repeat for several images.
    #[arg(long = "image", value_name = "PATH_OR_URL")]
    images: Vec<String>,
    /// An audio clip (Phi-4-multimodal): a local path, an http(s) URL, a data: URL or base64 of
    /// wav, mp3, flac or ogg. Repeat for several clips; they follow the images.
    #[arg(long = "audio", value_name = "PATH_OR_URL")]
    audios: Vec<String>,
    /// An optional system message.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens to generate (default: up to the context length).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Sampling temperature; 0 (the default) is greedy decoding.
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus sampling probability mass.
    #[arg(long)]
    top_p: Option<f64>,
    /// Sample only among the K most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Drop tokens less likely than MIN_P times the most likely one.
    #[arg(long)]
    min_p: Option<f64>,
    /// OpenAI frequency penalty (-2..2).
    #[arg(long)]
    frequency_penalty: Option<f32>,
    /// OpenAI presence penalty (-2..2).
    #[arg(long)]
    presence_penalty: Option<f32>,
    /// Multiplicative repetition penalty (1.0 is off).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Random seed: the same seed gives the same output.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop generating at this string (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Loads the model, runs the prompt, streams the answer.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let policy = MediaPolicy::trusted();
    let images = args
        .images
        .iter()
        .map(|src| load_image(src, &policy).with_context(|| format!("image {src}")))
        .collect::<anyhow::Result<Vec<_>>>()?;

    eprintln!("loading {} ...", args.model);
    let pipeline = Pipeline::load(&LoadOptions {
        model: args.model.clone(),
        revision: args.revision.clone(),
        isq: args.isq,
        isq_encoders: args.isq_encoders,
    })?;
    eprintln!(
        "loaded {} ({}) in {:.2}s, {:.1} MB of weights",
        pipeline.source(),
        pipeline.architecture().name(),
        pipeline.load_time().as_secs_f64(),
        pipeline.weight_bytes() as f64 / 1e6
    );
    if pipeline.load_report().isq.is_some() {
        eprintln!("{}", pipeline.load_report());
    }

    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::text("system", system));
    }
    let audios = args
        .audios
        .iter()
        .map(|src| load_audio(src, &policy))
        .collect::<Result<Vec<_>, phive::Error>>()
        .context("audio input")?;
    let mut parts = vec![MessagePart::Image; images.len()];
    parts.extend(vec![MessagePart::Audio; audios.len()]);
    parts.push(MessagePart::Text(args.prompt.clone()));
    messages.push(ChatMessage { role: "user".into(), parts });

    let params = GenerationParams {
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            min_p: args.min_p,
            frequency_penalty: args.frequency_penalty,
            presence_penalty: args.presence_penalty,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
        },
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        logprobs: None,
    };
    let request_start = Instant::now();
    let prepared = pipeline.prepare_media(&messages, &images, &audios)?;
    let engine = Engine::new(pipeline, args.engine.config()?);
    eprintln!("{}", crate::engine_args::summary(&engine));
    let mut handle = engine.submit(prepared, params, 1)?;
    let mut stdout = std::io::stdout().lock();
    let mut completion = None;
    while let Some(event) = handle.next_blocking() {
        match event {
            Event::Delta { delta, .. } => {
                if stdout.write_all(delta.text.as_bytes()).and_then(|_| stdout.flush()).is_err() {
                    break; // stdout closed: dropping the handle cancels the request
                }
            }
            Event::Done { completion: done, .. } => completion = Some(done),
            Event::Error(e) => return Err(e.into()),
        }
    }
    let completion = completion.context("generation was interrupted")?;
    let _ = writeln!(stdout);
    let u = &completion.usage;
    eprintln!(
        "prompt tokens: {} ({} image, {} audio) | completion tokens: {} | finish: {:?}\n\
         time to first token: {:.2}s | prefill: {:.1} tok/s | decode: {:.1} tok/s | total: {:.2}s (wall {:.2}s)",
        u.prompt_tokens,
        u.image_tokens,
        u.audio_tokens,
        u.completion_tokens,
        completion.finish_reason,
        u.time_to_first_token.as_secs_f64(),
        u.prompt_tokens_per_sec(),
        u.completion_tokens_per_sec(),
        request_start.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}
