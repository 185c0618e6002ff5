//! One answer in the terminal, shared by `phive run` and `phive chat`: its text streamed to
//! stdout as it is generated, then its figures.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use phive::engine::{Completion, Event, RequestHandle};

/// Writes the answer's text to `out` as it arrives and returns the completion. If `out` is
/// closed, the handle is dropped, which cancels the request.
pub fn stream(mut handle: RequestHandle, out: &mut impl Write) -> anyhow::Result<Completion> {
    let mut completion = None;
    while let Some(event) = handle.next_blocking() {
        match event {
            Event::Delta { delta, .. } => {
                if out.write_all(delta.text.as_bytes()).and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
            Event::Done { completion: done, .. } => completion = Some(done),
            Event::Error(e) => return Err(e.into()),
        }
    }
    completion.context("generation was interrupted")
}

/// The figures of one answer: token counts by kind, time to first token, prefill and decode
/// speeds, and `wall`, the time the caller waited for it.
pub fn figures(completion: &Completion, wall: Duration) -> String {
    let u = &completion.usage;
    format!(
        "prompt tokens: {} ({} image, {} audio) | completion tokens: {} | finish: {:?}\n\
         time to first token: {:.2}s | prefill: {:.1} tok/s | decode: {:.1} tok/s | total: {:.2}s",
        u.prompt_tokens,
        u.image_tokens,
        u.audio_tokens,
        u.completion_tokens,
        completion.finish_reason,
        u.time_to_first_token.as_secs_f64(),
        u.prompt_tokens_per_sec(),
        u.completion_tokens_per_sec(),
        wall.as_secs_f64(),
    )
}
