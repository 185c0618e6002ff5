//! Turning logits into the next token: penalties, temperature, top-k, top-p, min-p, and a
//! seeded random draw (greedy when the temperature is zero).

use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashMap;

use toktrie::SimpleVob;

use super::constraint::mask_logits;
use crate::{Error, Result};

/// Sampling parameters with OpenAI's names and meanings.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// 0 (or unset) is greedy decoding.
    pub temperature: Option<f64>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: Option<f64>,
    /// Keep only the `top_k` most likely tokens.
    pub top_k: Option<usize>,
    /// Drop tokens whose probability is below `min_p` times the most likely token's.
    pub min_p: Option<f64>,
    /// Subtracted from a token's logit once per previous occurrence in the completion.
    pub frequency_penalty: Option<f32>,
    /// Subtracted from a token's logit if it occurred in the completion at all.
    pub presence_penalty: Option<f32>,
    /// Hugging Face's multiplicative penalty over prompt and completion (1.0 is off).
    pub repetition_penalty: Option<f32>,
    /// Seed for reproducible sampling.
    pub seed: Option<u64>,
    /// Added to the logits of these token ids before anything else (OpenAI's `logit_bias`,
    /// -100..=100; ±100 bans or forces a token in practice).
    #[serde(default)]
    pub logit_bias: Vec<(u32, f32)>,
}

impl SamplingParams {
    /// Rejects values outside the ranges OpenAI documents, naming the parameter.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, why: &str| Err(Error::InvalidRequest(format!("{name} {why}")));
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return bad("temperature", "must be between 0 and 2");
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad("top_p", "must be in (0, 1]");
            }
        }
        if self.top_k == Some(0) {
            return bad("top_k", "must be at least 1");
        }
        if let Some(p) = self.min_p {
            if !(0.0..=1.0).contains(&p) {
                return bad("min_p", "must be between 0 and 1");
            }
        }
        for (name, v) in
            [("frequency_penalty", self.frequency_penalty), ("presence_penalty", self.presence_penalty)]
        {
            if let Some(v) = v {
                if !(-2.0..=2.0).contains(&v) {
                    return bad(name, "must be between -2 and 2");
                }
            }
        }
        if let Some(r) = self.repetition_penalty {
            if !(r > 0.0 && r.is_finite()) {
                return bad("repetition_penalty", "must be a positive number");
            }
        }
        if let Some((id, bias)) = self.logit_bias.iter().find(|(_, b)| !(-100.0..=100.0).contains(b)) {
            return bad(
                "logit_bias",
                &format!("values must be between -100 and 100, got {bias} for token {id}"),
            );
        }
        Ok(())
    }

    fn is_greedy(&self) -> bool {
        self.temperature.is_none_or(|t| t < 1e-7)
    }
}

/// Chooses tokens for one sequence; owns its random state so a seed reproduces.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    completion_counts: HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler seeded from `params.seed`, or from the OS when unset.
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Sampler { params, rng, completion_counts: HashMap::new() }
    }

    /// Records a generated token (frequency and presence penalties count completion tokens).
    pub fn observe(&mut self, token: u32) {
        *self.completion_counts.entry(token).or_default() += 1;
    }

    /// Adds the request's `logit_bias` (ids outside `logits` were refused at submission).
    pub fn apply_bias(&self, logits: &mut [f32]) {
        for &(id, bias) in &self.params.logit_bias {
            if let Some(logit) = logits.get_mut(id as usize) {
                *logit += bias;
            }
        }
    }

    /// Whether the request has a `logit_bias`.
    pub fn has_bias(&self) -> bool {
        !self.params.logit_bias.is_empty()
    }

    /// Whether the next token is the raw logits' argmax whatever the context: greedy, with no
    /// bias and no penalty (a grammar is the caller's to check).
    pub fn is_plain_greedy(&self) -> bool {
        let p = &self.params;
        p.is_greedy()
            && !self.has_bias()
            && p.repetition_penalty.is_none_or(|r| r == 1.0)
            && p.frequency_penalty.unwrap_or(0.0) == 0.0
            && p.presence_penalty.unwrap_or(0.0) == 0.0
    }

    /// Picks the next token from `logits` (already biased); `context` is every text token so far
    /// (prompt and completion), which the repetition penalty looks at; tokens outside `allowed`
    /// (a grammar's mask) are never picked.
    pub fn sample(&mut self, logits: &[f32], context: &[u32], allowed: Option<&SimpleVob>) -> u32 {
        let mut logits = logits.to_vec();
        self.apply_penalties(&mut logits, context);
        if let Some(allowed) = allowed {
            mask_logits(&mut logits, allowed);
        }
        if self.params.is_greedy() {
            return argmax(&logits);
        }
        let temperature = self.params.temperature.unwrap_or(1.0) as f32;
        let mut candidates: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, &l)| (i as u32, l / temperature)).collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        if let Some(k) = self.params.top_k {
            candidates.truncate(k.max(1));
        }
        let max = candidates[0].1;
        let mut probs: Vec<f32> = candidates.iter().map(|&(_, l)| (l - max).exp()).collect();
        normalize(&mut probs);
        if let Some(top_p) = self.params.top_p {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|&p| {
                    cumulative += p;
                    cumulative >= top_p as f32
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        if let Some(min_p) = self.params.min_p {
            let threshold = probs[0] * min_p as f32;
            let keep = probs.iter().take_while(|&&p| p >= threshold).count().max(1);
            probs.truncate(keep);
        }
        normalize(&mut probs);
        let draw: f32 = self.rng.random();
        let mut cumulative = 0.0;
        for (i, p) in probs.iter().enumerate() {
            cumulative += p;
            if draw < cumulative {
                return candidates[i].0;
            }
        }
        candidates[probs.len() - 1].0
    }

    fn apply_penalties(&self, logits: &mut [f32], context: &[u32]) {
        if let Some(r) = self.params.repetition_penalty.filter(|&r| r != 1.0) {
            let mut seen = vec![false; logits.len()];
            for &t in context {
                let t = t as usize;
                if t < logits.len() && !seen[t] {
                    seen[t] = true;
                    logits[t] = if logits[t] > 0.0 { logits[t] / r } else { logits[t] * r };
                }
            }
        }
        let frequency = self.params.frequency_penalty.unwrap_or(0.0);
        let presence = self.params.presence_penalty.unwrap_or(0.0);
        if frequency != 0.0 || presence != 0.0 {
            for (&t, &count) in &self.completion_counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= frequency * count as f32 + presence;
                }
            }
        }
    }
}

fn normalize(probs: &mut [f32]) {
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
}

/// Index of the largest logit (the first one on ties, as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams { temperature: Some(1.0), seed: Some(7), ..Default::default() }
    }

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, 2.9], &[], None), 1);
    }

    #[test]
    fn same_seed_same_draws_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams { seed: Some(seed), ..params() });
            (0..40).map(|_| s.sample(&logits, &[], None)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplingParams { top_k: Some(1), ..params() });
        for _ in 0..20 {
            assert_eq!(s.sample(&[1.0, 1.2, 0.5], &[], None), 1);
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // Probabilities ~ [0.66, 0.24, 0.09, 0.01]: top_p 0.5 keeps only the first.
        let logits = [3.0, 2.0, 1.0, -1.0];
        let mut s = Sampler::new(SamplingParams { top_p: Some(0.5), ..params() });
        assert!((0..50).all(|_| s.sample(&logits, &[], None) == 0));
        let mut s = Sampler::new(SamplingParams { min_p: Some(0.3), ..params() });
        assert!((0..200).all(|_| s.sample(&logits, &[], None) <= 1));
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let s = Sampler::new(SamplingParams { repetition_penalty: Some(2.0), ..Default::default() });
        let mut logits = vec![4.0, -1.0, 3.0];
        s.apply_penalties(&mut logits, &[0, 1, 0]);
        assert_eq!(logits, vec![2.0, -2.0, 3.0]);
    }

    #[test]
    fn frequency_and_presence_penalties_change_greedy_choice() {
        let mut s = Sampler::new(SamplingParams { frequency_penalty: Some(0.5), ..Default::default() });
        s.observe(0);
        s.observe(0);
        // 2.0 - 2*0.5 = 1.0 < 1.5
        assert_eq!(s.sample(&[2.0, 1.5], &[], None), 1);
        let mut s = Sampler::new(SamplingParams { presence_penalty: Some(1.0), ..Default::default() });
        s.observe(0);
        assert_eq!(s.sample(&[2.0, 1.5], &[], None), 1);
    }

    #[test]
    fn validation_names_the_parameter() {
        let err = SamplingParams { top_p: Some(0.0), ..Default::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("top_p"));
        let err = SamplingParams { temperature: Some(3.0), ..Default::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("temperature"));
        assert!(SamplingParams::default().validate().is_ok());
    }

    #[test]
    fn a_mask_restricts_greedy_and_sampled_choices() {
        let mut allowed = SimpleVob::alloc(4);
        allowed.allow_token(2);
        allowed.allow_token(3);
        let logits = [5.0, 4.0, 1.0, 0.5];
        assert_eq!(Sampler::new(SamplingParams::default()).sample(&logits, &[], Some(&allowed)), 2);
        let mut s = Sampler::new(params());
        assert!((0..100).all(|_| [2, 3].contains(&s.sample(&logits, &[], Some(&allowed)))));
    }

    #[test]
    fn logit_bias_is_added_and_validated() {
        let s =
            Sampler::new(SamplingParams { logit_bias: vec![(1, 100.0), (0, -5.0)], ..Default::default() });
        let mut logits = vec![1.0, 0.0, 2.0];
        s.apply_bias(&mut logits);
        assert_eq!(logits, vec![-4.0, 100.0, 2.0]);
        let err =
            SamplingParams { logit_bias: vec![(3, 101.0)], ..Default::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("logit_bias"), "{err}");
    }
}
