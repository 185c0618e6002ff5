//! The Rust SDK: the builder, message and request types that code written for mistral.rs
//! already uses (`VisionModelBuilder`, `VisionMessages`, `TextMessageRole`, `RequestBuilder`,
//! `send_chat_request`, `stream_chat_request`), as a thin layer over [`crate::engine::Engine`].
//!
//! The futures returned here do their blocking work (loading, image preprocessing, generation)
//! on phive's own threads, so they can be awaited from any async runtime.

mod request;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::api::{ChatCompletionChunk, ChatCompletionResponse, ChatResponseBuilder, Usage};
use crate::engine::{Completion, Engine, EngineConfig, Event, KvCacheDtype, RequestHandle};
use crate::models::PreprocessOptions;
use crate::pipeline::{LoadOptions, Pipeline};
use crate::quant::IsqType;
use crate::{Error, KvDtype, ModelDType, Result};

pub use request::{Images, RequestBuilder, RequestLike, TextMessageRole, VisionMessages};

/// The vision architectures phive implements (`with_arch` checks the checkpoint against it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionArchitecture {
    /// `microsoft/Phi-3.5-vision-instruct`.
    Phi3V,
    /// `microsoft/Phi-4-multimodal-instruct`.
    Phi4MM,
}

impl VisionArchitecture {
    fn name(self) -> &'static str {
        match self {
            VisionArchitecture::Phi3V => "phi3v",
            VisionArchitecture::Phi4MM => "phi4mm",
        }
    }
}

/// Loads a model: `VisionModelBuilder::new(id).with_logging().build().await?`.
#[derive(Debug, Clone)]
pub struct VisionModelBuilder {
    model_id: String,
    arch: Option<VisionArchitecture>,
    revision: Option<String>,
    dtype: ModelDType,
    isq: Option<IsqType>,
    device: crate::DeviceChoice,
    preprocess: PreprocessOptions,
    logging: bool,
    engine: EngineConfig,
}

impl VisionModelBuilder {
    /// A builder for a local checkpoint folder or a Hugging Face model id.
    pub fn new(model_id: impl ToString) -> Self {
        VisionModelBuilder {
            model_id: model_id.to_string(),
            arch: None,
            revision: None,
            dtype: ModelDType::Auto,
            isq: None,
            device: crate::DeviceChoice::Cpu,
            preprocess: PreprocessOptions::default(),
            logging: false,
            engine: EngineConfig::default(),
        }
    }

    /// Requires the checkpoint to be of this architecture (it is detected either way).
    pub fn with_arch(mut self, arch: VisionArchitecture) -> Self {
        self.arch = Some(arch);
        self
    }

    /// Hub revision (branch, tag or commit).
    pub fn with_hf_revision(mut self, revision: impl ToString) -> Self {
        self.revision = Some(revision.to_string());
        self
    }

    /// Runs the model on `device` (the CPU by default; CUDA needs a build with the `cuda`
    /// feature). `build` fails with [`Error::Device`] where the device cannot be used.
    pub fn with_device(mut self, device: crate::DeviceChoice) -> Self {
        self.device = device;
        self
    }

    /// Quantizes the language model's linear layers in situ while loading.
    pub fn with_isq(mut self, isq: IsqType) -> Self {
        self.isq = Some(isq);
        self
    }

    /// Phi-3.5-vision: most 336×336 crops per image (default: the checkpoint's; the model card
    /// recommends 4 for several images, 16 for one). `build` fails on a Phi-4 checkpoint or a
    /// value out of range.
    pub fn with_num_crops(mut self, num_crops: usize) -> Self {
        self.preprocess.num_crops = Some(num_crops);
        self
    }

    /// Phi-4-multimodal: most 448×448 crops per image (default: the checkpoint's). `build` fails
    /// on a Phi-3.5-vision checkpoint or a value out of range.
    pub fn with_dynamic_hd(mut self, dynamic_hd: usize) -> Self {
        self.preprocess.dynamic_hd = Some(dynamic_hd);
        self
    }

    /// Precision of the language model (f32 on the CPU and bf16 on a GPU by default).
    pub fn with_dtype(mut self, dtype: ModelDType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Logs loading progress and timings to stderr (installs a `tracing` subscriber unless the
    /// application has one).
    pub fn with_logging(mut self) -> Self {
        self.logging = true;
        self
    }

    /// How many sequences (choices of requests) the engine batches at once (default 32).
    pub fn with_max_num_seqs(mut self, max_num_seqs: usize) -> Self {
        self.engine.max_num_seqs = max_num_seqs.max(1);
        self
    }

    /// Tokens fed to the model per engine step (default 32): prefill chunks plus one token per
    /// decoding sequence.
    pub fn with_max_batched_tokens(mut self, tokens: usize) -> Self {
        self.engine.max_batched_tokens = tokens.max(1);
        self
    }

    /// Most tokens per engine step of a prompt prefilling while nothing else runs (default
    /// [`crate::engine::DEFAULT_SOLO_PREFILL_CHUNK`]); such a step is abandoned when a request
    /// arrives. At most `max_batched_tokens` turns solo chunks off.
    pub fn with_solo_prefill_chunk(mut self, tokens: usize) -> Self {
        self.engine.solo_prefill_chunk = tokens;
        self
    }

    /// Bytes of encoded images and audio kept across requests (default 512 MiB; 0 turns the
    /// cache off): a new question about the same picture skips the vision tower.
    pub fn with_media_cache_bytes(mut self, bytes: u64) -> Self {
        self.engine.media_cache_bytes = bytes;
        self
    }

    /// Bytes of KV cache memory (default: 40% of the memory available at start, at most what
    /// the running limit can use).
    pub fn with_kv_cache_bytes(mut self, bytes: u64) -> Self {
        self.engine.kv_cache_bytes = Some(bytes);
        self
    }

    /// How the KV cache stores keys and values, instead of [`KvCacheDtype::Auto`] (f32 for an
    /// exact f32 model, f16 under ISQ or half precision). [`KvDtype::F16`] holds twice the
    /// tokens in the same memory and decodes faster over long contexts; each cached key and
    /// value keeps 11 significant bits.
    pub fn with_kv_cache_dtype(mut self, dtype: KvDtype) -> Self {
        self.engine.kv_cache_dtype = KvCacheDtype::Fixed(dtype);
        self
    }

    /// On a GPU, the share of its memory phive may fill (default 0.9): the KV cache gets what
    /// the weights leave of it, unless [`Self::with_kv_cache_bytes`] sets its size. `build`
    /// refuses a share outside `(0, 1]`.
    pub fn with_gpu_memory_utilization(mut self, share: f64) -> Self {
        self.engine.gpu_memory_utilization = share;
        self
    }

    /// mistral.rs's switch for the prefix cache: `None` or `Some(0)` turns it off, any count
    /// keeps it on (phive's cache is bounded by the KV memory, not by a number of prefixes).
    /// On by default: a prompt that starts like an earlier one (the next turn of a chat, a
    /// shared system prompt) computes only the rest, with the same answer.
    pub fn with_prefix_cache_n(mut self, n: Option<usize>) -> Self {
        self.engine.prefix_cache = n.is_some_and(|n| n > 0);
        self
    }

    /// Loads the model on a background thread.
    pub async fn build(self) -> Result<Model> {
        let share = self.engine.gpu_memory_utilization;
        if !(share > 0.0 && share <= 1.0) {
            return Err(Error::InvalidRequest(format!(
                "gpu_memory_utilization must be a fraction in (0, 1], got {share}"
            )));
        }
        if self.logging {
            // An application that installed its own subscriber keeps it.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("phive=info"))
                .with_writer(std::io::stderr)
                .try_init();
        }
        let options = LoadOptions {
            model: self.model_id.clone(),
            revision: self.revision.clone(),
            isq: self.isq,
            device: self.device,
            dtype: self.dtype,
            preprocess: self.preprocess,
            ..Default::default()
        };
        let (arch, engine_config, model_id) = (self.arch, self.engine.clone(), self.model_id.clone());
        let pipeline = run_blocking(move || Pipeline::load(&options)).await?;
        if let Some(arch) = arch {
            let found = pipeline.architecture().name();
            if arch.name() != found {
                return Err(Error::InvalidRequest(format!(
                    "{model_id} is a {found} checkpoint, not {} as requested with with_arch",
                    arch.name()
                )));
            }
        }
        tracing::info!(
            "loaded {} ({}) in {:.2}s",
            pipeline.source(),
            pipeline.architecture().name(),
            pipeline.load_time().as_secs_f64()
        );
        Ok(Model { engine: Arc::new(Engine::new(pipeline, engine_config)?), id: model_id })
    }
}

/// Runs blocking work on a phive thread and awaits it from any runtime.
async fn run_blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("phive-sdk".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| Error::InvalidRequest(format!("cannot start a worker thread: {e}")))?;
    rx.await.map_err(|_| Error::InvalidRequest("the worker thread stopped unexpectedly".into()))?
}

/// A streamed response item (mistral.rs's `Response`).
#[derive(Debug)]
pub enum Response {
    /// A chunk of new text.
    Chunk(ChatCompletionChunk),
    /// The full response, after the last chunk.
    Done(ChatCompletionResponse),
    /// Generation failed.
    ModelError(String),
}

/// The stream returned by [`Model::stream_chat_request`]. Dropping it cancels generation.
pub struct ChatStream {
    handle: RequestHandle,
    builder: ChatResponseBuilder,
    pending: VecDeque<Response>,
    completions: Vec<(usize, Completion)>,
    started: Instant,
    finished: bool,
}

impl ChatStream {
    /// The next item: chunks as text arrives, then [`Response::Done`]; `None` after that or
    /// after an error.
    pub async fn next(&mut self) -> Option<Response> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.finished {
                return None;
            }
            match self.handle.next().await {
                Some(Event::Delta { choice, delta }) => {
                    if let Some(chunk) = self.builder.delta_chunk(choice, &delta) {
                        self.pending.push_back(Response::Chunk(chunk));
                    }
                }
                Some(Event::Done { choice, completion }) => {
                    self.pending.push_back(Response::Chunk(self.builder.finish_chunk(choice, &completion)));
                    self.completions.push((choice, completion));
                }
                Some(Event::Error(e)) => {
                    self.finished = true;
                    self.pending.push_back(Response::ModelError(e.to_string()));
                }
                None => {
                    self.finished = true;
                    let completions = in_choice_order(std::mem::take(&mut self.completions));
                    let usage = Usage::from_completions(&completions, self.started.elapsed());
                    self.pending.push_back(Response::Done(self.builder.response(&completions, usage)));
                }
            }
        }
    }
}

fn in_choice_order(mut done: Vec<(usize, Completion)>) -> Vec<Completion> {
    done.sort_by_key(|(choice, _)| *choice);
    done.into_iter().map(|(_, c)| c).collect()
}

/// A loaded model serving requests; clones share the model.
#[derive(Clone)]
pub struct Model {
    engine: Arc<Engine>,
    id: String,
}

impl Model {
    /// The underlying engine (queue statistics, the pipeline).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    async fn submit(&self, request: impl RequestLike) -> Result<(RequestHandle, ChatResponseBuilder)> {
        let request = request.into_request();
        let engine = Arc::clone(&self.engine);
        let n = request.n_choices.max(1);
        let logprobs = request.params.logprobs.is_some();
        let tools = request.tool_request()?;
        let handle = run_blocking(move || {
            let RequestBuilder { messages: mut conversation, mut params, preprocess, .. } = request;
            if let Some(tools) = tools {
                tools
                    .apply(engine.pipeline().tool_format(), &mut conversation.messages, &mut params)
                    .map_err(|e| Error::InvalidRequest(e.message))?;
            }
            let prepared = engine.pipeline().prepare_media_with(
                &conversation.messages,
                &conversation.images,
                &conversation.audios,
                &preprocess,
            )?;
            engine.submit(prepared, params, n)
        })
        .await?;
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let id = format!("chatcmpl-{:016x}", rand::random::<u64>());
        Ok((handle, ChatResponseBuilder { id, created, model: self.id.clone(), logprobs }))
    }

    /// Sends a request and waits for the whole answer.
    pub async fn send_chat_request(&self, request: impl RequestLike) -> Result<ChatCompletionResponse> {
        let started = Instant::now();
        let (mut handle, builder) = self.submit(request).await?;
        let mut done = Vec::new();
        while let Some(event) = handle.next().await {
            match event {
                Event::Delta { .. } => {}
                Event::Done { choice, completion } => done.push((choice, completion)),
                Event::Error(e) => return Err(e),
            }
        }
        let completions = in_choice_order(done);
        Ok(builder.response(&completions, Usage::from_completions(&completions, started.elapsed())))
    }

    /// Sends a request and streams the answer as it is generated.
    pub async fn stream_chat_request(&self, request: impl RequestLike) -> Result<ChatStream> {
        let started = Instant::now();
        let (handle, builder) = self.submit(request).await?;
        Ok(ChatStream {
            handle,
            builder,
            pending: VecDeque::new(),
            completions: Vec::new(),
            started,
            finished: false,
        })
    }
}
