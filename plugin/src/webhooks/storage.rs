//! Where a webhook lives in the store: its record, the thing and group indexes that hold a copy
//! of it, its name reservation and its name-search entries; the reads and the writes that keep
//! them together.

use std::collections::BTreeSet;

use crate::bindings::mainflux::webhooks::store::{Condition, Entry, Op};
use crate::error::Result;
use crate::keys;
use crate::ports::Kv;
use crate::record::Record;
use crate::store::{SCAN_CHUNK, store_error};
use crate::webhooks::record::Webhook;

/// Reads the webhook with this id.
pub fn load_webhook(kv: &dyn Kv, id: &str) -> Result<Option<(Webhook, Vec<u8>)>> {
    match kv.get(&keys::webhook(id)).map_err(store_error)? {
        Some(bytes) => Ok(Some((Webhook::decode(&bytes)?, bytes))),
        None => Ok(None),
    }
}

/// Reads every record stored under an index prefix, in id order.
pub fn scan_webhooks(kv: &dyn Kv, prefix: &[u8]) -> Result<Vec<Webhook>> {
    let mut webhooks = Vec::new();
    scan_rest(kv, prefix, None, &mut webhooks)?;
    Ok(webhooks)
}

/// Reads every record stored under each of several index prefixes: one list per prefix, in
/// id order. The first chunk of every prefix comes in one store call; only a prefix holding
/// more than a chunk costs more.
pub fn scan_webhooks_under(kv: &dyn Kv, prefixes: &[Vec<u8>]) -> Result<Vec<Vec<Webhook>>> {
    let firsts = kv.scan_prefixes(prefixes, SCAN_CHUNK).map_err(store_error)?;
    read_on(kv, prefixes, firsts)
}

/// The webhooks under each of several prefixes, and the value of one more key.
pub type WebhooksAndValue = (Vec<Vec<Webhook>>, Option<Vec<u8>>);

/// As [`scan_webhooks_under`], and the value of one more key, read in the same store call.
pub fn scan_webhooks_and_key(kv: &dyn Kv, prefixes: &[Vec<u8>], key: &[u8]) -> Result<WebhooksAndValue> {
    let mut asked = Vec::with_capacity(prefixes.len() + 1);
    asked.extend_from_slice(prefixes);
    asked.push(key.to_vec());
    let mut firsts = kv.scan_prefixes(&asked, SCAN_CHUNK).map_err(store_error)?;
    // The key is scanned as a prefix: only the entry that is the key itself counts.
    let value = firsts
        .pop()
        .and_then(|entries| entries.into_iter().find(|entry| entry.key == key))
        .map(|entry| entry.value);
    Ok((read_on(kv, prefixes, firsts)?, value))
}

/// Decodes the first chunk of each prefix and reads on where a chunk came full.
fn read_on(kv: &dyn Kv, prefixes: &[Vec<u8>], firsts: Vec<Vec<Entry>>) -> Result<Vec<Vec<Webhook>>> {
    prefixes
        .iter()
        .zip(firsts)
        .map(|(prefix, first)| {
            let full = first.len() as u32 == SCAN_CHUNK;
            let mut webhooks = first
                .iter()
                .map(|entry| Webhook::decode(&entry.value))
                .collect::<Result<Vec<_>>>()?;
            if full {
                scan_rest(kv, prefix, first.last().map(|entry| entry.key.clone()), &mut webhooks)?;
            }
            Ok(webhooks)
        })
        .collect()
}

/// Appends the records under `prefix` after the key `after` (from the first when `None`).
fn scan_rest(kv: &dyn Kv, prefix: &[u8], mut after: Option<Vec<u8>>, webhooks: &mut Vec<Webhook>) -> Result<()> {
    loop {
        let chunk = kv
            .scan(prefix, after.as_deref(), SCAN_CHUNK, false)
            .map_err(store_error)?;
        let full = chunk.len() as u32 == SCAN_CHUNK;
        for entry in &chunk {
            webhooks.push(Webhook::decode(&entry.value)?);
        }
        if !full {
            return Ok(());
        }
        after = chunk.into_iter().last().map(|entry| entry.key);
    }
}

/// How many entries are stored under a prefix.
pub fn count_under(kv: &dyn Kv, prefix: &[u8]) -> Result<usize> {
    let mut count = 0;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let chunk = kv
            .scan(prefix, after.as_deref(), SCAN_CHUNK, false)
            .map_err(store_error)?;
        count += chunk.len();
        if chunk.len() < SCAN_CHUNK as usize {
            return Ok(count);
        }
        after = chunk.into_iter().last().map(|entry| entry.key);
    }
}

/// The guard and write of the group's creates token (`gc`): the guard holds the token as read
/// now, the write replaces it. Read before counting what a quota limits, so that two commits
/// that counted the same entries cannot both go in: the second finds the token replaced.
pub fn group_creates_guard(kv: &dyn Kv, group_id: &str) -> Result<(Condition, Op)> {
    let token_key = keys::group_creates(group_id);
    let guard = match kv.get(&token_key).map_err(store_error)? {
        Some(value) => Condition::Equals(Entry {
            key: token_key.clone(),
            value,
        }),
        None => Condition::Absent(token_key.clone()),
    };
    let op = Op::Put(Entry {
        key: token_key,
        value: uuid::Uuid::new_v4().as_bytes().to_vec(),
    });
    Ok((guard, op))
}

/// Whether every webhook has its name-search entries, so a group listing may narrow by them.
pub fn group_names_indexed(kv: &dyn Kv) -> Result<bool> {
    Ok(kv.get(&keys::group_names_indexed()).map_err(store_error)?.is_some())
}

/// Reads the group's webhooks whose name-search entries start with the lowercased query, each
/// once, in id order: a superset of the names containing it, which the caller checks again.
pub fn scan_name_candidates(kv: &dyn Kv, group_id: &str, query: &str) -> Result<Vec<Webhook>> {
    let prefix = keys::name_suffix_prefix(group_id, query);
    let mut ids: BTreeSet<String> = BTreeSet::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let chunk = kv
            .scan(&prefix, after.as_deref(), SCAN_CHUNK, false)
            .map_err(store_error)?;
        let full = chunk.len() as u32 == SCAN_CHUNK;
        ids.extend(
            chunk
                .iter()
                .filter_map(|entry| keys::name_suffix_id(&entry.key).map(str::to_owned)),
        );
        if !full {
            break;
        }
        after = chunk.into_iter().last().map(|entry| entry.key);
    }
    let record_keys: Vec<Vec<u8>> = ids.iter().map(|id| keys::webhook(id)).collect();
    let mut webhooks = Vec::with_capacity(record_keys.len());
    for batch in record_keys.chunks(SCAN_CHUNK as usize) {
        for bytes in kv.get_many(batch).map_err(store_error)?.into_iter().flatten() {
            webhooks.push(Webhook::decode(&bytes)?);
        }
    }
    Ok(webhooks)
}

/// The writes that store a webhook's name-search entries.
pub fn put_name_suffixes(ops: &mut Vec<Op>, webhook: &Webhook) {
    for key in keys::name_suffixes(&webhook.group_id, &webhook.id, &webhook.name) {
        ops.push(Op::Put(Entry { key, value: Vec::new() }));
    }
}

/// The writes that remove a webhook's name-search entries; before a rename's
/// [`put_webhook`], since ops apply in order and the new name may share suffixes with the old.
pub fn delete_name_suffixes(ops: &mut Vec<Op>, webhook: &Webhook) {
    for key in keys::name_suffixes(&webhook.group_id, &webhook.id, &webhook.name) {
        ops.push(Op::Delete(key));
    }
}

/// The writes that store a webhook's record and its index entries.
pub fn put_webhook(ops: &mut Vec<Op>, webhook: &Webhook) {
    put_name_suffixes(ops, webhook);
    let value = webhook.encode();
    ops.push(Op::Put(Entry {
        key: keys::by_thing(&webhook.thing_id, &webhook.id),
        value: value.clone(),
    }));
    ops.push(Op::Put(Entry {
        key: keys::by_group(&webhook.group_id, &webhook.id),
        value: value.clone(),
    }));
    ops.push(Op::Put(Entry {
        key: keys::webhook(&webhook.id),
        value,
    }));
}

/// The writes that remove a webhook's record, index entries, name reservation and transform.
pub fn delete_webhook(ops: &mut Vec<Op>, webhook: &Webhook) {
    ops.push(Op::Delete(keys::webhook(&webhook.id)));
    ops.push(Op::Delete(keys::by_thing(&webhook.thing_id, &webhook.id)));
    ops.push(Op::Delete(keys::by_group(&webhook.group_id, &webhook.id)));
    ops.push(Op::Delete(keys::name(&webhook.thing_id, &webhook.name)));
    delete_name_suffixes(ops, webhook);
    // Whether or not the record names a transform: deleting an absent key costs nothing, and
    // no component is left behind whatever wrote the record.
    delete_transform(ops, webhook);
}

/// The writes that keep a webhook's transform component and its entry among the group's
/// transforms, beside the record that names it.
pub fn put_transform(ops: &mut Vec<Op>, webhook: &Webhook, sha256: &str, component: Vec<u8>) {
    ops.push(Op::Put(Entry {
        key: keys::transform_component(&webhook.id),
        value: component,
    }));
    ops.push(Op::Put(Entry {
        key: keys::group_transform(&webhook.group_id, &webhook.id),
        value: sha256.as_bytes().to_vec(),
    }));
}

/// The writes that remove a webhook's transform component and its entry among the group's
/// transforms.
pub fn delete_transform(ops: &mut Vec<Op>, webhook: &Webhook) {
    ops.push(Op::Delete(keys::transform_component(&webhook.id)));
    ops.push(Op::Delete(keys::group_transform(&webhook.group_id, &webhook.id)));
}

/// The bytes of a webhook's transform component, if kept.
pub fn load_transform_component(kv: &dyn Kv, webhook_id: &str) -> Result<Option<Vec<u8>>> {
    kv.get(&keys::transform_component(webhook_id)).map_err(store_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{WatchedKv, store_webhook};

    #[test]
    fn several_things_are_read_in_one_call_and_a_long_one_is_read_to_its_end() {
        let kv = WatchedKv::default();
        let many = SCAN_CHUNK as usize + 3;
        for i in 0..many {
            store_webhook(
                &kv.memory,
                &format!("a{i:04}"),
                "big",
                "http://a/",
                serde_json::Value::Null,
            );
        }
        store_webhook(&kv.memory, "b1", "small", "http://b/", serde_json::Value::Null);
        store_webhook(&kv.memory, "b2", "small", "http://b/", serde_json::Value::Null);
        let prefixes = ["small", "none", "big"].map(keys::by_thing_prefix);
        let found = scan_webhooks_under(&kv, &prefixes).unwrap();
        let ids: Vec<Vec<&str>> = found
            .iter()
            .map(|webhooks| webhooks.iter().map(|webhook| webhook.id.as_str()).collect())
            .collect();
        assert_eq!(ids[0], ["b1", "b2"]);
        assert!(ids[1].is_empty());
        let expected: Vec<String> = (0..many).map(|i| format!("a{i:04}")).collect();
        assert_eq!(ids[2], expected, "every webhook of the long thing, in id order");
        assert_eq!(
            kv.scan_calls(),
            2,
            "one call for the three, one for the rest of the long one"
        );
        assert_eq!(
            found.concat().len(),
            scan_webhooks(&kv, &keys::by_thing_prefix("big")).unwrap().len() + 2
        );
    }
}
