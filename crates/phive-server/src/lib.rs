//! phive's OpenAI-compatible HTTP server: `/v1/chat/completions` (with SSE streaming),
//! `/v1/completions`, `/v1/responses` (stateless, module `responses`), `/tokenize` and
//! `/detokenize` (vLLM's, module `tokenize`), `/v1/models`, `/v1/phive/info`, `/health` (with `/health/live` and
//! `/health/ready`), `/metrics`, `/openapi.json` and a chat page at `/` (module `ui`), over a
//! shared [`Engine`](phive::engine::Engine).
//!
//! The server is a thin translation layer: request validation lives in [`phive::api`], media
//! fetching in [`phive::media`] (run on blocking threads, never on the async runtime), and
//! generation in the engine. What lives here is HTTP: status codes, the error body, the SSE
//! framing, client-disconnect cancellation, metrics, API keys, connection limits, health and
//! draining on shutdown.

pub mod auth;
mod body;
pub mod connections;
mod error;
mod handlers;
mod lifecycle;
pub mod metrics;
pub mod openapi;
mod responses;
mod stream;
mod tokenize;
pub mod ui;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use phive::api::RequestLimits;
use phive::engine::Engine;
use phive::media::MediaPolicy;

pub use auth::{ApiKeys, RequireApiKey};
pub use connections::ConnectionLimits;
pub use error::HttpError;
pub use lifecycle::Lifecycle;
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
    /// Time a client has to send a request's body, from the end of its headers.
    pub body_read_timeout: Duration,
    /// Open connections and the header deadline.
    pub connections: ConnectionLimits,
    /// Keys `/v1/*`, `/tokenize` and `/detokenize` require (none: open).
    pub api_keys: ApiKeys,
    /// Whether `/metrics` is open even when API keys are set.
    pub public_metrics: bool,
    /// Whether `/` and `/ui` serve the chat page.
    pub ui: bool,
}

impl ServerConfig {
    /// Safe defaults for `served_model_name`: no local files, no private URLs, 8 images,
    /// 64 MiB bodies read within 60 s, 512 connections, no API keys, the chat page on.
    pub fn new(served_model_name: impl Into<String>) -> Self {
        ServerConfig {
            served_model_name: served_model_name.into(),
            model_aliases: Vec::new(),
            media: MediaPolicy::server(),
            limits: RequestLimits::default(),
            max_body_bytes: 64 * 1024 * 1024,
            body_read_timeout: Duration::from_secs(60),
            connections: ConnectionLimits::default(),
            api_keys: ApiKeys::default(),
            public_metrics: false,
            ui: true,
        }
    }
}

/// What every handler shares.
pub struct AppState {
    engine: Arc<Engine>,
    config: ServerConfig,
    metrics: Metrics,
    lifecycle: Arc<Lifecycle>,
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

    /// Draining state and the generation requests in flight.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
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
        let lifecycle = Arc::default();
        Server {
            state: Arc::new(AppState { engine, config, metrics: Metrics::default(), lifecycle, created }),
        }
    }

    /// The shared state (engine, metrics), e.g. for tests and embedding.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The axum router with every route, the JSON fallbacks and the metrics middleware.
    /// `/v1/*`, `/tokenize` and `/detokenize` (they reveal the model), and `/metrics` unless
    /// `public_metrics`, require an API key when keys are set;
    /// `/health` (for orchestrators) and `/openapi.json` are always open.
    pub fn router(&self) -> Router {
        let state = Arc::clone(&self.state);
        let config = &self.state.config;
        let keys = config.api_keys.layer();
        let api = Router::new()
            .route("/v1/chat/completions", post(handlers::chat_completions))
            .route("/v1/completions", post(handlers::completions))
            .route("/v1/responses", post(responses::responses))
            .route("/tokenize", post(tokenize::tokenize))
            .route("/detokenize", post(tokenize::detokenize))
            .route("/v1/models", get(handlers::models))
            .route("/v1/phive/info", get(handlers::info))
            .route_layer(keys.clone());
        let mut metrics = Router::new().route("/metrics", get(handlers::metrics));
        if !config.public_metrics {
            metrics = metrics.route_layer(keys);
        }
        let page = if config.ui { ui::routes() } else { Router::new() };
        let spec = openapi::json(config.api_keys.is_enabled(), config.public_metrics);
        api.merge(metrics)
            .merge(page)
            .route("/health", get(handlers::health))
            .route("/health/live", get(lifecycle::live))
            .route("/health/ready", get(lifecycle::ready))
            .route("/openapi.json", get(move || std::future::ready(spec.clone())))
            .fallback(handlers::not_found)
            .method_not_allowed_fallback(handlers::method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), lifecycle::admit))
            .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), reject_oversized))
            .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), track))
            .with_state(state)
    }

    /// Serves on `listener` until `shutdown` resolves, then drains: readiness turns false,
    /// new generation requests get 503 (the listener stays open so they are refused, not
    /// reset), and admitted ones finish for at most `shutdown_timeout`. Then the listener
    /// closes; requests still running are dropped, which cancels their generation.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        shutdown_timeout: Duration,
    ) -> std::io::Result<()> {
        let lifecycle = Arc::clone(&self.state.lifecycle);
        // Draining keeps the listener open: new requests get a 503 while those in flight finish.
        let drain = async move {
            shutdown.await;
            lifecycle.start_draining();
            tracing::info!(
                "draining: not ready, refusing new requests; waiting up to {:.0}s for {} in flight",
                shutdown_timeout.as_secs_f64(),
                lifecycle.in_flight()
            );
            if tokio::time::timeout(shutdown_timeout, lifecycle.drained()).await.is_err() {
                tracing::warn!(
                    "shutdown timeout reached; dropping {} requests in flight",
                    lifecycle.in_flight()
                );
            }
        };
        // Once drained, idle keep-alive connections close at once; a request that outlived the
        // deadline gets a moment and is then dropped.
        let limits = self.state.config.connections.clone();
        connections::serve(listener, self.router(), &limits, drain, CLOSE_GRACE).await;
        Ok(())
    }
}

/// How long connections get to close after the drain.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

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
        let error = body::too_large(limit);
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
