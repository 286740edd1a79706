//! Attempts: finding due deliveries, claiming a batch, asking each one's transform (if its
//! webhook has one) what to send, sending every request of it at once through the [`Sender`]
//! port, and recording each outcome (delivered, skipped by the transform, retried on the
//! policy's schedule, or failed), disabling a webhook whose receiver answered 410 Gone. Claims
//! and releases move a delivery's next attempt under a guard, so hosts sharing a store attempt
//! a delivery once at a time.

use std::collections::HashMap;

use crate::bindings::exports::mainflux::webhooks::events::{AttemptOutcome, DeliveryStatus};
use crate::bindings::mainflux::webhooks::store::{Condition, Entry, Op};
use crate::bindings::mainflux::webhooks::types::DueDelivery;
use crate::deliveries::Events;
use crate::deliveries::record::{self, Attempt, Delivery, Status};
use crate::deliveries::request::{request_for, transformed_request};
use crate::deliveries::retry::{Verdict, retry_after_ms, verdict};
use crate::deliveries::transform::{Decision, decide};
use crate::error::{Result, internal};
use crate::format;
use crate::keys;
use crate::ports::{AttemptResult, Request, TransformMessage};
use crate::record::Record;
use crate::store::{self, Step};
use crate::webhooks::record::Webhook;
use crate::webhooks::storage;

impl Events<'_> {
    /// Deliveries due now, oldest first, after giving the first attempts that no host made
    /// their due entries (from format 5, [`Events::recover_first_attempts`]).
    pub fn due(&self, limit: u32) -> Result<Vec<DueDelivery>> {
        let now = self.clock.now_ms();
        self.recover_first_attempts(now)?;
        let entries = self
            .kv
            .scan(&keys::due_prefix(), None, limit, false)
            .map_err(store::store_error)?;
        let mut due = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some(at) = keys::due_time(&entry.key) else { continue };
            if at > now {
                break;
            }
            let Some(id) = keys::time_key_id(&entry.key).map(str::to_owned) else {
                continue;
            };
            let webhook_id = String::from_utf8_lossy(&entry.value).into_owned();
            due.push(DueDelivery { id, webhook_id });
        }
        Ok(due)
    }

    /// Attempts each due, pending delivery of the list once, all requests in flight together,
    /// and records every outcome. A delivery still under the claim of the intake that
    /// created it is attempted too: only the host that took its message in knows its id
    /// before it is due.
    pub fn deliver(&self, ids: &[String]) -> Result<Vec<AttemptOutcome>> {
        self.attempt(ids, &[])
    }

    /// As [`Events::deliver`], given each delivery with the webhook the host queued it under:
    /// the records, those webhooks and the data format come in one store call. The records
    /// decide: a webhook of theirs not among those named is read after, on its own.
    pub fn deliver_queued(&self, deliveries: &[DueDelivery]) -> Result<Vec<AttemptOutcome>> {
        let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
        let mut named: Vec<&str> = deliveries.iter().map(|d| d.webhook_id.as_str()).collect();
        named.sort_unstable();
        named.dedup();
        self.attempt(&ids, &named)
    }

    /// Attempts the deliveries of `ids`, reading the webhooks of `named` with their records.
    fn attempt(&self, ids: &[String], named: &[&str]) -> Result<Vec<AttemptOutcome>> {
        let now = self.clock.now_ms();
        let (due, stored_format, mut webhooks) = self.load_for_attempt(ids, named, |d| {
            d.status == Status::Pending && (d.next_attempt_ms.is_none_or(|at| at <= now) || self.intake_claimed(d, now))
        })?;
        let status_in_log = stored_format < format::LEAN;
        // Fresh ones go out under the intake's claim; the others are claimed here.
        let (mut batch, to_claim): (Vec<_>, Vec<_>) = due.into_iter().partition(|(d, _)| {
            self.intake_claimed(d, now) && now <= d.created_ms.saturating_add(self.fresh_window_ms())
        });
        batch.extend(self.claim(to_claim, now)?);
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let unread = batch
            .iter()
            .map(|(d, _)| d.webhook_id.as_str())
            .filter(|webhook| named.binary_search(webhook).is_err());
        webhooks.extend(self.load_webhooks(unread)?);
        let separate = self.separate_payloads(&batch)?;
        // Cloned, not taken: an id asked for twice is in the batch twice.
        let payloads: Vec<Option<Vec<u8>>> = batch
            .iter()
            .map(|(d, _)| d.payload.clone().or_else(|| separate.get(&d.id).cloned()))
            .collect();

        // Build every request, transforms asked one after another, then send the ones that
        // have somewhere to go, all together.
        let mut results: Vec<Option<Settled>> = (0..batch.len()).map(|_| None).collect();
        let mut requests = Vec::with_capacity(batch.len());
        let mut sent = Vec::with_capacity(batch.len());
        for (index, ((delivery, _), payload)) in batch.iter().zip(payloads).enumerate() {
            let settled = match (webhooks.get(&delivery.webhook_id), payload) {
                (Some(webhook), _) if webhook.disabled => Settled::permanent("webhook disabled"),
                (Some(webhook), Some(payload)) => match self.prepare(webhook, delivery, payload, now)? {
                    Prepared::Send(request) => {
                        requests.push(request);
                        sent.push(index);
                        continue;
                    }
                    Prepared::Settled(settled) => settled,
                },
                (None, _) => Settled::permanent("webhook removed"),
                // Only expiry removes a pending delivery's payload; fail this one rather than
                // the whole batch, again and again.
                (_, None) => Settled::permanent("payload no longer kept"),
            };
            results[index] = Some(settled);
        }
        let started = self.clock.now_ms();
        for (index, result) in sent.into_iter().zip(self.sender.send_all(&requests)) {
            results[index] = Some(Settled::Attempted(result));
        }
        let finished = self.clock.now_ms();

        let mut outcomes = Vec::with_capacity(batch.len());
        let mut updates = Vec::with_capacity(batch.len());
        let mut gone: Vec<String> = Vec::new();
        for ((delivery, stored), result) in batch.into_iter().zip(results) {
            let result = result.expect("every delivery has a result");
            if matches!(&result, Settled::Attempted(AttemptResult::Answered(answer)) if answer.status == 410)
                && !gone.contains(&delivery.webhook_id)
            {
                gone.push(delivery.webhook_id.clone());
            }
            let retry = |attempts: usize, answer: &AttemptResult| {
                let asked = match answer {
                    AttemptResult::Answered(answer) => answer
                        .retry_after
                        .as_deref()
                        .and_then(|value| retry_after_ms(value, finished)),
                    _ => None,
                };
                self.policy.next_attempt(finished, attempts, (self.random)(), asked)
            };
            let (mut updated, outcome) = apply(delivery, &result, started, finished, retry);
            if matches!(updated.status, Status::Delivered | Status::Skipped) {
                // Nothing will be sent again: a retry is refused for both.
                updated.payload = None;
            }
            outcomes.push(outcome);
            updates.push((updated, stored));
        }
        self.record(updates, status_in_log)?;
        for webhook_id in gone {
            self.disable(
                &webhook_id,
                format!("receiver answered 410 Gone at {}", record::rfc3339(finished)),
            )?;
        }
        Ok(outcomes)
    }

    /// The request of one delivery, or, when its webhook's transform skips the message or
    /// fails, how the delivery settles without one.
    fn prepare(&self, webhook: &Webhook, delivery: &Delivery, payload: Vec<u8>, now: u64) -> Result<Prepared> {
        let Some(transform) = &webhook.transform else {
            return Ok(Prepared::Send(request_for(webhook, delivery, payload, now / 1000)));
        };
        let message = TransformMessage {
            payload,
            // As the Content-Type rule reads it: an empty one is none.
            content_type: delivery.content_type.clone().filter(|c| !c.is_empty()),
            subtopic: delivery.subtopic.clone(),
            thing_id: delivery.thing_id.clone(),
            message_id: delivery.message_id.clone(),
        };
        Ok(match decide(self.kv, self.transformer, webhook, transform, &message)? {
            Decision::Send(changes) => Prepared::Send(transformed_request(
                webhook,
                delivery,
                message.payload,
                changes,
                now / 1000,
            )),
            Decision::Skip(reason) => Prepared::Settled(Settled::Skipped(reason)),
            // The same answer would come again: not retried.
            Decision::Fail(reason) => Prepared::Settled(Settled::Attempted(AttemptResult::Permanent(reason))),
        })
    }

    /// Whether a delivery is still under the claim its intake took: never attempted, due
    /// exactly when that claim ends, which no other claim or release gives it (they move the
    /// next attempt to a lease after a time when it was due, or to then), and not yet there.
    fn intake_claimed(&self, delivery: &Delivery, now: u64) -> bool {
        self.intake_claim_ms().is_some_and(|claim| {
            let ends = delivery.created_ms.saturating_add(claim);
            delivery.attempts.is_empty() && delivery.next_attempt_ms == Some(ends) && now < ends
        })
    }

    /// Takes the deliveries of a batch for one attempt: each one's next attempt moves to the end
    /// of the lease, guarded by the record as read, so a host sharing the store that read the
    /// same due deliveries skips them, and a host that dies mid-attempt leaves them due again
    /// when the lease ends. Answers the deliveries this call won, as now stored.
    /// A lease of 0 means the store has one host only, which never runs an attempt twice at
    /// once: nothing is claimed.
    fn claim(&self, batch: Vec<(Delivery, Vec<u8>)>, now: u64) -> Result<Vec<(Delivery, Vec<u8>)>> {
        if self.lease_ms == 0 {
            return Ok(batch);
        }
        self.reschedule(batch, now.saturating_add(self.lease_ms))
    }

    /// Makes each pending delivery of the list whose next attempt lies ahead (a claim), or
    /// which was never attempted, due now, with its due entry; answers how many. A delivery
    /// made in format 5 has no due entry until then: the host stopping hands it over at once
    /// instead of leaving it to the recovery of first attempts.
    pub fn release(&self, ids: &[String]) -> Result<u32> {
        let now = self.clock.now_ms();
        let pending = self.load_deliveries(ids, |d| {
            d.status == Status::Pending && (d.next_attempt_ms.is_some_and(|at| at > now) || d.attempts.is_empty())
        })?;
        // Of those due already, only the ones without a due entry need one.
        let (claimed, due): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|(d, _)| d.next_attempt_ms.is_some_and(|at| at > now));
        let due_keys: Vec<Vec<u8>> = due
            .iter()
            .map(|(d, _)| keys::due(d.next_attempt_ms.unwrap_or(0), &d.id))
            .collect();
        let entries = if due_keys.is_empty() {
            Vec::new()
        } else {
            self.kv.get_many(&due_keys).map_err(store::store_error)?
        };
        let unlisted = due
            .into_iter()
            .zip(entries)
            .filter(|(_, entry)| entry.is_none())
            .map(|(delivery, _)| delivery);
        let released: Vec<_> = claimed.into_iter().chain(unlisted).collect();
        Ok(self.reschedule(released, now)?.len() as u32)
    }

    /// The payloads of the batch's deliveries of the earlier layout, by id, in one read when
    /// there are any: the compact layout holds them in the record.
    fn separate_payloads(&self, batch: &[(Delivery, Vec<u8>)]) -> Result<HashMap<String, Vec<u8>>> {
        let ids: Vec<&str> = batch
            .iter()
            .filter(|(d, _)| d.payload.is_none())
            .map(|(d, _)| d.id.as_str())
            .collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| keys::payload(id)).collect();
        let stored = self.kv.get_many(&keys).map_err(store::store_error)?;
        Ok(ids
            .into_iter()
            .zip(stored)
            .filter_map(|(id, payload)| Some((id.to_owned(), payload?)))
            .collect())
    }

    /// The stored deliveries of the list that `keep` accepts, each with its record's bytes.
    fn load_deliveries(&self, ids: &[String], keep: impl Fn(&Delivery) -> bool) -> Result<Vec<(Delivery, Vec<u8>)>> {
        let record_keys: Vec<Vec<u8>> = ids.iter().map(|id| keys::delivery(id)).collect();
        let stored = self.kv.get_many(&record_keys).map_err(store::store_error)?;
        decode_kept(stored, keep)
    }

    /// As [`Events::load_deliveries`], with the stored data format and the webhooks of `named`
    /// that exist (by id), all read in one store call.
    fn load_for_attempt(
        &self,
        ids: &[String],
        named: &[&str],
        keep: impl Fn(&Delivery) -> bool,
    ) -> Result<(Loaded, u32, HashMap<String, Webhook>)> {
        let mut read_keys: Vec<Vec<u8>> = Vec::with_capacity(ids.len() + 1 + named.len());
        read_keys.extend(ids.iter().map(|id| keys::delivery(id)));
        read_keys.push(keys::data_format());
        read_keys.extend(named.iter().map(|id| keys::webhook(id)));
        let mut stored = self.kv.get_many(&read_keys).map_err(store::store_error)?;
        let webhooks = decode_webhooks(stored.split_off(ids.len() + 1))?;
        let stored_format = format::of_value(stored.pop().flatten().as_deref())?;
        Ok((decode_kept(stored, keep)?, stored_format, webhooks))
    }

    /// Moves each delivery's next attempt to `at`, guarded by its record as read; one changed
    /// meanwhile by someone else (claimed, attempted) is left to them. Answers the deliveries
    /// moved, as now stored.
    fn reschedule(&self, mut batch: Vec<(Delivery, Vec<u8>)>, at: u64) -> Result<Vec<(Delivery, Vec<u8>)>> {
        let gave_up = || internal("deliveries kept changing while being rescheduled");
        store::commit_retrying(self.kv, gave_up, |conflict| {
            if let Some(index) = conflict {
                batch.remove(index);
            }
            if batch.is_empty() {
                return Ok(Step::Done(Vec::new()));
            }
            let mut guards = Vec::with_capacity(batch.len());
            let mut ops = Vec::with_capacity(batch.len() * 3);
            let mut moved = Vec::with_capacity(batch.len());
            for (delivery, stored) in &batch {
                guards.push(Condition::Equals(Entry {
                    key: keys::delivery(&delivery.id),
                    value: stored.clone(),
                }));
                if let Some(before) = delivery.next_attempt_ms {
                    ops.push(Op::Delete(keys::due(before, &delivery.id)));
                }
                let mut updated = delivery.clone();
                updated.next_attempt_ms = Some(at);
                let bytes = updated.encode();
                ops.push(Op::Put(Entry {
                    key: keys::due(at, &delivery.id),
                    value: delivery.webhook_id.clone().into_bytes(),
                }));
                ops.push(Op::Put(Entry {
                    key: keys::delivery(&delivery.id),
                    value: bytes.clone(),
                }));
                moved.push((updated, bytes));
            }
            Ok(Step::Commit {
                guards,
                ops,
                answer: moved,
            })
        })
    }

    /// Stops deliveries to a webhook whose receiver said it is gone, until a user enables it.
    fn disable(&self, webhook_id: &str, reason: String) -> Result<()> {
        let gave_up = || internal("the webhook kept changing while being disabled");
        store::commit_retrying(self.kv, gave_up, |_| {
            let Some((mut webhook, stored)) = storage::load_webhook(self.kv, webhook_id)? else {
                return Ok(Step::Done(()));
            };
            if webhook.disabled {
                return Ok(Step::Done(()));
            }
            webhook.disabled = true;
            webhook.disabled_reason = Some(reason.clone());
            let guards = vec![Condition::Equals(Entry {
                key: keys::webhook(webhook_id),
                value: stored,
            })];
            let mut ops = Vec::with_capacity(3);
            storage::put_webhook(&mut ops, &webhook);
            Ok(Step::Commit {
                guards,
                ops,
                answer: (),
            })
        })
    }

    /// The webhooks of these ids that exist, by id; no store call for none.
    fn load_webhooks<'i>(&self, ids: impl Iterator<Item = &'i str>) -> Result<HashMap<String, Webhook>> {
        let mut unique: Vec<&str> = ids.collect();
        if unique.is_empty() {
            return Ok(HashMap::new());
        }
        unique.sort_unstable();
        unique.dedup();
        let record_keys: Vec<Vec<u8>> = unique.iter().map(|id| keys::webhook(id)).collect();
        let stored = self.kv.get_many(&record_keys).map_err(store::store_error)?;
        decode_webhooks(stored)
    }

    /// Writes the outcomes of a batch; a delivery changed meanwhile by someone else keeps
    /// that change and drops this outcome. A changed status is written to the log entry too
    /// while the stored format keeps it there (`status_in_log`, before format 5); the format
    /// only rises, so a rewrite that is no longer needed is harmless.
    fn record(&self, mut updates: Vec<(Delivery, Vec<u8>)>, status_in_log: bool) -> Result<()> {
        let gave_up = || internal("deliveries kept changing while their outcomes were recorded");
        store::commit_retrying(self.kv, gave_up, |conflict| {
            if let Some(index) = conflict {
                updates.remove(index);
            }
            if updates.is_empty() {
                return Ok(Step::Done(()));
            }
            let mut guards = Vec::with_capacity(updates.len());
            let mut ops = Vec::with_capacity(updates.len() * 3);
            for (delivery, stored) in &updates {
                let before = Delivery::decode(stored)?;
                guards.push(Condition::Equals(Entry {
                    key: keys::delivery(&delivery.id),
                    value: stored.clone(),
                }));
                if let Some(at) = before.next_attempt_ms {
                    ops.push(Op::Delete(keys::due(at, &delivery.id)));
                }
                match delivery.status {
                    Status::Pending => {
                        let at = delivery.next_attempt_ms.expect("a pending delivery has a next attempt");
                        ops.push(Op::Put(Entry {
                            key: keys::due(at, &delivery.id),
                            value: delivery.webhook_id.clone().into_bytes(),
                        }));
                    }
                    // Nothing will be sent again: a retry is refused for both. A compact
                    // record drops its payload with the write below.
                    Status::Delivered | Status::Skipped if before.payload.is_none() => {
                        ops.push(Op::Delete(keys::payload(&delivery.id)))
                    }
                    Status::Delivered | Status::Skipped | Status::Failed => {}
                }
                if status_in_log && delivery.status != before.status {
                    ops.push(Op::Put(Entry {
                        key: keys::log_entry(&delivery.webhook_id, delivery.created_ms, &delivery.id),
                        value: Status::name(delivery.status).as_bytes().to_vec(),
                    }));
                }
                ops.push(Op::Put(Entry {
                    key: keys::delivery(&delivery.id),
                    value: delivery.encode(),
                }));
            }
            Ok(Step::Commit {
                guards,
                ops,
                answer: (),
            })
        })
    }
}

/// Deliveries as read, each with its record's bytes (the guard of its next write).
type Loaded = Vec<(Delivery, Vec<u8>)>;

/// The webhooks among stored values (an absent one is skipped), by id.
fn decode_webhooks(stored: Vec<Option<Vec<u8>>>) -> Result<HashMap<String, Webhook>> {
    let mut webhooks = HashMap::with_capacity(stored.len());
    for bytes in stored.into_iter().flatten() {
        let webhook = Webhook::decode(&bytes)?;
        webhooks.insert(webhook.id.clone(), webhook);
    }
    Ok(webhooks)
}

/// The delivery records read (a slot per id, `None` for none) that `keep` accepts, each with
/// its record's bytes.
fn decode_kept(stored: Vec<Option<Vec<u8>>>, keep: impl Fn(&Delivery) -> bool) -> Result<Vec<(Delivery, Vec<u8>)>> {
    let mut found = Vec::with_capacity(stored.len());
    for bytes in stored.into_iter().flatten() {
        let delivery = Delivery::decode(&bytes)?;
        if keep(&delivery) {
            found.push((delivery, bytes));
        }
    }
    Ok(found)
}

/// What became of one delivery of a batch.
enum Settled {
    /// A request was sent, or could not be, with this result.
    Attempted(AttemptResult),
    /// The webhook's transform skipped the message, for this reason: nothing was sent.
    Skipped(String),
}

impl Settled {
    fn permanent(reason: &str) -> Self {
        Settled::Attempted(AttemptResult::Permanent(reason.into()))
    }
}

/// One delivery of a batch before anything is sent.
enum Prepared {
    /// Send this request with the batch.
    Send(Request),
    /// Nothing to send: settled already.
    Settled(Settled),
}

/// A delivery after an attempt with this result, and the outcome to report. A skip is
/// reported `delivered` with no status code and the reason as the error (`events.wit`); its
/// record says `skipped`.
fn apply(
    mut delivery: Delivery,
    settled: &Settled,
    started: u64,
    finished: u64,
    retry: impl Fn(usize, &AttemptResult) -> Option<u64>,
) -> (Delivery, AttemptOutcome) {
    let result = match settled {
        Settled::Attempted(result) => result,
        Settled::Skipped(reason) => {
            delivery.attempts.push(Attempt {
                at_ms: started,
                status_code: None,
                error: Some(reason.clone()),
                duration_ms: 0,
                response_body: None,
            });
            delivery.status = Status::Skipped;
            delivery.next_attempt_ms = None;
            let outcome = AttemptOutcome {
                id: delivery.id.clone(),
                webhook_id: delivery.webhook_id.clone(),
                status: DeliveryStatus::Delivered,
                status_code: None,
                error: Some(reason.clone()),
                next_attempt_ms: None,
            };
            return (delivery, outcome);
        }
    };
    let (status_code, error, response_body) = match result {
        AttemptResult::Answered(answer) => {
            let code = answer.status;
            let error = (!(200..300).contains(&code)).then(|| format!("receiver answered {code}"));
            let body = (!answer.body.is_empty()).then(|| String::from_utf8_lossy(&answer.body).into_owned());
            (Some(code), error, body)
        }
        AttemptResult::Refused(reason) | AttemptResult::Failed(reason) | AttemptResult::Permanent(reason) => {
            (None, Some(reason.clone()), None)
        }
    };
    delivery.attempts.push(Attempt {
        at_ms: started,
        status_code,
        error: error.clone(),
        duration_ms: finished.saturating_sub(started),
        response_body,
    });
    (delivery.status, delivery.next_attempt_ms) = match verdict(result) {
        Verdict::Delivered => (Status::Delivered, None),
        Verdict::Fail => (Status::Failed, None),
        Verdict::Retry => match retry(delivery.attempts.len(), result) {
            Some(at) => (Status::Pending, Some(at)),
            None => (Status::Failed, None),
        },
    };
    let outcome = AttemptOutcome {
        id: delivery.id.clone(),
        webhook_id: delivery.webhook_id.clone(),
        status: match delivery.status {
            Status::Pending => DeliveryStatus::Pending,
            // A skip is a delivery done, with nothing sent (`events.wit`).
            Status::Delivered | Status::Skipped => DeliveryStatus::Delivered,
            Status::Failed => DeliveryStatus::Failed,
        },
        status_code,
        error,
        next_attempt_ms: delivery.next_attempt_ms,
    };
    (delivery, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{Answer, DESTINATION_REFUSED, Kv, Request, Sender};
    use crate::testing::{
        AT_NOW, Deliveries, FixedClock, LOOPBACK_REFUSED, MemoryKv, NOW, ScriptedSender, WatchedKv, delivery, events,
        events_at, message, publish, store_webhook,
    };
    use serde_json::json;
    use std::cell::RefCell;

    /// Plays a second host sharing the store: while the first host's requests are in flight,
    /// it tries to attempt the same deliveries.
    struct RivalSender<'a> {
        rival: &'a Events<'a>,
        ids: Vec<String>,
        rival_attempted: RefCell<Vec<AttemptOutcome>>,
    }

    impl Sender for RivalSender<'_> {
        fn send_all(&self, requests: &[Request]) -> Vec<AttemptResult> {
            let outcomes = self.rival.deliver(&self.ids).unwrap();
            self.rival_attempted.borrow_mut().extend(outcomes);
            requests
                .iter()
                .map(|_| AttemptResult::Answered(Answer::status(200)))
                .collect()
        }
    }

    /// The stored deliveries with these ids, each with its record's bytes.
    fn stored(kv: &MemoryKv, ids: &[String]) -> Vec<(Delivery, Vec<u8>)> {
        events(kv, &ScriptedSender::default())
            .load_deliveries(ids, |_| true)
            .unwrap()
    }

    #[test]
    fn a_claimed_delivery_is_attempted_by_one_host_only_until_its_lease_ends() {
        let kv = MemoryKv::default();
        let quiet = ScriptedSender::default();
        store_webhook(&kv, "w1", "t", "http://a/200", json!({}));
        store_webhook(&kv, "w2", "t", "http://b/200", json!({}));
        let ids = publish(&events(&kv, &quiet), message("t", None, b"x", None));

        // While host A's attempt is in flight, host B reads the same ids and finds them claimed.
        let rival_sender = ScriptedSender::default();
        let rival = events(&kv, &rival_sender).with_lease(10_000);
        let sender = RivalSender {
            rival: &rival,
            ids: ids.clone(),
            rival_attempted: RefCell::new(Vec::new()),
        };
        let host_a = Events::new(&kv, &sender, &AT_NOW).with_lease(10_000);
        let outcomes = host_a.deliver(&ids).unwrap();
        assert_eq!(outcomes.len(), 2);
        assert!(
            sender.rival_attempted.borrow().is_empty(),
            "the rival attempted nothing"
        );
        assert!(rival_sender.sent.borrow().is_empty());
        for id in &ids {
            let delivery = delivery(&kv, id);
            assert_eq!(delivery.status, Status::Delivered);
            assert_eq!(delivery.attempts.len(), 1);
        }
        assert!(
            kv.scan(&keys::due_prefix(), None, 10, false).unwrap().is_empty(),
            "no claim is left in the due index"
        );

        // A host that dies after claiming leaves the delivery due again when the lease ends.
        let ids = publish(&events(&kv, &quiet), message("t", None, b"y", None));
        let batch = stored(&kv, &ids);
        let claimed = events(&kv, &quiet).with_lease(10_000).claim(batch, NOW).unwrap();
        assert_eq!(claimed.len(), 2);
        assert!(
            events(&kv, &quiet).due(10).unwrap().is_empty(),
            "claimed deliveries are not due"
        );
        assert!(events(&kv, &quiet).deliver(&ids).unwrap().is_empty());
        // With a lease of 0 (one host), nothing is claimed.
        let unclaimed = events(&kv, &quiet).with_lease(0).claim(stored(&kv, &ids), NOW);
        assert_eq!(unclaimed.unwrap().len(), 2);
        assert_eq!(
            events(&kv, &quiet).due(10).unwrap().len(),
            0,
            "the earlier claims still hold"
        );
        // A stopping host gives its claims back: due again at once.
        assert_eq!(events(&kv, &quiet).release(&ids).unwrap(), 2);
        assert_eq!(events(&kv, &quiet).due(10).unwrap().len(), 2);
        assert_eq!(events(&kv, &quiet).release(&ids).unwrap(), 0, "nothing left to release");
        let claimed = events(&kv, &quiet)
            .with_lease(10_000)
            .claim(stored(&kv, &ids), NOW)
            .unwrap();
        assert_eq!(claimed.len(), 2);
        let lease_ended = FixedClock::at(NOW + 10_000);
        let after_lease = Events::new(&kv, &quiet, &lease_ended).with_lease(10_000);
        assert_eq!(after_lease.due(10).unwrap().len(), 2, "due again once the lease ended");
        let outcomes = after_lease.deliver(&ids).unwrap();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.iter().all(|o| o.status == DeliveryStatus::Delivered));
    }

    #[test]
    fn with_a_shared_store_the_intake_claims_new_deliveries_for_its_host() {
        const LEASE: u64 = 10_000;
        // The intake's claim: a lease and a quarter more; fresh for a quarter of a lease.
        const CLAIM: u64 = 12_500;
        let watched = WatchedKv::default();
        let kv = &watched.memory;
        let quiet = ScriptedSender::default();
        store_webhook(kv, "w1", "t", "http://a/200", json!({}));
        store_webhook(kv, "w2", "t", "http://b/200", json!({}));
        let host = |clock| Events::new(kv, &quiet, clock).with_lease(LEASE);
        let ids = publish(&host(&AT_NOW), message("t", None, b"x", None));
        for id in &ids {
            assert_eq!(delivery(kv, id).next_attempt_ms, Some(NOW + CLAIM));
        }
        assert!(
            host(&AT_NOW).due(10).unwrap().is_empty(),
            "no other host finds them due"
        );

        // Fresh, the intake's host attempts them at once, with one commit: the outcomes.
        let commits_before = watched.commits();
        let outcomes = Events::new(&watched, &quiet, &AT_NOW)
            .with_lease(LEASE)
            .deliver(&ids)
            .unwrap();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.iter().all(|o| o.status == DeliveryStatus::Delivered));
        assert_eq!(watched.commits() - commits_before, 1, "no claim before the attempt");
        assert!(kv.scan(&keys::due_prefix(), None, 10, false).unwrap().is_empty());

        // Past the fresh window, its attempt is claimed first: a rival reading the same ids
        // while it is in flight finds them taken.
        let ids = publish(&host(&AT_NOW), message("t", None, b"y", None));
        let later = FixedClock::at(NOW + 3_000);
        let rival_sender = ScriptedSender::default();
        let rival = Events::new(kv, &rival_sender, &later).with_lease(LEASE);
        let sender = RivalSender {
            rival: &rival,
            ids: ids.clone(),
            rival_attempted: RefCell::new(Vec::new()),
        };
        let outcomes = Events::new(kv, &sender, &later)
            .with_lease(LEASE)
            .deliver(&ids)
            .unwrap();
        assert_eq!(outcomes.len(), 2);
        assert!(
            sender.rival_attempted.borrow().is_empty(),
            "the rival attempted nothing"
        );

        // A host that dies after the intake leaves them due for every host when its claim
        // lapses; a stopping one gives the claim back at once.
        let ids = publish(&host(&AT_NOW), message("t", None, b"z", None));
        let almost = FixedClock::at(NOW + CLAIM - 1);
        assert!(host(&almost).due(10).unwrap().is_empty());
        let lapsed = FixedClock::at(NOW + CLAIM);
        assert_eq!(host(&lapsed).due(10).unwrap().len(), 2);
        let ids_released = publish(&host(&AT_NOW), message("t", None, b"w", None));
        assert_eq!(host(&AT_NOW).release(&ids_released).unwrap(), 2);
        assert_eq!(host(&AT_NOW).due(10).unwrap().len(), 2, "the released ones");
        // Once due, any host claims them as usual.
        let outcomes = host(&lapsed).deliver(&ids).unwrap();
        assert_eq!(outcomes.len(), 2);

        // With one host (a lease of 0) the intake claims nothing: due at once.
        let ids = publish(&events(kv, &quiet), message("t", None, b"v", None));
        assert_eq!(delivery(kv, &ids[0]).next_attempt_ms, Some(NOW));
    }

    #[test]
    fn queued_deliveries_are_read_with_their_webhooks_in_one_store_call() {
        let kv = WatchedKv::default();
        // The compact layout, whose records hold their payloads: nothing else to read.
        format::raise(&kv, format::LEAN).unwrap();
        let sender = ScriptedSender::default();
        store_webhook(&kv, "w1", "t", "http://a/200", json!({}));
        store_webhook(&kv, "w2", "t", "http://b/503", json!({}));
        let events = events(&kv, &sender);
        let queued = events.on_message(message("t", None, b"x", None)).unwrap().deliveries;
        let reads = kv.get_many_calls();
        let outcomes = events.deliver_queued(&queued).unwrap();
        assert_eq!(
            kv.get_many_calls() - reads,
            1,
            "records, format and webhooks in one read"
        );
        let status = |webhook: &str| outcomes.iter().find(|o| o.webhook_id == webhook).unwrap().status;
        assert_eq!(status("w1"), DeliveryStatus::Delivered);
        assert_eq!(status("w2"), DeliveryStatus::Pending);
        let urls: Vec<String> = sender.sent.borrow().iter().map(|r| r.url.clone()).collect();
        assert_eq!(urls.len(), 2);
        assert!(urls.contains(&"http://a/200".to_owned()) && urls.contains(&"http://b/503".to_owned()));
        // The ids alone take a second read for the webhooks, and attempt the same way.
        let retried: Vec<String> = vec![outcomes.iter().find(|o| o.webhook_id == "w2").unwrap().id.clone()];
        let reads = kv.get_many_calls();
        let later = FixedClock::at(NOW + 1_000);
        let outcomes = events_at(&kv, &sender, &later).deliver(&retried).unwrap();
        assert_eq!(kv.get_many_calls() - reads, 2);
        assert_eq!(outcomes[0].status, DeliveryStatus::Pending);
        assert_eq!(sender.sent.borrow().last().unwrap().url, "http://b/503");
    }

    #[test]
    fn on_packed_deliveries_records_stay_packed_through_attempts_and_retries() {
        let kv = MemoryKv::default();
        format::raise(&kv, format::PACKED).unwrap();
        let sender = ScriptedSender::default();
        store_webhook(&kv, "w1", "t", "http://a/200", json!({}));
        store_webhook(&kv, "w2", "t", "http://b/503", json!({}));
        let events = events(&kv, &sender);
        let payload = b"{\"v\":2}\0\x01\xff";
        let queued = events
            .on_message(message("t", None, payload, Some("application/json")))
            .unwrap()
            .deliveries;
        let stored = |id: &str| kv.get(&keys::delivery(id)).unwrap().unwrap();
        for due in &queued {
            assert_eq!(stored(&due.id)[0], crate::deliveries::packed::TAG);
            let record = delivery(&kv, &due.id);
            assert!(record.packed);
            assert_eq!(record.payload.as_deref(), Some(&payload[..]));
        }
        let outcomes = events.deliver_queued(&queued).unwrap();
        let sent: Vec<Vec<u8>> = sender.sent.borrow().iter().map(|r| r.body.clone()).collect();
        assert_eq!(sent, [payload.to_vec(), payload.to_vec()], "the exact payload goes out");
        let id_of = |webhook: &str| outcomes.iter().find(|o| o.webhook_id == webhook).unwrap().id.clone();
        let delivered = delivery(&kv, &id_of("w1"));
        assert_eq!((delivered.status, delivered.payload), (Status::Delivered, None));
        let retried = delivery(&kv, &id_of("w2"));
        assert_eq!(retried.status, Status::Pending);
        assert_eq!(retried.attempts[0].status_code, Some(503));
        assert_eq!(
            retried.payload.as_deref(),
            Some(&payload[..]),
            "kept for the next attempt"
        );
        assert_eq!(stored(&id_of("w1"))[0], crate::deliveries::packed::TAG);
        assert_eq!(stored(&id_of("w2"))[0], crate::deliveries::packed::TAG);
        // The retry reads it back and sends the same bytes again.
        let later = FixedClock::at(retried.next_attempt_ms.unwrap());
        let again = events_at(&kv, &sender, &later).deliver(&[id_of("w2")]).unwrap();
        assert_eq!(again[0].status, DeliveryStatus::Pending);
        assert_eq!(sender.sent.borrow().last().unwrap().body, payload);
        assert_eq!(delivery(&kv, &id_of("w2")).attempts.len(), 2);
    }

    #[test]
    fn a_delivery_queued_under_another_webhook_goes_to_its_own() {
        let kv = WatchedKv::default();
        // The compact layout, whose records hold their payloads: nothing else to read.
        format::raise(&kv, format::LEAN).unwrap();
        let sender = ScriptedSender::default();
        store_webhook(&kv, "w1", "t", "http://a/200", json!({}));
        store_webhook(&kv, "other", "u", "http://elsewhere/200", json!({}));
        let events = events(&kv, &sender);
        let mut queued = events.on_message(message("t", None, b"x", None)).unwrap().deliveries;
        queued[0].webhook_id = "other".into();
        let reads = kv.get_many_calls();
        let outcomes = events.deliver_queued(&queued).unwrap();
        // Its own webhook was not among those read: read after, on its own.
        assert_eq!(kv.get_many_calls() - reads, 2);
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].webhook_id, "w1");
        assert_eq!(outcomes[0].status, DeliveryStatus::Delivered);
        assert_eq!(sender.sent.borrow()[0].url, "http://a/200");
        // A named webhook that does not exist (removed) is no reason to read it again.
        let mut queued = events.on_message(message("t", None, b"y", None)).unwrap().deliveries;
        queued.push(DueDelivery {
            id: "no-such-delivery".into(),
            webhook_id: "removed".into(),
        });
        let reads = kv.get_many_calls();
        let outcomes = events.deliver_queued(&queued).unwrap();
        assert_eq!(kv.get_many_calls() - reads, 1);
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].status, DeliveryStatus::Delivered);
    }

    #[test]
    fn a_gone_receiver_disables_its_webhook_and_it_gets_nothing_more() {
        let Deliveries { kv, sender } =
            Deliveries::with_webhooks(&[("gone", "t", "http://a/410"), ("fine", "t", "http://b/200")]);
        let events = events(&kv, &sender);
        let ids = publish(&events, message("t", None, b"x", None));
        events.deliver(&ids).unwrap();
        let gone = Webhook::decode(&kv.get(&keys::webhook("gone")).unwrap().unwrap()).unwrap();
        assert!(gone.disabled);
        assert!(gone.disabled_reason.unwrap().starts_with("receiver answered 410 Gone"));
        let next = events.on_message(message("t", None, b"y", None)).unwrap();
        assert_eq!(
            next.deliveries
                .iter()
                .map(|d| d.webhook_id.as_str())
                .collect::<Vec<_>>(),
            ["fine"]
        );
    }

    #[test]
    fn failures_are_retried_or_failed_by_class() {
        let Deliveries { kv, sender } = Deliveries::with_webhooks(&[
            ("busy", "t", "http://a/503"),
            ("gone", "t", "http://b/404"),
            ("blocked", "t", "http://c/refused"),
            ("down", "t", "http://d/down"),
            ("local", "t", "http://e/loopback"),
            ("broken", "t", "http://f/malformed"),
        ]);
        let events = events(&kv, &sender);
        let deliveries = events.on_message(message("t", None, b"x", None)).unwrap().deliveries;
        let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
        let outcomes = events.deliver(&ids).unwrap();
        let status = |webhook: &str| outcomes.iter().find(|o| o.webhook_id == webhook).unwrap().clone();
        assert_eq!(status("busy").status, DeliveryStatus::Pending);
        assert_eq!(status("busy").next_attempt_ms, Some(NOW + 1_000));
        assert_eq!(status("down").status, DeliveryStatus::Pending);
        assert_eq!(status("gone").status, DeliveryStatus::Failed);
        assert_eq!(status("blocked").status, DeliveryStatus::Failed);
        assert_eq!(status("blocked").error.as_deref(), Some(DESTINATION_REFUSED));
        // The host's explanation of a refusal is the attempt's reason, as given.
        assert_eq!(status("local").status, DeliveryStatus::Failed);
        assert_eq!(status("local").error.as_deref(), Some(LOOPBACK_REFUSED));
        assert_eq!(
            delivery(&kv, &status("local").id).attempts[0].error.as_deref(),
            Some(LOOPBACK_REFUSED)
        );
        // A request that cannot be sent fails at once, its reason recorded.
        let broken = delivery(&kv, &status("broken").id);
        assert_eq!(broken.status, Status::Failed);
        assert_eq!(broken.next_attempt_ms, None);
        assert_eq!(
            broken.attempts[0].error.as_deref(),
            Some("invalid request: header \"X\" refused")
        );
        // Not due yet: nothing is attempted, and the due index says so.
        assert!(events.deliver(&ids).unwrap().is_empty());
        assert!(events.due(100).unwrap().is_empty());
        let busy = outcomes.iter().find(|o| o.webhook_id == "busy").unwrap();
        assert_eq!(delivery(&kv, &busy.id).attempts.len(), 1);
    }
}
