//! Continuous batching does not change answers: requests of different lengths and kinds served
//! together (chunked prefill mixed with decode rows, three LoRA adapters in one batch for
//! Phi-4, preemption under a small KV pool, random arrivals and cancellations) give exactly what
//! each gives alone.

mod common;

use std::time::Duration;

use phive::engine::{Completion, Engine, EngineConfig, Event, GenerationParams, SamplingParams};
use phive::pipeline::PreparedPrompt;
use rand::{Rng, SeedableRng};

/// One test request: how to prepare it and its settings.
#[derive(Clone)]
struct Case {
    name: String,
    params: GenerationParams,
    choices: usize,
    case: serde_json::Value,
    phi4: bool,
}

impl Case {
    fn prepare(&self, engine: &Engine) -> PreparedPrompt {
        if self.phi4 {
            return common::phi4mm_prepare(engine.pipeline(), &self.case);
        }
        let (messages, images) = common::openai_messages(&self.case["openai_messages"]);
        engine.pipeline().prepare(&messages, &images).unwrap()
    }
}

/// Every golden case of a fixture, then again with other lengths and sampling settings, so
/// rows differ in prompt length, media, adapter, sampling and completion length.
fn cases(phi4: bool, skip_long: bool) -> Vec<Case> {
    let goldens = common::golden_json(if phi4 { "phi4mm/generation.json" } else { "phi3v/generation.json" });
    let golden: Vec<serde_json::Value> = goldens["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !(skip_long && c["name"] == "long_text"))
        .cloned()
        .collect();
    let mut out = Vec::new();
    for (i, case) in golden.iter().chain(golden.iter().take(3)).enumerate() {
        let sampled = i >= golden.len();
        let sampling = if sampled {
            SamplingParams {
                temperature: Some(0.8),
                top_p: Some(0.9),
                seed: Some(7 + i as u64),
                ..Default::default()
            }
        } else {
            SamplingParams::default()
        };
        out.push(Case {
            name: format!("{}#{i}", case["name"].as_str().unwrap()),
            params: GenerationParams {
                sampling,
                max_tokens: Some(if sampled { 6 + 3 * i } else { 16 }),
                logprobs: Some(2),
                ..Default::default()
            },
            choices: if sampled { 2 } else { 1 },
            case: case.clone(),
            phi4,
        });
    }
    out
}

fn fixture(phi4: bool) -> std::path::PathBuf {
    if phi4 {
        common::phi4mm_tiny()
    } else {
        common::phi3v_tiny()
    }
}

/// Each case served alone, one after another.
fn solo_answers(cases: &[Case]) -> Vec<Vec<Completion>> {
    let engine = common::engine(&fixture(cases[0].phi4), EngineConfig::default());
    cases
        .iter()
        .map(|c| {
            engine
                .submit(c.prepare(&engine), c.params.clone(), c.choices)
                .unwrap()
                .collect_blocking()
                .unwrap()
        })
        .collect()
}

/// Tokens identical, logprobs within 1e-4.
fn assert_same(name: &str, got: &[Completion], want: &[Completion]) {
    assert_eq!(got.len(), want.len(), "{name}: choices");
    for (choice, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.tokens, w.tokens, "{name} choice {choice}: tokens");
        assert_eq!(g.text, w.text, "{name} choice {choice}: text");
        assert_eq!(g.finish_reason, w.finish_reason, "{name} choice {choice}");
        assert_eq!(g.logprobs.len(), w.logprobs.len(), "{name} choice {choice}: logprobs");
        for (a, b) in g.logprobs.iter().zip(&w.logprobs) {
            let diff = (a.chosen.logprob - b.chosen.logprob).abs();
            assert!(diff < 1e-4, "{name} choice {choice}: logprob differs by {diff}");
            for (x, y) in a.top_logprobs.iter().zip(&b.top_logprobs) {
                assert_eq!(x.token_id, y.token_id, "{name}: top logprob tokens");
                assert!((x.logprob - y.logprob).abs() < 1e-4, "{name}: top logprob");
            }
        }
    }
}

/// Submits every case at once and collects them all.
fn batched_answers(engine: &Engine, cases: &[Case]) -> Vec<Vec<Completion>> {
    let handles: Vec<_> = cases
        .iter()
        .map(|c| engine.submit(c.prepare(engine), c.params.clone(), c.choices).unwrap())
        .collect();
    handles.into_iter().map(|h| h.collect_blocking().unwrap()).collect()
}

fn batching_equals_solo(phi4: bool) {
    let cases = cases(phi4, false);
    assert_eq!(cases.len(), 8);
    let solo = solo_answers(&cases);
    // A small step budget: long prompts prefill in chunks beside other rows' decode steps.
    let config = EngineConfig { max_batched_tokens: 48, ..Default::default() };
    let engine = common::engine(&fixture(phi4), config);
    for (case, (got, want)) in cases.iter().zip(batched_answers(&engine, &cases).iter().zip(&solo)) {
        assert_same(&case.name, got, want);
    }
    let stats = engine.stats();
    // Media requests reach the scheduler as the encoder finishes them, so not all 8 overlap.
    let multi_row_steps: u64 = stats.batch_size.counts[1..].iter().sum(); // buckets above 1 row
    assert!(multi_row_steps > 0, "no step batched more than one sequence: {:?}", stats.batch_size);
    assert!(stats.prefill_tokens.count() > 0 && stats.decode_tokens.sum > 0.0);
    common::wait_until_idle(&engine);
}

#[test]
fn phi3v_batched_answers_equal_solo_answers() {
    batching_equals_solo(false);
}

#[test]
fn phi4mm_batched_answers_with_three_adapters_equal_solo_answers() {
    let kinds: Vec<String> = cases(true, false).iter().map(|c| c.name.clone()).collect();
    // text (no adapter), images (vision), audio only (speech) are all in the batch.
    for kind in ["text", "one_image", "one_audio"] {
        assert!(kinds.iter().any(|k| k.starts_with(kind)), "{kind} missing from {kinds:?}");
    }
    batching_equals_solo(true);
}

/// KV bytes that hold `tokens` positions of `engine`'s model.
fn kv_bytes(engine: &Engine, tokens: usize) -> u64 {
    let geometry = engine.pipeline().model().kv_geometry(16);
    (geometry.blocks_for(tokens) * geometry.bytes_per_block()) as u64
}

#[test]
fn preemption_under_a_small_pool_keeps_every_answer() {
    // Text requests reach the scheduler at once (media ones come from the encoder one by one):
    // the pool holds all their prompts but not their growth, so decoding must preempt.
    let probe = common::engine(&common::phi3v_tiny(), EngineConfig::default());
    let text: Vec<Case> =
        cases(false, true).into_iter().filter(|c| c.prepare(&probe).tokens.media.is_empty()).collect();
    let cases: Vec<Case> = text.iter().cycle().take(8).cloned().collect();
    let prompt_blocks: usize = cases.iter().map(|c| c.prepare(&probe).tokens.ids.len().div_ceil(16)).sum();
    let kv_cache_bytes = Some(kv_bytes(&probe, (prompt_blocks + 1) * 16));
    drop(probe);
    let solo = solo_answers(&cases);
    // Without the prefix cache every prompt holds its own blocks, so the pool must fill up;
    // with it, the repeated prompts share blocks and preempted sequences find theirs again.
    for prefix_cache in [false, true] {
        let config = EngineConfig { kv_cache_bytes, prefix_cache, ..Default::default() };
        let engine = common::engine(&common::phi3v_tiny(), config);
        for (case, (got, want)) in cases.iter().zip(batched_answers(&engine, &cases).iter().zip(&solo)) {
            assert_same(&case.name, got, want);
        }
        common::wait_until_idle(&engine);
        let stats = engine.stats();
        if prefix_cache {
            assert!(stats.prefix_cache_hit_tokens > 0, "{stats:?}");
        } else {
            assert!(stats.preemptions > 0, "the pool was never full: {stats:?}");
        }
    }
}

#[test]
fn requests_that_cannot_fit_are_refused_up_front() {
    let engine = common::engine(&common::phi3v_tiny(), EngineConfig::default());
    let case = &cases(false, true)[0];
    let context = engine.pipeline().context_length();
    let params = GenerationParams { max_tokens: Some(context), ..Default::default() };
    let err = engine.submit(case.prepare(&engine), params, 1).err().unwrap();
    assert!(matches!(err, phive::Error::InvalidRequest(_)), "{err}");
    assert!(err.to_string().contains(&format!("maximum context length is {context}")), "{err}");
    // A pool smaller than prompt + max_tokens names the flag.
    let small = EngineConfig { kv_cache_bytes: Some(kv_bytes(&engine, 64)), ..Default::default() };
    let small = common::engine(&common::phi3v_tiny(), small);
    let params = GenerationParams { max_tokens: Some(200), ..Default::default() };
    let err = small.submit(case.prepare(&small), params, 1).err().unwrap().to_string();
    assert!(err.contains("--kv-cache-mem"), "{err}");
}

#[test]
fn cancelling_frees_blocks_within_a_step() {
    let engine = common::engine(&common::phi3v_tiny(), EngineConfig::default());
    let case = &cases(false, true)[1];
    let params = GenerationParams { max_tokens: Some(2000), ..Default::default() };
    let mut handle = engine.submit(case.prepare(&engine), params, 2).unwrap();
    assert!(matches!(handle.next_blocking(), Some(Event::Delta { .. })));
    assert!(engine.stats().kv_blocks_used > 0);
    handle.cancel();
    common::wait_until_idle(&engine);
    assert_eq!(engine.stats().cancelled, 1);
}

/// The engine counts a step before it completes the answers that step finished, so a client
/// that reads the stats as soon as its answer arrives sees every step that made it: one solo
/// prefill step for the prompt, then one decode step per further token. (The count used to
/// follow the answer out, and a reader sometimes saw one step too few.)
#[test]
fn an_answer_arrives_after_its_steps_are_counted() {
    let config = EngineConfig { solo_prefill_chunk: 8192, ..Default::default() };
    let engine = common::engine(&common::phi3v_tiny(), config);
    let case = &cases(false, true)[0];
    let params = GenerationParams { max_tokens: Some(4), ..case.params.clone() };
    for round in 0..100 {
        let before = engine.stats().steps;
        let answer =
            engine.submit(case.prepare(&engine), params.clone(), 1).unwrap().collect_blocking().unwrap();
        let steps = engine.stats().steps - before;
        assert_eq!(steps, answer[0].tokens.len() as u64, "round {round}: steps for {:?}", answer[0].tokens);
    }
}

/// A prompt prefilling alone runs in one solo chunk far beyond the step budget, and that step
/// is abandoned for a request that arrives while it runs: both answer what they answer alone.
#[test]
fn a_solo_prefill_yields_to_a_request_that_arrives() {
    let all = cases(false, false);
    let pick = |name: &str| all.iter().find(|c| c.name.starts_with(name)).unwrap().clone();
    let (long, short) = (pick("long_text"), pick("text#"));
    let solo = solo_answers(&[long.clone(), short.clone()]);
    let config = EngineConfig {
        max_batched_tokens: 16,
        solo_prefill_chunk: 8192,
        prefix_cache: false, // every attempt computes the whole prompt again
        ..Default::default()
    };
    let engine = common::engine(&common::phi3v_tiny(), config);
    // The newcomer must arrive during the long step: it is sent as soon as that step starts,
    // which almost always wins the race; a lost race is retried.
    for _attempt in 0..5 {
        let long_handle = engine.submit(long.prepare(&engine), long.params.clone(), 1).unwrap();
        while engine.stats().queued > 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
        let short_handle = engine.submit(short.prepare(&engine), short.params.clone(), 1).unwrap();
        assert_same(&short.name, &short_handle.collect_blocking().unwrap(), &solo[1]);
        assert_same(&long.name, &long_handle.collect_blocking().unwrap(), &solo[0]);
        if engine.stats().interrupted_steps > 0 {
            break;
        }
    }
    let stats = engine.stats();
    assert!(stats.interrupted_steps > 0, "no step was abandoned: {stats:?}");
    // Only solo chunks exceed the 16-token budget (the buckets above 16 tokens).
    let beyond_budget: u64 = stats.prefill_tokens.counts[3..].iter().sum();
    assert!(beyond_budget > 0, "no solo chunk ran: {:?}", stats.prefill_tokens);
    common::wait_until_idle(&engine);
}

/// Random arrivals, lengths, `n`, cancellations and a pool that sometimes runs out: every
/// request that is not cancelled answers what it answers alone, and no block leaks.
#[test]
fn random_arrivals_match_solo_answers() {
    let pool = cases(false, true);
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261204);
    let mut picked = Vec::new();
    for i in 0..12 {
        let mut case = pool[rng.random_range(0..pool.len())].clone();
        case.name = format!("{}@{i}", case.name);
        case.params.max_tokens = Some(rng.random_range(1..24));
        case.choices = rng.random_range(1..=3);
        if rng.random_bool(0.5) {
            case.params.sampling =
                SamplingParams { temperature: Some(1.0), seed: Some(i), ..Default::default() };
        }
        picked.push((case, rng.random_range(0..40u64), rng.random_bool(0.2)));
    }
    let cases: Vec<Case> = picked.iter().map(|(c, _, _)| c.clone()).collect();
    let solo = solo_answers(&cases);
    let probe = common::engine(&common::phi3v_tiny(), EngineConfig::default());
    let longest = cases.iter().map(|c| c.prepare(&probe).tokens.ids.len() + 24).max().unwrap();
    let config = EngineConfig {
        kv_cache_bytes: Some(kv_bytes(&probe, 3 * longest)),
        max_batched_tokens: 96,
        ..Default::default()
    };
    drop(probe);
    let engine = common::engine(&common::phi3v_tiny(), config);
    std::thread::scope(|scope| {
        for ((case, delay, cancel), want) in picked.iter().zip(&solo) {
            let engine = &engine;
            scope.spawn(move || {
                std::thread::sleep(Duration::from_millis(*delay));
                let mut handle =
                    engine.submit(case.prepare(engine), case.params.clone(), case.choices).unwrap();
                if *cancel {
                    let _ = handle.next_blocking();
                    return; // dropping the handle cancels
                }
                assert_same(&case.name, &handle.collect_blocking().unwrap(), want);
            });
        }
    });
    common::wait_until_idle(&engine);
}

/// An f16 KV cache holds twice the tokens in the same memory; batched, it answers exactly as
/// it does alone, and its log-probabilities stay close to the f32 cache's (keys and values
/// keep 11 significant bits; attention still computes in f32).
#[test]
fn f16_kv_cache_holds_twice_the_tokens_and_answers_close_to_f32() {
    let probe = common::engine(&common::phi3v_tiny(), EngineConfig::default());
    let cases: Vec<Case> = cases(false, true).into_iter().filter(|c| c.choices == 1).collect();
    let kv_cache_bytes = Some(kv_bytes(&probe, 4096));
    drop(probe);
    let exact = common::engine(&common::phi3v_tiny(), EngineConfig { kv_cache_bytes, ..Default::default() });
    // With f16 storage a prefill's results depend slightly on where its chunks end (earlier
    // chunks are read back rounded); a solo step abandoned at a random moment would move those
    // ends between runs, so this test keeps the fixed chunks of the step budget.
    let f16 = EngineConfig {
        kv_cache_bytes,
        kv_cache_dtype: phive::engine::KvCacheDtype::Fixed(phive::KvDtype::F16),
        solo_prefill_chunk: 0,
        ..Default::default()
    };
    let half = common::engine(&common::phi3v_tiny(), EngineConfig { max_batched_tokens: 48, ..f16.clone() });
    assert_eq!(half.kv_capacity_tokens(), 2 * exact.kv_capacity_tokens());
    let alone = |engine: &Engine| -> Vec<Vec<Completion>> {
        let answers = cases.iter().map(|c| {
            engine.submit(c.prepare(engine), c.params.clone(), c.choices).unwrap().collect_blocking().unwrap()
        });
        answers.collect()
    };
    let (want, solo) = (alone(&exact), alone(&common::engine(&common::phi3v_tiny(), f16)));
    for (case, (got, solo)) in cases.iter().zip(batched_answers(&half, &cases).iter().zip(&solo)) {
        assert_same(&case.name, got, solo);
    }
    let mut worst = 0f32;
    for (case, (got, want)) in cases.iter().zip(solo.iter().zip(&want)) {
        // The first token follows one prefill over the same prompt, so its distributions compare.
        let (g, w) = (&got[0].logprobs[0], &want[0].logprobs[0]);
        for (x, y) in g.top_logprobs.iter().zip(&w.top_logprobs) {
            assert_eq!(x.token_id, y.token_id, "{}: top tokens", case.name);
            worst = worst.max((x.logprob - y.logprob).abs());
        }
    }
    assert!(worst > 0.0, "f16 storage changed nothing: is the cache still f32?");
    assert!(worst < 1e-2, "f16 KV moved a first-token logprob by {worst}");
}
