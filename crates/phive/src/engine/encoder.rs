//! Image and audio encoding beside the engine loop.
//!
//! A full-width CLIP or SigLIP tower takes seconds per picture on a CPU; run inside a step, it
//! would freeze every other sequence's streaming for that long. So a request with media goes
//! to this thread first: it encodes every media item once (the features stay in the request's
//! prepared prompt, shared by all its choices and by recomputation after a preemption), then
//! hands the sequence back to the loop, which schedules its prefill like any other.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use super::health::contain;
use super::inbox::{Mailbox, Message};
use super::media_cache::MediaCache;
use super::sequence::Sequence;
use super::service::Event;
use crate::models::MediaKey;
use crate::pipeline::Pipeline;
use crate::Result;

/// The encoding thread.
pub struct Encoder {
    jobs: Option<mpsc::Sender<Sequence>>,
    thread: Option<JoinHandle<()>>,
}

impl Encoder {
    /// Starts the thread; encoded sequences come back through `done`. Features are looked up in
    /// and added to `cache`.
    pub fn start(pipeline: Arc<Pipeline>, cache: Arc<Mutex<MediaCache>>, done: Mailbox) -> Self {
        let (jobs, receiver) = mpsc::channel::<Sequence>();
        let thread = std::thread::Builder::new()
            .name("phive-encoder".into())
            .spawn(move || {
                for mut sequence in receiver {
                    if let Err(e) = contain("encoding media", || encode(&pipeline, &cache, &mut sequence)) {
                        sequence.request.send(Event::Error(e));
                        sequence.request.cancel.store(true, Ordering::Relaxed);
                    }
                    if !done.send(Message::Encoded(sequence)) {
                        return;
                    }
                }
            })
            .expect("spawning the encoder thread");
        Self { jobs: Some(jobs), thread: Some(thread) }
    }

    /// Queues `sequence` for encoding.
    pub fn submit(&self, sequence: Sequence) {
        if let Some(jobs) = &self.jobs {
            // The thread only stops when this sender is dropped, so the send cannot fail.
            let _ = jobs.send(sequence);
        }
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Encodes every media span of the sequence's prompt (or takes it from the cache) and records
/// the items' content keys (for the prefix cache); a failure fails the request.
fn encode(pipeline: &Pipeline, cache: &Mutex<MediaCache>, sequence: &mut Sequence) {
    let request = &sequence.request;
    let mut keys = Vec::with_capacity(request.prepared.tokens.media.len());
    for index in 0..request.prepared.tokens.media.len() {
        if request.is_cancelled() {
            return;
        }
        match encode_span(pipeline, cache, sequence, index) {
            Ok(key) => keys.push(key),
            Err(e) => {
                request.send(Event::Error(e));
                request.cancel.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
    sequence.media_keys = keys;
}

/// Makes sure media span `index` has its features; returns the item's content key.
fn encode_span(
    pipeline: &Pipeline,
    cache: &Mutex<MediaCache>,
    sequence: &Sequence,
    index: usize,
) -> Result<MediaKey> {
    let prepared = &sequence.request.prepared;
    let (model, span) = (pipeline.model(), &prepared.tokens.media[index]);
    let key = model.media_key(prepared.media(), span)?;
    prepared.span_features_or(index, || {
        if let Some(features) = cache.lock().map_err(|_| poisoned())?.get(&key) {
            return Ok(features);
        }
        let features = model.encode(prepared.media(), span)?;
        cache.lock().map_err(|_| poisoned())?.insert(key, features.clone());
        Ok(features)
    })?;
    Ok(key)
}

fn poisoned() -> crate::Error {
    crate::Error::Tensor(candle_core::Error::Msg("the media cache lock was poisoned".into()))
}
