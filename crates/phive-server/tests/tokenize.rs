//! `POST /tokenize` and `POST /detokenize` with the tiny checkpoint: a chat's count equals the
//! chat route's `prompt_tokens` (images expanded to their placeholder runs), text round-trips,
//! and bad requests are 4xx in OpenAI's error shape.

mod common;

use std::sync::OnceLock;

use common::*;
use serde_json::{json, Value};

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| start(|_, _| {}))
}

fn ids(body: &Value) -> Vec<u64> {
    body["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
}

#[test]
fn a_chat_with_an_image_counts_as_its_prompt() {
    let image = image_path("tiny_50x50.png").to_string_lossy().into_owned();
    let messages = user_with_image(&image, "What is in this picture?");
    let (status, tokenized) = server().post("/tokenize", &json!({"messages": messages}));
    assert_eq!(status, 200, "{tokenized}");
    let (status, chat) = server().chat(&json!({"messages": messages, "max_tokens": 1}));
    assert_eq!(status, 200, "{chat}");
    let tokens = ids(&tokenized);
    assert_eq!(tokenized["count"], chat["usage"]["prompt_tokens"]);
    assert_eq!(tokens.len() as u64, tokenized["count"].as_u64().unwrap());
    // Phi-3.5-vision's image positions hold placeholder id 0, in one run.
    let first = tokens.iter().position(|&t| t == 0).expect("an image run");
    let run = tokens[first..].iter().take_while(|&&t| t == 0).count();
    assert!(run > 10, "{run}");
    assert_eq!(tokens.iter().filter(|&&t| t == 0).count(), run);
    let (_, info) = server().get("/v1/phive/info");
    assert_eq!(tokenized["max_model_len"], info["context_length"]);

    let (status, bare) =
        server().post("/tokenize", &json!({"messages": messages, "add_generation_prompt": false}));
    assert_eq!(status, 200, "{bare}");
    let bare = ids(&bare);
    assert!(bare.len() < tokens.len() && tokens.starts_with(&bare), "{bare:?} vs {tokens:?}");
}

#[test]
fn text_round_trips() {
    let (status, with) = server().post("/tokenize", &json!({"prompt": "Hello world, hello phive."}));
    assert_eq!(status, 200, "{with}");
    let (_, without) = server()
        .post("/tokenize", &json!({"prompt": "Hello world, hello phive.", "add_special_tokens": false}));
    let (with, without) = (ids(&with), ids(&without));
    assert!(with.ends_with(&without) && with.len() > without.len(), "{with:?} {without:?}");
    let (status, text) = server().post("/detokenize", &json!({"tokens": without}));
    assert_eq!(status, 200, "{text}");
    assert_eq!(text["prompt"], "Hello world, hello phive.");
}

#[test]
fn bad_requests_are_4xx_naming_the_field() {
    let messages = user("Hi");
    for (path, body, status, param) in [
        ("/tokenize", json!({}), 400, None),
        ("/tokenize", json!({"prompt": "a", "messages": messages}), 400, None),
        ("/tokenize", json!({"prompt": 5}), 400, Some("prompt")),
        (
            "/tokenize",
            json!({"prompt": "a", "add_generation_prompt": true}),
            400,
            Some("add_generation_prompt"),
        ),
        (
            "/tokenize",
            json!({"messages": messages, "add_special_tokens": true}),
            400,
            Some("add_special_tokens"),
        ),
        ("/tokenize", json!({"messages": []}), 400, Some("messages")),
        (
            "/tokenize",
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            400,
            Some("messages[0].role"),
        ),
        ("/tokenize", json!({"prompt": "a", "model": "other"}), 404, Some("model")),
        ("/detokenize", json!({}), 400, Some("tokens")),
        ("/detokenize", json!({"tokens": [1, 99999999]}), 400, Some("tokens[1]")),
        ("/detokenize", json!({"tokens": [-1]}), 400, Some("tokens[0]")),
    ] {
        let (got, response) = server().post(path, &body);
        assert_eq!(got, status, "{path} {body}: {response}");
        assert_error_shape(&response, &body.to_string());
        if let Some(param) = param {
            assert_eq!(response["error"]["param"], param, "{path} {body}: {response}");
        }
    }
}
