//! `tools`, `tool_choice` and `parallel_tool_calls`: validation, and how a model is told about
//! the tools and held to a call (a grammar, for `required` and a named function).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::structured::valid_name;
use super::validate::p;
use crate::api::{ApiError, ToolCall};
use crate::engine::{with_layout, GenerationParams, Grammar, ToolCallSyntax};
use crate::prompt::{python_json, ChatMessage, MessagePart, ToolFormat};

/// One tool in `tools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tool {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDefinition,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionDefinition {
    /// 1 to 64 letters, digits, underscores or dashes.
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON schema of its arguments (an object schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Accepted; arguments always follow `parameters` when phive enforces a call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl FunctionDefinition {
    /// The parameter schema; none means no parameters, as OpenAI defines it.
    fn parameters(&self) -> Value {
        self.parameters
            .clone()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}, "additionalProperties": false}))
    }
}

/// Which calls the model must make.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// At least one call, of any tool.
    Required,
    /// One call of this function.
    Named(String),
}

/// A request's validated tool settings (absent when `tool_choice` is `none` or no tools).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRequest {
    /// The functions offered.
    pub functions: Vec<FunctionDefinition>,
    /// What is asked of the model.
    pub choice: ToolChoice,
    /// Whether several calls may come in one answer.
    pub parallel: bool,
}

/// Validates the three fields. `None` when there is nothing for the model to call (no tools, or
/// `tool_choice: "none"`, which leaves the tools out of the prompt as vLLM does by default).
pub fn tool_request(
    tools: Option<Vec<Tool>>,
    tool_choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<ToolRequest>, ApiError> {
    let tools = tools.unwrap_or_default();
    for (i, tool) in tools.iter().enumerate() {
        let field = |f: &str| Some(format!("tools[{i}].{f}"));
        if tool.kind != "function" {
            return Err(ApiError::invalid(field("type"), "only tools of type \"function\" are supported"));
        }
        if !valid_name(&tool.function.name) {
            return Err(ApiError::invalid(
                field("function.name"),
                "function names must be 1 to 64 letters, digits, underscores or dashes",
            ));
        }
        if tools[..i].iter().any(|t| t.function.name == tool.function.name) {
            return Err(ApiError::invalid(
                field("function.name"),
                format!("tool {:?} is defined twice", tool.function.name),
            ));
        }
        if tool.function.parameters.as_ref().is_some_and(|s| !s.is_object()) {
            return Err(ApiError::invalid(
                field("function.parameters"),
                "parameters must be a JSON schema object",
            ));
        }
    }
    let choice = match tool_choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Ok(None),
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    p("tool_choice"),
                    format!(
                    "tool_choice must be \"none\", \"auto\", \"required\" or a named function, got {other:?}"
                ),
                ))
            }
        },
        Some(object) => match object.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if object.get("type").and_then(Value::as_str) == Some("function") => {
                if !tools.iter().any(|t| t.function.name == name) {
                    return Err(ApiError::invalid(
                        p("tool_choice"),
                        format!("tool_choice names {name:?}, which is not among the tools"),
                    ));
                }
                ToolChoice::Named(name.to_string())
            }
            _ => {
                return Err(ApiError::invalid(
                    p("tool_choice"),
                    "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                ))
            }
        },
    };
    if tools.is_empty() {
        return match choice {
            ToolChoice::Auto => Ok(None),
            _ => Err(ApiError::invalid(p("tool_choice"), "tool_choice needs a non-empty tools list")),
        };
    }
    let functions = tools.into_iter().map(|t| t.function).collect();
    Ok(Some(ToolRequest { functions, choice, parallel: parallel.unwrap_or(true) }))
}

impl ToolRequest {
    /// Tells the model about the tools in the way its format defines, and sets where calls
    /// appear in the output and the grammar that enforces `required` or a named function.
    pub fn apply(
        &self,
        format: ToolFormat,
        messages: &mut Vec<ChatMessage>,
        params: &mut GenerationParams,
    ) -> Result<(), ApiError> {
        let enforced = self.choice != ToolChoice::Auto;
        if enforced && params.grammar.is_some() {
            return Err(ApiError::invalid(
                p("tool_choice"),
                "a required or named tool_choice cannot be combined with response_format or grammar",
            ));
        }
        let listing = python_json(&Value::Array(self.functions.iter().map(describe).collect()));
        let calls_schema = self.calls_schema();
        match format {
            ToolFormat::Tagged { open, close } => {
                system_message(messages).tools = Some(listing);
                params.tool_calls = Some(ToolCallSyntax::Between { open, close });
                if enforced {
                    params.grammar = Some(Grammar::Lark(format!(
                        "start: <|tool_call|> calls <|/tool_call|>\ncalls: %json {calls_schema}"
                    )));
                }
            }
            ToolFormat::Untagged if !enforced => return Err(ApiError::invalid(
                p("tool_choice"),
                "this model has no tool-call format, so it cannot choose to call a tool; use tool_choice \
                     \"required\" or a named function (phive then makes it answer with the call)",
            )
            .with_code("unsupported_parameter")),
            ToolFormat::Untagged => {
                let instruction = format!(
                    "Answer with a JSON list of tool calls, [{{\"name\": ..., \"arguments\": {{...}}}}], using these tools:\n{listing}"
                );
                system_message(messages).parts.push(MessagePart::Text(instruction));
                params.tool_calls = Some(ToolCallSyntax::Whole);
                params.grammar = Some(Grammar::JsonSchema(calls_schema));
            }
        }
        Ok(())
    }

    /// A JSON list of calls of the allowed functions, each `{"name", "arguments"}` with the
    /// arguments under the function's parameter schema; one call unless parallel calls are on.
    fn calls_schema(&self) -> Value {
        let allowed = self.functions.iter().filter(|f| match &self.choice {
            ToolChoice::Named(name) => &f.name == name,
            _ => true,
        });
        let calls: Vec<Value> = allowed
            .map(|f| {
                json!({
                    "type": "object",
                    "properties": {
                        "name": {"const": f.name},
                        "arguments": f.parameters(),
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let mut schema = json!({"type": "array", "items": {"anyOf": calls}, "minItems": 1});
        if !self.parallel || matches!(self.choice, ToolChoice::Named(_)) {
            schema["maxItems"] = json!(1);
        }
        with_layout(schema)
    }
}

/// A function as the model card lists tools: name, description, parameters.
fn describe(function: &FunctionDefinition) -> Value {
    let mut entry = Map::new();
    entry.insert("name".into(), json!(function.name));
    if let Some(description) = &function.description {
        entry.insert("description".into(), json!(description));
    }
    entry.insert("parameters".into(), function.parameters());
    Value::Object(entry)
}

/// The conversation's leading system message, added (empty) when it has none.
fn system_message(messages: &mut Vec<ChatMessage>) -> &mut ChatMessage {
    if messages.first().is_none_or(|m| m.role != "system") {
        messages.insert(0, ChatMessage::text("system", ""));
    }
    &mut messages[0]
}

/// The text an assistant message of the history shows for its `tool_calls`: what the model
/// would have written (so the next turn sees its own earlier calls).
pub fn history_calls_text(calls: &[ToolCall], format: ToolFormat) -> String {
    let items: Vec<Value> = calls
        .iter()
        .map(|c| {
            let arguments = serde_json::from_str(&c.function.arguments)
                .unwrap_or_else(|_| Value::String(c.function.arguments.clone()));
            json!({"name": c.function.name, "arguments": arguments})
        })
        .collect();
    let listing = python_json(&Value::Array(items));
    match format {
        ToolFormat::Tagged { .. } => format!("<|tool_call|>{listing}<|/tool_call|>"),
        ToolFormat::Untagged => listing,
    }
}
