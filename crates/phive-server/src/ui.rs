//! The chat page: hand-written HTML, CSS and JavaScript modules under `crates/phive-server/ui/`,
//! compiled into the binary so the page works on an offline machine and needs no build step.
//!
//! Every file goes out with a strict Content-Security-Policy: scripts, styles and connections
//! only from this server, pictures and recordings only as `data:`/`blob:` URLs the page made
//! itself. The page renders model output with DOM text nodes, and the policy is the second
//! wall should that ever slip.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::HttpError;

/// What the page may load and where it may connect: nothing outside this server.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob:; media-src 'self' data: blob:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's files: name under `/ui/`, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../ui/index.html")),
    ("style.css", "text/css; charset=utf-8", include_str!("../ui/style.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../ui/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../ui/api.js")),
    ("markdown.js", "text/javascript; charset=utf-8", include_str!("../ui/markdown.js")),
    ("media.js", "text/javascript; charset=utf-8", include_str!("../ui/media.js")),
    ("icon.svg", "image/svg+xml", include_str!("../ui/icon.svg")),
];

/// Routes of the page: `/` and `/ui` serve it, `/ui/NAME` its files.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{name}", get(asset))
}

async fn index() -> Response {
    serve("index.html")
}

async fn asset(Path(name): Path<String>) -> Response {
    serve(&name)
}

fn serve(name: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return HttpError(
            phive::api::ApiError::new(
                phive::api::ErrorKind::NotFound,
                format!("the page has no file {name:?}"),
            )
            .with_code("unknown_url"),
        )
        .into_response();
    };
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        // The files change with the binary; revalidating is cheap on a local server.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (StatusCode::OK, headers, *body).into_response()
}
