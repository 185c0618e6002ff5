//! The serving engine: one loop owns every running sequence and steps them together
//! (continuous batching, chunked prefill, paged KV memory); per choice it samples, stops and
//! detokenizes.
//!
//! `service` is the loop and its public handle, `config` its settings, `scheduler` decides each
//! step, `blocks` owns the KV block ids and the prefix cache's index, `prefix` hashes blocks by
//! content, `runner` runs a step on the model, `sequence` and `generation` hold one choice's
//! state, `encoder` and `media_cache` encode images and audio beside the loop, `stats` what the
//! loop reports, `inbox` carries messages to the loop, `health` contains panics and tracks the
//! loop's liveness, `grammar` compiles structured-output grammars and `constraint` walks one per
//! choice.

mod blocks;
pub mod config;
mod constraint;
pub mod detokenizer;
mod encoder;
pub mod generation;
mod grammar;
mod health;
mod inbox;
pub mod logprobs;
mod media_cache;
mod prefix;
mod runner;
pub mod sampler;
mod scheduler;
mod sequence;
pub mod service;
pub mod stats;
pub mod stop;
mod vocab;

pub use config::{EngineConfig, KvCacheDtype, DEFAULT_MEDIA_CACHE_BYTES, DEFAULT_SOLO_PREFILL_CHUNK};
pub use detokenizer::IncrementalDetokenizer;
pub use generation::{
    check_lengths, Advance, Completion, Delta, FinishReason, Generation, GenerationParams, Scores,
    ToolCallSyntax, Usage,
};
pub use grammar::{with_layout, Grammar};
pub use logprobs::{TokenLogprob, TopLogprob};
pub use sampler::{Sampler, SamplingParams};
pub use service::{Engine, Event, RequestHandle};
pub use stats::{EngineStats, Histogram};
pub use stop::{StopMatch, StopStrings};
