//! The engine service: a bounded queue of prepared requests served by worker threads, with
//! streamed events and cancellation. Every front end (server, SDKs) submits through this, so
//! they share one admission policy and one place that counts queued and active work.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{Completion, Delta, GenerationParams};
use crate::pipeline::{Pipeline, PreparedPrompt};
use crate::{Error, Result};

/// Limits of the engine service.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests generating at the same time (each on its own worker thread).
    pub max_concurrent: usize,
    /// Requests waiting for a worker; beyond this `submit` fails with `Error::QueueFull`.
    pub max_queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { max_concurrent: 1, max_queue: 64 }
    }
}

/// What a submitted request reports, in order: deltas per choice, then one `Done` per choice
/// (or an `Error`, after which nothing follows).
#[derive(Debug)]
pub enum Event {
    /// New output of choice `choice`.
    Delta { choice: usize, delta: Delta },
    /// Choice `choice` finished.
    Done { choice: usize, completion: Completion },
    /// Generation failed.
    Error(Error),
}

/// Queue depth and activity, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Requests waiting for a worker.
    pub queued: usize,
    /// Requests being generated.
    pub active: usize,
    /// Requests cancelled since start (client gone or handle dropped).
    pub cancelled: usize,
}

struct Job {
    prepared: PreparedPrompt,
    params: GenerationParams,
    choices: usize,
    started: Instant,
    events: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
}

struct Shared {
    pipeline: Arc<Pipeline>,
    queued: AtomicUsize,
    active: AtomicUsize,
    cancelled: AtomicUsize,
}

/// A pipeline served by worker threads.
pub struct Engine {
    shared: Arc<Shared>,
    config: EngineConfig,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
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

    /// Asks the engine to stop this request at the next token.
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

impl Engine {
    /// Starts `config.max_concurrent` worker threads serving `pipeline`.
    pub fn new(pipeline: Pipeline, config: EngineConfig) -> Self {
        let shared = Arc::new(Shared {
            pipeline: Arc::new(pipeline),
            queued: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
        });
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let workers = (0..config.max_concurrent.max(1))
            .map(|i| {
                let receiver = Arc::clone(&receiver);
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("phive-worker-{i}"))
                    .spawn(move || loop {
                        let job = match receiver.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => shared.run(job),
                            Err(_) => return,
                        }
                    })
                    .expect("spawning a worker thread")
            })
            .collect();
        Engine { shared, config, jobs: Mutex::new(Some(sender)), workers: Mutex::new(workers) }
    }

    /// The served pipeline (for preparing prompts and model metadata).
    pub fn pipeline(&self) -> &Pipeline {
        &self.shared.pipeline
    }

    /// Current queue depth and activity.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            queued: self.shared.queued.load(Ordering::Relaxed),
            active: self.shared.active.load(Ordering::Relaxed),
            cancelled: self.shared.cancelled.load(Ordering::Relaxed),
        }
    }

    /// Queues a prepared request for `choices` completions. Parameters are validated here, so a
    /// bad request fails before anything is streamed.
    pub fn submit(
        &self,
        prepared: PreparedPrompt,
        params: GenerationParams,
        choices: usize,
    ) -> Result<RequestHandle> {
        params.sampling.validate()?;
        self.shared.pipeline.check_fits(&prepared, &params)?;
        if choices == 0 {
            return Err(Error::InvalidRequest("n must be at least 1".into()));
        }
        let (events, receiver) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job =
            Job { prepared, params, choices, started: Instant::now(), events, cancel: Arc::clone(&cancel) };
        let queued = self.shared.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.config.max_queue {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::QueueFull(format!("{queued} requests are already waiting (--max-queue)")));
        }
        let sent = self.jobs.lock().ok().and_then(|jobs| jobs.as_ref().map(|tx| tx.send(job).is_ok()));
        if sent != Some(true) {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::QueueFull("the engine is shutting down".into()));
        }
        Ok(RequestHandle { events: receiver, cancel })
    }

    /// Stops accepting requests and waits for queued and running ones to finish.
    pub fn shutdown(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Ok(mut workers) = self.workers.lock() {
            for worker in workers.drain(..) {
                let _ = worker.join();
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    fn run(&self, job: Job) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
        if job.cancel.load(Ordering::Relaxed) || job.events.is_closed() {
            self.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.active.fetch_add(1, Ordering::SeqCst);
        for choice in 0..job.choices {
            let mut params = job.params.clone();
            if let Some(seed) = params.sampling.seed {
                params.sampling.seed = Some(seed.wrapping_add(choice as u64));
            }
            let events = &job.events;
            let cancel = &job.cancel;
            let result = self.pipeline.generate(&job.prepared, &params, job.started, |delta| {
                if cancel.load(Ordering::Relaxed) || events.send(Event::Delta { choice, delta }).is_err() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            match result {
                Ok(completion) => {
                    let cancelled = completion.finish_reason == super::FinishReason::Cancelled;
                    let _ = job.events.send(Event::Done { choice, completion });
                    if cancelled {
                        self.cancelled.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                Err(e) => {
                    let _ = job.events.send(Event::Error(e));
                    break;
                }
            }
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}
