//! Phi-4-multimodal audio: decoding user audio, the Hub log-mel feature extractor, and the
//! conformer audio tower with its projections into the language model.
//!
//! Pipeline for one clip: [`decode_audio`] (any of wav/flac/mp3/ogg → mono f32) →
//! [`log_mel_features`] (`[T, 80]`; 16 kHz and 8 kHz exactly as the Hub extractor, other rates
//! resampled exactly to 16 kHz first) → [`Phi4AudioEmbedding::encode`] (`[ceil(T/8), hidden]`),
//! whose row count is [`num_audio_tokens`] — the number of `<|endoftext11|>` placeholders the
//! prompt needs for that clip.

pub mod config;
pub mod conformer;
mod container;
pub mod decode;
pub mod embedding;
pub mod mel;
mod ogg_headers;
pub mod resample;

pub use config::Phi4AudioConfig;
pub use decode::{decode_audio, decode_audio_with_limits, AudioLimits, DecodedAudio};
pub use embedding::{AudioProjectionMode, Phi4AudioEmbedding};
pub use mel::{log_mel_features, num_audio_tokens};
pub use resample::{resample, resample_poly};
