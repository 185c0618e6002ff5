//! What reaches the engine loop, and the mailbox that carries it.
//!
//! Sending a message that brings the loop new work raises a flag that an interruptible step
//! watches (see `scheduler`): a prompt prefilling alone in long chunks yields to a newcomer
//! within a part of a layer instead of making it wait out the chunk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use super::sequence::Sequence;

/// What reaches the engine loop.
pub enum Message {
    /// A new request's first sequence.
    Submit(Sequence),
    /// A sequence whose media are encoded (or whose request failed while encoding).
    Encoded(Sequence),
    /// Stop accepting requests; finish what is running, then exit.
    Shutdown,
}

impl Message {
    /// Whether the loop can schedule this at once: a request with media goes to the encoder
    /// first, which takes seconds, so its arrival is no reason to cut a step short.
    fn is_ready_work(&self) -> bool {
        match self {
            Message::Submit(sequence) => sequence.request.prepared.tokens.media.is_empty(),
            Message::Encoded(_) => true,
            Message::Shutdown => false,
        }
    }
}

/// The sending side of the loop's inbox.
#[derive(Clone)]
pub struct Mailbox {
    sender: mpsc::Sender<Message>,
    arrived: Arc<AtomicBool>,
}

impl Mailbox {
    /// A mailbox, the loop's receiving end, and the flag raised when ready work arrives (the
    /// loop lowers it before it reads its inbox).
    pub fn new() -> (Self, mpsc::Receiver<Message>, Arc<AtomicBool>) {
        let (sender, receiver) = mpsc::channel();
        let arrived = Arc::new(AtomicBool::new(false));
        (Self { sender, arrived: Arc::clone(&arrived) }, receiver, arrived)
    }

    /// Sends `message`; false when the loop is gone.
    pub fn send(&self, message: Message) -> bool {
        let ready = message.is_ready_work();
        let sent = self.sender.send(message).is_ok();
        if sent && ready {
            self.arrived.store(true, Ordering::SeqCst);
        }
        sent
    }
}
