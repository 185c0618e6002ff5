//! OpenAI's error object and the one place `phive::Error` becomes a client-facing error.
//!
//! Every front end reports failures through [`ApiError`], so the HTTP server, the Python
//! bindings and the SDK agree on which failures are the caller's fault (4xx) and which are
//! ours (5xx, always a bug or a broken checkpoint).

use serde::{Deserialize, Serialize};

use crate::Error;

/// The class of a failure; decides the HTTP status and OpenAI's `type` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A malformed or unsatisfiable request (400).
    InvalidRequest,
    /// A missing or wrong API key (401).
    Unauthorized,
    /// An unknown route or model (404).
    NotFound,
    /// A known route with the wrong HTTP method (405).
    MethodNotAllowed,
    /// The client sent its body too slowly (408).
    RequestTimeout,
    /// The request body exceeds the server's limit (413).
    PayloadTooLarge,
    /// The body is not JSON (415).
    UnsupportedMediaType,
    /// The engine's queue is full; retrying later may succeed (503).
    Overloaded,
    /// Our fault: a bug or an inconsistent checkpoint (500).
    Internal,
    /// The engine loop has stopped; nothing can be served until a restart (503).
    Unavailable,
}

impl ErrorKind {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::Overloaded | ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    /// OpenAI's `error.type`. OpenAI reports unknown models and routes as
    /// `invalid_request_error` too (with a `code` telling them apart).
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::Unauthorized
            | ErrorKind::RequestTimeout
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType => "invalid_request_error",
            ErrorKind::Overloaded => "server_overloaded",
            ErrorKind::Internal | ErrorKind::Unavailable => "server_error",
        }
    }
}

/// A failure to report to a client: what went wrong, which request field it concerns, and a
/// machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Decides status and `type`.
    pub kind: ErrorKind,
    /// Human-readable explanation; names the limit or flag involved when there is one.
    pub message: String,
    /// The request field at fault (`messages[0].content[1]`, `temperature`...).
    pub param: Option<String>,
    /// A stable machine-readable code (`model_not_found`, `invalid_image`...).
    pub code: Option<String>,
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    /// The error object.
    pub error: ErrorObject,
}

/// OpenAI's `Error` schema; all four keys are always present (nullable ones as `null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorObject {
    /// Human-readable explanation.
    pub message: String,
    /// Error class (`invalid_request_error`, `server_error`...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, or null.
    pub param: Option<String>,
    /// Machine-readable code, or null.
    pub code: Option<String>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        ApiError { kind: ErrorKind::InvalidRequest, message: message.into(), param: param.into(), code: None }
    }

    /// An error of `kind` with no param.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { kind, message: message.into(), param: None, code: None }
    }

    /// Sets the machine-readable code.
    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }

    /// Sets the param when none is known yet.
    pub fn or_param(mut self, param: impl Into<String>) -> Self {
        if self.param.is_none() {
            self.param = Some(param.into());
        }
        self
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The response body.
    pub fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: ErrorObject {
                message: self.message.clone(),
                kind: self.kind.error_type().to_string(),
                param: self.param.clone(),
                code: self.code.clone(),
            },
        }
    }
}

/// Request fields whose names start engine validation messages (`"temperature must be..."`),
/// so an engine-side rejection still names its param.
const PARAM_NAMES: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "max_tokens",
    "n",
    "stop",
    "seed",
    "messages",
    "prompt",
    "num_crops",
    "dynamic_hd",
];

/// The central mapping from engine errors to client errors: request and media problems are the
/// caller's (400), a full queue is temporary (503), everything else is ours (500).
impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidRequest(message) => {
                let first = message.split_whitespace().next().unwrap_or_default();
                let param = PARAM_NAMES.iter().find(|p| **p == first).map(|p| p.to_string());
                let param = param.or_else(|| {
                    (message.contains("prompt") || message.contains("image")).then(|| "messages".to_string())
                });
                let code = message.contains("context length").then_some("context_length_exceeded");
                ApiError { kind: ErrorKind::InvalidRequest, message, param, code: code.map(str::to_string) }
            }
            Error::Media(message) => ApiError {
                kind: ErrorKind::InvalidRequest,
                message,
                param: Some("messages".into()),
                code: Some("invalid_image".into()),
            },
            Error::QueueFull(message) => {
                ApiError::new(ErrorKind::Overloaded, message).with_code("server_busy")
            }
            Error::EngineStopped(message) => {
                ApiError::new(ErrorKind::Unavailable, message).with_code("engine_unavailable")
            }
            // Templates raise on conversations they cannot render (e.g. role order): the caller's.
            Error::Template(message) => ApiError::invalid(Some("messages".to_string()), message),
            other => ApiError::new(ErrorKind::Internal, other.to_string()).with_code("internal_error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_engine_errors_to_statuses() {
        let e = ApiError::from(Error::InvalidRequest("temperature must be between 0 and 2".into()));
        assert_eq!((e.status(), e.param.as_deref()), (400, Some("temperature")));
        let e = ApiError::from(Error::InvalidRequest(
            "the prompt is 9 tokens (images included) but the model's context length is 4".into(),
        ));
        assert_eq!((e.status(), e.code.as_deref()), (400, Some("context_length_exceeded")));
        assert_eq!(ApiError::from(Error::Media("bad".into())).status(), 400);
        assert_eq!(ApiError::from(Error::QueueFull("busy".into())).status(), 503);
        assert_eq!(ApiError::from(Error::Tokenizer("x".into())).status(), 500);
        let body = serde_json::to_value(ApiError::invalid(None, "m").body()).unwrap();
        let keys: Vec<_> = body["error"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 4, "{body}");
        assert!(body["error"]["param"].is_null() && body["error"]["code"].is_null());
    }
}
