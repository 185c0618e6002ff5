//! The prefix cache: a prompt that starts like an earlier one (the next turn of a chat, a shared
//! system prompt) takes the earlier KV blocks and computes only the rest, with exactly the
//! answers of an engine without the cache; media are matched by content and Phi-4's adapters
//! never share; eviction, concurrency and cancellation keep everything exact and every block
//! accounted for.

mod common;

use base64::Engine as _;
use image::DynamicImage;
use phive::audio::decode_audio;
use phive::engine::{Completion, Engine, EngineConfig, GenerationParams};
use phive::media::{load_image, MediaPolicy};
use phive::pipeline::PreparedPrompt;
use phive::prompt::{ChatMessage, MessagePart};

const BLOCK: usize = 16;

fn params(max_tokens: usize) -> GenerationParams {
    GenerationParams { max_tokens: Some(max_tokens), logprobs: Some(2), ..Default::default() }
}

/// An engine without either cache: every token computed, every image encoded.
fn uncached(dir: &std::path::Path) -> Engine {
    common::engine(dir, EngineConfig { prefix_cache: false, media_cache_bytes: 0, ..Default::default() })
}

fn message(role: &str, parts: Vec<MessagePart>) -> ChatMessage {
    ChatMessage::new(role, parts)
}

fn text(role: &str, text: &str) -> ChatMessage {
    message(role, vec![MessagePart::Text(text.into())])
}

/// Tokens identical, logprobs within 1e-4.
fn assert_same(name: &str, got: &Completion, want: &Completion) {
    assert_eq!(got.tokens, want.tokens, "{name}: tokens");
    assert_eq!(got.text, want.text, "{name}: text");
    for (a, b) in got.logprobs.iter().zip(&want.logprobs) {
        let diff = (a.chosen.logprob - b.chosen.logprob).abs();
        assert!(diff < 1e-4, "{name}: logprob differs by {diff}");
        for (x, y) in a.top_logprobs.iter().zip(&b.top_logprobs) {
            assert_eq!(x.token_id, y.token_id, "{name}: top logprob tokens");
        }
    }
}

/// Plays a three-turn chat about `image` on `engine`: each turn resends the whole conversation.
fn chat(engine: &Engine, image: &DynamicImage) -> Vec<Completion> {
    let mut messages = vec![
        text("system", "You are a careful assistant who answers questions about pictures."),
        message("user", vec![MessagePart::Image, MessagePart::Text("What is in this picture?".into())]),
    ];
    let mut answers = Vec::new();
    for question in ["And what colours does it have?", "Describe it in one word."] {
        let prepared = engine.pipeline().prepare(&messages, std::slice::from_ref(image)).unwrap();
        let answer = common::complete(engine, prepared, &params(10));
        messages.push(text("assistant", &answer.text));
        messages.push(text("user", question));
        answers.push(answer);
    }
    let prepared = engine.pipeline().prepare(&messages, std::slice::from_ref(image)).unwrap();
    answers.push(common::complete(engine, prepared, &params(10)));
    answers
}

fn multi_turn_chat_is_exact(dir: &std::path::Path) {
    let image = common::image("wide_1000x600.png");
    let engine = common::engine(dir, EngineConfig::default());
    let with_caches = chat(&engine, &image);
    let without = chat(&uncached(dir), &image);
    for (turn, (got, want)) in with_caches.iter().zip(&without).enumerate() {
        assert_same(&format!("turn {turn}"), got, want);
        assert_eq!(want.usage.cached_tokens, 0, "nothing is cached without the cache");
    }
    assert_eq!(with_caches[0].usage.cached_tokens, 0, "the first turn has nothing to reuse");
    for later in &with_caches[1..] {
        let (cached, prompt) = (later.usage.cached_tokens, later.usage.prompt_tokens);
        assert!(cached % BLOCK == 0 && cached < prompt, "{cached} of {prompt}");
        // At least the system prompt, the picture and the first question come from the cache.
        assert!(cached >= with_caches[0].usage.prompt_tokens - BLOCK, "{cached} of {prompt}");
    }
    common::wait_until_idle(&engine);
    let stats = engine.stats();
    let reused: usize = with_caches.iter().map(|c| c.usage.cached_tokens).sum();
    assert_eq!(stats.prefix_cache_hit_tokens, reused as u64);
    let prompts: usize = with_caches.iter().map(|c| c.usage.prompt_tokens).sum();
    assert_eq!(stats.prefix_cache_queried_tokens, prompts as u64);
    assert!(stats.prefix_cache_blocks > 0);
}

#[test]
fn phi3v_multi_turn_chat_with_an_image_is_exact() {
    multi_turn_chat_is_exact(&common::phi3v_tiny());
}

#[test]
fn phi4mm_multi_turn_chat_with_an_image_is_exact() {
    multi_turn_chat_is_exact(&common::phi4mm_tiny());
}

/// A question about `image` after a long system prompt, prepared.
fn question_about(engine: &Engine, image: &DynamicImage) -> PreparedPrompt {
    let messages = [
        text("system", &"Answer briefly and precisely. ".repeat(6)),
        message(
            "user",
            vec![
                MessagePart::Text("Look:".into()),
                MessagePart::Image,
                MessagePart::Text("What is it?".into()),
            ],
        ),
    ];
    engine.pipeline().prepare(&messages, std::slice::from_ref(image)).unwrap()
}

/// [`question_about`] asked: the prompt's length, where its picture starts, and the answer.
fn ask_about(engine: &Engine, image: &DynamicImage) -> (usize, usize, Completion) {
    let prepared = question_about(engine, image);
    let (len, image_start) = (prepared.tokens.ids.len(), prepared.tokens.media[0].start);
    (len, image_start, common::complete(engine, prepared, &params(6)))
}

#[test]
fn the_same_picture_by_url_and_base64_hits_and_one_changed_pixel_misses() {
    let dir = common::phi3v_tiny();
    // The encoder cache is off, so only the prefix cache can skip the picture.
    let engine = common::engine(&dir, EngineConfig { media_cache_bytes: 0, ..Default::default() });
    let path = common::fixtures().join("images/shapes_640x480.png");
    let from_file = load_image(&path.to_string_lossy(), &MediaPolicy::trusted()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&path).unwrap());
    let from_data_url = load_image(&format!("data:image/png;base64,{b64}"), &MediaPolicy::trusted()).unwrap();

    let (prompt, image_start, first) = ask_about(&engine, &from_file);
    let (_, _, again) = ask_about(&engine, &from_data_url);
    assert_eq!(again.usage.cached_tokens, (prompt - 1) / BLOCK * BLOCK, "all but the last block");
    assert_same("base64", &again, &first);

    let mut changed = from_file.to_rgb8();
    let p = changed.get_pixel_mut(320, 240);
    p.0[1] = p.0[1].wrapping_add(1);
    let (_, _, other) = ask_about(&engine, &DynamicImage::ImageRgb8(changed.clone()));
    assert!(other.usage.cached_tokens <= image_start, "only the text before the picture is shared");
    assert!(other.usage.cached_tokens >= image_start / BLOCK * BLOCK, "the text before it is");
    let (_, _, reference) = ask_about(&uncached(&dir), &DynamicImage::ImageRgb8(changed));
    assert_same("changed pixel", &other, &reference);
}

/// The Phi-4 fixture's speech-like clip.
fn clip() -> phive::audio::DecodedAudio {
    let path = common::fixtures().join("audio/speechlike_8k.wav");
    decode_audio(&std::fs::read(path).unwrap(), None).unwrap()
}

#[test]
fn phi4_adapters_never_share_blocks() {
    let dir = common::phi4mm_tiny();
    let engine = common::engine(&dir, EngineConfig::default());
    let long_text = "Listen carefully to everything that follows and answer in one sentence. ".repeat(4);
    let prepare = |parts: Vec<MessagePart>, audios: &[phive::audio::DecodedAudio]| {
        engine.pipeline().prepare_media(&[message("user", parts)], &[], audios).unwrap()
    };
    let run = |parts, audios: &[_]| common::complete(&engine, prepare(parts, audios), &params(4));
    let plain = || vec![MessagePart::Text(long_text.clone()), MessagePart::Text("Thanks.".into())];
    let with_audio = || vec![MessagePart::Text(long_text.clone()), MessagePart::Audio];
    // Text only (no adapter), then the same text before a clip (the speech adapter): the
    // leading tokens are the same, the keys and values are not.
    let (a, b) = (prepare(plain(), &[]).tokens.ids, prepare(with_audio(), &[clip()]).tokens.ids);
    assert!(a[..3 * BLOCK] == b[..3 * BLOCK], "the prompts share their first blocks of tokens");
    run(plain(), &[]);
    let speech = run(with_audio(), &[clip()]);
    assert_eq!(speech.usage.cached_tokens, 0, "a text prefix is not reused under the speech adapter");
    let speech_again = run(with_audio(), &[clip()]);
    assert!(speech_again.usage.cached_tokens > 0, "the same adapter reuses it");
    assert_same("speech", &speech_again, &speech);
    assert!(run(plain(), &[]).usage.cached_tokens > 0);
}

#[test]
fn eviction_under_a_small_pool_never_preempts_or_fails() {
    let dir = common::phi3v_tiny();
    let pictures = ["gradient_336x336.png", "tiny_50x50.png", "gray_400x300.png"];
    let probe = common::engine(&dir, EngineConfig::default());
    let longest = pictures.iter().map(|p| question_about(&probe, &common::image(p)).tokens.ids.len()).max();
    let block_bytes = probe.stats().kv_block_bytes as u64;
    drop(probe);
    // Room for one request (and its answer) at a time, so every new picture evicts the last.
    let blocks = (longest.unwrap() + 8).div_ceil(BLOCK) as u64 + 1;
    let config = EngineConfig {
        kv_cache_bytes: Some(blocks * block_bytes),
        media_cache_bytes: 0,
        ..Default::default()
    };
    let engine = common::engine(&dir, config);
    let reference = uncached(&dir);
    for round in 0..2 {
        for name in pictures {
            let picture = common::image(name);
            let (_, _, got) = ask_about(&engine, &picture);
            let (_, _, want) = ask_about(&reference, &picture);
            assert_same(&format!("{name} round {round}"), &got, &want);
        }
    }
    common::wait_until_idle(&engine);
    let stats = engine.stats();
    assert_eq!(stats.preemptions, 0, "cached blocks are evicted, never a running sequence");
    assert!(stats.prefix_cache_hit_tokens > 0, "the shared system prompt still hits");
    assert!(stats.prefix_cache_blocks <= stats.kv_blocks_free + stats.kv_blocks_used);
}

/// Question `i` after one long system prompt that every question shares.
fn shared_prompt_question(engine: &Engine, i: usize) -> PreparedPrompt {
    let system = "You are the assistant of a museum. Visitors ask about paintings, opening hours, \
                  tickets and the cafe; answer kindly and briefly. "
        .repeat(5);
    let messages =
        [text("system", &system), text("user", &format!("Question number {i}: when do you open?"))];
    engine.pipeline().prepare(&messages, &[]).unwrap()
}

#[test]
fn concurrent_requests_prefill_a_shared_prompt_once() {
    let dir = common::phi3v_tiny();
    let engine = common::engine(&dir, EngineConfig::default());
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| shared_prompt_question(&engine, i).tokens.ids).collect();
    let handles: Vec<_> =
        (0..8).map(|i| engine.submit(shared_prompt_question(&engine, i), params(6), 1).unwrap()).collect();
    let answers: Vec<Completion> =
        handles.into_iter().map(|h| h.collect_blocking().unwrap().remove(0)).collect();

    // How many leading positions all the prompts share.
    let shared = (0..prompts[0].len()).take_while(|&i| prompts.iter().all(|p| p[i] == prompts[0][i])).count();
    assert!(shared > 4 * BLOCK, "the system prompt spans several blocks ({shared} positions)");
    let reused: Vec<usize> = answers.iter().map(|a| a.usage.cached_tokens).collect();
    assert_eq!(reused.iter().filter(|&&c| c == 0).count(), 1, "one request computes the prefix: {reused:?}");
    assert!(reused.iter().filter(|&&c| c > 0).all(|&c| c == shared / BLOCK * BLOCK), "{reused:?}");
    // Every position fed to the model: the uncached part of each prompt, then each generated
    // token but the last. The shared prefix went through the model once.
    common::wait_until_idle(&engine);
    let computed = engine.stats().prefill_tokens.sum + engine.stats().decode_tokens.sum;
    let expected: usize =
        answers.iter().map(|a| a.usage.prompt_tokens - a.usage.cached_tokens + a.tokens.len() - 1).sum();
    assert_eq!(computed as usize, expected);

    let reference = uncached(&dir);
    for (i, got) in answers.iter().enumerate() {
        let want = common::complete(&reference, shared_prompt_question(&reference, i), &params(6));
        assert_same(&format!("question {i}"), got, &want);
    }
}

#[test]
fn cancelling_a_request_that_shares_blocks_leaves_the_others_exact() {
    let dir = common::phi3v_tiny();
    let engine = common::engine(&dir, EngineConfig::default());
    let question = |i| shared_prompt_question(&engine, i);
    // The first computes the prefix; the others share it. Cancel the first while the others
    // run, and one of the others before it starts.
    let first = engine.submit(question(0), params(64), 1).unwrap();
    let kept: Vec<_> = (1..4).map(|i| engine.submit(question(i), params(12), 1).unwrap()).collect();
    let waiting = engine.submit(question(4), params(12), 1).unwrap();
    drop(waiting);
    let mut first = first;
    // Wait for its first token, so the prefix is computed and shared, then cancel.
    while let Some(event) = first.next_blocking() {
        if matches!(event, phive::engine::Event::Delta { .. }) {
            break;
        }
    }
    drop(first);
    let answers: Vec<Completion> =
        kept.into_iter().map(|h| h.collect_blocking().unwrap().remove(0)).collect();
    let reference = uncached(&dir);
    for (i, got) in (1..4).zip(&answers) {
        assert!(got.usage.cached_tokens > 0, "question {i} shared the prefix");
        let want = common::complete(&reference, shared_prompt_question(&reference, i), &params(12));
        assert_same(&format!("question {i}"), got, &want);
    }
    assert!(engine.stats().cancelled >= 1);
    common::wait_until_idle(&engine);
    // The prefix outlives every request that computed or shared it.
    let again = common::complete(&engine, question(5), &params(4));
    assert!(again.usage.cached_tokens > 0);
}
