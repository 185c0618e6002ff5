//! OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`) and their translation into
//! phive's messages and generation parameters.
//!
//! Deserialization only checks types (so a wrong type names its field); ranges and combinations
//! are checked in [`ChatCompletionRequest::into_chat`] / [`CompletionRequest::into_text`], which
//! name the offending field in every error. Unknown fields are ignored, as OpenAI does; known
//! OpenAI features phive cannot honour (tools, JSON mode, logit bias, audio input) are refused
//! rather than silently ignored.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::ApiError;
use crate::engine::{GenerationParams, SamplingParams};
use crate::prompt::{ChatMessage, MessagePart};

/// Most choices one request may ask for (`n`); each choice is a full generation.
pub const MAX_N: u32 = 16;
/// Most stop strings per request (OpenAI allows 4; phive is more generous).
pub const MAX_STOP: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 256;
/// Largest `top_logprobs` (chat) as in OpenAI.
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Largest legacy `logprobs` (completions) as in OpenAI.
pub const MAX_LEGACY_LOGPROBS: u32 = 5;
/// OpenAI's default `max_tokens` for legacy completions.
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

/// `stop`: one string or a list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StopSpec {
    /// A single stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for StopSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(StopSpec::One(s)),
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(D::Error::custom(format!("stop strings must be strings, got {other}"))),
                })
                .collect::<Result<_, _>>()
                .map(StopSpec::Many),
            other => Err(D::Error::custom(format!("expected a string or a list of strings, got {other}"))),
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with `usage` (and `choices: []`) before `[DONE]`.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `image_url` of an image part (OpenAI's object form; a bare string is accepted too).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageUrl {
    /// http(s) URL, `data:` URL, raw base64, local path or `file://` URL.
    pub url: String,
    /// `auto`, `low` or `high`; accepted for compatibility, phive always uses the model's full
    /// HD transform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image reference.
    ImageUrl {
        /// Where the image is.
        image_url: ImageUrl,
    },
    /// OpenAI's inline audio (`{data, format}`).
    InputAudio {
        /// The audio object as sent.
        input_audio: Value,
    },
    /// The vLLM / mistral.rs audio extension (`{url}`).
    AudioUrl {
        /// The audio object as sent.
        audio_url: Value,
    },
}

/// A message's `content`: a string or a list of parts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Ordered parts.
    Parts(Vec<ContentPart>),
}

fn str_field(obj: &serde_json::Map<String, Value>, key: &str, what: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{what}.{key} must be a string, got {other}")),
        None => Err(format!("{what} is missing its \"{key}\" field")),
    }
}

fn parse_part(value: Value, index: usize) -> Result<ContentPart, String> {
    let Value::Object(obj) = value else {
        return Err(format!("content part {index} must be an object with a \"type\", got {value}"));
    };
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("content part {index}: \"type\" must be a string, got {other}")),
        None => return Err(format!("content part {index} has no \"type\"")),
    };
    match kind.as_str() {
        "text" => Ok(ContentPart::Text { text: str_field(&obj, "text", "text part")? }),
        "image_url" => {
            let image_url = match obj.get("image_url") {
                Some(Value::String(url)) => ImageUrl { url: url.clone(), detail: None },
                Some(Value::Object(inner)) => {
                    let url = str_field(inner, "url", "image_url")?;
                    let detail = match inner.get("detail") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(d)) if ["auto", "low", "high"].contains(&d.as_str()) => {
                            Some(d.clone())
                        }
                        Some(other) => {
                            return Err(format!("image_url.detail must be \"auto\", \"low\" or \"high\", got {other}"))
                        }
                    };
                    ImageUrl { url, detail }
                }
                Some(other) => return Err(format!("image_url must be an object with a \"url\", got {other}")),
                None => return Err("an image_url part is missing its \"image_url\" field".into()),
            };
            Ok(ContentPart::ImageUrl { image_url })
        }
        "input_audio" => {
            Ok(ContentPart::InputAudio { input_audio: obj.get("input_audio").cloned().unwrap_or(Value::Null) })
        }
        "audio_url" => Ok(ContentPart::AudioUrl { audio_url: obj.get("audio_url").cloned().unwrap_or(Value::Null) }),
        other => Err(format!(
            "unknown content part type {other:?}; expected \"text\", \"image_url\", \"input_audio\" or \"audio_url\""
        )),
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Content::Text(s)),
            Value::Array(parts) => parts
                .into_iter()
                .enumerate()
                .map(|(i, p)| parse_part(p, i))
                .collect::<Result<_, _>>()
                .map(Content::Parts)
                .map_err(D::Error::custom),
            other => {
                Err(D::Error::custom(format!("content must be a string or a list of parts, got {other}")))
            }
        }
    }
}

impl<'de> Deserialize<'de> for ContentPart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_part(Value::deserialize(d)?, 0).map_err(D::Error::custom)
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The content; `null` is allowed for assistant messages only.
    #[serde(default)]
    pub content: Option<Content>,
    /// Participant name (accepted, not used: Phi's template has no names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Sampling and length fields shared by chat and text completions. The request structs carry
/// them as their own fields (not `#[serde(flatten)]`, which would lose the field name in type
/// errors); `sampling_fields!` keeps the two lists identical.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingFields {
    /// 0..=2; 0 is greedy.
    pub temperature: Option<f64>,
    /// (0, 1].
    pub top_p: Option<f64>,
    /// At least 1; -1 means off (vLLM's convention).
    pub top_k: Option<i64>,
    /// 0..=1.
    pub min_p: Option<f64>,
    /// -2..=2.
    pub frequency_penalty: Option<f64>,
    /// -2..=2.
    pub presence_penalty: Option<f64>,
    /// Multiplicative, in (0, 10] (1 is off).
    pub repetition_penalty: Option<f64>,
    /// Same seed, same output.
    pub seed: Option<i64>,
    /// Up to [`MAX_STOP`] strings.
    pub stop: Option<StopSpec>,
    /// Number of choices, 1..=[`MAX_N`].
    pub n: Option<u32>,
    /// Stream SSE chunks.
    pub stream: Option<bool>,
    /// Streaming options (only with `stream: true`).
    pub stream_options: Option<StreamOptions>,
    /// Not supported: refused when non-empty.
    pub logit_bias: Option<Value>,
}

/// Declares a request struct with its own fields followed by the shared sampling fields.
macro_rules! sampling_fields {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// 0..=2; 0 is greedy.
            #[serde(default)]
            pub temperature: Option<f64>,
            /// (0, 1].
            #[serde(default)]
            pub top_p: Option<f64>,
            /// At least 1; -1 means off.
            #[serde(default)]
            pub top_k: Option<i64>,
            /// 0..=1.
            #[serde(default)]
            pub min_p: Option<f64>,
            /// -2..=2.
            #[serde(default)]
            pub frequency_penalty: Option<f64>,
            /// -2..=2.
            #[serde(default)]
            pub presence_penalty: Option<f64>,
            /// Multiplicative, in (0, 10] (1 is off).
            #[serde(default)]
            pub repetition_penalty: Option<f64>,
            /// Same seed, same output.
            #[serde(default)]
            pub seed: Option<i64>,
            /// A string or up to [`MAX_STOP`] strings.
            #[serde(default)]
            pub stop: Option<StopSpec>,
            /// Number of choices, 1..=[`MAX_N`].
            #[serde(default)]
            pub n: Option<u32>,
            /// Stream SSE chunks.
            #[serde(default)]
            pub stream: Option<bool>,
            /// Streaming options (only with `stream: true`).
            #[serde(default)]
            pub stream_options: Option<StreamOptions>,
            /// OpenAI's end-user id: accepted and ignored.
            #[serde(default)]
            pub user: Option<String>,
            /// Not supported: refused when non-empty.
            #[serde(default)]
            pub logit_bias: Option<Value>,
        }

        impl $name {
            /// The shared sampling fields.
            pub fn sampling_fields(&self) -> SamplingFields {
                SamplingFields {
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    min_p: self.min_p,
                    frequency_penalty: self.frequency_penalty,
                    presence_penalty: self.presence_penalty,
                    repetition_penalty: self.repetition_penalty,
                    seed: self.seed,
                    stop: self.stop.clone(),
                    n: self.n,
                    stream: self.stream,
                    stream_options: self.stream_options.clone(),
                    logit_bias: self.logit_bias.clone(),
                }
            }
        }
    };
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
        pub max_tokens: Option<u64>,
        /// Most tokens to generate (current OpenAI name; wins over `max_tokens`).
        #[serde(default)]
        pub max_completion_tokens: Option<u64>,
        /// Return log-probabilities of the chosen tokens.
        #[serde(default)]
        pub logprobs: Option<bool>,
        /// Alternatives per position, 0..=20 (requires `logprobs: true`).
        #[serde(default)]
        pub top_logprobs: Option<u32>,
        /// Not supported: refused when non-empty.
        #[serde(default)]
        pub tools: Option<Value>,
        /// Only `{"type": "text"}` is supported.
        #[serde(default)]
        pub response_format: Option<Value>,
    }
}

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
        pub max_tokens: Option<u64>,
        /// Legacy logprobs: the number of alternatives, 0..=5.
        #[serde(default)]
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

/// How a request wants its answer delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery {
    /// Number of choices.
    pub n: usize,
    /// SSE streaming.
    pub stream: bool,
    /// A usage chunk at the end of the stream.
    pub include_usage: bool,
    /// Log-probabilities requested.
    pub logprobs: bool,
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
    /// Choices, streaming, usage chunk.
    pub delivery: Delivery,
}

/// The reference of an audio part: `audio_url.url` as given, or `input_audio`'s base64 `data`
/// as a `data:` URL of its `format`.
fn audio_reference(part: &ContentPart, param: &str) -> Result<String, ApiError> {
    fn field<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
        obj.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
    }
    match part {
        ContentPart::InputAudio { input_audio } => {
            let data = field(input_audio, "data").ok_or_else(|| {
                ApiError::invalid(
                    Some(format!("{param}.input_audio.data")),
                    "input_audio.data must be base64 audio",
                )
            })?;
            let format = field(input_audio, "format").ok_or_else(|| {
                ApiError::invalid(
                    Some(format!("{param}.input_audio.format")),
                    "input_audio.format must name the encoding (wav, mp3, flac or ogg)",
                )
            })?;
            Ok(format!("data:audio/{format};base64,{data}"))
        }
        ContentPart::AudioUrl { audio_url } => field(audio_url, "url").map(str::to_string).ok_or_else(|| {
            ApiError::invalid(Some(format!("{param}.audio_url.url")), "audio_url.url must not be empty")
        }),
        _ => Err(ApiError::invalid(Some(param.to_string()), "not an audio part")),
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

fn p(name: &str) -> Option<String> {
    Some(name.to_string())
}

fn check_range(name: &str, value: Option<f64>, lo: f64, hi: f64) -> Result<(), ApiError> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => {
            Err(ApiError::invalid(p(name), format!("{name} must be between {lo} and {hi}, got {v}")))
        }
        _ => Ok(()),
    }
}

fn check_empty(name: &str, value: &Option<Value>, what: &str) -> Result<(), ApiError> {
    let empty = match value {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    };
    if empty {
        Ok(())
    } else {
        Err(ApiError::invalid(p(name), format!("{what} is not supported by phive"))
            .with_code("unsupported_parameter"))
    }
}

impl SamplingFields {
    /// Validates and converts; `logprobs` is the number of alternatives when log-probabilities
    /// are requested.
    fn into_params(
        self,
        max_tokens: Option<(&str, u64)>,
        logprobs: Option<usize>,
    ) -> Result<(GenerationParams, Delivery), ApiError> {
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        if let Some(top_p) = self.top_p {
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(ApiError::invalid(p("top_p"), format!("top_p must be in (0, 1], got {top_p}")));
            }
        }
        let top_k = match self.top_k {
            None | Some(-1) => None,
            Some(k) if k >= 1 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
            Some(k) => {
                return Err(ApiError::invalid(
                    p("top_k"),
                    format!("top_k must be at least 1 (or -1 for off), got {k}"),
                ))
            }
        };
        check_range("min_p", self.min_p, 0.0, 1.0)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        if let Some(r) = self.repetition_penalty {
            if !(r > 0.0 && r <= 10.0) {
                return Err(ApiError::invalid(
                    p("repetition_penalty"),
                    format!("repetition_penalty must be in (0, 10], got {r}"),
                ));
            }
        }
        let stop = match self.stop {
            None => Vec::new(),
            Some(StopSpec::One(s)) => vec![s],
            Some(StopSpec::Many(list)) => list,
        };
        if stop.len() > MAX_STOP {
            return Err(ApiError::invalid(
                p("stop"),
                format!("at most {MAX_STOP} stop strings are allowed, got {}", stop.len()),
            ));
        }
        if let Some(bad) = stop.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
            return Err(ApiError::invalid(
                p("stop"),
                format!("stop strings must be 1 to {MAX_STOP_LEN} bytes long, got {} bytes", bad.len()),
            ));
        }
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::invalid(p("n"), format!("n must be between 1 and {MAX_N}, got {n}")));
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid(
                p("stream_options"),
                "stream_options is only allowed when stream is true",
            ));
        }
        check_empty("logit_bias", &self.logit_bias, "logit_bias")?;
        let max_tokens = match max_tokens {
            Some((name, 0)) => return Err(ApiError::invalid(p(name), format!("{name} must be at least 1"))),
            Some((_, m)) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
            None => None,
        };
        let params = GenerationParams {
            sampling: SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k,
                min_p: self.min_p,
                frequency_penalty: self.frequency_penalty.map(|v| v as f32),
                presence_penalty: self.presence_penalty.map(|v| v as f32),
                repetition_penalty: self.repetition_penalty.map(|v| v as f32),
                seed: self.seed.map(|s| s as u64),
            },
            max_tokens,
            stop,
            logprobs,
        };
        let delivery = Delivery {
            n: n as usize,
            stream,
            include_usage: self.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
            logprobs: logprobs.is_some(),
        };
        Ok((params, delivery))
    }
}

impl ChatCompletionRequest {
    /// Validates every field and translates the request.
    pub fn into_chat(self, limits: &RequestLimits) -> Result<ChatInput, ApiError> {
        check_empty("tools", &self.tools, "tool calling")?;
        match &self.response_format {
            None | Some(Value::Null) => {}
            Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("text") => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    p("response_format"),
                    "only response_format {\"type\": \"text\"} is supported by phive",
                )
                .with_code("unsupported_parameter"))
            }
        }
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
        let (params, delivery) = self.sampling_fields().into_params(max_tokens, logprobs)?;
        if self.messages.is_empty() {
            return Err(ApiError::invalid(p("messages"), "messages must contain at least one message"));
        }
        let mut images = Vec::new();
        let mut audios = Vec::new();
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, message) in self.messages.into_iter().enumerate() {
            let role = message.role.as_str();
            if !["system", "user", "assistant"].contains(&role) {
                return Err(ApiError::invalid(
                    Some(format!("messages[{i}].role")),
                    format!(
                        "unsupported role {role:?}; phive accepts \"system\", \"user\" and \"assistant\""
                    ),
                ));
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
            messages.push(ChatMessage { role: message.role, parts });
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
        Ok(ChatInput { messages, images, audios, params, delivery })
    }
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
