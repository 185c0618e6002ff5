//! Benchmark inputs: chat prompts of an exact token count, and a synthetic picture.
//!
//! Speed depends on how many positions go through the model, not on what they say, so the
//! prompt is filler text cut to length. What matters is that its count is exact (rates are
//! per token), that it goes through the chat template like a real request, and that every
//! stream gets a different text (no shared prefix for a prefix cache to skip).

use image::{DynamicImage, Rgb, RgbImage};

use crate::pipeline::{Pipeline, PreparedPrompt};
use crate::prompt::ChatMessage;
use crate::{Error, Result};

const WORDS: &[&str] = &[
    "the",
    "keeper",
    "of",
    "a",
    "lighthouse",
    "counted",
    "waves",
    "and",
    "wrote",
    "them",
    "down",
    "every",
    "night",
    "while",
    "ships",
    "passed",
    "far",
    "beyond",
    "rocks",
    "under",
    "grey",
    "clouds",
    "with",
    "salt",
    "wind",
    "morning",
    "bread",
    "lamp",
    "oil",
    "stairs",
    "gulls",
    "harbour",
    "letters",
    "from",
    "mainland",
    "brother",
    "storm",
    "season",
    "quiet",
    "bright",
    "ledger",
    "numbers",
    "tide",
    "moon",
    "slowly",
    "returned",
    "north",
    "south",
    "island",
    "boat",
];

/// Filler text: `words` pseudo-random words, different for every `variant`.
fn filler(variant: usize, words: usize) -> String {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (variant as u64).wrapping_mul(0xA24B_AED4_963E_E407);
    let mut text = format!("Passage {variant}:");
    for i in 0..words {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        text.push(' ');
        text.push_str(WORDS[(state >> 33) as usize % WORDS.len()]);
        if i % 12 == 11 {
            text.push('.');
        }
    }
    text
}

/// A one-message chat prompt whose prepared length (chat template included) is exactly
/// `tokens`, with filler text that differs for every `variant`.
///
/// The text is tokenized, cut and decoded back; since decoding and re-encoding may merge or
/// split a token at the cut, the cut is corrected a few times until the count is exact.
pub fn text_prompt(pipeline: &Pipeline, tokens: usize, variant: usize) -> Result<PreparedPrompt> {
    let tokenizer = pipeline.tokenizer();
    let encode = |text: &str| -> Result<Vec<u32>> {
        Ok(tokenizer.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?.get_ids().to_vec())
    };
    let prepare = |text: &str| pipeline.prepare(&[ChatMessage::text("user", text)], &[]);
    let head = format!("Passage {variant}:");
    let overhead = prepare(&head)?.tokens.ids.len().saturating_sub(encode(&head)?.len());
    let shortest = prepare(&head)?.tokens.ids.len();
    if tokens < shortest {
        return Err(Error::InvalidRequest(format!(
            "a prompt needs at least {shortest} tokens here ({overhead} of them the chat template's), \
             {tokens} were asked for"
        )));
    }
    let mut words = tokens + 16;
    let ids = loop {
        let ids = encode(&filler(variant, words))?;
        if ids.len() >= tokens + 8 {
            break ids;
        }
        words *= 2;
    };
    let mut keep = tokens.saturating_sub(overhead).clamp(1, ids.len());
    for _ in 0..16 {
        let text = tokenizer.decode(&ids[..keep], true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let prepared = prepare(&text)?;
        let got = prepared.tokens.ids.len();
        if got == tokens {
            return Ok(prepared);
        }
        keep = if got > tokens { keep.saturating_sub((got - tokens).max(1)) } else { keep + (tokens - got) };
        keep = keep.clamp(1, ids.len());
    }
    Err(Error::Internal(format!("could not build a prompt of exactly {tokens} tokens")))
}

/// A 1024x768 picture with structure (gradients and bars), so preprocessing and the vision
/// encoder do real work.
pub fn picture() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(1024, 768, |x, y| {
        Rgb([(x / 4) as u8, (y / 3) as u8, if (x / 64 + y / 64) % 2 == 0 { 200 } else { 40 }])
    }))
}
