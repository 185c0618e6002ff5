//! Phi-4-multimodal prompt expansion against the reference processor's input ids.

mod common;

use phive::checkpoint::TokenizerBundle;
use phive::checkpoint::{FileFetcher, ModelLocation};
use phive::prompt::{expand_phi4mm, place_media_tags, ChatTemplate, MediaKind, Placeholder};

fn bundle() -> TokenizerBundle {
    let dir = common::phi4mm_tiny();
    let mut fetcher = FileFetcher::new(ModelLocation::Local(dir));
    TokenizerBundle::fetch(&mut fetcher).unwrap()
}

fn counts(case: &serde_json::Value, key: &str) -> Vec<usize> {
    case[key].as_array().map(|a| a.iter().map(|v| v.as_u64().unwrap() as usize).collect()).unwrap_or_default()
}

#[test]
fn every_golden_prompt_expands_to_the_reference_ids() {
    let bundle = bundle();
    let template =
        ChatTemplate::new(&bundle.chat_template, bundle.bos_token.as_deref(), bundle.eos_token.as_deref())
            .unwrap();
    let goldens = common::golden_json("phi4mm/generation.json");
    for case in goldens["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let messages = common::with_media_parts(&case["messages"]);
        let rendered = place_media_tags(&messages, &[MediaKind::Image, MediaKind::Audio], "").unwrap();
        let prompt = template.render(&rendered, true).unwrap();
        assert_eq!(prompt, case["prompt"].as_str().unwrap(), "{name}: rendered prompt");
        let image_counts = counts(case, "num_image_tokens");
        let audio_counts = counts(case, "num_audio_tokens");
        let tokens = expand_phi4mm(
            &bundle.tokenizer,
            &prompt,
            &[
                Placeholder { kind: MediaKind::Image, token: 200010, counts: &image_counts },
                Placeholder { kind: MediaKind::Audio, token: 200011, counts: &audio_counts },
            ],
        )
        .unwrap();
        assert_eq!(tokens.ids, common::golden_ids(&case["input_ids"], 0), "{name}: input ids");
        assert_eq!(tokens.media.len(), image_counts.len() + audio_counts.len(), "{name}: spans");
    }
}

#[test]
fn placeholder_count_mismatch_is_an_error() {
    let bundle = bundle();
    let err = expand_phi4mm(
        &bundle.tokenizer,
        "<|user|><|image_1|><|image_2|>hi<|end|>",
        &[Placeholder { kind: MediaKind::Image, token: 200010, counts: &[10] }],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("2 image placeholder(s)") && err.contains("1 image input(s)"), "{err}");
}
