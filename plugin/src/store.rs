//! The plugin's records in the ordered key-value store: reads, index scans and guarded
//! commits, over the `store` capability or any other [`Kv`].

use std::collections::BTreeSet;

use crate::Error;
use crate::bindings::mainflux::webhooks::store::{Condition, Entry, Op, StoreError};
use crate::error::{Result, internal};
use crate::keys;
use crate::record::Record;
use crate::webhooks::record::Webhook;

/// How many entries one scan call asks for.
const SCAN_CHUNK: u32 = 512;

/// An ordered key-value store with guarded atomic commits (the `store` capability).
pub trait Kv {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Reads several keys; one slot per key, in order.
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;
    /// Lists entries under a prefix in key order, after a cursor.
    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: u32, reverse: bool) -> Result<Vec<Entry>, StoreError>;
    /// Applies the ops atomically if every guard holds.
    fn commit(&self, guards: &[Condition], ops: &[Op]) -> Result<(), StoreError>;
}

/// What a failed commit means to the operation that tried it.
#[derive(Debug)]
pub enum CommitFailure {
    /// The guard at this index did not hold.
    Conflict(usize),
    /// The store failed.
    Store(Error),
}

/// Turns a store failure that no operation can recover from into the answer's error.
pub fn store_error(error: StoreError) -> Error {
    match error {
        StoreError::Unavailable(reason) => Error::Unavailable(format!("storage is unavailable: {reason}")),
        StoreError::Conflict(_) => internal("storage reported a conflict outside a commit"),
    }
}

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
    let mut after: Option<Vec<u8>> = None;
    loop {
        let chunk = kv
            .scan(prefix, after.as_deref(), SCAN_CHUNK, false)
            .map_err(store_error)?;
        let full = chunk.len() as u32 == SCAN_CHUNK;
        for entry in &chunk {
            webhooks.push(Webhook::decode(&entry.value)?);
        }
        if !full {
            return Ok(webhooks);
        }
        after = chunk.into_iter().last().map(|entry| entry.key);
    }
}

/// Applies a commit, telling a failed guard from a failed store.
pub fn commit(kv: &dyn Kv, guards: &[Condition], ops: &[Op]) -> Result<(), CommitFailure> {
    kv.commit(guards, ops).map_err(|e| match e {
        StoreError::Conflict(index) => CommitFailure::Conflict(index as usize),
        other => CommitFailure::Store(store_error(other)),
    })
}

/// How often a guarded commit is tried again after concurrent writes changed what it read:
/// enough to outlast a burst of writers, few enough that a caller never spins for long.
pub const COMMIT_ATTEMPTS: usize = 8;

/// What one try of a guarded read-modify-write settled on.
pub enum Step<T> {
    /// Nothing to write; the operation answers this.
    Done(T),
    /// Commit these writes if every guard holds; the operation then answers `answer`.
    Commit {
        /// What must still hold of the records the try read.
        guards: Vec<Condition>,
        /// The writes, applied in order.
        ops: Vec<Op>,
        /// The answer once the commit is in.
        answer: T,
    },
}

/// Runs a read-modify-write until its commit goes in, at most [`COMMIT_ATTEMPTS`] times.
/// `next` reads and builds each try; it is handed the index of the guard that failed the
/// previous try (`None` on the first), so it can drop what someone else changed or give up
/// with its own error. When every try conflicts, answers `gave_up()`.
pub fn commit_retrying<T>(
    kv: &dyn Kv,
    gave_up: impl FnOnce() -> Error,
    mut next: impl FnMut(Option<usize>) -> Result<Step<T>>,
) -> Result<T> {
    let mut conflict = None;
    for _ in 0..COMMIT_ATTEMPTS {
        match next(conflict)? {
            Step::Done(answer) => return Ok(answer),
            Step::Commit { guards, ops, answer } => match commit(kv, &guards, &ops) {
                Ok(()) => return Ok(answer),
                Err(CommitFailure::Conflict(index)) => conflict = Some(index),
                Err(CommitFailure::Store(e)) => return Err(e),
            },
        }
    }
    Err(gave_up())
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

/// The writes that remove a webhook's record, index entries and name reservation.
pub fn delete_webhook(ops: &mut Vec<Op>, webhook: &Webhook) {
    ops.push(Op::Delete(keys::webhook(&webhook.id)));
    ops.push(Op::Delete(keys::by_thing(&webhook.thing_id, &webhook.id)));
    ops.push(Op::Delete(keys::by_group(&webhook.group_id, &webhook.id)));
    ops.push(Op::Delete(keys::name(&webhook.thing_id, &webhook.name)));
    delete_name_suffixes(ops, webhook);
}

/// An in-memory [`Kv`] with the same semantics as the host's backends, for unit tests.
#[cfg(test)]
pub mod memory {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// A `BTreeMap` behind the [`Kv`] trait.
    #[derive(Default)]
    pub struct MemoryKv {
        /// The stored pairs.
        pub map: RefCell<BTreeMap<Vec<u8>, Vec<u8>>>,
    }

    impl Kv for MemoryKv {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.map.borrow().get(key).cloned())
        }

        fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
            Ok(keys.iter().map(|k| self.map.borrow().get(k).cloned()).collect())
        }

        fn scan(
            &self,
            prefix: &[u8],
            after: Option<&[u8]>,
            limit: u32,
            reverse: bool,
        ) -> Result<Vec<Entry>, StoreError> {
            let map = self.map.borrow();
            let matching = map.iter().filter(|(k, _)| k.starts_with(prefix));
            let entries: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>> = if reverse {
                Box::new(matching.rev().filter(|(k, _)| after.is_none_or(|a| k.as_slice() < a)))
            } else {
                Box::new(matching.filter(|(k, _)| after.is_none_or(|a| k.as_slice() > a)))
            };
            Ok(entries
                .take(limit as usize)
                .map(|(k, v)| Entry {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect())
        }

        fn commit(&self, guards: &[Condition], ops: &[Op]) -> Result<(), StoreError> {
            let mut map = self.map.borrow_mut();
            for (index, guard) in guards.iter().enumerate() {
                let holds = match guard {
                    Condition::Absent(key) => !map.contains_key(key),
                    Condition::Present(key) => map.contains_key(key),
                    Condition::Equals(entry) => map.get(&entry.key) == Some(&entry.value),
                };
                if !holds {
                    return Err(StoreError::Conflict(index as u32));
                }
            }
            for op in ops {
                match op {
                    Op::Put(entry) => {
                        map.insert(entry.key.clone(), entry.value.clone());
                    }
                    Op::Delete(key) => {
                        map.remove(key);
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryKv;
    use super::*;
    use std::cell::Cell;

    fn put(key: &[u8], value: &[u8]) -> Op {
        Op::Put(Entry {
            key: key.to_vec(),
            value: value.to_vec(),
        })
    }

    fn gave_up() -> Error {
        internal("gave up")
    }

    #[test]
    fn a_commit_that_holds_goes_in_at_the_first_try() {
        let kv = MemoryKv::default();
        let tries = Cell::new(0);
        let answer = commit_retrying(&kv, gave_up, |conflict| {
            tries.set(tries.get() + 1);
            assert_eq!(conflict, None);
            Ok(Step::Commit {
                guards: vec![Condition::Absent(b"k".to_vec())],
                ops: vec![put(b"k", b"v")],
                answer: 7,
            })
        });
        assert_eq!(answer.unwrap(), 7);
        assert_eq!(tries.get(), 1);
        assert_eq!(kv.get(b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn a_conflict_is_tried_again_with_the_failed_guard_named() {
        let kv = MemoryKv::default();
        kv.commit(&[], &[put(b"b", b"taken")]).unwrap();
        let mut seen = Vec::new();
        let answer = commit_retrying(&kv, gave_up, |conflict| {
            seen.push(conflict);
            // The first try guards two keys, the second of which is taken; the next drops it.
            let guards = match conflict {
                None => vec![Condition::Absent(b"a".to_vec()), Condition::Absent(b"b".to_vec())],
                Some(_) => vec![Condition::Absent(b"a".to_vec())],
            };
            Ok(Step::Commit {
                guards,
                ops: vec![put(b"a", b"1")],
                answer: (),
            })
        });
        assert!(answer.is_ok());
        assert_eq!(seen, [None, Some(1)]);
        assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn done_writes_nothing_and_errors_stop_at_once() {
        let kv = MemoryKv::default();
        assert_eq!(
            commit_retrying(&kv, gave_up, |_| Ok(Step::Done("same"))).unwrap(),
            "same"
        );
        assert!(kv.map.borrow().is_empty());
        let tries = Cell::new(0);
        let failed: Result<()> = commit_retrying(&kv, gave_up, |_| {
            tries.set(tries.get() + 1);
            Err(crate::error::not_found("gone"))
        });
        assert!(matches!(failed, Err(Error::NotFound(m)) if m == "gone"));
        assert_eq!(tries.get(), 1);
    }

    #[test]
    fn a_commit_that_never_holds_gives_up_after_the_last_try() {
        let kv = MemoryKv::default();
        kv.commit(&[], &[put(b"k", b"v")]).unwrap();
        let tries = Cell::new(0);
        let failed: Result<()> = commit_retrying(&kv, gave_up, |_| {
            tries.set(tries.get() + 1);
            Ok(Step::Commit {
                guards: vec![Condition::Absent(b"k".to_vec())],
                ops: vec![put(b"x", b"never")],
                answer: (),
            })
        });
        assert!(matches!(failed, Err(Error::Internal(m)) if m == "gave up"));
        assert_eq!(tries.get(), COMMIT_ATTEMPTS);
        assert_eq!(kv.get(b"x").unwrap(), None);
    }
}
