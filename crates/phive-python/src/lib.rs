//! `phive._phive`: the native half of phive's Python package.
//!
//! The Python half (`python/phive`) holds the mistral.rs-shaped classes users see (`Runner`,
//! `Which`, `ChatCompletionRequest`, the response objects and the exceptions). This module is a
//! thin layer over [`phive::engine::Engine`]: requests come in as OpenAI-shaped JSON and are
//! validated by [`phive::api::ChatCompletionRequest::into_chat`] (so Python rejects exactly what
//! the HTTP server rejects, with the same messages); responses and stream chunks go out as JSON
//! built from the [`phive::api`] response types.
//!
//! Generation runs on the engine's loop thread. While a caller waits for events the GIL is
//! released, and every [`POLL`] the waiting thread takes the GIL back to run Python's signal
//! handlers: a Ctrl-C (`KeyboardInterrupt`) cancels the request and propagates.

mod engine_config;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use phive::api::{ApiError, ChatCompletionRequest, ChatResponseBuilder, ErrorKind, RequestLimits, Usage};
use phive::checkpoint::Checkpoint;
use phive::engine::{Completion, Engine, EngineConfig, Event, RequestHandle};
use phive::media::MediaPolicy;
use phive::models::PreprocessOptions;
use phive::pipeline::{LoadOptions, Pipeline, PreparedPrompt};
use phive::quant::IsqType;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::Value;
use tokio::runtime::Runtime;

use engine_config::{engine_config, stats_counts, EngineKwargs};

/// How long a waiting thread keeps the GIL released before it checks for signals (Ctrl-C).
const POLL: Duration = Duration::from_millis(50);

/// Most events handed over per wake-up, so a fast generator cannot starve signal checks.
const MAX_BATCH: usize = 256;

/// A failure on its way to Python: the Python exception class (in `phive._errors`) and the
/// client-facing error.
struct Failure {
    class: &'static str,
    error: ApiError,
}

impl Failure {
    /// An invalid-request failure about `param`.
    fn invalid(param: &str, message: impl Into<String>) -> Self {
        Failure { class: "InvalidRequestError", error: ApiError::invalid(Some(param.to_string()), message) }
    }

    /// A bug on our side.
    fn internal(message: impl Into<String>) -> Self {
        Failure {
            class: "InternalError",
            error: ApiError::new(ErrorKind::Internal, message).with_code("internal_error"),
        }
    }

    /// Raises the Python exception. Falls back to `RuntimeError` should `phive._errors` be
    /// missing (the extension imported outside its package).
    fn into_py(self, py: Python<'_>) -> PyErr {
        let Failure { class, error } = self;
        let raised = (|| -> PyResult<PyErr> {
            let cls = py.import("phive._errors")?.getattr(class)?;
            let kwargs = PyDict::new(py);
            kwargs.set_item("param", error.param.as_deref())?;
            kwargs.set_item("code", error.code.as_deref())?;
            let exc = cls.call((error.message.as_str(),), Some(&kwargs))?;
            Ok(PyErr::from_value(exc))
        })();
        raised.unwrap_or_else(|_| PyRuntimeError::new_err(error.message))
    }
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        let class = match error.kind {
            ErrorKind::InvalidRequest | ErrorKind::PayloadTooLarge | ErrorKind::UnsupportedMediaType => {
                if error.code.as_deref() == Some("invalid_image") {
                    "MediaError"
                } else {
                    "InvalidRequestError"
                }
            }
            ErrorKind::NotFound => "ModelNotFoundError",
            ErrorKind::Overloaded => "EngineBusyError",
            ErrorKind::MethodNotAllowed
            | ErrorKind::Unauthorized
            | ErrorKind::RequestTimeout
            | ErrorKind::Internal
            | ErrorKind::Unavailable => "InternalError",
        };
        Failure { class, error }
    }
}

impl From<phive::Error> for Failure {
    fn from(error: phive::Error) -> Self {
        let class = match &error {
            phive::Error::ModelNotFound(_) => Some(("ModelNotFoundError", "model_not_found")),
            phive::Error::UnsupportedArchitecture { .. } => {
                Some(("UnsupportedArchitectureError", "unsupported_architecture"))
            }
            phive::Error::Checkpoint { .. } => Some(("ModelLoadError", "invalid_checkpoint")),
            phive::Error::Device(_) => Some(("ModelLoadError", "device_unavailable")),
            _ => None,
        };
        match class {
            Some((class, code)) => Failure {
                class,
                error: ApiError::new(ErrorKind::Internal, error.to_string()).with_code(code),
            },
            None => ApiError::from(error).into(),
        }
    }
}

/// `Result` whose error becomes a Python exception.
type Fallible<T> = Result<T, Failure>;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn new_id() -> String {
    format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32)
}

/// Parses `in_situ_quant` as mistral.rs does: a type name (`Q4K`, `q8_0`, `BF16`...) or a bit
/// width shorthand (`"4"` is Q4K; 2, 3, 5 and 6 are k-quants too, 8 is Q8_0).
fn parse_isq(value: &str) -> Fallible<IsqType> {
    let by_bits = match value.trim() {
        "2" => Some(IsqType::Q2K),
        "3" => Some(IsqType::Q3K),
        "4" => Some(IsqType::Q4K),
        "5" => Some(IsqType::Q5K),
        "6" => Some(IsqType::Q6K),
        "8" => Some(IsqType::Q8_0),
        _ => None,
    };
    match by_bits {
        Some(isq) => Ok(isq),
        None => value.parse().map_err(|e: phive::quant::ParseIsqTypeError| {
            Failure::invalid(
                "in_situ_quant",
                format!("in_situ_quant: {e} (or a bit width: 2, 3, 4, 5, 6, 8)"),
            )
        }),
    }
}

/// Parses an OpenAI chat request from JSON, naming the field of a type error
/// (`invalid value for temperature: ...`).
fn parse_request(json: &str) -> Fallible<ChatCompletionRequest> {
    let mut de = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let missing = inner.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
        let error = match missing {
            Some(field) => ApiError::invalid(Some(field.to_string()), format!("{field} is required")),
            None if path != "." => {
                ApiError::invalid(Some(path.clone()), format!("invalid value for {path}: {inner}"))
            }
            None => ApiError::invalid(None, format!("invalid request: {inner}")),
        };
        error.into()
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Fallible<Value> {
    serde_json::to_value(value).map_err(|e| Failure::internal(format!("cannot serialize a response: {e}")))
}

/// Waits (GIL released) for the request's next events: at least one unless the request ended.
/// Returns the events and whether the request is over. Runs Python's signal handlers every
/// [`POLL`]; when one raises (Ctrl-C), the request is cancelled and the exception returned.
fn next_events(
    py: Python<'_>,
    runtime: &Runtime,
    handle: &mut RequestHandle,
) -> PyResult<(Vec<Event>, bool)> {
    loop {
        let (events, ended) = py.detach(|| {
            runtime.block_on(async {
                let mut events = Vec::new();
                let mut wait = POLL;
                while events.len() < MAX_BATCH {
                    match tokio::time::timeout(wait, handle.next()).await {
                        Ok(Some(event)) => events.push(event),
                        Ok(None) => return (events, true),
                        Err(_) => break,
                    }
                    // Drain what is already there without waiting again.
                    wait = Duration::ZERO;
                }
                (events, false)
            })
        });
        if let Err(interrupt) = py.check_signals() {
            handle.cancel();
            return Err(interrupt);
        }
        if ended || !events.is_empty() {
            return Ok((events, ended));
        }
    }
}

fn new_runtime() -> PyResult<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start a timer runtime: {e}")))
}

/// A loaded model served by phive's engine (wrapped by `phive.Runner`).
#[pyclass(module = "phive._phive", frozen)]
struct NativeEngine {
    engine: Arc<Engine>,
    model_id: String,
    architecture: String,
    isq: Option<String>,
    max_seqs: usize,
    limits: RequestLimits,
    policy: MediaPolicy,
}

impl NativeEngine {
    /// Validates the request, loads its images and audio and prepares the prompt (GIL released).
    fn prepare(&self, py: Python<'_>, json: &str) -> Fallible<(PreparedPrompt, phive::api::ChatInput)> {
        let mut input = parse_request(json)?.into_chat(&self.limits)?;
        let prepared = py.detach(|| input.prepare(self.engine.pipeline(), &self.policy))?;
        Ok((prepared, input))
    }

    fn submit(&self, py: Python<'_>, json: &str) -> Fallible<(RequestHandle, phive::api::ChatInput)> {
        let (prepared, input) = self.prepare(py, json)?;
        let handle = self.engine.submit(prepared, input.params.clone(), input.delivery.n)?;
        Ok((handle, input))
    }
}

#[pymethods]
impl NativeEngine {
    /// Loads `model` (a local folder or a Hugging Face id). `arch` (`"phi3v"`, `"phi4mm"`) must
    /// match the checkpoint's detected architecture when given. `isq` quantizes the language
    /// model's linear layers while loading (and the encoders' too with `isq_encoders`).
    /// `device` is `"cpu"` (the default) or `"cuda[:N]"` (a build with the `cuda` feature);
    /// `dtype` (`"auto"`, `"f32"`, `"bf16"`, `"f16"`) is the language model's precision.
    /// `num_crops` (Phi-3.5-vision) / `dynamic_hd` (Phi-4-multimodal) replace the checkpoint's
    /// crop limit.
    #[new]
    #[pyo3(signature = (model, *, revision=None, arch=None, isq=None, isq_encoders=false, device=None, dtype=None, max_seqs=None, max_queue=None, max_batched_tokens=None, solo_prefill_chunk=None, kv_cache_mem=None, media_cache_mem=None, prefix_cache=true, kv_cache_dtype=None, gpu_memory_utilization=None, max_images=None, num_crops=None, dynamic_hd=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: String,
        revision: Option<String>,
        arch: Option<String>,
        isq: Option<String>,
        isq_encoders: bool,
        device: Option<String>,
        dtype: Option<String>,
        max_seqs: Option<usize>,
        max_queue: Option<usize>,
        max_batched_tokens: Option<usize>,
        solo_prefill_chunk: Option<usize>,
        kv_cache_mem: Option<f64>,
        media_cache_mem: Option<f64>,
        prefix_cache: bool,
        kv_cache_dtype: Option<String>,
        gpu_memory_utilization: Option<f64>,
        max_images: Option<usize>,
        num_crops: Option<usize>,
        dynamic_hd: Option<usize>,
    ) -> PyResult<Self> {
        let preprocess = PreprocessOptions { num_crops, dynamic_hd };
        let kwargs = EngineKwargs {
            max_seqs,
            max_queue,
            max_batched_tokens,
            solo_prefill_chunk,
            kv_cache_mem,
            media_cache_mem,
            prefix_cache,
            kv_cache_dtype,
            gpu_memory_utilization,
        };
        engine_config(kwargs)
            .and_then(|config| {
                let load = LoadRequest { model, revision, arch, isq, isq_encoders, device, dtype };
                Self::load(py, load, preprocess, config, max_images)
            })
            .map_err(|f| f.into_py(py))
    }

    /// Where the model came from (a folder, or `org/name@revision`).
    #[getter]
    fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The detected architecture (`phi3v`...).
    #[getter]
    fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The in-situ quantization type in effect (`Q4K`...), or `None` for unquantized weights.
    #[getter]
    fn isq(&self) -> Option<&str> {
        self.isq.as_deref()
    }

    /// Requests generated at the same time.
    #[getter]
    fn max_seqs(&self) -> usize {
        self.max_seqs
    }

    /// Longest sequence (prompt plus completion) the model accepts.
    #[getter]
    fn context_length(&self) -> usize {
        self.engine.pipeline().context_length()
    }

    /// The engine's queues, KV memory, counters and media cache (see `Runner.stats`).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (key, value) in stats_counts(&self.engine.stats()) {
            dict.set_item(key, value)?;
        }
        Ok(dict)
    }

    /// Answers an OpenAI chat request (JSON) with a `chat.completion` object (JSON) whose
    /// `usage` carries mistral.rs's rate and time fields.
    fn chat(&self, py: Python<'_>, request: &str) -> PyResult<String> {
        let started = Instant::now();
        let (mut handle, input) = self.submit(py, request).map_err(|f| f.into_py(py))?;
        let n = input.delivery.n;
        let runtime = new_runtime()?;
        let mut done = Vec::with_capacity(n);
        loop {
            let (events, ended) = next_events(py, &runtime, &mut handle)?;
            for event in events {
                match event {
                    Event::Delta { .. } => {}
                    Event::Done { choice, completion } => done.push((choice, completion)),
                    Event::Error(e) => return Err(Failure::from(e).into_py(py)),
                }
            }
            if ended {
                break;
            }
        }
        if done.len() != n {
            return Err(
                Failure::internal("the engine ended the request before every choice finished").into_py(py)
            );
        }
        done.sort_by_key(|(choice, _)| *choice);
        let completions: Vec<Completion> = done.into_iter().map(|(_, c)| c).collect();
        let builder = self.response_builder(input.delivery.logprobs);
        let response =
            builder.response(&completions, Usage::from_completions(&completions, started.elapsed()));
        let body = to_json(&response).map_err(|f| f.into_py(py))?;
        Ok(body.to_string())
    }

    /// Submits an OpenAI chat request (JSON) and returns an iterator of
    /// `chat.completion.chunk` objects (JSON).
    fn chat_stream(&self, py: Python<'_>, request: &str) -> PyResult<ChatStream> {
        let started = Instant::now();
        let (handle, input) = self.submit(py, request).map_err(|f| f.into_py(py))?;
        let n = input.delivery.n;
        let format = self.response_builder(input.delivery.logprobs);
        let pending = (0..n)
            .map(|index| to_json(&format.role_chunk(index)).map(|v| v.to_string()))
            .collect::<Fallible<VecDeque<_>>>()
            .map_err(|f| f.into_py(py))?;
        let state = StreamState {
            handle: Some(handle),
            runtime: new_runtime()?,
            pending,
            format,
            n,
            started,
            completions: Vec::with_capacity(n),
        };
        Ok(ChatStream { state: Mutex::new(state) })
    }
}

/// What `NativeEngine(...)` was asked to load.
struct LoadRequest {
    model: String,
    revision: Option<String>,
    arch: Option<String>,
    isq: Option<String>,
    isq_encoders: bool,
    device: Option<String>,
    dtype: Option<String>,
}

impl NativeEngine {
    fn load(
        py: Python<'_>,
        load: LoadRequest,
        preprocess: PreprocessOptions,
        config: EngineConfig,
        max_images: Option<usize>,
    ) -> Fallible<Self> {
        let LoadRequest { model, revision, arch, isq, isq_encoders, device, dtype } = load;
        let isq = isq.as_deref().map(parse_isq).transpose()?;
        let device = match device.as_deref().map(str::parse::<phive::DeviceChoice>).transpose() {
            Ok(device) => device.unwrap_or_default(),
            Err(e) => return Err(Failure::invalid("device", e.to_string())),
        };
        let dtype = match dtype.as_deref().map(str::parse::<phive::ModelDType>).transpose() {
            Ok(dtype) => dtype.unwrap_or_default(),
            Err(e) => return Err(Failure::invalid("dtype", e.to_string())),
        };
        let pipeline = py.detach(|| -> Fallible<Pipeline> {
            if let Some(arch) = &arch {
                // Cheap: reads config, tokenizer and weight headers, not the tensors.
                let detected = Checkpoint::open(&model, revision.as_deref())?.architecture.name();
                if !detected.eq_ignore_ascii_case(arch) {
                    return Err(Failure::invalid(
                        "arch",
                        format!(
                            "arch={arch:?} was requested but {model:?} is a {detected:?} checkpoint; \
                             pass arch={detected:?} or leave arch unset to auto-detect"
                        ),
                    )
                    .with_code("architecture_mismatch"));
                }
            }
            // Fields added to LoadOptions later keep their defaults here.
            #[allow(clippy::needless_update)]
            let options = LoadOptions {
                model,
                revision,
                isq,
                isq_encoders,
                device,
                dtype,
                preprocess,
                ..Default::default()
            };
            Ok(Pipeline::load(&options)?)
        })?;
        let isq = pipeline.load_report().isq.map(|t| t.name().to_string());
        let model_id = pipeline.source().to_string();
        let architecture = pipeline.architecture().name().to_string();
        let limits = match max_images {
            Some(max_images) => RequestLimits { max_images },
            None => RequestLimits::default(),
        };
        Ok(NativeEngine {
            engine: Arc::new(Engine::new(pipeline, config.clone())?),
            model_id,
            architecture,
            isq,
            max_seqs: config.max_num_seqs,
            limits,
            policy: MediaPolicy::trusted(),
        })
    }
}

impl NativeEngine {
    /// The fixed parts of a new chat response from this engine.
    fn response_builder(&self, logprobs: bool) -> ChatResponseBuilder {
        ChatResponseBuilder { id: new_id(), created: now(), model: self.model_id.clone(), logprobs }
    }
}

impl Failure {
    fn with_code(mut self, code: &str) -> Self {
        self.error = self.error.with_code(code);
        self
    }
}

struct StreamState {
    /// `None` once the request is over (finished, failed or closed).
    handle: Option<RequestHandle>,
    runtime: Runtime,
    pending: VecDeque<String>,
    format: ChatResponseBuilder,
    n: usize,
    started: Instant,
    completions: Vec<Completion>,
}

impl StreamState {
    /// Turns an event into chunks; an error ends the stream.
    fn on_event(&mut self, event: Event) -> Fallible<()> {
        match event {
            Event::Delta { choice, delta } => {
                if let Some(chunk) = self.format.delta_chunk(choice, &delta) {
                    self.pending.push_back(to_json(&chunk)?.to_string());
                }
            }
            Event::Done { choice, completion } => {
                let mut chunk = self.format.finish_chunk(choice, &completion);
                // mistral.rs's last chunk carries empty content rather than no content.
                chunk.choices.iter_mut().for_each(|c| {
                    c.delta.content.get_or_insert_with(String::new);
                });
                self.completions.push(completion);
                // The last chunk of the request carries the usage, as mistral.rs's does, so
                // `chunk.choices[0]` is valid on every chunk.
                if self.completions.len() == self.n {
                    chunk.usage = Some(Usage::from_completions(&self.completions, self.started.elapsed()));
                    self.handle = None;
                }
                self.pending.push_back(to_json(&chunk)?.to_string());
            }
            Event::Error(e) => {
                self.handle = None;
                return Err(e.into());
            }
        }
        Ok(())
    }
}

/// The chunks of a streamed chat request (wrapped by the iterator `send_chat_completion_request`
/// returns). Dropping or closing it cancels the request.
#[pyclass(module = "phive._phive", frozen)]
struct ChatStream {
    state: Mutex<StreamState>,
}

#[pymethods]
impl ChatStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next chunk (JSON); `StopIteration` after the last.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::WouldBlock) => {
                return Err(PyRuntimeError::new_err("this stream is already being read by another thread"))
            }
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        loop {
            if let Some(chunk) = state.pending.pop_front() {
                return Ok(Some(chunk));
            }
            let state = &mut *state;
            let Some(handle) = state.handle.as_mut() else {
                return Ok(None);
            };
            let (events, ended) = match next_events(py, &state.runtime, handle) {
                Ok(next) => next,
                Err(interrupt) => {
                    state.handle = None;
                    return Err(interrupt);
                }
            };
            for event in events {
                if let Err(failure) = state.on_event(event) {
                    state.pending.clear();
                    return Err(failure.into_py(py));
                }
            }
            if ended && state.handle.is_some() {
                state.handle = None;
                state.pending.clear();
                return Err(Failure::internal("the engine ended the request before every choice finished")
                    .into_py(py));
            }
        }
    }

    /// Cancels the request; the iterator then ends.
    fn close(&self, py: Python<'_>) {
        // Another thread may be reading with the GIL released: wait for it without the GIL.
        let mut state = loop {
            match self.state.try_lock() {
                Ok(state) => break state,
                Err(TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(TryLockError::WouldBlock) => py.detach(|| std::thread::sleep(Duration::from_millis(5))),
            }
        };
        state.handle = None;
        state.pending.clear();
    }
}

/// The native module.
#[pymodule]
fn _phive(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeEngine>()?;
    m.add_class::<ChatStream>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
