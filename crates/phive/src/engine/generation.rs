//! One choice's output, token by token: sample → stop checks → detokenize → what to stream,
//! with timings for the usage report. The engine feeds it the logits of each step; it knows
//! nothing about batching or KV memory.

use std::time::{Duration, Instant};

use super::constraint::Constraint;
use super::grammar::Grammar;
use super::logprobs::{token_logprob, TokenLogprob};
use super::{IncrementalDetokenizer, Sampler, SamplingParams, StopStrings};
use crate::prompt::{MediaKind, PromptTokens};
use crate::{Error, Result};

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
    /// What the output must match (structured output, enforced tool calls).
    pub grammar: Option<Grammar>,
    /// Where tool calls appear in the output, when the request offers tools.
    pub tool_calls: Option<ToolCallSyntax>,
    /// Go on past the model's stop tokens, to `max_tokens` (vLLM's `ignore_eos`): benchmarks
    /// decode the same number of tokens whatever a random-weight model samples.
    pub ignore_eos: bool,
}

/// How a model writes tool calls; the text of a call is kept out of the streamed content and
/// handed to the front end, which parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallSyntax {
    /// The whole output is one call section (a grammar forces it; for models with no call
    /// format).
    Whole,
    /// Calls sit between two special tokens (Phi-4's `<|tool_call|>` … `<|/tool_call|>`); text
    /// outside them is content.
    Between {
        /// The token that opens a call section.
        open: u32,
        /// The token that closes it.
        close: u32,
    },
}

/// A piece of streamed output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// New text.
    pub text: String,
    /// Log-probabilities of the tokens that produced this text (when requested).
    pub logprobs: Vec<TokenLogprob>,
    /// Tokens generated since the previous delta: more than one where text was held back (a
    /// character split over byte tokens, a possible stop string, a tool call's markup).
    pub tokens: usize,
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
    /// The text of each tool-call section, in order (see [`ToolCallSyntax`]).
    pub tool_call_sections: Vec<String>,
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
    /// How many of the prompt positions came from the prefix cache (not computed).
    pub cached_tokens: usize,
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

/// Rejects `max_tokens: 0`, prompts that leave no room for a generated token, and requests whose
/// prompt plus `max_tokens` exceed the context (OpenAI's and vLLM's 400).
pub fn check_lengths(prompt_len: usize, params: &GenerationParams, context_length: usize) -> Result<()> {
    if params.max_tokens == Some(0) {
        return Err(Error::InvalidRequest("max_tokens must be at least 1".into()));
    }
    if prompt_len >= context_length {
        return Err(Error::InvalidRequest(format!(
            "the prompt is {prompt_len} tokens (images included) but the model's context length is {context_length}"
        )));
    }
    if let Some(max) = params.max_tokens.filter(|&m| prompt_len.saturating_add(m) > context_length) {
        return Err(Error::InvalidRequest(format!(
            "this model's maximum context length is {context_length} tokens; you requested {} tokens \
             ({prompt_len} in the prompt, images included, plus max_tokens {max})",
            prompt_len.saturating_add(max)
        )));
    }
    Ok(())
}

/// What one step of a [`Generation`] produced.
#[derive(Debug)]
pub struct Advance {
    /// The sampled token (to feed to the model next, unless generation finished).
    pub token: u32,
    /// Text (and logprobs) to stream now.
    pub delta: Option<Delta>,
    /// Set when this token ended generation; call [`Generation::finish`].
    pub finished: Option<FinishReason>,
}

/// What a forward pass hands one choice for its next token.
#[derive(Debug, Clone, PartialEq)]
pub enum Scores {
    /// The logits over the vocabulary.
    Logits(Vec<f32>),
    /// Only their argmax, computed where the logits are (on a GPU, so that one id crosses to
    /// the host instead of the vocabulary's logits); for choices that [`Generation::picks_argmax`].
    Argmax(u32),
}

/// The output state of one choice: sampler, grammar, stop strings, detokenizer, text so far.
pub struct Generation {
    params: GenerationParams,
    sampler: Sampler,
    constraint: Option<Constraint>,
    /// Tool-call sections so far; text goes to the last one while `in_tool_call`.
    tool_call_sections: Vec<String>,
    in_tool_call: bool,
    stops: StopStrings,
    detok: IncrementalDetokenizer,
    /// Text ids of the prompt and the completion (what the repetition penalty looks at).
    context: Vec<u32>,
    tokens: Vec<u32>,
    text: String,
    emitted: usize,
    /// Tokens already accounted for by a delta.
    emitted_tokens: usize,
    logprobs: Vec<TokenLogprob>,
    pending_logprobs: Vec<TokenLogprob>,
    budget: usize,
    usage: Usage,
    started: Instant,
    scheduled: Option<Instant>,
    first_token: Option<Instant>,
}

impl Generation {
    /// The state before the first token of a request that arrived at `started`, its output
    /// held to `constraint` (the request's compiled grammar) when there is one. Check the lengths
    /// with [`check_lengths`] and the sampling parameters first.
    pub fn new(
        prompt: &PromptTokens,
        params: &GenerationParams,
        constraint: Option<Constraint>,
        context_length: usize,
        started: Instant,
    ) -> Self {
        let prompt_len = prompt.ids.len();
        let count = |kind| prompt.media.iter().filter(|s| s.kind == kind).map(|s| s.len).sum();
        Generation {
            params: params.clone(),
            sampler: Sampler::new(params.sampling.clone()),
            constraint,
            tool_call_sections: match params.tool_calls {
                Some(ToolCallSyntax::Whole) => vec![String::new()],
                _ => Vec::new(),
            },
            in_tool_call: params.tool_calls == Some(ToolCallSyntax::Whole),
            stops: StopStrings::new(params.stop.iter().cloned()),
            detok: IncrementalDetokenizer::new(),
            context: prompt.text_ids(),
            tokens: Vec::new(),
            text: String::new(),
            emitted: 0,
            emitted_tokens: 0,
            logprobs: Vec::new(),
            pending_logprobs: Vec::new(),
            budget: params.max_tokens.unwrap_or(usize::MAX).min(context_length.saturating_sub(prompt_len)),
            usage: Usage {
                prompt_tokens: prompt_len,
                image_tokens: count(MediaKind::Image),
                audio_tokens: count(MediaKind::Audio),
                ..Default::default()
            },
            started,
            scheduled: None,
            first_token: None,
        }
    }

    /// Records that the engine started computing this choice (the end of its wait and
    /// preprocessing time), with the first `cached_tokens` prompt positions taken from the
    /// prefix cache.
    pub fn mark_scheduled(&mut self, cached_tokens: usize) {
        if self.scheduled.is_none() {
            self.scheduled = Some(Instant::now());
            self.usage.preprocess_time = self.started.elapsed();
            self.usage.cached_tokens = cached_tokens;
        }
    }

    /// Prompt positions taken from the prefix cache when this choice started.
    pub fn cached_tokens(&self) -> usize {
        self.usage.cached_tokens
    }

    /// Whether the engine has started computing this choice.
    pub fn is_scheduled(&self) -> bool {
        self.scheduled.is_some()
    }

    /// Tokens generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Whether the next token is the argmax of the raw logits ([`Scores::Argmax`] is then all
    /// [`Generation::advance`] needs): greedy, with no bias, penalty, grammar or log-probabilities.
    pub fn picks_argmax(&self) -> bool {
        self.sampler.is_plain_greedy() && self.constraint.is_none() && self.params.logprobs.is_none()
    }

    /// Samples the next token from `logits` and works out what to stream.
    pub fn advance(
        &mut self,
        scores: &Scores,
        tokenizer: &tokenizers::Tokenizer,
        stop_token_ids: &[u32],
    ) -> Result<Advance> {
        let biased;
        let (token, logits) = match scores {
            Scores::Argmax(token) if self.picks_argmax() => (*token, None),
            Scores::Argmax(_) => {
                return Err(Error::Internal(
                    "a sampling choice was given only the argmax of its logits".into(),
                ))
            }
            Scores::Logits(logits) => {
                let logits = match self.sampler.has_bias() {
                    true => {
                        let mut copy = logits.to_vec();
                        self.sampler.apply_bias(&mut copy);
                        biased = copy;
                        &biased[..]
                    }
                    false => &logits[..],
                };
                let allowed = self.constraint.as_mut().map(Constraint::allowed).transpose()?;
                (self.sampler.sample(logits, &self.context, allowed.as_ref()), Some(logits))
            }
        };
        if let Some(constraint) = &mut self.constraint {
            constraint.accept(token);
        }
        if self.first_token.is_none() {
            let now = Instant::now();
            self.first_token = Some(now);
            self.usage.time_to_first_token = self.started.elapsed();
            self.usage.prompt_time = now - self.scheduled.unwrap_or(now);
        }
        self.tokens.push(token);
        let done = |delta| Ok(Advance { token, delta, finished: Some(FinishReason::Stop) });
        if !self.params.ignore_eos && stop_token_ids.contains(&token) {
            return done(None);
        }
        if let (Some(top), Some(logits)) = (self.params.logprobs, logits) {
            let previous = &self.tokens[..self.tokens.len() - 1];
            let context = &previous[previous.len().saturating_sub(LOGPROB_CONTEXT)..];
            let lp = token_logprob(logits, token, top, tokenizer, context);
            self.logprobs.push(lp.clone());
            self.pending_logprobs.push(lp);
        }
        self.sampler.observe(token);
        self.context.push(token);
        if let Some(ToolCallSyntax::Between { open, close }) = self.params.tool_calls {
            if token == open {
                self.tool_call_sections.push(String::new());
                self.in_tool_call = true;
            } else if token == close {
                self.in_tool_call = false;
            }
        }
        let piece = self.detok.push(tokenizer, token)?;
        if self.in_tool_call {
            if let (Some(piece), Some(section)) = (piece, self.tool_call_sections.last_mut()) {
                section.push_str(&piece);
            }
            let finished = (self.tokens.len() >= self.budget).then_some(FinishReason::Length);
            return Ok(Advance { token, delta: None, finished });
        }
        let searched = self.text.len();
        if let Some(piece) = piece {
            self.text.push_str(&piece);
        }
        if let Some(hit) = self.stops.find(&self.text, searched) {
            self.text.truncate(hit.at);
            return done(None);
        }
        let safe = self.stops.safe_len(&self.text);
        let delta = (safe > self.emitted).then(|| {
            let delta = Delta {
                text: self.text[self.emitted..safe].to_string(),
                logprobs: std::mem::take(&mut self.pending_logprobs),
                tokens: self.tokens.len() - self.emitted_tokens,
            };
            self.emitted = safe;
            self.emitted_tokens = self.tokens.len();
            delta
        });
        let finished = (self.tokens.len() >= self.budget).then_some(FinishReason::Length);
        Ok(Advance { token, delta, finished })
    }

    /// Ends generation for `reason`: the last piece to stream (held-back text that turned out
    /// not to be a stop string, or the detokenizer's flush) and the completion.
    pub fn finish(
        mut self,
        reason: FinishReason,
        tokenizer: &tokenizers::Tokenizer,
    ) -> Result<(Option<Delta>, Completion)> {
        if reason == FinishReason::Length {
            if let Some(rest) = self.detok.flush(tokenizer)? {
                match self.tool_call_sections.last_mut().filter(|_| self.in_tool_call) {
                    Some(section) => section.push_str(&rest),
                    None => self.text.push_str(&rest),
                }
            }
        }
        let tail = (reason != FinishReason::Cancelled
            && (self.text.len() > self.emitted || !self.pending_logprobs.is_empty()))
        .then(|| Delta {
            text: self.text.get(self.emitted..).unwrap_or_default().to_string(),
            logprobs: std::mem::take(&mut self.pending_logprobs),
            tokens: self.tokens.len() - self.emitted_tokens,
        });
        self.usage.completion_tokens = self.tokens.len();
        self.usage.completion_time = self.first_token.map(|t| t.elapsed()).unwrap_or_default();
        let completion = Completion {
            text: self.text,
            tokens: self.tokens,
            logprobs: self.logprobs,
            tool_call_sections: self.tool_call_sections,
            finish_reason: reason,
            usage: self.usage,
        };
        Ok((tail, completion))
    }
}
