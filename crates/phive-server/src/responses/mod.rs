//! `POST /v1/responses`, OpenAI's Responses API without state: the request becomes a chat
//! request (in [`phive::api::ResponsesRequest`]) and runs through the chat route's pipeline;
//! only the answer's shape differs.
//!
//! - [`object`]: the `response` object and its builder.
//! - [`events`]: the typed stream events.

mod events;
pub mod object;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use phive::api::{ApiError, ErrorKind, ErrorResponse, ResponsesRequest, Usage};

use crate::body::RequestBody;
use crate::error::{json_response, parse_json, HttpError};
use crate::handlers::{check_model, collect, new_id, now, submit_chat};
use crate::stream::sse_response;
use crate::AppState;
use events::ResponsesFormat;
use object::{ResponseBuilder, ResponseObject};

/// `POST /v1/responses`.
#[utoipa::path(post, path = "/v1/responses", tag = "openai",
    request_body = ResponsesRequest,
    responses(
        (status = 200, description = "The response (JSON), or its typed events as server-sent events when `stream` is true",
            content((ResponseObject = "application/json"), (String = "text/event-stream"))),
        (status = "4XX", description = "An invalid request, or one that needs stored state (phive stores nothing)", body = ErrorResponse),
        (status = "5XX", description = "Busy (503, retry), a stopped engine (503) or a bug (500)", body = ErrorResponse),
    ))]
pub async fn responses(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let started = Instant::now();
    let id = new_id("resp_");
    respond(state, headers, body, started, id.clone()).await.unwrap_or_else(|e| e.respond(&id))
}

async fn respond(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: RequestBody,
    started: Instant,
    id: String,
) -> Result<Response, HttpError> {
    let request: ResponsesRequest = parse_json(&headers, &body.0)?;
    check_model(&state, request.model.as_deref())?;
    let input = request.into_chat(&state.config().limits)?;
    let (handle, delivery, mut accounting) = submit_chat(&state, input, "/v1/responses", started).await?;
    let builder = ResponseBuilder {
        id,
        message_id: new_id("msg_"),
        created_at: now(),
        model: state.config().served_model_name.clone(),
        request,
    };
    if delivery.stream {
        return Ok(sse_response(handle, ResponsesFormat::new(builder), 1, true, accounting));
    }
    let completions = collect(&state, handle, 1, &mut accounting).await?;
    let usage = Usage::from_completions(&completions, started.elapsed());
    let completion = completions.first().ok_or_else(|| {
        HttpError(ApiError::new(ErrorKind::Internal, "the response finished without its message"))
    })?;
    Ok(json_response(StatusCode::OK, &builder.finished(completion, usage)))
}
