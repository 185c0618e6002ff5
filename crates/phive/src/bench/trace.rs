//! Following requests: when each event of a request arrived, and what it answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{Completion, Engine, Event, GenerationParams, RequestHandle};
use crate::pipeline::PreparedPrompt;
use crate::{Error, Result};

/// When one request's events arrived, and what it answered.
#[derive(Debug, Clone)]
pub struct Trace {
    /// When the request was handed to the engine.
    pub submitted: Instant,
    /// Each delta's arrival (one token, or a few held back to complete a character).
    pub deltas: Vec<Arrival>,
    /// When the request finished.
    pub done: Instant,
    /// The answer (of the first choice), with its token counts and engine timings.
    pub completion: Option<Completion>,
}

/// When a delta arrived and how many tokens it carried.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// When it arrived.
    pub at: Instant,
    /// Tokens it carried (at least one).
    pub tokens: usize,
}

impl Trace {
    /// Time to first token, from submission: when the first delta arrived or, when the tokens
    /// streamed no text (a random-weight model's partial UTF-8 bytes, held back), the engine's
    /// own time to the first token; zero when nothing was generated.
    pub fn ttft(&self) -> Duration {
        match (self.deltas.first(), &self.completion) {
            (Some(first), _) => first.at - self.submitted,
            (None, Some(c)) if c.usage.completion_tokens > 0 => c.usage.time_to_first_token,
            _ => Duration::ZERO,
        }
    }

    /// Generated tokens.
    pub fn tokens(&self) -> usize {
        self.completion.as_ref().map_or(0, |c| c.tokens.len())
    }

    /// Tokens the deltas carried.
    pub fn streamed_tokens(&self) -> usize {
        self.deltas.iter().map(|d| d.tokens).sum()
    }

    /// Inter-token latencies, in seconds: the gap before each delta, shared by the tokens it
    /// carried (a delta of three tokens after 90 ms is three tokens 30 ms apart), so that text
    /// held back for a whole character does not read as a slow step.
    pub fn gaps(&self) -> impl Iterator<Item = f64> + '_ {
        self.deltas.windows(2).flat_map(|w| {
            let per_token = (w[1].at - w[0].at).as_secs_f64() / w[1].tokens as f64;
            std::iter::repeat_n(per_token, w[1].tokens)
        })
    }
}

/// Submits `prompts` together and follows each on its own thread, so every event is stamped
/// when it arrives rather than when a single reader gets to it. `on_delta` is called from the
/// follower threads for every delta (a progress bar, say).
pub fn run_together_with(
    engine: &Arc<Engine>,
    prompts: Vec<PreparedPrompt>,
    params: &GenerationParams,
    on_delta: impl Fn() + Clone + Send + 'static,
) -> Result<Vec<Trace>> {
    let handles = prompts
        .into_iter()
        .map(|p| Ok((Instant::now(), engine.submit(p, params.clone(), 1)?)))
        .collect::<Result<Vec<_>>>()?;
    let threads: Vec<_> = handles
        .into_iter()
        .map(|(submitted, handle)| {
            let on_delta = on_delta.clone();
            std::thread::spawn(move || follow_with(submitted, handle, on_delta))
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().map_err(|_| Error::Internal("a benchmark follower thread panicked".into()))?)
        .collect()
}

/// [`run_together_with`] without a callback.
pub fn run_together(
    engine: &Arc<Engine>,
    prompts: Vec<PreparedPrompt>,
    params: &GenerationParams,
) -> Result<Vec<Trace>> {
    run_together_with(engine, prompts, params, || {})
}

/// Reads `handle`'s events until it finishes, stamping each delta.
pub fn follow(submitted: Instant, handle: RequestHandle) -> Result<Trace> {
    follow_with(submitted, handle, || {})
}

fn follow_with(submitted: Instant, mut handle: RequestHandle, on_delta: impl Fn()) -> Result<Trace> {
    let mut deltas = Vec::new();
    let mut completion = None;
    while let Some(event) = handle.next_blocking() {
        match event {
            Event::Delta { delta, .. } => {
                deltas.push(Arrival { at: Instant::now(), tokens: delta.tokens.max(1) });
                on_delta();
            }
            Event::Done { completion: c, .. } => completion = Some(c),
            Event::Error(e) => return Err(e),
        }
    }
    Ok(Trace { submitted, deltas, done: Instant::now(), completion })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{FinishReason, Usage};

    fn trace(deltas_after_ms: &[u64], generated: usize) -> Trace {
        let submitted = Instant::now();
        let at = |ms: u64| submitted + Duration::from_millis(ms);
        let usage = Usage {
            completion_tokens: generated,
            time_to_first_token: Duration::from_millis(40),
            ..Default::default()
        };
        let completion = Completion {
            text: String::new(),
            tokens: vec![7; generated],
            logprobs: Vec::new(),
            tool_call_sections: Vec::new(),
            finish_reason: FinishReason::Length,
            usage,
        };
        Trace {
            submitted,
            deltas: deltas_after_ms.iter().map(|&ms| Arrival { at: at(ms), tokens: 1 }).collect(),
            done: at(90),
            completion: Some(completion),
        }
    }

    #[test]
    fn ttft_comes_from_the_first_delta_or_else_the_engine() {
        assert_eq!(trace(&[25, 60], 2).ttft(), Duration::from_millis(25));
        // Two tokens that streamed no text: the engine's time to the first token.
        assert_eq!(trace(&[], 2).ttft(), Duration::from_millis(40));
        assert_eq!(trace(&[], 0).ttft(), Duration::ZERO);
    }

    #[test]
    fn a_delta_of_several_tokens_shares_its_gap() {
        let mut t = trace(&[10, 40, 130], 5);
        t.deltas[2].tokens = 3;
        let gaps: Vec<f64> = t.gaps().map(|g| (g * 1e3).round()).collect();
        assert_eq!(gaps, [30.0, 30.0, 30.0, 30.0]);
        assert_eq!(t.streamed_tokens(), 5);
    }
}
