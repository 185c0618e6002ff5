//! `POST /tokenize` and `POST /detokenize`, as vLLM offers them. A chat is tokenized by the
//! same path that prepares a generation's prompt, so its count equals the `prompt_tokens` of
//! the same chat request; each media item is a run of the placeholder id that prompt uses (0
//! for Phi-3.5-vision; 200010 for images and 200011 for audio on Phi-4-multimodal).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use phive::api::{ApiError, ChatCompletionRequest, ErrorResponse, Message};
use serde::{Deserialize, Serialize};

use crate::body::RequestBody;
use crate::error::{json_response, parse_json, HttpError};
use crate::handlers::{check_model, join_error, prepare_chat};
use crate::AppState;

/// `POST /tokenize`: either `prompt` (raw text) or `messages` (a chat, media included).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TokenizeRequest {
    /// The served model id, the model path/id, or `default` (also when absent).
    #[serde(default)]
    model: Option<String>,
    /// Raw text, tokenized without the chat template.
    #[serde(default)]
    prompt: Option<String>,
    /// With `prompt`: add the tokenizer's special tokens (BOS), as `/v1/completions` does.
    /// Default true.
    #[serde(default)]
    add_special_tokens: Option<bool>,
    /// A chat, as in `/v1/chat/completions`.
    #[serde(default)]
    messages: Option<Vec<Message>>,
    /// With `messages`: end with the assistant prompt, as a generation does. Default true.
    #[serde(default)]
    add_generation_prompt: Option<bool>,
}

/// The `/tokenize` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenizeResponse {
    /// Token ids; media positions hold the model's placeholder id.
    tokens: Vec<u32>,
    /// `tokens.len()`.
    count: usize,
    /// The context length.
    max_model_len: usize,
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DetokenizeRequest {
    /// The served model id, the model path/id, or `default` (also when absent).
    #[serde(default)]
    model: Option<String>,
    /// Token ids, each within the vocabulary.
    tokens: Vec<u32>,
}

/// The `/detokenize` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DetokenizeResponse {
    /// The decoded text, special tokens included.
    prompt: String,
}

/// `POST /tokenize`.
#[utoipa::path(post, path = "/tokenize", tag = "vllm",
    request_body = TokenizeRequest,
    responses(
        (status = 200, description = "The prompt's token ids", body = TokenizeResponse),
        (status = "4XX", description = "An invalid request", body = ErrorResponse),
        (status = "5XX", description = "A bug", body = ErrorResponse),
    ))]
pub async fn tokenize(State(state): State<Arc<AppState>>, headers: HeaderMap, body: RequestBody) -> Response {
    run_tokenize(state, headers, body).await.unwrap_or_else(|e| e.respond("tokenize"))
}

async fn run_tokenize(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Response, HttpError> {
    let request: TokenizeRequest = parse_json(&headers, &body.0)?;
    check_model(&state, request.model.as_deref())?;
    let tokens = match (request.prompt, request.messages) {
        (Some(prompt), None) => {
            if request.add_generation_prompt.is_some() {
                return Err(only_with("add_generation_prompt", "messages"));
            }
            let special = request.add_special_tokens.unwrap_or(true);
            let engine = Arc::clone(state.engine());
            let encode =
                move || engine.pipeline().tokenizer().encode(prompt, special).map(|e| e.get_ids().to_vec());
            tokio::task::spawn_blocking(encode)
                .await
                .map_err(join_error)?
                .map_err(|e| phive::Error::Tokenizer(e.to_string()))?
        }
        (None, Some(messages)) => {
            if request.add_special_tokens.is_some() {
                return Err(only_with("add_special_tokens", "prompt"));
            }
            let chat = ChatCompletionRequest { messages, ..Default::default() };
            let input = chat.into_chat(&state.config().limits)?;
            let add_generation_prompt = request.add_generation_prompt.unwrap_or(true);
            prepare_chat(&state, input, add_generation_prompt).await?.0.tokens.ids
        }
        _ => {
            return Err(HttpError(ApiError::invalid(None, "send either prompt (text) or messages (a chat)")))
        }
    };
    let max_model_len = state.engine().pipeline().context_length();
    Ok(json_response(StatusCode::OK, &TokenizeResponse { count: tokens.len(), tokens, max_model_len }))
}

fn only_with(field: &str, other: &str) -> HttpError {
    HttpError(ApiError::invalid(Some(field.to_string()), format!("{field} only applies with {other}")))
}

/// `POST /detokenize`.
#[utoipa::path(post, path = "/detokenize", tag = "vllm",
    request_body = DetokenizeRequest,
    responses(
        (status = 200, description = "The decoded text", body = DetokenizeResponse),
        (status = "4XX", description = "An invalid request (an id outside the vocabulary)", body = ErrorResponse),
        (status = "5XX", description = "A bug", body = ErrorResponse),
    ))]
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    run_detokenize(state, headers, body).await.unwrap_or_else(|e| e.respond("detokenize"))
}

async fn run_detokenize(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: RequestBody,
) -> Result<Response, HttpError> {
    let request: DetokenizeRequest = parse_json(&headers, &body.0)?;
    check_model(&state, request.model.as_deref())?;
    let engine = Arc::clone(state.engine());
    let vocab = engine.pipeline().tokenizer().get_vocab_size(true);
    if let Some((i, id)) = request.tokens.iter().enumerate().find(|(_, id)| **id as usize >= vocab) {
        return Err(HttpError(ApiError::invalid(
            Some(format!("tokens[{i}]")),
            format!("token id {id} is outside the vocabulary (0..{vocab})"),
        )));
    }
    let tokens = request.tokens;
    let decode = move || engine.pipeline().tokenizer().decode(&tokens, false);
    let prompt = tokio::task::spawn_blocking(decode)
        .await
        .map_err(join_error)?
        .map_err(|e| phive::Error::Tokenizer(e.to_string()))?;
    Ok(json_response(StatusCode::OK, &DetokenizeResponse { prompt }))
}
