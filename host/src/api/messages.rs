//! The device-facing publish endpoint: `POST /messages[/{subtopic}]` as a thing.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::request::read_body;
use super::routes::Routes;
use crate::identity::{IdentityError, KeyKind};
use crate::ingress::{self, Incoming};

/// The header carrying a publisher's message id.
pub const MESSAGE_ID: &str = "x-message-id";

/// The routes of this area.
pub fn routes() -> Routes {
    Routes::new()
        .post("/messages", publish)
        .post("/messages/{*subtopic}", publish)
}

/// The device key of `Authorization: Thing <key>` or `Authorization: External <key>`.
fn thing_key(headers: &HeaderMap) -> Option<(String, KeyKind)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    let key = key.trim();
    let kind = if scheme.eq_ignore_ascii_case("thing") {
        KeyKind::Internal
    } else if scheme.eq_ignore_ascii_case("external") {
        KeyKind::External
    } else {
        return None;
    };
    (!key.is_empty()).then(|| (key.to_owned(), kind))
}

async fn publish(State(app): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let subtopic = request
        .uri()
        .path()
        .split_once("/messages")
        .map(|(_, rest)| rest.trim_start_matches('/').to_owned());
    let (key, kind) = thing_key(&headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing thing key: use Authorization: Thing <key>",
        )
    })?;
    let thing_id = app.identity.identify_thing(&key, kind).await.map_err(|e| match e {
        IdentityError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
        _ => ApiError::new(StatusCode::UNAUTHORIZED, "unknown thing key"),
    })?;
    let id = match headers.get(MESSAGE_ID) {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::bad_request("X-Message-Id must be a UUID"))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let payload = read_body(request).await?;
    let incoming = Incoming {
        id,
        thing_id,
        payload: payload.to_vec(),
        content_type,
        subtopic: subtopic.unwrap_or_default(),
    };
    let accepted = ingress::accept(&app.runtime, &app.dispatcher, incoming).await?;
    let mut response = StatusCode::ACCEPTED.into_response();
    if let Ok(value) = HeaderValue::from_str(&accepted.message_id) {
        response.headers_mut().insert(MESSAGE_ID, value);
    }
    Ok(response)
}
