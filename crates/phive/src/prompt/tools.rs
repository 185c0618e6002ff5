//! How a model is told about tools and how it writes its calls, read from the checkpoint's own
//! files (chat template and added tokens) rather than from its name.

use serde_json::Value;

/// A model's tool-calling format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// Phi-4-multimodal (and Phi-4-mini): the tool list is a JSON string in the system
    /// message's `tools`, which the chat template writes between `<|tool|>` and `<|/tool|>`;
    /// the model answers `<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>`.
    /// Sources: the checkpoint's `chat_template` and added tokens, and Phi-4-mini-instruct's
    /// model card as quoted in the Berkeley Function-Calling Leaderboard's Phi handler
    /// (`bfcl/model_handler/local_inference/phi_fc.py`), whose parser expects that call syntax.
    Tagged {
        /// `<|tool_call|>`.
        open: u32,
        /// `<|/tool_call|>`.
        close: u32,
    },
    /// No tool format (Phi-3.5-vision): tools can only be described in plain text.
    Untagged,
}

impl ToolFormat {
    /// The format of a checkpoint whose template is `template`.
    pub fn detect(tokenizer: &tokenizers::Tokenizer, template: &str) -> Self {
        let open = tokenizer.token_to_id("<|tool_call|>");
        let close = tokenizer.token_to_id("<|/tool_call|>");
        match (open, close) {
            (Some(open), Some(close)) if template.contains("message['tools']") => {
                ToolFormat::Tagged { open, close }
            }
            _ => ToolFormat::Untagged,
        }
    }
}

/// `value` as Python's `json.dumps` writes it by default (`", "` and `": "` separators, non-ASCII
/// escaped), the form the model card shows for the tool list.
pub fn python_json(value: &Value) -> String {
    let mut out = String::new();
    write_python_json(value, &mut out);
    out
}

fn write_python_json(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_string(key, out);
                out.push_str(": ");
                write_python_json(item, out);
            }
            out.push('}');
        }
        Value::String(s) => write_python_string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

/// A JSON string with `ensure_ascii`: characters outside ASCII as `\uXXXX` (surrogate pairs
/// above the BMP).
fn write_python_string(s: &str, out: &mut String) {
    let quoted = Value::String(s.to_string()).to_string();
    for c in quoted.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_matches_json_dumps() {
        let value = serde_json::json!([{"name": "f", "parameters": {"x": {"type": "str", "enum": ["é", "a\"b"]}}, "n": 1.5}]);
        // Python: json.dumps([{"name": "f", "parameters": {"x": {"type": "str", "enum": ["é", 'a"b']}}, "n": 1.5}])
        assert_eq!(
            python_json(&value),
            r#"[{"name": "f", "parameters": {"x": {"type": "str", "enum": ["\u00e9", "a\"b"]}}, "n": 1.5}]"#
        );
    }

    #[test]
    fn detects_the_phi4_format_from_the_fixture() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let load = |name: &str| {
            let tokenizer = tokenizers::Tokenizer::from_file(dir.join(name).join("tokenizer.json")).unwrap();
            let config: Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join(name).join("tokenizer_config.json")).unwrap(),
            )
            .unwrap();
            ToolFormat::detect(&tokenizer, config["chat_template"].as_str().unwrap())
        };
        assert_eq!(load("phi4mm-tiny"), ToolFormat::Tagged { open: 200025, close: 200026 });
        assert_eq!(load("phi3v-tiny"), ToolFormat::Untagged);
    }
}
