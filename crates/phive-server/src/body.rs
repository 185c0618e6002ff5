//! Reading a request body whole, within the server's size limit and deadline.
//!
//! A client that sends its body a byte at a time (or stops halfway) would otherwise hold a
//! handler, and its partial body in memory, indefinitely; the deadline counts from the end of
//! the headers to the last byte, so trickling data does not extend it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use phive::api::{ApiError, ErrorKind};

use crate::error::HttpError;
use crate::AppState;

/// A whole request body.
pub struct RequestBody(pub Bytes);

/// Why a body could not be read; the response closes the connection, since the rest of the
/// body may still be on its way.
pub struct BodyError(ApiError);

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        let mut response = HttpError(self.0).into_response();
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// The 413 for a body over `limit` bytes.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorKind::PayloadTooLarge,
        format!("the request body is larger than this server's limit of {limit} bytes (--max-body-bytes)"),
    )
    .with_code("request_too_large")
}

impl FromRequest<Arc<AppState>> for RequestBody {
    type Rejection = BodyError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let limit = state.config().max_body_bytes;
        let timeout = state.config().body_read_timeout;
        let read = async {
            let mut chunks = request.into_body().into_data_stream();
            let mut body = Vec::new();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| {
                    ApiError::invalid(None, format!("cannot read the request body: {e}"))
                        .with_code("invalid_body")
                })?;
                if body.len() + chunk.len() > limit {
                    return Err(too_large(limit));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Bytes::from(body))
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(body)) => Ok(RequestBody(body)),
            Ok(Err(error)) => Err(BodyError(error)),
            Err(_) => Err(BodyError(
                ApiError::new(
                    ErrorKind::RequestTimeout,
                    format!(
                        "the request body did not arrive within {:.0} s (--body-read-timeout)",
                        timeout.as_secs_f64()
                    ),
                )
                .with_code("request_timeout"),
            )),
        }
    }
}
