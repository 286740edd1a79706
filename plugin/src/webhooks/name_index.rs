//! Upkeep of stored data that an upgrade calls for: building the indexes this version added
//! over the records an earlier version wrote (DESIGN.md, principle 5), a few at a time.

use crate::bindings::mainflux::webhooks::store::{Condition, Entry, Op};
use crate::error::{Result, internal};
use crate::format;
use crate::keys;
use crate::ports::Kv;
use crate::record::Record;
use crate::store::{self, Step};
use crate::webhooks::record::Webhook;
use crate::webhooks::storage;

/// Most webhooks indexed by one commit: a 254-char name brings 254 entries, so this keeps a
/// commit to a few megabytes whatever the names.
const RECORDS_PER_COMMIT: u32 = 64;

/// The upkeep operations over a store.
pub struct Upkeep<'a> {
    kv: &'a dyn Kv,
}

impl<'a> Upkeep<'a> {
    /// Binds the operations to the store.
    pub fn new(kv: &'a dyn Kv) -> Self {
        Upkeep { kv }
    }

    /// Gives up to `limit` webhooks written before the name-search index their entries, in
    /// id order from where the last call stopped; once none is left, marks the index complete.
    /// Answers how many webhooks it handled: 0 when the index was already complete. Once it
    /// is, the store is named as being in this version's format.
    pub fn maintain(&self, limit: u32) -> Result<u32> {
        let mut handled = 0;
        while handled < limit {
            let (count, complete) = self.index_names(RECORDS_PER_COMMIT.min(limit - handled))?;
            handled += count;
            if complete {
                // Also for stores indexed before the format was named.
                format::raise(self.kv, format::WRITES)?;
                break;
            }
        }
        Ok(handled)
    }

    /// Indexes the next `limit` webhooks after the cursor in one commit; answers how many, and
    /// whether the index is complete (this commit may have completed it).
    fn index_names(&self, limit: u32) -> Result<(u32, bool)> {
        let marker = keys::group_names_indexed();
        let cursor_key = keys::group_names_cursor();
        let gave_up = || internal("webhooks kept changing while being indexed by name");
        store::commit_retrying(self.kv, gave_up, |_| {
            if storage::group_names_indexed(self.kv)? {
                return Ok(Step::Done((0, true)));
            }
            let cursor = self.kv.get(&cursor_key).map_err(store::store_error)?;
            let after = cursor.as_ref().map(|id| [keys::webhook_prefix(), id.clone()].concat());
            let records = self
                .kv
                .scan(&keys::webhook_prefix(), after.as_deref(), limit, false)
                .map_err(store::store_error)?;
            // A second host doing the same upkeep, or a concurrent write, shows as a conflict.
            let mut guards = vec![
                Condition::Absent(marker.clone()),
                match &cursor {
                    Some(id) => Condition::Equals(Entry {
                        key: cursor_key.clone(),
                        value: id.clone(),
                    }),
                    None => Condition::Absent(cursor_key.clone()),
                },
            ];
            let mut ops = Vec::new();
            for record in &records {
                let webhook = Webhook::decode(&record.value)?;
                storage::put_name_suffixes(&mut ops, &webhook);
                // Entries for the record as read: a rename or removal since then fails the
                // commit rather than leave entries of a name the webhook no longer has.
                guards.push(Condition::Equals(record.clone()));
            }
            let exhausted = (records.len() as u32) < limit;
            if exhausted {
                // Every write since this version came in keeps the index, so from here on
                // listings may rely on it.
                ops.push(Op::Put(Entry {
                    key: marker.clone(),
                    value: Vec::new(),
                }));
                ops.push(Op::Delete(cursor_key.clone()));
            } else if let Some(last) = records.last() {
                let id = last.key[keys::webhook_prefix().len()..].to_vec();
                ops.push(Op::Put(Entry {
                    key: cursor_key.clone(),
                    value: id,
                }));
            }
            Ok(Step::Commit {
                guards,
                ops,
                answer: (records.len() as u32, exhausted),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, MemoryKv, WatchedKv, name_entries, store_unindexed};

    fn webhook(id: &str, name: &str) -> Webhook {
        testing::webhook(id, "t", name)
    }

    #[test]
    fn a_fresh_store_is_marked_complete_by_the_first_call() {
        let kv = MemoryKv::default();
        assert_eq!(Upkeep::new(&kv).maintain(0).unwrap(), 0);
        assert!(!storage::group_names_indexed(&kv).unwrap(), "a limit of 0 does nothing");
        assert_eq!(format::stored(&kv).unwrap(), 1);
        assert_eq!(Upkeep::new(&kv).maintain(1000).unwrap(), 0);
        assert!(storage::group_names_indexed(&kv).unwrap());
        assert_eq!(format::stored(&kv).unwrap(), 2);
        assert_eq!(Upkeep::new(&kv).maintain(1000).unwrap(), 0);
    }

    #[test]
    fn a_store_indexed_before_the_format_was_named_is_named_by_the_next_call() {
        let kv = MemoryKv::default();
        let marker = Op::Put(Entry {
            key: keys::group_names_indexed(),
            value: Vec::new(),
        });
        kv.commit(&[], &[marker]).unwrap();
        assert_eq!(format::stored(&kv).unwrap(), 1);
        assert_eq!(Upkeep::new(&kv).maintain(10).unwrap(), 0);
        assert_eq!(format::stored(&kv).unwrap(), 2);
    }

    #[test]
    fn the_format_is_not_raised_while_the_backfill_goes_on() {
        let kv = MemoryKv::default();
        for i in 0..10 {
            store_unindexed(&kv, &webhook(&format!("id-{i}"), "n"));
        }
        assert_eq!(Upkeep::new(&kv).maintain(5).unwrap(), 5);
        assert_eq!(format::stored(&kv).unwrap(), 1);
        assert_eq!(Upkeep::new(&kv).maintain(50).unwrap(), 5);
        assert_eq!(format::stored(&kv).unwrap(), 2);
    }

    #[test]
    fn the_backfill_goes_in_batches_from_its_cursor_until_none_is_left() {
        let kv = MemoryKv::default();
        let webhooks: Vec<Webhook> = (0..150)
            .map(|i| webhook(&format!("id-{i:03}"), &format!("Hook {i}")))
            .collect();
        for webhook in &webhooks {
            store_unindexed(&kv, webhook);
        }
        let upkeep = Upkeep::new(&kv);
        assert_eq!(upkeep.maintain(100).unwrap(), 100);
        assert_eq!(kv.get(&keys::group_names_cursor()).unwrap(), Some(b"id-099".to_vec()));
        assert!(!storage::group_names_indexed(&kv).unwrap());
        assert_eq!(upkeep.maintain(100).unwrap(), 50);
        assert!(storage::group_names_indexed(&kv).unwrap());
        assert_eq!(kv.get(&keys::group_names_cursor()).unwrap(), None);
        assert_eq!(upkeep.maintain(100).unwrap(), 0);
        let mut expected: Vec<Vec<u8>> = webhooks
            .iter()
            .flat_map(|w| keys::name_suffixes(&w.group_id, &w.id, &w.name))
            .collect();
        expected.sort();
        assert_eq!(name_entries(&kv), expected);
    }

    #[test]
    fn a_record_changed_meanwhile_gets_the_entries_of_its_new_name_only() {
        let kv = WatchedKv::default();
        store_unindexed(&kv.memory, &webhook("a", "original"));
        // A concurrent update renames the webhook just before the first commit.
        kv.before_next_commit(|memory| {
            let (old, _) = storage::load_webhook(memory, "a").unwrap().unwrap();
            let mut rename = Vec::new();
            storage::delete_name_suffixes(&mut rename, &old);
            storage::put_webhook(&mut rename, &webhook("a", "renamed"));
            memory.commit(&[], &rename).unwrap();
        });
        assert_eq!(Upkeep::new(&kv).maintain(10).unwrap(), 1);
        assert!(storage::group_names_indexed(&kv).unwrap());
        assert_eq!(name_entries(&kv.memory), keys::name_suffixes("g", "a", "renamed"));
    }
}
