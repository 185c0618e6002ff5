//! Building OpenAI responses and stream chunks from engine events, shared by the HTTP server
//! and both SDKs so every front end reports the same shapes and numbers.

use std::time::Duration;

use super::response::{
    finish_reason, AssistantMessage, ChatChoice, ChatCompletionChunk, ChatCompletionResponse, ChoiceLogprobs,
    ChunkChoice, ChunkDelta, Timings, Usage,
};
use super::tool_calls::{parse_tool_calls, ToolCall};
use crate::engine::{Completion, Delta};

/// The fixed parts of one chat response (id, timestamp, model) and whether it carries logprobs.
#[derive(Debug, Clone)]
pub struct ChatResponseBuilder {
    /// `chatcmpl-...`, the same on every chunk of a stream.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model id reported to the client.
    pub model: String,
    /// Whether log-probabilities were requested.
    pub logprobs: bool,
}

impl ChatResponseBuilder {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            timings: None,
        }
    }

    /// The first chunk of a choice: the assistant role and empty content.
    pub fn role_chunk(&self, index: usize) -> ChatCompletionChunk {
        let delta =
            ChunkDelta { role: Some("assistant".into()), content: Some(String::new()), tool_calls: None };
        self.chunk(vec![ChunkChoice { index, delta, logprobs: None, finish_reason: None }], None)
    }

    /// A chunk with new text of a choice, or `None` when the delta carries nothing.
    pub fn delta_chunk(&self, index: usize, delta: &Delta) -> Option<ChatCompletionChunk> {
        if delta.text.is_empty() && delta.logprobs.is_empty() {
            return None;
        }
        let logprobs = self.logprobs.then(|| ChoiceLogprobs::from_engine(&delta.logprobs));
        let delta = ChunkDelta { role: None, content: Some(delta.text.clone()), tool_calls: None };
        Some(self.chunk(vec![ChunkChoice { index, delta, logprobs, finish_reason: None }], None))
    }

    /// The last chunk of a choice: its `finish_reason`, with the choice's tool calls (or the
    /// text of call sections that did not parse) in the delta.
    pub fn finish_chunk(&self, index: usize, completion: &Completion) -> ChatCompletionChunk {
        let answer = Answer::of(completion);
        let delta = ChunkDelta {
            content: answer.unparsed_calls,
            tool_calls: answer
                .tool_calls
                .as_ref()
                .map(|calls| calls.iter().enumerate().map(|(i, call)| call.as_delta(i)).collect()),
            ..Default::default()
        };
        let choice = ChunkChoice { index, delta, logprobs: None, finish_reason: Some(answer.finish_reason) };
        self.chunk(vec![choice], None)
    }

    /// The usage chunk (`stream_options.include_usage`) for `completions` in choice order: no
    /// choices, the request's `usage` and the first choice's timings (as in [`Self::response`]).
    pub fn usage_chunk(&self, completions: &[Completion], usage: Usage) -> ChatCompletionChunk {
        ChatCompletionChunk {
            timings: completions.first().map(|c| Timings::from_usage(&c.usage)),
            ..self.chunk(Vec::new(), Some(usage))
        }
    }

    /// The complete response for `completions` in choice order.
    pub fn response(&self, completions: &[Completion], usage: Usage) -> ChatCompletionResponse {
        let choices = completions
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let answer = Answer::of(c);
                let content = match (answer.unparsed_calls, &answer.tool_calls) {
                    (Some(calls), _) => Some(c.text.clone() + &calls),
                    (None, Some(_)) if c.text.trim().is_empty() => None,
                    (None, _) => Some(c.text.clone()),
                };
                ChatChoice {
                    index,
                    message: AssistantMessage {
                        role: "assistant".into(),
                        content,
                        tool_calls: answer.tool_calls,
                    },
                    logprobs: self.logprobs.then(|| ChoiceLogprobs::from_engine(&c.logprobs)),
                    finish_reason: answer.finish_reason,
                }
            })
            .collect();
        ChatCompletionResponse {
            id: self.id.clone(),
            object: "chat.completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            timings: completions.first().map(|c| Timings::from_usage(&c.usage)),
        }
    }
}

/// What a choice's tool-call sections amount to.
struct Answer {
    /// The calls, when every section parsed.
    tool_calls: Option<Vec<ToolCall>>,
    /// The sections' text, when they did not parse (returned as content instead).
    unparsed_calls: Option<String>,
    /// `tool_calls` when the answer is calls, else the engine's reason.
    finish_reason: String,
}

impl Answer {
    fn of(completion: &Completion) -> Self {
        let sections = &completion.tool_call_sections;
        let tool_calls = parse_tool_calls(sections);
        let unparsed_calls = (tool_calls.is_none() && !sections.is_empty()).then(|| sections.concat());
        let finish_reason = match tool_calls {
            Some(_) => "tool_calls".to_string(),
            None => finish_reason(completion.finish_reason).to_string(),
        };
        Answer { tool_calls, unparsed_calls, finish_reason }
    }
}

impl Usage {
    /// Token counts of a request (the prompt once, completions summed over choices) with
    /// mistral.rs's rates and times; `total` is the request's wall time.
    pub fn from_completions(completions: &[Completion], total: Duration) -> Self {
        let prompt_tokens = completions.first().map(|c| c.usage.prompt_tokens).unwrap_or(0);
        let cached_tokens = completions.first().map(|c| c.usage.cached_tokens).unwrap_or(0);
        let completion_tokens: usize = completions.iter().map(|c| c.usage.completion_tokens).sum();
        let prompt_time: f64 = completions.iter().map(|c| c.usage.prompt_time.as_secs_f64()).sum();
        let completion_time: f64 = completions.iter().map(|c| c.usage.completion_time.as_secs_f64()).sum();
        let prefilled: usize = completions.iter().map(|c| c.usage.prompt_tokens).sum();
        // The first token of each choice comes out of prefill; the decode rate counts the others.
        let decoded: usize = completions.iter().map(|c| c.usage.completion_tokens.saturating_sub(1)).sum();
        let rate = |tokens: usize, secs: f64| if secs > 0.0 { tokens as f64 / secs } else { 0.0 };
        let total_time = total.as_secs_f64();
        Usage {
            avg_tok_per_sec: rate(prompt_tokens + completion_tokens, total_time),
            avg_prompt_tok_per_sec: rate(prefilled, prompt_time),
            avg_compl_tok_per_sec: rate(decoded, completion_time),
            total_time_sec: total_time,
            total_prompt_time_sec: prompt_time,
            total_completion_time_sec: completion_time,
            ..Usage::new(prompt_tokens, completion_tokens).with_cached_tokens(cached_tokens)
        }
    }
}
