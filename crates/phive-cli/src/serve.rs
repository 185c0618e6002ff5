//! `phive serve`: the OpenAI-compatible HTTP server.
//!
//! Documented form: `phive serve vision -p 1234 -m MODEL`. The mistral.rs-style legacy form
//! `phive --port 1234 vision-plain -m MODEL -a phi4mm` is rewritten to
//! `phive serve vision-plain --port 1234 -m MODEL -a phi4mm` before parsing (see
//! [`rewrite_legacy_args`]), so server options may come before or after the model subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use phive::api::RequestLimits;
use phive::engine::Engine;

use crate::engine_args::EngineArgs;
use crate::guard_args::{seconds, GuardArgs};
use crate::model_args::Dtype;
use crate::preprocess_args::{self, PreprocessArgs};
use phive::media::MediaPolicy;
use phive::pipeline::{LoadOptions, Pipeline};
use phive_server::{Server, ServerConfig};

/// Options of `phive serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    server: ServerOptions,
    #[command(subcommand)]
    model: ModelCommand,
}

/// The kind of model to serve.
#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// Serve a vision-language model (Phi-3.5-vision, or Phi-4-multimodal with audio too).
    #[command(visible_alias = "vision-plain")]
    Vision(ModelArgs),
}

/// Architectures `--arch` accepts.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    /// microsoft/Phi-3.5-vision-instruct.
    Phi3v,
    /// microsoft/Phi-4-multimodal-instruct (not implemented yet).
    Phi4mm,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::Phi3v => "phi3v",
            Arch::Phi4mm => "phi4mm",
        }
    }
}

/// Which model to load.
#[derive(Args, Debug)]
struct ModelArgs {
    /// Model: a local checkpoint folder or a Hugging Face id (e.g. microsoft/Phi-3.5-vision-instruct).
    #[arg(short, long, visible_alias = "model-id", env = "PHIVE_MODEL")]
    model: String,
    /// Hub revision (branch, tag or commit) when MODEL is a Hub id.
    #[arg(long, env = "PHIVE_REVISION")]
    revision: Option<String>,
    /// Expected architecture; checked against the checkpoint's config.json (auto-detected when absent).
    #[arg(short, long, value_enum, env = "PHIVE_ARCH")]
    arch: Option<Arch>,
}

/// Server options; accepted before or after the model subcommand.
#[derive(Args, Debug)]
struct ServerOptions {
    /// Address to listen on. Use 0.0.0.0 to accept connections from other machines.
    #[arg(long, global = true, default_value = "127.0.0.1", env = "PHIVE_HOST")]
    host: String,
    /// Port to listen on (0 picks a free port).
    #[arg(short, long, global = true, default_value_t = 1234, env = "PHIVE_PORT")]
    port: u16,
    /// Precision of the language model: auto is f32 on the CPU and bf16 on a GPU; the vision
    /// and audio encoders stay f32.
    #[arg(short = 'd', long, global = true, value_enum, default_value = "auto", env = "PHIVE_DTYPE")]
    dtype: Dtype,
    /// Quantize the language model's linear layers in situ while loading (case-insensitive):
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K, F16, BF16.
    #[arg(long, global = true, value_name = "TYPE", env = "PHIVE_ISQ")]
    isq: Option<phive::IsqType>,
    /// With --isq, quantize the vision (and audio) encoders' projections too.
    #[arg(long, global = true, requires = "isq", env = "PHIVE_ISQ_ENCODERS")]
    isq_encoders: bool,
    /// Where to run: cpu, or cuda[:N] for NVIDIA GPU N (needs a build made by
    /// scripts/build-cuda.sh).
    #[arg(long, global = true, default_value = "cpu", value_name = "DEVICE", env = "PHIVE_DEVICE")]
    device: phive::DeviceChoice,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    preprocess: PreprocessArgs,
    #[command(flatten)]
    guard: GuardArgs,
    /// Most images per request.
    #[arg(long, global = true, default_value_t = 8, env = "PHIVE_MAX_IMAGES")]
    max_images: usize,
    /// Largest image in bytes (download, file or base64 payload).
    #[arg(long, global = true, default_value_t = 20 * 1024 * 1024, env = "PHIVE_MAX_IMAGE_BYTES")]
    max_image_bytes: usize,
    /// Largest image in pixels (width x height), checked from the header before decoding.
    #[arg(long, global = true, default_value_t = 50_000_000, env = "PHIVE_MAX_IMAGE_PIXELS")]
    max_image_pixels: u64,
    /// Allow images given as local paths or file:// URLs inside DIR (repeatable). Without it,
    /// local paths are refused.
    #[arg(long = "allow-local-media", value_name = "DIR", global = true, env = "PHIVE_ALLOW_LOCAL_MEDIA")]
    allow_local_media: Vec<PathBuf>,
    /// Allow image URLs that resolve to loopback, private, link-local, CGNAT, multicast or
    /// metadata addresses (refused by default: they reach the server's own network).
    #[arg(long, global = true, env = "PHIVE_ALLOW_PRIVATE_URLS")]
    allow_private_urls: bool,
    /// Seconds allowed for downloading one image URL.
    #[arg(long, global = true, default_value_t = 30.0, value_name = "SECS", env = "PHIVE_FETCH_TIMEOUT")]
    fetch_timeout: f64,
    /// Largest request body in bytes.
    #[arg(long, global = true, default_value_t = 64 * 1024 * 1024, env = "PHIVE_MAX_BODY_BYTES")]
    max_body_bytes: usize,
    /// Model id clients send and responses carry (default: the --model value).
    #[arg(long, global = true, env = "PHIVE_SERVED_MODEL_NAME")]
    served_model_name: Option<String>,
    /// Do not serve the chat page at / and /ui (the API is unchanged).
    #[arg(long, global = true, env = "PHIVE_NO_UI")]
    no_ui: bool,
    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT; meanwhile /health/ready
    /// answers 503 and new requests are refused with 503, then the process exits 0.
    #[arg(long, global = true, default_value_t = 30.0, value_name = "SECS", env = "PHIVE_SHUTDOWN_TIMEOUT")]
    shutdown_timeout: f64,
}

/// Rewrites the legacy form `phive [OPTIONS] vision-plain ARGS` into
/// `phive serve vision-plain [OPTIONS] ARGS`, leaving every other command line alone.
pub fn rewrite_legacy_args(args: Vec<String>) -> Vec<String> {
    let Some(position) = args.iter().position(|a| a == "vision-plain") else { return args };
    if args[1..position].iter().any(|a| ["serve", "run", "quantize", "help"].contains(&a.as_str())) {
        return args;
    }
    let mut out = vec![args[0].clone(), "serve".to_string(), "vision-plain".to_string()];
    out.extend(args[1..position].iter().cloned());
    out.extend(args[position + 1..].iter().cloned());
    out
}

/// Loads the model and serves it until SIGINT/SIGTERM, then drains.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let ModelCommand::Vision(model) = args.model;
    let opts = args.server;
    let engine_config = opts.engine.config()?;
    let fetch_timeout = seconds("--fetch-timeout", opts.fetch_timeout)?;
    let shutdown_timeout = seconds("--shutdown-timeout", opts.shutdown_timeout)?;
    for dir in &opts.allow_local_media {
        if !dir.is_dir() {
            bail!("--allow-local-media {}: not a directory", dir.display());
        }
    }

    eprintln!("loading {} ...", model.model);
    let pipeline = Pipeline::load(&LoadOptions {
        model: model.model.clone(),
        revision: model.revision.clone(),
        isq: opts.isq,
        isq_encoders: opts.isq_encoders,
        device: opts.device,
        dtype: opts.dtype.into(),
        preprocess: opts.preprocess.options(),
    })?;
    let detected = pipeline.architecture().name();
    if let Some(arch) = model.arch {
        if arch.name() != detected {
            bail!(
                "--arch {} does not match the checkpoint: {} is a {detected} model",
                arch.name(),
                pipeline.source()
            );
        }
    }
    let served = opts.served_model_name.clone().unwrap_or_else(|| model.model.clone());
    eprintln!(
        "loaded {} | arch {detected} | device {} | dtype {} | isq {} | {} | {:.1} MB of weights | load time {:.2}s",
        pipeline.source(),
        pipeline.device_summary(),
        pipeline.dtype_name(),
        opts.isq.map_or_else(|| "none".to_string(), |t| t.to_string()),
        preprocess_args::summary(&pipeline),
        pipeline.weight_bytes() as f64 / 1e6,
        pipeline.load_time().as_secs_f64()
    );
    if pipeline.load_report().isq.is_some() {
        eprintln!("{}", pipeline.load_report());
    }

    let engine = Arc::new(Engine::new(pipeline, engine_config.clone())?);
    eprintln!("{}", crate::engine_args::summary(&engine));
    let media = MediaPolicy {
        max_bytes: opts.max_image_bytes,
        max_pixels: opts.max_image_pixels,
        local_dirs: Some(opts.allow_local_media.clone()),
        allow_private_urls: opts.allow_private_urls,
        fetch_timeout,
        ..MediaPolicy::server()
    };
    let mut config = ServerConfig {
        model_aliases: vec![model.model.clone()],
        media,
        limits: RequestLimits { max_images: opts.max_images },
        max_body_bytes: opts.max_body_bytes,
        ui: !opts.no_ui,
        ..ServerConfig::new(served.clone())
    };
    opts.guard.apply(&mut config)?;
    let auth = if config.api_keys.is_enabled() { "API key required" } else { "no API key" };
    let server = Server::new(Arc::clone(&engine), config);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", opts.host, opts.port))?;
        let address: SocketAddr = listener.local_addr()?;
        eprintln!(
            "listening on http://{address} | model id {served:?} | {auth} | max sequences {} | max queue {}",
            engine_config.max_num_seqs, engine_config.max_queue
        );
        if !opts.no_ui {
            eprintln!("chat page: http://{address}/");
        }
        server.serve(listener, shutdown_signal(), shutdown_timeout).await.context("serving")
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    eprintln!("stopped");
    result
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    eprintln!("shutting down: draining (not ready, new requests get 503)");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rewrites_only_the_legacy_form() {
        assert_eq!(
            rewrite_legacy_args(strings(&[
                "phive",
                "--port",
                "1234",
                "vision-plain",
                "-m",
                "M",
                "-a",
                "phi4mm"
            ])),
            strings(&["phive", "serve", "vision-plain", "--port", "1234", "-m", "M", "-a", "phi4mm"])
        );
        let documented = strings(&["phive", "serve", "vision", "-p", "1234", "-m", "M"]);
        assert_eq!(rewrite_legacy_args(documented.clone()), documented);
        let run = strings(&["phive", "run", "-m", "M", "-p", "vision-plain"]);
        assert_eq!(rewrite_legacy_args(run.clone()), run);
    }
}
