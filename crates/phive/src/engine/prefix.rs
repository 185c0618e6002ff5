//! Content hashes of full KV blocks, chained from the start of a sequence, so that the keys and
//! values computed for one request are found again by another whose prompt starts the same way.
//!
//! A block's keys and values depend on every token before it (hence the chain: each hash covers
//! its parent's), on the features written over its media positions (the content keys of those
//! images and audio clips, never their URLs), on the LoRA adapter the request runs under, and on
//! which LongRoPE factors rotated its positions. All of that goes into the hash, so two blocks
//! share a hash only when their keys and values are the same.

use sha2::{Digest, Sha256};

use crate::models::MediaKey;
use crate::prompt::MediaSpan;

/// The content hash of a block and everything before it (128 bits of SHA-256).
pub type BlockHash = u128;

/// Hashes the blocks of sequences.
#[derive(Debug, Clone, Copy)]
pub struct PrefixHasher {
    /// Positions per KV block.
    pub block_size: usize,
    /// LongRoPE's `original_max_position_embeddings`, when the model has long factors: position
    /// `p` of a sequence whose prompt has `P` positions is rotated with the long factors when
    /// `max(P, p + 1)` exceeds it (see `RotaryEmbedding::batch_tables`).
    pub long_rope_after: Option<usize>,
}

/// What a sequence's keys and values are computed from.
pub struct Content<'a> {
    /// Prompt ids then generated ids.
    pub tokens: &'a [u32],
    /// Positions of the prompt (it decides the rotary factors, see [`PrefixHasher`]).
    pub prompt_len: usize,
    /// The LoRA adapter of the request.
    pub adapter: Option<&'a str>,
    /// The prompt's media spans.
    pub spans: &'a [MediaSpan],
    /// The content key of each span's media item.
    pub media_keys: &'a [MediaKey],
}

impl PrefixHasher {
    /// Extends `hashes` (the chain so far) over the full blocks of the first `upto` tokens of
    /// `content`. Stops before a block whose positions were rotated with both sets of factors:
    /// such a block is the only one of its kind, so neither it nor anything after it is worth
    /// caching. Nothing is hashed while the media keys are missing (the media failed to encode).
    pub fn extend(&self, hashes: &mut Vec<BlockHash>, content: &Content, upto: usize) {
        let bs = self.block_size;
        if content.spans.len() != content.media_keys.len() {
            return;
        }
        while hashes.len() < upto.min(content.tokens.len()) / bs {
            let start = hashes.len() * bs;
            let end = start + bs;
            let long = self.is_long(content.prompt_len, start);
            if long != self.is_long(content.prompt_len, end - 1) {
                return;
            }
            let mut hash = Sha256::new();
            hash.update(hashes.last().copied().unwrap_or(0).to_le_bytes());
            hash.update([u8::from(long)]);
            hash.update(content.adapter.unwrap_or("").as_bytes());
            hash.update([0]);
            for token in &content.tokens[start..end] {
                hash.update(token.to_le_bytes());
            }
            for (span, key) in content.spans.iter().zip(content.media_keys) {
                if span.start < end && start < span.start + span.len {
                    hash.update(key);
                    hash.update((span.start as i64 - start as i64).to_le_bytes());
                }
            }
            let digest = hash.finalize();
            let bytes: [u8; 16] = digest[..16].try_into().expect("SHA-256 has 32 bytes");
            hashes.push(BlockHash::from_le_bytes(bytes));
        }
    }

    fn is_long(&self, prompt_len: usize, position: usize) -> bool {
        self.long_rope_after.is_some_and(|after| prompt_len.max(position + 1) > after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::MediaKind;

    const HASHER: PrefixHasher = PrefixHasher { block_size: 4, long_rope_after: Some(12) };

    fn hashes(content: &Content, upto: usize) -> Vec<BlockHash> {
        let mut out = Vec::new();
        HASHER.extend(&mut out, content, upto);
        out
    }

    fn text(tokens: &[u32]) -> Content<'_> {
        Content { tokens, prompt_len: tokens.len(), adapter: None, spans: &[], media_keys: &[] }
    }

    #[test]
    fn the_chain_covers_full_blocks_and_everything_before_them() {
        let a: Vec<u32> = (0..10).collect();
        let full = hashes(&text(&a), 10);
        assert_eq!(full.len(), 2, "the partial third block is not hashed");
        assert_eq!(hashes(&text(&a), 6), full[..1], "only computed blocks");
        let mut later = a.clone();
        later[5] = 99;
        let changed = hashes(&text(&later), 10);
        assert_eq!(changed[0], full[0]);
        assert_ne!(changed[1], full[1]);
        let mut earlier = a.clone();
        earlier[0] = 99;
        let changed = hashes(&text(&earlier), 10);
        assert!(changed[0] != full[0] && changed[1] != full[1], "a block's hash covers its parent");

        let mut extended = full[..1].to_vec();
        HASHER.extend(&mut extended, &text(&a), 10);
        assert_eq!(extended, full, "extending continues the chain");
    }

    #[test]
    fn media_content_and_adapter_are_part_of_the_hash() {
        let tokens = [1, 2, 3, 4, 0, 0, 0, 0, 5, 6, 7, 8];
        let spans = [MediaSpan { kind: MediaKind::Image, index: 0, start: 4, len: 4 }];
        let keys = [[1u8; 32], [2u8; 32]];
        let with = |key: usize, adapter| Content {
            tokens: &tokens,
            prompt_len: tokens.len(),
            adapter,
            spans: &spans,
            media_keys: std::slice::from_ref(&keys[key]),
        };
        let picture = hashes(&with(0, Some("vision")), 12);
        let other_picture = hashes(&with(1, Some("vision")), 12);
        assert_eq!(picture[0], other_picture[0], "the block before the picture is the same");
        assert!(picture[1] != other_picture[1] && picture[2] != other_picture[2]);
        let speech = hashes(&with(0, Some("speech")), 12);
        assert!(picture.iter().zip(&speech).all(|(a, b)| a != b), "another adapter shares nothing");
        let mut missing = Vec::new();
        HASHER.extend(&mut missing, &Content { media_keys: &[], ..with(0, None) }, 12);
        assert!(missing.is_empty(), "no keys, no hashes");
    }

    #[test]
    fn longrope_factors_split_the_cache() {
        let tokens: Vec<u32> = (0..20).collect();
        let short = hashes(&Content { prompt_len: 8, ..text(&tokens) }, 20);
        let long = hashes(&Content { prompt_len: 16, ..text(&tokens) }, 20);
        assert_eq!(long.len(), 5);
        assert!(short[0] != long[0], "a long prompt rotates every position with the long factors");
        // A prompt of 8 generating past 12 positions rotates blocks 0-2 short and 3-4 long,
        // as a prompt of exactly 12 does: the same keys and values, the same hashes.
        assert_eq!(short, hashes(&Content { prompt_len: 12, ..text(&tokens) }, 20));
        assert_ne!(short[2], hashes(&Content { prompt_len: 13, ..text(&tokens) }, 20)[2]);
        let straddling = PrefixHasher { block_size: 4, long_rope_after: Some(10) };
        let mut out = Vec::new();
        straddling.extend(&mut out, &Content { prompt_len: 8, ..text(&tokens) }, 20);
        assert_eq!(out.len(), 2, "the block holding positions 9..12 mixes factors: the chain stops");
        let plain = PrefixHasher { long_rope_after: None, ..HASHER };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        plain.extend(&mut a, &Content { prompt_len: 8, ..text(&tokens) }, 20);
        plain.extend(&mut b, &Content { prompt_len: 16, ..text(&tokens) }, 20);
        assert_eq!(a, b, "without LongRoPE the prompt length does not matter");
    }
}
