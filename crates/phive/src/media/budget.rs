//! A shared budget of decoded media bytes.
//!
//! A decoded image costs width x height x 4 bytes whatever its file size (a 200 KB PNG can
//! decode to 200 MB), and a request holds its decoded images and audio until its prompt is
//! prepared. The per-item limits bound one request; this budget bounds all of them together,
//! so many large uploads at once are refused (and retried) instead of exhausting memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{Error, Result};

/// Bytes of decoded media that may be held at once, shared by clones.
#[derive(Debug, Clone)]
pub struct MediaBudget {
    limit: u64,
    used: Arc<AtomicU64>,
}

/// A share of a [`MediaBudget`], given back when dropped.
#[derive(Debug)]
#[must_use = "the bytes are released as soon as the reservation is dropped"]
pub struct MediaReservation {
    used: Arc<AtomicU64>,
    bytes: u64,
}

impl Default for MediaBudget {
    /// No limit.
    fn default() -> Self {
        MediaBudget::new(u64::MAX)
    }
}

impl MediaBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        MediaBudget { limit, used: Arc::new(AtomicU64::new(0)) }
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Reserves `bytes` for `what`. Fails with [`Error::QueueFull`] (retry later) when the
    /// budget is taken by other requests, and with [`Error::Media`] when `bytes` alone exceed
    /// it (retrying cannot help).
    pub fn reserve(&self, bytes: u64, what: &str) -> Result<MediaReservation> {
        if bytes > self.limit {
            return Err(Error::Media(format!(
                "{what} decodes to {bytes} bytes, more than the server's whole budget for decoded media \
                 ({} bytes, --max-media-mem)",
                self.limit
            )));
        }
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .map_err(|used| {
                Error::QueueFull(format!(
                    "decoded images and audio of requests in progress hold {used} of {} bytes \
                     (--max-media-mem); {what} needs {bytes}",
                    self.limit
                ))
            })?;
        Ok(MediaReservation { used: Arc::clone(&self.used), bytes })
    }
}

impl Drop for MediaReservation {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_limit_and_release_on_drop() {
        let budget = MediaBudget::new(100);
        let a = budget.reserve(60, "image 1").unwrap();
        let busy = budget.reserve(50, "image 2").unwrap_err();
        assert!(matches!(busy, Error::QueueFull(_)), "{busy}");
        let b = budget.clone().reserve(40, "image 2").unwrap();
        assert_eq!(budget.in_use(), 100);
        drop(a);
        assert_eq!(budget.in_use(), 40);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        assert!(matches!(budget.reserve(101, "image 3").unwrap_err(), Error::Media(_)));
    }
}
