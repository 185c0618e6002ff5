//! API keys: a tower layer that lets a request through only with `Authorization: Bearer KEY`
//! for one of the configured keys.
//!
//! Keys are compared as SHA-256 digests with a constant-time equality, against every key
//! without stopping at a match, so neither a key's length nor how much of it a guess got right
//! shows in the response time. The layer is applied per route group (`Router::route_layer`), so
//! `/health` stays open and other routes (metrics, a web page) opt in.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::future::{Either, Ready};
use phive::api::{ApiError, ErrorKind};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::error::HttpError;

/// The accepted API keys; an empty set lets every request through.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Arc<Vec<[u8; 32]>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

impl ApiKeys {
    /// The set of `keys` (surrounding whitespace trimmed, empty ones ignored).
    pub fn new<S: AsRef<str>>(keys: impl IntoIterator<Item = S>) -> Self {
        let digests = keys
            .into_iter()
            .map(|k| k.as_ref().trim().to_string())
            .filter(|k| !k.is_empty())
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect();
        ApiKeys { digests: Arc::new(digests) }
    }

    /// Whether any key is configured (otherwise authentication is off).
    pub fn is_enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `key` is one of the keys, in time independent of which one and of how it differs.
    pub fn accepts(&self, key: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        for known in self.digests.iter() {
            found |= known[..].ct_eq(&digest[..]);
        }
        found.into()
    }

    /// The layer that enforces these keys.
    pub fn layer(&self) -> RequireApiKey {
        RequireApiKey { keys: self.clone() }
    }

    /// Checks a request's `Authorization` header; the 401 names what was wrong.
    fn check(&self, request: &Request) -> Result<(), ApiError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let unauthorized = |message: &str| {
            ApiError::new(ErrorKind::Unauthorized, message.to_string()).with_code("invalid_api_key")
        };
        let Some(value) = request.headers().get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "no API key provided: send it in the Authorization header as 'Bearer YOUR_KEY'",
            ));
        };
        let token = value.to_str().ok().and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        match token {
            Some(token) if self.accepts(token) => Ok(()),
            Some(_) => Err(unauthorized("incorrect API key provided")),
            None => Err(unauthorized("the Authorization header must be 'Bearer YOUR_KEY'")),
        }
    }
}

/// A [`Layer`] answering 401 (OpenAI's error body, `WWW-Authenticate: Bearer`) to requests
/// without a valid key.
#[derive(Clone, Debug)]
pub struct RequireApiKey {
    keys: ApiKeys,
}

impl<S> Layer<S> for RequireApiKey {
    type Service = RequireApiKeyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireApiKeyService { keys: self.keys.clone(), inner }
    }
}

/// The service [`RequireApiKey`] wraps around a route.
#[derive(Clone, Debug)]
pub struct RequireApiKeyService<S> {
    keys: ApiKeys,
    inner: S,
}

impl<S> Service<Request> for RequireApiKeyService<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.keys.check(&request) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(error) => {
                let mut response = HttpError(error).into_response();
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Either::Left(futures::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_exactly_the_configured_keys() {
        let keys = ApiKeys::new(["alpha", " beta\n", ""]);
        assert!(keys.is_enabled());
        assert!(keys.accepts("alpha") && keys.accepts("beta"));
        assert!(
            !keys.accepts("alph") && !keys.accepts("alphaa") && !keys.accepts("") && !keys.accepts("BETA")
        );
        assert!(!ApiKeys::new(Vec::<String>::new()).is_enabled());
    }
}
