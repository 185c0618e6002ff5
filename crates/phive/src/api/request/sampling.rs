//! Sampling, length, stop and delivery fields shared by chat and text completions, and their
//! validation into [`GenerationParams`] and [`Delivery`].

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::delivery::{Delivery, StreamOptions};
use super::validate::{check_range, p};
use crate::api::ApiError;
use crate::engine::{GenerationParams, SamplingParams};

/// Most choices one request may ask for (`n`); each choice is a full generation.
pub const MAX_N: u32 = 16;
/// Most stop strings per request (OpenAI allows 4; phive is more generous).
pub const MAX_STOP: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 256;

/// `stop`: one string or a list.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
    /// Token id (as a string key) → bias in -100..=100.
    pub logit_bias: Option<Value>,
}

/// Declares a request struct with its own fields followed by the shared sampling fields. Paths
/// are absolute because it expands in the chat and completion modules.
macro_rules! sampling_fields {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, ::serde::Serialize, ::serde::Deserialize, utoipa::ToSchema)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// 0..=2; 0 is greedy.
            #[serde(default)]
            #[schema(minimum = 0, maximum = 2)]
            pub temperature: Option<f64>,
            /// (0, 1].
            #[serde(default)]
            #[schema(exclusive_minimum = 0, maximum = 1)]
            pub top_p: Option<f64>,
            /// At least 1; -1 means off.
            #[serde(default)]
            #[schema(minimum = -1)]
            pub top_k: Option<i64>,
            /// 0..=1.
            #[serde(default)]
            #[schema(minimum = 0, maximum = 1)]
            pub min_p: Option<f64>,
            /// -2..=2.
            #[serde(default)]
            #[schema(minimum = -2, maximum = 2)]
            pub frequency_penalty: Option<f64>,
            /// -2..=2.
            #[serde(default)]
            #[schema(minimum = -2, maximum = 2)]
            pub presence_penalty: Option<f64>,
            /// Multiplicative, in (0, 10] (1 is off).
            #[serde(default)]
            #[schema(exclusive_minimum = 0, maximum = 10)]
            pub repetition_penalty: Option<f64>,
            /// Same seed, same output.
            #[serde(default)]
            pub seed: Option<i64>,
            /// A string or up to [`MAX_STOP`](crate::api::MAX_STOP) strings.
            #[serde(default)]
            pub stop: Option<$crate::api::StopSpec>,
            /// Number of choices, 1..=[`MAX_N`](crate::api::MAX_N).
            #[serde(default)]
            #[schema(minimum = 1, maximum = 16)]
            pub n: Option<u32>,
            /// Stream SSE chunks.
            #[serde(default)]
            pub stream: Option<bool>,
            /// Streaming options (only with `stream: true`).
            #[serde(default)]
            pub stream_options: Option<$crate::api::StreamOptions>,
            /// OpenAI's end-user id: accepted and ignored.
            #[serde(default)]
            pub user: Option<String>,
            /// Token id (as a string key) → bias in -100..=100, added to its logit before sampling.
            #[serde(default)]
            pub logit_bias: Option<::serde_json::Value>,
        }

        impl $name {
            /// The shared sampling fields.
            pub fn sampling_fields(&self) -> $crate::api::SamplingFields {
                $crate::api::SamplingFields {
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

pub(super) use sampling_fields;

impl SamplingFields {
    /// Validates and converts; `logprobs` is the number of alternatives when log-probabilities
    /// are requested.
    pub(super) fn into_params(
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
        let logit_bias = parse_logit_bias(self.logit_bias.as_ref())?;
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
                logit_bias,
            },
            max_tokens,
            stop,
            logprobs,
            ..Default::default()
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

/// OpenAI's `logit_bias`: an object from token ids (string keys) to numbers in -100..=100.
/// Whether an id is in the vocabulary is checked by the engine, which knows the model.
fn parse_logit_bias(bias: Option<&Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let map = match bias {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::invalid(p("logit_bias"), "logit_bias must be an object of token id → bias"))
        }
    };
    map.iter()
        .map(|(key, value)| {
            let id = key.parse::<u32>().map_err(|_| {
                ApiError::invalid(p("logit_bias"), format!("logit_bias keys must be token ids, got {key:?}"))
            })?;
            match value.as_f64() {
                Some(bias) if (-100.0..=100.0).contains(&bias) => Ok((id, bias as f32)),
                _ => Err(ApiError::invalid(
                    p("logit_bias"),
                    format!(
                        "logit_bias values must be numbers between -100 and 100, got {value} for token {id}"
                    ),
                )),
            }
        })
        .collect()
}
