//! The Responses API's `response` object, shaped as OpenAI's clients parse it: one assistant
//! message with one `output_text` part, the usage, and the request's settings echoed.

use std::collections::BTreeMap;

use phive::api::{ResponsesRequest, TextConfig, Usage};
use phive::engine::{Completion, FinishReason};
use serde::Serialize;
use serde_json::{json, Value};

/// `output_text` content of the assistant message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OutputText {
    /// Always `output_text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The generated text.
    pub text: String,
    /// Always empty (phive cites nothing).
    #[schema(value_type = Vec<Object>)]
    pub annotations: Vec<Value>,
}

impl OutputText {
    /// A part holding `text`.
    pub fn new(text: String) -> Self {
        OutputText { kind: "output_text", text, annotations: Vec::new() }
    }
}

/// The assistant message, the one output item phive produces.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OutputMessage {
    /// Always `message`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `msg_...`.
    pub id: String,
    /// `in_progress`, `completed`, or `incomplete` (the length limit was hit).
    pub status: &'static str,
    /// Always `assistant`.
    pub role: &'static str,
    /// Empty while in progress, then one `output_text` part.
    pub content: Vec<OutputText>,
}

/// `incomplete_details`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IncompleteDetails {
    /// Always `max_output_tokens` (the token limit or the context length was reached).
    pub reason: &'static str,
}

/// `usage.input_tokens_details`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InputTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

/// `usage.output_tokens_details`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OutputTokensDetails {
    /// Always 0: Phi models do not reason separately.
    pub reasoning_tokens: usize,
}

/// `usage` of a response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ResponseUsage {
    /// Prompt positions (media placeholders included).
    pub input_tokens: usize,
    /// Cached prompt tokens.
    pub input_tokens_details: InputTokensDetails,
    /// Generated tokens.
    pub output_tokens: usize,
    /// Reasoning tokens.
    pub output_tokens_details: OutputTokensDetails,
    /// The sum of both.
    pub total_tokens: usize,
}

impl From<Usage> for ResponseUsage {
    fn from(usage: Usage) -> Self {
        ResponseUsage {
            input_tokens: usage.prompt_tokens,
            input_tokens_details: InputTokensDetails {
                cached_tokens: usage.prompt_tokens_details.cached_tokens,
            },
            output_tokens: usage.completion_tokens,
            output_tokens_details: OutputTokensDetails { reasoning_tokens: 0 },
            total_tokens: usage.total_tokens,
        }
    }
}

/// OpenAI's `response` object.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ResponseObject {
    /// `resp_...`.
    pub id: String,
    /// Always `response`.
    pub object: &'static str,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds, once finished.
    pub completed_at: Option<u64>,
    /// `in_progress`, `completed` or `incomplete`.
    pub status: &'static str,
    /// Always null (failures are HTTP errors).
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    /// Why the response is incomplete.
    pub incomplete_details: Option<IncompleteDetails>,
    /// Echoed.
    pub instructions: Option<String>,
    /// Echoed.
    pub max_output_tokens: Option<u64>,
    /// Echoed (`{}` when absent).
    pub metadata: BTreeMap<String, String>,
    /// The served model id.
    pub model: String,
    /// The assistant message (none while in progress).
    pub output: Vec<OutputMessage>,
    /// Always false: phive calls no tools.
    pub parallel_tool_calls: bool,
    /// Always null: phive stores no responses.
    pub previous_response_id: Option<String>,
    /// Always false: phive stores no responses.
    pub store: bool,
    /// Always false.
    pub background: bool,
    /// Echoed.
    pub temperature: Option<f64>,
    /// Echoed.
    pub top_p: Option<f64>,
    /// Echoed (`{"format": {"type": "text"}}` when absent).
    pub text: TextConfig,
    /// Always `none`.
    pub tool_choice: &'static str,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
    /// Always `disabled`: a prompt over the context length is refused.
    pub truncation: &'static str,
    /// Token counts, once finished.
    pub usage: Option<ResponseUsage>,
    /// Echoed.
    pub user: Option<String>,
}

/// Builds a request's response object in its stages (in progress, finished) with the same
/// ids and echoed settings.
#[derive(Debug, Clone)]
pub struct ResponseBuilder {
    /// `resp_...`.
    pub id: String,
    /// The message's `msg_...`.
    pub message_id: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The served model id.
    pub model: String,
    /// The request, for the echoed fields.
    pub request: ResponsesRequest,
}

impl ResponseBuilder {
    /// The message item with `status` and `content`.
    pub fn message(&self, status: &'static str, content: Vec<OutputText>) -> OutputMessage {
        OutputMessage { kind: "message", id: self.message_id.clone(), status, role: "assistant", content }
    }

    /// The response before any output.
    pub fn in_progress(&self) -> ResponseObject {
        self.object("in_progress", None, Vec::new(), None)
    }

    /// The finished response: `incomplete` when the length limit ended it.
    pub fn finished(&self, completion: &Completion, usage: Usage) -> ResponseObject {
        let status = status(completion);
        let incomplete =
            (status == "incomplete").then_some(IncompleteDetails { reason: "max_output_tokens" });
        let message = self.message(status, vec![OutputText::new(completion.text.clone())]);
        self.object(status, incomplete, vec![message], Some(usage.into()))
    }

    fn object(
        &self,
        status: &'static str,
        incomplete_details: Option<IncompleteDetails>,
        output: Vec<OutputMessage>,
        usage: Option<ResponseUsage>,
    ) -> ResponseObject {
        let request = &self.request;
        let text = request.text.clone().filter(|t| t.format.as_ref().is_some_and(|f| !f.is_null()));
        ResponseObject {
            id: self.id.clone(),
            object: "response",
            created_at: self.created_at,
            completed_at: usage.as_ref().map(|_| crate::handlers::now()),
            status,
            error: None,
            incomplete_details,
            instructions: request.instructions.clone(),
            max_output_tokens: request.max_output_tokens,
            metadata: request.metadata.clone().unwrap_or_default(),
            model: self.model.clone(),
            output,
            parallel_tool_calls: false,
            previous_response_id: None,
            store: false,
            background: false,
            temperature: request.temperature,
            top_p: request.top_p,
            text: text.unwrap_or(TextConfig { format: Some(json!({"type": "text"})), verbosity: None }),
            tool_choice: "none",
            tools: Vec::new(),
            truncation: "disabled",
            usage,
            user: request.user.clone(),
        }
    }
}

/// The status of a finished message and response.
pub fn status(completion: &Completion) -> &'static str {
    match completion.finish_reason {
        FinishReason::Length => "incomplete",
        FinishReason::Stop | FinishReason::Cancelled => "completed",
    }
}
