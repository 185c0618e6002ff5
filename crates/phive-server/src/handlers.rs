//! Route handlers: parse and validate, fetch media off the runtime, prepare the prompt on a
//! blocking thread, submit to the engine, then answer in one piece or as a stream.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use phive::api::{
    finish_reason, ApiError, ChatCompletionRequest, ChatCompletionResponse, ChatInput, ChatResponseBuilder,
    CompletionChoice, CompletionRequest, CompletionResponse, Delivery, ErrorKind, ErrorResponse,
    LegacyLogprobs, ModelCard, ModelList, Timings, Usage,
};
use phive::engine::{Completion, Event, RequestHandle};
use phive::pipeline::PreparedPrompt;
use phive::prompt::MediaKind;

use crate::body::RequestBody;
use crate::error::{ended_early, json_response, parse_json, HttpError};
use crate::stream::{sse_response, Accounting, ChatFormat, CompletionFormat};
use crate::AppState;

type AppResult<T> = Result<T, HttpError>;

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A random id after `prefix` (`chatcmpl-`, `resp_`...).
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}{:024x}", rand::random::<u128>() >> 32)
}

pub(crate) fn join_error(e: tokio::task::JoinError) -> HttpError {
    HttpError(
        ApiError::new(ErrorKind::Internal, format!("a worker task failed: {e}")).with_code("internal_error"),
    )
}

pub(crate) fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
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
pub(crate) async fn collect(
    state: &AppState,
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
        return Err(HttpError(ended_early(state.engine()).await));
    }
    done.sort_by_key(|(choice, _)| *choice);
    Ok(done.into_iter().map(|(_, c)| c).collect())
}

/// `POST /v1/chat/completions`.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion (JSON), or its chunks as server-sent events when `stream` is true",
            content((ChatCompletionResponse = "application/json"), (String = "text/event-stream"))),
        (status = "4XX", description = "An invalid request", body = ErrorResponse),
        (status = "5XX", description = "Busy (503, retry), a stopped engine (503) or a bug (500)", body = ErrorResponse),
    ))]
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let started = Instant::now();
    let id = new_id("chatcmpl-");
    chat(state, headers, body, started, id.clone()).await.unwrap_or_else(|e| e.respond(&id))
}

async fn chat(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: RequestBody,
    started: Instant,
    id: String,
) -> AppResult<Response> {
    let request: ChatCompletionRequest = parse_json(&headers, &body.0)?;
    check_model(&state, request.model.as_deref())?;
    let input = request.into_chat(&state.config().limits)?;
    let (handle, delivery, mut accounting) =
        submit_chat(&state, input, "/v1/chat/completions", started).await?;
    let builder = ChatResponseBuilder {
        id,
        created: now(),
        model: state.config().served_model_name.clone(),
        logprobs: delivery.logprobs,
    };
    if delivery.stream {
        let format = ChatFormat(builder);
        return Ok(sse_response(handle, format, delivery.n, delivery.include_usage, accounting));
    }
    let completions = collect(&state, handle, delivery.n, &mut accounting).await?;
    let response = builder.response(&completions, Usage::from_completions(&completions, started.elapsed()));
    Ok(json_response(StatusCode::OK, &response))
}

/// Fetches a chat's media and prepares its prompt on a blocking thread, then submits it; the
/// chat and Responses routes share this.
pub(crate) async fn submit_chat(
    state: &Arc<AppState>,
    input: ChatInput,
    route: &'static str,
    started: Instant,
) -> AppResult<(RequestHandle, Delivery, Accounting)> {
    let (prepared, input) = prepare_chat(state, input, true).await?;
    let delivery = input.delivery;
    let mut accounting = Accounting::new(Arc::clone(state), route, started);
    match state.engine().submit(prepared, input.params, delivery.n) {
        Ok(handle) => Ok((handle, delivery, accounting)),
        Err(e) => {
            accounting.finished = true;
            Err(e.into())
        }
    }
}

/// Fetches a chat's media and prepares its prompt on a blocking thread; the input comes back
/// with its tools applied to the generation parameters.
pub(crate) async fn prepare_chat(
    state: &AppState,
    mut input: ChatInput,
    add_generation_prompt: bool,
) -> AppResult<(PreparedPrompt, ChatInput)> {
    let engine = Arc::clone(state.engine());
    let policy = state.config().media.clone();
    let prepare = move || {
        input.prepare_conversation(engine.pipeline(), &policy, add_generation_prompt).map(|p| (p, input))
    };
    Ok(tokio::task::spawn_blocking(prepare).await.map_err(join_error)??)
}

/// `POST /v1/completions`: the prompt is used as is (no chat template).
#[utoipa::path(post, path = "/v1/completions", tag = "openai",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion (JSON), or its chunks as server-sent events when `stream` is true",
            content((CompletionResponse = "application/json"), (String = "text/event-stream"))),
        (status = "4XX", description = "An invalid request", body = ErrorResponse),
        (status = "5XX", description = "Busy (503, retry), a stopped engine (503) or a bug (500)", body = ErrorResponse),
    ))]
pub async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let started = Instant::now();
    let id = new_id("cmpl-");
    complete(state, headers, body, started, id.clone()).await.unwrap_or_else(|e| e.respond(&id))
}

async fn complete(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: RequestBody,
    started: Instant,
    id: String,
) -> AppResult<Response> {
    let request: CompletionRequest = parse_json(&headers, &body.0)?;
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
    let model = state.config().served_model_name.clone();
    if delivery.stream {
        let format =
            CompletionFormat { id, created: now(), model, logprobs: delivery.logprobs, offsets: Vec::new() };
        return Ok(sse_response(handle, format, delivery.n, delivery.include_usage, accounting));
    }
    let completions = collect(&state, handle, delivery.n, &mut accounting).await?;
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
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses(
        (status = 200, description = "The served model", body = ModelList),
        (status = 401, description = "A missing or wrong API key", body = ErrorResponse),
    ))]
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

/// The `/health` body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, or `unhealthy` once the engine loop has stopped.
    status: String,
    /// The served model id.
    model: String,
    /// Requests waiting to start.
    queued: usize,
    /// Requests generating.
    active: usize,
}

/// `GET /health`: 200 while the engine loop runs; 503 once it died (restart the process).
#[utoipa::path(get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "Serving", body = Health),
        (status = 503, description = "The engine loop has stopped: restart the server", body = Health),
    ))]
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.engine().stats();
    let alive = state.engine().is_alive();
    let health = Health {
        status: if alive { "ok" } else { "unhealthy" }.to_string(),
        model: state.config().served_model_name.clone(),
        queued: stats.queued,
        active: stats.active,
    };
    json_response(if alive { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &health)
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus exposition text", body = String, content_type = "text/plain"),
        (status = 401, description = "A missing or wrong API key (unless --public-metrics)", body = ErrorResponse),
    ))]
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
        "/v1/chat/completions" | "/v1/completions" | "/v1/responses" | "/tokenize" | "/detokenize" => "POST",
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
