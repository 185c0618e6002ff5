//! OpenAI response bodies and stream chunks, built from phive's completions and deltas.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::tool_calls::{ToolCall, ToolCallDelta};
use crate::engine::{FinishReason, TokenLogprob};

/// Token counts, as OpenAI reports them, plus mistral.rs's rates and times (OpenAI clients
/// ignore the extra fields; code written for mistral.rs reads them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    /// Prompt positions (image and audio placeholders included).
    pub prompt_tokens: usize,
    /// Generated tokens, summed over choices.
    pub completion_tokens: usize,
    /// The sum of both.
    pub total_tokens: usize,
    /// All tokens over the request's wall time.
    #[serde(default)]
    pub avg_tok_per_sec: f64,
    /// Prefill speed.
    #[serde(default)]
    pub avg_prompt_tok_per_sec: f64,
    /// Decode speed.
    #[serde(default)]
    pub avg_compl_tok_per_sec: f64,
    /// The request's wall time.
    #[serde(default)]
    pub total_time_sec: f64,
    /// Time spent in prefill.
    #[serde(default)]
    pub total_prompt_time_sec: f64,
    /// Time spent decoding.
    #[serde(default)]
    pub total_completion_time_sec: f64,
    /// OpenAI's breakdown of the prompt tokens.
    #[serde(default)]
    pub prompt_tokens_details: PromptTokensDetails,
}

/// OpenAI's `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose keys and values came from the prefix cache instead of being computed.
    pub cached_tokens: usize,
}

impl Usage {
    /// Counts only (rates and times zero): the prompt is `prompt` tokens and the choices
    /// generated `completion` tokens in all.
    pub fn new(prompt: usize, completion: usize) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            ..Default::default()
        }
    }

    /// The same counts, with `cached` of the prompt tokens taken from the prefix cache.
    pub fn with_cached_tokens(self, cached: usize) -> Self {
        Usage { prompt_tokens_details: PromptTokensDetails { cached_tokens: cached }, ..self }
    }
}

/// phive's extra timings, under their own key so OpenAI clients ignore them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timings {
    /// Image tokens among the prompt tokens.
    pub image_tokens: usize,
    /// Audio tokens among the prompt tokens.
    #[serde(default)]
    pub audio_tokens: usize,
    /// From receiving the request to the first token, in milliseconds.
    pub time_to_first_token_ms: f64,
    /// Prefill speed.
    pub prompt_tokens_per_second: f64,
    /// Decode speed.
    pub completion_tokens_per_second: f64,
}

impl Timings {
    /// Timings of one completion.
    pub fn from_usage(u: &crate::engine::Usage) -> Self {
        Timings {
            image_tokens: u.image_tokens,
            audio_tokens: u.audio_tokens,
            time_to_first_token_ms: u.time_to_first_token.as_secs_f64() * 1000.0,
            prompt_tokens_per_second: u.prompt_tokens_per_sec(),
            completion_tokens_per_second: u.completion_tokens_per_sec(),
        }
    }
}

/// OpenAI's `finish_reason` string (`cancelled` never reaches a client that is still there).
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

/// An alternative token in chat logprobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopLogprobEntry {
    /// Token text.
    pub token: String,
    /// Natural-log probability.
    pub logprob: f32,
    /// The token's bytes (raw bytes for part of a multi-byte character).
    pub bytes: Vec<u8>,
}

/// A chosen token in chat logprobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogprobEntry {
    /// Token text.
    pub token: String,
    /// Natural-log probability.
    pub logprob: f32,
    /// The token's bytes (raw bytes for part of a multi-byte character).
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position.
    pub top_logprobs: Vec<TopLogprobEntry>,
}

/// A choice's `logprobs` object in chat responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChoiceLogprobs {
    /// One entry per generated token.
    pub content: Vec<LogprobEntry>,
    /// Always null (phive does not refuse).
    pub refusal: Option<String>,
}

impl ChoiceLogprobs {
    /// Converts engine logprobs.
    pub fn from_engine(logprobs: &[TokenLogprob]) -> Self {
        let content = logprobs
            .iter()
            .map(|lp| LogprobEntry {
                token: lp.chosen.token.clone(),
                logprob: lp.chosen.logprob,
                bytes: lp.chosen.bytes.clone(),
                top_logprobs: lp
                    .top_logprobs
                    .iter()
                    .map(|t| TopLogprobEntry {
                        token: t.token.clone(),
                        logprob: t.logprob,
                        bytes: t.bytes.clone(),
                    })
                    .collect(),
            })
            .collect();
        ChoiceLogprobs { content, refusal: None }
    }
}

/// The assistant message of a chat choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: String,
    /// The generated text (an `Option`, as in mistral.rs and OpenAI's schema); null when the
    /// answer is only tool calls.
    pub content: Option<String>,
    /// The calls the model made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatChoice {
    /// Choice index.
    pub index: usize,
    /// The answer.
    pub message: AssistantMessage,
    /// Log-probabilities when requested, else null.
    pub logprobs: Option<ChoiceLogprobs>,
    /// `stop`, `length` or `tool_calls`.
    pub finish_reason: String,
}

/// `chat.completion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionResponse {
    /// `chatcmpl-...`.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model id.
    pub model: String,
    /// The choices in index order.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
    /// phive's timings (of the first choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

/// The `delta` of a chat chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkDelta {
    /// `assistant` in a choice's first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Tool calls (whole, on the choice's last chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// One choice in a chat chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkChoice {
    /// Choice index.
    pub index: usize,
    /// What is new.
    pub delta: ChunkDelta,
    /// Log-probabilities of the tokens in this delta, when requested.
    pub logprobs: Option<ChoiceLogprobs>,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<String>,
}

/// `chat.completion.chunk`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionChunk {
    /// Same id on every chunk of a stream.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model id.
    pub model: String,
    /// Empty on the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Only on the usage chunk (`stream_options.include_usage`); null before it.
    pub usage: Option<Usage>,
    /// phive's timings (of the first choice), on the usage chunk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

/// Legacy completion logprobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LegacyLogprobs {
    /// Token texts.
    pub tokens: Vec<String>,
    /// Their log-probabilities.
    pub token_logprobs: Vec<f32>,
    /// The alternatives per position, token text → logprob.
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    /// Character offset of each token in the generated text.
    pub text_offset: Vec<usize>,
}

impl LegacyLogprobs {
    /// Converts engine logprobs; `offset` is the length (in chars) of text already generated.
    pub fn from_engine(logprobs: &[TokenLogprob], mut offset: usize) -> Self {
        let mut out = LegacyLogprobs::default();
        for lp in logprobs {
            out.tokens.push(lp.chosen.token.clone());
            out.token_logprobs.push(lp.chosen.logprob);
            out.top_logprobs.push(lp.top_logprobs.iter().map(|t| (t.token.clone(), t.logprob)).collect());
            out.text_offset.push(offset);
            offset += lp.chosen.token.chars().count();
        }
        out
    }
}

/// One choice of a text completion (also the shape of its stream chunks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompletionChoice {
    /// Generated text (new text, in a chunk).
    pub text: String,
    /// Choice index.
    pub index: usize,
    /// Legacy logprobs when requested.
    pub logprobs: Option<LegacyLogprobs>,
    /// `stop` or `length`; null on chunks before the last.
    pub finish_reason: Option<String>,
}

/// `text_completion` (responses and stream chunks share it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompletionResponse {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model id.
    pub model: String,
    /// The choices.
    pub choices: Vec<CompletionChoice>,
    /// Token counts (null on stream chunks other than the usage chunk).
    pub usage: Option<Usage>,
    /// phive's timings (non-streamed responses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

/// An entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelCard {
    /// The id clients send as `model`.
    pub id: String,
    /// `model`.
    pub object: String,
    /// Unix seconds (when the server started).
    pub created: u64,
    /// `phive`.
    pub owned_by: String,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    /// The served models.
    pub data: Vec<ModelCard>,
}
