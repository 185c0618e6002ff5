//! One choice's grammar state, walked on a thread of its own: as soon as a token is accepted the
//! worker computes the next step's mask of allowed tokens, while the batch's forward pass runs,
//! so a constrained row rarely makes the engine loop wait.

use std::sync::mpsc::{channel, Receiver, Sender};

use llguidance::Matcher;
use toktrie::SimpleVob;

use crate::{Error, Result};

/// The allowed-token masks of one constrained choice.
pub struct Constraint {
    accepted: Sender<u32>,
    masks: Receiver<std::result::Result<SimpleVob, String>>,
}

impl Constraint {
    /// Starts the worker; it computes the first mask at once. The worker ends when the
    /// constraint is dropped. Should the thread not start, the first [`Constraint::allowed`]
    /// fails (that request alone).
    pub fn start(mut matcher: Matcher) -> Self {
        let (accepted, tokens) = channel::<u32>();
        let (send_mask, masks) = channel();
        let _ = std::thread::Builder::new().name("phive-grammar".into()).spawn(move || {
            let mut mask = || matcher.compute_mask_or_eos().map_err(|e| e.to_string());
            if send_mask.send(mask()).is_err() {
                return;
            }
            while let Ok(token) = tokens.recv() {
                let next = matcher
                    .consume_token(token)
                    .map_err(|e| e.to_string())
                    .and_then(|_| matcher.compute_mask_or_eos().map_err(|e| e.to_string()));
                if send_mask.send(next).is_err() {
                    return;
                }
            }
        });
        Constraint { accepted, masks }
    }

    /// The tokens the grammar allows next (waits for the worker if it is still computing).
    /// Call once per step, then [`Constraint::accept`] the chosen token.
    pub fn allowed(&mut self) -> Result<SimpleVob> {
        let mask = self
            .masks
            .recv()
            .map_err(|_| Error::Internal("the grammar worker stopped".into()))?
            .map_err(|e| Error::Internal(format!("constrained decoding failed: {e}")))?;
        if mask.is_zero() {
            return Err(Error::Internal("the grammar allows no next token".into()));
        }
        Ok(mask)
    }

    /// Advances the grammar past `token` and starts computing the next mask.
    pub fn accept(&mut self, token: u32) {
        // A worker that died reports it at the next `allowed`.
        let _ = self.accepted.send(token);
    }
}

/// Sets the logits of tokens `allowed` excludes to minus infinity.
pub fn mask_logits(logits: &mut [f32], allowed: &SimpleVob) {
    for (id, logit) in logits.iter_mut().enumerate() {
        if !allowed.is_allowed(id as u32) {
            *logit = f32::NEG_INFINITY;
        }
    }
}
