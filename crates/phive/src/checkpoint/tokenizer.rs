//! Tokenizer, chat template and stop tokens, from `tokenizer.json`, `tokenizer_config.json`,
//! an optional `chat_template.jinja`/`chat_template.json`, and `generation_config.json`.

use std::path::Path;

use serde_json::Value;

use super::hub::FileFetcher;
use super::read_json;
use crate::{Error, Result};

/// Everything needed to turn chat messages into token ids and back.
#[derive(Clone)]
pub struct TokenizerBundle {
    /// The Hugging Face tokenizer from `tokenizer.json`.
    pub tokenizer: tokenizers::Tokenizer,
    /// The Jinja chat template.
    pub chat_template: String,
    /// `bos_token` as the template sees it.
    pub bos_token: Option<String>,
    /// `eos_token` as the template sees it.
    pub eos_token: Option<String>,
    /// Token ids that end generation: `generation_config.json`'s `eos_token_id`, the tokenizer's
    /// eos token, and `<|end|>` / `<|endoftext|>` where the vocabulary has them.
    pub stop_token_ids: Vec<u32>,
}

impl TokenizerBundle {
    /// Loads the tokenizer files of a checkpoint.
    pub fn fetch(fetcher: &mut FileFetcher) -> Result<Self> {
        let tokenizer_path = fetcher.get("tokenizer.json")?;
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| Error::checkpoint(&tokenizer_path, format!("cannot load tokenizer: {e}")))?;

        let config_path = fetcher.get("tokenizer_config.json")?;
        let config = read_json(&config_path)?;
        let bos_token = special_token(&config, "bos_token", &config_path)?;
        let eos_token = special_token(&config, "eos_token", &config_path)?;

        let chat_template = match fetcher.get_optional("chat_template.jinja")? {
            Some(path) => std::fs::read_to_string(&path)
                .map_err(|e| Error::checkpoint(&path, format!("cannot read: {e}")))?,
            None => match fetcher.get_optional("chat_template.json")? {
                Some(path) => template_from(&read_json(&path)?, &path)?
                    .ok_or_else(|| Error::checkpoint(&path, "missing key \"chat_template\""))?,
                None => template_from(&config, &config_path)?.ok_or_else(|| {
                    Error::checkpoint(
                        &config_path,
                        "missing key \"chat_template\" (and no chat_template.jinja)",
                    )
                })?,
            },
        };

        let generation_eos = match fetcher.get_optional("generation_config.json")? {
            Some(path) => eos_ids(&read_json(&path)?, &path)?,
            None => Vec::new(),
        };
        let mut stop_token_ids = generation_eos;
        let named = [eos_token.as_deref(), Some("<|end|>"), Some("<|endoftext|>")];
        for token in named.into_iter().flatten() {
            if let Some(id) = tokenizer.token_to_id(token) {
                if !stop_token_ids.contains(&id) {
                    stop_token_ids.push(id);
                }
            }
        }
        Ok(TokenizerBundle { tokenizer, chat_template, bos_token, eos_token, stop_token_ids })
    }
}

/// A special token given either as a string or as `{"content": ...}`.
fn special_token(config: &Value, key: &str, path: &Path) -> Result<Option<String>> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::checkpoint(path, format!("key {key:?} must have a string \"content\""))),
        },
        Some(_) => Err(Error::checkpoint(path, format!("key {key:?} must be a string"))),
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which `default` is used.
fn template_from(config: &Value, path: &Path) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let named =
                |name: &str| list.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(name));
            let entry = named("default").or_else(|| list.first());
            match entry.and_then(|t| t.get("template")).and_then(Value::as_str) {
                Some(s) => Ok(Some(s.to_string())),
                None => Err(Error::checkpoint(path, "\"chat_template\" list has no usable \"template\"")),
            }
        }
        Some(_) => Err(Error::checkpoint(path, "\"chat_template\" must be a string or a list")),
    }
}

/// `eos_token_id` as an integer or a list of integers.
fn eos_ids(config: &Value, path: &Path) -> Result<Vec<u32>> {
    let as_id = |v: &Value| {
        v.as_u64().and_then(|id| u32::try_from(id).ok()).ok_or_else(|| {
            Error::checkpoint(path, format!("\"eos_token_id\" must hold token ids, found {v}"))
        })
    };
    match config.get("eos_token_id") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(ids)) => ids.iter().map(as_id).collect(),
        Some(v) => Ok(vec![as_id(v)?]),
    }
}
