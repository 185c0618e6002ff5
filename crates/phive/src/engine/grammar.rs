//! Grammars that constrain what a choice may generate (a JSON schema, any JSON object, a
//! regular expression or a Lark grammar), compiled with llguidance against the model's
//! vocabulary. Compiling happens when a request is submitted, so a bad grammar is the caller's
//! error before anything runs; [`super::constraint`] walks the compiled grammar token by token.

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use super::vocab::raw_bytes;
use crate::{Error, Result};

/// What a choice's output must match.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Grammar {
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// JSON valid under this JSON schema.
    JsonSchema(Value),
    /// Text matching this regular expression (whole output).
    Regex(String),
    /// A Lark grammar in llguidance's dialect (special tokens as `<|name|>`, JSON schemas
    /// inline as `%json { ... }`).
    Lark(String),
}

impl Grammar {
    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Grammar::JsonObject => {
                TopLevelGrammar::from_json_schema(with_layout(serde_json::json!({"type": "object"})))
            }
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(with_layout(schema.clone())),
            Grammar::Regex(regex) => TopLevelGrammar::from_regex(regex),
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        }
    }

    /// What to call it in error messages.
    fn kind(&self) -> &'static str {
        match self {
            Grammar::JsonObject | Grammar::JsonSchema(_) => "JSON schema",
            Grammar::Regex(_) => "regular expression",
            Grammar::Lark(_) => "Lark grammar",
        }
    }
}

/// llguidance's JSON layout options for a schema that sets none: one space after `,` and `:`
/// (as Python's `json.dumps` writes, which models have seen most) and no other whitespace.
/// llguidance's default allows any run of whitespace between tokens, and weak or quantized
/// models can spend their whole budget on it.
pub fn with_layout(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
        });
    }
    schema
}

/// The vocabulary as llguidance sees it: every id's raw bytes, special tokens marked.
struct Vocabulary {
    trie: TokTrie,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Greedy longest-match over the trie: llguidance only tokenizes the literal text of
    /// forced prefixes with this, where any valid tokenization is acceptable.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }
}

/// Builds the token trie of `tokenizer` for logits of `vocab_size` rows; `eos` is the token the
/// grammar allows once it is complete.
fn vocabulary(tokenizer: &tokenizers::Tokenizer, vocab_size: usize, eos: u32) -> TokEnv {
    let special: std::collections::HashMap<u32, String> = tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, token)| token.special)
        .map(|(id, token)| (id, token.content))
        .collect();
    let words: Vec<Vec<u8>> = (0..vocab_size as u32)
        .map(|id| match special.get(&id) {
            Some(name) => [&[TokTrie::SPECIAL_TOKEN_MARKER], name.as_bytes()].concat(),
            None => raw_bytes(tokenizer, id).unwrap_or_default(),
        })
        .collect();
    let info = TokRxInfo::new(vocab_size as u32, eos);
    Arc::new(Vocabulary { trie: TokTrie::from(&info, &words) })
}

/// Compiles grammars for one model; the vocabulary's trie is built on first use (it takes a
/// moment for Phi-4's 200k tokens) and shared by every request after.
pub struct GrammarCompiler {
    factory: OnceLock<std::result::Result<ParserFactory, String>>,
}

impl GrammarCompiler {
    /// A compiler whose trie is not built yet.
    pub fn new() -> Self {
        GrammarCompiler { factory: OnceLock::new() }
    }

    /// Compiles `grammar` into a matcher at the start of a generation; an invalid grammar or
    /// schema is an [`Error::InvalidRequest`] naming the problem.
    pub fn compile(
        &self,
        grammar: &Grammar,
        tokenizer: &tokenizers::Tokenizer,
        vocab_size: usize,
        eos: u32,
    ) -> Result<Matcher> {
        let factory = self
            .factory
            .get_or_init(|| {
                let mut factory = ParserFactory::new_simple(&vocabulary(tokenizer, vocab_size, eos))
                    .map_err(|e| e.to_string())?;
                factory.quiet();
                Ok(factory)
            })
            .as_ref()
            .map_err(|e| Error::Internal(format!("cannot prepare constrained decoding: {e}")))?;
        let invalid = |e: String| Error::InvalidRequest(format!("invalid {}: {e}", grammar.kind()));
        let parser = factory.create_parser(grammar.top_level()).map_err(|e| invalid(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(e) => Err(invalid(e)),
            None => Ok(matcher),
        }
    }
}

impl Default for GrammarCompiler {
    fn default() -> Self {
        Self::new()
    }
}
