//! A battery of client mistakes: each gets the right 4xx and OpenAI's error body with all four
//! keys, and none hurts the server (a good request succeeds afterwards).

mod common;

use std::io::Cursor;

use common::*;
use serde_json::{json, Value};

enum Body {
    Json(Value),
    Raw(&'static str, Option<&'static str>),
    /// Only the request head, declaring a body of this many bytes (sent over a raw socket so
    /// the early 413 cannot race with the upload).
    DeclaredLength(usize),
}

struct Case {
    name: String,
    method: &'static str,
    path: &'static str,
    body: Body,
    status: u16,
    param: Option<&'static str>,
}

fn chat_with(extra: Value) -> Body {
    let mut body = json!({"model": "phi3v-tiny", "messages": user("Hello"), "max_tokens": 2});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    Body::Json(body)
}

fn messages(messages: Value) -> Body {
    Body::Json(json!({"messages": messages, "max_tokens": 2}))
}

fn parts(parts: Value) -> Body {
    messages(json!([{"role": "user", "content": parts}]))
}

fn image(url: &str) -> Body {
    parts(json!([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what?"}]))
}

fn completion_with(extra: Value) -> Body {
    let mut body = json!({"prompt": "Hello", "max_tokens": 2});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    Body::Json(body)
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(width, height, image::Rgb([1, 2, 3]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn cases() -> Vec<Case> {
    const CHAT: &str = "/v1/chat/completions";
    const COMPL: &str = "/v1/completions";
    let mut cases = Vec::new();
    let mut add = |name: &str,
                   method: &'static str,
                   path: &'static str,
                   body: Body,
                   status: u16,
                   param: Option<&'static str>| {
        cases.push(Case { name: name.to_string(), method, path, body, status, param });
    };
    // The body itself.
    add("truncated JSON", "POST", CHAT, Body::Raw("{\"messages\": [", Some("application/json")), 400, None);
    add("not JSON", "POST", CHAT, Body::Raw("hello there", Some("application/json")), 400, None);
    add(
        "trailing garbage",
        "POST",
        CHAT,
        Body::Raw("{\"messages\": []} extra", Some("application/json")),
        400,
        None,
    );
    add("empty body", "POST", CHAT, Body::Raw("", Some("application/json")), 400, None);
    add("array body", "POST", CHAT, Body::Json(json!([1, 2])), 400, None);
    add("string body", "POST", CHAT, Body::Json(json!("hi")), 400, None);
    add("null body", "POST", CHAT, Body::Json(Value::Null), 400, None);
    add("text/plain", "POST", CHAT, Body::Raw("{\"messages\": []}", Some("text/plain")), 415, None);
    add("no content type", "POST", CHAT, Body::Raw("{\"messages\": []}", None), 415, None);
    add(
        "form content type",
        "POST",
        CHAT,
        Body::Raw("a=b", Some("application/x-www-form-urlencoded")),
        415,
        None,
    );
    add("body over --max-body-bytes", "POST", CHAT, Body::DeclaredLength(3 * 1024 * 1024), 413, None);
    // Messages.
    add("missing messages", "POST", CHAT, Body::Json(json!({"model": "phi3v-tiny"})), 400, Some("messages"));
    add("messages not a list", "POST", CHAT, Body::Json(json!({"messages": "hi"})), 400, Some("messages"));
    add("empty messages", "POST", CHAT, messages(json!([])), 400, Some("messages"));
    add("message not an object", "POST", CHAT, messages(json!(["hi"])), 400, Some("messages[0]"));
    add(
        "message without role",
        "POST",
        CHAT,
        messages(json!([{"content": "hi"}])),
        400,
        Some("messages[0].role"),
    );
    add(
        "tool calls on a user message",
        "POST",
        CHAT,
        messages(
            json!([{"role": "user", "content": "hi", "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]}]),
        ),
        400,
        Some("messages[0].tool_calls"),
    );
    add(
        "unknown role",
        "POST",
        CHAT,
        messages(json!([{"role": "wizard", "content": "hi"}])),
        400,
        Some("messages[0].role"),
    );
    add(
        "numeric role",
        "POST",
        CHAT,
        messages(json!([{"role": 1, "content": "hi"}])),
        400,
        Some("messages[0].role"),
    );
    add(
        "numeric content",
        "POST",
        CHAT,
        messages(json!([{"role": "user", "content": 5}])),
        400,
        Some("messages[0].content"),
    );
    add(
        "object content",
        "POST",
        CHAT,
        messages(json!([{"role": "user", "content": {"text": "hi"}}])),
        400,
        Some("messages[0].content"),
    );
    add(
        "null user content",
        "POST",
        CHAT,
        messages(json!([{"role": "user", "content": null}])),
        400,
        Some("messages[0].content"),
    );
    add("empty parts", "POST", CHAT, parts(json!([])), 400, Some("messages[0].content"));
    add("part without type", "POST", CHAT, parts(json!([{"text": "hi"}])), 400, Some("messages[0].content"));
    add(
        "unknown part type",
        "POST",
        CHAT,
        parts(json!([{"type": "video_url", "video_url": {"url": "x"}}])),
        400,
        Some("messages[0].content"),
    );
    add("numeric part type", "POST", CHAT, parts(json!([{"type": 3}])), 400, Some("messages[0].content"));
    add("part not an object", "POST", CHAT, parts(json!(["hi"])), 400, Some("messages[0].content"));
    add(
        "text part without text",
        "POST",
        CHAT,
        parts(json!([{"type": "text"}])),
        400,
        Some("messages[0].content"),
    );
    add(
        "numeric text",
        "POST",
        CHAT,
        parts(json!([{"type": "text", "text": 1}])),
        400,
        Some("messages[0].content"),
    );
    add(
        "image part without image_url",
        "POST",
        CHAT,
        parts(json!([{"type": "image_url"}])),
        400,
        Some("messages[0].content"),
    );
    add(
        "numeric image_url",
        "POST",
        CHAT,
        parts(json!([{"type": "image_url", "image_url": 7}])),
        400,
        Some("messages[0].content"),
    );
    add(
        "image_url without url",
        "POST",
        CHAT,
        parts(json!([{"type": "image_url", "image_url": {}}])),
        400,
        Some("messages[0].content"),
    );
    add("empty image url", "POST", CHAT, image(""), 400, Some("messages[0].content[0]"));
    add(
        "bad detail",
        "POST",
        CHAT,
        parts(
            json!([{"type": "image_url", "image_url": {"url": image_data_url("tiny_50x50.png"), "detail": "ultra"}}]),
        ),
        400,
        Some("messages[0].content"),
    );
    add(
        "input_audio part",
        "POST",
        CHAT,
        parts(json!([{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}])),
        400,
        Some("messages[0].content[0]"),
    );
    add(
        "audio_url part",
        "POST",
        CHAT,
        parts(json!([{"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,UklGRg=="}}])),
        400,
        Some("messages[0].content[0]"),
    );
    add(
        "image in an assistant message",
        "POST",
        CHAT,
        messages(
            json!([{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": image_data_url("tiny_50x50.png")}}]}, {"role": "user", "content": "hi"}]),
        ),
        400,
        Some("messages[0].content[0]"),
    );
    add(
        "user-written tag without image",
        "POST",
        CHAT,
        messages(json!([{"role": "user", "content": "<|image_2|> what?"}])),
        400,
        Some("messages"),
    );
    // Media.
    add("bad base64 in data URL", "POST", CHAT, image("data:image/png;base64,!!!!"), 400, Some("messages"));
    add("data URL without base64", "POST", CHAT, image("data:image/png,abcd"), 400, Some("messages"));
    add(
        "data URL that is not an image",
        "POST",
        CHAT,
        image(&format!("data:image/png;base64,{}", b64(b"definitely not an image at all"))),
        400,
        Some("messages"),
    );
    add(
        "truncated PNG",
        "POST",
        CHAT,
        image(&format!("data:image/png;base64,{}", b64(&png(40, 40)[..60]))),
        400,
        Some("messages"),
    );
    add("unsupported scheme", "POST", CHAT, image("ftp://example.com/a.png"), 400, Some("messages"));
    add("gibberish reference", "POST", CHAT, image("not-a-url"), 400, Some("messages"));
    add("path outside allowed dirs", "POST", CHAT, image("/etc/passwd"), 400, Some("messages"));
    add(
        "path escaping with ..",
        "POST",
        CHAT,
        image(&format!("{}/images/../phi3v-tiny/config.json", fixtures().display())),
        400,
        Some("messages"),
    );
    add("file URL outside allowed dirs", "POST", CHAT, image("file:///etc/hostname"), 400, Some("messages"));
    add("loopback URL", "POST", CHAT, image("http://127.0.0.1:9/x.png"), 400, Some("messages"));
    add("localhost URL", "POST", CHAT, image("http://localhost:9/x.png"), 400, Some("messages"));
    add(
        "metadata URL",
        "POST",
        CHAT,
        image("http://169.254.169.254/latest/meta-data"),
        400,
        Some("messages"),
    );
    add("IPv6 loopback URL", "POST", CHAT, image("http://[::1]:9/x.png"), 400, Some("messages"));
    add("private URL", "POST", CHAT, image("https://192.168.1.1/x.png"), 400, Some("messages"));
    add(
        "image over the pixel budget",
        "POST",
        CHAT,
        image(&format!("data:image/png;base64,{}", b64(&png(3000, 1000)))),
        400,
        Some("messages"),
    );
    add(
        "image over --max-image-bytes",
        "POST",
        CHAT,
        image(&b64(&vec![7u8; 1100 * 1024])),
        400,
        Some("messages"),
    );
    let nine: Vec<Value> = (0..9)
        .map(|_| json!({"type": "image_url", "image_url": {"url": image_data_url("pixel_1x1.png")}}))
        .collect();
    add("more images than --max-images", "POST", CHAT, parts(Value::Array(nine)), 400, Some("messages"));
    // Sampling and length fields.
    add(
        "temperature too high",
        "POST",
        CHAT,
        chat_with(json!({"temperature": 2.5})),
        400,
        Some("temperature"),
    );
    add(
        "negative temperature",
        "POST",
        CHAT,
        chat_with(json!({"temperature": -1})),
        400,
        Some("temperature"),
    );
    add(
        "string temperature",
        "POST",
        CHAT,
        chat_with(json!({"temperature": "hot"})),
        400,
        Some("temperature"),
    );
    add("top_p zero", "POST", CHAT, chat_with(json!({"top_p": 0})), 400, Some("top_p"));
    add("top_p above one", "POST", CHAT, chat_with(json!({"top_p": 1.5})), 400, Some("top_p"));
    add("top_k zero", "POST", CHAT, chat_with(json!({"top_k": 0})), 400, Some("top_k"));
    add("negative top_k", "POST", CHAT, chat_with(json!({"top_k": -5})), 400, Some("top_k"));
    add("fractional top_k", "POST", CHAT, chat_with(json!({"top_k": 1.5})), 400, Some("top_k"));
    add("min_p above one", "POST", CHAT, chat_with(json!({"min_p": 2})), 400, Some("min_p"));
    // Crop limits: out of range, or the other family's (the fixture is Phi-3.5-vision).
    add("num_crops zero", "POST", CHAT, chat_with(json!({"num_crops": 0})), 400, Some("num_crops"));
    add("num_crops too high", "POST", CHAT, chat_with(json!({"num_crops": 257})), 400, Some("num_crops"));
    add("negative num_crops", "POST", CHAT, chat_with(json!({"num_crops": -4})), 400, Some("num_crops"));
    add("dynamic_hd on Phi-3.5", "POST", CHAT, chat_with(json!({"dynamic_hd": 16})), 400, Some("dynamic_hd"));
    let nested = |kwargs: Value| chat_with(json!({"mm_processor_kwargs": kwargs}));
    add("vLLM num_crops zero", "POST", CHAT, nested(json!({"num_crops": 0})), 400, Some("num_crops"));
    add(
        "unknown mm_processor_kwargs",
        "POST",
        CHAT,
        nested(json!({"max_pixels": 1})),
        400,
        Some("mm_processor_kwargs.max_pixels"),
    );
    add(
        "frequency_penalty too high",
        "POST",
        CHAT,
        chat_with(json!({"frequency_penalty": 3})),
        400,
        Some("frequency_penalty"),
    );
    add(
        "presence_penalty too low",
        "POST",
        CHAT,
        chat_with(json!({"presence_penalty": -3})),
        400,
        Some("presence_penalty"),
    );
    add(
        "zero repetition_penalty",
        "POST",
        CHAT,
        chat_with(json!({"repetition_penalty": 0})),
        400,
        Some("repetition_penalty"),
    );
    add("max_tokens zero", "POST", CHAT, chat_with(json!({"max_tokens": 0})), 400, Some("max_tokens"));
    // Prompt + max_tokens beyond the context: refused before anything is generated.
    add(
        "max_tokens beyond the context",
        "POST",
        CHAT,
        chat_with(json!({"max_tokens": 10_000_000})),
        400,
        None,
    );
    add("negative max_tokens", "POST", CHAT, chat_with(json!({"max_tokens": -1})), 400, Some("max_tokens"));
    add("string max_tokens", "POST", CHAT, chat_with(json!({"max_tokens": "ten"})), 400, Some("max_tokens"));
    add(
        "max_completion_tokens zero",
        "POST",
        CHAT,
        chat_with(json!({"max_completion_tokens": 0})),
        400,
        Some("max_completion_tokens"),
    );
    add("n zero", "POST", CHAT, chat_with(json!({"n": 0})), 400, Some("n"));
    add("n too large", "POST", CHAT, chat_with(json!({"n": 17})), 400, Some("n"));
    add("negative n", "POST", CHAT, chat_with(json!({"n": -1})), 400, Some("n"));
    add("numeric stop", "POST", CHAT, chat_with(json!({"stop": 5})), 400, Some("stop"));
    add("stop list with a number", "POST", CHAT, chat_with(json!({"stop": ["a", 1]})), 400, Some("stop"));
    add("empty stop string", "POST", CHAT, chat_with(json!({"stop": [""]})), 400, Some("stop"));
    let many: Vec<String> = (0..17).map(|i| format!("s{i}")).collect();
    add("too many stop strings", "POST", CHAT, chat_with(json!({"stop": many})), 400, Some("stop"));
    add("string seed", "POST", CHAT, chat_with(json!({"seed": "abc"})), 400, Some("seed"));
    add("fractional seed", "POST", CHAT, chat_with(json!({"seed": 1.5})), 400, Some("seed"));
    add("string logprobs", "POST", CHAT, chat_with(json!({"logprobs": "yes"})), 400, Some("logprobs"));
    add(
        "top_logprobs too large",
        "POST",
        CHAT,
        chat_with(json!({"logprobs": true, "top_logprobs": 21})),
        400,
        Some("top_logprobs"),
    );
    add(
        "top_logprobs without logprobs",
        "POST",
        CHAT,
        chat_with(json!({"top_logprobs": 2})),
        400,
        Some("top_logprobs"),
    );
    add("string stream", "POST", CHAT, chat_with(json!({"stream": "yes"})), 400, Some("stream"));
    add(
        "stream_options without stream",
        "POST",
        CHAT,
        chat_with(json!({"stream_options": {"include_usage": true}})),
        400,
        Some("stream_options"),
    );
    add(
        "string include_usage",
        "POST",
        CHAT,
        chat_with(json!({"stream": true, "stream_options": {"include_usage": "yes"}})),
        400,
        Some("stream_options.include_usage"),
    );
    add(
        "auto tool choice without a tool format",
        "POST",
        CHAT,
        chat_with(json!({"tools": [{"type": "function", "function": {"name": "f"}}]})),
        400,
        Some("tool_choice"),
    );
    add(
        "bad tool name",
        "POST",
        CHAT,
        chat_with(json!({"tools": [{"type": "function", "function": {"name": "a b"}}]})),
        400,
        Some("tools[0].function.name"),
    );
    add(
        "unknown tool",
        "POST",
        CHAT,
        chat_with(json!({"tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}}})),
        400,
        Some("tool_choice"),
    );
    add(
        "unknown response_format",
        "POST",
        CHAT,
        chat_with(json!({"response_format": {"type": "xml"}})),
        400,
        Some("response_format"),
    );
    add("bad regex", "POST", CHAT, chat_with(json!({"grammar": {"type": "regex", "value": "("}})), 400, None);
    add(
        "logit_bias out of range",
        "POST",
        CHAT,
        chat_with(json!({"logit_bias": {"50256": -101}})),
        400,
        Some("logit_bias"),
    );
    add(
        "logit_bias past the vocabulary",
        "POST",
        CHAT,
        chat_with(json!({"logit_bias": {"50256": 1}})),
        400,
        None,
    );
    add("numeric user", "POST", CHAT, chat_with(json!({"user": 5})), 400, Some("user"));
    add("unknown model", "POST", CHAT, chat_with(json!({"model": "gpt-4o"})), 404, Some("model"));
    add("numeric model", "POST", CHAT, chat_with(json!({"model": 4})), 400, Some("model"));
    let long = "hello ".repeat(132_000);
    add(
        "prompt longer than the context",
        "POST",
        CHAT,
        Body::Json(json!({"messages": [{"role": "user", "content": long}]})),
        400,
        Some("messages"),
    );
    // Routes and methods.
    add("GET on chat", "GET", CHAT, Body::Raw("", None), 405, None);
    add("PUT on models", "PUT", "/v1/models", Body::Raw("", None), 405, None);
    add("POST on health", "POST", "/health", Body::Json(json!({})), 405, None);
    add("DELETE on metrics", "DELETE", "/metrics", Body::Raw("", None), 405, None);
    add("unknown route", "GET", "/nope", Body::Raw("", None), 404, None);
    add("embeddings", "POST", "/v1/embeddings", Body::Json(json!({"input": "x"})), 404, None);
    // `/` is the chat page: other methods and unknown page files are JSON errors too.
    add("POST on the page", "POST", "/", Body::Raw("", None), 405, None);
    add("unknown page file", "GET", "/ui/nope.js", Body::Raw("", None), 404, None);
    // Text completions.
    add(
        "completion without prompt",
        "POST",
        COMPL,
        Body::Json(json!({"max_tokens": 2})),
        400,
        Some("prompt"),
    );
    add("numeric prompt", "POST", COMPL, completion_with(json!({"prompt": 5})), 400, Some("prompt"));
    add(
        "batched prompts",
        "POST",
        COMPL,
        completion_with(json!({"prompt": ["a", "b"]})),
        400,
        Some("prompt"),
    );
    add("token-id prompt", "POST", COMPL, completion_with(json!({"prompt": [1, 2, 3]})), 400, Some("prompt"));
    add("echo", "POST", COMPL, completion_with(json!({"echo": true})), 400, Some("echo"));
    add(
        "legacy logprobs too large",
        "POST",
        COMPL,
        completion_with(json!({"logprobs": 6})),
        400,
        Some("logprobs"),
    );
    add("suffix", "POST", COMPL, completion_with(json!({"suffix": "end"})), 400, Some("suffix"));
    add(
        "completion max_tokens beyond the context",
        "POST",
        COMPL,
        completion_with(json!({"max_tokens": 1_000_000_000_000u64})),
        400,
        None,
    );
    add("best_of", "POST", COMPL, completion_with(json!({"best_of": 3})), 400, Some("best_of"));
    add(
        "completion max_tokens zero",
        "POST",
        COMPL,
        completion_with(json!({"max_tokens": 0})),
        400,
        Some("max_tokens"),
    );
    add(
        "image tag in a completion prompt",
        "POST",
        COMPL,
        completion_with(json!({"prompt": "<|image_1|> hi"})),
        400,
        Some("prompt"),
    );
    add(
        "completion unknown model",
        "POST",
        COMPL,
        completion_with(json!({"model": "davinci"})),
        404,
        Some("model"),
    );
    add("completion invalid JSON", "POST", COMPL, Body::Raw("{", Some("application/json")), 400, None);
    add(
        "completion temperature",
        "POST",
        COMPL,
        completion_with(json!({"temperature": 9})),
        400,
        Some("temperature"),
    );
    cases
}

/// Sends only a request head declaring `len` body bytes and reads the response.
fn raw_post_head(base: &str, path: &str, len: usize) -> (u16, Value) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn every_bad_request_gets_a_4xx_with_openai_error_shape() {
    let server = start(|_, _| {});
    let cases = cases();
    assert!(cases.len() >= 60, "the battery has {} cases", cases.len());
    let names: std::collections::HashSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names are distinct");
    let client = client();
    let mut failures = Vec::new();
    for case in &cases {
        if let Body::DeclaredLength(len) = case.body {
            let (status, body) = raw_post_head(&server.base, case.path, len);
            if status != case.status {
                failures.push(format!("{}: expected {}, got {status}: {body}", case.name, case.status));
            } else if std::panic::catch_unwind(|| assert_error_shape(&body, &case.name)).is_err() {
                failures.push(format!("{}: bad error shape {body}", case.name));
            }
            continue;
        }
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
        let mut request = client.request(method, server.url(case.path));
        request = match &case.body {
            Body::Json(v) => request.json(v),
            Body::Raw(text, content_type) => {
                let r = request.body(text.to_string());
                match content_type {
                    Some(ct) => r.header("content-type", *ct),
                    None => r,
                }
            }
            Body::DeclaredLength(_) => unreachable!(),
        };
        let response = match request.send() {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: request failed: {e}", case.name));
                continue;
            }
        };
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        let body: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => {
                failures.push(format!("{}: status {status}, non-JSON body {text:?}", case.name));
                continue;
            }
        };
        if status != case.status {
            failures.push(format!("{}: expected {}, got {status}: {body}", case.name, case.status));
            continue;
        }
        let shape = std::panic::catch_unwind(|| assert_error_shape(&body, &case.name));
        if shape.is_err() {
            failures.push(format!("{}: bad error shape {body}", case.name));
            continue;
        }
        if let Some(param) = case.param {
            if body["error"]["param"] != param {
                failures
                    .push(format!("{}: expected param {param:?}, got {}", case.name, body["error"]["param"]));
            }
        }
        if status == 404 && case.param == Some("model") && body["error"]["code"] != "model_not_found" {
            failures.push(format!("{}: code {}", case.name, body["error"]["code"]));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Nothing above hurt the server.
    let (status, body) = server.chat(&json!({"messages": user("Hello"), "max_tokens": 3}));
    assert_eq!(status, 200, "{body}");
    let metrics = server.metrics();
    assert!(
        !metrics.lines().any(|l| l.starts_with("phive_http_requests_total") && l.contains("status=\"5")),
        "{metrics}"
    );
}
