//! `/openapi.json`: the API described from the Rust types the handlers parse and return
//! (utoipa derives), so the description cannot drift from the code.

use axum::body::Bytes;
use axum::http::{header, HeaderName, HeaderValue};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::OpenApi;

use crate::handlers;

#[derive(OpenApi)]
#[openapi(
    info(title = "phive", description = "OpenAI-compatible API for the Phi vision-language models"),
    paths(
        handlers::chat_completions,
        handlers::completions,
        crate::responses::responses,
        crate::tokenize::tokenize,
        crate::tokenize::detokenize,
        handlers::models,
        handlers::health,
        handlers::metrics
    )
)]
struct ApiDoc;

/// The OpenAPI document of a server whose `/v1/*`, `/tokenize` and `/detokenize` routes (and `/metrics`, unless
/// `public_metrics`) require a bearer key when `keys_required`.
pub fn document(keys_required: bool, public_metrics: bool) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    if keys_required {
        let scheme = SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        doc.components.get_or_insert_with(Default::default).add_security_scheme("api_key", scheme);
        let requirement = SecurityRequirement::new("api_key", Vec::<String>::new());
        for (path, item) in doc.paths.paths.iter_mut() {
            let keyed = path.starts_with("/v1/") || path == "/tokenize" || path == "/detokenize";
            if !(keyed || (path == "/metrics" && !public_metrics)) {
                continue;
            }
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                operation.security = Some(vec![requirement.clone()]);
            }
        }
    }
    doc
}

/// [`document`] as a ready `application/json` response (built once per router).
pub fn json(keys_required: bool, public_metrics: bool) -> ([(HeaderName, HeaderValue); 1], Bytes) {
    let body = serde_json::to_vec(&document(keys_required, public_metrics)).unwrap_or_default();
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], Bytes::from(body))
}
