//! The delivery record and the policy that decides, from an attempt's result, whether a
//! delivery is done, will be retried, or has failed.

use serde::{Deserialize, Serialize};

use crate::error::{Result, internal};
use crate::webhook::FORMAT_VERSION;

/// Delays before each retry, in milliseconds; after the last one a delivery fails.
pub const RETRY_DELAYS_MS: [u64; 5] = [1_000, 5_000, 30_000, 120_000, 600_000];

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// More attempts will follow.
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// No more attempts will be made.
    Failed,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it started, ms since the Unix epoch.
    pub at_ms: u64,
    /// The receiver's status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
    /// The first 4 KiB of the receiver's answer body, if it answered with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
}

/// A message on its way to one webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Format version of the stored record.
    pub v: u32,
    /// The delivery id, sent as `webhook-id` on every attempt.
    pub id: String,
    /// The webhook it goes to.
    pub webhook_id: String,
    /// The thing that published the message.
    pub thing_id: String,
    /// The message's id.
    pub message_id: String,
    /// The content type the thing published with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The subtopic the message was published to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subtopic: String,
    /// Where it stands.
    pub status: Status,
    /// When it was recorded, ms since the Unix epoch.
    pub created_ms: u64,
    /// When the next attempt is due, while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<u64>,
    /// Every attempt so far, oldest first.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

impl Delivery {
    /// Reads a stored record of this or an earlier format version.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let record: Delivery = serde_json::from_slice(bytes)
            .map_err(|e| internal(format!("stored delivery record is unreadable: {e}")))?;
        if record.v > FORMAT_VERSION {
            return Err(internal(format!(
                "stored delivery record has format version {}",
                record.v
            )));
        }
        Ok(record)
    }

    /// The stored form, in the current format version.
    pub fn encode(&self) -> Vec<u8> {
        let mut record = self.clone();
        record.v = FORMAT_VERSION;
        serde_json::to_vec(&record).expect("a delivery record always serializes")
    }
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
    /// The host refused the destination (SSRF guard); never retried.
    Refused,
    /// The request failed before an answer: connection, timeout, protocol.
    Failed(String),
}

/// The reason recorded for a refused destination.
pub const DESTINATION_REFUSED: &str = "destination refused";

/// Whether an answer means done, try again later, or give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Done.
    Delivered,
    /// Try again later.
    Retry,
    /// Give up now.
    Fail,
}

/// Decides what an attempt's result means: 2xx is success; connection errors, timeouts,
/// 408, 425, 429 and 5xx are worth retrying; everything else, redirects included, fails.
pub fn verdict(result: &AttemptResult) -> Verdict {
    match result {
        AttemptResult::Answered(answer) => match answer.status {
            200..=299 => Verdict::Delivered,
            408 | 425 | 429 | 500.. => Verdict::Retry,
            _ => Verdict::Fail,
        },
        AttemptResult::Refused => Verdict::Fail,
        AttemptResult::Failed(_) => Verdict::Retry,
    }
}

/// When the retry after `attempts` attempts is due, or `None` when retries are used up.
pub fn next_attempt(now_ms: u64, attempts: usize) -> Option<u64> {
    RETRY_DELAYS_MS
        .get(attempts.checked_sub(1)?)
        .map(|delay| now_ms + delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_status_classes() {
        use AttemptResult::*;
        let answered = |code| Answered(Answer::status(code));
        assert_eq!(verdict(&answered(200)), Verdict::Delivered);
        assert_eq!(verdict(&answered(204)), Verdict::Delivered);
        for code in [408, 425, 429, 500, 503] {
            assert_eq!(verdict(&answered(code)), Verdict::Retry, "{code}");
        }
        for code in [301, 302, 400, 404, 410] {
            assert_eq!(verdict(&answered(code)), Verdict::Fail, "{code}");
        }
        assert_eq!(verdict(&Refused), Verdict::Fail);
        assert_eq!(verdict(&Failed("timeout".into())), Verdict::Retry);
    }

    #[test]
    fn retries_grow_then_stop() {
        assert_eq!(next_attempt(0, 1), Some(1_000));
        assert_eq!(next_attempt(0, 2), Some(5_000));
        assert_eq!(next_attempt(0, RETRY_DELAYS_MS.len()), Some(600_000));
        assert_eq!(next_attempt(0, RETRY_DELAYS_MS.len() + 1), None);
    }
}
