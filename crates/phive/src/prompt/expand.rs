//! Expanding a rendered prompt into token ids with one placeholder run per media item.

use super::MediaKind;
use crate::{Error, Result};

/// A run of placeholder positions that a media item's features fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaSpan {
    /// The kind of media.
    pub kind: MediaKind,
    /// Index of the item among the request's items of this kind (0-based).
    pub index: usize,
    /// First position of the run.
    pub start: usize,
    /// Number of positions (the item's token count).
    pub len: usize,
}

/// Token ids of a prompt; positions covered by `media` hold placeholder ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTokens {
    /// The ids; placeholder runs hold the model's placeholder id.
    pub ids: Vec<u32>,
    /// The placeholder runs, in order of position.
    pub media: Vec<MediaSpan>,
}

impl PromptTokens {
    /// Whether position `pos` is part of a media run.
    pub fn is_media(&self, pos: usize) -> bool {
        self.media
            .iter()
            .any(|s| (s.start..s.start + s.len).contains(&pos))
    }

    /// Ids of the text positions only (what sampling penalties look at).
    pub fn text_ids(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.ids.len());
        let mut next = 0;
        for span in &self.media {
            out.extend_from_slice(&self.ids[next..span.start]);
            next = span.start + span.len;
        }
        out.extend_from_slice(&self.ids[next..]);
        out
    }
}

/// Phi-3.5-vision's processor (`processing_phi3_v.py`): the prompt is split on `<|image_N|>`
/// tags, every chunk is tokenized on its own *with* special tokens (so each chunk gets the
/// tokenizer's BOS when its post-processor adds one), and tag `N` becomes a run of
/// `image_tokens[N-1]` placeholders (id `placeholder_id`).
pub fn expand_phi3v(
    tokenizer: &tokenizers::Tokenizer,
    prompt: &str,
    image_tokens: &[usize],
    placeholder_id: u32,
) -> Result<PromptTokens> {
    let pattern = MediaKind::Image.pattern();
    let mut ids = Vec::new();
    let mut media = Vec::new();
    let mut chunk_start = 0;
    let encode = |text: &str| -> Result<Vec<u32>> {
        tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer(e.to_string()))
    };
    for cap in pattern.captures_iter(prompt) {
        let whole = cap.get(0).expect("capture 0 always exists");
        ids.extend(encode(&prompt[chunk_start..whole.start()])?);
        let number: usize = cap[1].parse().unwrap_or(0);
        let len = number
            .checked_sub(1)
            .and_then(|i| image_tokens.get(i))
            .copied()
            .ok_or_else(|| {
                Error::InvalidRequest(format!("{} has no matching image", whole.as_str()))
            })?;
        media.push(MediaSpan {
            kind: MediaKind::Image,
            index: number - 1,
            start: ids.len(),
            len,
        });
        ids.extend(std::iter::repeat_n(placeholder_id, len));
        chunk_start = whole.end();
    }
    ids.extend(encode(&prompt[chunk_start..])?);
    Ok(PromptTokens { ids, media })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_ids_skip_media_runs() {
        let p = PromptTokens {
            ids: vec![5, 6, 0, 0, 0, 7, 0, 8],
            media: vec![
                MediaSpan {
                    kind: MediaKind::Image,
                    index: 0,
                    start: 2,
                    len: 3,
                },
                MediaSpan {
                    kind: MediaKind::Image,
                    index: 1,
                    start: 6,
                    len: 1,
                },
            ],
        };
        assert_eq!(p.text_ids(), vec![5, 6, 7, 8]);
        assert!(p.is_media(4) && !p.is_media(5));
    }
}
