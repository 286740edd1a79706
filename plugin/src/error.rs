//! Constructors of the typed errors the plugin answers with; each case becomes one HTTP status
//! in the host.

use crate::Error;

/// The request is malformed or breaks a validation rule (400).
pub fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid(message.into())
}

/// The target does not exist (404).
pub fn not_found(message: impl Into<String>) -> Error {
    Error::NotFound(message.into())
}

/// The request contradicts stored state (409).
pub fn conflict(message: impl Into<String>) -> Error {
    Error::Conflict(message.into())
}

/// The request may succeed when tried again in a moment (503).
pub fn unavailable(message: impl Into<String>) -> Error {
    Error::Unavailable(message.into())
}

/// Something failed that the caller cannot fix (500).
pub fn internal(message: impl Into<String>) -> Error {
    Error::Internal(message.into())
}

/// The result type of every plugin operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
