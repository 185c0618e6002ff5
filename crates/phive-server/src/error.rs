//! Turning failures into OpenAI error responses, and request bodies into typed requests with
//! errors that name the offending field.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use phive::api::{ApiError, ErrorKind};
use serde::de::DeserializeOwned;

/// An [`ApiError`] as an HTTP response.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl From<phive::Error> for HttpError {
    fn from(e: phive::Error) -> Self {
        HttpError(ApiError::from(e))
    }
}

impl HttpError {
    /// The response for request `request_id`, logging our own failures with the id.
    pub fn respond(self, request_id: &str) -> Response {
        log_failure(request_id, &self.0);
        self.response()
    }

    fn response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = json_response(status, &self.0.body());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        if self.0.kind == ErrorKind::Internal {
            tracing::error!(message = %self.0.message, "internal error");
        }
        self.response()
    }
}

/// Logs a failure that is ours (a 5xx other than a full queue) with the request's id.
pub fn log_failure(request_id: &str, error: &ApiError) {
    match error.kind {
        ErrorKind::Internal | ErrorKind::Unavailable => {
            tracing::error!(request_id, message = %error.message, "request failed")
        }
        _ => {}
    }
}

/// The error of a request whose events stopped before every choice finished: the engine loop
/// died (503, as for every later request) or, if it still runs, a bug (500). A dying loop drops
/// its requests while it unwinds, just before it reports itself dead, so this waits briefly
/// for that report.
pub async fn ended_early(engine: &phive::engine::Engine) -> ApiError {
    for _ in 0..100 {
        if !engine.is_alive() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if engine.is_alive() {
        ApiError::new(ErrorKind::Internal, "the engine ended the request before every choice finished")
            .with_code("internal_error")
    } else {
        ApiError::from(phive::Error::EngineStopped(
            "the engine loop stopped while serving this request".into(),
        ))
    }
}

/// A JSON response with `status`.
pub fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes)
            .into_response(),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot serialize response: {e}")).into_response()
        }
    }
}

/// Parses a JSON request body: checks the content type and the JSON itself, naming the field
/// of a type error.
pub fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence != "application/json" && !essence.ends_with("+json") {
        let shown = if content_type.is_empty() { "none".to_string() } else { format!("{content_type:?}") };
        return Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            format!("expected a JSON body with Content-Type: application/json, got content type {shown}"),
        )
        .with_code("unsupported_media_type"));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(None, "the request body is empty; send a JSON object")
            .with_code("invalid_json"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_error(path, inner)
    })?;
    de.end().map_err(|e| json_error(".".into(), e))?;
    Ok(value)
}

fn json_error(path: String, error: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match error.classify() {
        Category::Data => {
            let message = error.to_string();
            // "missing field `messages` at line 1 column 2": name the field itself.
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
                .map(|field| if path == "." { field.to_string() } else { format!("{path}.{field}") });
            let param = missing.or_else(|| (path != ".").then(|| path.clone()));
            let message = match &param {
                Some(p) if !message.starts_with("missing field") => {
                    format!("invalid value for {p}: {message}")
                }
                _ => message,
            };
            ApiError { kind: ErrorKind::InvalidRequest, message, param, code: None }
        }
        _ => ApiError::invalid(None, format!("the request body is not valid JSON: {error}"))
            .with_code("invalid_json"),
    }
}
