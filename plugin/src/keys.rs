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
//! | `gs\0{group}\0{suffix}\0{id}` | empty: one per suffix of the lowercased name, for name search |
//! | `ix\0group-names` | empty: every webhook has its `gs` entries (set by the backfill) |
//! | `ix\0group-names-cursor` | the id of the last webhook the backfill indexed |
//! | `ix\0format` | the stored data's format, in decimal digits (`format`); absent: 1 |
//! | `gc\0{group}` | a random token replaced by every create in the group while a webhook quota is set, so two creates that counted the same webhooks cannot both go in; attaching a transform replaces it too while a transform quota is set |
//! | `tc\0{id}` | the bytes of the webhook's transform component, kept per webhook so a removal deletes them with its other keys (the host compiles once per SHA-256 however many webhooks share one) |
//! | `tg\0{group}\0{id}` | the SHA-256 of the webhook's transform: the group's transforms, counted for the transform quota |
//!
//! A `gs` suffix starts at a char boundary of the lowercased name and keeps at most
//! [`NAME_SUFFIX_BYTES`] bytes; names may hold any char, NUL included, so the id is read from
//! after the last NUL, never the first.

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

/// The prefix of every primary webhook record, in id order.
pub fn webhook_prefix() -> Vec<u8> {
    let mut key = b"wh".to_vec();
    key.push(SEP);
    key
}

/// The longest suffix, in bytes, a name-search entry keeps: long enough to tell names apart,
/// short enough that a webhook's entries stay small even with a 254-char name.
pub const NAME_SUFFIX_BYTES: usize = 48;

/// Cuts a string to at most `max` bytes, at a char boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The name-search entries of a webhook: one per char position of its lowercased name, each
/// holding the (truncated) suffix from there, without repeats.
pub fn name_suffixes(group_id: &str, id: &str, name: &str) -> Vec<Vec<u8>> {
    let lower = name.to_lowercase();
    let mut entries: Vec<Vec<u8>> = lower
        .char_indices()
        .map(|(at, _)| key("gs", &[group_id, truncate(&lower[at..], NAME_SUFFIX_BYTES), id]))
        .collect();
    // Truncation makes the suffixes of a long run of one char equal.
    entries.sort_unstable();
    entries.dedup();
    entries
}

/// The prefix of a group's name-search entries whose suffix starts with the lowercased query:
/// with no separator after the query, so a scan finds every name containing it (and, past
/// [`NAME_SUFFIX_BYTES`], some that only share its start, which the caller checks again).
pub fn name_suffix_prefix(group_id: &str, query: &str) -> Vec<u8> {
    key("gs", &[group_id, truncate(query, NAME_SUFFIX_BYTES)])
}

/// Reads the webhook id back out of a name-search entry's key: the part after the last NUL.
pub fn name_suffix_id(key: &[u8]) -> Option<&str> {
    log_entry_id(key)
}

/// Reads the suffix back out of a name-search entry of the group: between the group's part and
/// the id, which follows the last NUL.
pub fn name_suffix_text<'k>(group_id: &str, entry: &'k [u8]) -> Option<&'k str> {
    let start = prefix("gs", group_id).len();
    let end = entry.iter().rposition(|b| *b == SEP)?;
    std::str::from_utf8(entry.get(start..end)?).ok()
}

/// The token every create in a group replaces while a webhook quota is set: creates that
/// counted the group's webhooks at the same time conflict on it instead of both going in.
pub fn group_creates(group_id: &str) -> Vec<u8> {
    key("gc", &[group_id])
}

/// The bytes of a webhook's transform component.
pub fn transform_component(webhook_id: &str) -> Vec<u8> {
    key("tc", &[webhook_id])
}

/// The entry of a webhook's transform among its group's transforms; its value is the SHA-256.
pub fn group_transform(group_id: &str, webhook_id: &str) -> Vec<u8> {
    key("tg", &[group_id, webhook_id])
}

/// The prefix of every transform entry of a group.
pub fn group_transforms_prefix(group_id: &str) -> Vec<u8> {
    prefix("tg", group_id)
}

/// The marker that every webhook has its name-search entries, so listings may rely on them.
pub fn group_names_indexed() -> Vec<u8> {
    key("ix", &["group-names"])
}

/// The backfill's progress toward [`group_names_indexed`]: the last webhook id it indexed.
pub fn group_names_cursor() -> Vec<u8> {
    key("ix", &["group-names-cursor"])
}

/// The stored data's format, which hosts read before handing the store to a version.
pub fn data_format() -> Vec<u8> {
    key("ix", &["format"])
}

/// How far the recovery of first attempts has read the delivery records: the key of the last
/// record it read (absent: none yet).
pub fn first_attempts_cursor() -> Vec<u8> {
    key("ix", &["first-attempts"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_search_prefix_selects_only_that_group() {
        let prefix = name_suffix_prefix("g1", "lph");
        let entries = name_suffixes("g1", "id", "Alpha");
        assert_eq!(entries.iter().filter(|k| k.starts_with(&prefix)).count(), 1);
        assert!(
            name_suffixes("g10", "id", "Alpha")
                .iter()
                .all(|k| !k.starts_with(&prefix))
        );
        assert!(
            name_suffixes("g1", "id", "Alp-ha")
                .iter()
                .all(|k| !k.starts_with(&prefix))
        );
        assert!(!by_group("g1", "lph").starts_with(&prefix));
        // One entry per char position, the id read back after the last NUL even when the name
        // holds one.
        let entries = name_suffixes("g1", "id-1", "a\0b");
        assert_eq!(entries.len(), 3);
        assert!(entries.iter().all(|k| name_suffix_id(k) == Some("id-1")));
    }

    #[test]
    fn name_suffixes_are_cut_at_char_boundaries() {
        // 47 ASCII bytes then a two-byte char: the 48-byte cut would split it.
        let name = format!("{}éz", "a".repeat(47));
        let entries = name_suffixes("g", "i", &name);
        let suffixes: Vec<String> = entries
            .iter()
            .map(|k| name_suffix_text("g", k).unwrap().to_owned())
            .collect();
        assert!(suffixes.contains(&"a".repeat(47)));
        assert!(suffixes.iter().all(|s| s.len() <= NAME_SUFFIX_BYTES));
        assert!(suffixes.contains(&"éz".to_owned()));
        assert_eq!(truncate("ünï", 4), "ün");
        assert_eq!(truncate("ünï", 3), "ün");
        assert_eq!(truncate("ünï", 2), "ü");
        assert_eq!(truncate("ünï", 1), "");
        assert_eq!(truncate("ab", 48), "ab");
        // The name is lowercased, so are its multi-byte chars.
        assert!(name_suffixes("g", "i", "ÜNÏ").contains(&key("gs", &["g", "ünï", "i"])));
        // A long run of one char gives one entry per distinct truncated suffix.
        assert_eq!(name_suffixes("g", "i", &"x".repeat(200)).len(), NAME_SUFFIX_BYTES);
    }

    #[test]
    fn every_name_containing_the_query_has_an_entry_under_its_prefix() {
        let long = "ü".repeat(40) + "-end";
        let names = [
            "Alpha".to_owned(),
            "ÜnïcodeÜnïcode".to_owned(),
            format!("prefix-{long}-suffix"),
            "x".repeat(254),
            format!("{}ßẞ{}", "ab".repeat(30), "é".repeat(50)),
        ];
        for name in &names {
            let lower = name.to_lowercase();
            let entries = name_suffixes("g", "id", name);
            let boundaries: Vec<usize> = lower.char_indices().map(|(at, _)| at).chain([lower.len()]).collect();
            for &start in &boundaries {
                for &end in boundaries.iter().filter(|&&end| end > start) {
                    let query = &lower[start..end];
                    let prefix = name_suffix_prefix("g", query);
                    assert!(
                        entries.iter().any(|k| k.starts_with(&prefix)),
                        "{name:?} has no entry for {query:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_thing_prefix_selects_only_that_thing() {
        let prefix = by_thing_prefix("t1");
        assert!(by_thing("t1", "a").starts_with(&prefix));
        assert!(!by_thing("t10", "a").starts_with(&prefix));
        assert!(!by_group("t1", "a").starts_with(&prefix));
    }

    #[test]
    fn a_group_transforms_prefix_selects_only_that_group() {
        let prefix = group_transforms_prefix("g1");
        assert!(group_transform("g1", "w").starts_with(&prefix));
        assert!(!group_transform("g10", "w").starts_with(&prefix));
        assert!(!transform_component("g1").starts_with(&prefix));
    }

    #[test]
    fn index_entries_sort_by_id() {
        assert!(by_group("g", "0a") < by_group("g", "0b"));
        assert!(by_group("g", "ff") < by_group("g0", "00"));
    }
}

/// A time as it sorts in a key.
fn hex_time(ms: u64) -> String {
    format!("{ms:0width$x}", width = TIME_HEX_DIGITS)
}

/// The record of a delivery.
pub fn delivery(id: &str) -> Vec<u8> {
    key("dl", &[id])
}

/// The prefix of every delivery record, in id order: creation order for time-ordered ids.
pub fn delivery_prefix() -> Vec<u8> {
    time_prefix("dl")
}

/// Reads the delivery id back out of a delivery record's key.
pub fn delivery_id(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.get(delivery_prefix().len()..)?).ok()
}

/// The payload a delivery of the earlier layout carries, kept until it is delivered (the
/// compact layout keeps it in the record).
pub fn payload(id: &str) -> Vec<u8> {
    key("dp", &[id])
}

/// The entry of a pending delivery in the due index, ordered by due time; its value is the
/// webhook id.
pub fn due(due_ms: u64, id: &str) -> Vec<u8> {
    key("dd", &[&hex_time(due_ms), id])
}

/// The prefix of the whole due index.
pub fn due_prefix() -> Vec<u8> {
    let mut key = b"dd".to_vec();
    key.push(SEP);
    key
}

/// The layout of a time-index key (`dd`, `dc`, `mt`): a two-byte tag, NUL, the time as
/// [`TIME_HEX_DIGITS`] hex digits (so byte order is time order), NUL, then the id.
mod time_key {
    /// Bytes of the tag.
    pub const TAG: usize = 2;
    /// Where the hex time starts: after the tag and its separator.
    pub const TIME_AT: usize = TAG + 1;
    /// Where the id starts: after the time and its separator.
    pub const ID_AT: usize = TIME_AT + super::TIME_HEX_DIGITS + 1;
}

/// Hex digits of a time in a key: a u64 in full, so keys of any time sort by it.
pub const TIME_HEX_DIGITS: usize = 16;

/// Reads the due time back out of a due-index key.
pub fn due_time(key: &[u8]) -> Option<u64> {
    let hex = key.get(time_key::TIME_AT..time_key::TIME_AT + TIME_HEX_DIGITS)?;
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// Reads the delivery id back out of a due-index or creation-time key.
pub fn time_key_id(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.get(time_key::ID_AT..)?).ok()
}

/// The entry of a delivery in its webhook's log, ordered by creation time; its value is the
/// delivery's status, so the log can be counted and filtered without reading records.
pub fn log_entry(webhook_id: &str, created_ms: u64, id: &str) -> Vec<u8> {
    key("dw", &[webhook_id, &hex_time(created_ms), id])
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

/// The entry of a delivery of the earlier layout in the creation-time index that retention
/// reads; its value is the webhook id.
pub fn created(created_ms: u64, id: &str) -> Vec<u8> {
    key("dc", &[&hex_time(created_ms), id])
}

/// The entry of a remembered message id in the time index that retention reads; its value is
/// the message-id key.
pub fn message_seen(received_ms: u64, message_key: &[u8]) -> Vec<u8> {
    let mut key = key("mt", &[&hex_time(received_ms)]);
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
        assert_eq!(time_key_id(&due(123_456, "an-id")), Some("an-id"));
        assert_eq!(time_key_id(&created(7, "other")), Some("other"));
        assert_eq!(time_key_id(b"dd"), None);
        assert!(due(1, "x").starts_with(&due_prefix()));
    }
}
