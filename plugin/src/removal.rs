//! Removing webhooks: one path for a user's `DELETE /webhooks` and for the platform removing
//! a thing or a group, so every removal drops the same records and index entries.

use crate::Error;
use crate::bindings::mainflux::webhooks::store::{Condition, Entry};
use crate::error::{Result, internal};
use crate::keys;
use crate::ports::Kv;
use crate::record::Record;
use crate::store::{self, Step};
use crate::webhooks::record::Webhook;
use crate::webhooks::storage;

/// Removes the webhooks `read` answers, each with its record's bytes as read, in one commit
/// guarded by those bytes, so a webhook changed meanwhile is read again rather than removed
/// as it was; answers how many. `read` may refuse (unknown id, no access): nothing is removed.
pub fn remove_webhooks(
    kv: &dyn Kv,
    gave_up: impl FnOnce() -> Error,
    mut read: impl FnMut() -> Result<Vec<(Webhook, Vec<u8>)>>,
) -> Result<u32> {
    store::commit_retrying(kv, gave_up, |_| {
        let webhooks = read()?;
        if webhooks.is_empty() {
            return Ok(Step::Done(0));
        }
        let mut guards = Vec::with_capacity(webhooks.len());
        let mut ops = Vec::with_capacity(webhooks.len() * 5);
        for (webhook, stored) in &webhooks {
            guards.push(Condition::Equals(Entry {
                key: keys::webhook(&webhook.id),
                value: stored.clone(),
            }));
            storage::delete_webhook(&mut ops, webhook);
        }
        Ok(Step::Commit {
            guards,
            ops,
            answer: webhooks.len() as u32,
        })
    })
}

/// The platform's removals of things and groups, over a store.
pub struct Removals<'a> {
    kv: &'a dyn Kv,
}

impl<'a> Removals<'a> {
    /// Binds the removals to the store.
    pub fn new(kv: &'a dyn Kv) -> Self {
        Removals { kv }
    }

    /// Removes every webhook of a thing; answers how many.
    pub fn on_thing_removed(&self, thing_id: &str) -> Result<u32> {
        self.remove_under(&keys::by_thing_prefix(thing_id))
    }

    /// Removes every webhook of a group; answers how many.
    pub fn on_group_removed(&self, group_id: &str) -> Result<u32> {
        self.remove_under(&keys::by_group_prefix(group_id))
    }

    fn remove_under(&self, prefix: &[u8]) -> Result<u32> {
        let gave_up = || internal("webhooks kept changing while being removed");
        remove_webhooks(self.kv, gave_up, || {
            // The index holds the record as written; encoded again it is the stored record.
            let webhooks = storage::scan_webhooks(self.kv, prefix)?;
            Ok(webhooks
                .into_iter()
                .map(|w| {
                    let stored = w.encode();
                    (w, stored)
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::bindings::exports::mainflux::webhooks::events::DeliveryStatus;
    use crate::keys;
    use crate::ports::Kv;
    use crate::testing::{Deliveries, events, message, publish};

    #[test]
    fn removing_a_thing_removes_its_webhooks_and_fails_their_deliveries() {
        let Deliveries { kv, sender } =
            Deliveries::with_webhooks(&[("w1", "t", "http://a/200"), ("w2", "u", "http://a/200")]);
        let events = events(&kv, &sender);
        let ids = publish(&events, message("t", None, b"x", None));
        assert_eq!(crate::removal::Removals::new(&kv).on_thing_removed("t").unwrap(), 1);
        assert_eq!(crate::removal::Removals::new(&kv).on_thing_removed("t").unwrap(), 0);
        assert!(kv.get(&keys::webhook("w2")).unwrap().is_some());
        let outcomes = events.deliver(&ids).unwrap();
        assert_eq!(outcomes[0].status, DeliveryStatus::Failed);
        assert!(sender.sent.borrow().is_empty());
        // The removed webhook's name-search entries went with it; the other's stay.
        let name_entries = || -> Vec<Vec<u8>> {
            let map = kv.map.borrow();
            map.keys().filter(|k| k.starts_with(b"gs\0")).cloned().collect()
        };
        assert!(!name_entries().is_empty());
        assert!(name_entries().iter().all(|k| keys::name_suffix_id(k) == Some("w2")));
        assert_eq!(crate::removal::Removals::new(&kv).on_group_removed("g").unwrap(), 1);
        assert!(name_entries().is_empty(), "left behind: {:?}", name_entries());
    }
}
