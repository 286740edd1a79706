//! The ports: the capabilities the plugin's logic is written against, as small traits, and the
//! values they carry. The component implements them over its imports (`component.rs`); unit
//! tests over in-memory doubles (`testing.rs`), so the policy runs unchanged in both.

use crate::bindings::mainflux::webhooks::store::{Condition, Entry, Op, StoreError};
use crate::{Error, Role};

/// An ordered key-value store with guarded atomic commits (the `store` capability).
pub trait Kv {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Reads several keys; one slot per key, in order.
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;
    /// Lists entries under a prefix in key order, after a cursor.
    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: u32, reverse: bool) -> Result<Vec<Entry>, StoreError>;
    /// Lists each prefix's first `limit` entries in ascending key order, all in one call.
    fn scan_prefixes(&self, prefixes: &[Vec<u8>], limit: u32) -> Result<Vec<Vec<Entry>>, StoreError> {
        prefixes
            .iter()
            .map(|prefix| self.scan(prefix, None, limit, false))
            .collect()
    }
    /// Applies the ops atomically if every guard holds.
    fn commit(&self, guards: &[Condition], ops: &[Op]) -> Result<(), StoreError>;
}

/// Answers the identity questions the plugin asks before acting (the `identity` capability).
pub trait Access {
    /// Checks that the token is known; returns the user's id.
    fn authenticate(&self, token: &str) -> Result<String, Error>;
    /// Checks the token's role in the thing's group; returns the group's id.
    fn authorize_thing(&self, token: &str, thing_id: &str, role: Role) -> Result<String, Error>;
    /// Checks the token's role in the group.
    fn authorize_group(&self, token: &str, group_id: &str, role: Role) -> Result<(), Error>;
}

/// Refuses an empty token before asking the identity capability anything.
pub fn require_token(token: &str) -> Result<(), Error> {
    if token.is_empty() {
        Err(Error::Unauthenticated("missing or empty bearer token".into()))
    } else {
        Ok(())
    }
}

/// Sends a batch of requests concurrently (outgoing HTTP).
pub trait Sender {
    /// Sends every request, all in flight together; answers one result per request, in order.
    fn send_all(&self, requests: &[Request]) -> Vec<AttemptResult>;
}

/// Runs tenants' transform components (the `transforms` capability): the host checks,
/// compiles and runs them in their own sandbox; the plugin decides when and what an answer means.
pub trait Transformer {
    /// Checks and compiles a component and keeps it ready; answers its SHA-256 in hex.
    fn load(&self, component: &[u8]) -> Result<String, TransformError>;
    /// Runs the transform of this SHA-256 on `message` with the webhook's metadata as JSON text.
    fn apply(&self, sha256: &str, message: &TransformMessage, metadata: &str) -> Result<Action, TransformError>;
    /// Most webhooks of one group that may have a transform; 0 for no limit.
    fn quota(&self) -> u32;
}

#[cfg(not(feature = "previous-world"))]
pub use crate::bindings::mainflux::transform::transformation::{Action, Changes, Message as TransformMessage};
#[cfg(not(feature = "previous-world"))]
pub use crate::bindings::mainflux::webhooks::transforms::TransformError;

#[cfg(feature = "previous-world")]
pub use before_transforms::{Action, Changes, TransformError, TransformMessage};

/// The world before the `migration` exports imports no transforms, so its bindings lack their
/// types: the same shapes, written out, let the logic compile unchanged for that build.
#[cfg(feature = "previous-world")]
mod before_transforms {
    /// The message a transform receives.
    #[derive(Debug, Clone)]
    pub struct TransformMessage {
        /// The exact payload bytes.
        pub payload: Vec<u8>,
        /// The content type the device published with, if any.
        pub content_type: Option<String>,
        /// The subtopic; empty for none.
        pub subtopic: String,
        /// The thing that published it.
        pub thing_id: String,
        /// The message's id.
        pub message_id: String,
    }

    /// What to change in the request sent for a message.
    #[derive(Debug, Clone)]
    pub struct Changes {
        /// The body to send; none sends the payload.
        pub body: Option<Vec<u8>>,
        /// The `Content-Type` to send; none keeps the usual one.
        pub content_type: Option<String>,
        /// Headers added to the webhook's own.
        pub headers: Vec<(String, String)>,
        /// Appended to the URL's path; empty for none.
        pub path: String,
    }

    /// A transform's answer.
    #[derive(Debug, Clone)]
    pub enum Action {
        /// Do not send the message, for this reason.
        Skip(String),
        /// Send it, changed as told.
        Send(Changes),
    }

    /// Why a transform gave no answer.
    #[derive(Debug, Clone)]
    pub enum TransformError {
        /// The host does not hold the component now.
        Unknown,
        /// The component is not acceptable, for this reason.
        Invalid(String),
        /// The call failed, for this reason.
        Failed(String),
    }
}

/// The transformer of a build or a setting without transforms: nothing loads or runs.
pub struct NoTransforms;

/// Why [`NoTransforms`] refuses.
const NO_TRANSFORMS: &str = "this plugin build runs no transforms";

impl Transformer for NoTransforms {
    fn load(&self, _: &[u8]) -> Result<String, TransformError> {
        Err(TransformError::Invalid(NO_TRANSFORMS.into()))
    }

    fn apply(&self, _: &str, _: &TransformMessage, _: &str) -> Result<Action, TransformError> {
        Err(TransformError::Failed(NO_TRANSFORMS.into()))
    }

    fn quota(&self) -> u32 {
        0
    }
}

/// The wall clock the plugin reads for "now".
pub trait Clock {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// One delivery attempt's HTTP request: always a POST.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Absolute http or https URL.
    pub url: String,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The exact payload.
    pub body: Vec<u8>,
}

/// The most of an answer body kept in the delivery log.
pub const MAX_LOGGED_BODY: usize = 4096;

/// A receiver's answer, as far as the policy and the log need it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The first [`MAX_LOGGED_BODY`] bytes of the body.
    pub body: Vec<u8>,
}

impl Answer {
    /// An answer with this status and nothing else.
    pub fn status(status: u16) -> Self {
        Answer {
            status,
            ..Answer::default()
        }
    }
}

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptResult {
    /// The receiver answered.
    Answered(Answer),
    /// The host refused the destination (SSRF guard), for this reason; never retried.
    Refused(String),
    /// The request failed before an answer in a way that may pass: connection, timeout,
    /// protocol; retried on the schedule.
    Failed(String),
    /// The request failed in a way a retry cannot change (it cannot be built, the host found
    /// it malformed, its webhook is gone); failed at once.
    Permanent(String),
}

/// The reason recorded for a refused destination when the host gives none, and the start of
/// every reason it gives (`destination refused: ...`).
pub const DESTINATION_REFUSED: &str = "destination refused";
