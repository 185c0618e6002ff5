//! The encoder cache: the same picture (from any source) is encoded once across requests, a
//! changed pixel or another audio projection misses, eviction keeps the byte budget, and
//! answers with the cache equal answers without it.

mod common;

use base64::Engine as _;
use image::DynamicImage;
use phive::audio::decode_audio;
use phive::engine::{Completion, Engine, EngineConfig, GenerationParams};
use phive::media::{load_image, MediaPolicy};
use phive::prompt::{ChatMessage, MessagePart};

fn params() -> GenerationParams {
    GenerationParams { max_tokens: Some(12), logprobs: Some(2), ..Default::default() }
}

/// A conversation about `images`: earlier text, the pictures, a question.
fn ask(engine: &Engine, earlier: &str, images: &[DynamicImage]) -> Completion {
    let mut parts = vec![MessagePart::Text(earlier.into())];
    parts.extend(images.iter().map(|_| MessagePart::Image));
    parts.push(MessagePart::Text("What is in this picture?".into()));
    let messages = [ChatMessage::new("user", parts)];
    let prepared = engine.pipeline().prepare(&messages, images).unwrap();
    common::complete(engine, prepared, &params())
}

fn same(a: &Completion, b: &Completion) {
    assert_eq!(a.tokens, b.tokens);
    for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
        assert!((x.chosen.logprob - y.chosen.logprob).abs() < 1e-4);
    }
}

fn hits_misses(engine: &Engine) -> (u64, u64) {
    let s = engine.stats();
    (s.media_cache_hits, s.media_cache_misses)
}

#[test]
fn the_same_picture_from_another_source_hits_and_answers_exactly() {
    let cached = common::engine(&common::phi3v_tiny(), EngineConfig::default());
    let uncached =
        common::engine(&common::phi3v_tiny(), EngineConfig { media_cache_bytes: 0, ..Default::default() });
    let path = common::fixtures().join("images/wide_1000x600.png");
    let from_file = load_image(&path.to_string_lossy(), &MediaPolicy::trusted()).unwrap();
    let first = ask(&cached, "Hello.", std::slice::from_ref(&from_file));
    assert_eq!(hits_misses(&cached), (0, 1));
    // The same bytes as a data URL, after different text: the vision tower is skipped.
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&path).unwrap());
    let from_url = load_image(&format!("data:image/png;base64,{b64}"), &MediaPolicy::trusted()).unwrap();
    let second = ask(&cached, "A new question about the same picture.", std::slice::from_ref(&from_url));
    assert_eq!(hits_misses(&cached), (1, 1));
    assert!(cached.stats().media_cache_bytes > 0 && cached.stats().media_cache_items == 1);
    // Exact: the same answers as an engine without the cache.
    same(&first, &ask(&uncached, "Hello.", std::slice::from_ref(&from_file)));
    same(&second, &ask(&uncached, "A new question about the same picture.", &[from_url]));
    assert_eq!(hits_misses(&uncached), (0, 2));
    // One changed pixel misses.
    let mut changed = from_file.to_rgb8();
    let p = changed.get_pixel_mut(500, 300);
    p.0[0] = p.0[0].wrapping_add(1);
    ask(&cached, "Hello.", &[DynamicImage::ImageRgb8(changed)]);
    assert_eq!(hits_misses(&cached), (1, 2));
}

#[test]
fn eviction_keeps_the_byte_budget() {
    let probe = common::engine(&common::phi3v_tiny(), EngineConfig::default());
    let a = common::image("wide_1000x600.png");
    let b = common::image("portrait_480x640.png");
    ask(&probe, "Hi.", std::slice::from_ref(&a));
    let one_image = probe.stats().media_cache_bytes;
    drop(probe);
    // Room for one picture's features only.
    let engine = common::engine(
        &common::phi3v_tiny(),
        EngineConfig { media_cache_bytes: one_image + one_image / 2, ..Default::default() },
    );
    ask(&engine, "Hi.", std::slice::from_ref(&a));
    ask(&engine, "Hi.", std::slice::from_ref(&b)); // evicts a
    ask(&engine, "Hi.", std::slice::from_ref(&a)); // encoded again
    assert_eq!(hits_misses(&engine), (0, 3));
    assert_eq!(engine.stats().media_cache_items, 1);
    assert!(engine.stats().media_cache_bytes <= one_image + one_image / 2);
    ask(&engine, "Again.", std::slice::from_ref(&a));
    assert_eq!(hits_misses(&engine), (1, 3));
}

#[test]
fn phi4_audio_under_another_projection_misses() {
    let engine = common::engine(&common::phi4mm_tiny(), EngineConfig::default());
    let goldens = common::golden_json("phi4mm/generation.json");
    let case =
        |name: &str| goldens["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    let run = |case: &serde_json::Value| {
        common::complete(&engine, common::phi4mm_prepare(engine.pipeline(), case), &params())
    };
    // Audio alone (speech projection), then the same audio beside an image (vision projection).
    let audio = case("one_audio");
    let mut with_image = case("image_and_audio");
    with_image["audios"] = audio["audios"].clone();
    run(&audio);
    assert_eq!(hits_misses(&engine), (0, 1));
    run(&with_image);
    assert_eq!(hits_misses(&engine), (0, 3), "the clip under the vision projection is another key");
    // Asked again, both requests hit, and answer as before.
    let again = run(&with_image);
    assert_eq!(hits_misses(&engine), (2, 3));
    let fresh =
        common::engine(&common::phi4mm_tiny(), EngineConfig { media_cache_bytes: 0, ..Default::default() });
    same(&again, &common::complete(&fresh, common::phi4mm_prepare(fresh.pipeline(), &with_image), &params()));
    // The decoded audio really is the same clip in both requests.
    let read = |c: &serde_json::Value| {
        let path = common::fixtures().join("../..").join(c["audios"][0].as_str().unwrap());
        decode_audio(&std::fs::read(path).unwrap(), None).unwrap().samples
    };
    assert_eq!(read(&audio), read(&with_image));
}
