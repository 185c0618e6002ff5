//! Tool calls as OpenAI shows them (`message.tool_calls`, and in assistant messages of the
//! history), and reading them from the text of a completion's call sections.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One call of a function by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolCall {
    /// `call_...`, unique within the response.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The function and its arguments.
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".into()
}

/// A function name and its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// The arguments as a JSON string.
    pub arguments: String,
}

/// A streamed piece of a tool call (`delta.tool_calls[i]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolCallDelta {
    /// Which call of the choice.
    pub index: usize,
    /// Set on a call's first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function` on a call's first piece.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The name (first piece) and a piece of the arguments.
    pub function: FunctionCallDelta,
}

/// A piece of a function call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionCallDelta {
    /// Set on a call's first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The next piece of the JSON arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

impl ToolCall {
    /// The call as one streamed piece: id, name and all its arguments.
    pub fn as_delta(&self, index: usize) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: Some(self.id.clone()),
            kind: Some(self.kind.clone()),
            function: FunctionCallDelta {
                name: Some(self.function.name.clone()),
                arguments: Some(self.function.arguments.clone()),
            },
        }
    }
}

/// Reads the calls in a completion's call sections: each a JSON list (or a single object) of
/// `{"name": ..., "arguments": {...}}` (`parameters` is accepted for `arguments`, as models
/// trained on other formats write it). `None` when a section is not such JSON, so the caller
/// can return the text as content instead.
pub fn parse_tool_calls(sections: &[String]) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    for section in sections {
        let items = match serde_json::from_str::<Value>(section.trim()).ok()? {
            Value::Array(items) => items,
            object @ Value::Object(_) => vec![object],
            _ => return None,
        };
        for item in items {
            let name = item.get("name")?.as_str()?.to_string();
            let arguments = item.get("arguments").or_else(|| item.get("parameters")).cloned();
            let arguments = arguments.unwrap_or_else(|| Value::Object(Default::default()));
            calls.push(ToolCall {
                id: format!("call_{:024x}", rand::random::<u128>() >> 32),
                kind: function_type(),
                function: FunctionCall { name, arguments: arguments.to_string() },
            });
        }
    }
    (!calls.is_empty()).then_some(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_objects_and_refuses_other_text() {
        let calls = parse_tool_calls(&[
            r#"[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "now", "arguments": {}}]"#
                .into(),
            r#" {"name": "add", "parameters": {"a": 1}} "#.into(),
        ])
        .unwrap();
        let names: Vec<_> = calls.iter().map(|c| c.function.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "now", "add"]);
        assert_eq!(calls[0].function.arguments, r#"{"city":"Paris"}"#);
        assert_eq!(calls[2].function.arguments, r#"{"a":1}"#);
        assert!(calls.iter().all(|c| c.id.starts_with("call_") && c.kind == "function"));
        assert_ne!(calls[0].id, calls[1].id);
        assert_eq!(parse_tool_calls(&["[{\"name\": \"f\"".into()]), None);
        assert_eq!(parse_tool_calls(&["[{\"arguments\": {}}]".into()]), None);
        assert_eq!(parse_tool_calls(&["[]".into()]), None);
        assert_eq!(parse_tool_calls(&[]), None);
    }
}
