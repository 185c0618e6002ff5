//! Bodies of the `cargo fuzz` targets in `fuzz/`, one function per target.
//!
//! They live in the library so the fuzz targets (nightly, libFuzzer) and the corpus replay test
//! (`tests/fuzz_replay.rs`, stable, run in CI) execute the same code. Each takes arbitrary bytes,
//! feeds them to an untrusted-input boundary of phive, and panics only when an invariant of the
//! answer is broken; errors are expected answers. Each returns whether phive accepted the input,
//! so the replay can check that a corpus still reaches the success paths.

use base64::Engine as _;

use crate::api::{ChatCompletionRequest, CompletionRequest, RequestLimits};
use crate::audio::decode_audio;
use crate::media::{decode_image, MediaPolicy, MediaSource};
use crate::prompt::{place_media_tags, ChatMessage, MediaKind, MessagePart};

/// Pixel budget for [`image_decode`]: small enough that every accepted image decodes quickly
/// and within libFuzzer's memory limit, large enough for the corpus fixtures.
const FUZZ_MAX_PIXELS: u64 = 4_000_000;

/// A request body for `/v1/chat/completions` and `/v1/completions`: JSON parsing, then the
/// validation and translation every front end runs.
pub fn chat_request(data: &[u8]) -> bool {
    let mut accepted = false;
    if let Ok(request) = serde_json::from_slice::<ChatCompletionRequest>(data) {
        let limits = RequestLimits::default();
        if let Ok(chat) = request.into_chat(&limits) {
            assert!(chat.images.len() <= limits.max_images, "image limit not enforced");
            let image_parts: usize = chat.messages.iter().map(|m| m.count(MediaKind::Image)).sum();
            assert_eq!(image_parts, chat.images.len(), "one reference per image part");
            accepted = true;
        }
    }
    if let Ok(request) = serde_json::from_slice::<CompletionRequest>(data) {
        accepted |= request.into_text().is_ok();
    }
    accepted
}

/// An encoded image through the decoder phive uses, behind the pixel budget.
pub fn image_decode(data: &[u8]) -> bool {
    let policy = MediaPolicy { max_pixels: FUZZ_MAX_PIXELS, ..MediaPolicy::server() };
    let Ok(image) = decode_image(data, &policy) else { return false };
    let pixels = u64::from(image.width()) * u64::from(image.height());
    assert!(pixels > 0 && pixels <= FUZZ_MAX_PIXELS, "decoded {pixels} pixels past the budget");
    true
}

/// An encoded audio clip (WAV, MP3, FLAC, Ogg/Vorbis) through phive's decoder.
pub fn audio_decode(data: &[u8]) -> bool {
    let Ok(audio) = decode_audio(data, None) else { return false };
    assert!(audio.sample_rate > 0, "decoded audio without a sample rate");
    true
}

/// A media reference (`data:` URL, raw base64, URL or path) classified under the server policy,
/// which never touches the file system; and, for the bytes themselves, the round trip through
/// a base64 `data:` URL.
pub fn data_url(data: &[u8]) -> bool {
    let policy = MediaPolicy::server();
    let text = String::from_utf8_lossy(data);
    let source = MediaSource::parse_with(&text, &policy);
    if let Ok(MediaSource::Inline(bytes)) = &source {
        assert!(!bytes.is_empty() || text.trim().to_ascii_lowercase().starts_with("data:"));
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let url = format!("data:application/octet-stream;base64,{encoded}");
    match MediaSource::parse_with(&url, &policy) {
        Ok(MediaSource::Inline(bytes)) => assert_eq!(bytes, data, "data: URL round trip"),
        other => panic!("a well-formed data: URL was not read as inline bytes: {other:?}"),
    }
    source.is_ok()
}

/// Messages with user-written media tags: the input is split into messages at `\n\n`, and in
/// each message the bytes `\x01` and `\x02` stand for an image and an audio part.
pub fn media_tags(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let messages: Vec<ChatMessage> = text
        .split("\n\n")
        .map(|chunk| {
            let mut parts = Vec::new();
            let mut current = String::new();
            for c in chunk.chars() {
                let media = match c {
                    '\x01' => MessagePart::Image,
                    '\x02' => MessagePart::Audio,
                    _ => {
                        current.push(c);
                        continue;
                    }
                };
                if !current.is_empty() {
                    parts.push(MessagePart::Text(std::mem::take(&mut current)));
                }
                parts.push(media);
            }
            if !current.is_empty() {
                parts.push(MessagePart::Text(current));
            }
            ChatMessage::new("user", parts)
        })
        .collect();
    let kinds = [MediaKind::Image, MediaKind::Audio];
    let Ok(rendered) = place_media_tags(&messages, &kinds, "\n") else { return false };
    assert_eq!(rendered.len(), messages.len());
    for kind in kinds {
        let items: usize = messages.iter().map(|m| m.count(kind)).sum();
        let tags: usize = rendered.iter().map(|r| kind.pattern().find_iter(&r.content).count()).sum();
        assert_eq!(tags, items, "one {kind:?} tag per item");
    }
    true
}
