//! Log-probabilities of chosen tokens and their most likely alternatives, as OpenAI's
//! `logprobs` / `top_logprobs` report them (from the model's distribution before sampling
//! adjustments, as vLLM does).

use super::vocab::raw_bytes;

/// A token with its log-probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TopLogprob {
    /// Token id.
    pub token_id: u32,
    /// The token's text.
    pub token: String,
    /// The token's bytes: its text's UTF-8 bytes, or, for a token that is only part of a
    /// multi-byte character (whose text shows U+FFFD), its raw bytes, so a client that joins
    /// consecutive tokens' bytes gets the completion's text (OpenAI's `bytes`).
    pub bytes: Vec<u8>,
    /// Natural-log probability.
    pub logprob: f32,
}

/// The chosen token's log-probability and the top alternatives at that step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogprob {
    /// The chosen token.
    #[serde(flatten)]
    pub chosen: TopLogprob,
    /// The most likely tokens at this step, best first.
    pub top_logprobs: Vec<TopLogprob>,
}

/// The text `id` adds after the tokens in `context` (the previous generated tokens), so the
/// chosen tokens' texts concatenate to the completion: decoding a token alone would lose a
/// SentencePiece leading space in mid-sequence, and keep one the completion's first token drops.
fn token_text(tokenizer: &tokenizers::Tokenizer, context: &[u32], id: u32) -> String {
    let decode = |ids: &[u32]| tokenizer.decode(ids, false).unwrap_or_default();
    let before = decode(context);
    let with = decode(&[context, &[id]].concat());
    with.strip_prefix(before.as_str()).map(str::to_string).unwrap_or_else(|| decode(&[id]))
}

/// Computes the log-probability of `chosen` and the `top` most likely tokens from raw logits;
/// `context` holds the last few generated tokens before this step (for token texts).
pub fn token_logprob(
    logits: &[f32],
    chosen: u32,
    top: usize,
    tokenizer: &tokenizers::Tokenizer,
    context: &[u32],
) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32 + max;
    let entry = |id: u32| {
        let token = token_text(tokenizer, context, id);
        let bytes = match token.contains('\u{FFFD}') {
            true => raw_bytes(tokenizer, id).unwrap_or_else(|| token.as_bytes().to_vec()),
            false => token.as_bytes().to_vec(),
        };
        TopLogprob { token_id: id, token, bytes, logprob: logits[id as usize] - log_sum }
    };
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let top = top.min(ids.len());
    if top > 0 {
        ids.select_nth_unstable_by(top - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        ids.truncate(top);
        ids.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    }
    TokenLogprob {
        chosen: entry(chosen),
        top_logprobs: if top > 0 { ids.into_iter().map(entry).collect() } else { Vec::new() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(fixture: &str) -> tokenizers::Tokenizer {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(fixture);
        tokenizers::Tokenizer::from_file(path.join("tokenizer.json")).unwrap()
    }

    /// A token that is half of a character reports its raw bytes, not U+FFFD's.
    #[test]
    fn partial_characters_report_their_raw_bytes() {
        for (fixture, partial) in [("phi4mm-tiny", None), ("phi3v-tiny", Some("<0xEF>"))] {
            let tok = tokenizer(fixture);
            // Phi-4: find a byte-level piece that is not valid UTF-8 on its own.
            let id = match partial {
                Some(piece) => tok.token_to_id(piece).unwrap(),
                None => (0..tok.get_vocab_size(false) as u32)
                    .find(|&id| {
                        raw_bytes(&tok, id).is_some_and(|b| b.len() > 1 && std::str::from_utf8(&b).is_err())
                    })
                    .unwrap(),
            };
            let mut logits = vec![0.0; tok.get_vocab_size(true)];
            logits[id as usize] = 5.0;
            let lp = token_logprob(&logits, id, 1, &tok, &[]);
            assert!(lp.chosen.token.contains('\u{FFFD}'), "{fixture}: {:?}", lp.chosen.token);
            let raw = raw_bytes(&tok, id).unwrap();
            assert_eq!(lp.chosen.bytes, raw, "{fixture}");
            assert_ne!(lp.chosen.bytes, "\u{FFFD}".as_bytes());
            assert_eq!(lp.top_logprobs[0].bytes, raw);
        }
        // Whole characters keep their text's bytes (so bytes join to the text).
        let tok = tokenizer("phi3v-tiny");
        let id = tok.token_to_id("\u{2581}the").unwrap();
        let lp = token_logprob(&vec![0.0; 32064], id, 0, &tok, &[1]);
        assert_eq!(lp.chosen.bytes, lp.chosen.token.as_bytes());
    }
}
