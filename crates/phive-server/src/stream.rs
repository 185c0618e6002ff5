//! Server-sent events exactly as OpenAI sends them: `data: {chunk}\n\n` per chunk, the role
//! first, content deltas, one final chunk per choice with its `finish_reason`, the usage chunk
//! (`choices: []`) when asked for, then `data: [DONE]`. The Responses API's typed events
//! (module `responses`) go through the same stream. Errors after the stream started go
//! in-band as `data: {"error": {...}}`, which OpenAI's clients raise as an error.
//!
//! The stream owns the engine's `RequestHandle`: when the client disconnects, hyper drops the
//! body, the handle goes with it, and the engine stops generating at the next token.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use phive::api::{
    finish_reason, ApiError, ChatResponseBuilder, CompletionChoice, CompletionResponse, LegacyLogprobs,
    Timings, Usage,
};
use phive::engine::{Completion, Delta, Event, RequestHandle};

use crate::error::{ended_early, log_failure};

use crate::AppState;

/// Builds the framed events of one kind of stream (chat, text completion, Responses).
pub(crate) trait ChunkFormat: Send + 'static {
    /// Events sent before any generated text.
    fn start(&mut self, n: usize) -> Vec<Bytes>;
    /// An event for new text of `choice`, or `None` when there is nothing to send.
    fn delta(&mut self, choice: usize, delta: &Delta) -> Option<Bytes>;
    /// The final events of `choice`.
    fn done(&mut self, choice: usize, completion: &Completion) -> Vec<Bytes>;
    /// The usage event for every choice's completion, in choice order.
    fn usage(&mut self, completions: &[Completion], usage: Usage) -> Bytes;
    /// The response id (named in logs).
    fn id(&self) -> &str;
    /// The event after the last one: OpenAI's chat and text completions end with `[DONE]`.
    fn end(&self) -> Option<Bytes> {
        Some(data("[DONE]"))
    }
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":{{\"message\":\"cannot serialize a chunk: {e}\",\"type\":\"server_error\",\"param\":null,\"code\":null}}}}"))
}

/// Chunks of `chat.completion.chunk`, built by phive's shared [`ChatResponseBuilder`].
pub(crate) struct ChatFormat(pub ChatResponseBuilder);

impl ChunkFormat for ChatFormat {
    fn start(&mut self, n: usize) -> Vec<Bytes> {
        (0..n).map(|index| data(&to_json(&self.0.role_chunk(index)))).collect()
    }

    fn delta(&mut self, choice: usize, delta: &Delta) -> Option<Bytes> {
        self.0.delta_chunk(choice, delta).map(|chunk| data(&to_json(&chunk)))
    }

    fn done(&mut self, choice: usize, completion: &Completion) -> Vec<Bytes> {
        vec![data(&to_json(&self.0.finish_chunk(choice, completion)))]
    }

    fn usage(&mut self, completions: &[Completion], usage: Usage) -> Bytes {
        data(&to_json(&self.0.usage_chunk(completions, usage)))
    }

    fn id(&self) -> &str {
        &self.0.id
    }
}

/// Chunks of `text_completion`.
pub(crate) struct CompletionFormat {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub logprobs: bool,
    /// Characters sent so far per choice (for legacy `text_offset`).
    pub offsets: Vec<usize>,
}

impl CompletionFormat {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>, timings: Option<Timings>) -> Bytes {
        data(&to_json(&CompletionResponse {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            timings,
        }))
    }
}

impl ChunkFormat for CompletionFormat {
    fn id(&self) -> &str {
        &self.id
    }

    fn start(&mut self, n: usize) -> Vec<Bytes> {
        self.offsets = vec![0; n];
        Vec::new()
    }

    fn delta(&mut self, choice: usize, delta: &Delta) -> Option<Bytes> {
        if delta.text.is_empty() && delta.logprobs.is_empty() {
            return None;
        }
        let offset = self.offsets.get(choice).copied().unwrap_or(0);
        let logprobs = self.logprobs.then(|| LegacyLogprobs::from_engine(&delta.logprobs, offset));
        if let Some(o) = self.offsets.get_mut(choice) {
            *o += delta.text.chars().count();
        }
        let text = delta.text.clone();
        Some(self.chunk(
            vec![CompletionChoice { text, index: choice, logprobs, finish_reason: None }],
            None,
            None,
        ))
    }

    fn done(&mut self, choice: usize, completion: &Completion) -> Vec<Bytes> {
        let reason = Some(finish_reason(completion.finish_reason).to_string());
        vec![self.chunk(
            vec![CompletionChoice {
                text: String::new(),
                index: choice,
                logprobs: None,
                finish_reason: reason,
            }],
            None,
            None,
        )]
    }

    fn usage(&mut self, completions: &[Completion], usage: Usage) -> Bytes {
        self.chunk(Vec::new(), Some(usage), completions.first().map(|c| Timings::from_usage(&c.usage)))
    }
}

/// Per-request accounting shared by streamed and non-streamed answers.
pub(crate) struct Accounting {
    pub state: Arc<AppState>,
    pub route: &'static str,
    /// When the request arrived.
    pub started: Instant,
    /// From arrival to submission (media fetching, preprocessing).
    pub before_submit: Duration,
    /// Whether the prompt's tokens were counted (once for all choices).
    prompt_counted: bool,
    pub finished: bool,
}

impl Accounting {
    pub fn new(state: Arc<AppState>, route: &'static str, started: Instant) -> Self {
        Accounting {
            state,
            route,
            before_submit: started.elapsed(),
            started,
            prompt_counted: false,
            finished: false,
        }
    }

    /// Records a finished choice.
    pub fn on_done(&mut self, completion: &Completion) {
        let metrics = self.state.metrics();
        if !self.prompt_counted {
            self.prompt_counted = true;
            metrics.add_prompt_tokens(completion.usage.prompt_tokens);
            if completion.usage.completion_tokens > 0 {
                metrics.observe_ttft(self.before_submit + completion.usage.time_to_first_token);
            }
        }
        metrics.add_generated_tokens(completion.usage.completion_tokens);
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        if !self.finished {
            self.state.metrics().add_disconnect();
        }
    }
}

struct EventStream<F: ChunkFormat> {
    handle: Option<RequestHandle>,
    format: F,
    pending: VecDeque<Bytes>,
    n: usize,
    /// Finished choices with their index, for the usage chunk.
    done: Vec<(usize, Completion)>,
    include_usage: bool,
    accounting: Accounting,
}

/// An unnamed event.
pub(crate) fn data(payload: &str) -> Bytes {
    Bytes::from(format!("data: {payload}\n\n"))
}

/// An event named `event` (the Responses API names each event after its `type`).
pub(crate) fn named(event: &str, payload: &str) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {payload}\n\n"))
}

impl<F: ChunkFormat> EventStream<F> {
    fn finish(&mut self) {
        self.accounting.finished = true;
        self.handle = None;
        self.accounting
            .state
            .metrics()
            .observe_latency(self.accounting.route, self.accounting.started.elapsed());
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Delta { choice, delta } => {
                if let Some(event) = self.format.delta(choice, &delta) {
                    self.pending.push_back(event);
                }
            }
            Event::Done { choice, completion } => {
                self.accounting.on_done(&completion);
                self.pending.extend(self.format.done(choice, &completion));
                self.done.push((choice, completion));
                if self.done.len() == self.n {
                    if self.include_usage {
                        self.done.sort_by_key(|(choice, _)| *choice);
                        let completions: Vec<Completion> =
                            std::mem::take(&mut self.done).into_iter().map(|(_, c)| c).collect();
                        let usage = Usage::from_completions(&completions, self.accounting.started.elapsed());
                        let event = self.format.usage(&completions, usage);
                        self.pending.push_back(event);
                    }
                    self.pending.extend(self.format.end());
                    self.finish();
                }
            }
            Event::Error(e) => self.fail(ApiError::from(e)),
        }
    }

    /// Ends the stream with an in-band error, logged with the response id.
    fn fail(&mut self, error: ApiError) {
        log_failure(self.format.id(), &error);
        self.pending.push_back(data(&to_json(&error.body())));
        self.finish();
    }

    async fn next_bytes(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Some(bytes);
            }
            let handle = self.handle.as_mut()?;
            match handle.next().await {
                Some(event) => self.on_event(event),
                None => {
                    let error = ended_early(self.accounting.state.engine()).await;
                    self.fail(error);
                }
            }
        }
    }
}

/// An SSE response for a submitted request.
pub(crate) fn sse_response<F: ChunkFormat>(
    handle: RequestHandle,
    mut format: F,
    n: usize,
    include_usage: bool,
    accounting: Accounting,
) -> Response {
    let pending = format.start(n).into();
    let stream =
        EventStream { handle: Some(handle), format, pending, n, done: Vec::new(), include_usage, accounting };
    let body = futures::stream::unfold(stream, |mut s| async move {
        s.next_bytes().await.map(|bytes| (Ok::<_, Infallible>(bytes), s))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
