//! What the benchmark examples share: following requests' events, percentiles, the test
//! picture and the CPU description that goes beside every figure.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use image::{DynamicImage, Rgb, RgbImage};
use phive::engine::{Completion, Engine, Event, GenerationParams};
use phive::pipeline::PreparedPrompt;

/// When one request's events arrived, and what it answered.
pub struct Trace {
    pub submitted: Instant,
    pub deltas: Vec<Instant>,
    pub done: Instant,
    pub completion: Option<Completion>,
}

impl Trace {
    pub fn ttft(&self) -> Duration {
        self.deltas.first().map_or(Duration::ZERO, |t| *t - self.submitted)
    }

    /// Generated tokens.
    pub fn tokens(&self) -> usize {
        self.completion.as_ref().map_or(0, |c| c.tokens.len())
    }
}

/// Submits `prompts` together and follows each on its own thread.
pub fn run_together(
    engine: &Arc<Engine>,
    prompts: Vec<PreparedPrompt>,
    params: &GenerationParams,
) -> Result<Vec<Trace>> {
    let handles = prompts
        .into_iter()
        .map(|p| Ok((Instant::now(), engine.submit(p, params.clone(), 1)?)))
        .collect::<Result<Vec<_>>>()?;
    let threads: Vec<_> = handles
        .into_iter()
        .map(|(submitted, handle)| std::thread::spawn(move || follow(submitted, handle)))
        .collect();
    threads.into_iter().map(|t| t.join().expect("follower thread")).collect()
}

pub fn follow(submitted: Instant, mut handle: phive::engine::RequestHandle) -> Result<Trace> {
    let mut deltas = Vec::new();
    let mut done = None;
    while let Some(event) = handle.next_blocking() {
        match event {
            Event::Delta { .. } => deltas.push(Instant::now()),
            Event::Done { completion, .. } => done = Some(completion),
            Event::Error(e) => return Err(e.into()),
        }
    }
    Ok(Trace { submitted, deltas, done: Instant::now(), completion: done })
}

pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// A 1024x768 picture with structure (gradients and bars), so preprocessing does real work.
pub fn picture() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(1024, 768, |x, y| {
        Rgb([(x / 4) as u8, (y / 3) as u8, if (x / 64 + y / 64) % 2 == 0 { 200 } else { 40 }])
    }))
}

pub fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find_map(|l| l.strip_prefix("model name")).unwrap_or(": unknown");
    let flags = info.lines().find_map(|l| l.strip_prefix("flags")).unwrap_or_default();
    let simd: Vec<&str> = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    format!(
        "{} [{}], {} threads",
        model.trim_start_matches([' ', '\t', ':']),
        simd.join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}
