//! The Rust SDK through the documented examples' own code, on the tiny fixture: the greedy
//! answer equals the reference's (and so `phive run`'s), from a file and from a URL.

mod common;

#[path = "../examples/phi3v_local_image.rs"]
mod local_image;
#[path = "../examples/phi3v_url_image.rs"]
mod url_image;

use std::io::{Read, Write};
use std::net::TcpListener;

use phive::{RequestBuilder, TextMessageRole, VisionArchitecture, VisionMessages, VisionModelBuilder};

fn golden_one_image_text() -> String {
    let goldens = common::golden_json("phi3v/generation.json");
    let case = goldens["cases"].as_array().unwrap().iter().find(|c| c["name"] == "one_image").unwrap();
    case["greedy_text"].as_str().unwrap().to_string()
}

fn model() -> String {
    common::phi3v_tiny().to_string_lossy().into_owned()
}

fn image_path(name: &str) -> String {
    common::fixtures().join("images").join(name).to_string_lossy().into_owned()
}

/// Serves one file over HTTP on 127.0.0.1 for each of `requests` connections.
fn serve_file(path: String, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/image.png", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let body = std::fs::read(path).unwrap();
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(&body));
        }
    });
    url
}

#[tokio::test]
async fn local_image_example_gives_the_reference_answer() {
    let answer = local_image::run(&model(), &image_path("wide_1000x600.png"), Some(16)).await.unwrap();
    assert_eq!(answer, golden_one_image_text());
}

#[tokio::test]
async fn url_image_example_streams_the_reference_answer() {
    let url = serve_file(image_path("wide_1000x600.png"), 1);
    let answer = url_image::run(&model(), &url, Some(16)).await.unwrap();
    assert_eq!(answer, golden_one_image_text());
}

#[tokio::test]
async fn usage_and_sampling_controls() {
    let model = VisionModelBuilder::new(model()).with_arch(VisionArchitecture::Phi3V).build().await.unwrap();
    let request = RequestBuilder::new()
        .add_message(TextMessageRole::User, "Describe a sunset over the ocean in two sentences.")
        .set_sampler_max_len(8)
        .set_sampler_temperature(0.8)
        .set_sampler_seed(42)
        .set_sampler_n_choices(2);
    let first = model.send_chat_request(request.clone()).await.unwrap();
    let again = model.send_chat_request(request).await.unwrap();
    assert_eq!(first.choices.len(), 2);
    assert_eq!(first.choices[0].message.content, again.choices[0].message.content, "same seed, same text");
    let usage = first.usage;
    assert_eq!(usage.completion_tokens, 16);
    assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
    assert!(usage.avg_prompt_tok_per_sec > 0.0 && usage.total_prompt_time_sec > 0.0);
}

#[tokio::test]
async fn wrong_architecture_and_bad_requests_are_typed_errors() {
    let err =
        VisionModelBuilder::new(model()).with_arch(VisionArchitecture::Phi4MM).build().await.err().unwrap();
    assert!(matches!(err, phive::Error::InvalidRequest(_)), "{err}");
    let err = VisionModelBuilder::new("./no/such/model").build().await.err().unwrap();
    assert!(matches!(err, phive::Error::ModelNotFound(_)), "{err}");
    let model = VisionModelBuilder::new(model()).build().await.unwrap();
    let request = RequestBuilder::from(VisionMessages::new().add_message(TextMessageRole::User, "hi"))
        .set_sampler_topp(0.0);
    let err = model.send_chat_request(request).await.err().unwrap();
    assert!(err.to_string().contains("top_p"), "{err}");
}

#[tokio::test]
async fn concurrent_requests_batch_together_and_answer_as_alone() {
    let model = VisionModelBuilder::new(model()).build().await.unwrap();
    let prompts = ["Describe a sunset over the ocean in two sentences.", "Hi", "Name three colours.", "Why?"];
    let request =
        |text: &str| RequestBuilder::new().add_message(TextMessageRole::User, text).set_sampler_max_len(24);
    let (a, b, c, d) = tokio::join!(
        model.send_chat_request(request(prompts[0])),
        model.send_chat_request(request(prompts[1])),
        model.send_chat_request(request(prompts[2])),
        model.send_chat_request(request(prompts[3])),
    );
    let together: Vec<_> =
        [a, b, c, d].into_iter().map(|r| r.unwrap().choices[0].message.content.clone()).collect();
    let batched_steps: u64 = model.engine().stats().batch_size.counts[1..].iter().sum();
    assert!(batched_steps > 0, "no step ran more than one sequence");
    for (prompt, answer) in prompts.iter().zip(&together) {
        let alone = model.send_chat_request(request(prompt)).await.unwrap();
        assert_eq!(&alone.choices[0].message.content, answer, "{prompt}");
    }
}

#[tokio::test]
async fn crop_limits_at_load_and_per_request() {
    let goldens = common::golden_json("crop_limits.json");
    let tokens = |n: u64| {
        let case = goldens["phi3v"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["size"] == serde_json::json!([1000, 600]) && c["num_crops"] == n);
        case.unwrap()["num_image_tokens"].as_u64().unwrap() as usize
    };
    let image = image::open(image_path("wide_1000x600.png")).unwrap();
    let ask = |request: RequestBuilder| {
        request
            .add_image_message(TextMessageRole::User, "What is shown?", image.clone())
            .set_sampler_max_len(1)
    };
    let default = VisionModelBuilder::new(model()).build().await.unwrap();
    let four = default.send_chat_request(ask(RequestBuilder::new())).await.unwrap().usage.prompt_tokens;
    let sixteen = default.send_chat_request(ask(RequestBuilder::new().set_num_crops(16))).await.unwrap();
    assert_eq!(sixteen.usage.prompt_tokens - four, tokens(16) - tokens(4));
    let loaded = VisionModelBuilder::new(model()).with_num_crops(16).build().await.unwrap();
    let by_default = loaded.send_chat_request(ask(RequestBuilder::new())).await.unwrap();
    assert_eq!(by_default.usage.prompt_tokens, sixteen.usage.prompt_tokens);

    let err = default.send_chat_request(ask(RequestBuilder::new().set_num_crops(0))).await.err().unwrap();
    assert!(matches!(&err, phive::Error::InvalidRequest(m) if m.starts_with("num_crops must be")), "{err}");
    let err = default.send_chat_request(ask(RequestBuilder::new().set_dynamic_hd(4))).await.err().unwrap();
    assert!(
        matches!(&err, phive::Error::InvalidRequest(m) if m.starts_with("dynamic_hd (4) applies")),
        "{err}"
    );
    let err = VisionModelBuilder::new(model()).with_dynamic_hd(4).build().await.err().unwrap();
    assert!(matches!(&err, phive::Error::InvalidRequest(m) if m.contains("Phi-4-multimodal only")), "{err}");
}

#[tokio::test]
async fn constraints_tools_and_logit_bias() {
    let model = VisionModelBuilder::new(model()).build().await.unwrap();
    let ask = || RequestBuilder::new().add_message(TextMessageRole::User, "Numbers?").set_sampler_max_len(40);
    let answer = model
        .send_chat_request(ask().set_constraint(phive::Grammar::Regex("[0-9]{3}-[a-z]{2}".into())))
        .await
        .unwrap();
    let text = answer.choices[0].message.content.clone().unwrap();
    assert!(regex::Regex::new("^[0-9]{3}-[a-z]{2}$").unwrap().is_match(&text), "{text:?}");

    let biased = model
        .send_chat_request(ask().set_sampler_max_len(3).set_sampler_logits_bias([(278, 100.0)].into()))
        .await;
    assert_eq!(
        biased.unwrap().choices[0].message.content.as_deref().map(str::split_whitespace).map(Vec::from_iter),
        Some(vec!["the"; 3])
    );

    let tool: phive::Tool = serde_json::from_value(serde_json::json!({"type": "function", "function": {
        "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0,
        "maximum": 9}}, "required": ["a"], "additionalProperties": false}}}))
    .unwrap();
    let called = model
        .send_chat_request(
            ask().set_tools(vec![tool.clone()]).set_tool_choice(phive::ToolChoice::Named("add".into())),
        )
        .await
        .unwrap();
    assert_eq!(called.choices[0].finish_reason, "tool_calls");
    let call = &called.choices[0].message.tool_calls.as_ref().unwrap()[0];
    assert_eq!(call.function.name, "add");
    let a =
        serde_json::from_str::<serde_json::Value>(&call.function.arguments).unwrap()["a"].as_f64().unwrap();
    assert!((0.0..=9.0).contains(&a));
    // Phi-3.5-vision has no tool format, so "auto" is a typed error naming the problem.
    let err = model.send_chat_request(ask().set_tools(vec![tool])).await.err().unwrap();
    assert!(matches!(err, phive::Error::InvalidRequest(_)) && err.to_string().contains("tool"), "{err}");
}
