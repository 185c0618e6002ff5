//! `phive bench`: the speed of a model on this machine, as a user of `phive serve` would see it.
//!
//! Loads the model like `phive run`, sends text prompts of an exact length at each concurrency
//! level straight to the engine, and reports time to first token, prefill and decode rates,
//! and how close each phase comes to this machine's measured peak (decode against memory
//! bandwidth, prefill against matmul speed). `--json` writes the same figures in the schema of
//! [`phive::bench::report`], which `tools/bench_mistralrs.py` also writes, so engines can be
//! compared with `tools/bench_compare.py`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use phive::bench::report::{
    self, BenchReport, EngineInfo, ImageFigures, LevelFigures, LoadFigures, ModelInfo, PeakFigures, Workload,
};
use phive::bench::{
    peak, run_together, run_together_with, steady_decode_rate, text_prompt, CpuInfo, Summary,
};
use phive::engine::{Engine, GenerationParams, SamplingParams};
use phive::media::MediaPolicy;
use phive::prompt::{ChatMessage, MessagePart};

use crate::engine_args::EngineArgs;
use crate::model_args::LoadArgs;

/// The text that follows the image in an `--image` request.
const IMAGE_QUESTION: &str = "Describe this picture in one sentence.";

/// Options of `phive bench`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    phive bench -m microsoft/Phi-3.5-vision-instruct --isq q4k\n  \
    phive bench -m ./phi35 --isq q4k --prompt-tokens 256 --decode-tokens 32 --concurrency 1,4 --json phive.json\n  \
    phive bench -m ./phi35 --image photo.jpg\n\n\
    Every request decodes exactly --decode-tokens tokens (stop tokens are banned); the prefix and media \
    caches are off, so every prompt is computed. The peaks are phive's own short probes (a multi-threaded \
    read of a large buffer, an f32 matmul), not vendor figures.")]
pub struct BenchArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Prompt length of every text request, chat template included.
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    prompt_tokens: u32,
    /// Tokens generated per request (at least 2: the first one comes from prefill).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(2..))]
    decode_tokens: u32,
    /// Concurrency levels: comma-separated numbers of requests sent together (e.g. 1,2,4,8).
    #[arg(long, value_name = "LEVELS", value_delimiter = ',', default_value = "1", value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: Vec<u32>,
    /// Also measure the time to first token of a request with this image and a short text
    /// (a local path, an http(s) URL, a data: URL or base64). Repeat for several images; each
    /// is its own request.
    #[arg(long = "image", value_name = "PATH_OR_URL")]
    images: Vec<String>,
    /// Write every figure, the machine and the model as JSON to FILE (schema `phive-bench/1`,
    /// see tools/README.md).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Skip the memory-bandwidth and matmul probes (no "% of peak" figures).
    #[arg(long)]
    no_peak: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs the benchmark and prints its table.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let prompt_tokens = args.prompt_tokens as usize;
    let decode_tokens = args.decode_tokens as usize;
    let levels: Vec<usize> = args.concurrency.iter().map(|&c| c as usize).collect();
    if levels.is_empty() {
        bail!("--concurrency needs at least one level");
    }
    if let Some(path) = &args.json {
        check_writable(path)?;
    }
    let policy = MediaPolicy::trusted();
    let images = crate::run::load_images(&args.images, &policy)?;
    let machine = CpuInfo::detect();
    eprintln!("machine: {machine}");

    let pipeline = args.load.load()?;
    let context = pipeline.context_length();
    if prompt_tokens + decode_tokens > context {
        bail!(
            "--prompt-tokens {prompt_tokens} plus --decode-tokens {decode_tokens} exceed the model's context of {context} tokens"
        );
    }
    let footprint = pipeline.model().lm_footprint();
    let model = ModelInfo {
        source: pipeline.source().to_string(),
        architecture: Some(pipeline.architecture().name().to_string()),
        isq: pipeline.load_report().isq.map(|t| t.to_string()),
        device: Some(pipeline.device_summary()),
        dtype: Some(pipeline.dtype_name().to_string()),
        lm_params: Some(footprint.params),
        lm_weight_bytes: Some(footprint.bytes),
    };
    let load_seconds = pipeline.load_time().as_secs_f64();

    // Every prompt is computed: no prefix or media cache; every level runs all its streams at once.
    let mut config = args.engine.config()?;
    config.prefix_cache = false;
    config.media_cache_bytes = 0;
    let widest = levels.iter().copied().max().unwrap_or(1);
    config.max_num_seqs = config.max_num_seqs.max(widest);
    let engine = Arc::new(Engine::new(pipeline, config)?);
    eprintln!("{}", crate::engine_args::summary(&engine));
    let needed = widest * (prompt_tokens + decode_tokens);
    if engine.kv_capacity_tokens() < needed {
        eprintln!(
            "warning: the KV cache holds {} tokens but {widest} streams need {needed}: some will wait (raise --kv-cache-mem)",
            engine.kv_capacity_tokens()
        );
    }
    let pipeline = engine.pipeline();

    // Prompts first, so a bad length is reported before anything runs.
    let prompts = levels
        .iter()
        .enumerate()
        .map(|(l, &c)| (0..c).map(|i| text_prompt(pipeline, prompt_tokens, 1000 * (l + 1) + i)).collect())
        .collect::<phive::Result<Vec<Vec<_>>>>()?;

    // Stop tokens are banned so every request decodes exactly `decode_tokens`.
    let logit_bias = pipeline.stop_token_ids().iter().map(|&id| (id, -100.0)).collect();
    let sampling = SamplingParams { logit_bias, ..Default::default() };
    // Every request decodes its tokens: a random-weight checkpoint may sample a stop token first.
    let params = GenerationParams {
        sampling,
        max_tokens: Some(decode_tokens),
        ignore_eos: true,
        ..Default::default()
    };

    let total: usize = levels.iter().map(|c| c * decode_tokens).sum::<usize>() + images.len();
    let bar = progress(total as u64);
    // The first request after load, timed; it also warms up what candle's kernels prepare on
    // first use (the ISQ types phive has no kernel of its own for).
    bar.set_message("first request");
    let warm = pipeline.prepare(&[ChatMessage::text("user", "Hello there.")], &[])?;
    let first =
        run_together(&engine, vec![warm], &GenerationParams { max_tokens: Some(2), ..params.clone() })?;
    let first_request_ttft_s = first.first().map(|t| t.ttft().as_secs_f64());

    let mut level_figures = Vec::new();
    for (&c, prompts) in levels.iter().zip(prompts) {
        bar.set_message(format!("concurrency {c}"));
        let tick = bar.clone();
        let traces = run_together_with(&engine, prompts, &params, move || tick.inc(1))?;
        level_figures.push(level(c, prompt_tokens, &traces)?);
    }

    let mut image_figures = Vec::new();
    for (src, image) in args.images.iter().zip(images) {
        bar.set_message(format!("image {src}"));
        let started = Instant::now();
        let messages =
            [ChatMessage::new("user", vec![MessagePart::Image, MessagePart::Text(IMAGE_QUESTION.into())])];
        let prepared = pipeline.prepare(&messages, &[image])?;
        let one = GenerationParams { max_tokens: Some(1), ..params.clone() };
        let trace = run_together(&engine, vec![prepared], &one)?.remove(0);
        let first = trace.deltas.first().map_or(trace.done, |d| d.at);
        let usage = trace.completion.as_ref().map(|c| c.usage.clone()).unwrap_or_default();
        image_figures.push(ImageFigures {
            path: src.clone(),
            prompt_tokens: usage.prompt_tokens,
            image_tokens: usage.image_tokens,
            ttft_s: (first - started).as_secs_f64(),
        });
        bar.inc(1);
    }
    // The peak memory of the workloads, before the probes allocate their buffer.
    let peak_rss = phive::quant::memory_stats().peak_rss;

    let peak = if args.no_peak {
        None
    } else {
        bar.set_message("probing memory bandwidth");
        let buffer =
            phive::quant::available_memory_bytes().map_or(1 << 30, |a| (a / 4).min(1 << 30)) as usize;
        let memory = peak::memory_read_bandwidth(buffer, Duration::from_millis(300));
        bar.set_message("probing matmul speed");
        let flops = peak::matmul_flops(1024, Duration::from_millis(300))?;
        Some(PeakFigures {
            memory_read_gb_s: memory / 1e9,
            matmul_gflop_s: flops / 1e9,
            measured_by: "phive".into(),
        })
    };
    bar.finish_and_clear();

    let report = BenchReport {
        schema: report::SCHEMA.into(),
        engine: EngineInfo {
            name: "phive".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            git: option_env!("PHIVE_GIT_VERSION").map(str::to_string),
        },
        date: report::now_utc(),
        machine,
        workload: Workload {
            prompt_tokens,
            decode_tokens,
            concurrency: levels,
            images: args.images.clone(),
            kv_cache_dtype: Some(engine.kv_cache_dtype().to_string()),
        },
        load: LoadFigures {
            seconds: load_seconds,
            peak_rss_bytes: (peak_rss > 0).then_some(peak_rss),
            first_request_ttft_s,
        },
        levels: level_figures.into_iter().map(|l| l.with_roofline(&model, peak.as_ref())).collect(),
        model,
        peak,
        images: image_figures,
    };
    print!("{}", table(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Fails early when the report could not be written at the end.
fn check_writable(path: &std::path::Path) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!("--json {}: is a directory", path.display());
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent {
        if !dir.is_dir() {
            bail!("--json {}: the folder {} does not exist", path.display(), dir.display());
        }
    }
    Ok(())
}

fn progress(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{msg:24} [{bar:30}] {pos}/{len} tokens, {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The figures of `concurrency` streams that ran together (roofline figures filled later).
fn level(
    concurrency: usize,
    prompt_tokens: usize,
    traces: &[phive::bench::Trace],
) -> anyhow::Result<LevelFigures> {
    let ttft: Vec<f64> = traces.iter().map(|t| t.ttft().as_secs_f64()).collect();
    let gaps: Vec<f64> = traces.iter().flat_map(|t| t.gaps().map(|g| g * 1e3)).collect();
    let usages: Vec<_> = traces.iter().filter_map(|t| t.completion.as_ref().map(|c| &c.usage)).collect();
    let slowest_first = ttft.iter().copied().fold(0.0, f64::max);
    let aggregate = steady_decode_rate(traces).context("no tokens were generated")?;
    let per_stream =
        usages.iter().map(|u| u.completion_tokens_per_sec()).sum::<f64>() / usages.len().max(1) as f64;
    Ok(LevelFigures {
        concurrency,
        prompt_tokens: usages.first().map_or(prompt_tokens, |u| u.prompt_tokens),
        completion_tokens: usages.iter().map(|u| u.completion_tokens).sum(),
        ttft_s: Summary::of(&ttft).context("no requests")?,
        itl_ms: Summary::of(&gaps),
        prefill_tok_s: if slowest_first > 0.0 {
            (concurrency * prompt_tokens) as f64 / slowest_first
        } else {
            0.0
        },
        decode_tok_s_per_stream: per_stream,
        decode_tok_s_aggregate: aggregate,
        decode_gb_s: None,
        decode_pct_of_peak: None,
        prefill_gflop_s: None,
        prefill_pct_of_peak: None,
    })
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The human-readable report: a header of machine, model and peaks, then one table row per
/// concurrency level and one per image.
fn table(r: &BenchReport) -> String {
    const MB: f64 = 1e6;
    let mut out = String::new();
    let git = r.engine.git.as_deref().map(|g| format!(" ({g})")).unwrap_or_default();
    out += &format!("phive bench: {} {}{git}, {}\n", r.engine.name, r.engine.version, r.date);
    out +=
        &format!("machine:  {}, {:.1} GiB\n", r.machine, r.machine.memory_bytes as f64 / (1u64 << 30) as f64);
    out += &format!(
        "model:    {} ({}, {}, {} on {}): language model {:.1} M params, {:.1} MB of weights read per decode step\n",
        r.model.source,
        r.model.architecture.as_deref().unwrap_or("?"),
        r.model.isq.as_deref().map_or("no ISQ".to_string(), |t| format!("ISQ {t}")),
        r.model.dtype.as_deref().unwrap_or("?"),
        r.model.device.as_deref().unwrap_or("?"),
        r.model.lm_params.unwrap_or(0) as f64 / 1e6,
        r.model.lm_weight_bytes.unwrap_or(0) as f64 / MB,
    );
    out += &format!(
        "load:     {:.2} s, peak RSS {} MB, first request's TTFT {} s\n",
        r.load.seconds,
        opt(r.load.peak_rss_bytes.map(|b| b as f64 / MB), 0),
        opt(r.load.first_request_ttft_s, 3)
    );
    match &r.peak {
        Some(p) => {
            out += &format!(
                "peak:     memory read {:.1} GB/s, f32 matmul {:.1} GFLOP/s (measured by {}; quantized \
                 prefill, on int8 dot products, can exceed the f32 figure)\n",
                p.memory_read_gb_s, p.matmul_gflop_s, p.measured_by
            )
        }
        None => out += "peak:     not measured (--no-peak)\n",
    }
    out += &format!(
        "workload: {} prompt tokens and {} decode tokens per request{}\n\n",
        r.workload.prompt_tokens,
        r.workload.decode_tokens,
        r.workload.kv_cache_dtype.as_ref().map_or(String::new(), |d| format!(", KV cache in {d}"))
    );
    out += "| concurrency | TTFT p50 s | TTFT p99 s | prefill tok/s | prefill GFLOP/s (% f32 peak) | decode tok/s per stream | decode tok/s aggregate | ITL p50 / p99 ms | decode GB/s (% peak) |\n";
    out += "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for l in &r.levels {
        let pct = |v: Option<f64>| v.map(|p| format!(" ({p:.0}%)")).unwrap_or_default();
        out += &format!(
            "| {} | {:.3} | {:.3} | {:.1} | {}{} | {:.2} | {:.2} | {} | {}{} |\n",
            l.concurrency,
            l.ttft_s.p50,
            l.ttft_s.p99,
            l.prefill_tok_s,
            opt(l.prefill_gflop_s, 1),
            pct(l.prefill_pct_of_peak),
            l.decode_tok_s_per_stream,
            l.decode_tok_s_aggregate,
            l.itl_ms.map_or("-".into(), |s| format!("{:.1} / {:.1}", s.p50, s.p99)),
            opt(l.decode_gb_s, 2),
            pct(l.decode_pct_of_peak),
        );
    }
    if !r.images.is_empty() {
        out += "\n| image | prompt tokens | image tokens | TTFT s |\n|---|---:|---:|---:|\n";
        for i in &r.images {
            out += &format!("| {} | {} | {} | {:.3} |\n", i.path, i.prompt_tokens, i.image_tokens, i.ttft_s);
        }
    }
    out
}
