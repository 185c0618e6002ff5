//! The engine: one loop thread owns every sequence and steps them together. Front ends submit
//! prepared requests and get a handle that streams events; the loop admits, schedules, runs
//! one batched forward pass per step, samples each row, streams each delta, and retires
//! finished or cancelled sequences at once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::config::{pool_blocks, EngineConfig};
use super::encoder::Encoder;
use super::generation::{check_lengths, Scores};
use super::grammar::{Grammar, GrammarCompiler};
use super::health::{contain, AliveGuard};
use super::inbox::{Mailbox, Message};
use super::media_cache::MediaCache;
use super::prefix::PrefixHasher;
use super::runner::run_step;
use super::scheduler::{Scheduler, SchedulerLimits};
use super::sequence::{Request, Sequence};
use super::stats::EngineStats;
use super::{Completion, Delta, FinishReason, GenerationParams};
use crate::fault::{inject, Fault};
use crate::nn::kv_cache::{KvDtype, KvGeometry, KvPool};
use crate::pipeline::{Pipeline, PreparedPrompt};
use crate::{Error, Result};

/// What a submitted request reports, in order per choice: deltas, then one `Done` (or an
/// `Error`, after which nothing follows). Choices interleave.
#[derive(Debug)]
pub enum Event {
    /// New output of choice `choice`.
    Delta { choice: usize, delta: Delta },
    /// Choice `choice` finished.
    Done { choice: usize, completion: Completion },
    /// Generation failed.
    Error(Error),
}

/// A submitted request: receive its events, drop it (or call `cancel`) to stop generation.
pub struct RequestHandle {
    events: UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl RequestHandle {
    /// The next event, waiting asynchronously; `None` once the request is finished.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next event, blocking the thread (for synchronous callers).
    pub fn next_blocking(&mut self) -> Option<Event> {
        self.events.blocking_recv()
    }

    /// Asks the engine to stop this request; its KV blocks are freed within one step.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Waits for every choice and returns the completions in choice order.
    pub fn collect_blocking(mut self) -> Result<Vec<Completion>> {
        let mut done = Vec::new();
        while let Some(event) = self.next_blocking() {
            match event {
                Event::Delta { .. } => {}
                Event::Done { choice, completion } => done.push((choice, completion)),
                Event::Error(e) => return Err(e),
            }
        }
        done.sort_by_key(|(choice, _)| *choice);
        Ok(done.into_iter().map(|(_, c)| c).collect())
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

struct Shared {
    pipeline: Arc<Pipeline>,
    /// Requests submitted and not yet started.
    queued: AtomicUsize,
    stats: Mutex<EngineStats>,
    /// Longest sequence that fits: the context, or the KV pool if smaller.
    max_seq_len: usize,
    /// Arrival numbers of requests.
    next_id: AtomicU64,
    /// Encoded media by content.
    media_cache: Arc<Mutex<MediaCache>>,
    /// Whether the loop thread is running (false once it returned or panicked).
    alive: Arc<AtomicBool>,
    /// Structured-output grammars, compiled against the vocabulary.
    grammars: GrammarCompiler,
}

/// A pipeline served by the batching loop.
pub struct Engine {
    shared: Arc<Shared>,
    config: EngineConfig,
    /// What the KV pool stores (`config.kv_cache_dtype` resolved for the model).
    kv_dtype: KvDtype,
    inbox: Mutex<Option<Mailbox>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Sizes the KV pool, makes it on the model's device and starts the engine loop serving
    /// `pipeline`. Fails when the pool does not fit the device.
    pub fn new(pipeline: Pipeline, config: EngineConfig) -> Result<Self> {
        let kv_dtype = config.kv_cache_dtype.resolve(pipeline.model().computes_exactly());
        let geometry = pipeline.model().kv_geometry(KvGeometry::DEFAULT_BLOCK_SIZE).with_dtype(kv_dtype);
        let context = pipeline.context_length();
        let device = pipeline.model().device().clone();
        let num_blocks = pool_blocks(&config, geometry, context, &device)?;
        let pool = KvPool::for_device(geometry, num_blocks, &device).map_err(|e| {
            Error::Device(format!(
                "cannot make a KV cache of {num_blocks} blocks ({:.2} GiB) on {}: {e} (lower --kv-cache-mem)",
                (num_blocks * geometry.bytes_per_block()) as f64 / (1u64 << 30) as f64,
                crate::device::describe(&device)
            ))
        })?;
        let max_seq_len = context.min(num_blocks * geometry.block_size);
        let mut stats = EngineStats {
            kv_block_size: geometry.block_size,
            kv_block_bytes: geometry.bytes_per_block(),
            ..Default::default()
        };
        stats.kv_blocks_free = num_blocks;
        let shared = Arc::new(Shared {
            pipeline: Arc::new(pipeline),
            queued: AtomicUsize::new(0),
            stats: Mutex::new(stats),
            max_seq_len,
            next_id: AtomicU64::new(0),
            media_cache: Arc::new(Mutex::new(MediaCache::new(config.media_cache_bytes))),
            alive: Arc::new(AtomicBool::new(true)),
            grammars: GrammarCompiler::new(),
        });
        let (sender, receiver, arrived) = Mailbox::new();
        let limits = SchedulerLimits {
            max_num_seqs: config.max_num_seqs.max(1),
            max_batched_tokens: config.max_batched_tokens.max(1),
            block_size: geometry.block_size,
            solo_chunk: config.solo_prefill_chunk,
        };
        let hasher = config.prefix_cache.then(|| PrefixHasher {
            block_size: geometry.block_size,
            long_rope_after: shared.pipeline.model().long_rope_after(),
        });
        let encoder =
            Encoder::start(Arc::clone(&shared.pipeline), Arc::clone(&shared.media_cache), sender.clone());
        let loop_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("phive-engine".into())
            .spawn(move || {
                let scheduler = Scheduler::new(limits, num_blocks, hasher);
                EngineLoop::new(loop_shared, scheduler, pool, encoder, arrived).run(receiver);
            })
            .expect("spawning the engine thread");
        Ok(Engine {
            shared,
            config,
            kv_dtype,
            inbox: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// What the KV cache stores keys and values in.
    pub fn kv_cache_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// The served pipeline (for preparing prompts and model metadata).
    pub fn pipeline(&self) -> &Pipeline {
        &self.shared.pipeline
    }

    /// Whether the engine loop is running. False after a shutdown, or after a bug killed the
    /// loop: nothing can be served then, and the process should be restarted.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// Positions the KV pool holds (over all sequences).
    pub fn kv_capacity_tokens(&self) -> usize {
        let stats = self.stats();
        (stats.kv_blocks_free + stats.kv_blocks_used) * stats.kv_block_size
    }

    /// The engine's state and counters.
    pub fn stats(&self) -> EngineStats {
        let mut stats = self.shared.stats.lock().map(|s| s.clone()).unwrap_or_default();
        stats.queued = self.shared.queued.load(Ordering::Relaxed);
        if let Ok(cache) = self.shared.media_cache.lock() {
            stats.media_cache_hits = cache.hits;
            stats.media_cache_misses = cache.misses;
            stats.media_cache_bytes = cache.bytes();
            stats.media_cache_items = cache.items();
        }
        stats
    }

    /// Queues a prepared request for `choices` completions. Parameters and lengths are
    /// validated here, so a bad request fails before anything is streamed.
    pub fn submit(
        &self,
        prepared: PreparedPrompt,
        params: GenerationParams,
        choices: usize,
    ) -> Result<RequestHandle> {
        if !self.is_alive() {
            return Err(stopped());
        }
        params.sampling.validate()?;
        if choices == 0 {
            return Err(Error::InvalidRequest("n must be at least 1".into()));
        }
        let prompt_len = prepared.tokens.ids.len();
        check_lengths(prompt_len, &params, self.pipeline().context_length())?;
        let vocab_size = self.pipeline().model().vocab_size();
        if let Some((id, _)) = params.sampling.logit_bias.iter().find(|(id, _)| *id as usize >= vocab_size) {
            return Err(Error::InvalidRequest(format!(
                "logit_bias names token {id}, but the vocabulary has {vocab_size} tokens"
            )));
        }
        let grammar = params.grammar.as_ref().map(|grammar| self.compile(grammar)).transpose()?;
        let needed = prompt_len + params.max_tokens.unwrap_or(1);
        if needed > self.shared.max_seq_len {
            return Err(Error::InvalidRequest(format!(
                "the KV cache holds {} tokens per sequence (--kv-cache-mem) but this request needs {needed} \
                 ({prompt_len} in the prompt, images included, plus max_tokens)",
                self.shared.max_seq_len
            )));
        }
        let (events, receiver) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let adapter = self.pipeline().model().adapter(prepared.media());
        let request = Arc::new(Request {
            prepared,
            params,
            choices,
            grammar,
            adapter,
            started: Instant::now(),
            events,
            cancel: Arc::clone(&cancel),
        });
        let queued = self.shared.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.config.max_queue {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::QueueFull(format!("{queued} requests are already waiting (--max-queue)")));
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let sequence = Sequence::new(id, request, self.shared.max_seq_len);
        let sent = self
            .inbox
            .lock()
            .ok()
            .and_then(|inbox| inbox.as_ref().map(|tx| tx.send(Message::Submit(sequence))));
        match sent {
            Some(true) => {}
            Some(false) => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                return Err(stopped());
            }
            None => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                return Err(Error::QueueFull("the engine is shutting down".into()));
            }
        }
        Ok(RequestHandle { events: receiver, cancel })
    }

    /// Compiles a request's grammar against the model's vocabulary; complete output ends with
    /// the first stop token (`<|end|>` for the Phi models).
    fn compile(&self, grammar: &Grammar) -> Result<llguidance::Matcher> {
        let pipeline = self.pipeline();
        let eos = pipeline.stop_token_ids().first().copied().ok_or_else(|| {
            Error::InvalidRequest("this checkpoint has no stop token to end structured output".into())
        })?;
        self.shared.grammars.compile(grammar, pipeline.tokenizer(), pipeline.model().vocab_size(), eos)
    }

    /// Stops accepting requests and waits for queued and running ones to finish.
    pub fn shutdown(&self) {
        if let Some(inbox) = self.inbox.lock().ok().and_then(|mut inbox| inbox.take()) {
            inbox.send(Message::Shutdown);
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn stopped() -> Error {
    Error::EngineStopped(
        "the engine loop stopped after an internal error; the server must be restarted".into(),
    )
}

/// The loop thread's state.
struct EngineLoop {
    shared: Arc<Shared>,
    scheduler: Scheduler,
    pool: KvPool,
    encoder: Encoder,
    /// Sequences at the encoder.
    encoding: usize,
    /// Whether requests may still arrive.
    open: bool,
    /// Raised when work the loop could schedule arrives; an interruptible step stops at it.
    arrived: Arc<AtomicBool>,
}

impl EngineLoop {
    fn new(
        shared: Arc<Shared>,
        scheduler: Scheduler,
        pool: KvPool,
        encoder: Encoder,
        arrived: Arc<AtomicBool>,
    ) -> Self {
        Self { shared, scheduler, pool, encoder, encoding: 0, open: true, arrived }
    }

    fn run(mut self, inbox: mpsc::Receiver<Message>) {
        let _alive = AliveGuard(Arc::clone(&self.shared.alive));
        loop {
            if self.scheduler.is_idle() {
                if !self.open && self.encoding == 0 {
                    return;
                }
                match inbox.recv() {
                    Ok(message) => self.receive(message),
                    Err(_) => return,
                }
            }
            // Lowered before reading: whatever arrives after the read raises it again.
            self.arrived.store(false, Ordering::SeqCst);
            while let Ok(message) = inbox.try_recv() {
                self.receive(message);
            }
            self.drop_cancelled();
            self.step();
            self.publish();
        }
    }

    fn receive(&mut self, message: Message) {
        if let Message::Submit(sequence) = &message {
            inject(Fault::EngineLoop, &sequence.request.prepared.text);
        }
        match message {
            Message::Submit(sequence) if sequence.request.prepared.tokens.media.is_empty() => {
                self.scheduler.add(sequence)
            }
            Message::Submit(sequence) => {
                self.encoding += 1;
                self.encoder.submit(sequence);
            }
            Message::Encoded(sequence) => {
                self.encoding -= 1;
                self.scheduler.add(sequence);
            }
            Message::Shutdown => self.open = false,
        }
    }

    /// Retires the sequences whose caller went away, freeing their blocks.
    fn drop_cancelled(&mut self) {
        let removed = self.scheduler.remove_where(|s| s.request.is_cancelled());
        let mut stats = self.shared.stats.lock().expect("stats lock");
        for sequence in removed {
            if !sequence.generation.is_scheduled() {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            }
            if sequence.choice == 0 {
                stats.cancelled += 1;
            }
        }
    }

    fn step(&mut self) {
        let started = Instant::now();
        let plan = self.scheduler.schedule();
        self.pool.warm_ahead(self.scheduler.blocks_touched());
        self.shared.queued.fetch_sub(plan.started, Ordering::SeqCst);
        if plan.rows.is_empty() {
            return;
        }
        let pipeline = Arc::clone(&self.shared.pipeline);
        let mut finished: Vec<(usize, FinishReason)> = Vec::new();
        let mut forks = Vec::new();
        // An interruptible step (one solo row) also stops for its own request's cancellation;
        // other steps never look at `stop`, so they take nothing for it.
        let solo =
            plan.interruptible.then(|| Arc::clone(&self.scheduler.running[plan.rows[0].index].request));
        let arrived = Arc::clone(&self.arrived);
        let stop = move || arrived.load(Ordering::Relaxed) || solo.as_ref().is_some_and(|r| r.is_cancelled());
        let result = contain("running a step", || {
            // On a rayon worker: the step's hundreds of parallel kernels then split their work
            // with the worker that runs it, instead of this thread waking the pool and
            // sleeping until each one is done (a futex round trip per kernel).
            let (pool, running) = (&mut self.pool, &mut self.scheduler.running);
            rayon::scope(|_| run_step(pipeline.model(), pool, running, &plan, &stop))
        })
        .and_then(|result| result);
        if let Ok(output) = &result {
            if output.interrupted {
                self.shared.stats.lock().expect("stats lock").interrupted_steps += 1;
                return;
            }
            self.scheduler.register_computed();
        }
        let mut finished_forks = Vec::new();
        match result {
            Err(e) => {
                for row in &plan.rows {
                    let request = &self.scheduler.running[row.index].request;
                    request.send(Event::Error(match &e {
                        Error::Internal(message) => Error::Internal(message.clone()),
                        _ => Error::Tensor(candle_core::Error::Msg(format!("the forward pass failed: {e}"))),
                    }));
                    request.cancel.store(true, Ordering::Relaxed);
                }
            }
            Ok(output) => {
                for (row, e) in output.failed {
                    let request = &self.scheduler.running[row.index].request;
                    request.send(Event::Error(e));
                    request.cancel.store(true, Ordering::Relaxed);
                }
                for (row, scores) in &output.scores {
                    let sequence = &mut self.scheduler.running[row.index];
                    for choice in 1..=std::mem::take(&mut sequence.forks_pending) {
                        let mut fork = sequence.fork(sequence.id, choice, self.shared.max_seq_len);
                        match advance(&mut fork, scores, &pipeline) {
                            Some(reason) => finished_forks.push((fork, reason)),
                            None => forks.push(fork),
                        }
                    }
                    if let Some(reason) = advance(sequence, scores, &pipeline) {
                        finished.push((row.index, reason));
                    }
                }
            }
        }
        // The step is counted before any answer is completed, so that a client that reads the
        // stats once its answer has arrived sees the step that finished it.
        let decode = plan.rows.iter().filter(|r| r.len == 1).count();
        let prefill: usize = plan.rows.iter().filter(|r| r.len > 1).map(|r| r.len).sum();
        let elapsed = started.elapsed();
        self.shared.stats.lock().expect("stats lock").record_step(plan.rows.len(), prefill, decode, elapsed);
        for (fork, reason) in finished_forks {
            complete(fork, reason, &pipeline);
        }
        finished.sort_by_key(|&(index, _)| std::cmp::Reverse(index));
        for (index, reason) in finished {
            let sequence = self.scheduler.finish(index);
            complete(sequence, reason, &pipeline);
        }
        for fork in forks {
            self.scheduler.add_running(fork);
        }
    }

    /// Publishes the queues and KV usage for [`Engine::stats`].
    fn publish(&self) {
        let (free, capacity, cached) = self.scheduler.block_usage();
        let mut requests: Vec<*const Request> =
            self.scheduler.running.iter().map(|s| Arc::as_ptr(&s.request)).collect();
        requests.sort();
        requests.dedup();
        let mut stats = self.shared.stats.lock().expect("stats lock");
        stats.waiting_seqs = self.scheduler.waiting.len();
        stats.running_seqs = self.scheduler.running.len();
        stats.active = requests.len();
        stats.preemptions = self.scheduler.preemptions;
        stats.kv_blocks_free = free;
        stats.kv_blocks_used = capacity - free;
        stats.prefix_cache_blocks = cached;
        stats.prefix_cache_queried_tokens = self.scheduler.prefix_queried_tokens;
        stats.prefix_cache_hit_tokens = self.scheduler.prefix_hit_tokens;
    }
}

/// Chooses `sequence`'s next token from `scores` and streams what it adds; returns why it
/// finished, if it did. A failure (or a panic) fails the sequence's request alone.
fn advance(sequence: &mut Sequence, scores: &Scores, pipeline: &Pipeline) -> Option<FinishReason> {
    let tokenizer = pipeline.tokenizer();
    let advanced = contain("generating a token", || {
        inject(Fault::Row, &sequence.request.prepared.text);
        sequence.generation.advance(scores, tokenizer, pipeline.stop_token_ids())
    });
    match advanced.and_then(|result| result) {
        Ok(step) => {
            sequence.tokens.push(step.token);
            if let Some(delta) = step.delta {
                sequence.request.send(Event::Delta { choice: sequence.choice, delta });
            }
            step.finished
        }
        Err(e) => {
            sequence.request.send(Event::Error(e));
            sequence.request.cancel.store(true, Ordering::Relaxed);
            Some(FinishReason::Cancelled)
        }
    }
}

/// Sends a finished sequence's last delta and its completion.
fn complete(sequence: Sequence, reason: FinishReason, pipeline: &Pipeline) {
    let Sequence { request, choice, generation, .. } = sequence;
    if request.cancel.load(Ordering::Relaxed) {
        return;
    }
    match generation.finish(reason, pipeline.tokenizer()) {
        Ok((tail, completion)) => {
            if let Some(delta) = tail {
                request.send(Event::Delta { choice, delta });
            }
            request.send(Event::Done { choice, completion });
        }
        Err(e) => request.send(Event::Error(e)),
    }
}
