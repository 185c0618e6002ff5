//! Ask Phi-3.5-vision about a local image (the documented example; run with
//! `cargo run --release -p phive --example phi3v_local_image -- [MODEL] [IMAGE]`).

use phive::{RequestBuilder, TextMessageRole, VisionMessages, VisionModelBuilder};

/// Loads `model_id`, asks about the image at `path`, and returns the answer.
pub async fn run(model_id: &str, path: &str, max_tokens: Option<usize>) -> anyhow::Result<String> {
    let model = VisionModelBuilder::new(model_id).with_logging().build().await?;
    let image = image::open(path)?;
    let messages = VisionMessages::new().add_image_message(
        TextMessageRole::User,
        "What is in this picture?",
        image,
        &model,
    )?;
    let mut request = RequestBuilder::from(messages);
    if let Some(max_tokens) = max_tokens {
        request = request.set_sampler_max_len(max_tokens);
    }
    let response = model.send_chat_request(request).await?;
    let answer = response.choices[0].message.content.as_ref().unwrap().clone();
    println!("{answer}");
    dbg!(response.usage.avg_prompt_tok_per_sec, response.usage.avg_compl_tok_per_sec);
    Ok(answer)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "microsoft/Phi-3.5-vision-instruct".into());
    let image = args.next().unwrap_or_else(|| "tests/fixtures/images/wide_1000x600.png".into());
    run(&model, &image, None).await?;
    Ok(())
}
