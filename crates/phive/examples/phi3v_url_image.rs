//! Ask Phi-3.5-vision about an image fetched from a URL, streaming the answer (run with
//! `cargo run --release -p phive --example phi3v_url_image -- [MODEL] [URL]`).

use std::io::Read;

use phive::{RequestBuilder, Response, TextMessageRole, VisionMessages, VisionModelBuilder};

/// Loads `model_id`, fetches `url`, streams the answer to stdout and returns it.
pub async fn run(model_id: &str, url: &str, max_tokens: Option<usize>) -> anyhow::Result<String> {
    let model = VisionModelBuilder::new(model_id).build().await?;
    let mut bytes = Vec::new();
    ureq::get(url).call()?.into_reader().take(64 << 20).read_to_end(&mut bytes)?;
    let image = image::load_from_memory(&bytes)?;
    let messages = VisionMessages::new().add_phiv_image_message(
        TextMessageRole::User,
        "What is in this picture?",
        image,
    );
    let mut request = RequestBuilder::from(messages);
    if let Some(max_tokens) = max_tokens {
        request = request.set_sampler_max_len(max_tokens);
    }
    let mut stream = model.stream_chat_request(request).await?;
    let mut answer = String::new();
    while let Some(response) = stream.next().await {
        match response {
            Response::Chunk(chunk) => {
                if let Some(text) = chunk.choices.first().and_then(|c| c.delta.content.as_deref()) {
                    print!("{text}");
                    answer.push_str(text);
                }
            }
            Response::Done(done) => {
                println!();
                dbg!(done.usage.completion_tokens, done.usage.avg_compl_tok_per_sec);
            }
            Response::ModelError(message) => anyhow::bail!(message),
        }
    }
    Ok(answer)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "microsoft/Phi-3.5-vision-instruct".into());
    let url = args.next().unwrap_or_else(|| {
        "https://upload.wikimedia.org/wikipedia/commons/e/e7/Everest_North_Face_toward_Base_Camp_Tibet_Luca_Galuzzi_2006.jpg".into()
    });
    run(&model, &url, None).await?;
    Ok(())
}
