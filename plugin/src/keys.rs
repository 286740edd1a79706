//! The key layout of the plugin's records and indexes in the ordered key-value store.
//!
//! Every key starts with a short tag naming what it holds, then its parts separated by a NUL
//! byte, which ids never contain, so one prefix selects exactly one thing's or group's entries.
//!
//! | key | value |
//! |---|---|
//! | `wh\0{id}` | the webhook record |
//! | `wt\0{thing}\0{id}` | copy of the record, listing by thing in id order |
//! | `wg\0{group}\0{id}` | copy of the record, listing by group in id order |
//! | `wn\0{thing}\0{name}` | the id of the thing's webhook with that name (uniqueness) |

const SEP: u8 = 0;

fn key(tag: &str, parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::with_capacity(tag.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    key.extend_from_slice(tag.as_bytes());
    for part in parts {
        key.push(SEP);
        key.extend_from_slice(part.as_bytes());
    }
    key
}

fn prefix(tag: &str, owner: &str) -> Vec<u8> {
    let mut key = self::key(tag, &[owner]);
    key.push(SEP);
    key
}

/// The primary record of a webhook.
pub fn webhook(id: &str) -> Vec<u8> {
    key("wh", &[id])
}

/// The entry of a webhook in its thing's index.
pub fn by_thing(thing_id: &str, id: &str) -> Vec<u8> {
    key("wt", &[thing_id, id])
}

/// The prefix of every entry in a thing's index.
pub fn by_thing_prefix(thing_id: &str) -> Vec<u8> {
    prefix("wt", thing_id)
}

/// The entry of a webhook in its group's index.
pub fn by_group(group_id: &str, id: &str) -> Vec<u8> {
    key("wg", &[group_id, id])
}

/// The prefix of every entry in a group's index.
pub fn by_group_prefix(group_id: &str) -> Vec<u8> {
    prefix("wg", group_id)
}

/// The entry reserving a webhook name within a thing.
pub fn name(thing_id: &str, name: &str) -> Vec<u8> {
    key("wn", &[thing_id, name])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thing_prefix_selects_only_that_thing() {
        let prefix = by_thing_prefix("t1");
        assert!(by_thing("t1", "a").starts_with(&prefix));
        assert!(!by_thing("t10", "a").starts_with(&prefix));
        assert!(!by_group("t1", "a").starts_with(&prefix));
    }

    #[test]
    fn index_entries_sort_by_id() {
        assert!(by_group("g", "0a") < by_group("g", "0b"));
        assert!(by_group("g", "ff") < by_group("g0", "00"));
    }
}

/// The record of a delivery.
pub fn delivery(id: &str) -> Vec<u8> {
    key("dl", &[id])
}

/// The payload a delivery carries, kept until it is delivered.
pub fn payload(id: &str) -> Vec<u8> {
    key("dp", &[id])
}

/// The entry of a pending delivery in the due index, ordered by due time; its value is the
/// webhook id.
pub fn due(due_ms: u64, id: &str) -> Vec<u8> {
    key("dd", &[&format!("{due_ms:016x}"), id])
}

/// The prefix of the whole due index.
pub fn due_prefix() -> Vec<u8> {
    let mut key = b"dd".to_vec();
    key.push(SEP);
    key
}

/// Reads the due time back out of a due-index key.
pub fn due_time(key: &[u8]) -> Option<u64> {
    let hex = key.get(3..19)?;
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// The entry of a delivery in its webhook's log, ordered by creation time; its value is the
/// delivery's status, so the log can be counted and filtered without reading records.
pub fn log_entry(webhook_id: &str, created_ms: u64, id: &str) -> Vec<u8> {
    key("dw", &[webhook_id, &format!("{created_ms:016x}"), id])
}

/// The prefix of a webhook's delivery log.
pub fn log_prefix(webhook_id: &str) -> Vec<u8> {
    prefix("dw", webhook_id)
}

/// Reads the delivery id back out of a log entry's key.
pub fn log_entry_id(key: &[u8]) -> Option<&str> {
    let rest = &key[key.iter().rposition(|b| *b == SEP)? + 1..];
    std::str::from_utf8(rest).ok()
}

/// The entry of a delivery in the creation-time index that retention reads; its value is the
/// webhook id.
pub fn created(created_ms: u64, id: &str) -> Vec<u8> {
    key("dc", &[&format!("{created_ms:016x}"), id])
}

/// The entry of a remembered message id in the time index that retention reads; its value is
/// the message-id key.
pub fn message_seen(received_ms: u64, message_key: &[u8]) -> Vec<u8> {
    let mut key = key("mt", &[&format!("{received_ms:016x}")]);
    key.push(SEP);
    key.extend_from_slice(message_key);
    key
}

/// The prefix of a time index (`dc` or `mt`).
pub fn time_prefix(tag: &str) -> Vec<u8> {
    let mut key = tag.as_bytes().to_vec();
    key.push(SEP);
    key
}

/// The prefix of the whole message-id time index.
pub const MESSAGE_SEEN: &str = "mt";
/// The prefix of the whole creation-time index.
pub const CREATED: &str = "dc";

/// Reads the time back out of a time-index key (`dd`, `dc` or `mt`).
pub fn index_time(key: &[u8]) -> Option<u64> {
    due_time(key)
}

/// Reads the last part (the id) of a `dc` key.
pub fn created_id(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.get(20..)?).ok()
}

/// The entry recording that a thing published a message id, for idempotent publishing.
pub fn message_id(thing_id: &str, message_id: &str) -> Vec<u8> {
    key("mi", &[thing_id, message_id])
}

#[cfg(test)]
mod due_tests {
    use super::*;

    #[test]
    fn log_entries_sort_by_time_within_a_webhook() {
        assert!(log_entry("w", 9, "b") < log_entry("w", 10, "a"));
        assert!(log_entry("w", 1, "x").starts_with(&log_prefix("w")));
        assert!(!log_entry("w2", 1, "x").starts_with(&log_prefix("w")));
        assert_eq!(log_entry_id(&log_entry("w", 5, "abc")), Some("abc"));
    }

    #[test]
    fn due_keys_sort_by_time_and_read_back() {
        assert!(due(9, "b") < due(10, "a"));
        assert!(due(0xffff, "a") < due(0x1_0000, "a"));
        assert_eq!(due_time(&due(123_456, "x")), Some(123_456));
        assert!(due(1, "x").starts_with(&due_prefix()));
    }
}
