//! phive's OpenAI-compatible HTTP server: `/v1/chat/completions` (with SSE streaming),
//! `/v1/completions`, `/v1/models`, `/v1/phive/info`, `/health`, `/metrics` and a chat page
//! at `/` (module `ui`), over a shared [`Engine`](phive::engine::Engine).
//!
//! The server is a thin translation layer: request validation lives in [`phive::api`], media
//! fetching in [`phive::media`] (run on blocking threads, never on the async runtime), and
//! generation in the engine. What lives here is HTTP: status codes, the error body, the SSE
//! framing, client-disconnect cancellation, metrics and graceful shutdown.

mod error;
mod handlers;
pub mod metrics;
mod stream;
pub mod ui;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use phive::api::RequestLimits;
use phive::engine::Engine;
use phive::media::MediaPolicy;

pub use error::HttpError;
pub use metrics::Metrics;

/// Server settings (everything but the engine's own limits).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The id `/v1/models` lists and responses carry.
    pub served_model_name: String,
    /// Other names clients may send as `model` (the path or Hub id given at start);
    /// `default` is always accepted.
    pub model_aliases: Vec<String>,
    /// How image references are fetched and decoded.
    pub media: MediaPolicy,
    /// Per-request limits (images per request).
    pub limits: RequestLimits,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Whether `/` and `/ui` serve the chat page.
    pub ui: bool,
}

impl ServerConfig {
    /// Safe defaults for `served_model_name`: no local files, no private URLs, 8 images,
    /// 64 MiB bodies, the chat page on.
    pub fn new(served_model_name: impl Into<String>) -> Self {
        ServerConfig {
            served_model_name: served_model_name.into(),
            model_aliases: Vec::new(),
            media: MediaPolicy::server(),
            limits: RequestLimits::default(),
            max_body_bytes: 64 * 1024 * 1024,
            ui: true,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    engine: Arc<Engine>,
    config: ServerConfig,
    metrics: Metrics,
    created: u64,
}

impl AppState {
    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Whether `model` names the served model.
    fn knows_model(&self, model: &str) -> bool {
        model == "default"
            || model == self.config.served_model_name
            || self.config.model_aliases.iter().any(|a| a == model)
            || model == self.engine.pipeline().source()
    }
}

/// An HTTP server over an engine.
#[derive(Clone)]
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// A server for `engine`.
    pub fn new(engine: Arc<Engine>, config: ServerConfig) -> Self {
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Server { state: Arc::new(AppState { engine, config, metrics: Metrics::default(), created }) }
    }

    /// The shared state (engine, metrics), e.g. for tests and embedding.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The axum router with every route, the JSON fallbacks and the metrics middleware.
    pub fn router(&self) -> Router {
        let state = Arc::clone(&self.state);
        let page = if self.state.config.ui { ui::routes() } else { Router::new() };
        Router::new()
            .route("/v1/chat/completions", post(handlers::chat_completions))
            .route("/v1/completions", post(handlers::completions))
            .route("/v1/models", get(handlers::models))
            .route("/v1/phive/info", get(handlers::info))
            .route("/health", get(handlers::health))
            .route("/metrics", get(handlers::metrics))
            .merge(page)
            .fallback(handlers::not_found)
            .method_not_allowed_fallback(handlers::method_not_allowed)
            .layer(DefaultBodyLimit::max(self.state.config.max_body_bytes))
            .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), reject_oversized))
            .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), track))
            .with_state(state)
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting connections and
    /// lets in-flight requests finish for at most `shutdown_timeout`; requests still running
    /// then are dropped, which cancels their generation.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        shutdown_timeout: Duration,
    ) -> std::io::Result<()> {
        let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
        let signal = async move {
            shutdown.await;
            let _ = stopping_tx.send(true);
        };
        let server = axum::serve(listener, self.router()).with_graceful_shutdown(signal);
        let deadline = async move {
            let _ = stopping_rx.wait_for(|stopping| *stopping).await;
            tracing::info!(
                "shutting down: waiting up to {:.0}s for in-flight requests",
                shutdown_timeout.as_secs_f64()
            );
            tokio::time::sleep(shutdown_timeout).await;
        };
        tokio::select! {
            result = async move { server.await } => result,
            _ = deadline => {
                tracing::warn!("shutdown timeout reached; dropping in-flight requests");
                Ok(())
            }
        }
    }
}

/// Refuses a body whose declared `Content-Length` is over the limit before reading any of it
/// (bodies without a length are cut off by the body-limit layer as they stream in).
async fn reject_oversized(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let limit = state.config.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        let error = phive::api::ApiError::new(
            phive::api::ErrorKind::PayloadTooLarge,
            format!(
                "the request body is larger than this server's limit of {limit} bytes (--max-body-bytes)"
            ),
        )
        .with_code("request_too_large");
        let mut response = axum::response::IntoResponse::into_response(HttpError(error));
        response.headers_mut().insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
}

/// Counts every response by route and status, and times non-streamed ones (streams record
/// their own latency when they end).
async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = metrics::route_label(request.uri().path());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.record_request(route, &method, response.status().as_u16());
    let streaming = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !streaming {
        state.metrics.observe_latency(route, started.elapsed());
    }
    response
}
