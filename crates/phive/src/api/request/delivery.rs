//! How a request wants its answer delivered: number of choices, streaming, usage chunk, logprobs.

use serde::{Deserialize, Serialize};

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    /// Send a final chunk with `usage` (and `choices: []`) before `[DONE]`.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// How a request wants its answer delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery {
    /// Number of choices.
    pub n: usize,
    /// SSE streaming.
    pub stream: bool,
    /// A usage chunk at the end of the stream.
    pub include_usage: bool,
    /// Log-probabilities requested.
    pub logprobs: bool,
}
