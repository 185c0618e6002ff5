//! A bug in one request never takes the server down: panics injected (phive's
//! `fault-injection` feature, enabled for these tests only) while preparing a prompt or
//! generating a row fail that request with a 500 in OpenAI's shape while others keep being
//! served; a dead engine loop turns `/health` unhealthy and every request into a 503.

mod common;

use std::time::Duration;

use common::*;
use phive::fault::Fault;
use serde_json::{json, Value};

fn faulty(fault: Fault) -> Value {
    json!({"messages": user(&format!("Hello {}", fault.marker())), "max_tokens": 4})
}

fn assert_internal(status: u16, body: &Value, context: &str) {
    assert_eq!(status, 500, "{context}: {body}");
    assert_error_shape(body, context);
    assert_eq!(body["error"]["type"], "server_error", "{context}: {body}");
}

fn assert_still_serving(server: &TestServer) {
    let (status, body) = server.chat(&json!({"messages": user("Hi"), "max_tokens": 3}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(client().get(server.url("/health")).send().unwrap().status().as_u16(), 200);
}

#[test]
fn a_panic_while_preparing_fails_only_that_request() {
    let server = start(|_, _| {});
    let (status, body) = server.chat(&faulty(Fault::Prepare));
    assert_internal(status, &body, "prepare");
    assert_still_serving(&server);
}

#[test]
fn a_panic_while_generating_fails_only_that_request() {
    let server = start(|_, _| {});
    // A healthy stream runs beside the faulty request and is not disturbed.
    let healthy = {
        let server_url = server.url("/v1/chat/completions");
        std::thread::spawn(move || {
            // Long enough to be seen running (a step takes under a millisecond here): the stop
            // tokens of the Phi-3.5 fixture are banned, so it runs to max_tokens.
            let body = json!({"messages": user("Write a very long story."), "max_tokens": 1000, "temperature": 0,
                "logit_bias": {"32000": -100, "32001": -100, "32007": -100}});
            let response = client().post(server_url).json(&body).send().unwrap();
            (response.status().as_u16(), response.json::<Value>().unwrap())
        })
    };
    server.wait_for("the healthy request to run", Duration::from_secs(20), |s| s.active >= 1);
    let (status, body) = server.chat(&faulty(Fault::Row));
    assert_internal(status, &body, "row");
    let (status, body) = healthy.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 1000, "{body}");

    // Streamed: the error arrives in-band and the stream ends.
    let events = server.stream(
        "/v1/chat/completions",
        &json!({
        "messages": user(&format!("Hi {}", Fault::Row.marker())), "max_tokens": 4, "stream": true}),
    );
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_error_shape(&last, "streamed row fault");
    server.wait_for("no active sequences", Duration::from_secs(20), |s| s.active == 0);
    assert_still_serving(&server);
}

#[test]
fn a_dead_engine_loop_is_unhealthy_and_answers_503() {
    let server = start(|_, _| {});
    let (status, body) = server.chat(&faulty(Fault::EngineLoop));
    assert_eq!(status, 503, "the request in flight: {body}");
    assert_error_shape(&body, "in flight");
    assert!(!server.state.engine().is_alive());
    let health = client().get(server.url("/health")).send().unwrap();
    assert_eq!(health.status().as_u16(), 503);
    assert_eq!(health.json::<Value>().unwrap()["status"], "unhealthy");
    for stream in [false, true] {
        let (status, body) = server.chat(&json!({"messages": user("Hi"), "max_tokens": 2, "stream": stream}));
        assert_eq!(status, 503, "stream={stream}: {body}");
        assert_error_shape(&body, "after the loop died");
        assert_eq!(body["error"]["code"], "engine_unavailable", "{body}");
    }
}
