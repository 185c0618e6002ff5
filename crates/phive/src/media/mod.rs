//! Media sources: resolving an image reference (http(s) URL, `data:` URL, raw base64, local
//! path or `file://` URL) to bytes under a policy, and decoding it within limits.
//!
//! Fetching media is a security boundary for a server, so every source goes through a
//! [`MediaPolicy`] that says which kinds are allowed and how large things may get.

mod budget;
mod net;
mod source;

pub use budget::{MediaBudget, MediaReservation};
pub use net::{forbidden_reason, resolve_checked};
pub use source::{
    decode_image, load_audio, load_audio_held, load_image, load_image_held, MediaPolicy, MediaSource,
};
