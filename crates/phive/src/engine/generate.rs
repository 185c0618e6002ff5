//! The decode loop for one sequence: prefill, then sample → stop checks → detokenize → emit,
//! one token at a time, with timings for the usage report.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::logprobs::{token_logprob, TokenLogprob};
use super::{IncrementalDetokenizer, Sampler, SamplingParams, StopStrings};
use crate::prompt::{MediaKind, PromptTokens};
use crate::{Error, Result};

/// A model positioned on one sequence: it has consumed the prompt or the tokens fed so far.
pub trait SequenceModel {
    /// Runs the prompt and returns the logits of its last position.
    fn prefill(&mut self, prompt: &PromptTokens) -> Result<Vec<f32>>;
    /// Feeds one generated token and returns the logits that follow it.
    fn step(&mut self, token: u32) -> Result<Vec<f32>>;
}

/// Per-request generation settings.
#[derive(Debug, Clone, Default)]
pub struct GenerationParams {
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Most tokens to generate; `None` means up to the context length.
    pub max_tokens: Option<usize>,
    /// Strings that end generation (not included in the output).
    pub stop: Vec<String>,
    /// Report log-probabilities of the chosen tokens with this many top alternatives
    /// (`None`: no log-probabilities).
    pub logprobs: Option<usize>,
}

/// A piece of streamed output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// New text.
    pub text: String,
    /// Log-probabilities of the tokens that produced this text (when requested).
    pub logprobs: Vec<TokenLogprob>,
}

/// Why generation ended, with OpenAI's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` or the context length.
    Length,
    /// The caller stopped listening.
    Cancelled,
}

/// What one generation produced.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The generated text (stop strings removed).
    pub text: String,
    /// Generated token ids (including a final stop token if one ended generation).
    pub tokens: Vec<u32>,
    /// Log-probabilities per generated token (stop tokens excluded), when requested.
    pub logprobs: Vec<TokenLogprob>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts and timings.
    pub usage: Usage,
}

/// Token counts and timings of one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Prompt length in positions, media placeholders included.
    pub prompt_tokens: usize,
    /// How many of the prompt positions are image features.
    pub image_tokens: usize,
    /// How many of the prompt positions are audio features.
    pub audio_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Time spent before generation started (media encoding and preprocessing).
    pub preprocess_time: Duration,
    /// Prefill time (prompt through the model, first logits).
    pub prompt_time: Duration,
    /// Decode time after the first token.
    pub completion_time: Duration,
    /// From the request's start to the first token.
    pub time_to_first_token: Duration,
}

impl Usage {
    /// Prompt tokens per second of prefill.
    pub fn prompt_tokens_per_sec(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_time)
    }

    /// Generated tokens per second of decode (the first token is counted in prefill).
    pub fn completion_tokens_per_sec(&self) -> f64 {
        rate(self.completion_tokens.saturating_sub(1), self.completion_time)
    }
}

fn rate(tokens: usize, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        tokens as f64 / time.as_secs_f64()
    }
}

/// Generated tokens decoded before a logprob token to find its text (enough for SentencePiece
/// spaces and multi-byte characters, short enough to stay cheap on long completions).
const LOGPROB_CONTEXT: usize = 4;

/// Rejects `max_tokens: 0` and prompts that leave no room for a generated token.
pub fn check_lengths(prompt_len: usize, params: &GenerationParams, context_length: usize) -> Result<()> {
    if params.max_tokens == Some(0) {
        return Err(Error::InvalidRequest("max_tokens must be at least 1".into()));
    }
    if prompt_len >= context_length {
        return Err(Error::InvalidRequest(format!(
            "the prompt is {prompt_len} tokens (images included) but the model's context length is {context_length}"
        )));
    }
    Ok(())
}

/// Generates a completion for `prompt`, calling `on_delta` with each new piece of text; return
/// `ControlFlow::Break(())` from it to cancel.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    model: &mut dyn SequenceModel,
    tokenizer: &tokenizers::Tokenizer,
    prompt: &PromptTokens,
    params: &GenerationParams,
    stop_token_ids: &[u32],
    context_length: usize,
    started: Instant,
    mut on_delta: impl FnMut(Delta) -> ControlFlow<()>,
) -> Result<Completion> {
    params.sampling.validate()?;
    let prompt_len = prompt.ids.len();
    check_lengths(prompt_len, params, context_length)?;
    let budget = params.max_tokens.unwrap_or(usize::MAX).min(context_length - prompt_len);
    let mut usage = Usage {
        prompt_tokens: prompt_len,
        image_tokens: prompt.media.iter().filter(|s| s.kind == MediaKind::Image).map(|s| s.len).sum(),
        audio_tokens: prompt.media.iter().filter(|s| s.kind == MediaKind::Audio).map(|s| s.len).sum(),
        preprocess_time: started.elapsed(),
        ..Default::default()
    };

    let prefill_start = Instant::now();
    let mut logits = model.prefill(prompt)?;
    usage.prompt_time = prefill_start.elapsed();

    let mut sampler = Sampler::new(params.sampling.clone());
    let stops = StopStrings::new(params.stop.iter().cloned());
    let mut detok = IncrementalDetokenizer::new(tokenizer);
    let mut context = prompt.text_ids();
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut emitted = 0;
    let mut all_logprobs = Vec::new();
    let mut pending_logprobs = Vec::new();
    let decode_start = Instant::now();
    let finish_reason = loop {
        let token = sampler.sample(&logits, &context);
        if tokens.is_empty() {
            usage.time_to_first_token = started.elapsed();
        }
        tokens.push(token);
        if stop_token_ids.contains(&token) {
            break FinishReason::Stop;
        }
        if let Some(top) = params.logprobs {
            let previous = &tokens[..tokens.len() - 1];
            let context = &previous[previous.len().saturating_sub(LOGPROB_CONTEXT)..];
            let lp = token_logprob(&logits, token, top, tokenizer, context);
            all_logprobs.push(lp.clone());
            pending_logprobs.push(lp);
        }
        sampler.observe(token);
        context.push(token);
        let searched = text.len();
        if let Some(delta) = detok.push(token)? {
            text.push_str(&delta);
        }
        if let Some(hit) = stops.find(&text, searched) {
            text.truncate(hit.at);
            break FinishReason::Stop;
        }
        let safe = stops.safe_len(&text);
        if safe > emitted {
            let delta = Delta {
                text: text[emitted..safe].to_string(),
                logprobs: std::mem::take(&mut pending_logprobs),
            };
            emitted = safe;
            if on_delta(delta).is_break() {
                break FinishReason::Cancelled;
            }
        }
        if tokens.len() >= budget {
            break FinishReason::Length;
        }
        logits = model.step(token)?;
    };
    if finish_reason == FinishReason::Length {
        if let Some(rest) = detok.flush()? {
            text.push_str(&rest);
        }
    }
    if finish_reason != FinishReason::Cancelled && (text.len() > emitted || !pending_logprobs.is_empty()) {
        // Held-back text that turned out not to be a stop string (or the final flush).
        let text = text.get(emitted..).unwrap_or_default().to_string();
        let _ = on_delta(Delta { text, logprobs: pending_logprobs });
    }
    usage.completion_tokens = tokens.len();
    usage.completion_time = decode_start.elapsed();
    Ok(Completion { text, tokens, logprobs: all_logprobs, finish_reason, usage })
}
