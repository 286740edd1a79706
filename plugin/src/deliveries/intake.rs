//! Intake: the `on-message` and `on-messages` exports. A published message becomes one
//! pending, due delivery per enabled webhook of its thing, all in one commit with the payload,
//! so nothing acknowledged is lost (DESIGN.md, principle 3); a message id the thing already
//! published records nothing. A batch of messages shares one commit and one read of each
//! thing's webhooks.

use crate::bindings::exports::mainflux::webhooks::events::{Accepted, Message};
use crate::bindings::mainflux::webhooks::store::{Condition, Entry, Op};
use crate::bindings::mainflux::webhooks::types::DueDelivery;
use crate::deliveries::Events;
use crate::deliveries::record::{Delivery, Status};
use crate::error::{Result, invalid};
use crate::format;
use crate::keys;
use crate::record::{FORMAT_VERSION, Record};
use crate::store::{self, CommitFailure};
use crate::webhooks::record::Webhook;
use crate::webhooks::storage;
use std::collections::{HashMap, HashSet};
use uuid::{ContextV7, Timestamp, Uuid};

/// A version 7 UUID whose 12 bits after the millisecond carry the time to a quarter of a
/// microsecond: each call runs in a fresh instance, so the crate's shared counter starts anew
/// and could not keep two messages of one millisecond in order; the clock can, and the
/// delivery log lists them newest first by this id.
fn time_ordered_id(context: &ContextV7) -> String {
    Uuid::new_v7(Timestamp::now(context)).to_string()
}

/// A message ready to commit: its answer, and its guard and writes.
struct Prepared {
    /// Its place in the call's list.
    index: usize,
    /// The key remembering a named message's id, which must be absent: the thing has not
    /// published it before.
    seen_key: Option<Vec<u8>>,
    ops: Vec<Op>,
    accepted: Accepted,
}

impl Events<'_> {
    /// Records one pending delivery per webhook of the thing in one commit, with the message id
    /// when the publisher named one: an id the thing already published records nothing.
    pub fn on_message(&self, message: Message) -> Result<Accepted> {
        self.on_messages(vec![message])?.pop().expect("one answer per message")
    }

    /// Records the deliveries of each message as [`Events::on_message`] does, all in one
    /// commit, reading each thing's webhooks once: one answer per message, in order. A message
    /// with an invalid id is refused alone; a store failure fails the call, nothing recorded.
    pub fn on_messages(&self, messages: Vec<Message>) -> Result<Vec<Result<Accepted>>> {
        let ids = ContextV7::new().with_additional_precision();
        let mut answers: Vec<Option<Result<Accepted>>> = (0..messages.len()).map(|_| None).collect();
        let (webhooks_of, stored_format) = self.enabled_webhooks_of(&messages)?;
        let layout = Layout::of_format(stored_format);
        let mut named_here: HashSet<Vec<u8>> = HashSet::new();
        let mut prepared = Vec::with_capacity(messages.len());
        for (index, message) in messages.into_iter().enumerate() {
            let (message_id, named) = match &message.id {
                Some(id) => {
                    if Uuid::try_parse(id).is_err() {
                        answers[index] = Some(Err(invalid("X-Message-Id must be a UUID")));
                        continue;
                    }
                    (id.to_ascii_lowercase(), true)
                }
                // Time-ordered ids keep the records of one moment together in the store's key
                // order, so a commit touches few pages.
                None => (time_ordered_id(&ids), false),
            };
            let webhooks = &webhooks_of[&message.thing_id];
            let seen_key = named.then(|| keys::message_id(&message.thing_id, &message_id));
            let repeated = seen_key.as_ref().is_some_and(|key| !named_here.insert(key.clone()));
            if webhooks.is_empty() || repeated {
                answers[index] = Some(Ok(Accepted {
                    message_id,
                    duplicate: repeated,
                    deliveries: Vec::new(),
                }));
                continue;
            }
            let due_ms = message.received_ms.saturating_add(self.intake_claim_ms().unwrap_or(0));
            prepared.push(prepare(
                &ids, index, message, message_id, seen_key, webhooks, due_ms, layout,
            ));
        }
        for (index, accepted) in self.commit_messages(prepared)? {
            answers[index] = Some(Ok(accepted));
        }
        Ok(answers
            .into_iter()
            .map(|answer| answer.expect("every message is answered"))
            .collect())
    }

    /// The enabled webhooks of each thing the messages come from, and the stored data format
    /// (which says how deliveries are written), read in one store call: a disabled webhook gets
    /// nothing until a user enables it again.
    fn enabled_webhooks_of(&self, messages: &[Message]) -> Result<(HashMap<String, Vec<Webhook>>, u32)> {
        let mut things: Vec<&str> = Vec::new();
        for message in messages {
            if !things.contains(&message.thing_id.as_str()) {
                things.push(&message.thing_id);
            }
        }
        let prefixes: Vec<Vec<u8>> = things.iter().map(|thing| keys::by_thing_prefix(thing)).collect();
        let (found, stored_format) = storage::scan_webhooks_and_key(self.kv, &prefixes, &keys::data_format())?;
        let stored_format = format::of_value(stored_format.as_deref())?;
        let webhooks = things
            .into_iter()
            .zip(found)
            .map(|(thing, mut webhooks)| {
                webhooks.retain(|webhook| !webhook.disabled);
                (thing.to_owned(), webhooks)
            })
            .collect();
        Ok((webhooks, stored_format))
    }

    /// Commits the prepared messages together. A guard that fails is a message id published
    /// before: that message is a duplicate, recorded nothing, and the others go in without it;
    /// after a first such failure every remaining id is read, so a batch sent again whole
    /// takes two commits, not one per message.
    fn commit_messages(&self, mut prepared: Vec<Prepared>) -> Result<Vec<(usize, Accepted)>> {
        let mut answers = Vec::with_capacity(prepared.len());
        let mut ids_read = false;
        while !prepared.is_empty() {
            let mut guards = Vec::new();
            let mut guarded = Vec::new();
            for (at, message) in prepared.iter().enumerate() {
                if let Some(key) = &message.seen_key {
                    guards.push(Condition::Absent(key.clone()));
                    guarded.push(at);
                }
            }
            let counts: Vec<usize> = prepared.iter().map(|message| message.ops.len()).collect();
            let ops: Vec<Op> = prepared
                .iter_mut()
                .flat_map(|message| std::mem::take(&mut message.ops))
                .collect();
            let failed = match store::commit(self.kv, &guards, &ops) {
                Ok(()) => {
                    answers.extend(prepared.into_iter().map(|message| (message.index, message.accepted)));
                    return Ok(answers);
                }
                Err(CommitFailure::Conflict(guard)) => guarded[guard],
                Err(CommitFailure::Store(e)) => return Err(e),
            };
            let mut ops = ops.into_iter();
            for (message, count) in prepared.iter_mut().zip(counts) {
                message.ops = ops.by_ref().take(count).collect();
            }
            let mut repeated = vec![failed];
            if !ids_read {
                ids_read = true;
                let keys: Vec<Vec<u8>> = guarded.iter().filter_map(|&at| prepared[at].seen_key.clone()).collect();
                let stored = self.kv.get_many(&keys).map_err(store::store_error)?;
                repeated.extend(
                    guarded
                        .iter()
                        .zip(stored)
                        .filter(|(_, value)| value.is_some())
                        .map(|(&at, _)| at),
                );
            }
            repeated.sort_unstable();
            repeated.dedup();
            for at in repeated.into_iter().rev() {
                let message = prepared.remove(at);
                answers.push((
                    message.index,
                    Accepted {
                        message_id: message.accepted.message_id,
                        duplicate: true,
                        deliveries: Vec::new(),
                    },
                ));
            }
        }
        Ok(answers)
    }
}

/// Where a new delivery's payload and status go, and which indexes it gets (`format`).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// The payload inside the record, no creation-index entry: three writes a delivery; else
    /// the earlier layout, which versions before format 4 read: five writes a delivery.
    compact: bool,
    /// The log entry carries the delivery's status, which each outcome rewrites, and the
    /// first attempt has a due entry (before format 5); else the log entry is empty, the status
    /// lives in the record alone, and the first attempt is left to the host that took the
    /// message in (or, if it never makes it, to the recovery of first attempts).
    before_lean: bool,
    /// The record packed rather than JSON (format 6).
    packed: bool,
}

impl Layout {
    /// How a store in `format` takes new deliveries.
    fn of_format(format: u32) -> Self {
        Layout {
            compact: format >= format::COMPACT,
            before_lean: format < format::LEAN,
            packed: format >= format::PACKED,
        }
    }
}

/// The writes of one message: one pending delivery per webhook, due at `due_ms` (now, or the
/// end of the intake's claim when hosts share the store), with the payload; and the message
/// id, remembered under a guard, when the publisher named it.
#[allow(clippy::too_many_arguments)]
fn prepare(
    ids: &ContextV7,
    index: usize,
    message: Message,
    message_id: String,
    seen_key: Option<Vec<u8>>,
    webhooks: &[Webhook],
    due_ms: u64,
    layout: Layout,
) -> Prepared {
    let now = message.received_ms;
    let mut ops = Vec::with_capacity(2 + webhooks.len() * 5);
    // Only a publisher that named the message can send it again: an id made here is new,
    // so remembering it would cost two writes per message and never catch a duplicate.
    if let Some(seen_key) = &seen_key {
        ops.push(Op::Put(Entry {
            key: keys::message_seen(now, seen_key),
            value: seen_key.clone(),
        }));
        ops.push(Op::Put(Entry {
            key: seen_key.clone(),
            value: now.to_string().into_bytes(),
        }));
    }
    let mut deliveries = Vec::with_capacity(webhooks.len());
    for webhook in webhooks {
        let delivery = Delivery {
            v: FORMAT_VERSION,
            id: time_ordered_id(ids),
            webhook_id: webhook.id.clone(),
            thing_id: message.thing_id.clone(),
            message_id: message_id.clone(),
            content_type: message.content_type.clone(),
            subtopic: message.subtopic.clone(),
            status: Status::Pending,
            created_ms: now,
            next_attempt_ms: Some(due_ms),
            attempts: Vec::new(),
            payload: layout.compact.then(|| message.payload.clone()),
            packed: layout.packed,
        };
        if !layout.compact {
            ops.push(Op::Put(Entry {
                key: keys::payload(&delivery.id),
                value: message.payload.clone(),
            }));
            ops.push(Op::Put(Entry {
                key: keys::created(now, &delivery.id),
                value: webhook.id.clone().into_bytes(),
            }));
        }
        if layout.before_lean {
            ops.push(Op::Put(Entry {
                key: keys::due(due_ms, &delivery.id),
                value: webhook.id.clone().into_bytes(),
            }));
        }
        ops.push(Op::Put(Entry {
            key: keys::log_entry(&webhook.id, now, &delivery.id),
            value: if layout.before_lean {
                Status::name(Status::Pending).as_bytes().to_vec()
            } else {
                Vec::new()
            },
        }));
        ops.push(Op::Put(Entry {
            key: keys::delivery(&delivery.id),
            value: delivery.encode(),
        }));
        deliveries.push(DueDelivery {
            id: delivery.id,
            webhook_id: webhook.id.clone(),
        });
    }
    Prepared {
        index,
        seen_key,
        ops,
        accepted: Accepted {
            message_id,
            duplicate: false,
            deliveries,
        },
    }
}

#[cfg(test)]
mod tests {
    use crate::bindings::exports::mainflux::webhooks::events::DeliveryStatus;
    use crate::bindings::exports::mainflux::webhooks::events::Message;
    use crate::deliveries::record::Status;
    use crate::keys;
    use crate::ports::Kv;
    use crate::testing::{Deliveries, delivery, events, message};

    #[test]
    fn ids_made_in_one_call_and_in_calls_a_microsecond_apart_are_in_time_order() {
        let context = super::ContextV7::new().with_additional_precision();
        let mut ids: Vec<String> = (0..2_000).map(|_| super::time_ordered_id(&context)).collect();
        for _ in 0..50 {
            std::thread::sleep(std::time::Duration::from_micros(1));
            ids.push(super::time_ordered_id(
                &super::ContextV7::new().with_additional_precision(),
            ));
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids);
    }

    #[test]
    fn a_message_records_one_due_delivery_per_webhook_of_its_thing() {
        let Deliveries { kv, sender } = Deliveries::with_webhooks(&[
            ("w1", "t", "http://a/200"),
            ("w2", "t", "http://b/200"),
            ("w3", "other", "http://c/200"),
        ]);
        let events = events(&kv, &sender);
        let accepted = events.on_message(message("t", None, b"\x00\xffbinary", None)).unwrap();
        assert!(!accepted.duplicate);
        let mut webhooks: Vec<_> = accepted.deliveries.iter().map(|d| d.webhook_id.as_str()).collect();
        webhooks.sort();
        assert_eq!(webhooks, ["w1", "w2"]);
        assert_eq!(events.due(100).unwrap().len(), 2);
        let logged = kv.scan(&keys::log_prefix("w1"), None, 10, false).unwrap();
        assert_eq!(logged.len(), 1, "the delivery is in its webhook's log at once");
        assert_eq!(logged[0].value, b"pending");
        let ids: Vec<String> = accepted.deliveries.iter().map(|d| d.id.clone()).collect();
        let outcomes = events.deliver(&ids).unwrap();
        assert!(outcomes.iter().all(|o| o.status == DeliveryStatus::Delivered));
        assert!(sender.sent.borrow().iter().all(|r| r.body == b"\x00\xffbinary"));
        assert!(events.due(100).unwrap().is_empty());
        assert_eq!(
            kv.get(&keys::payload(&ids[0])).unwrap(),
            None,
            "payload dropped once delivered"
        );
        assert!(
            events.deliver(&ids).unwrap().is_empty(),
            "a delivered delivery is not attempted again"
        );
    }

    #[test]
    fn in_format_4_a_delivery_is_three_writes_and_its_record_holds_the_payload_until_sent() {
        let Deliveries { kv, sender } =
            Deliveries::with_webhooks(&[("w1", "t", "http://a/200"), ("w2", "t", "http://b/503")]);
        crate::format::raise(&kv, crate::format::COMPACT).unwrap();
        let before: Vec<Vec<u8>> = kv.map.borrow().keys().cloned().collect();
        let events = events(&kv, &sender);
        let ids = crate::testing::publish(&events, message("t", None, b"\x00\xffbinary\x00", None));
        let written: Vec<Vec<u8>> = kv
            .map
            .borrow()
            .keys()
            .filter(|key| !before.contains(key))
            .cloned()
            .collect();
        assert_eq!(
            written.len(),
            2 * 3,
            "a record, a due entry and a log entry each: {written:?}"
        );
        assert!(
            written
                .iter()
                .all(|key| [&b"dl"[..], b"dd", b"dw"].contains(&&key[..2]))
        );
        for id in &ids {
            assert_eq!(delivery(&kv, id).payload.as_deref(), Some(&b"\x00\xffbinary\x00"[..]));
        }
        let outcomes = events.deliver(&ids).unwrap();
        assert_eq!(outcomes.len(), 2);
        assert!(sender.sent.borrow().iter().all(|r| r.body == b"\x00\xffbinary\x00"));
        let delivered = ids
            .iter()
            .find(|id| delivery(&kv, id).status == Status::Delivered)
            .unwrap();
        let pending = ids
            .iter()
            .find(|id| delivery(&kv, id).status == Status::Pending)
            .unwrap();
        assert_eq!(delivery(&kv, delivered).payload, None, "dropped once delivered");
        assert!(delivery(&kv, pending).payload.is_some(), "kept for the retry");
        assert!(
            kv.map
                .borrow()
                .keys()
                .all(|key| !key.starts_with(b"dp") && !key.starts_with(b"dc"))
        );
    }

    #[test]
    fn a_failed_compact_delivery_keeps_its_payload_for_a_retry() {
        use crate::deliveries::log::DeliveryLog;
        use crate::testing::{AT_NOW, FixedAccess};
        let Deliveries { kv, sender } = Deliveries::default();
        let mut webhook = crate::testing::webhook("w", "t", "w");
        (webhook.group_id, webhook.url) = ("g1".into(), "http://a/malformed".into());
        crate::testing::store(&kv, &webhook);
        crate::format::raise(&kv, crate::format::COMPACT).unwrap();
        let events = events(&kv, &sender);
        let ids = crate::testing::publish(&events, message("t", None, b"again", None));
        assert_eq!(events.deliver(&ids).unwrap()[0].status, DeliveryStatus::Failed);
        assert_eq!(delivery(&kv, &ids[0]).payload.as_deref(), Some(&b"again"[..]));
        DeliveryLog::new(&kv, &FixedAccess, &AT_NOW)
            .retry("editor", "w", &ids[0])
            .unwrap();
        events.deliver(&ids).unwrap();
        let sent = sender.sent.borrow();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[1].body, b"again");
    }

    #[test]
    fn deliveries_of_both_layouts_go_out_side_by_side() {
        let Deliveries { kv, sender } = Deliveries::with_webhooks(&[("w1", "t", "http://a/200")]);
        let events = events(&kv, &sender);
        let separate = crate::testing::publish(&events, message("t", None, b"earlier", None));
        assert!(kv.get(&keys::payload(&separate[0])).unwrap().is_some());
        assert_eq!(delivery(&kv, &separate[0]).payload, None);
        crate::format::raise(&kv, crate::format::COMPACT).unwrap();
        let compact = crate::testing::publish(&events, message("t", None, b"compact", None));
        assert_eq!(kv.get(&keys::payload(&compact[0])).unwrap(), None);
        let both = [separate[0].clone(), compact[0].clone()];
        let outcomes = events.deliver(&both).unwrap();
        assert!(outcomes.iter().all(|o| o.status == DeliveryStatus::Delivered));
        let bodies: Vec<Vec<u8>> = sender.sent.borrow().iter().map(|r| r.body.clone()).collect();
        assert_eq!(bodies, [b"earlier".to_vec(), b"compact".to_vec()]);
        assert_eq!(
            kv.get(&keys::payload(&separate[0])).unwrap(),
            None,
            "dropped once delivered"
        );
        assert!(both.iter().all(|id| delivery(&kv, id).payload.is_none()));
    }

    #[test]
    fn a_repeated_message_id_records_nothing() {
        let Deliveries { kv, sender } = Deliveries::with_webhooks(&[("w1", "t", "http://a/200")]);
        let events = events(&kv, &sender);
        let id = "7f1c1d2e-1111-4222-8333-444455556666";
        assert_eq!(
            events
                .on_message(message("t", Some(id), b"x", None))
                .unwrap()
                .deliveries
                .len(),
            1
        );
        let again = events
            .on_message(message("t", Some(&id.to_uppercase()), b"x", None))
            .unwrap();
        assert!(again.duplicate && again.deliveries.is_empty());
        assert!(matches!(
            events.on_message(message("t", Some("nope"), b"x", None)),
            Err(crate::Error::Invalid(_))
        ));
    }

    #[test]
    fn a_batch_answers_each_message_in_order_and_reads_each_thing_once() {
        use crate::testing::{WatchedKv, store_webhook};
        let kv = WatchedKv::default();
        store_webhook(&kv.memory, "w1", "t1", "http://a/200", serde_json::Value::Null);
        store_webhook(&kv.memory, "w2", "t1", "http://b/200", serde_json::Value::Null);
        store_webhook(&kv.memory, "w3", "t2", "http://c/200", serde_json::Value::Null);
        let sender = crate::testing::ScriptedSender::default();
        let events = events(&kv, &sender);
        let before = "7f1c1d2e-1111-4222-8333-000000000001";
        let again = "7f1c1d2e-1111-4222-8333-000000000002";
        events.on_message(message("t2", Some(before), b"old", None)).unwrap();
        kv.take_scanned();
        let scan_calls_before = kv.scan_calls();
        let answers = events
            .on_messages(vec![
                message("t1", None, b"one", None),
                message("t2", Some(before), b"published before", None),
                message("t1", Some("not-a-uuid"), b"invalid", None),
                message("t2", Some(again), b"first", None),
                message("t2", Some(&again.to_uppercase()), b"repeated in the batch", None),
                message("t3", None, b"no webhooks", None),
                message("t1", None, b"two", None),
            ])
            .unwrap();
        let summary: Vec<_> = answers
            .iter()
            .map(|answer| match answer {
                Ok(accepted) => format!("{} {}", accepted.duplicate, accepted.deliveries.len()),
                Err(error) => format!("{error:?}").split('(').next().unwrap().to_owned(),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "false 2",
                "true 0",
                "Error::Invalid",
                "false 1",
                "true 0",
                "false 0",
                "false 2"
            ]
        );
        assert_eq!(answers[3].as_ref().unwrap().message_id, again);
        assert_eq!(answers[4].as_ref().unwrap().message_id, again);
        let mut scanned = kv.take_scanned();
        scanned.sort();
        assert_eq!(
            scanned,
            [
                keys::data_format(),
                keys::by_thing_prefix("t1"),
                keys::by_thing_prefix("t2"),
                keys::by_thing_prefix("t3")
            ],
            "each thing's webhooks are read once, with the stored format"
        );
        assert_eq!(kv.scan_calls() - scan_calls_before, 1, "in one store call");
        assert_eq!(events.due(100).unwrap().len(), 1 + 2 + 1 + 2);
        let payloads: Vec<Vec<u8>> = answers
            .iter()
            .filter_map(|answer| answer.as_ref().ok())
            .flat_map(|accepted| accepted.deliveries.iter())
            .map(|d| kv.get(&keys::payload(&d.id)).unwrap().unwrap())
            .collect();
        assert_eq!(
            payloads,
            [&b"one"[..], b"one", b"first", b"two", b"two"],
            "each delivery carries its own message's payload"
        );
    }

    #[test]
    fn ids_published_meanwhile_make_duplicates_and_the_rest_goes_in() {
        use crate::testing::{WatchedKv, store_webhook};
        let kv = WatchedKv::default();
        store_webhook(&kv.memory, "w1", "t", "http://a/200", serde_json::Value::Null);
        let sender = crate::testing::ScriptedSender::default();
        let events = events(&kv, &sender);
        let ids: Vec<String> = (0..12).map(|i| format!("7f1c1d2e-1111-4222-8333-{i:012}")).collect();
        let batch = || {
            ids.iter()
                .map(|id| message("t", Some(id), b"x", None))
                .collect::<Vec<_>>()
        };
        // Another host takes in three of the messages just before this batch commits.
        let taken: Vec<Message> = [1, 5, 9]
            .iter()
            .map(|&i| message("t", Some(&ids[i]), b"x", None))
            .collect();
        let other = std::rc::Rc::new(std::cell::RefCell::new(Some(taken)));
        let hand = other.clone();
        kv.before_next_commit(move |memory| {
            let sender = crate::testing::ScriptedSender::default();
            let other_host = crate::testing::events(memory, &sender);
            for answer in other_host.on_messages(hand.borrow_mut().take().unwrap()).unwrap() {
                assert!(!answer.unwrap().duplicate);
            }
        });
        let answers = events.on_messages(batch()).unwrap();
        let duplicates: Vec<usize> = answers
            .iter()
            .enumerate()
            .filter(|(_, answer)| answer.as_ref().unwrap().duplicate)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(duplicates, [1, 5, 9]);
        assert_eq!(events.due(100).unwrap().len(), 12);
        // The whole batch again: every message a duplicate, more than the retries of one
        // guarded commit.
        let answers = events.on_messages(batch()).unwrap();
        assert!(answers.iter().all(|answer| answer.as_ref().unwrap().duplicate));
        assert_eq!(events.due(100).unwrap().len(), 12);
        drop(other);
    }
}
