//! End to end through the public pipeline and the engine (as `phive run` and the server use
//! them): our tags, template, preprocessing and tokenization must reproduce the reference's
//! input ids, and greedy decoding its 16 tokens, for every golden case.

mod common;

use std::time::Instant;

use phive::engine::{Engine, EngineConfig, Event, FinishReason, GenerationParams};
use phive::pipeline::{LoadOptions, Pipeline};

fn load() -> Pipeline {
    Pipeline::load(&LoadOptions {
        model: common::phi3v_tiny().to_string_lossy().into(),
        revision: None,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn every_golden_case_reproduces_ids_and_greedy_tokens() {
    let engine = Engine::new(load(), EngineConfig::default()).unwrap();
    let pipeline = engine.pipeline();
    let goldens = common::golden_json("phi3v/generation.json");
    for case in goldens["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (messages, images) = common::openai_messages(&case["openai_messages"]);
        let prepared = pipeline.prepare(&messages, &images).unwrap();
        assert_eq!(prepared.text, case["prompt"].as_str().unwrap(), "{name}: rendered prompt");
        assert_eq!(prepared.tokens.ids, common::golden_ids(&case["input_ids"], 0), "{name}: input ids");
        let counts: Vec<usize> = prepared.tokens.media.iter().map(|s| s.len).collect();
        let golden_counts: Vec<usize> = case["num_image_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(counts, golden_counts, "{name}: image token counts");

        // Two choices: the second forks from the prompt the first prefilled (shared KV blocks).
        let params = GenerationParams { max_tokens: Some(16), ..Default::default() };
        let choices = engine.submit(prepared, params, 2).unwrap().collect_blocking().unwrap();
        let golden = common::greedy_tokens(case);
        assert_eq!(choices[0].tokens, golden, "{name}: greedy tokens");
        assert_eq!(choices[0].text, case["greedy_text"].as_str().unwrap(), "{name}: greedy text");
        assert_eq!(choices[1].tokens, golden, "{name}: second choice");
    }
}

#[test]
fn engine_serves_queued_requests_and_reports_queue_full() {
    let pipeline = load();
    let goldens = common::golden_json("phi3v/generation.json");
    let case = &goldens["cases"][0];
    let (messages, images) = common::openai_messages(&case["openai_messages"]);
    let prepared = || pipeline.prepare(&messages, &images).unwrap();
    let first = prepared();
    let second = prepared();
    let engine = Engine::new(load(), EngineConfig { max_queue: 2, ..Default::default() }).unwrap();
    let params = GenerationParams { max_tokens: Some(16), ..Default::default() };
    let a = engine.submit(first, params.clone(), 1).unwrap();
    let b = engine.submit(second, params.clone(), 2).unwrap();
    // The engine may already have started `a`; fill the queue until it refuses.
    let mut extra = Vec::new();
    let refused = loop {
        match engine.submit(prepared(), params.clone(), 1) {
            Ok(handle) => extra.push(handle),
            Err(e) => break e,
        }
        assert!(extra.len() <= 2, "the queue never filled up");
    };
    assert!(matches!(refused, phive::Error::QueueFull(_)), "{refused}");
    let golden = common::greedy_tokens(case);
    let done_a = a.collect_blocking().unwrap();
    assert_eq!(done_a.len(), 1);
    assert_eq!(done_a[0].tokens, golden);
    let done_b = b.collect_blocking().unwrap();
    assert_eq!(done_b.len(), 2, "n = 2 gives two choices");
    assert!(done_b.iter().all(|c| c.tokens == golden), "greedy choices agree");
}

#[test]
fn dropping_a_handle_cancels_generation() {
    let pipeline = load();
    let goldens = common::golden_json("phi3v/generation.json");
    let (messages, images) = common::openai_messages(&goldens["cases"][0]["openai_messages"]);
    let prepared = pipeline.prepare(&messages, &images).unwrap();
    // No max_tokens and the stop tokens banned: the answer runs to the context's end (minutes),
    // so only the drop ends it, however long this thread waits on a busy machine.
    let banned = pipeline.stop_token_ids().iter().map(|&id| (id, -100.0)).collect();
    let params = GenerationParams {
        sampling: phive::engine::SamplingParams { logit_bias: banned, ..Default::default() },
        ..Default::default()
    };
    let engine = Engine::new(pipeline, EngineConfig::default()).unwrap();
    let mut handle = engine.submit(prepared, params, 1).unwrap();
    // Wait for the first delta, then walk away.
    match handle.next_blocking() {
        Some(Event::Delta { .. }) => {}
        other => panic!("expected a first delta, got {other:?}"),
    }
    drop(handle);
    // The first delta is sent mid-step, before the loop publishes its counters: wait for the
    // cancellation itself, not for `active` (which may not have counted the request yet).
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let stats = engine.stats();
        if stats.cancelled == 1 && stats.active == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "generation was not cancelled: {stats:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn bad_requests_get_clear_errors() {
    let pipeline = load();
    let (messages, _) = common::openai_messages(&serde_json::json!([
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "wide_1000x600.png"}}, {"type": "text", "text": "hi"}]}
    ]));
    let err = pipeline.prepare(&messages, &[]).err().unwrap().to_string();
    assert!(err.contains("1 image input(s)") && err.contains("0 were supplied"), "{err}");
    let (messages, images) = common::openai_messages(&serde_json::json!([
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "wide_1000x600.png"}}, {"type": "text", "text": "<|image_2|> hi"}]}
    ]));
    assert!(pipeline.prepare(&messages, &images).is_err());
    assert!(pipeline.prepare(&[], &[]).is_err());
}

#[test]
fn ignore_eos_decodes_past_the_stop_token() {
    let pipeline = load();
    let goldens = common::golden_json("phi3v/generation.json");
    let (messages, images) = common::openai_messages(&goldens["cases"][0]["openai_messages"]);
    let prepared = || pipeline.prepare(&messages, &images).unwrap();
    // The first stop token forced at every step.
    let eos = pipeline.stop_token_ids()[0];
    let forced = phive::engine::SamplingParams { logit_bias: vec![(eos, 100.0)], ..Default::default() };
    let params = |ignore_eos| GenerationParams {
        sampling: forced.clone(),
        max_tokens: Some(5),
        ignore_eos,
        ..Default::default()
    };
    let engine = Engine::new(load(), EngineConfig::default()).unwrap();
    let stopped = common::complete(&engine, prepared(), &params(false));
    assert_eq!((stopped.tokens.as_slice(), stopped.finish_reason), (&[eos][..], FinishReason::Stop));
    let ignored = common::complete(&engine, prepared(), &params(true));
    assert_eq!(ignored.tokens, vec![eos; 5]);
    assert_eq!(ignored.finish_reason, FinishReason::Length);
}
