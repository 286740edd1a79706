//! Recovery of first attempts. From data format 5 intake writes no due entry for a new
//! delivery: the host that took its message in attempts it at once, and only an outcome that
//! calls for a retry writes one. A delivery that host never attempted (it stopped, or it had
//! no room to queue it) is found here instead: the delivery records are read in id order,
//! which for time-ordered ids is creation order, from a stored cursor, each once, when its
//! intake's host has had its chance; each one still pending and never attempted gets the due
//! entry intake used to write, and goes out as any due delivery does.

use crate::bindings::mainflux::webhooks::store::{Condition, Entry, Op};
use crate::deliveries::Events;
use crate::deliveries::record::{Delivery, Status};
use crate::error::Result;
use crate::format;
use crate::keys;
use crate::record::Record;
use crate::store::{self, CommitFailure};

/// How long after its creation, beyond its intake's claim, a delivery's first attempt is left
/// to the host that took its message in: that host's queue may hold it a while, and the
/// cursor passes each delivery once, in the order of the times in the ids, when its creation
/// time is this far behind, so hosts sharing a store must keep their clocks closer than this.
pub const FIRST_ATTEMPT_GRACE_MS: u64 = 10_000;
/// Most records one call reads: calls come with every poll of the due index, so this bounds a
/// poll's work while the recovery catches up (a first pass over records made before format 5).
const MOST_READ: u32 = 8_192;
/// Records of the first read of a call: mostly the next record is still in its grace and ends
/// the call.
const FIRST_CHUNK: u32 = 16;
/// Records of each further read.
const CHUNK: u32 = 256;

impl Events<'_> {
    /// Gives every delivery made before `now` less its grace (and its intake's claim) that is
    /// still pending and was never attempted the due entry its intake did not write, and moves
    /// the cursor past the records read; answers how many it gave one. Does nothing before
    /// format 5. A commit that meets another host's (the cursor moved, a record changed) writes
    /// nothing: the next call reads again.
    pub fn recover_first_attempts(&self, now: u64) -> Result<u32> {
        let cursor_key = keys::first_attempts_cursor();
        let mut read = self
            .kv
            .get_many(&[cursor_key.clone(), keys::data_format()])
            .map_err(store::store_error)?;
        if format::of_value(read.pop().flatten().as_deref())? < format::LEAN {
            return Ok(0);
        }
        let cursor = read.pop().flatten();
        let grace = self
            .intake_claim_ms()
            .unwrap_or(0)
            .saturating_add(FIRST_ATTEMPT_GRACE_MS);
        let boundary = now.saturating_sub(grace);

        let prefix = keys::delivery_prefix();
        let mut guards = vec![match &cursor {
            Some(value) => Condition::Equals(Entry {
                key: cursor_key.clone(),
                value: value.clone(),
            }),
            None => Condition::Absent(cursor_key.clone()),
        }];
        let mut ops = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        let mut count = 0u32;
        let mut chunk_size = FIRST_CHUNK;
        'read: loop {
            let after = last.as_deref().or(cursor.as_deref());
            let chunk = self
                .kv
                .scan(&prefix, after, chunk_size, false)
                .map_err(store::store_error)?;
            let full = chunk.len() as u32 == chunk_size;
            for entry in chunk {
                // A record that cannot be read cannot be attempted either: passed over.
                let id = keys::delivery_id(&entry.key);
                if let (Some(id), Ok(delivery)) = (id, Delivery::decode(&entry.value)) {
                    if delivery.created_ms > boundary {
                        break 'read;
                    }
                    if let Some(at) = never_attempted(&delivery) {
                        ops.push(Op::Put(Entry {
                            key: keys::due(at, id),
                            value: delivery.webhook_id.into_bytes(),
                        }));
                        guards.push(Condition::Equals(Entry {
                            key: entry.key.clone(),
                            value: entry.value,
                        }));
                    }
                }
                last = Some(entry.key);
                count += 1;
                if count >= MOST_READ {
                    break 'read;
                }
            }
            if !full {
                break;
            }
            chunk_size = CHUNK;
        }
        let Some(last) = last else { return Ok(0) };
        let recovered = ops.len() as u32;
        ops.push(Op::Put(Entry {
            key: cursor_key,
            value: last,
        }));
        match store::commit(self.kv, &guards, &ops) {
            Ok(()) => Ok(recovered),
            Err(CommitFailure::Conflict(_)) => Ok(0),
            Err(CommitFailure::Store(e)) => Err(e),
        }
    }
}

/// When a delivery that is pending and was never attempted is due, which is where its due
/// entry goes; `None` for any other.
fn never_attempted(delivery: &Delivery) -> Option<u64> {
    (delivery.status == Status::Pending && delivery.attempts.is_empty())
        .then_some(delivery.next_attempt_ms)
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Kv;
    use crate::testing::{
        Deliveries, FixedClock, MemoryKv, NOW, ScriptedSender, WatchedKv, delivery, events, events_at, message,
        publish, store_webhook,
    };

    /// A store in format 5 with one webhook of thing `t`, posting to `url`.
    fn lean(url: &str) -> Deliveries {
        let setting = Deliveries::with_webhooks(&[("w1", "t", url)]);
        format::raise(&setting.kv, format::LEAN).unwrap();
        setting
    }

    fn due_entries(kv: &MemoryKv) -> usize {
        kv.scan(&keys::due_prefix(), None, 100, false).unwrap().len()
    }

    fn ids(due: Vec<crate::bindings::mainflux::webhooks::types::DueDelivery>) -> Vec<String> {
        due.into_iter().map(|d| d.id).collect()
    }

    #[test]
    fn from_format_5_a_delivery_no_host_attempted_is_due_after_its_grace_once() {
        let Deliveries { kv, sender } = lean("http://a/200");
        let events = events(&kv, &sender);
        let attempted = publish(&events, message("t", None, b"1", None));
        let left = publish(&events, message("t", None, b"2", None));
        assert_eq!(due_entries(&kv), 0, "intake writes no due entry");
        events.deliver(&attempted).unwrap();
        assert!(events.due(10).unwrap().is_empty(), "left to its intake's host for now");
        assert_eq!(kv.get(&keys::first_attempts_cursor()).unwrap(), None);

        let clock = FixedClock::at(NOW + FIRST_ATTEMPT_GRACE_MS);
        let later = events_at(&kv, &sender, &clock);
        assert_eq!(ids(later.due(10).unwrap()), left);
        assert_eq!(
            kv.get(&keys::first_attempts_cursor()).unwrap(),
            Some(keys::delivery(&left[0]))
        );
        // Once: the cursor has passed it, and its due entry stays until its outcome.
        assert_eq!(later.recover_first_attempts(NOW + FIRST_ATTEMPT_GRACE_MS).unwrap(), 0);
        assert_eq!(ids(later.due(10).unwrap()), left);
        later.deliver(&left).unwrap();
        assert_eq!(delivery(&kv, &left[0]).status, Status::Delivered);
        assert_eq!(due_entries(&kv), 0);
        assert!(later.due(10).unwrap().is_empty());
        let bodies: Vec<Vec<u8>> = sender.sent.borrow().iter().map(|r| r.body.clone()).collect();
        assert_eq!(bodies, [b"1".to_vec(), b"2".to_vec()], "each sent once");
    }

    #[test]
    fn a_retry_keeps_the_due_entry_its_outcome_wrote() {
        let Deliveries { kv, sender } = lean("http://a/503");
        let events = events(&kv, &sender);
        let ids_made = publish(&events, message("t", None, b"1", None));
        events.deliver(&ids_made).unwrap();
        assert_eq!(due_entries(&kv), 1, "the retry's");
        let clock = FixedClock::at(NOW + FIRST_ATTEMPT_GRACE_MS);
        let later = events_at(&kv, &sender, &clock);
        assert_eq!(later.recover_first_attempts(NOW + FIRST_ATTEMPT_GRACE_MS).unwrap(), 0);
        assert_eq!(ids(later.due(10).unwrap()), ids_made);
        assert_eq!(due_entries(&kv), 1);
    }

    #[test]
    fn a_delivery_attempted_while_the_recovery_read_it_gets_no_due_entry() {
        let (kv, sender) = (WatchedKv::default(), ScriptedSender::default());
        store_webhook(&kv.memory, "w1", "t", "http://a/200", serde_json::Value::Null);
        format::raise(&kv, format::LEAN).unwrap();
        let made = publish(&events(&kv, &sender), message("t", None, b"1", None));
        let clock = FixedClock::at(NOW + FIRST_ATTEMPT_GRACE_MS);
        // The intake's host delivers it between the recovery's read and its commit.
        let racing = made.clone();
        kv.before_next_commit(move |memory| {
            let sender = ScriptedSender::default();
            events(memory, &sender).deliver(&racing).unwrap();
        });
        let later = Events::new(&kv, &sender, &clock).with_lease(0);
        assert_eq!(later.recover_first_attempts(NOW + FIRST_ATTEMPT_GRACE_MS).unwrap(), 0);
        assert_eq!(kv.get(&keys::first_attempts_cursor()).unwrap(), None, "nothing written");
        assert_eq!(due_entries(&kv.memory), 0);
        // Read again, it is delivered: the cursor passes it, no entry.
        assert!(later.due(10).unwrap().is_empty());
        assert_eq!(
            kv.get(&keys::first_attempts_cursor()).unwrap(),
            Some(keys::delivery(&made[0]))
        );
        assert_eq!(due_entries(&kv.memory), 0);
    }

    #[test]
    fn before_format_5_intake_writes_due_entries_and_nothing_is_read() {
        let Deliveries { kv, sender } = Deliveries::with_webhooks(&[("w1", "t", "http://a/200")]);
        format::raise(&kv, format::COMPACT).unwrap();
        let made = publish(&events(&kv, &sender), message("t", None, b"1", None));
        assert_eq!(due_entries(&kv), 1);
        let clock = FixedClock::at(NOW + FIRST_ATTEMPT_GRACE_MS);
        let later = events_at(&kv, &sender, &clock);
        assert_eq!(ids(later.due(10).unwrap()), made);
        assert_eq!(kv.get(&keys::first_attempts_cursor()).unwrap(), None);
    }

    #[test]
    fn a_stopping_host_hands_over_what_it_never_attempted() {
        let Deliveries { kv, sender } = lean("http://a/200");
        let events = events(&kv, &sender);
        let made = publish(&events, message("t", None, b"1", None));
        assert_eq!(events.release(&made).unwrap(), 1);
        assert_eq!(ids(events.due(10).unwrap()), made, "due at once, no grace");
    }
}
