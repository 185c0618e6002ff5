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
        self.media.iter().any(|s| (s.start..s.start + s.len).contains(&pos))
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
            .ok_or_else(|| Error::InvalidRequest(format!("{} has no matching image", whole.as_str())))?;
        media.push(MediaSpan { kind: MediaKind::Image, index: number - 1, start: ids.len(), len });
        ids.extend(std::iter::repeat_n(placeholder_id, len));
        chunk_start = whole.end();
    }
    ids.extend(encode(&prompt[chunk_start..])?);
    Ok(PromptTokens { ids, media })
}

/// One kind of placeholder token and the token counts of its items, in order.
#[derive(Debug, Clone, Copy)]
pub struct Placeholder<'a> {
    /// Which media the token stands for.
    pub kind: MediaKind,
    /// The placeholder token id.
    pub token: u32,
    /// Token count of each item of this kind, in order.
    pub counts: &'a [usize],
}

/// Phi-4-multimodal's processor (`processing_phi4mm.py`): each tag becomes its placeholder token
/// (N is not used: items are taken in order), the whole prompt is tokenized once, and each
/// placeholder token is expanded into a run of the item's token count.
pub fn expand_phi4mm(
    tokenizer: &tokenizers::Tokenizer,
    prompt: &str,
    placeholders: &[Placeholder<'_>],
) -> Result<PromptTokens> {
    let mut text = prompt.to_string();
    for p in placeholders {
        let token = tokenizer
            .id_to_token(p.token)
            .ok_or_else(|| Error::Tokenizer(format!("the vocabulary has no token with id {}", p.token)))?;
        text = p.kind.pattern().replace_all(&text, token.as_str()).into_owned();
    }
    let encoded = tokenizer.encode(text, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut ids = Vec::with_capacity(encoded.len());
    let mut media = Vec::new();
    let mut used = vec![0usize; placeholders.len()];
    for &id in encoded.get_ids() {
        let Some(slot) = placeholders.iter().position(|p| p.token == id) else {
            ids.push(id);
            continue;
        };
        let p = &placeholders[slot];
        let index = used[slot];
        let len = *p.counts.get(index).ok_or_else(|| mismatch(p, index + 1))?;
        media.push(MediaSpan { kind: p.kind, index, start: ids.len(), len });
        ids.extend(std::iter::repeat_n(id, len));
        used[slot] += 1;
    }
    for (p, &n) in placeholders.iter().zip(&used) {
        if n != p.counts.len() {
            return Err(mismatch(p, n));
        }
    }
    Ok(PromptTokens { ids, media })
}

fn mismatch(p: &Placeholder<'_>, found: usize) -> Error {
    let word = match p.kind {
        MediaKind::Image => "image",
        MediaKind::Audio => "audio",
    };
    Error::InvalidRequest(format!(
        "the prompt has {found} {word} placeholder(s) but {} {word} input(s) were supplied",
        p.counts.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_ids_skip_media_runs() {
        let p = PromptTokens {
            ids: vec![5, 6, 0, 0, 0, 7, 0, 8],
            media: vec![
                MediaSpan { kind: MediaKind::Image, index: 0, start: 2, len: 3 },
                MediaSpan { kind: MediaKind::Image, index: 1, start: 6, len: 1 },
            ],
        };
        assert_eq!(p.text_ids(), vec![5, 6, 7, 8]);
        assert!(p.is_media(4) && !p.is_media(5));
    }
}
