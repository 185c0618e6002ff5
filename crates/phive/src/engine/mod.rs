//! Generation: sampling, stopping, incremental detokenization, and the decode loop.

pub mod detokenizer;
pub mod generate;
pub mod sampler;
pub mod stop;

pub use detokenizer::IncrementalDetokenizer;
pub use generate::{generate, Completion, FinishReason, GenerationParams, SequenceModel, Usage};
pub use sampler::{Sampler, SamplingParams};
pub use stop::{StopMatch, StopStrings};
