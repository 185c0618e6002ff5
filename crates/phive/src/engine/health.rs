//! Containing bugs: a panic while generating one request fails that request, and the engine
//! loop's liveness is visible to front ends (`Engine::is_alive`), so a dead loop turns into a
//! 503 and an unhealthy `/health` instead of requests that hang.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::Error;

/// Runs `work`, turning a panic into [`Error::Internal`] naming `what`. The state `work`
/// touched belongs to the requests the caller then fails, so it is not reused half-updated.
pub fn contain<T>(what: &str, work: impl FnOnce() -> T) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(work)).map_err(|payload| {
        let message = panic_message(payload.as_ref());
        tracing::error!("panic while {what}: {message}");
        Error::Internal(format!("a bug stopped this request while {what}: {message}"))
    })
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Marks the loop dead when dropped: held by the loop thread, it drops when the loop returns
/// or unwinds, before the loop's sequences (and so their callers' channels) are dropped.
pub struct AliveGuard(pub Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
        if std::thread::panicking() {
            tracing::error!("the engine loop panicked: no more requests can be served; restart the server");
        }
    }
}
