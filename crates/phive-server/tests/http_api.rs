//! The OpenAI API end to end over real HTTP with the tiny Phi-3.5-vision checkpoint: answers
//! equal the reference goldens, streams follow OpenAI's SSE framing, every image source works
//! within the policy, and metrics move.

mod common;

use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| start(|_, _| {}))
}

/// The golden cases' messages with image file names turned into allowed local paths.
fn golden_messages(case: &Value) -> Value {
    let mut messages = case["openai_messages"].clone();
    for message in messages.as_array_mut().unwrap() {
        if let Some(parts) = message["content"].as_array_mut() {
            for part in parts {
                if part["type"] == "image_url" {
                    let name = part["image_url"]["url"].as_str().unwrap().to_string();
                    part["image_url"]["url"] = json!(image_path(&name).to_string_lossy());
                }
            }
        }
    }
    messages
}

#[test]
fn greedy_answers_equal_the_reference_goldens() {
    let goldens = goldens();
    for case in goldens["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (status, body) = server().chat(&json!({
            "model": "phi3v-tiny", "messages": golden_messages(case), "max_tokens": 16, "temperature": 0
        }));
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["choices"][0]["message"]["content"], case["greedy_text"], "{name}");
        assert_eq!(body["choices"][0]["finish_reason"], "length", "{name}");
        assert_eq!(body["usage"]["prompt_tokens"], case["num_tokens"], "{name}");
        assert_eq!(body["usage"]["completion_tokens"], 16, "{name}");
        assert_eq!(body["usage"]["total_tokens"], case["num_tokens"].as_u64().unwrap() + 16, "{name}");
    }
}

#[test]
fn non_streamed_response_has_openai_shape() {
    let (status, body) = server().chat(&json!({"model": "default", "messages": user("Hello"), "max_tokens": 5, "user": "u1", "future_field": {"x": 1}}));
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["model"], "phi3v-tiny");
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].is_string());
    assert!(choice["logprobs"].is_null());
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    // The model may also be named by its path.
    let path = fixtures().join("phi3v-tiny").to_string_lossy().into_owned();
    let (status, _) = server().chat(&json!({"model": path, "messages": user("Hello"), "max_tokens": 1}));
    assert_eq!(status, 200);
}

fn parse_chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "stream ends with [DONE]");
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

#[test]
fn stream_matches_non_stream_and_openai_framing() {
    let case = &goldens()["cases"][1];
    let request = json!({"messages": golden_messages(case), "max_tokens": 16, "stream": true,
                         "stream_options": {"include_usage": true}});
    let chunks = parse_chunks(&server().stream("/v1/chat/completions", &request));
    let id = chunks[0]["id"].clone();
    assert!(chunks
        .iter()
        .all(|c| c["id"] == id && c["object"] == "chat.completion.chunk" && c["model"] == "phi3v-tiny"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "role first: {}", chunks[0]);
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], case["num_tokens"]);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 16);
    assert!(rest.iter().all(|c| c["usage"].is_null()), "only the last chunk carries usage");
    // The usage chunk carries the rates and phive's timings, as a non-streamed answer does.
    let timings = &usage_chunk["timings"];
    assert_eq!(timings["image_tokens"], case["num_image_tokens"][0], "{usage_chunk}");
    assert_eq!(timings["audio_tokens"], 0);
    assert!(timings["time_to_first_token_ms"].as_f64().unwrap() > 0.0);
    assert!(usage_chunk["usage"]["avg_compl_tok_per_sec"].as_f64().unwrap() > 0.0);
    assert!(usage_chunk["usage"]["total_time_sec"].as_f64().unwrap() > 0.0);
    assert!(rest.iter().all(|c| c.get("timings").is_none()), "only the usage chunk carries timings");
    let last = rest.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert!(rest[..rest.len() - 1].iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
    let text: String = rest.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, case["greedy_text"].as_str().unwrap());

    // Without include_usage there is no usage chunk.
    let request = json!({"messages": user("Hi"), "max_tokens": 4, "stream": true});
    let chunks = parse_chunks(&server().stream("/v1/chat/completions", &request));
    assert!(chunks.iter().all(|c| c["usage"].is_null() && !c["choices"].as_array().unwrap().is_empty()));
}

#[test]
fn logprobs_report_the_greedy_token_as_most_likely() {
    let (status, body) = server().chat(
        &json!({"messages": user("Describe a cat."), "max_tokens": 6, "logprobs": true, "top_logprobs": 3}),
    );
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty() && content.len() <= 6);
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["token"], entry["token"], "greedy picks the most likely token");
        assert!((top[0]["logprob"].as_f64().unwrap() - entry["logprob"].as_f64().unwrap()).abs() < 1e-5);
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
        assert!(entry["bytes"].is_array());
    }
    // Streamed logprobs arrive with the deltas.
    let chunks = parse_chunks(&server().stream(
        "/v1/chat/completions",
        &json!({"messages": user("Describe a cat."), "max_tokens": 6, "logprobs": true, "stream": true}),
    ));
    let streamed: usize =
        chunks.iter().filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array()).map(Vec::len).sum();
    assert_eq!(streamed, content.len());
}

#[test]
fn n_choices_and_seeded_sampling_reproduce() {
    let request = json!({"messages": user("Tell me a story."), "max_tokens": 12, "temperature": 1.0, "seed": 1234, "n": 3});
    let (status, first) = server().chat(&request);
    assert_eq!(status, 200, "{first}");
    let (_, second) = server().chat(&request);
    let texts = |b: &Value| -> Vec<String> {
        b["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["message"]["content"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(texts(&first).len(), 3);
    assert_eq!(texts(&first), texts(&second), "same seed, same answers");
    assert!(first["choices"].as_array().unwrap().iter().enumerate().all(|(i, c)| c["index"] == i));
    assert_ne!(texts(&first)[0], texts(&first)[1], "choices use different seeds");
    let mut other = request.clone();
    other["seed"] = json!(99);
    let (_, third) = server().chat(&other);
    assert_ne!(texts(&first), texts(&third), "a different seed gives different answers");
    assert!((3..=36).contains(&first["usage"]["completion_tokens"].as_u64().unwrap()));

    // Streamed n > 1: every choice gets a role chunk and a finish chunk.
    let chunks = parse_chunks(&server().stream(
        "/v1/chat/completions",
        &json!({"messages": user("Hi"), "max_tokens": 3, "n": 2, "stream": true, "temperature": 0}),
    ));
    for index in 0..2 {
        let of: Vec<&Value> = chunks.iter().filter(|c| c["choices"][0]["index"] == index).collect();
        assert_eq!(of.first().unwrap()["choices"][0]["delta"]["role"], "assistant");
        assert!(of.last().unwrap()["choices"][0]["finish_reason"].is_string());
    }
}

#[test]
fn stop_strings_end_generation() {
    let case = &goldens()["cases"][0];
    let greedy = case["greedy_text"].as_str().unwrap();
    // Stop at the golden answer's fifth word: what comes before it is the expected content.
    let stop = format!(" {}", greedy.split(' ').nth(4).unwrap());
    let stop = stop.as_str();
    let expected = &greedy[..greedy.find(stop).unwrap()];
    assert!(!expected.is_empty());
    for stop_value in [json!(stop), json!(["never-there", stop])] {
        let (status, body) = server()
            .chat(&json!({"messages": case["openai_messages"], "max_tokens": 16, "stop": stop_value}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], expected);
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
    }
    let chunks = parse_chunks(&server().stream(
        "/v1/chat/completions",
        &json!({"messages": case["openai_messages"], "max_tokens": 16, "stop": stop, "stream": true}),
    ));
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, expected);
}

fn greedy_for_image(url: &str) -> (u16, Value) {
    server().chat(&json!({"messages": user_with_image(url, "What is this?"), "max_tokens": 8}))
}

#[test]
fn every_image_source_gives_the_same_answer() {
    let path = image_path("tiny_50x50.png");
    let (status, reference) = greedy_for_image(&path.to_string_lossy());
    assert_eq!(status, 200, "{reference}");
    let answer = reference["choices"][0]["message"]["content"].clone();
    for source in [
        image_data_url("tiny_50x50.png"),
        image_base64("tiny_50x50.png"),
        format!("file://{}", path.to_string_lossy()),
    ] {
        let (status, body) = greedy_for_image(&source);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], answer);
    }
    // The bare-string image_url form (Ollama's) is accepted too.
    let messages = json!([{"role": "user", "content": [{"type": "image_url", "image_url": image_data_url("tiny_50x50.png")}, {"type": "text", "text": "What is this?"}]}]);
    let (status, body) = server().chat(&json!({"messages": messages, "max_tokens": 8}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], answer);
}

#[test]
fn local_paths_outside_the_allowed_dirs_are_refused() {
    let outside = fixtures().join("phi3v-tiny/config.json");
    let escape = fixtures().join("images/../phi3v-tiny/config.json");
    for source in [
        outside.to_string_lossy().into_owned(),
        escape.to_string_lossy().into_owned(),
        "/etc/passwd".into(),
        "/no/such/file.png".into(),
    ] {
        let (status, body) = greedy_for_image(&source);
        assert_eq!(status, 400, "{source}: {body}");
        assert_error_shape(&body, &source);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("--allow-local-media"), "{message}");
    }
}

#[test]
fn private_urls_are_refused_by_default() {
    let url = format!("{}/tiny.png", serve_bytes(std::fs::read(image_path("tiny_50x50.png")).unwrap()));
    for source in [
        url.clone(),
        url.replace("127.0.0.1", "localhost"),
        "http://169.254.169.254/latest/meta-data".into(),
        "http://[::1]:9/x.png".into(),
        "http://10.0.0.1:9/x.png".into(),
    ] {
        let (status, body) = greedy_for_image(&source);
        assert_eq!(status, 400, "{source}: {body}");
        assert_error_shape(&body, &source);
        assert!(body["error"]["message"].as_str().unwrap().contains("--allow-private-urls"), "{body}");
    }
}

#[test]
fn url_images_work_with_allow_private_urls() {
    let open = start(|config, _| config.media.allow_private_urls = true);
    let url = format!("{}/tiny.png", serve_bytes(std::fs::read(image_path("tiny_50x50.png")).unwrap()));
    let request =
        |source: &str| json!({"messages": user_with_image(source, "What is this?"), "max_tokens": 8});
    let (status, by_url) = open.chat(&request(&url));
    assert_eq!(status, 200, "{by_url}");
    let (_, by_data) = open.chat(&request(&image_data_url("tiny_50x50.png")));
    assert_eq!(by_url["choices"][0]["message"]["content"], by_data["choices"][0]["message"]["content"]);
    // A download over the size cap is refused, naming the limit.
    let big = serve_bytes(vec![0u8; 2 * 1024 * 1024]);
    let (status, body) = open.chat(&request(&big));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--max-image-bytes"), "{body}");
}

#[test]
fn text_completions_use_the_raw_prompt() {
    let (status, body) = server().post(
        "/v1/completions",
        &json!({"model": "phi3v-tiny", "prompt": "Once upon a time", "max_tokens": 5, "logprobs": 2}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["object"], "text_completion");
    let choice = &body["choices"][0];
    assert!(choice["text"].is_string());
    assert_eq!(choice["logprobs"]["top_logprobs"][0].as_object().unwrap().len(), 2);
    // The default max_tokens is OpenAI's 16.
    let (_, body) =
        server().post("/v1/completions", &json!({"prompt": ["Once upon a time"], "temperature": 0}));
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() <= 16);
    let events = server().stream("/v1/completions", &json!({"prompt": "Once upon a time", "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true}}));
    let chunks = parse_chunks(&events);
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert!(chunks.last().unwrap()["usage"]["completion_tokens"].as_u64().unwrap() <= 5);
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    let (_, whole) =
        server().post("/v1/completions", &json!({"prompt": "Once upon a time", "max_tokens": 5}));
    assert_eq!(streamed, whole["choices"][0]["text"].as_str().unwrap());
}

#[test]
fn models_health_and_metrics() {
    let models: Value = client().get(server().url("/v1/models")).send().unwrap().json().unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "phi3v-tiny");
    assert_eq!(models["data"][0]["object"], "model");
    let info: Value = client().get(server().url("/v1/phive/info")).send().unwrap().json().unwrap();
    assert_eq!(info["model"], "phi3v-tiny");
    assert_eq!(info["architecture"], "phi3v");
    assert_eq!(info["audio"], false, "Phi-3.5 takes no audio");
    assert_eq!(info["max_images"], server().state.config().limits.max_images);
    let health = client().get(server().url("/health")).send().unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let before = server().metrics();
    let ok = "phive_http_requests_total{route=\"/v1/chat/completions\",method=\"POST\",status=\"200\"}";
    let bad = "phive_http_requests_total{route=\"/v1/chat/completions\",method=\"POST\",status=\"400\"}";
    let (status, _) = server().chat(&json!({"messages": user("Count."), "max_tokens": 3}));
    assert_eq!(status, 200);
    let (status, _) = server().chat(&json!({"messages": []}));
    assert_eq!(status, 400);
    let after = server().metrics();
    assert!(metric(&after, ok) >= metric(&before, ok) + 1.0, "{after}");
    assert!(metric(&after, bad) >= metric(&before, bad) + 1.0, "{after}");
    assert!(
        metric(&after, "phive_generated_tokens_total")
            >= metric(&before, "phive_generated_tokens_total") + 1.0
    );
    assert!(metric(&after, "phive_prompt_tokens_total") > metric(&before, "phive_prompt_tokens_total"));
    assert!(metric(&after, "phive_time_to_first_token_seconds_count") >= 1.0);
    assert!(after
        .contains("phive_http_request_duration_seconds_bucket{route=\"/v1/chat/completions\",le=\"+Inf\"}"));
    for series in ["phive_queue_depth", "phive_active_sequences", "phive_requests_cancelled_total"] {
        assert!(after.lines().any(|l| l.starts_with(series)), "{series} in {after}");
    }
}

#[test]
fn crop_limit_fields_change_the_image_tokens_like_the_hub_processor() {
    let goldens: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("goldens/crop_limits.json")).unwrap()).unwrap();
    let tokens = |n: u64| {
        let cases = goldens["phi3v"].as_array().unwrap();
        let case = cases.iter().find(|c| c["size"] == json!([1000, 600]) && c["num_crops"] == n).unwrap();
        case["num_image_tokens"].as_u64().unwrap()
    };
    let prompt_tokens = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_path("wide_1000x600.png").to_string_lossy()}},
            {"type": "text", "text": "What?"}]}], "max_tokens": 1});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, body) = server().chat(&body);
        assert_eq!(status, 200, "{body}");
        body["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    let default = prompt_tokens(json!({}));
    assert_eq!(prompt_tokens(json!({"num_crops": 16})) - default, tokens(16) - tokens(4));
    assert_eq!(
        prompt_tokens(json!({"mm_processor_kwargs": {"num_crops": 1}})) + tokens(4) - tokens(1),
        default
    );
    // The OpenAPI description carries the preprocessors' ranges.
    let (_, doc) = server().get("/openapi.json");
    let fields = &doc["components"]["schemas"]["ChatCompletionRequest"]["properties"];
    let range = |name: &str| (fields[name]["minimum"].as_f64(), fields[name]["maximum"].as_f64());
    assert_eq!(
        range("num_crops"),
        (Some(1.0), Some(phive::vision::phi3v_hd::MAX_NUM_CROPS as f64)),
        "{fields}"
    );
    assert_eq!(
        range("dynamic_hd"),
        (Some(1.0), Some(phive::vision::phi4mm_hd::MAX_DYNAMIC_HD as f64)),
        "{fields}"
    );
}
