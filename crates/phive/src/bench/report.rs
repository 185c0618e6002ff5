//! The JSON document of `phive bench --json`: every figure of a run plus the machine, in a
//! schema that `tools/bench_mistralrs.py` also writes, so `tools/bench_compare.py` can put
//! engines side by side. Field names carry their unit; a figure an engine cannot provide is
//! `null`. Adding fields keeps [`SCHEMA`]; renaming or removing one bumps it.

use serde::{Deserialize, Serialize};

use super::{CpuInfo, Summary};

/// The schema identifier written in [`BenchReport::schema`].
pub const SCHEMA: &str = "phive-bench/1";

/// One benchmark run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Which engine produced the figures.
    pub engine: EngineInfo,
    /// When the run finished, UTC, ISO 8601 (`2026-12-05T07:01:02Z`).
    pub date: String,
    /// The CPU it ran on.
    pub machine: CpuInfo,
    /// The model and how it was loaded.
    pub model: ModelInfo,
    /// What was asked of the engine.
    pub workload: Workload,
    /// Loading the model.
    pub load: LoadFigures,
    /// This machine's measured peaks (`null` when the probes were skipped).
    pub peak: Option<PeakFigures>,
    /// One entry per concurrency level, in the order run.
    pub levels: Vec<LevelFigures>,
    /// One entry per `--image`: a request with that image and a short text.
    pub images: Vec<ImageFigures>,
}

/// The engine and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// `phive`, `mistral.rs`, ...
    pub name: String,
    /// The engine's version.
    pub version: String,
    /// Source revision, when the build recorded one.
    pub git: Option<String>,
}

/// The model and how it was loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Hub id or folder, as given.
    pub source: String,
    /// Model family (`phi3v`, `phi4mm`).
    pub architecture: Option<String>,
    /// In-situ quantization type (`Q4K`), `null` for the stored precision.
    pub isq: Option<String>,
    /// Where it ran: `cpu`, or the GPU with its name and memory in use (absent in reports of
    /// other engines and of older phive versions).
    #[serde(default)]
    pub device: Option<String>,
    /// The language model's precision (`f32`, `bf16`).
    #[serde(default)]
    pub dtype: Option<String>,
    /// Weight elements of the language model's projections (layers and `lm_head`): a token
    /// costs about twice this many FLOPs.
    pub lm_params: Option<u64>,
    /// Their stored bytes: what one decode step reads.
    pub lm_weight_bytes: Option<u64>,
}

/// What was asked of the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Prompt length of every text request, chat template included.
    pub prompt_tokens: usize,
    /// Tokens generated per request (stop tokens are banned, so every request makes them all).
    pub decode_tokens: usize,
    /// Concurrent requests of each level.
    pub concurrency: Vec<usize>,
    /// Images whose time to first token was measured.
    pub images: Vec<String>,
    /// How the KV cache stored keys and values (`f32`, `f16`), where the engine says.
    #[serde(default)]
    pub kv_cache_dtype: Option<String>,
}

/// Loading the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadFigures {
    /// Wall time to load (and quantize) the model.
    pub seconds: f64,
    /// Peak resident memory of the process (`VmHWM`), read after the workloads and before the
    /// peak probes.
    pub peak_rss_bytes: Option<u64>,
    /// Time to first token of the first request after loading (a short text prompt): what the
    /// first user waits beyond the load. An engine that prepares weights on their first use
    /// (candle's repacking) pays it here.
    #[serde(default)]
    pub first_request_ttft_s: Option<f64>,
}

/// This machine's best rates, measured by the benchmark itself (see [`super::peak`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeakFigures {
    /// Multi-threaded read bandwidth of a large buffer, GB/s (1e9 bytes).
    pub memory_read_gb_s: f64,
    /// Multi-threaded f32 matmul, GFLOP/s.
    pub matmul_gflop_s: f64,
    /// Who measured them (`phive`).
    pub measured_by: String,
}

/// The figures of one concurrency level: `concurrency` requests submitted together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelFigures {
    /// Requests submitted together.
    pub concurrency: usize,
    /// Prompt length of each request, as the engine counted it.
    pub prompt_tokens: usize,
    /// Tokens generated over all requests.
    pub completion_tokens: usize,
    /// Time to first token over the requests, seconds.
    pub ttft_s: Summary,
    /// Gaps between consecutive tokens of a stream, milliseconds (`null` with one token).
    pub itl_ms: Option<Summary>,
    /// Prompt tokens of all requests over the time until the last one had its first token.
    pub prefill_tok_s: f64,
    /// Mean over the streams of each one's decode rate (tokens after the first over the time
    /// after the first).
    pub decode_tok_s_per_stream: f64,
    /// Tokens per second of all streams together while all of them decode.
    pub decode_tok_s_aggregate: f64,
    /// Weight bytes read per second while decoding, GB/s: decode steps per second (the
    /// aggregate rate over the concurrency: a step reads every weight once for all streams)
    /// times the language model's weight bytes.
    pub decode_gb_s: Option<f64>,
    /// `decode_gb_s` as a percentage of the measured memory read bandwidth.
    pub decode_pct_of_peak: Option<f64>,
    /// `prefill_tok_s` times 2 x the language model's parameters, GFLOP/s.
    pub prefill_gflop_s: Option<f64>,
    /// `prefill_gflop_s` as a percentage of the measured f32 matmul peak (quantized weights
    /// multiply on int8 dot products, which can exceed it: over 100% is possible).
    pub prefill_pct_of_peak: Option<f64>,
}

/// A request with one image and a short text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageFigures {
    /// The image as given.
    pub path: String,
    /// Prompt length, image positions included.
    pub prompt_tokens: usize,
    /// How many of them are image features.
    pub image_tokens: usize,
    /// From preprocessing the image to the first token (encoding and prefill), seconds.
    pub ttft_s: f64,
}

impl LevelFigures {
    /// Fills the roofline figures from the model's footprint and the measured peaks.
    pub fn with_roofline(mut self, model: &ModelInfo, peak: Option<&PeakFigures>) -> Self {
        let steps_per_s = self.decode_tok_s_aggregate / self.concurrency.max(1) as f64;
        self.decode_gb_s = model.lm_weight_bytes.map(|b| steps_per_s * b as f64 / 1e9);
        self.prefill_gflop_s = model.lm_params.map(|p| self.prefill_tok_s * 2.0 * p as f64 / 1e9);
        if let Some(peak) = peak {
            self.decode_pct_of_peak = self.decode_gb_s.map(|g| 100.0 * g / peak.memory_read_gb_s);
            self.prefill_pct_of_peak = self.prefill_gflop_s.map(|g| 100.0 * g / peak.matmul_gflop_s);
        }
        self
    }
}

/// `seconds` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC), without a date library.
pub fn utc_timestamp(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rem = seconds % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The current time as [`utc_timestamp`].
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    utc_timestamp(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_796_454_762), "2026-12-05T07:12:42Z");
    }

    #[test]
    fn roofline_figures_follow_the_footprint() {
        let s = Summary { p50: 1.0, p99: 1.0, mean: 1.0 };
        let level = LevelFigures {
            concurrency: 1,
            prompt_tokens: 100,
            completion_tokens: 10,
            ttft_s: s,
            itl_ms: None,
            prefill_tok_s: 100.0,
            decode_tok_s_per_stream: 10.0,
            decode_tok_s_aggregate: 10.0,
            decode_gb_s: None,
            decode_pct_of_peak: None,
            prefill_gflop_s: None,
            prefill_pct_of_peak: None,
        };
        let model = ModelInfo {
            source: "m".into(),
            architecture: None,
            isq: None,
            device: None,
            dtype: None,
            lm_params: Some(1_000_000_000),
            lm_weight_bytes: Some(500_000_000),
        };
        let peak = PeakFigures { memory_read_gb_s: 10.0, matmul_gflop_s: 400.0, measured_by: "phive".into() };
        let l = level.clone().with_roofline(&model, Some(&peak));
        assert_eq!(l.decode_gb_s, Some(5.0));
        assert_eq!(l.decode_pct_of_peak, Some(50.0));
        assert_eq!(l.prefill_gflop_s, Some(200.0));
        assert_eq!(l.prefill_pct_of_peak, Some(50.0));
        let bare = level.with_roofline(&ModelInfo { lm_params: None, lm_weight_bytes: None, ..model }, None);
        assert_eq!((bare.decode_gb_s, bare.prefill_pct_of_peak), (None, None));
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["ttft_s"]["p50"], 1.0);
        assert!(json["itl_ms"].is_null());
    }
}
