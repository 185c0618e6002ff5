//! `POST /v1/responses` over real HTTP with the tiny checkpoint: answers equal the chat route's,
//! streams are OpenAI's named, numbered events, a dropped stream stops generating, and bad or
//! stateful requests are 4xx in OpenAI's error shape.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| start(|_, _| {}))
}

fn respond(body: &Value) -> (u16, Value) {
    server().post("/v1/responses", body)
}

#[test]
fn answers_equal_the_chat_route() {
    let image = image_path("tiny_50x50.png").to_string_lossy().into_owned();
    let cases = [
        (json!("Hello there"), user("Hello there")),
        (
            json!([{"role": "user", "content": [
                {"type": "input_image", "image_url": image},
                {"type": "input_text", "text": "What is this?"}]}]),
            user_with_image(&image, "What is this?"),
        ),
    ];
    for (input, messages) in cases {
        let (status, response) = respond(&json!({"input": input, "max_output_tokens": 6, "temperature": 0}));
        assert_eq!(status, 200, "{response}");
        let (status, chat) = server().chat(&json!({"messages": messages, "max_tokens": 6, "temperature": 0}));
        assert_eq!(status, 200, "{chat}");
        let text = &response["output"][0]["content"][0]["text"];
        assert_eq!(text, &chat["choices"][0]["message"]["content"], "{response}");
        assert_eq!(response["usage"]["input_tokens"], chat["usage"]["prompt_tokens"]);
        assert_eq!(response["usage"]["output_tokens"], 6);
        assert_eq!(response["status"], "incomplete");
        assert_eq!(response["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(response["object"], "response");
        assert!(response["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(response["store"], false);
    }
}

#[test]
fn streams_are_named_numbered_events_without_done() {
    let body = json!({"input": "Tell me a story", "max_output_tokens": 8, "temperature": 0, "stream": true});
    let response = client().post(server().url("/v1/responses")).json(&body).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    BufReader::new(response).read_to_string(&mut text).unwrap();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|event| {
            let (name, data) = event.split_once('\n').unwrap_or_else(|| panic!("two lines: {event:?}"));
            let payload: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(name.strip_prefix("event: "), payload["type"].as_str(), "{event}");
            payload
        })
        .collect();
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], i, "{event}");
    }
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(last["response"]["output"][0]["content"][0]["text"], deltas);
    let (_, whole) = respond(&json!({"input": "Tell me a story", "max_output_tokens": 8, "temperature": 0}));
    assert_eq!(whole["output"][0]["content"][0]["text"], deltas);
}

#[test]
fn disconnecting_a_stream_cancels_generation() {
    let server = start(|_, engine| engine.max_num_seqs = 1);
    let body = json!({"input": "Write a very long story.", "max_output_tokens": 100000, "temperature": 0, "stream": true});
    let response = client().post(server.url("/v1/responses")).json(&body).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut reader = BufReader::new(response);
    let mut line = String::new();
    for _ in 0..12 {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    server.wait_for("generation to be active", Duration::from_secs(20), |s| s.active == 1);
    drop(reader);
    server.wait_for("the cancellation", Duration::from_secs(20), |s| s.active == 0 && s.cancelled >= 1);
}

#[test]
fn bad_and_stateful_requests_are_4xx_naming_the_field() {
    for (body, status, param) in [
        (json!({}), 400, Some("input")),
        (json!({"input": 5}), 400, Some("input")),
        (json!({"input": []}), 400, Some("input")),
        (json!({"input": "hi", "model": "gpt-9"}), 404, Some("model")),
        (json!({"input": "hi", "temperature": 9}), 400, Some("temperature")),
        (json!({"input": "hi", "max_output_tokens": 0}), 400, Some("max_output_tokens")),
        (json!({"input": "hi", "max_output_tokens": -1}), 400, Some("max_output_tokens")),
        (json!({"input": "hi", "previous_response_id": "resp_1"}), 400, Some("previous_response_id")),
        (json!({"input": "hi", "conversation": {"id": "conv_1"}}), 400, Some("conversation")),
        (json!({"input": "hi", "background": true}), 400, Some("background")),
        (json!({"input": "hi", "tools": [{"type": "web_search"}]}), 400, Some("tools")),
        (json!({"input": "hi", "text": {"format": {"type": "xml"}}}), 400, Some("text.format.type")),
        (json!({"input": "hi", "metadata": {"k": 1}}), 400, Some("metadata.k")),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "/etc/passwd"}]}]}),
            400,
            None,
        ),
        (json!({"input": [{"role": "bot", "content": "x"}]}), 400, Some("input[0].role")),
    ] {
        let (got, response) = respond(&body);
        assert_eq!(got, status, "{body}: {response}");
        assert_error_shape(&response, &body.to_string());
        if let Some(param) = param {
            assert_eq!(response["error"]["param"], param, "{body}: {response}");
        }
    }
}
