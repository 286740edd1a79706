//! The packed layout of a delivery record (data format 6): the same fields as its JSON, in a
//! fixed order, lengths and numbers as LEB128 varints, then the payload while it is kept. It
//! starts with [`TAG`], a byte no JSON record starts with, so a store may hold records of both
//! layouts and each one is read by its own first byte.
//!
//! | field | encoding |
//! |---|---|
//! | tag | the byte [`TAG`] |
//! | `v` | varint |
//! | `id`, `webhook_id`, `thing_id`, `message_id` | string each: varint length, UTF-8 |
//! | `content_type` | option of string |
//! | `subtopic` | string |
//! | `status` | one byte: 0 pending, 1 delivered, 2 failed, 3 skipped |
//! | `created_ms` | varint |
//! | `next_attempt_ms` | option of varint |
//! | `attempts` | varint count, then each: `at_ms` varint, `status_code` option of varint, `error` option of string, `duration_ms` varint, `response_body` option of string |
//! | payload | option: 0, or 1 and every byte to the end |
//!
//! An option is a byte, 0 for none or 1, followed by its value.

use super::record::{Attempt, Delivery, Status};
use crate::error::{Result, internal};
use crate::record::FORMAT_VERSION;

/// The first byte of a packed record: a JSON record starts with `{`.
pub const TAG: u8 = 1;

const STATUSES: [Status; 4] = [Status::Pending, Status::Delivered, Status::Failed, Status::Skipped];

/// The packed bytes of `delivery`, in the current record version.
pub fn encode(delivery: &Delivery) -> Vec<u8> {
    let text = delivery.id.len()
        + delivery.webhook_id.len()
        + delivery.thing_id.len()
        + delivery.message_id.len()
        + delivery.content_type.as_ref().map_or(0, String::len)
        + delivery.subtopic.len();
    let attempts: usize = delivery
        .attempts
        .iter()
        .map(|a| 24 + a.error.as_ref().map_or(0, String::len) + a.response_body.as_ref().map_or(0, String::len))
        .sum();
    let payload = delivery.payload.as_ref().map_or(0, Vec::len);
    let mut out = Writer(Vec::with_capacity(40 + text + attempts + payload));
    out.0.push(TAG);
    out.varint(u64::from(FORMAT_VERSION));
    out.text(&delivery.id);
    out.text(&delivery.webhook_id);
    out.text(&delivery.thing_id);
    out.text(&delivery.message_id);
    out.optional_text(delivery.content_type.as_deref());
    out.text(&delivery.subtopic);
    out.0.push(
        STATUSES
            .iter()
            .position(|s| *s == delivery.status)
            .expect("every status is listed") as u8,
    );
    out.varint(delivery.created_ms);
    out.optional_varint(delivery.next_attempt_ms);
    out.varint(delivery.attempts.len() as u64);
    for attempt in &delivery.attempts {
        out.varint(attempt.at_ms);
        out.optional_varint(attempt.status_code.map(u64::from));
        out.optional_text(attempt.error.as_deref());
        out.varint(attempt.duration_ms);
        out.optional_text(attempt.response_body.as_deref());
    }
    match &delivery.payload {
        None => out.0.push(0),
        Some(payload) => {
            out.0.push(1);
            out.0.extend_from_slice(payload);
        }
    }
    out.0
}

/// Reads a packed record (one that starts with [`TAG`]) of this or an earlier record version.
pub fn decode(bytes: &[u8]) -> Result<Delivery> {
    let mut input = Reader(bytes.strip_prefix(&[TAG]).ok_or_else(|| unreadable("no tag"))?);
    let version = input.varint()?;
    if version > u64::from(FORMAT_VERSION) {
        return Err(internal(format!(
            "stored delivery record has format version {version}, newer than this plugin's {FORMAT_VERSION}"
        )));
    }
    let id = input.text()?;
    let webhook_id = input.text()?;
    let thing_id = input.text()?;
    let message_id = input.text()?;
    let content_type = input.optional_text()?;
    let subtopic = input.text()?;
    let status = *STATUSES
        .get(usize::from(input.byte()?))
        .ok_or_else(|| unreadable("unknown status"))?;
    let created_ms = input.varint()?;
    let next_attempt_ms = input.optional_varint()?;
    let count = input.varint()?;
    // Each attempt takes at least five bytes: a count beyond that is corrupt, and must not
    // reserve memory for it.
    if count > input.0.len() as u64 / 5 {
        return Err(unreadable("more attempts than bytes"));
    }
    let mut attempts = Vec::with_capacity(count as usize);
    for _ in 0..count {
        attempts.push(Attempt {
            at_ms: input.varint()?,
            status_code: input
                .optional_varint()?
                .map(|code| u16::try_from(code).map_err(|_| unreadable("status code out of range")))
                .transpose()?,
            error: input.optional_text()?,
            duration_ms: input.varint()?,
            response_body: input.optional_text()?,
        });
    }
    let payload = match input.byte()? {
        0 if input.0.is_empty() => None,
        1 => Some(input.0.to_vec()),
        _ => return Err(unreadable("bytes after the record")),
    };
    Ok(Delivery {
        v: version as u32,
        id,
        webhook_id,
        thing_id,
        message_id,
        content_type,
        subtopic,
        status,
        created_ms,
        next_attempt_ms,
        attempts,
        payload,
        packed: true,
    })
}

fn unreadable(why: &str) -> crate::Error {
    internal(format!("stored delivery record is unreadable: {why}"))
}

struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push(value as u8 | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn text(&mut self, text: &str) {
        self.varint(text.len() as u64);
        self.0.extend_from_slice(text.as_bytes());
    }

    fn optional_text(&mut self, text: Option<&str>) {
        match text {
            None => self.0.push(0),
            Some(text) => {
                self.0.push(1);
                self.text(text);
            }
        }
    }

    fn optional_varint(&mut self, value: Option<u64>) {
        match value {
            None => self.0.push(0),
            Some(value) => {
                self.0.push(1);
                self.varint(value);
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8> {
        let (&first, rest) = self.0.split_first().ok_or_else(|| unreadable("cut short"))?;
        self.0 = rest;
        Ok(first)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(unreadable("a number longer than 64 bits"))
    }

    fn text(&mut self) -> Result<String> {
        let len = self.varint()?;
        if len > self.0.len() as u64 {
            return Err(unreadable("cut short"));
        }
        let (text, rest) = self.0.split_at(len as usize);
        self.0 = rest;
        String::from_utf8(text.to_vec()).map_err(|_| unreadable("text that is not UTF-8"))
    }

    fn optional_text(&mut self) -> Result<Option<String>> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.text().map(Some),
            _ => Err(unreadable("a bad option marker")),
        }
    }

    fn optional_varint(&mut self) -> Result<Option<u64>> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.varint().map(Some),
            _ => Err(unreadable("a bad option marker")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Delivery {
        Delivery {
            v: FORMAT_VERSION,
            id: "0193a4f2-7c1e-7d2a-8b3c-4d5e6f708192".into(),
            webhook_id: "w".into(),
            thing_id: "t".into(),
            message_id: "m".into(),
            content_type: Some("application/senml+json".into()),
            subtopic: "a.b".into(),
            status: Status::Pending,
            created_ms: 1_733_000_000_000,
            next_attempt_ms: Some(1_733_000_000_500),
            attempts: vec![
                Attempt {
                    at_ms: 1_733_000_000_001,
                    status_code: Some(503),
                    error: Some("receiver answered 503".into()),
                    duration_ms: 12,
                    response_body: Some("busy \u{1F6A7}".into()),
                },
                Attempt {
                    at_ms: 1_733_000_000_300,
                    status_code: None,
                    error: Some("connection refused".into()),
                    duration_ms: 0,
                    response_body: None,
                },
            ],
            payload: Some(b"\0\x01{\"v\":2}\xff".to_vec()),
            packed: true,
        }
    }

    #[test]
    fn every_field_and_any_payload_read_back_as_written() {
        let mut delivery = sample();
        assert_eq!(decode(&encode(&delivery)).unwrap(), delivery);
        for status in STATUSES {
            delivery.status = status;
            delivery.payload = None;
            delivery.next_attempt_ms = None;
            delivery.content_type = None;
            assert_eq!(decode(&encode(&delivery)).unwrap(), delivery);
        }
        delivery.payload = Some(Vec::new());
        delivery.attempts.clear();
        delivery.subtopic.clear();
        assert_eq!(decode(&encode(&delivery)).unwrap(), delivery);
        // Numbers at their extremes.
        delivery.created_ms = u64::MAX;
        delivery.attempts.push(Attempt {
            at_ms: 0,
            status_code: Some(u16::MAX),
            error: None,
            duration_ms: u64::MAX,
            response_body: Some(String::new()),
        });
        assert_eq!(decode(&encode(&delivery)).unwrap(), delivery);
    }

    #[test]
    fn it_is_smaller_than_the_json_and_starts_with_a_byte_no_json_does() {
        let delivery = sample();
        let packed = encode(&delivery);
        assert_eq!(packed[0], TAG);
        let json = serde_json::to_vec(&delivery).unwrap();
        assert_eq!(json[0], b'{');
        let payload = delivery.payload.as_ref().unwrap().len();
        assert!(
            packed.len() - payload < json.len() / 2,
            "{} vs {}",
            packed.len() - payload,
            json.len()
        );
    }

    #[test]
    fn a_damaged_record_is_refused_not_misread() {
        let bytes = encode(&sample());
        // Cut anywhere before the payload's bytes: refused (the payload marker is the last
        // byte a cut can lose without leaving a shorter payload).
        let payload_at = bytes.len() - sample().payload.unwrap().len();
        for end in 0..payload_at {
            assert!(decode(&bytes[..end]).is_err(), "cut at {end} was read");
        }
        let mut newer = bytes.clone();
        newer[1] = 2;
        assert!(matches!(decode(&newer), Err(crate::Error::Internal(m)) if m.contains("version 2")));
        let mut bad_status = encode(&Delivery {
            attempts: Vec::new(),
            ..sample()
        });
        let status_at = 1 + 1 + (1 + 36) + 2 + 2 + 2 + (1 + 1 + 22) + 4;
        assert_eq!(bad_status[status_at], 0, "the status byte of a pending delivery");
        bad_status[status_at] = 9;
        assert!(decode(&bad_status).is_err());
        // A count of attempts far beyond the bytes left does not reserve memory for them.
        let mut huge = encode(&Delivery {
            attempts: Vec::new(),
            payload: None,
            ..sample()
        });
        let count_at = huge.len() - 2;
        assert_eq!(huge[count_at], 0);
        huge.splice(count_at..count_at + 1, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode(&huge).is_err());
    }
}
