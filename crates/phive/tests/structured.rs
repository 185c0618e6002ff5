//! Constrained decoding, logit_bias and tool calls through the engine on the tiny random-weight
//! checkpoints: without the constraint their output is gibberish, so valid output is the
//! constraint's doing.

mod common;

use phive::api::{ChatCompletionRequest, ChatResponseBuilder, RequestLimits, Usage};
use phive::engine::{Engine, EngineConfig, FinishReason, GenerationParams, Grammar, SamplingParams};
use phive::media::MediaPolicy;
use phive::prompt::ChatMessage;
use serde_json::{json, Value};

fn engine(phi4: bool) -> Engine {
    let dir = if phi4 { common::phi4mm_tiny() } else { common::phi3v_tiny() };
    common::engine(&dir, EngineConfig::default())
}

fn generate(engine: &Engine, params: GenerationParams, n: usize) -> Vec<phive::engine::Completion> {
    let prepared = engine.pipeline().prepare(&[ChatMessage::text("user", "Give me data.")], &[]).unwrap();
    engine.submit(prepared, params, n).unwrap().collect_blocking().unwrap()
}

#[test]
fn schemas_regexes_and_lark_grammars_hold_for_greedy_and_sampled_choices() {
    let engine = engine(false);
    let schema = json!({"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 99},
        "kind": {"enum": ["a", "b"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2}},
        "required": ["id", "kind", "tags"], "additionalProperties": false});
    let sampled =
        SamplingParams { temperature: Some(1.5), top_k: Some(40), seed: Some(3), ..Default::default() };
    for sampling in [SamplingParams::default(), sampled] {
        let params = GenerationParams {
            sampling,
            max_tokens: Some(120),
            grammar: Some(Grammar::JsonSchema(schema.clone())),
            ..Default::default()
        };
        for completion in generate(&engine, params, 3) {
            assert_eq!(completion.finish_reason, FinishReason::Stop, "{:?}", completion.text);
            let value: Value = serde_json::from_str(&completion.text).unwrap();
            let id = value["id"].as_i64().unwrap();
            assert!((1..=99).contains(&id), "{value}");
            assert!(["a", "b"].contains(&value["kind"].as_str().unwrap()), "{value}");
            assert!(value["tags"].as_array().unwrap().len() <= 2, "{value}");
            assert_eq!(value.as_object().unwrap().len(), 3, "{value}");
        }
    }
    let regex = GenerationParams {
        max_tokens: Some(40),
        grammar: Some(Grammar::Regex("(red|blue) [0-9]{2}".into())),
        ..Default::default()
    };
    let text = &generate(&engine, regex, 1)[0].text;
    assert!(regex::Regex::new("^(red|blue) [0-9]{2}$").unwrap().is_match(text), "{text:?}");
    let lark = GenerationParams {
        max_tokens: Some(40),
        grammar: Some(Grammar::Lark("start: \"x=\" NUM\nNUM: /[1-9][0-9]?/".into())),
        ..Default::default()
    };
    let text = &generate(&engine, lark, 1)[0].text;
    assert!(regex::Regex::new("^x=[1-9][0-9]?$").unwrap().is_match(text), "{text:?}");
}

#[test]
fn bad_grammars_and_biases_are_invalid_requests() {
    let engine = engine(false);
    let prepared = || engine.pipeline().prepare(&[ChatMessage::text("user", "Hi")], &[]).unwrap();
    for grammar in [
        Grammar::Regex("(unclosed".into()),
        Grammar::Lark("start: missing_rule".into()),
        Grammar::JsonSchema(json!({"type": "no-such-type"})),
    ] {
        let params = GenerationParams { grammar: Some(grammar.clone()), ..Default::default() };
        let err = engine.submit(prepared(), params, 1).err().unwrap();
        assert!(matches!(err, phive::Error::InvalidRequest(_)), "{grammar:?}: {err}");
    }
    let bias = SamplingParams { logit_bias: vec![(40_000, 1.0)], ..Default::default() };
    let err = engine
        .submit(prepared(), GenerationParams { sampling: bias, ..Default::default() }, 1)
        .err()
        .unwrap();
    assert!(err.to_string().contains("logit_bias"), "{err}");
}

#[test]
fn logit_bias_moves_greedy_choices_and_logprobs() {
    let engine = engine(false);
    let params = |bias: Vec<(u32, f32)>| GenerationParams {
        sampling: SamplingParams { logit_bias: bias, ..Default::default() },
        max_tokens: Some(5),
        logprobs: Some(1),
        ..Default::default()
    };
    let plain = generate(&engine, params(vec![]), 1).remove(0);
    let forced = generate(&engine, params(vec![(278, 100.0)]), 1).remove(0);
    assert_eq!(forced.tokens, vec![278; 5]);
    assert!(forced.logprobs.iter().all(|lp| lp.chosen.logprob > -1e-3));
    // Banning the plain answer's first token changes it.
    let banned = generate(&engine, params(vec![(plain.tokens[0], -100.0)]), 1).remove(0);
    assert_ne!(banned.tokens[0], plain.tokens[0]);
}

/// A chat request through the same path as the HTTP server and the Python SDK.
fn chat(engine: &Engine, body: Value) -> Value {
    let request: ChatCompletionRequest = serde_json::from_value(body).unwrap();
    let mut input = request.into_chat(&RequestLimits::default()).unwrap();
    let prepared = input.prepare(engine.pipeline(), &MediaPolicy::trusted()).unwrap();
    let completions = engine.submit(prepared, input.params, 1).unwrap().collect_blocking().unwrap();
    let builder = ChatResponseBuilder { id: "x".into(), created: 0, model: "m".into(), logprobs: false };
    serde_json::to_value(
        builder.response(&completions, Usage::from_completions(&completions, Default::default())),
    )
    .unwrap()
}

#[test]
fn enforced_tool_calls_parse_and_follow_the_parameter_schema() {
    let tools = json!([
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
            "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 12}},
            "required": ["zone"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "ping", "description": "Checks a host"}}]);
    for phi4 in [false, true] {
        let engine = engine(phi4);
        for choice in [json!("required"), json!({"type": "function", "function": {"name": "get_time"}})] {
            let response = chat(
                &engine,
                json!({
                "messages": [{"role": "user", "content": "Time in Tokyo?"}],
                "tools": tools, "tool_choice": choice, "max_tokens": 80, "parallel_tool_calls": false}),
            );
            let choice0 = &response["choices"][0];
            assert_eq!(choice0["finish_reason"], "tool_calls", "phi4={phi4}: {response}");
            let calls = choice0["message"]["tool_calls"].as_array().unwrap();
            assert_eq!(calls.len(), 1, "{response}");
            let name = calls[0]["function"]["name"].as_str().unwrap();
            let arguments: Value =
                serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
            if name == "get_time" {
                // JSON Schema's integers include numbers with a zero fraction (`-0.0`).
                let zone = arguments["zone"].as_f64().unwrap_or_else(|| panic!("phi4={phi4}: {arguments}"));
                assert!(zone.fract() == 0.0 && (-12.0..=12.0).contains(&zone), "{arguments}");
            } else {
                assert_eq!(name, "ping");
                assert!(arguments.is_object());
            }
        }
    }
}

#[test]
fn phi4_renders_tools_and_history_calls_as_its_template_does() {
    let engine = engine(true);
    let body = json!({
        "messages": [
            {"role": "user", "content": "Time?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_time", "arguments": "{\"zone\":1}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}],
        "tools": [{"type": "function", "function": {"name": "get_time", "description": "Now",
            "parameters": {"type": "object", "properties": {"zone": {"type": "integer"}}}}}]});
    let request: ChatCompletionRequest = serde_json::from_value(body).unwrap();
    let mut input = request.into_chat(&RequestLimits::default()).unwrap();
    let prepared = input.prepare(engine.pipeline(), &MediaPolicy::trusted()).unwrap();
    assert_eq!(
        prepared.text,
        "<|system|><|tool|>[{\"name\": \"get_time\", \"description\": \"Now\", \"parameters\": {\"type\": \"object\", \
         \"properties\": {\"zone\": {\"type\": \"integer\"}}}}]<|/tool|><|end|><|user|>Time?<|end|>\
         <|assistant|><|tool_call|>[{\"name\": \"get_time\", \"arguments\": {\"zone\": 1}}]<|/tool_call|><|end|>\
         <|tool|>12:00<|end|><|assistant|>"
    );
}
