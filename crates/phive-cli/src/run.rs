//! `phive run`: one prompt, streamed to stdout, with a timing summary on stderr.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use phive::engine::Engine;
use phive::media::{load_audio, load_image, MediaPolicy};
use phive::prompt::{ChatMessage, MessagePart};

use crate::answer;
use crate::engine_args::EngineArgs;
use crate::model_args::{LoadArgs, SamplingArgs};

/// Options of `phive run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    load: LoadArgs,
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
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Reads the images named on the command line (paths, URLs, data: URLs or base64), naming
/// the one that fails.
pub fn load_images(sources: &[String], policy: &MediaPolicy) -> anyhow::Result<Vec<image::DynamicImage>> {
    sources.iter().map(|src| load_image(src, policy).with_context(|| format!("image {src}"))).collect()
}

/// Loads the model, runs the prompt, streams the answer.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let policy = MediaPolicy::trusted();
    let images = load_images(&args.images, &policy)?;

    let pipeline = args.load.load()?;

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
    messages.push(ChatMessage::new("user", parts));

    let params = args.sampling.params();
    let request_start = Instant::now();
    let prepared = pipeline.prepare_media(&messages, &images, &audios)?;
    let engine = Engine::new(pipeline, args.engine.config()?)?;
    eprintln!("{}", crate::engine_args::summary(&engine));
    let handle = engine.submit(prepared, params, 1)?;
    let mut stdout = std::io::stdout().lock();
    let completion = answer::stream(handle, &mut stdout)?;
    let _ = writeln!(stdout);
    eprintln!(
        "{} (wall {:.2}s)",
        answer::figures(&completion, request_start.elapsed()),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
