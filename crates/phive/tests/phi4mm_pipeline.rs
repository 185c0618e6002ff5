//! Phi-4-multimodal end to end through the public pipeline: our tags, template, image and audio
//! preprocessing, placeholder expansion, adapter routing and decoding reproduce the reference's
//! input ids and 16 greedy tokens for text, one image, two images, one audio clip, and image +
//! audio.

mod common;

use phive::audio::decode_audio;
use phive::checkpoint::Architecture;
use phive::engine::{EngineConfig, GenerationParams};
use phive::pipeline::{LoadOptions, Pipeline};
use phive::prompt::{ChatMessage, MessagePart};

fn load() -> Pipeline {
    let model = common::phi4mm_tiny().to_string_lossy().into_owned();
    Pipeline::load(&LoadOptions { model, ..Default::default() }).unwrap()
}

#[test]
fn every_golden_case_reproduces_ids_and_greedy_tokens() {
    let engine = common::engine(&common::phi4mm_tiny(), EngineConfig::default());
    let pipeline = engine.pipeline();
    assert_eq!(pipeline.architecture(), Architecture::Phi4MM);
    assert!(pipeline.accepts_audio());
    let goldens = common::golden_json("phi4mm/generation.json");
    for case in goldens["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let prepared = common::phi4mm_prepare(pipeline, case);
        assert_eq!(prepared.text, case["prompt"].as_str().unwrap(), "{name}: prompt");
        assert_eq!(prepared.tokens.ids, common::golden_ids(&case["input_ids"], 0), "{name}: input ids");
        let params = GenerationParams { max_tokens: Some(16), ..Default::default() };
        let completion = common::complete(&engine, prepared, &params);
        assert_eq!(completion.tokens, common::greedy_tokens(case), "{name}: greedy tokens");
    }
}

#[test]
fn tags_are_placed_without_a_newline_when_absent() {
    let pipeline = load();
    let image = common::image("odd_333x777.png");
    let messages = vec![ChatMessage::new(
        "user",
        vec![MessagePart::Image, MessagePart::Text("What is shown in this image?".into())],
    )];
    let prepared = pipeline.prepare(&messages, &[image]).unwrap();
    assert_eq!(prepared.text, "<|user|><|image_1|>What is shown in this image?<|end|><|assistant|>");
}

#[test]
fn bad_audio_and_bad_images_get_distinct_errors() {
    let pipeline = load();
    let corrupt = std::fs::read(common::fixtures().join("audio/corrupt.wav")).unwrap();
    let audio_err = decode_audio(&corrupt, None).unwrap_err().to_string();
    let empty = std::fs::read(common::fixtures().join("audio/empty.wav")).unwrap();
    let empty_err = decode_audio(&empty, None).unwrap_err().to_string();
    assert_ne!(audio_err, empty_err);
    let image_err =
        phive::media::decode_image(b"\x89PNG\r\n\x1a\nnot really", &phive::media::MediaPolicy::trusted())
            .unwrap_err()
            .to_string();
    assert!(image_err.contains("image"), "{image_err}");
    // An audio part without an audio input, and an extreme aspect ratio, are request errors.
    let messages = vec![ChatMessage::new("user", vec![MessagePart::Audio])];
    let err = pipeline.prepare_media(&messages, &[], &[]).err().unwrap().to_string();
    assert!(err.contains("1 audio input(s) but 0 were supplied"), "{err}");
    let sliver = image::DynamicImage::new_rgb8(4000, 3);
    let messages = vec![ChatMessage::new("user", vec![MessagePart::Image])];
    let err = pipeline.prepare(&messages, &[sliver]).err().unwrap().to_string();
    assert!(err.contains("aspect ratio"), "{err}");
}
