//! A message's `content`: a string or a list of typed parts (text, image, audio), parsed by hand
//! so that errors name the offending part.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::api::ApiError;

/// `image_url` of an image part (OpenAI's object form; a bare string is accepted too).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ImageUrl {
    /// http(s) URL, `data:` URL, raw base64, local path or `file://` URL.
    pub url: String,
    /// `auto`, `low` or `high`; accepted for compatibility, phive always uses the model's full
    /// HD transform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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

/// The reference of an audio part: `audio_url.url` as given, or `input_audio`'s base64 `data`
/// as a `data:` URL of its `format`.
pub(super) fn audio_reference(part: &ContentPart, param: &str) -> Result<String, ApiError> {
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
