//! Retention: the `expire` export. Deliveries and remembered message ids older than the
//! retention period are deleted with every index entry and payload they own, a bounded number
//! per call, so the store does not grow without end.

use crate::bindings::mainflux::webhooks::store::Op;
use crate::deliveries::Events;
use crate::deliveries::record::Delivery;
use crate::error::Result;
use crate::keys;
use crate::record::Record;
use crate::store;

impl Events<'_> {
    /// Deletes up to `limit` deliveries, then up to `limit` remembered message ids, created
    /// before `now - retention_ms`; answers how many of both.
    pub fn expire(&self, retention_ms: u64, limit: u32) -> Result<u32> {
        let cutoff = self.clock.now_ms().saturating_sub(retention_ms);
        let mut ops = Vec::new();
        let mut count = 0;
        let old = self
            .kv
            .scan(&keys::time_prefix(keys::CREATED), None, limit, false)
            .map_err(store::store_error)?;
        let old: Vec<_> = old
            .into_iter()
            .take_while(|e| keys::index_time(&e.key).is_some_and(|at| at < cutoff))
            .collect();
        let ids: Vec<String> = old
            .iter()
            .filter_map(|e| keys::time_key_id(&e.key).map(str::to_owned))
            .collect();
        let records = self
            .kv
            .get_many(&ids.iter().map(|id| keys::delivery(id)).collect::<Vec<_>>())
            .map_err(store::store_error)?;
        for ((entry, id), record) in old.iter().zip(&ids).zip(records) {
            let webhook_id = String::from_utf8_lossy(&entry.value).into_owned();
            let created_ms = keys::index_time(&entry.key).unwrap_or_default();
            if let Some(bytes) = record
                && let Ok(delivery) = Delivery::decode(&bytes)
                && let Some(at) = delivery.next_attempt_ms
            {
                ops.push(Op::Delete(keys::due(at, id)));
            }
            ops.push(Op::Delete(keys::delivery(id)));
            ops.push(Op::Delete(keys::payload(id)));
            ops.push(Op::Delete(keys::log_entry(&webhook_id, created_ms, id)));
            ops.push(Op::Delete(entry.key.clone()));
            count += 1;
        }
        let seen = self
            .kv
            .scan(&keys::time_prefix(keys::MESSAGE_SEEN), None, limit, false)
            .map_err(store::store_error)?;
        for entry in seen
            .into_iter()
            .take_while(|e| keys::index_time(&e.key).is_some_and(|at| at < cutoff))
        {
            ops.push(Op::Delete(entry.value));
            ops.push(Op::Delete(entry.key));
            count += 1;
        }
        if !ops.is_empty() {
            // Deletes of absent keys are no error, so a race with a concurrent write is harmless.
            self.kv.commit(&[], &ops).map_err(store::store_error)?;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use crate::deliveries::Events;
    use crate::keys;
    use crate::ports::Kv;
    use crate::testing::{Deliveries, FixedClock, NOW, events, message};

    #[test]
    fn retention_deletes_old_deliveries_and_message_ids() {
        let Deliveries { kv, sender } = Deliveries::with_webhooks(&[("w", "t", "http://a/503")]);
        let events = events(&kv, &sender);
        let id = "7f1c1d2e-1111-4222-8333-444455556666";
        let delivery = events
            .on_message(message("t", Some(id), b"x", None))
            .unwrap()
            .deliveries[0]
            .id
            .clone();
        assert_eq!(events.expire(60_000, 100).unwrap(), 0, "nothing is old yet");
        // Everything was created at NOW; a retention of 0 makes it old one ms later.
        let later_clock = FixedClock::at(NOW + 1);
        let later = Events::new(&kv, &sender, &later_clock);
        assert_eq!(later.expire(0, 100).unwrap(), 2);
        assert!(kv.get(&keys::delivery(&delivery)).unwrap().is_none());
        assert!(events.due(100).unwrap().is_empty());
        let leftovers: Vec<_> = kv
            .map
            .borrow()
            .keys()
            // Webhook records and their indexes (`w*`, `gs`) stay.
            .filter(|k| !k.starts_with(b"w") && !k.starts_with(b"gs"))
            .cloned()
            .collect();
        assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
        // The message id is forgotten too: the same id is a new message again.
        assert!(!events.on_message(message("t", Some(id), b"x", None)).unwrap().duplicate);
    }
}
