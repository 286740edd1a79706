//! The delivery record as stored (one per message and webhook, with every attempt) and its
//! status, with the RFC 3339 times the API shows of it.
//!
//! A record is its JSON, then, in the compact layout of data format 4, a NUL byte and the
//! payload while it is kept: JSON never holds a raw NUL (serde_json escapes control chars), so
//! the first one ends it. In the earlier layout the payload has a key of its own (`dp`). From
//! data format 6 new records are packed instead (`packed`), told apart by their first byte.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::record::{FORMAT_VERSION, Record, decode_json, encode_json};

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
    /// The webhook's transform chose not to send it: nothing was sent, nothing will be.
    Skipped,
}

impl Status {
    /// The name of a status, as the API shows it and the log index stores it.
    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }

    /// The status a log entry of the earlier formats names, if it names one.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        [Status::Pending, Status::Delivered, Status::Failed, Status::Skipped]
            .into_iter()
            .find(|status| status.name().as_bytes() == name)
    }
}

/// RFC 3339 time of a millisecond timestamp.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
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
    /// The payload, when the record holds it (the compact layout): from intake until nothing
    /// will be sent again.
    #[serde(skip)]
    pub payload: Option<Vec<u8>>,
    /// Whether it is stored packed (data format 6) rather than as JSON: set at intake from the
    /// store's format and kept by every rewrite, so a record keeps the layout it was made in.
    #[serde(skip)]
    pub packed: bool,
}

impl Record for Delivery {
    const KIND: &'static str = "delivery";

    fn version(&mut self) -> &mut u32 {
        &mut self.v
    }

    fn decode(bytes: &[u8]) -> crate::error::Result<Self> {
        if bytes.first() == Some(&super::packed::TAG) {
            return super::packed::decode(bytes);
        }
        match bytes.iter().position(|b| *b == 0) {
            None => decode_json(bytes),
            Some(end) => {
                let mut delivery: Delivery = decode_json(&bytes[..end])?;
                delivery.payload = Some(bytes[end + 1..].to_vec());
                Ok(delivery)
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        if self.packed {
            return super::packed::encode(self);
        }
        // Not through a copy of the record: it would copy the payload too.
        let mut bytes = if self.v == FORMAT_VERSION {
            serde_json::to_vec(self).expect("a record of plain fields always serializes")
        } else {
            encode_json(self)
        };
        if let Some(payload) = &self.payload {
            bytes.reserve(1 + payload.len());
            bytes.push(0);
            bytes.extend_from_slice(payload);
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compact_record_carries_any_payload_after_its_json() {
        let stored = br#"{"v":1,"id":"d","webhook_id":"w","thing_id":"t","message_id":"m","status":"pending","created_ms":5,"next_attempt_ms":9,"attempts":[]}"#;
        let mut delivery = Delivery::decode(stored).unwrap();
        assert_eq!(delivery.payload, None);
        assert_eq!(delivery.encode(), stored, "the earlier layout is kept byte for byte");
        for payload in [&b""[..], b"\0\0{\"v\":2}\0", b"\xff\xfe binary", br#"{"a":"\u0000"}"#] {
            delivery.payload = Some(payload.to_vec());
            let bytes = delivery.encode();
            assert!(bytes.starts_with(stored));
            assert_eq!(Delivery::decode(&bytes).unwrap(), delivery);
        }
        // Text with a NUL in it stays escaped in the JSON, so the first raw NUL ends it.
        delivery.payload = None;
        delivery.subtopic = "a\0b".into();
        let bytes = delivery.encode();
        assert!(!bytes.contains(&0));
        assert_eq!(Delivery::decode(&bytes).unwrap(), delivery);
    }
}
