//! Extractors that turn the parts of an HTTP request into what plugin calls take, with the
//! HTTP-level checks of SPEC.md section 2: body size, content type, query decoding.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The caller's bearer token, empty when the request carries none; the plugin refuses empty
/// tokens, so every refusal has one source.
pub struct Bearer(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
            })
            .unwrap_or_default();
        Ok(Bearer(token))
    }
}

/// Path parameters; a malformed one is a 400 with the JSON error body.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParams(value)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "invalid path: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// The query string as decoded pairs, in order, repeats kept.
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        Ok(QueryPairs(
            form_urlencoded::parse(query.as_bytes()).into_owned().collect(),
        ))
    }
}

/// A JSON request body: `Content-Type` must name JSON (else 415) and the body fit the limit
/// (else 413). The plugin parses it.
pub struct JsonBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "request body must be sent with Content-Type: application/json",
            ));
        }
        Ok(JsonBody(read_body(request).await?))
    }
}

/// An optional JSON body: an empty body passes whatever its `Content-Type`; a non-empty one
/// must be JSON.
pub struct OptionalJsonBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for OptionalJsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        let json = is_json(request.headers());
        let body = read_body(request).await?;
        if !json && !body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "request body must be sent with Content-Type: application/json",
            ));
        }
        Ok(OptionalJsonBody(body))
    }
}

/// A WebAssembly component body from a caller with a bearer token: none is `401` before the
/// body is looked at; then `Content-Type: application/wasm` (or `application/octet-stream`,
/// as `PUT /admin/plugin` takes; else 415), at most [`crate::transform::MAX_COMPONENT_BYTES`]
/// (else 413).
pub struct WasmBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for WasmBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let limit = crate::transform::MAX_COMPONENT_BYTES;
        let (mut parts, body) = request.into_parts();
        let Bearer(token) = Bearer::from_request_parts(&mut parts, state).await?;
        let refusal = if token.is_empty() {
            Some(ApiError::new(StatusCode::UNAUTHORIZED, "missing or empty bearer token"))
        } else if !is_binary(&parts.headers) {
            Some(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a transform must be sent with Content-Type: application/wasm",
            ))
        } else {
            None
        };
        let request = Request::from_parts(parts, body);
        if let Some(refusal) = refusal {
            discard_body_within(request, limit).await;
            return Err(refusal);
        }
        Ok(WasmBody(read_body_within(request, limit).await?))
    }
}

fn is_binary(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_ascii_lowercase())
        .is_some_and(|value| value.starts_with("application/wasm") || value.starts_with("application/octet-stream"))
}

/// Reads and drops a refused request's body when it is within `limit`, so that the client,
/// which is still sending it, reads the refusal instead of a reset: hyper closes a connection
/// whose request body was left unread, and a client blocked writing a large body then sees
/// the close, not the answer. A body declared over the limit is not read at all.
async fn discard_body_within(request: Request, limit: usize) {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_none_or(|length| length <= limit as u64) {
        // The request timeout bounds a client that stops sending.
        let _ = axum::body::to_bytes(request.into_body(), limit).await;
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.to_ascii_lowercase().contains("application/json"))
}

/// Reads a whole body within [`MAX_BODY_BYTES`].
pub async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    read_body_within(request, MAX_BODY_BYTES).await
}

/// Reads a whole body of at most `limit` bytes (else 413).
pub async fn read_body_within(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {} MiB", limit >> 20),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(request.into_body(), limit).await.map_err(|e| {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
        let (mut limited, mut stalled) = (false, false);
        while let Some(error) = cause {
            limited |= error.is::<http_body_util::LengthLimitError>();
            stalled |= error.is::<tower_http::timeout::TimeoutError>();
            cause = error.source();
        }
        if limited {
            too_large()
        } else if stalled {
            ApiError::request_timeout()
        } else {
            ApiError::bad_request(format!("request body could not be read: {e}"))
        }
    })
}
