//! Retention: the `expire` export. Deliveries and remembered message ids older than the
//! retention period are deleted with every index entry and payload they own, a bounded number
//! per call, so the store does not grow without end.

use std::collections::HashSet;

use uuid::Uuid;

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
        let mut expired = self.expire_by_id(cutoff, limit, &mut ops)?;
        let mut count = expired.len() as u32;
        // Deliveries of the earlier layout have a creation-index entry each.
        let old = self
            .kv
            .scan(&keys::time_prefix(keys::CREATED), None, limit - count.min(limit), false)
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
            if !expired.insert(id.clone()) {
                continue;
            }
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

    /// Adds the deletes of up to `limit` deliveries created before `cutoff`, read from the
    /// records in id order: time-ordered ids (every compact delivery's) list them by creation,
    /// so the first one made at `cutoff` or later ends the read. A delivery of the earlier
    /// layout met on the way goes too, with its creation-index entry. Answers their ids.
    fn expire_by_id(&self, cutoff: u64, limit: u32, ops: &mut Vec<Op>) -> Result<HashSet<String>> {
        let prefix = keys::delivery_prefix();
        let mut expired = HashSet::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            // Small reads first: mostly the oldest record is young and ends it.
            let chunk = self
                .kv
                .scan(&prefix, after.as_deref(), EXPIRY_CHUNK.min(limit), false)
                .map_err(store::store_error)?;
            let full = chunk.len() as u32 == EXPIRY_CHUNK.min(limit);
            for entry in &chunk {
                let Some(id) = keys::delivery_id(&entry.key) else {
                    continue;
                };
                if made_at_ms(id).is_some_and(|at| at >= cutoff) {
                    return Ok(expired);
                }
                // One that cannot be read has no webhook to find its log entry by; if it is
                // of the earlier layout, its creation-index entry still leads to it.
                let Ok(delivery) = Delivery::decode(&entry.value) else {
                    continue;
                };
                if delivery.created_ms >= cutoff {
                    continue;
                }
                if let Some(at) = delivery.next_attempt_ms {
                    ops.push(Op::Delete(keys::due(at, id)));
                }
                ops.push(Op::Delete(keys::log_entry(
                    &delivery.webhook_id,
                    delivery.created_ms,
                    id,
                )));
                ops.push(Op::Delete(keys::created(delivery.created_ms, id)));
                ops.push(Op::Delete(keys::payload(id)));
                ops.push(Op::Delete(entry.key.clone()));
                expired.insert(id.to_owned());
                if expired.len() as u32 >= limit {
                    return Ok(expired);
                }
            }
            if !full {
                return Ok(expired);
            }
            after = chunk.into_iter().last().map(|entry| entry.key);
        }
    }
}

/// Records one read of [`Events::expire_by_id`] takes, at most.
const EXPIRY_CHUNK: u32 = 64;

/// When a time-ordered (version 7) id was made, ms since the Unix epoch; `None` for ids of
/// other versions, which older plugins made.
fn made_at_ms(id: &str) -> Option<u64> {
    let uuid = Uuid::try_parse(id).ok()?;
    if uuid.get_version_num() != 7 {
        return None;
    }
    let (seconds, nanos) = uuid.get_timestamp()?.to_unix();
    Some(seconds * 1000 + u64::from(nanos) / 1_000_000)
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

    /// Ms since the Unix epoch, now: time-ordered ids carry the real time.
    fn wall_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    #[test]
    fn retention_finds_compact_deliveries_by_their_ids_and_earlier_ones_by_their_index() {
        let Deliveries { kv, sender } =
            Deliveries::with_webhooks(&[("w", "t", "http://a/503"), ("ok", "t", "http://a/200")]);
        let events = events(&kv, &sender);
        let separate = crate::testing::publish(&events, message("t", None, b"x", None));
        crate::format::raise(&kv, crate::format::COMPACT).unwrap();
        let compact = crate::testing::publish(&events, message("t", None, b"y", None));
        events.deliver(&compact).unwrap();
        assert_eq!(
            events.due(100).unwrap().len(),
            2,
            "one compact delivered, one waiting for its retry"
        );
        // A delivery made after the cutoff stays, and ends the read.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let cutoff = wall_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let young = crate::testing::publish(&events, message("t", None, b"z", None));
        let later_clock = FixedClock::at(cutoff + 1_000);
        let later = Events::new(&kv, &sender, &later_clock);
        // Made at NOW, long before the cutoff, by their records; by their ids, just before it.
        assert_eq!(later.expire(1_000, 3).unwrap(), 3, "at most the limit");
        assert_eq!(later.expire(1_000, 100).unwrap(), 1);
        assert_eq!(later.expire(1_000, 100).unwrap(), 0);
        let left: Vec<Vec<u8>> = kv
            .map
            .borrow()
            .keys()
            .filter(|k| !k.starts_with(b"w") && !k.starts_with(b"gs") && !k.starts_with(b"ix"))
            .cloned()
            .collect();
        assert_eq!(
            left.len(),
            2 * 3,
            "the young deliveries' record, due and log entries: {left:?}"
        );
        assert!(young.iter().all(|id| kv.get(&keys::delivery(id)).unwrap().is_some()));
        assert!(
            separate
                .iter()
                .chain(&compact)
                .all(|id| kv.get(&keys::delivery(id)).unwrap().is_none())
        );
    }
}
