//! A small Prometheus registry owned by one server instance.
//!
//! Hand-rolled rather than the global `metrics` recorder so several servers (tests start many
//! in one process) keep separate counts, and so `/metrics` can read the engine's live queue
//! depth at scrape time instead of mirroring it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use phive::engine::{EngineStats, Histogram};

/// Latency buckets in seconds: requests on a CPU range from milliseconds to minutes.
const LATENCY_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// The routes metrics are labelled with; anything else counts as `other` so a scanner cannot
/// blow up the label space.
pub const ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/tokenize",
    "/detokenize",
    "/v1/models",
    "/v1/phive/info",
    "/health",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/",
];

/// The route label of a request path.
pub fn route_label(path: &str) -> &'static str {
    ROUTES.iter().find(|r| **r == path).copied().unwrap_or("other")
}

/// Writes `h` in the exposition format (cumulative buckets, `+Inf`, sum, count).
fn render_histogram(h: &Histogram, out: &mut String, name: &str, labels: &str) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (bucket, count) in h.bounds.iter().zip(&h.counts) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bucket}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count());
    let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum);
    let _ = writeln!(out, "{name}_count{braces} {}", h.count());
}

/// Writes a `# HELP`/`# TYPE` header.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Counters and histograms of one server.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    ttft: Mutex<Histogram>,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    disconnects: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            latency: Mutex::default(),
            ttft: Mutex::new(Histogram::new(LATENCY_BUCKETS)),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts a finished request (for streams: when the response head was sent).
    pub fn record_request(&self, route: &'static str, method: &str, status: u16) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((route, method.to_string(), status)).or_default() += 1;
        }
    }

    /// Records how long a request took (for streams: until the stream ended).
    pub fn observe_latency(&self, route: &'static str, elapsed: Duration) {
        if let Ok(mut map) = self.latency.lock() {
            map.entry(route)
                .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
                .observe(elapsed.as_secs_f64());
        }
    }

    /// Records a request's time to first token (from its arrival).
    pub fn observe_ttft(&self, elapsed: Duration) {
        if let Ok(mut h) = self.ttft.lock() {
            h.observe(elapsed.as_secs_f64());
        }
    }

    /// Adds prompt tokens of a served request.
    pub fn add_prompt_tokens(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Adds generated tokens.
    pub fn add_generated_tokens(&self, n: usize) {
        self.generated_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a client that went away before its answer was complete.
    pub fn add_disconnect(&self) {
        self.disconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with the engine's live queue state.
    pub fn render(&self, engine: &EngineStats) -> String {
        let mut out = String::new();
        out.push_str("# HELP phive_http_requests_total HTTP requests by route, method and status.\n");
        out.push_str("# TYPE phive_http_requests_total counter\n");
        if let Ok(map) = self.requests.lock() {
            for ((route, method, status), count) in map.iter() {
                let _ = writeln!(
                    out,
                    "phive_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}"
                );
            }
        }
        out.push_str(
            "# HELP phive_http_request_duration_seconds Request latency (streams: until the stream ends).\n",
        );
        out.push_str("# TYPE phive_http_request_duration_seconds histogram\n");
        if let Ok(map) = self.latency.lock() {
            for (route, h) in map.iter() {
                render_histogram(
                    h,
                    &mut out,
                    "phive_http_request_duration_seconds",
                    &format!("route=\"{route}\""),
                );
            }
        }
        let ttft = "phive_time_to_first_token_seconds";
        header(&mut out, ttft, "histogram", "From request arrival to the first generated token.");
        if let Ok(h) = self.ttft.lock() {
            render_histogram(&h, &mut out, ttft, "");
        }
        let counters = [
            (
                "phive_prompt_tokens_total",
                "Prompt tokens processed (image tokens included).",
                &self.prompt_tokens,
            ),
            ("phive_generated_tokens_total", "Tokens generated.", &self.generated_tokens),
            (
                "phive_client_disconnects_total",
                "Requests whose client went away before the answer was complete.",
                &self.disconnects,
            ),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        render_engine(engine, &mut out);
        out
    }
}

/// The engine's queues, KV memory and per-step histograms.
fn render_engine(e: &EngineStats, out: &mut String) {
    let values: [(&str, &str, &str, f64); 19] = [
        (
            "phive_requests_cancelled_total",
            "counter",
            "Requests the engine stopped because their client went away.",
            e.cancelled as f64,
        ),
        ("phive_queue_depth", "gauge", "Requests submitted and not yet started.", e.queued as f64),
        ("phive_active_sequences", "gauge", "Requests being generated.", e.active as f64),
        (
            "phive_running_sequences",
            "gauge",
            "Sequences (choices) in the running batch.",
            e.running_seqs as f64,
        ),
        (
            "phive_waiting_sequences",
            "gauge",
            "Sequences waiting to run (new or preempted).",
            e.waiting_seqs as f64,
        ),
        ("phive_kv_blocks_used", "gauge", "KV cache blocks held by sequences.", e.kv_blocks_used as f64),
        ("phive_kv_blocks_free", "gauge", "KV cache blocks free.", e.kv_blocks_free as f64),
        ("phive_kv_block_size", "gauge", "Token positions per KV cache block.", e.kv_block_size as f64),
        (
            "phive_preemptions_total",
            "counter",
            "Sequences preempted (KV freed, recomputed later) because the KV cache was full.",
            e.preemptions as f64,
        ),
        ("phive_engine_steps_total", "counter", "Engine steps (batched forward passes).", e.steps as f64),
        (
            "phive_interrupted_steps_total",
            "counter",
            "Solo prefill steps abandoned part way for a request that arrived.",
            e.interrupted_steps as f64,
        ),
        (
            "phive_media_cache_hits_total",
            "counter",
            "Images and audio clips whose encoding came from the media cache.",
            e.media_cache_hits as f64,
        ),
        (
            "phive_media_cache_misses_total",
            "counter",
            "Images and audio clips that had to be encoded.",
            e.media_cache_misses as f64,
        ),
        (
            "phive_media_cache_bytes",
            "gauge",
            "Bytes of encoded media held by the cache.",
            e.media_cache_bytes as f64,
        ),
        (
            "phive_media_cache_items",
            "gauge",
            "Encoded media items held by the cache.",
            e.media_cache_items as f64,
        ),
        (
            "phive_prefix_cache_queried_tokens_total",
            "counter",
            "Prompt tokens of started requests, looked up in the prefix cache.",
            e.prefix_cache_queried_tokens as f64,
        ),
        (
            "phive_prefix_cache_hit_tokens_total",
            "counter",
            "Prompt tokens whose KV came from the prefix cache instead of being computed.",
            e.prefix_cache_hit_tokens as f64,
        ),
        (
            "phive_prefix_cache_blocks",
            "gauge",
            "KV blocks registered in the prefix cache (in use or kept; kept ones count as free).",
            e.prefix_cache_blocks as f64,
        ),
        (
            "phive_prefix_cache_bytes",
            "gauge",
            "Bytes of KV memory holding registered prefix-cache blocks.",
            (e.prefix_cache_blocks * e.kv_block_bytes) as f64,
        ),
    ];
    for (name, kind, help, value) in values {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    let histograms = [
        ("phive_batch_size", "Sequences per engine step.", &e.batch_size),
        ("phive_step_prefill_tokens", "Prompt tokens (prefill chunks) per engine step.", &e.prefill_tokens),
        (
            "phive_step_decode_tokens",
            "Generated tokens fed per engine step (decoding sequences).",
            &e.decode_tokens,
        ),
        ("phive_step_duration_seconds", "Time per engine step.", &e.step_seconds),
    ];
    for (name, help, h) in histograms {
        header(out, name, "histogram", help);
        render_histogram(h, out, name, "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.record_request("/health", "GET", 200);
        m.record_request("/health", "GET", 200);
        m.observe_latency("/health", Duration::from_millis(3));
        m.observe_ttft(Duration::from_millis(40));
        m.add_prompt_tokens(5);
        let mut engine = EngineStats {
            queued: 1,
            active: 2,
            cancelled: 3,
            kv_blocks_used: 7,
            kv_block_bytes: 1000,
            prefix_cache_blocks: 4,
            prefix_cache_hit_tokens: 48,
            ..Default::default()
        };
        engine.record_step(3, 0, 3, Duration::from_millis(20));
        let text = m.render(&engine);
        assert!(
            text.contains("phive_http_requests_total{route=\"/health\",method=\"GET\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("phive_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.005\"} 1"));
        assert!(text.contains("phive_time_to_first_token_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("phive_prompt_tokens_total 5"));
        assert!(text.contains("phive_queue_depth 1") && text.contains("phive_active_sequences 2"));
        assert!(text.contains("phive_requests_cancelled_total 3"));
        assert!(text.contains("phive_kv_blocks_used 7") && text.contains("phive_engine_steps_total 1"));
        assert!(
            text.contains("phive_batch_size_bucket{le=\"2\"} 0")
                && text.contains("phive_batch_size_bucket{le=\"4\"} 1")
        );
        assert!(text.contains("phive_step_duration_seconds_count 1"));
        assert!(
            text.contains("phive_media_cache_hits_total 0") && text.contains("phive_media_cache_bytes 0")
        );
        assert!(
            text.contains("phive_prefix_cache_hit_tokens_total 48")
                && text.contains("phive_prefix_cache_bytes 4000")
                && text.contains("phive_prefix_cache_blocks 4")
        );
        assert_eq!(route_label("/etc/passwd"), "other");
    }
}
