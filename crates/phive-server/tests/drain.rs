//! Health probes and draining: readiness turns false when shutdown begins, new requests get a
//! 503 in OpenAI's shape, admitted streams run to the end, and the server stops once they are
//! done or the shutdown timeout has passed.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A stream that generates for seconds: greedy decoding of this prompt on the tiny checkpoint
/// runs thousands of tokens without meeting a stop token.
fn long_stream(max_tokens: usize) -> Value {
    json!({"messages": user("Write a very long story."), "max_tokens": max_tokens, "temperature": 0, "stream": true})
}

#[test]
fn live_and_ready_follow_the_engine_loop() {
    let server = start(|_, _| {});
    for path in ["/health/live", "/health/ready", "/health"] {
        let (status, body) = server.get(path);
        assert_eq!(status, 200, "{path}: {body}");
    }
    assert_eq!(server.get("/health/ready").1["status"], "ready");
    let text = server.metrics();
    assert_eq!(
        metric(&text, "phive_http_requests_total{route=\"/health/ready\",method=\"GET\",status=\"200\"}"),
        2.0,
        "{text}"
    );

    // A stopped engine loop serves nothing more: neither live nor ready.
    server.state.engine().shutdown();
    assert!(!server.state.engine().is_alive());
    for path in ["/health/live", "/health/ready"] {
        let (status, body) = server.get(path);
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(body["status"], "engine stopped", "{path}: {body}");
    }
}

#[test]
fn shutdown_drains_in_flight_streams_and_refuses_new_requests() {
    let mut server = start_with_shutdown_timeout(Duration::from_secs(120), |_, _| {});
    let mut stream = open_stream(&server, &long_stream(6000));
    assert_eq!(server.state.lifecycle().in_flight(), 1);
    server.begin_shutdown();

    let started = Instant::now();
    while server.get("/health/ready").0 != 503 {
        assert!(started.elapsed() < Duration::from_secs(10), "readiness never turned false");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, ready) = server.get("/health/ready");
    assert_eq!(ready["status"], "draining", "{ready}");
    assert_eq!(ready["in_flight"], 1, "{ready}");
    assert_eq!(server.get("/health/live").0, 200, "the process is still alive while draining");
    assert_eq!(server.get("/health").0, 200);

    for (path, body) in [
        ("/v1/chat/completions", json!({"messages": user("Hi"), "max_tokens": 2})),
        ("/v1/completions", json!({"prompt": "Hello", "max_tokens": 2})),
    ] {
        let response = client().post(server.url(path)).json(&body).send().unwrap();
        assert_eq!(response.status().as_u16(), 503, "{path}");
        assert_eq!(response.headers()["retry-after"], "1", "{path}");
        let body: Value = response.json().unwrap();
        assert_error_shape(&body, path);
        assert_eq!(body["error"]["code"], "shutting_down", "{body}");
    }
    let text = server.metrics();
    assert_eq!(
        metric(
            &text,
            "phive_http_requests_total{route=\"/v1/chat/completions\",method=\"POST\",status=\"503\"}"
        ),
        1.0,
        "refusals are counted: {text}"
    );
    assert!(!server.stops_within(Duration::from_millis(200)), "the server waits for the stream");

    // The admitted stream runs to its end, then the server stops on its own.
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    let tail: Vec<&str> = rest.lines().rev().take(3).collect();
    assert!(rest.ends_with("data: [DONE]\n\n"), "the stream completes: {tail:?}");
    assert!(rest.contains("\"finish_reason\":\"length\""), "all 6000 tokens were generated");
    assert!(server.stops_within(Duration::from_secs(10)), "the server stops once drained");
    assert!(client().get(server.url("/health/live")).send().is_err(), "the listener is closed");
}

#[test]
fn the_shutdown_timeout_drops_requests_that_run_too_long() {
    let mut server = start_with_shutdown_timeout(Duration::from_secs(1), |_, _| {});
    let mut stream = open_stream(&server, &long_stream(100_000));
    let started = Instant::now();
    server.begin_shutdown();
    assert!(server.stops_within(Duration::from_secs(15)), "the deadline stops the server");
    let stopped = started.elapsed();
    assert!(stopped >= Duration::from_secs(1), "the stream had its full second: {stopped:?}");
    let mut rest = String::new();
    let _ = stream.read_to_string(&mut rest);
    assert!(!rest.contains("[DONE]"), "the dropped stream did not complete normally");
    server.wait_for("the dropped request to be cancelled", Duration::from_secs(20), |s| {
        s.active == 0 && s.cancelled >= 1
    });
}
