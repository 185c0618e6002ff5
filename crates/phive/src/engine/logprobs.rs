//! Log-probabilities of chosen tokens and their most likely alternatives, as OpenAI's
//! `logprobs` / `top_logprobs` report them (from the model's distribution before sampling
//! adjustments, as vLLM does).

/// A token with its log-probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TopLogprob {
    /// Token id.
    pub token_id: u32,
    /// The token's text.
    pub token: String,
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
    let entry = |id: u32| TopLogprob {
        token_id: id,
        token: token_text(tokenizer, context, id),
        logprob: logits[id as usize] - log_sum,
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
