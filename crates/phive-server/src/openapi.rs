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

#[cfg(test)]
mod tests {
    use phive::api::{ChatCompletionRequest, CompletionRequest, RequestLimits};
    use serde_json::{json, Value};

    fn chat_accepts(body: Value) -> bool {
        serde_json::from_value::<ChatCompletionRequest>(body)
            .is_ok_and(|r| r.into_chat(&RequestLimits::default()).is_ok())
    }

    fn text_accepts(body: Value) -> bool {
        serde_json::from_value::<CompletionRequest>(body).is_ok_and(|r| r.into_text().is_ok())
    }

    /// Checks the documented bounds of `schema`'s fields against `accepts`, varying one field of
    /// `base` at a time; returns the fields that have bounds.
    fn check_ranges(schema: &str, base: &Value, accepts: fn(Value) -> bool) -> Vec<String> {
        let doc = serde_json::to_value(super::document(false, false)).unwrap();
        let properties = doc["components"]["schemas"][schema]["properties"].as_object().unwrap();
        let mut bounded = Vec::new();
        // `best_of` must equal `n`: a rule between fields that no range states. The crop limits
        // are checked against the loaded model's family when the prompt is prepared (see
        // `tests/crop_limits.rs`), not by the request translation tried here.
        let skipped = ["best_of", "num_crops", "dynamic_hd"];
        for (field, property) in properties.iter().filter(|(field, _)| !skipped.contains(&field.as_str())) {
            let integer = property.to_string().contains("integer");
            let step = if integer { 1.0 } else { 0.25 };
            let with = |value: f64| {
                let mut body = base.clone();
                body[field] = if integer { json!(value as i64) } else { json!(value) };
                accepts(body)
            };
            let bound = |key: &str| property[key].as_f64();
            let check = |inside: f64, outside: f64| {
                assert!(with(inside), "{schema}.{field} = {inside} is documented as valid");
                assert!(!with(outside), "{schema}.{field} = {outside} is documented as invalid");
            };
            if let Some(min) = bound("minimum") {
                check(min, min - step);
            }
            if let Some(min) = bound("exclusiveMinimum") {
                check(min + step, min);
            }
            if let Some(max) = bound("maximum") {
                check(max, max + step);
            }
            if ["minimum", "exclusiveMinimum", "maximum"].iter().any(|k| bound(k).is_some()) {
                bounded.push(field.clone());
            }
        }
        bounded
    }

    /// Every bound `/openapi.json` documents on a request field is the bound validation
    /// enforces: the value at (or, when exclusive, just inside) the bound is accepted and the
    /// nearest value outside is refused. Schemathesis generates requests from these bounds.
    #[test]
    fn documented_ranges_are_the_validated_ranges() {
        let chat = json!({"messages": [{"role": "user", "content": "hi"}], "logprobs": true});
        let text = json!({"prompt": "hi"});
        for (schema, bounded) in [
            ("ChatCompletionRequest", check_ranges("ChatCompletionRequest", &chat, chat_accepts)),
            ("CompletionRequest", check_ranges("CompletionRequest", &text, text_accepts)),
        ] {
            for field in ["temperature", "top_p", "top_k", "min_p", "frequency_penalty", "n", "max_tokens"] {
                assert!(
                    bounded.iter().any(|b| b == field),
                    "{schema}.{field} has no documented range: {bounded:?}"
                );
            }
        }
    }
}
