//! Incremental, UTF-8-safe detokenization: text is emitted only once the tokens decoded so
//! far form complete characters, so a stream never shows a broken character.

use crate::{Error, Result};

/// Turns a growing list of token ids into text deltas.
#[derive(Debug, Default)]
pub struct IncrementalDetokenizer {
    ids: Vec<u32>,
    /// Start of the window decoded for context (SentencePiece needs the previous token to
    /// know whether a leading space belongs to the new text).
    prefix_offset: usize,
    /// Tokens before this index have been emitted as text.
    read_offset: usize,
}

impl IncrementalDetokenizer {
    /// A detokenizer with no tokens yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns the new text it completes, if any.
    pub fn push(&mut self, tokenizer: &tokenizers::Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = decode(tokenizer, &self.ids[self.prefix_offset..self.read_offset])?;
        let full = decode(tokenizer, &self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            return Ok(Some(delta));
        }
        Ok(None)
    }

    /// Text of tokens not yet emitted (at the end of generation, even if incomplete).
    pub fn flush(&mut self, tokenizer: &tokenizers::Tokenizer) -> Result<Option<String>> {
        if self.read_offset == self.ids.len() {
            return Ok(None);
        }
        let prefix = decode(tokenizer, &self.ids[self.prefix_offset..self.read_offset])?;
        let full = decode(tokenizer, &self.ids[self.prefix_offset..])?;
        self.read_offset = self.ids.len();
        Ok(full.strip_prefix(&prefix).filter(|d| !d.is_empty()).map(str::to_string))
    }
}

fn decode(tokenizer: &tokenizers::Tokenizer, ids: &[u32]) -> Result<String> {
    tokenizer.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
}
