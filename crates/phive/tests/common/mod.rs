//! Fixture paths and golden loading shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use phive::audio::decode_audio;
use phive::pipeline::{Pipeline, PreparedPrompt};
use phive::prompt::{ChatMessage, MediaKind, MessagePart};

/// `tests/fixtures` at the repository root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The tiny Phi-3.5-vision checkpoint.
pub fn phi3v_tiny() -> PathBuf {
    fixtures().join("phi3v-tiny")
}

/// The tiny Phi-4-multimodal checkpoint.
pub fn phi4mm_tiny() -> PathBuf {
    fixtures().join("phi4mm-tiny")
}

/// A Phi-4 golden case (tagged messages, image and audio paths relative to the repository
/// root) prepared by `pipeline`.
pub fn phi4mm_prepare(pipeline: &Pipeline, case: &serde_json::Value) -> PreparedPrompt {
    let paths = |key: &str| -> Vec<PathBuf> {
        let root = fixtures().join("../..");
        case[key].as_array().unwrap().iter().map(|p| root.join(p.as_str().unwrap())).collect()
    };
    let images: Vec<_> = paths("images").iter().map(|p| image::open(p).unwrap()).collect();
    let audios: Vec<_> =
        paths("audios").iter().map(|p| decode_audio(&std::fs::read(p).unwrap(), None).unwrap()).collect();
    pipeline.prepare_media(&with_media_parts(&case["messages"]), &images, &audios).unwrap()
}

/// A fixture image.
pub fn image(name: &str) -> image::DynamicImage {
    image::open(fixtures().join("images").join(name)).unwrap()
}

/// Parses a golden JSON file.
pub fn golden_json(relative: &str) -> serde_json::Value {
    read_json(&fixtures().join("goldens").join(relative))
}

/// Parses a JSON file, naming it when it cannot be read.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A checkpoint's shard files, as named by its `model.safetensors.index.json`, deduplicated.
pub fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let index = read_json(&dir.join("model.safetensors.index.json"));
    let mut files: Vec<String> =
        index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap().to_string()).collect();
    files.sort();
    files.dedup();
    files.into_iter().map(|f| dir.join(f)).collect()
}

/// `tests/fixtures/goldens/phi4mm`.
pub fn phi4mm_goldens() -> PathBuf {
    fixtures().join("goldens/phi4mm")
}

/// OpenAI-style messages (content a string or parts with `image_url` file names) as phive
/// messages plus the images they reference, in order.
pub fn openai_messages(messages: &serde_json::Value) -> (Vec<ChatMessage>, Vec<image::DynamicImage>) {
    let mut images = Vec::new();
    let chat = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role = m["role"].as_str().unwrap().to_string();
            let parts = match &m["content"] {
                serde_json::Value::String(s) => vec![MessagePart::Text(s.clone())],
                serde_json::Value::Array(parts) => parts
                    .iter()
                    .map(|p| match p["type"].as_str().unwrap() {
                        "text" => MessagePart::Text(p["text"].as_str().unwrap().to_string()),
                        "image_url" => {
                            images.push(image(p["image_url"]["url"].as_str().unwrap()));
                            MessagePart::Image
                        }
                        other => panic!("unexpected part {other}"),
                    })
                    .collect(),
                other => panic!("unexpected content {other}"),
            };
            ChatMessage { role, parts }
        })
        .collect();
    (chat, images)
}

/// A golden id list as u32, with HF's negative image placeholders mapped to `placeholder`.
pub fn golden_ids(value: &serde_json::Value, placeholder: u32) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let id = v.as_i64().unwrap();
            if id < 0 {
                placeholder
            } else {
                id as u32
            }
        })
        .collect()
}

/// Messages whose text carries explicit tags (as the Phi-4 goldens write them), each followed by
/// one media part per tag: the tags are written, so phive keeps them and only checks counts.
pub fn with_media_parts(messages: &serde_json::Value) -> Vec<ChatMessage> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let text = m["content"].as_str().unwrap();
            let mut parts = vec![MessagePart::Text(text.to_string())];
            parts.extend(MediaKind::Image.pattern().find_iter(text).map(|_| MessagePart::Image));
            parts.extend(MediaKind::Audio.pattern().find_iter(text).map(|_| MessagePart::Audio));
            ChatMessage { role: m["role"].as_str().unwrap().to_string(), parts }
        })
        .collect()
}
