//! Intake: the `on-message` export. A published message becomes one pending, due delivery per
//! enabled webhook of its thing, all in one commit with the payload, so nothing acknowledged is
//! lost (DESIGN.md, principle 3); a message id the thing already published records nothing.

use crate::bindings::exports::mainflux::webhooks::events::{Accepted, Message};
use crate::bindings::mainflux::webhooks::store::{Condition, Entry, Op};
use crate::bindings::mainflux::webhooks::types::DueDelivery;
use crate::deliveries::Events;
use crate::deliveries::record::{Delivery, Status};
use crate::error::{Result, invalid};
use crate::keys;
use crate::record::{FORMAT_VERSION, Record};
use crate::store::{self, CommitFailure};
use crate::webhooks::storage;
use uuid::{ContextV7, Timestamp, Uuid};

/// A version 7 UUID whose 12 bits after the millisecond carry the time to a quarter of a
/// microsecond: each call runs in a fresh instance, so the crate's shared counter starts anew
/// and could not keep two messages of one millisecond in order; the clock can, and the
/// delivery log lists them newest first by this id.
fn time_ordered_id(context: &ContextV7) -> String {
    Uuid::new_v7(Timestamp::now(context)).to_string()
}

impl Events<'_> {
    /// Records one pending delivery per webhook of the thing in one commit, with the message id
    /// when the publisher named one: an id the thing already published records nothing.
    pub fn on_message(&self, message: Message) -> Result<Accepted> {
        let ids = ContextV7::new().with_additional_precision();
        let (message_id, named) = match message.id {
            Some(id) => {
                Uuid::try_parse(&id).map_err(|_| invalid("X-Message-Id must be a UUID"))?;
                (id.to_ascii_lowercase(), true)
            }
            // Time-ordered ids keep the records of one moment together in the store's key
            // order, so a commit touches few pages.
            None => (time_ordered_id(&ids), false),
        };
        let mut webhooks = storage::scan_webhooks(self.kv, &keys::by_thing_prefix(&message.thing_id))?;
        // A disabled webhook gets nothing until a user enables it again.
        webhooks.retain(|webhook| !webhook.disabled);
        if webhooks.is_empty() {
            return Ok(Accepted {
                message_id,
                duplicate: false,
                deliveries: Vec::new(),
            });
        }
        let now = message.received_ms;
        let mut guards = Vec::with_capacity(1);
        let mut ops = Vec::with_capacity(2 + webhooks.len() * 5);
        // Only a publisher that named the message can send it again: an id made here is new,
        // so remembering it would cost two writes per message and never catch a duplicate.
        if named {
            let seen_key = keys::message_id(&message.thing_id, &message_id);
            guards.push(Condition::Absent(seen_key.clone()));
            ops.push(Op::Put(Entry {
                key: keys::message_seen(now, &seen_key),
                value: seen_key.clone(),
            }));
            ops.push(Op::Put(Entry {
                key: seen_key,
                value: now.to_string().into_bytes(),
            }));
        }
        let mut deliveries = Vec::with_capacity(webhooks.len());
        for webhook in &webhooks {
            let delivery = Delivery {
                v: FORMAT_VERSION,
                id: time_ordered_id(&ids),
                webhook_id: webhook.id.clone(),
                thing_id: message.thing_id.clone(),
                message_id: message_id.clone(),
                content_type: message.content_type.clone(),
                subtopic: message.subtopic.clone(),
                status: Status::Pending,
                created_ms: now,
                next_attempt_ms: Some(now),
                attempts: Vec::new(),
            };
            ops.push(Op::Put(Entry {
                key: keys::payload(&delivery.id),
                value: message.payload.clone(),
            }));
            ops.push(Op::Put(Entry {
                key: keys::due(now, &delivery.id),
                value: webhook.id.clone().into_bytes(),
            }));
            ops.push(Op::Put(Entry {
                key: keys::created(now, &delivery.id),
                value: webhook.id.clone().into_bytes(),
            }));
            ops.push(Op::Put(Entry {
                key: keys::log_entry(&webhook.id, now, &delivery.id),
                value: Status::name(Status::Pending).as_bytes().to_vec(),
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
        match store::commit(self.kv, &guards, &ops) {
            Ok(()) => Ok(Accepted {
                message_id,
                duplicate: false,
                deliveries,
            }),
            Err(CommitFailure::Conflict(_)) => Ok(Accepted {
                message_id,
                duplicate: true,
                deliveries: Vec::new(),
            }),
            Err(CommitFailure::Store(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::bindings::exports::mainflux::webhooks::events::DeliveryStatus;
    use crate::keys;
    use crate::ports::Kv;
    use crate::testing::{Deliveries, events, message};

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
}
