//! The error type every public phive API returns.
//!
//! Each variant is a distinct class of failure so front ends can map it (an HTTP status, a
//! Python exception) without parsing messages.

use std::path::PathBuf;

/// Errors from loading, preprocessing and generation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A checkpoint file is missing, unreadable or malformed.
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// The model could not be found locally or on the Hub.
    #[error("{0}")]
    ModelNotFound(String),
    /// `config.json` names an architecture phive does not implement.
    #[error("unsupported architecture {found:?} in {path}; phive supports {supported}")]
    UnsupportedArchitecture { found: String, path: PathBuf, supported: String },
    /// The request is invalid (bad tags, too many images, prompt too long, bad sampling values...).
    #[error("{0}")]
    InvalidRequest(String),
    /// An image or audio input could not be fetched or decoded.
    #[error("{0}")]
    Media(String),
    /// The requested device cannot be used (no CUDA in this build, no GPU, no driver).
    #[error("{0}")]
    Device(String),
    /// A tensor operation failed. This indicates a bug or an inconsistent checkpoint.
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Tokenizer failure.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The engine's queue is full; the request was not accepted (retry later).
    #[error("the server is busy: {0}")]
    QueueFull(String),
    /// The engine loop has stopped (it panicked); nothing more can be served.
    #[error("the engine has stopped: {0}")]
    EngineStopped(String),
    /// A bug caught while handling one request (a panic); the request fails, the server lives.
    #[error("internal error: {0}")]
    Internal(String),
    /// Chat template rendering failure.
    #[error("chat template error: {0}")]
    Template(String),
}

/// Shorthand for `Result<T, phive::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A checkpoint error naming the offending file.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), message: message.into() }
    }
}
