//! The engine settings of `Runner`'s keyword arguments, validated as `InvalidRequestError`s,
//! and the engine statistics it reports.

use phive::engine::{EngineConfig, EngineStats, Histogram};

use crate::{Failure, Fallible};

/// `Runner.stats()`: the engine's gauges and counters by name.
pub(crate) fn stats_counts(s: &EngineStats) -> [(&'static str, u64); 17] {
    [
        ("queued", s.queued as u64),
        ("active", s.active as u64),
        ("cancelled", s.cancelled as u64),
        ("running_seqs", s.running_seqs as u64),
        ("waiting_seqs", s.waiting_seqs as u64),
        ("preemptions", s.preemptions),
        ("steps", s.steps),
        ("interrupted_steps", s.interrupted_steps),
        ("max_batch_size", max_observed(&s.batch_size)),
        ("kv_blocks_used", s.kv_blocks_used as u64),
        ("kv_blocks_free", s.kv_blocks_free as u64),
        ("media_cache_hits", s.media_cache_hits),
        ("media_cache_misses", s.media_cache_misses),
        ("prefix_cache_blocks", s.prefix_cache_blocks as u64),
        ("prefix_cache_queried_tokens", s.prefix_cache_queried_tokens),
        ("prefix_cache_hit_tokens", s.prefix_cache_hit_tokens),
        ("kv_block_size", s.kv_block_size as u64),
    ]
}

/// The upper bound of the highest non-empty bucket of `h` (0 when nothing was observed).
fn max_observed(h: &Histogram) -> u64 {
    let top = h.counts.iter().rposition(|&c| c > 0);
    top.map_or(0, |i| h.bounds.get(i).copied().unwrap_or(f64::INFINITY).min(u64::MAX as f64) as u64)
}

/// The `Runner`'s keyword arguments that size the engine (unset ones keep defaults).
pub(crate) struct EngineKwargs {
    pub max_seqs: Option<usize>,
    pub max_queue: Option<usize>,
    pub max_batched_tokens: Option<usize>,
    pub solo_prefill_chunk: Option<usize>,
    pub kv_cache_mem: Option<f64>,
    pub media_cache_mem: Option<f64>,
    pub prefix_cache: bool,
    pub kv_cache_dtype: Option<String>,
    pub gpu_memory_utilization: Option<f64>,
}

/// The engine configuration of the `Runner`'s keyword arguments, validated.
pub(crate) fn engine_config(k: EngineKwargs) -> Fallible<EngineConfig> {
    for (name, value) in
        [("max_seqs", k.max_seqs), ("max_queue", k.max_queue), ("max_batched_tokens", k.max_batched_tokens)]
    {
        if value == Some(0) {
            return Err(Failure::invalid(name, format!("{name} must be at least 1")));
        }
    }
    if let Some(gib) = k.kv_cache_mem.filter(|g| !(g.is_finite() && *g > 0.0)) {
        return Err(Failure::invalid(
            "kv_cache_mem",
            format!("kv_cache_mem must be a positive number of GiB, got {gib}"),
        ));
    }
    if let Some(gib) = k.media_cache_mem.filter(|g| !(g.is_finite() && *g >= 0.0)) {
        return Err(Failure::invalid(
            "media_cache_mem",
            format!("media_cache_mem must be a number of GiB >= 0 (0 turns the cache off), got {gib}"),
        ));
    }
    if let Some(share) = k.gpu_memory_utilization.filter(|s| !(*s > 0.0 && *s <= 1.0)) {
        return Err(Failure::invalid(
            "gpu_memory_utilization",
            format!("gpu_memory_utilization must be a fraction in (0, 1], got {share}"),
        ));
    }
    let defaults = EngineConfig::default();
    let kv_cache_dtype = match k.kv_cache_dtype.as_deref() {
        Some(name) => {
            name.parse().map_err(|e: phive::Error| Failure::invalid("kv_cache_dtype", e.to_string()))?
        }
        None => defaults.kv_cache_dtype,
    };
    Ok(EngineConfig {
        max_num_seqs: k.max_seqs.unwrap_or(defaults.max_num_seqs),
        max_queue: k.max_queue.unwrap_or(defaults.max_queue),
        max_batched_tokens: k.max_batched_tokens.unwrap_or(defaults.max_batched_tokens),
        solo_prefill_chunk: k.solo_prefill_chunk.unwrap_or(defaults.solo_prefill_chunk),
        kv_cache_bytes: k.kv_cache_mem.map(|gib| (gib * (1u64 << 30) as f64) as u64),
        media_cache_bytes: k
            .media_cache_mem
            .map_or(defaults.media_cache_bytes, |gib| (gib * (1u64 << 30) as f64) as u64),
        prefix_cache: k.prefix_cache,
        kv_cache_dtype,
        gpu_memory_utilization: k.gpu_memory_utilization.unwrap_or(defaults.gpu_memory_utilization),
    })
}
