//! `POST /v1/completions` (legacy): a raw text prompt, no chat template.

use serde_json::Value;

use super::delivery::Delivery;
use super::sampling::sampling_fields;
use super::validate::p;
use crate::api::ApiError;
use crate::engine::GenerationParams;

/// Largest legacy `logprobs` (completions) as in OpenAI.
pub const MAX_LEGACY_LOGPROBS: u32 = 5;
/// OpenAI's default `max_tokens` for legacy completions.
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

sampling_fields! {
    /// `POST /v1/completions`: a raw text prompt, no chat template.
    pub struct CompletionRequest {
        /// As for chat.
        #[serde(default)]
        pub model: Option<String>,
        /// A string, or a list holding exactly one string.
        pub prompt: Value,
        /// Most tokens to generate; OpenAI's default for this endpoint is 16.
        #[serde(default)]
        #[schema(minimum = 1)]
        pub max_tokens: Option<u64>,
        /// Legacy logprobs: the number of alternatives, 0..=5.
        #[serde(default)]
        #[schema(minimum = 0, maximum = 5)]
        pub logprobs: Option<u32>,
        /// Echoing the prompt is not supported (refused when true).
        #[serde(default)]
        pub echo: Option<bool>,
        /// Not supported (refused when non-empty).
        #[serde(default)]
        pub suffix: Option<String>,
        /// Only equal to `n` is supported.
        #[serde(default)]
        pub best_of: Option<u32>,
    }
}

/// A text completion request translated to phive's terms.
#[derive(Debug, Clone)]
pub struct TextInput {
    /// The raw prompt.
    pub prompt: String,
    /// Sampling, length, stop and logprob settings.
    pub params: GenerationParams,
    /// Choices, streaming, usage chunk.
    pub delivery: Delivery,
}

impl CompletionRequest {
    /// Validates every field and translates the request.
    pub fn into_text(self) -> Result<TextInput, ApiError> {
        let sampling = self.sampling_fields();
        let prompt = match self.prompt {
            Value::String(s) => s,
            Value::Array(mut items) if items.len() == 1 && items[0].is_string() => match items.pop() {
                Some(Value::String(s)) => s,
                _ => String::new(),
            },
            Value::Array(items) if items.iter().all(Value::is_string) => {
                return Err(ApiError::invalid(
                    p("prompt"),
                    format!(
                        "batched prompts are not supported: send one prompt per request (got {})",
                        items.len()
                    ),
                ))
            }
            _ => return Err(ApiError::invalid(
                p("prompt"),
                "prompt must be a string or a list holding one string (token-id prompts are not supported)",
            )),
        };
        if self.echo == Some(true) {
            return Err(ApiError::invalid(p("echo"), "echo is not supported by phive")
                .with_code("unsupported_parameter"));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid(p("suffix"), "suffix is not supported by phive")
                .with_code("unsupported_parameter"));
        }
        if let Some(best_of) = self.best_of {
            if best_of != self.n.unwrap_or(1) {
                return Err(ApiError::invalid(
                    p("best_of"),
                    "best_of must equal n (phive does not rank candidates)",
                )
                .with_code("unsupported_parameter"));
            }
        }
        let logprobs = match self.logprobs {
            Some(k) if k > MAX_LEGACY_LOGPROBS => {
                return Err(ApiError::invalid(
                    p("logprobs"),
                    format!("logprobs must be between 0 and {MAX_LEGACY_LOGPROBS}, got {k}"),
                ))
            }
            other => other.map(|k| k as usize),
        };
        let max_tokens = self.max_tokens.unwrap_or(DEFAULT_COMPLETION_MAX_TOKENS as u64);
        let (params, delivery) = sampling.into_params(Some(("max_tokens", max_tokens)), logprobs)?;
        Ok(TextInput { prompt, params, delivery })
    }
}
