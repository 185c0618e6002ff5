//! `POST /v1/responses` (OpenAI's Responses API), stateless: the request and its translation
//! into a [`ChatCompletionRequest`], so both routes share one validation and generation path.
//!
//! phive stores nothing: fields that need a stored response, conversation or prompt
//! (`previous_response_id`, `conversation`, `prompt`, `background: true`) are refused with a
//! 400 that says so. `store: true` is accepted (clients often send it by habit) and the
//! response reports `"store": false`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::chat::{ChatCompletionRequest, ChatInput, Message, RequestLimits};
use super::content::{Content, ContentPart, ImageUrl};
use super::validate::{check_empty, p};
use crate::api::ApiError;

/// `text` of a Responses request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TextConfig {
    /// `{"type": "text"}`, `{"type": "json_object"}` or
    /// `{"type": "json_schema", "name", "schema", "strict"}`.
    #[serde(default)]
    pub format: Option<Value>,
    /// OpenAI's verbosity hint: accepted, not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbosity: Option<String>,
}

/// `POST /v1/responses`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResponsesRequest {
    /// The served model id, the model path/id, or `default` (also when absent).
    #[serde(default)]
    pub model: Option<String>,
    /// A string (one user message) or a list of message items: `{"role", "content"}` with
    /// role `user`, `system`, `developer` or `assistant` and content a string or a list of
    /// `input_text`, `input_image` (`image_url`), `input_audio` and `output_text` parts.
    #[schema(value_type = Object)]
    pub input: Value,
    /// The system message, placed before `input`.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Most tokens to generate.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// 0..=2; 0 is greedy.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// (0, 1].
    #[serde(default)]
    pub top_p: Option<f64>,
    /// The output format.
    #[serde(default)]
    pub text: Option<TextConfig>,
    /// Echoed in the response.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// OpenAI's end-user id: echoed, not used.
    #[serde(default)]
    pub user: Option<String>,
    /// Stream the response as typed server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Accepted, but nothing is stored: the response says `"store": false`.
    #[serde(default)]
    pub store: Option<bool>,
    /// Refused: phive stores no responses.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// Refused: phive keeps no conversations.
    #[serde(default)]
    pub conversation: Option<Value>,
    /// Refused when true: a background response has to be stored to be fetched.
    #[serde(default)]
    pub background: Option<bool>,
    /// Refused: stored prompt templates need state.
    #[serde(default)]
    pub prompt: Option<Value>,
    /// Refused when non-empty: no built-in tools, no function calling.
    #[serde(default)]
    pub tools: Option<Value>,
    /// Refused when non-empty: phive has no extra output to include.
    #[serde(default)]
    pub include: Option<Value>,
}

fn stateless(param: &str, what: &str) -> ApiError {
    ApiError::invalid(p(param), format!("phive's Responses API is stateless: {what}"))
        .with_code("unsupported_parameter")
}

fn string_field<'a>(obj: &'a Map<String, Value>, key: &str, param: &str) -> Result<&'a str, ApiError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ApiError::invalid(
            Some(format!("{param}.{key}")),
            format!("{param}.{key} must be a string, got {other}"),
        )),
        None => Err(ApiError::invalid(
            Some(format!("{param}.{key}")),
            format!("{param} needs a \"{key}\" string"),
        )),
    }
}

/// One content part of message `role`.
fn content_part(value: &Value, role: &str, param: &str) -> Result<ContentPart, ApiError> {
    let invalid = |message: String| ApiError::invalid(Some(param.to_string()), message);
    let Value::Object(obj) = value else {
        return Err(invalid(format!("a content part must be an object with a \"type\", got {value}")));
    };
    let kind = string_field(obj, "type", param)?;
    let media = |what: &str| {
        if role == "user" {
            Ok(())
        } else {
            Err(invalid(format!("only user messages may contain {what}")))
        }
    };
    match kind {
        "input_text" | "output_text" => Ok(ContentPart::Text { text: string_field(obj, "text", param)?.to_string() }),
        "input_image" => {
            media("images")?;
            let url = match obj.get("image_url") {
                Some(Value::String(url)) if !url.trim().is_empty() => url.clone(),
                None | Some(Value::Null) if obj.get("file_id").is_some_and(|f| !f.is_null()) => {
                    return Err(stateless(
                        &format!("{param}.file_id"),
                        "it has no file storage; send the image as image_url (a data: URL, an http(s) URL or an allowed path)",
                    ))
                }
                _ => {
                    return Err(ApiError::invalid(
                        Some(format!("{param}.image_url")),
                        "an input_image part needs a non-empty image_url string",
                    ))
                }
            };
            Ok(ContentPart::ImageUrl { image_url: ImageUrl { url, detail: None } })
        }
        "input_audio" => {
            media("audio")?;
            Ok(ContentPart::InputAudio { input_audio: obj.get("input_audio").cloned().unwrap_or(Value::Null) })
        }
        other => Err(invalid(format!(
            "unsupported content part type {other:?}; phive accepts \"input_text\", \"input_image\", \"input_audio\" and \"output_text\""
        ))),
    }
}

/// One input item as a chat message.
fn message(item: &Value, i: usize) -> Result<Message, ApiError> {
    let param = format!("input[{i}]");
    let Value::Object(obj) = item else {
        return Err(ApiError::invalid(
            Some(param),
            format!("an input item must be a message object, got {item}"),
        ));
    };
    match obj.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "message" => {}
        Some(Value::String(t)) if t == "item_reference" => {
            return Err(stateless(&param, "it stores no items, so item_reference cannot be used; send the item itself"))
        }
        Some(other) => {
            return Err(ApiError::invalid(
                Some(format!("{param}.type")),
                format!("unsupported input item type {other}; phive accepts message items only (no tool calls or reasoning items)"),
            ))
        }
    }
    let role = match string_field(obj, "role", &param)? {
        "developer" => "system",
        role @ ("user" | "system" | "assistant") => role,
        other => {
            return Err(ApiError::invalid(
                Some(format!("{param}.role")),
                format!("unsupported role {other:?}; phive accepts \"user\", \"system\", \"developer\" and \"assistant\""),
            ))
        }
    };
    let content = match obj.get("content") {
        Some(Value::String(text)) => Content::Text(text.clone()),
        Some(Value::Array(parts)) if !parts.is_empty() => Content::Parts(
            parts
                .iter()
                .enumerate()
                .map(|(j, part)| content_part(part, role, &format!("{param}.content[{j}]")))
                .collect::<Result<_, _>>()?,
        ),
        _ => {
            return Err(ApiError::invalid(
                Some(format!("{param}.content")),
                "content must be a string or a non-empty list of content parts",
            ))
        }
    };
    Ok(Message {
        role: role.to_string(),
        content: Some(content),
        name: None,
        tool_calls: None,
        tool_call_id: None,
    })
}

impl ResponsesRequest {
    /// Refuses what needs stored state or tools.
    fn check_supported(&self) -> Result<(), ApiError> {
        if self.previous_response_id.is_some() {
            return Err(stateless(
                "previous_response_id",
                "it stores no responses, so previous_response_id cannot be used; send the whole conversation as input",
            ));
        }
        if self.conversation.as_ref().is_some_and(|c| !c.is_null()) {
            return Err(stateless(
                "conversation",
                "it keeps no conversations; send the whole conversation as input",
            ));
        }
        if self.background == Some(true) {
            return Err(stateless(
                "background",
                "a background response would have to be stored to be fetched",
            ));
        }
        if self.prompt.as_ref().is_some_and(|c| !c.is_null()) {
            return Err(stateless(
                "prompt",
                "it has no stored prompt templates; send instructions and input",
            ));
        }
        check_empty("tools", &self.tools, "tools (built-in tools such as web_search, and function calling)")?;
        check_empty("include", &self.include, "include")
    }

    /// The conversation: `instructions` as the system message, then `input`.
    fn messages(&self) -> Result<Vec<Message>, ApiError> {
        let mut messages = Vec::new();
        if let Some(instructions) = &self.instructions {
            messages.push(Message {
                role: "system".into(),
                content: Some(Content::Text(instructions.clone())),
                name: None,
                tool_calls: None,
                tool_call_id: None,
            });
        }
        match &self.input {
            Value::String(text) => messages.push(Message {
                role: "user".into(),
                content: Some(Content::Text(text.clone())),
                name: None,
                tool_calls: None,
                tool_call_id: None,
            }),
            Value::Array(items) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    messages.push(message(item, i)?);
                }
            }
            Value::Array(_) => return Err(ApiError::invalid(p("input"), "input must not be an empty list")),
            other => {
                return Err(ApiError::invalid(
                    p("input"),
                    format!("input must be a string or a list of message items, got {other}"),
                ))
            }
        }
        Ok(messages)
    }

    /// `text.format` as a chat `response_format`.
    fn response_format(&self) -> Result<Option<Value>, ApiError> {
        let Some(format) = self.text.as_ref().and_then(|t| t.format.as_ref()).filter(|f| !f.is_null()) else {
            return Ok(None);
        };
        let param = "text.format";
        let Value::Object(obj) = format else {
            return Err(ApiError::invalid(
                p(param),
                format!("text.format must be an object with a \"type\", got {format}"),
            ));
        };
        match string_field(obj, "type", param)? {
            "text" => Ok(Some(json!({"type": "text"}))),
            "json_object" => Ok(Some(json!({"type": "json_object"}))),
            "json_schema" => {
                let mut schema = Map::new();
                schema.insert("name".into(), json!(string_field(obj, "name", param)?));
                match obj.get("schema") {
                    Some(s @ Value::Object(_)) => schema.insert("schema".into(), s.clone()),
                    _ => return Err(ApiError::invalid(p("text.format.schema"), "json_schema needs a \"schema\" object")),
                };
                for key in ["description", "strict"] {
                    if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
                        schema.insert(key.into(), v.clone());
                    }
                }
                Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
            }
            other => Err(ApiError::invalid(
                p("text.format.type"),
                format!("unsupported text.format type {other:?}; expected \"text\", \"json_object\" or \"json_schema\""),
            )),
        }
    }

    /// The equivalent chat request (one choice).
    pub fn to_chat_request(&self) -> Result<ChatCompletionRequest, ApiError> {
        self.check_supported()?;
        Ok(ChatCompletionRequest {
            model: self.model.clone(),
            messages: self.messages()?,
            max_completion_tokens: self.max_output_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            response_format: self.response_format()?,
            stream: self.stream,
            user: self.user.clone(),
            ..Default::default()
        })
    }

    /// Validates and translates the request, naming Responses fields in errors.
    pub fn into_chat(&self, limits: &RequestLimits) -> Result<ChatInput, ApiError> {
        self.to_chat_request()?.into_chat(limits).map_err(|mut e| {
            e.param = e.param.map(|param| match param.as_str() {
                "max_completion_tokens" => "max_output_tokens".into(),
                "response_format" => "text.format".into(),
                _ if param.starts_with("messages") => "input".into(),
                _ => param,
            });
            e
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::MessagePart;

    fn request(body: Value) -> ResponsesRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn translates_items_roles_and_instructions() {
        let req = request(json!({
            "model": "m", "instructions": "be brief", "max_output_tokens": 7, "temperature": 0, "top_p": 0.5,
            "input": [
                {"role": "developer", "content": "dev"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"},
                    {"type": "input_text", "text": "what?"}]},
                {"role": "assistant", "content": [{"type": "output_text", "text": "a", "annotations": []}]}
            ]
        }));
        let chat = req.to_chat_request().unwrap();
        let roles: Vec<&str> = chat.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "system", "user", "assistant"]);
        assert_eq!(chat.max_completion_tokens, Some(7));
        assert_eq!(chat.top_p, Some(0.5));
        let input = req.into_chat(&RequestLimits::default()).unwrap();
        assert_eq!(input.images, vec!["data:image/png;base64,AAAA".to_string()]);
        assert_eq!(input.messages[0].parts, vec![MessagePart::Text("be brief".into())]);
        assert_eq!(input.messages[2].parts, vec![MessagePart::Image, MessagePart::Text("what?".into())]);
        assert_eq!(input.params.max_tokens, Some(7));
        assert_eq!(input.delivery.n, 1);
    }

    #[test]
    fn text_formats_become_response_formats() {
        let format = |f: Value| request(json!({"input": "hi", "text": {"format": f}})).to_chat_request();
        assert_eq!(format(json!({"type": "text"})).unwrap().response_format, Some(json!({"type": "text"})));
        assert_eq!(
            format(json!({"type": "json_object"})).unwrap().response_format,
            Some(json!({"type": "json_object"}))
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let chat = format(json!({"type": "json_schema", "name": "thing", "schema": schema, "strict": true}))
            .unwrap();
        assert_eq!(
            chat.response_format,
            Some(
                json!({"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": true}})
            )
        );
        assert_eq!(
            format(json!({"type": "json_schema", "name": "x"})).unwrap_err().param.as_deref(),
            Some("text.format.schema")
        );
        assert_eq!(format(json!({"type": "yaml"})).unwrap_err().param.as_deref(), Some("text.format.type"));
    }

    #[test]
    fn refuses_what_needs_state_or_tools_naming_the_field() {
        let refused = |extra: Value| {
            let mut body = json!({"input": "hi"});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            request(body).to_chat_request().unwrap_err()
        };
        for (extra, param) in [
            (json!({"previous_response_id": "resp_1"}), "previous_response_id"),
            (json!({"conversation": "conv_1"}), "conversation"),
            (json!({"background": true}), "background"),
            (json!({"prompt": {"id": "pmpt_1"}}), "prompt"),
            (json!({"tools": [{"type": "web_search"}]}), "tools"),
            (json!({"input": [{"type": "item_reference", "id": "msg_1"}]}), "input[0]"),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "input[0].content[0].file_id",
            ),
        ] {
            let e = refused(extra.clone());
            assert_eq!(e.param.as_deref(), Some(param), "{extra}: {e:?}");
        }
        assert!(refused(json!({"conversation": "c"})).message.contains("stateless"));
        assert!(request(json!({"input": "hi", "store": true, "background": false}))
            .to_chat_request()
            .is_ok());
    }

    #[test]
    fn rejects_bad_input_naming_the_field() {
        let bad =
            |input: Value| request(json!({"input": input})).into_chat(&RequestLimits::default()).unwrap_err();
        assert_eq!(bad(json!([])).param.as_deref(), Some("input"));
        assert_eq!(bad(json!(3)).param.as_deref(), Some("input"));
        assert_eq!(bad(json!([{"role": "tool", "content": "x"}])).param.as_deref(), Some("input[0].role"));
        assert_eq!(bad(json!([{"role": "user"}])).param.as_deref(), Some("input[0].content"));
        assert_eq!(
            bad(json!([{"role": "assistant", "content": [{"type": "input_image", "image_url": "a.png"}]}]))
                .param
                .as_deref(),
            Some("input[0].content[0]")
        );
        assert_eq!(
            bad(json!([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]))
                .param
                .as_deref(),
            Some("input[0].content[0]")
        );
        assert_eq!(bad(json!([{"type": "function_call_output"}])).param.as_deref(), Some("input[0].type"));
        let zero =
            request(json!({"input": "hi", "max_output_tokens": 0})).into_chat(&RequestLimits::default());
        assert_eq!(zero.unwrap_err().param.as_deref(), Some("max_output_tokens"));
    }
}
