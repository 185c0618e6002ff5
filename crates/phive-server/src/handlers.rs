//! Route handlers: parse and validate, fetch media off the runtime, prepare the prompt on a
//! blocking thread, submit to the engine, then answer in one piece or as a stream.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use phive::api::{
    finish_reason, ApiError, ChatCompletionRequest, ChatResponseBuilder, CompletionChoice, CompletionRequest,
    CompletionResponse, ErrorKind, LegacyLogprobs, ModelCard, ModelList, Timings, Usage,
};
use phive::engine::{Completion, Event, RequestHandle};
use phive::prompt::MediaKind;

use crate::error::{json_response, parse_json, HttpError};
use crate::stream::{sse_response, Accounting, ChatFormat, CompletionFormat};
use crate::AppState;

type AppResult<T> = Result<T, HttpError>;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}

fn join_error(e: tokio::task::JoinError) -> HttpError {
    HttpError(
        ApiError::new(ErrorKind::Internal, format!("a worker task failed: {e}")).with_code("internal_error"),
    )
}

fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        None => Ok(()),
        Some(m) if state.knows_model(m) => Ok(()),
        Some(m) => Err(ApiError {
            kind: ErrorKind::NotFound,
            message: format!(
                "the model {m:?} does not exist on this server; it serves {:?} (also accepted: \"default\")",
                state.config().served_model_name
            ),
            param: Some("model".into()),
            code: Some("model_not_found".into()),
        }),
    }
}

/// Waits for every choice of a non-streamed request.
async fn collect(
    mut handle: RequestHandle,
    n: usize,
    accounting: &mut Accounting,
) -> AppResult<Vec<Completion>> {
    let mut done = Vec::with_capacity(n);
    while let Some(event) = handle.next().await {
        match event {
            Event::Delta { .. } => {}
            Event::Done { choice, completion } => {
                accounting.on_done(&completion);
                done.push((choice, completion));
            }
            Event::Error(e) => {
                accounting.finished = true;
                return Err(e.into());
            }
        }
    }
    accounting.finished = true;
    if done.len() != n {
        return Err(HttpError(
            ApiError::new(ErrorKind::Internal, "the engine ended the request before every choice finished")
                .with_code("internal_error"),
        ));
    }
    done.sort_by_key(|(choice, _)| *choice);
    Ok(done.into_iter().map(|(_, c)| c).collect())
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    chat(state, headers, body, started).await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    started: Instant,
) -> AppResult<Response> {
    let request: ChatCompletionRequest = parse_json(&headers, body, state.config().max_body_bytes)?;
    check_model(&state, request.model.as_deref())?;
    let input = request.into_chat(&state.config().limits)?;
    let engine = Arc::clone(state.engine());
    let policy = state.config().media.clone();
    let (prepared, input) = tokio::task::spawn_blocking(move || {
        let prepared = input.prepare(engine.pipeline(), &policy);
        prepared.map(|p| (p, input))
    })
    .await
    .map_err(join_error)??;
    let delivery = input.delivery;
    let mut accounting = Accounting::new(Arc::clone(&state), "/v1/chat/completions", started);
    let handle = match state.engine().submit(prepared, input.params, delivery.n) {
        Ok(handle) => handle,
        Err(e) => {
            accounting.finished = true;
            return Err(e.into());
        }
    };
    let builder = ChatResponseBuilder {
        id: new_id("chatcmpl"),
        created: now(),
        model: state.config().served_model_name.clone(),
        logprobs: delivery.logprobs,
    };
    if delivery.stream {
        let format = ChatFormat(builder);
        return Ok(sse_response(handle, format, delivery.n, delivery.include_usage, accounting));
    }
    let completions = collect(handle, delivery.n, &mut accounting).await?;
    let response = builder.response(&completions, Usage::from_completions(&completions, started.elapsed()));
    Ok(json_response(StatusCode::OK, &response))
}

/// `POST /v1/completions`: the prompt is used as is (no chat template).
pub async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    complete(state, headers, body, started).await.unwrap_or_else(IntoResponse::into_response)
}

async fn complete(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    started: Instant,
) -> AppResult<Response> {
    let request: CompletionRequest = parse_json(&headers, body, state.config().max_body_bytes)?;
    check_model(&state, request.model.as_deref())?;
    let input = request.into_text()?;
    if MediaKind::Image.pattern().is_match(&input.prompt) {
        return Err(HttpError(ApiError::invalid(
            Some("prompt".into()),
            "image tags are not supported in /v1/completions; send images through /v1/chat/completions",
        )));
    }
    let engine = Arc::clone(state.engine());
    let text = input.prompt;
    let prepared = tokio::task::spawn_blocking(move || engine.pipeline().prepare_text(&text))
        .await
        .map_err(join_error)??;
    let delivery = input.delivery;
    let mut accounting = Accounting::new(Arc::clone(&state), "/v1/completions", started);
    let handle = match state.engine().submit(prepared, input.params, delivery.n) {
        Ok(handle) => handle,
        Err(e) => {
            accounting.finished = true;
            return Err(e.into());
        }
    };
    let id = new_id("cmpl");
    let model = state.config().served_model_name.clone();
    if delivery.stream {
        let format =
            CompletionFormat { id, created: now(), model, logprobs: delivery.logprobs, offsets: Vec::new() };
        return Ok(sse_response(handle, format, delivery.n, delivery.include_usage, accounting));
    }
    let completions = collect(handle, delivery.n, &mut accounting).await?;
    let timings = completions.first().map(|c| Timings::from_usage(&c.usage));
    let usage = Usage::from_completions(&completions, started.elapsed());
    let choices = completions
        .into_iter()
        .enumerate()
        .map(|(index, c)| CompletionChoice {
            logprobs: delivery.logprobs.then(|| LegacyLogprobs::from_engine(&c.logprobs, 0)),
            text: c.text,
            index,
            finish_reason: Some(finish_reason(c.finish_reason).to_string()),
        })
        .collect();
    let response = CompletionResponse {
        id,
        object: "text_completion".into(),
        created: now(),
        model,
        choices,
        usage: Some(usage),
        timings,
    };
    Ok(json_response(StatusCode::OK, &response))
}

/// `GET /v1/models`.
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    let card = ModelCard {
        id: state.config().served_model_name.clone(),
        object: "model".into(),
        created: state.created,
        owned_by: "phive".into(),
    };
    json_response(StatusCode::OK, &ModelList { object: "list".into(), data: vec![card] })
}

/// `GET /v1/phive/info`: what the chat page (or any client) needs to know beyond `/v1/models`:
/// which inputs the loaded model takes and the request limits.
pub async fn info(State(state): State<Arc<AppState>>) -> Response {
    let pipeline = state.engine().pipeline();
    let config = state.config();
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "model": config.served_model_name,
            "architecture": pipeline.architecture().name(),
            "audio": pipeline.accepts_audio(),
            "context_length": pipeline.context_length(),
            "max_images": config.limits.max_images,
            "max_body_bytes": config.max_body_bytes,
            "max_image_bytes": config.media.max_bytes,
        }),
    )
}

/// `GET /health`: the model is loaded and the server answers.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.engine().stats();
    json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "ok", "model": state.config().served_model_name, "queued": stats.queued, "active": stats.active}),
    )
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics().render(&state.engine().stats());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))],
        text,
    )
        .into_response()
}

/// Unknown routes: OpenAI's 404 body instead of an empty response.
pub async fn not_found(method: Method, uri: Uri) -> Response {
    HttpError(
        ApiError::new(ErrorKind::NotFound, format!("unknown route {method} {}", uri.path()))
            .with_code("unknown_url"),
    )
    .into_response()
}

/// Known routes with the wrong method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let allowed = match uri.path() {
        "/v1/chat/completions" | "/v1/completions" => "POST",
        _ => "GET",
    };
    let mut response = HttpError(
        ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!("{method} is not allowed on {}; use {allowed}", uri.path()),
        )
        .with_code("method_not_allowed"),
    )
    .into_response();
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
    response
}
