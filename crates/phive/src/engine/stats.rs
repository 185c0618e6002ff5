//! What the engine reports about itself: queue depths, KV memory, preemptions, and per-step
//! histograms, read by `/metrics` and the SDKs.

use std::time::Duration;

/// Counts of values at or under each bound (Prometheus' cumulative buckets are derived when
/// rendering), plus their sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds of the buckets, ascending (an implicit `+Inf` bucket follows).
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more entry than `bounds` for `+Inf`.
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds`.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0 }
    }

    /// Records one value.
    pub fn observe(&mut self, value: f64) {
        let bucket = self.bounds.iter().position(|&b| value <= b).unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Buckets for sequences per step.
const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Buckets for tokens per step.
const TOKEN_BOUNDS: &[f64] = &[1.0, 4.0, 16.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];
/// Buckets for seconds per step.
const TIME_BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A snapshot of the engine's state and its counters since start.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineStats {
    /// Requests submitted but not yet started.
    pub queued: usize,
    /// Sequences waiting to run (new ones and preempted ones).
    pub waiting_seqs: usize,
    /// Sequences running (prefilling or decoding).
    pub running_seqs: usize,
    /// Requests with at least one running sequence.
    pub active: usize,
    /// Requests cancelled since start (client gone or handle dropped).
    pub cancelled: usize,
    /// Sequences preempted (their KV freed, to be recomputed) since start.
    pub preemptions: u64,
    /// KV blocks in use.
    pub kv_blocks_used: usize,
    /// KV blocks free.
    pub kv_blocks_free: usize,
    /// Positions per KV block.
    pub kv_block_size: usize,
    /// Bytes of one KV block (all layers).
    pub kv_block_bytes: usize,
    /// KV blocks registered in the prefix cache (held by sequences or kept for reuse; kept ones
    /// count as free, since they are evicted when the pool needs room).
    pub prefix_cache_blocks: usize,
    /// Prompt tokens of started requests.
    pub prefix_cache_queried_tokens: u64,
    /// Prompt tokens taken from the prefix cache instead of being computed.
    pub prefix_cache_hit_tokens: u64,
    /// Steps run since start.
    pub steps: u64,
    /// Solo prefill steps abandoned part way because a request arrived (or theirs was
    /// cancelled); not counted in `steps`.
    pub interrupted_steps: u64,
    /// Sequences per step.
    pub batch_size: Histogram,
    /// Prompt tokens per step (prefill chunks).
    pub prefill_tokens: Histogram,
    /// Generated tokens fed per step (decode rows).
    pub decode_tokens: Histogram,
    /// Seconds per step.
    pub step_seconds: Histogram,
    /// Media items taken from the encoder cache since start.
    pub media_cache_hits: u64,
    /// Media items encoded (not in the cache) since start.
    pub media_cache_misses: u64,
    /// Bytes of encoded media held by the cache.
    pub media_cache_bytes: u64,
    /// Media items held by the cache.
    pub media_cache_items: usize,
}

impl Default for EngineStats {
    fn default() -> Self {
        Self {
            queued: 0,
            waiting_seqs: 0,
            running_seqs: 0,
            active: 0,
            cancelled: 0,
            preemptions: 0,
            kv_blocks_used: 0,
            kv_blocks_free: 0,
            kv_block_size: 0,
            kv_block_bytes: 0,
            prefix_cache_blocks: 0,
            prefix_cache_queried_tokens: 0,
            prefix_cache_hit_tokens: 0,
            steps: 0,
            interrupted_steps: 0,
            batch_size: Histogram::new(BATCH_BOUNDS),
            prefill_tokens: Histogram::new(TOKEN_BOUNDS),
            decode_tokens: Histogram::new(TOKEN_BOUNDS),
            step_seconds: Histogram::new(TIME_BOUNDS),
            media_cache_hits: 0,
            media_cache_misses: 0,
            media_cache_bytes: 0,
            media_cache_items: 0,
        }
    }
}

impl EngineStats {
    /// Records one step of `rows` sequences feeding `prefill` prompt and `decode` generated
    /// tokens in `time`.
    pub fn record_step(&mut self, rows: usize, prefill: usize, decode: usize, time: Duration) {
        self.steps += 1;
        self.batch_size.observe(rows as f64);
        self.prefill_tokens.observe(prefill as f64);
        self.decode_tokens.observe(decode as f64);
        self.step_seconds.observe(time.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let mut h = Histogram::new(&[1.0, 4.0]);
        for v in [0.5, 1.0, 3.0, 9.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![2, 1, 1]);
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum, 13.5);
    }
}
