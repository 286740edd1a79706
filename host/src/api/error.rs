//! The one error type of the REST layer: every failure becomes a status code and the JSON body
//! `{"error": "<one sentence>"}`, decided here and nowhere else.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::ingress::IntakeError;
use crate::ingress::device_key::DeviceKeyError;
use crate::runtime::bindings::mainflux::webhooks::types::Error as PluginError;
use crate::runtime::{CallError, RolloutError};

/// An HTTP error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
    location: &'static std::panic::Location<'static>,
}

impl ApiError {
    /// An answer with this status and message.
    #[track_caller]
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
            location: std::panic::Location::caller(),
        }
    }

    /// 400: the request is malformed.
    #[track_caller]
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 408: the client stopped sending its request body.
    #[track_caller]
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body stopped arriving before it was complete",
        )
    }

    /// The status of the answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<CallError> for ApiError {
    #[track_caller]
    fn from(error: CallError) -> Self {
        let (status, message) = match error {
            CallError::Refused(refusal) => match refusal {
                PluginError::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, m),
                PluginError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
                PluginError::NotFound(m) => (StatusCode::NOT_FOUND, m),
                PluginError::Conflict(m) => (StatusCode::CONFLICT, m),
                PluginError::Invalid(m) => (StatusCode::BAD_REQUEST, m),
                PluginError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
                PluginError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
            },
            CallError::Deadline | CallError::Instantiate(_) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
            CallError::Trap { ref detail, .. } => {
                tracing::error!(detail, "the plugin trapped");
                (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
            }
        };
        ApiError::new(status, message)
    }
}

impl From<IntakeError> for ApiError {
    #[track_caller]
    fn from(error: IntakeError) -> Self {
        match error {
            IntakeError::Call(error) => error.into(),
            IntakeError::Quota(refused) => {
                let mut answer = ApiError::new(StatusCode::TOO_MANY_REQUESTS, refused.to_string());
                answer.retry_after = Some(refused.retry_after.as_secs());
                answer
            }
        }
    }
}

impl From<RolloutError> for ApiError {
    #[track_caller]
    fn from(error: RolloutError) -> Self {
        let status = match error {
            RolloutError::Load(_) => StatusCode::BAD_REQUEST,
            RolloutError::Incompatible(_) | RolloutError::NoEarlierVersion | RolloutError::Conflict => {
                StatusCode::CONFLICT
            }
            RolloutError::NoCandidate => StatusCode::NOT_FOUND,
            RolloutError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<DeviceKeyError> for ApiError {
    #[track_caller]
    fn from(error: DeviceKeyError) -> Self {
        let status = match error {
            DeviceKeyError::Missing | DeviceKeyError::Unknown => StatusCode::UNAUTHORIZED,
            DeviceKeyError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), error = %self.message, at = %self.location, "request failed");
        }
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut response = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a stalled body will not be read: the connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        }
        response
    }
}
