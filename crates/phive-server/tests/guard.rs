//! Keeping strangers out and slow or greedy clients from starving the server: API keys, the
//! header and body deadlines, the connection cap and the decoded-media budget.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use phive::media::MediaBudget;
use phive_server::ApiKeys;
use serde_json::{json, Value};

const KEY: &str = "sk-test-1234567890";

fn get(server: &TestServer, path: &str, key: Option<&str>) -> reqwest::blocking::Response {
    let mut request = client().get(server.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().unwrap()
}

fn assert_unauthorized(response: reqwest::blocking::Response, context: &str) {
    assert_eq!(response.status().as_u16(), 401, "{context}");
    assert_eq!(response.headers()["www-authenticate"], "Bearer", "{context}");
    let body: Value = response.json().unwrap();
    assert_error_shape(&body, context);
    assert_eq!(body["error"]["code"], "invalid_api_key", "{context}: {body}");
}

#[test]
fn api_keys_guard_v1_routes_and_metrics_but_not_health() {
    let server = start(|config, _| config.api_keys = ApiKeys::new([KEY, "sk-second"]));
    assert_unauthorized(get(&server, "/v1/models", None), "no key");
    assert_unauthorized(get(&server, "/v1/models", Some("sk-test-123456789")), "a prefix of the key");
    assert_unauthorized(get(&server, "/v1/models", Some(&format!("{KEY}0"))), "the key and more");
    assert_unauthorized(get(&server, "/metrics", None), "metrics without a key");
    let basic = client().get(server.url("/v1/models")).header("authorization", format!("Basic {KEY}")).send();
    assert_unauthorized(basic.unwrap(), "another scheme");
    let refused =
        client().post(server.url("/v1/chat/completions")).json(&json!({"messages": user("Hi")})).send();
    assert_unauthorized(refused.unwrap(), "chat without a key");
    for (path, body) in [
        ("/v1/responses", json!({"input": "Hi"})),
        ("/tokenize", json!({"prompt": "Hi"})),
        ("/detokenize", json!({"tokens": [1]})),
    ] {
        assert_unauthorized(client().post(server.url(path)).json(&body).send().unwrap(), path);
    }

    assert_eq!(get(&server, "/health", None).status().as_u16(), 200);
    assert_eq!(get(&server, "/v1/models", Some(KEY)).status().as_u16(), 200);
    assert_eq!(get(&server, "/v1/models", Some("sk-second")).status().as_u16(), 200);
    assert_eq!(get(&server, "/metrics", Some(KEY)).status().as_u16(), 200);
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"messages": user("Hi"), "max_tokens": 2}))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // Refusals are counted like any response.
    let metrics = get(&server, "/metrics", Some(KEY)).text().unwrap();
    assert!(metrics.contains("status=\"401\""), "{metrics}");
}

#[test]
fn public_metrics_opens_only_metrics() {
    let server = start(|config, _| {
        config.api_keys = ApiKeys::new([KEY]);
        config.public_metrics = true;
    });
    assert_eq!(get(&server, "/metrics", None).status().as_u16(), 200);
    assert_unauthorized(get(&server, "/v1/models", None), "models");
}

/// Reads what the server sends until it closes the connection (or `limit` passes).
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server kept the connection open past {limit:?}: {e}"),
        }
    }
    (String::from_utf8_lossy(&received).into_owned(), started.elapsed())
}

#[test]
fn headers_sent_too_slowly_close_the_connection() {
    let server = start(|config, _| config.connections.header_read_timeout = Duration::from_millis(600));
    let mut stream = TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    let (_, waited) = read_until_closed(&mut stream, Duration::from_secs(10));
    assert!(waited >= Duration::from_millis(400), "closed after {waited:?}");
    // An idle keep-alive connection is closed the same way.
    let mut idle = TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (answer, _) = read_until_closed(&mut idle, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_body_sent_too_slowly_gets_408() {
    let server = start(|config, _| config.body_read_timeout = Duration::from_millis(500));
    let mut stream = TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"messages\":",
        )
        .unwrap();
    let (answer, waited) = read_until_closed(&mut stream, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(waited >= Duration::from_millis(400), "answered after {waited:?}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_error_shape(&body, "408");
    assert_eq!(body["error"]["code"], "request_timeout");
    // The server still answers others.
    assert_eq!(client().get(server.url("/health")).send().unwrap().status().as_u16(), 200);
}

#[test]
fn connections_over_the_cap_get_503_until_one_closes() {
    let server = start(|config, _| config.connections.max_connections = 2);
    let address = server.base.trim_start_matches("http://").to_string();
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&address).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(&address).unwrap();
    third.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (answer, _) = read_until_closed(&mut third, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_error_shape(&body, "503");
    assert_eq!(body["error"]["code"], "too_many_connections");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = client().get(server.url("/health")).send().unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slots were not freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn decoded_media_share_one_budget() {
    // gray_400x300.png decodes to 400 x 300 x 4 = 480 000 bytes.
    let server = start(|config, _| config.media.budget = MediaBudget::new(600_000));
    let request = |image: &str| json!({"messages": user_with_image(&image_data_url(image), "Describe."), "max_tokens": 2});
    // Another request holds most of the budget: retry later.
    let held = server.state.config().media.budget.reserve(400_000, "a test").unwrap();
    let (status, body) = server.chat(&request("gray_400x300.png"));
    assert_eq!(status, 503, "{body}");
    assert_error_shape(&body, "budget taken");
    assert!(body["error"]["message"].as_str().unwrap().contains("--max-media-mem"), "{body}");
    drop(held);
    let (status, body) = server.chat(&request("gray_400x300.png"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.state.config().media.budget.in_use(), 0, "released after preparing");
    // An image larger than the whole budget can never fit: a 400, not a retry.
    let (status, body) = server.chat(&request("wide_1000x600.png"));
    assert_eq!(status, 400, "{body}");
    assert_error_shape(&body, "over the budget");
}
