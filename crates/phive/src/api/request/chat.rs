//! `POST /v1/chat/completions`: the request, its limits, and its translation into a
//! conversation with media references plus generation parameters.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::content::{audio_reference, Content, ContentPart};
use super::delivery::Delivery;
use super::preprocess::{preprocess_options, MmProcessorKwargs};
use super::sampling::sampling_fields;
use super::structured::output_grammar;
use super::tools::{tool_request, Tool, ToolRequest};
use super::validate::p;
use crate::api::{ApiError, ToolCall};
use crate::engine::GenerationParams;
use crate::models::PreprocessOptions;
use crate::prompt::{ChatMessage, MessagePart};

/// Largest `top_logprobs` (chat) as in OpenAI.
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The content; `null` is allowed for assistant messages only.
    #[serde(default)]
    pub content: Option<Content>,
    /// Participant name (accepted, not used: Phi's template has no names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The calls an assistant message made (shown to the model as it wrote them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// In a `tool` message, the call it answers (accepted; the template has no place for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

sampling_fields! {
    /// `POST /v1/chat/completions`.
    pub struct ChatCompletionRequest {
        /// The served model id, the model path/id, or `default` (also when absent).
        #[serde(default)]
        pub model: Option<String>,
        /// The conversation (at least one message).
        pub messages: Vec<Message>,
        /// Most tokens to generate (deprecated OpenAI name).
        #[serde(default)]
        #[schema(minimum = 1)]
        pub max_tokens: Option<u64>,
        /// Most tokens to generate (current OpenAI name; wins over `max_tokens`).
        #[serde(default)]
        #[schema(minimum = 1)]
        pub max_completion_tokens: Option<u64>,
        /// Return log-probabilities of the chosen tokens.
        #[serde(default)]
        pub logprobs: Option<bool>,
        /// Alternatives per position, 0..=20 (requires `logprobs: true`).
        #[serde(default)]
        #[schema(minimum = 0, maximum = 20)]
        pub top_logprobs: Option<u32>,
        /// Functions the model may call.
        #[serde(default)]
        pub tools: Option<Vec<Tool>>,
        /// `none`, `auto` (the default), `required`, or `{"type": "function", "function": {"name": ...}}`.
        #[serde(default)]
        pub tool_choice: Option<Value>,
        /// Whether one answer may hold several calls (default true).
        #[serde(default)]
        pub parallel_tool_calls: Option<bool>,
        /// `{"type": "text"}`, `{"type": "json_object"}` or
        /// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`.
        #[serde(default)]
        pub response_format: Option<Value>,
        /// phive's extension: `{"type": "regex" | "lark" | "json_schema", "value": ...}` (Lark in
        /// llguidance's dialect).
        #[serde(default)]
        pub grammar: Option<Value>,
        /// Phi-3.5-vision only: most 336×336 crops per image for this request (default: the
        /// server's `--num-crops`); the model card recommends 4 for several images or video
        /// frames, 16 for one image.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 1, maximum = 256)]
        pub num_crops: Option<usize>,
        /// Phi-4-multimodal only: most 448×448 crops per image for this request (default: the
        /// server's `--dynamic-hd`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 1, maximum = 1024)]
        pub dynamic_hd: Option<usize>,
        /// vLLM's spelling of the same crop limits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub mm_processor_kwargs: Option<MmProcessorKwargs>,
    }
}

/// Limits a front end imposes on requests.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Most images per request.
    pub max_images: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits { max_images: 8 }
    }
}

/// A chat request translated to phive's terms; images are still references, because fetching
/// them is the front end's job (it decides the policy and where blocking work runs).
#[derive(Debug, Clone)]
pub struct ChatInput {
    /// The conversation with image parts in place.
    pub messages: Vec<ChatMessage>,
    /// One reference per image part, in order.
    pub images: Vec<String>,
    /// One reference per audio part, in order (`input_audio` becomes a `data:` URL).
    pub audios: Vec<String>,
    /// Sampling, length, stop and logprob settings.
    pub params: GenerationParams,
    /// The request's crop limits (checked against the model when preparing).
    pub preprocess: PreprocessOptions,
    /// Choices, streaming, usage chunk.
    pub delivery: Delivery,
    /// The tools offered, applied to `messages` and `params` once the model is known.
    pub tools: Option<ToolRequest>,
    /// Assistant messages of the history (by index) that made tool calls.
    pub history_calls: Vec<(usize, Vec<ToolCall>)>,
}

impl ChatCompletionRequest {
    /// Validates every field and translates the request.
    pub fn into_chat(self, limits: &RequestLimits) -> Result<ChatInput, ApiError> {
        let grammar = output_grammar(self.response_format.as_ref(), self.grammar.as_ref())?;
        let tools = tool_request(self.tools.clone(), self.tool_choice.as_ref(), self.parallel_tool_calls)?;
        let preprocess =
            preprocess_options(self.num_crops, self.dynamic_hd, self.mm_processor_kwargs.as_ref())?;
        let logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(k)) if k > MAX_TOP_LOGPROBS => {
                return Err(ApiError::invalid(
                    p("top_logprobs"),
                    format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
                ))
            }
            (false, Some(_)) => {
                return Err(ApiError::invalid(p("top_logprobs"), "top_logprobs requires logprobs to be true"))
            }
            (true, k) => Some(k.unwrap_or(0) as usize),
            (false, None) => None,
        };
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => Some(("max_completion_tokens", m)),
            (None, Some(m)) => Some(("max_tokens", m)),
            (None, None) => None,
        };
        let (mut params, delivery) = self.sampling_fields().into_params(max_tokens, logprobs)?;
        params.grammar = grammar;
        if self.messages.is_empty() {
            return Err(ApiError::invalid(p("messages"), "messages must contain at least one message"));
        }
        let mut images = Vec::new();
        let mut audios = Vec::new();
        let mut messages = Vec::with_capacity(self.messages.len());
        let mut history_calls = Vec::new();
        for (i, message) in self.messages.into_iter().enumerate() {
            let role = message.role.as_str();
            if !["system", "user", "assistant", "tool"].contains(&role) {
                return Err(ApiError::invalid(
                    Some(format!("messages[{i}].role")),
                    format!(
                        "unsupported role {role:?}; phive accepts \"system\", \"user\", \"assistant\" and \"tool\""
                    ),
                ));
            }
            match message.tool_calls {
                Some(calls) if role != "assistant" && !calls.is_empty() => {
                    return Err(ApiError::invalid(
                        Some(format!("messages[{i}].tool_calls")),
                        "only assistant messages may carry tool_calls",
                    ))
                }
                Some(calls) if !calls.is_empty() => history_calls.push((i, calls)),
                _ => {}
            }
            let parts = match message.content {
                None if role == "assistant" => vec![MessagePart::Text(String::new())],
                None => {
                    return Err(ApiError::invalid(
                        Some(format!("messages[{i}].content")),
                        format!("a {role} message needs content"),
                    ))
                }
                Some(Content::Text(text)) => vec![MessagePart::Text(text)],
                Some(Content::Parts(parts)) => {
                    if parts.is_empty() {
                        return Err(ApiError::invalid(
                            Some(format!("messages[{i}].content")),
                            "content must not be an empty list",
                        ));
                    }
                    let mut out = Vec::with_capacity(parts.len());
                    for (j, part) in parts.into_iter().enumerate() {
                        let param = || Some(format!("messages[{i}].content[{j}]"));
                        match part {
                            ContentPart::Text { text } => out.push(MessagePart::Text(text)),
                            ContentPart::ImageUrl { image_url } => {
                                if role != "user" {
                                    return Err(ApiError::invalid(
                                        param(),
                                        "only user messages may contain images",
                                    ));
                                }
                                if image_url.url.trim().is_empty() {
                                    return Err(ApiError::invalid(
                                        param(),
                                        "image_url.url must not be empty",
                                    ));
                                }
                                images.push(image_url.url);
                                out.push(MessagePart::Image);
                            }
                            audio @ (ContentPart::InputAudio { .. } | ContentPart::AudioUrl { .. }) => {
                                if role != "user" {
                                    return Err(ApiError::invalid(
                                        param(),
                                        "only user messages may contain audio",
                                    ));
                                }
                                audios.push(audio_reference(&audio, &format!("messages[{i}].content[{j}]"))?);
                                out.push(MessagePart::Audio);
                            }
                        }
                    }
                    out
                }
            };
            messages.push(ChatMessage::new(message.role, parts));
        }
        if images.len() > limits.max_images {
            return Err(ApiError::invalid(
                p("messages"),
                format!(
                    "the request has {} images but this server accepts at most {} per request (--max-images)",
                    images.len(),
                    limits.max_images
                ),
            ));
        }
        Ok(ChatInput { messages, images, audios, params, preprocess, delivery, tools, history_calls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<ChatInput, ApiError> {
        let req: ChatCompletionRequest =
            serde_json::from_value(body).map_err(|e| ApiError::invalid(None, e.to_string()))?;
        req.into_chat(&RequestLimits::default())
    }

    #[test]
    fn translates_parts_and_params() {
        let input = chat(serde_json::json!({
            "model": "x",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                    {"type": "text", "text": "what?"}
                ]}
            ],
            "temperature": 0.5, "top_k": -1, "stop": "END", "n": 2, "seed": 7, "logprobs": true,
            "top_logprobs": 3, "max_completion_tokens": 9, "stream": true,
            "stream_options": {"include_usage": true}, "something_new": 1
        }))
        .unwrap();
        assert_eq!(input.images, vec!["data:image/png;base64,AAAA".to_string()]);
        assert!(input.audios.is_empty());
        assert_eq!(input.messages[1].parts, vec![MessagePart::Image, MessagePart::Text("what?".into())]);
        assert_eq!(input.params.max_tokens, Some(9));
        assert_eq!(input.params.logprobs, Some(3));
        assert_eq!(input.params.stop, vec!["END".to_string()]);
        assert_eq!(input.params.sampling.top_k, None);
        assert_eq!(input.delivery, Delivery { n: 2, stream: true, include_usage: true, logprobs: true });
    }

    #[test]
    fn rejects_bad_values_naming_the_param() {
        let base = |extra: Value| {
            let mut body = serde_json::json!({"messages": [{"role": "user", "content": "hi"}]});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            chat(body).unwrap_err()
        };
        assert_eq!(base(serde_json::json!({"temperature": 3})).param.as_deref(), Some("temperature"));
        assert_eq!(base(serde_json::json!({"n": 0})).param.as_deref(), Some("n"));
        assert_eq!(base(serde_json::json!({"top_logprobs": 2})).param.as_deref(), Some("top_logprobs"));
        assert_eq!(base(serde_json::json!({"max_tokens": 0})).param.as_deref(), Some("max_tokens"));
        let audio = base(serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA"}}]}]}));
        assert_eq!(audio.param.as_deref(), Some("messages[0].content[0].input_audio.format"), "{audio:?}");
        let audio = base(serde_json::json!({"messages": [{"role": "assistant", "content": [
            {"type": "audio_url", "audio_url": {"url": "a.wav"}}]}]}));
        assert!(audio.message.contains("only user messages may contain audio"), "{audio:?}");
        let err = serde_json::from_value::<ChatCompletionRequest>(serde_json::json!({
            "messages": [{"role": "user", "content": [{"type": "video_url"}]}]}))
        .unwrap_err();
        assert!(err.to_string().contains("unknown content part type"), "{err}");
    }
}

#[cfg(test)]
mod audio_tests {
    use super::*;

    #[test]
    fn audio_parts_become_references_in_order() {
        let request: ChatCompletionRequest = serde_json::from_value(serde_json::json!({
            "messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "audio_url", "audio_url": {"url": "https://example.com/a.mp3"}},
                {"type": "text", "text": "transcribe"}]}]
        }))
        .unwrap();
        let input = request.into_chat(&RequestLimits::default()).unwrap();
        assert_eq!(input.audios, vec!["data:audio/wav;base64,UklGRg==", "https://example.com/a.mp3"]);
        assert_eq!(
            input.messages[0].parts,
            vec![MessagePart::Audio, MessagePart::Audio, MessagePart::Text("transcribe".into())]
        );
    }
}
