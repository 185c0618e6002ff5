//! OpenAI-shaped request and response types shared by every front end (HTTP server, Python,
//! Rust SDK), and their translation into phive's [`ChatMessage`](crate::prompt::ChatMessage)s
//! and [`GenerationParams`](crate::engine::GenerationParams).
//!
//! Keeping validation here means every front end rejects the same requests with the same
//! messages, and the HTTP layer only chooses status codes (via [`ApiError::status`]).

mod assemble;
mod error;
mod prepare;
mod request;
mod response;
mod tool_calls;

pub use assemble::ChatResponseBuilder;
pub use error::{ApiError, ErrorKind, ErrorObject, ErrorResponse};
pub use request::{
    history_calls_text, tool_request, ChatCompletionRequest, ChatInput, CompletionRequest, Content,
    ContentPart, Delivery, FunctionDefinition, ImageUrl, Message, MmProcessorKwargs, RequestLimits,
    ResponsesRequest, SamplingFields, StopSpec, StreamOptions, TextConfig, TextInput, Tool, ToolChoice,
    ToolRequest, DEFAULT_COMPLETION_MAX_TOKENS, MAX_LEGACY_LOGPROBS, MAX_N, MAX_STOP, MAX_STOP_LEN,
    MAX_TOP_LOGPROBS,
};
pub use response::{
    finish_reason, AssistantMessage, ChatChoice, ChatCompletionChunk, ChatCompletionResponse, ChoiceLogprobs,
    ChunkChoice, ChunkDelta, CompletionChoice, CompletionResponse, LegacyLogprobs, LogprobEntry, ModelCard,
    ModelList, PromptTokensDetails, Timings, TopLogprobEntry, Usage,
};
pub use tool_calls::{parse_tool_calls, FunctionCall, FunctionCallDelta, ToolCall, ToolCallDelta};
