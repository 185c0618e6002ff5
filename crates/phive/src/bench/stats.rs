//! Percentiles and rates over a set of [`Trace`]s.

use serde::{Deserialize, Serialize};

use super::Trace;

/// The `p`-quantile (0..=1) of `values` by the nearest-rank rule (sorts them); NaN when empty.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let p = p.clamp(0.0, 1.0);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// Median, tail and mean of a set of samples: what the tables and the JSON report show.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Median.
    pub p50: f64,
    /// 99th percentile (the largest sample when there are fewer than 100).
    pub p99: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Summary {
    /// Summarises `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        Some(Summary {
            p50: percentile(&mut v, 0.5),
            p99: percentile(&mut v, 0.99),
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

/// Aggregate decode tokens per second of streams that ran together.
///
/// Counted in the steady state: from the moment every stream has its first token until the
/// first one finishes, every token delivered counts (a delta carries one, or a few held back
/// for a whole character). Prefill of the later streams, which the engine interleaves with the
/// decode of the earlier ones, is thus left out. When that window is empty (streams that hardly
/// overlap, or tokens that streamed no text, as a random-weight model's partial characters), all
/// tokens after each stream's first are counted over the span from the earliest first token to
/// the last finish. `None` when nothing was decoded.
pub fn steady_decode_rate(traces: &[Trace]) -> Option<f64> {
    let end = traces.iter().map(|t| t.done).min()?;
    let start = traces.iter().filter_map(|t| t.deltas.first()).map(|d| d.at).max();
    if let Some(start) = start.filter(|&s| traces.iter().all(|t| !t.deltas.is_empty()) && end > s) {
        let delivered: usize = traces
            .iter()
            .flat_map(|t| &t.deltas)
            .filter(|d| d.at > start && d.at <= end)
            .map(|d| d.tokens)
            .sum();
        if delivered >= traces.len() {
            return Some(delivered as f64 / (end - start).as_secs_f64());
        }
    }
    // Tokens from the completion (they may have streamed no text), else those streamed.
    let tokens = |t: &Trace| t.tokens().max(t.streamed_tokens());
    let first = traces.iter().filter(|t| tokens(t) > 0).map(|t| t.submitted + t.ttft()).min()?;
    let last = traces.iter().map(|t| t.done).max()?;
    let after_first: usize = traces.iter().map(|t| tokens(t).saturating_sub(1)).sum();
    let span = (last - first).as_secs_f64();
    (after_first > 0 && span > 0.0).then(|| after_first as f64 / span)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::bench::Arrival;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&mut v, 0.5), 3.0);
        assert_eq!(percentile(&mut v, 0.0), 1.0);
        assert_eq!(percentile(&mut v, 1.0), 5.0);
        assert_eq!(percentile(&mut v, 0.99), 5.0);
        assert!(percentile(&mut [], 0.5).is_nan());
        let s = Summary::of(&[1.0, 2.0, 3.0, 10.0]).unwrap();
        assert_eq!((s.p50, s.p99, s.mean), (3.0, 10.0, 4.0));
        assert!(Summary::of(&[]).is_none());
    }

    fn trace(t0: Instant, first_ms: u64, every_ms: u64, n: u64) -> Trace {
        let deltas: Vec<Arrival> = (0..n)
            .map(|i| Arrival { at: t0 + Duration::from_millis(first_ms + i * every_ms), tokens: 1 })
            .collect();
        Trace { submitted: t0, done: deltas.last().unwrap().at, deltas, completion: None }
    }

    #[test]
    fn steady_rate_counts_the_overlap_only() {
        let t0 = Instant::now();
        // Two streams, one token every 100 ms each, the second starting 1 s later.
        let traces = [trace(t0, 0, 100, 30), trace(t0, 1000, 100, 30)];
        let rate = steady_decode_rate(&traces).unwrap();
        assert!((rate - 20.0).abs() < 0.5, "{rate}");
        // No overlap at all: the fallback spans both.
        let apart = [trace(t0, 0, 100, 5), trace(t0, 10_000, 100, 5)];
        let rate = steady_decode_rate(&apart).unwrap();
        assert!(rate > 0.0 && rate < 1.0, "{rate}");
        assert!(steady_decode_rate(&[]).is_none());
        // Half the deltas carry two tokens (text held back for a whole character): the same
        // tokens in fewer deltas, the same rate (counting deltas would give 10).
        let mut bunched = [trace(t0, 0, 100, 30), trace(t0, 1000, 100, 30)];
        for t in &mut bunched {
            t.deltas = t.deltas.iter().step_by(2).map(|d| Arrival { tokens: 2, ..*d }).collect();
        }
        let rate = steady_decode_rate(&bunched).unwrap();
        assert!((rate - 20.0).abs() < 2.0, "{rate}");
    }

    /// A random-weight model's tokens may be partial characters that stream no text: the rate
    /// comes from the completion's token count and the engine's time to the first token.
    #[test]
    fn tokens_without_text_still_count() {
        use crate::engine::{Completion, FinishReason, Usage};
        let t0 = Instant::now();
        let usage = Usage {
            completion_tokens: 5,
            time_to_first_token: Duration::from_millis(100),
            ..Default::default()
        };
        let completion = Completion {
            text: String::new(),
            tokens: vec![3; 5],
            logprobs: Vec::new(),
            tool_call_sections: Vec::new(),
            finish_reason: FinishReason::Length,
            usage,
        };
        let silent = Trace {
            submitted: t0,
            deltas: Vec::new(),
            done: t0 + Duration::from_millis(500),
            completion: Some(completion),
        };
        let rate = steady_decode_rate(&[silent]).unwrap();
        assert!((rate - 10.0).abs() < 1e-6, "{rate}");
    }
}
