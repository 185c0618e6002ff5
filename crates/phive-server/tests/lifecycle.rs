//! Admission and cancellation: a full queue answers 503, and a client that disconnects from a
//! stream stops its generation (visible in /metrics and the engine's stats).

mod common;

use std::io::BufRead;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A request that generates for a long time: with the tiny checkpoint, greedy decoding of this
/// prompt runs at least 4000 tokens without meeting a stop token (seconds on a CPU).
fn long_request() -> Value {
    json!({"messages": user("Write a very long story."), "max_tokens": 100000, "temperature": 0, "stream": true})
}

#[test]
fn disconnecting_a_stream_cancels_generation() {
    let server = start(|_, engine| engine.max_num_seqs = 1);
    let before = metric(&server.metrics(), "phive_requests_cancelled_total");
    let mut reader = open_stream(&server, &long_request());
    // Read a few content chunks so generation is under way, then hang up.
    let mut line = String::new();
    for _ in 0..6 {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    server.wait_for("generation to be active", Duration::from_secs(20), |s| s.active == 1);
    drop(reader);
    server.wait_for("the cancellation", Duration::from_secs(20), |s| s.active == 0 && s.cancelled >= 1);
    let text = server.metrics();
    assert!(metric(&text, "phive_requests_cancelled_total") >= before + 1.0, "{text}");
    assert_eq!(metric(&text, "phive_active_sequences"), 0.0, "{text}");
    assert!(metric(&text, "phive_client_disconnects_total") >= 1.0, "{text}");
    // The server still answers.
    let (status, body) = server.chat(&json!({"messages": user("Hi"), "max_tokens": 2}));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_full_queue_answers_503() {
    let server = start(|_, engine| {
        engine.max_num_seqs = 1;
        engine.max_queue = 1;
    });
    let running = open_stream(&server, &long_request());
    server.wait_for("the first request to run", Duration::from_secs(20), |s| s.active == 1 && s.queued == 0);
    let waiting = client().post(server.url("/v1/chat/completions")).json(&long_request()).send().unwrap();
    assert_eq!(waiting.status().as_u16(), 200, "one request may wait");
    server.wait_for("the second request to queue", Duration::from_secs(20), |s| s.queued == 1);
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let body = if path == "/v1/completions" {
            json!({"prompt": "Hello", "max_tokens": 2})
        } else {
            json!({"messages": user("Hi"), "max_tokens": 2})
        };
        let (status, body) = server.post(path, &body);
        assert_eq!(status, 503, "{body}");
        assert_error_shape(&body, "queue full");
        assert!(body["error"]["message"].as_str().unwrap().contains("--max-queue"), "{body}");
    }
    drop(waiting);
    drop(running);
    server.wait_for("both to be cancelled", Duration::from_secs(30), |s| s.active == 0 && s.queued == 0);
    let (status, body) = server.chat(&json!({"messages": user("Hi"), "max_tokens": 2}));
    assert_eq!(status, 200, "{body}");
}
