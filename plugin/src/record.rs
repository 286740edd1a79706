//! The stored form of the plugin's JSON records, with the format version each one carries
//! (DESIGN.md, principle 5), in one place for every kind of record.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, internal};

/// The format version written into every stored record; a record of a later version is refused
/// rather than misread.
pub const FORMAT_VERSION: u32 = 1;

/// A record stored as JSON with its format version in the field `v`.
pub trait Record: Serialize + DeserializeOwned + Clone {
    /// What the record is, for error messages: `webhook`, `delivery`.
    const KIND: &'static str;

    /// The record's format version field.
    fn version(&mut self) -> &mut u32;

    /// Reads a stored record of this or an earlier format version.
    fn decode(bytes: &[u8]) -> Result<Self> {
        decode_json(bytes)
    }

    /// The stored form, always in the current format version.
    fn encode(&self) -> Vec<u8> {
        encode_json(self)
    }
}

/// Reads the JSON of a stored record of this or an earlier format version.
pub fn decode_json<R: Record>(bytes: &[u8]) -> Result<R> {
    let mut record: R =
        serde_json::from_slice(bytes).map_err(|e| internal(format!("stored {} record is unreadable: {e}", R::KIND)))?;
    let version = *record.version();
    if version > FORMAT_VERSION {
        return Err(internal(format!(
            "stored {} record has format version {version}, newer than this plugin's {FORMAT_VERSION}",
            R::KIND
        )));
    }
    Ok(record)
}

/// The JSON of a record, always in the current format version.
pub fn encode_json<R: Record>(record: &R) -> Vec<u8> {
    let mut record = record.clone();
    *record.version() = FORMAT_VERSION;
    serde_json::to_vec(&record).expect("a record of plain fields always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliveries::record::Delivery;
    use crate::webhooks::record::Webhook;

    /// Records as the plugin before this codec wrote them read back and write out byte for
    /// byte the same, so either version can take over the other's data.
    #[test]
    fn stored_bytes_keep_their_format() {
        let webhook = br#"{"v":1,"id":"i","thing_id":"t","group_id":"g","name":"n","url":"http://h","headers":{"X-A":"1"},"secret":"whsec_x","disabled":true,"disabled_reason":"r"}"#;
        assert_eq!(Webhook::decode(webhook).unwrap().encode(), webhook);
        // A webhook from before transforms has none; one with a transform keeps it.
        assert_eq!(Webhook::decode(webhook).unwrap().transform, None);
        let transformed = br#"{"v":1,"id":"i","thing_id":"t","group_id":"g","name":"n","url":"http://h","transform":{"sha256":"ab","size":3,"attached_ms":7}}"#;
        assert_eq!(Webhook::decode(transformed).unwrap().encode(), transformed);
        let delivery = br#"{"v":1,"id":"d","webhook_id":"w","thing_id":"t","message_id":"m","content_type":"text/csv","status":"pending","created_ms":5,"next_attempt_ms":9,"attempts":[{"at_ms":5,"status_code":503,"error":"receiver answered 503","duration_ms":1,"response_body":"busy"}]}"#;
        assert_eq!(Delivery::decode(delivery).unwrap().encode(), delivery);
        let newer =
            br#"{"v":2,"id":"d","webhook_id":"w","thing_id":"t","message_id":"m","status":"failed","created_ms":5}"#;
        assert!(matches!(Delivery::decode(newer), Err(crate::Error::Internal(m)) if m.contains("version 2")));
    }
}
