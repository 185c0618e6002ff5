//! Generation: sampling, stopping, incremental detokenization, and the decode loop.

pub mod detokenizer;
pub mod generate;
pub mod logprobs;
pub mod sampler;
pub mod service;
pub mod stop;

pub use detokenizer::IncrementalDetokenizer;
pub use generate::{generate, Completion, Delta, FinishReason, GenerationParams, SequenceModel, Usage};
pub use logprobs::{TokenLogprob, TopLogprob};
pub use sampler::{Sampler, SamplingParams};
pub use service::{Engine, EngineConfig, EngineStats, Event, RequestHandle};
pub use stop::{StopMatch, StopStrings};
