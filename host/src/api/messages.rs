//! The device-facing publish endpoint: `POST /messages[/{subtopic}]` as a thing.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::request::read_body;
use super::routes::Routes;
use crate::ingress::{Incoming, device_key};

/// The header carrying a publisher's message id.
pub const MESSAGE_ID: &str = "x-message-id";

/// The routes of this area.
pub fn routes() -> Routes {
    Routes::new()
        .post("/messages", publish)
        .post("/messages/{*subtopic}", publish)
}

async fn publish(State(app): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let subtopic = request
        .uri()
        .path()
        .split_once("/messages")
        .map(|(_, rest)| rest.trim_start_matches('/').to_owned());
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let thing_id = device_key::identify(app.identity.as_ref(), authorization).await?;
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
    let accepted = app.intake.accept(incoming).await?;
    let mut response = StatusCode::ACCEPTED.into_response();
    if let Ok(value) = HeaderValue::from_str(&accepted.message_id) {
        response.headers_mut().insert(MESSAGE_ID, value);
    }
    Ok(response)
}
