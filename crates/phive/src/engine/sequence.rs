//! A submitted request and the sequences (one per choice) that answer it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use llguidance::Matcher;

use super::constraint::Constraint;
use super::generation::Generation;
use super::prefix::{BlockHash, Content};
use super::{Event, GenerationParams};
use crate::models::MediaKey;
use crate::pipeline::PreparedPrompt;

/// What every choice of one request shares: the prepared prompt (with its encoded media), the
/// settings, and the channel back to the caller.
pub struct Request {
    /// The prompt and its preprocessed media.
    pub prepared: PreparedPrompt,
    /// Sampling, length and stop settings (choice `i` seeds its sampler with `seed + i`).
    pub params: GenerationParams,
    /// Number of choices (`n`).
    pub choices: usize,
    /// The compiled grammar at its start, copied for each choice (`params.grammar`).
    pub grammar: Option<Matcher>,
    /// The LoRA adapter of every forward pass of this request.
    pub adapter: Option<&'static str>,
    /// When the request arrived (for time to first token).
    pub started: Instant,
    /// Where events go.
    pub events: UnboundedSender<Event>,
    /// Set by the caller's handle to stop the request.
    pub cancel: Arc<AtomicBool>,
}

impl Request {
    /// Whether the caller stopped listening or asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.events.is_closed()
    }

    /// Sends an event; a caller that went away is noticed through [`Request::is_cancelled`].
    pub fn send(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// A fresh walk of the request's grammar for one choice.
    fn constraint(&self) -> Option<Constraint> {
        self.grammar.as_ref().map(|grammar| Constraint::start(grammar.deep_clone()))
    }

    /// The generation parameters of choice `choice`.
    pub fn choice_params(&self, choice: usize) -> GenerationParams {
        let mut params = self.params.clone();
        if let Some(seed) = params.sampling.seed {
            params.sampling.seed = Some(seed.wrapping_add(choice as u64));
        }
        params
    }
}

/// One choice being generated: its tokens, how many of them are in the KV cache, its blocks.
pub struct Sequence {
    /// Arrival order, for first-come-first-served admission and newest-first preemption.
    pub id: u64,
    /// The request it answers.
    pub request: Arc<Request>,
    /// Which choice of the request.
    pub choice: usize,
    /// Prompt ids followed by the generated tokens.
    pub tokens: Vec<u32>,
    /// Positions whose keys and values are in the KV cache; `tokens[computed..]` are still to
    /// be fed (the prompt, a chunk at a time, then one sampled token per step).
    pub computed: usize,
    /// KV blocks covering positions `0..computed` (and what the current step writes).
    pub blocks: Vec<u32>,
    /// Sampler, stop strings, detokenizer and text so far.
    pub generation: Generation,
    /// Choices still to fork from this one once its prompt is prefilled (`n > 1`).
    pub forks_pending: usize,
    /// Content key of each media item of the prompt, set by the encoder.
    pub media_keys: Vec<MediaKey>,
    /// Prefix-cache hashes of the full blocks of `tokens` hashed so far.
    pub block_hashes: Vec<BlockHash>,
    /// Leading blocks registered in the prefix cache (full and computed).
    pub registered: usize,
}

impl Sequence {
    /// The first choice of `request`, carrying the forks of the others.
    pub fn new(id: u64, request: Arc<Request>, context_length: usize) -> Self {
        let prompt = &request.prepared.tokens;
        let generation = Generation::new(
            prompt,
            &request.choice_params(0),
            request.constraint(),
            context_length,
            request.started,
        );
        Sequence {
            id,
            tokens: prompt.ids.clone(),
            computed: 0,
            blocks: Vec::new(),
            generation,
            forks_pending: request.choices - 1,
            media_keys: Vec::new(),
            block_hashes: Vec::new(),
            registered: 0,
            choice: 0,
            request,
        }
    }

    /// Choice `choice` of the same request, sharing this sequence's KV blocks (the caller
    /// counts the extra holder) and starting from the same prefilled prompt.
    pub fn fork(&self, id: u64, choice: usize, context_length: usize) -> Self {
        let request = Arc::clone(&self.request);
        let mut generation = Generation::new(
            &request.prepared.tokens,
            &request.choice_params(choice),
            request.constraint(),
            context_length,
            request.started,
        );
        generation.mark_scheduled(self.generation.cached_tokens());
        Sequence {
            id,
            tokens: self.tokens.clone(),
            computed: self.computed,
            blocks: self.blocks.clone(),
            generation,
            forks_pending: 0,
            media_keys: self.media_keys.clone(),
            block_hashes: self.block_hashes.clone(),
            registered: self.registered,
            choice,
            request,
        }
    }

    /// Length of the prompt.
    pub fn prompt_len(&self) -> usize {
        self.request.prepared.tokens.ids.len()
    }

    /// What its keys and values are computed from, for prefix hashing.
    pub fn content(&self) -> Content<'_> {
        Content {
            tokens: &self.tokens,
            prompt_len: self.prompt_len(),
            adapter: self.request.adapter,
            spans: &self.request.prepared.tokens.media,
            media_keys: &self.media_keys,
        }
    }

    /// Tokens still to feed before the next logits.
    pub fn remaining(&self) -> usize {
        self.tokens.len() - self.computed
    }
}
