//! OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`) and their translation into
//! phive's messages and generation parameters.
//!
//! Deserialization only checks types (so a wrong type names its field); ranges and combinations
//! are checked in [`ChatCompletionRequest::into_chat`] / [`CompletionRequest::into_text`], which
//! name the offending field in every error. Unknown fields are ignored, as OpenAI does; known
//! OpenAI features phive cannot honour are refused rather than silently ignored.
//!
//! - [`content`]: a message's `content` (string or typed parts) and audio part references.
//! - [`sampling`]: the sampling/length fields both endpoints share, and their validation.
//! - [`delivery`]: how the answer is delivered (choices, streaming, usage chunk).
//! - [`chat`]: the chat completions request and its translation.
//! - [`completion`]: the legacy text completions request and its translation.
//! - [`structured`]: `response_format` and the `grammar` extension (structured output).
//! - [`tools`]: `tools` and `tool_choice`, and how a model is told about them.
//! - [`responses`]: the stateless Responses API request and its translation into a chat request.
//! - [`preprocess`]: the crop-limit extra fields (`num_crops`, `dynamic_hd`).
//! - [`validate`]: small checks that name the offending field.

mod chat;
mod completion;
mod content;
mod delivery;
mod preprocess;
mod responses;
mod sampling;
mod structured;
mod tools;
mod validate;

pub use chat::{ChatCompletionRequest, ChatInput, Message, RequestLimits, MAX_TOP_LOGPROBS};
pub use completion::{CompletionRequest, TextInput, DEFAULT_COMPLETION_MAX_TOKENS, MAX_LEGACY_LOGPROBS};
pub use content::{Content, ContentPart, ImageUrl};
pub use delivery::{Delivery, StreamOptions};
pub use preprocess::MmProcessorKwargs;
pub use responses::{ResponsesRequest, TextConfig};
pub use sampling::{SamplingFields, StopSpec, MAX_N, MAX_STOP, MAX_STOP_LEN};
pub use tools::{history_calls_text, tool_request, FunctionDefinition, Tool, ToolChoice, ToolRequest};
