//! Structured output: OpenAI's `response_format` and phive's `grammar` extra field (the shape
//! mistral.rs and TGI accept), validated into one [`Grammar`].

use serde_json::Value;

use super::validate::p;
use crate::api::ApiError;
use crate::engine::Grammar;

/// The grammar a chat request's output must match, if any. `grammar` is
/// `{"type": "json_schema" | "regex" | "lark", "value": ...}`; it cannot be combined with a
/// `response_format` other than text.
pub fn output_grammar(
    response_format: Option<&Value>,
    grammar: Option<&Value>,
) -> Result<Option<Grammar>, ApiError> {
    let from_format = response_format.map(parse_response_format).transpose()?.flatten();
    let from_grammar = grammar.filter(|g| !g.is_null()).map(parse_grammar).transpose()?;
    match (from_format, from_grammar) {
        (Some(_), Some(_)) => {
            Err(ApiError::invalid(p("grammar"), "give either response_format or grammar, not both"))
        }
        (format, grammar) => Ok(format.or(grammar)),
    }
}

fn parse_response_format(format: &Value) -> Result<Option<Grammar>, ApiError> {
    let bad = |message: String| Err(ApiError::invalid(p("response_format"), message));
    let kind = match format {
        Value::Null => return Ok(None),
        Value::Object(o) => o.get("type").and_then(Value::as_str),
        _ => return bad("response_format must be an object such as {\"type\": \"json_object\"}".into()),
    };
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Grammar::JsonObject)),
        Some("json_schema") => {
            let Some(spec) = format.get("json_schema").filter(|s| s.is_object()) else {
                return Err(ApiError::invalid(
                    p("response_format.json_schema"),
                    "response_format json_schema needs a \"json_schema\" object with \"name\" and \"schema\"",
                ));
            };
            match spec.get("name") {
                Some(Value::String(name)) if valid_name(name) => {}
                _ => {
                    return Err(ApiError::invalid(
                        p("response_format.json_schema.name"),
                        "json_schema.name must be 1 to 64 letters, digits, underscores or dashes",
                    ))
                }
            }
            match spec.get("schema") {
                // OpenAI's default when the schema is absent: any JSON object.
                None | Some(Value::Null) => Ok(Some(Grammar::JsonObject)),
                Some(schema @ (Value::Object(_) | Value::Bool(true))) => Ok(Some(Grammar::JsonSchema(schema.clone()))),
                Some(_) => Err(ApiError::invalid(
                    p("response_format.json_schema.schema"),
                    "json_schema.schema must be a JSON schema object",
                )),
            }
        }
        Some(other) => bad(format!(
            "unsupported response_format type {other:?}; phive accepts \"text\", \"json_object\" and \"json_schema\""
        )),
        None => bad("response_format needs a \"type\"".into()),
    }
}

fn parse_grammar(grammar: &Value) -> Result<Grammar, ApiError> {
    let bad = |message: &str| Err(ApiError::invalid(p("grammar"), message));
    let (Some(kind), Some(value)) = (grammar.get("type").and_then(Value::as_str), grammar.get("value"))
    else {
        return bad("grammar must be {\"type\": \"json_schema\" | \"regex\" | \"lark\", \"value\": ...}");
    };
    match (kind, value) {
        ("json_schema", schema @ Value::Object(_)) => Ok(Grammar::JsonSchema(schema.clone())),
        ("regex", Value::String(regex)) => Ok(Grammar::Regex(regex.clone())),
        ("lark", Value::String(lark)) => Ok(Grammar::Lark(lark.clone())),
        ("json_schema", _) => bad("a json_schema grammar's value must be a JSON schema object"),
        ("regex" | "lark", _) => bad("a regex or lark grammar's value must be a string"),
        _ => bad("grammar.type must be \"json_schema\", \"regex\" or \"lark\""),
    }
}

/// OpenAI's rule for schema and function names.
pub(super) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn translates_formats_and_grammars() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let format =
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}});
        assert_eq!(output_grammar(Some(&format), None).unwrap(), Some(Grammar::JsonSchema(schema)));
        assert_eq!(
            output_grammar(Some(&json!({"type": "json_object"})), None).unwrap(),
            Some(Grammar::JsonObject)
        );
        assert_eq!(output_grammar(Some(&json!({"type": "text"})), None).unwrap(), None);
        let regex = json!({"type": "regex", "value": "[a-z]+"});
        assert_eq!(output_grammar(None, Some(&regex)).unwrap(), Some(Grammar::Regex("[a-z]+".into())));
        let lark = json!({"type": "lark", "value": "start: \"a\""});
        assert_eq!(output_grammar(None, Some(&lark)).unwrap(), Some(Grammar::Lark("start: \"a\"".into())));
    }

    #[test]
    fn refuses_malformed_specs_naming_the_field() {
        let param = |format: Value, grammar: Value| {
            output_grammar(Some(&format).filter(|f| !f.is_null()), Some(&grammar)).unwrap_err().param.unwrap()
        };
        assert_eq!(param(json!({"type": "yaml"}), Value::Null), "response_format");
        assert_eq!(param(json!({"type": "json_schema"}), Value::Null), "response_format.json_schema");
        let unnamed = json!({"type": "json_schema", "json_schema": {"schema": {}}});
        assert_eq!(param(unnamed, Value::Null), "response_format.json_schema.name");
        let list = json!({"type": "json_schema", "json_schema": {"name": "a", "schema": [1]}});
        assert_eq!(param(list, Value::Null), "response_format.json_schema.schema");
        assert_eq!(param(Value::Null, json!({"type": "regex", "value": 3})), "grammar");
        assert_eq!(param(json!({"type": "json_object"}), json!({"type": "regex", "value": "a"})), "grammar");
    }
}
