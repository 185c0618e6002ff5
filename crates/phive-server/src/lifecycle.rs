//! Health an orchestrator can trust, and draining on shutdown.
//!
//! `/health/live` answers while the process can still serve (its engine loop runs);
//! `/health/ready` also turns false the moment a drain begins, so a load balancer or
//! Kubernetes stops sending traffic before the process goes away. While draining, new
//! generation requests are refused with a 503 in OpenAI's shape (safe to retry elsewhere:
//! nothing was started), and requests already admitted — streams included — run to the end,
//! which [`Lifecycle::drained`] waits for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use phive::api::{ApiError, ErrorKind};
use tokio::sync::watch;

use crate::error::{json_response, HttpError};
use crate::AppState;

/// The routes that start generation: refused while draining, and waited for.
const GENERATION_ROUTES: &[&str] = &["/v1/chat/completions", "/v1/completions", "/v1/responses"];

/// Whether the server is draining, and how many generation requests are in flight.
#[derive(Debug)]
pub struct Lifecycle {
    draining: AtomicBool,
    in_flight: watch::Sender<usize>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle { draining: AtomicBool::new(false), in_flight: watch::Sender::new(0) }
    }
}

impl Lifecycle {
    /// Starts the drain: readiness turns false and new generation requests are refused.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether a drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Generation requests admitted and not finished (streams count until their last byte).
    pub fn in_flight(&self) -> usize {
        *self.in_flight.borrow()
    }

    /// Resolves once no generation request is in flight.
    pub async fn drained(&self) {
        let mut receiver = self.in_flight.subscribe();
        let _ = receiver.wait_for(|n| *n == 0).await;
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.send_modify(|n| *n += 1);
        InFlight(Arc::clone(self))
    }
}

/// One admitted generation request; dropping it (when the response body is gone) ends it.
struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

/// Admits generation requests unless draining, and keeps each one counted until its response
/// body has been sent (or dropped with a client that went away).
pub async fn admit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if !GENERATION_ROUTES.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    // Counted before the check, so a drain that begins now waits for this request or
    // refuses it: never neither.
    let guard = state.lifecycle.enter();
    if state.lifecycle.is_draining() {
        drop(guard);
        let error = ApiError::new(
            ErrorKind::Overloaded,
            "this server is shutting down and accepts no new requests; retry on another replica",
        )
        .with_code("shutting_down");
        let mut response = HttpError(error).into_response();
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let response = next.run(request).await;
    if response.body().size_hint().exact().is_some() {
        // A complete JSON body: the request is over.
        return response;
    }
    response.map(|body| {
        Body::from_stream(body.into_data_stream().map(move |chunk| {
            let _counted = &guard;
            chunk
        }))
    })
}

/// `GET /health/live`: 200 while the engine loop runs. A stopped loop never recovers, so an
/// orchestrator should restart the process.
pub async fn live(State(state): State<Arc<AppState>>) -> Response {
    if state.engine().is_alive() {
        json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
    } else {
        json_response(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"status": "engine stopped"}))
    }
}

/// `GET /health/ready`: 200 when the model is loaded (always, once the server listens), the
/// engine loop runs and no drain has begun; 503 otherwise, with the reason.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let status = if !state.engine().is_alive() {
        "engine stopped"
    } else if state.lifecycle.is_draining() {
        "draining"
    } else {
        "ready"
    };
    let code = if status == "ready" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": status,
        "model": state.config().served_model_name,
        "in_flight": state.lifecycle.in_flight(),
    });
    json_response(code, &body)
}
