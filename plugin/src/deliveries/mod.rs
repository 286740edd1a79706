//! The message path: recording deliveries for a published message, finding due ones,
//! attempting them, and deleting them once retention ends.

use std::collections::HashMap;

pub mod log;
pub mod outbound;
pub mod record;

use crate::bindings::exports::mainflux::webhooks::events::{Accepted, AttemptOutcome, DeliveryStatus, Message};
use crate::bindings::mainflux::webhooks::store::{Condition, Entry, Op};
use crate::bindings::mainflux::webhooks::types::DueDelivery;
use crate::deliveries::outbound::{Request, Sender};
use crate::deliveries::record::{
    Attempt, AttemptResult, Delivery, RetryPolicy, Status, Verdict, random_unit, retry_after_ms, verdict,
};
use crate::error::{Result, internal, invalid};
use crate::keys;
use crate::record::{FORMAT_VERSION, Record};
use crate::store::{self, CommitFailure, Kv, Step};
use crate::webhooks::record::{Webhook, validate_secret};

/// The content type sent when neither the webhook nor the device names one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// Milliseconds since the Unix epoch, from the host's wall clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The message operations over a store and an outgoing HTTP sender.
pub struct Events<'a> {
    kv: &'a dyn Kv,
    sender: &'a dyn Sender,
    clock: fn() -> u64,
    policy: RetryPolicy,
    random: fn() -> f64,
    lease_ms: u64,
}

/// How long a claim holds when the host names no lease.
pub const DEFAULT_LEASE_MS: u64 = 30_000;

impl<'a> Events<'a> {
    /// Binds the operations to their capabilities and a clock, with the default retry policy.
    pub fn new(kv: &'a dyn Kv, sender: &'a dyn Sender, clock: fn() -> u64) -> Self {
        Events {
            kv,
            sender,
            clock,
            policy: RetryPolicy::default(),
            random: random_unit,
            lease_ms: DEFAULT_LEASE_MS,
        }
    }

    /// Claims deliveries for this long while attempting them.
    pub fn with_lease(mut self, lease_ms: u64) -> Self {
        self.lease_ms = lease_ms;
        self
    }

    /// Uses this retry policy.
    pub fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Draws the retry jitter from this source of numbers in [0, 1).
    pub fn with_random(mut self, random: fn() -> f64) -> Self {
        self.random = random;
        self
    }

    /// Records one pending delivery per webhook of the thing in one commit, with the message id
    /// when the publisher named one: an id the thing already published records nothing.
    pub fn on_message(&self, message: Message) -> Result<Accepted> {
        let (message_id, named) = match message.id {
            Some(id) => {
                uuid::Uuid::try_parse(&id).map_err(|_| invalid("X-Message-Id must be a UUID"))?;
                (id.to_ascii_lowercase(), true)
            }
            // Time-ordered ids keep the records of one moment together in the store's key
            // order, so a commit touches few pages.
            None => (uuid::Uuid::now_v7().to_string(), false),
        };
        let mut webhooks = store::scan_webhooks(self.kv, &keys::by_thing_prefix(&message.thing_id))?;
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
                id: uuid::Uuid::now_v7().to_string(),
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

    /// Deliveries due now, oldest first.
    pub fn due(&self, limit: u32) -> Result<Vec<DueDelivery>> {
        let now = (self.clock)();
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
    /// and records every outcome.
    pub fn deliver(&self, ids: &[String]) -> Result<Vec<AttemptOutcome>> {
        let now = (self.clock)();
        let due = self.load_deliveries(ids, |d| {
            d.status == Status::Pending && d.next_attempt_ms.is_none_or(|at| at <= now)
        })?;
        let batch = self.claim(due, now)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let webhooks = self.load_webhooks(batch.iter().map(|(d, _)| d.webhook_id.as_str()))?;
        let payload_keys: Vec<Vec<u8>> = batch.iter().map(|(d, _)| keys::payload(&d.id)).collect();
        let payloads = self.kv.get_many(&payload_keys).map_err(store::store_error)?;

        // Build every request, then send the ones that have somewhere to go.
        let mut results: Vec<Option<AttemptResult>> = vec![None; batch.len()];
        let mut requests = Vec::with_capacity(batch.len());
        let mut sent = Vec::with_capacity(batch.len());
        for (index, ((delivery, _), payload)) in batch.iter().zip(payloads).enumerate() {
            let stop = match (webhooks.get(&delivery.webhook_id), payload) {
                (Some(webhook), _) if webhook.disabled => Some("webhook disabled"),
                (Some(webhook), Some(payload)) => {
                    requests.push(request_for(webhook, delivery, payload, now / 1000));
                    sent.push(index);
                    None
                }
                (None, _) => Some("webhook removed"),
                // Only expiry removes a pending delivery's payload; fail this one rather than
                // the whole batch, again and again.
                (_, None) => Some("payload no longer kept"),
            };
            if let Some(reason) = stop {
                results[index] = Some(AttemptResult::Permanent(reason.into()));
            }
        }
        let started = (self.clock)();
        for (index, result) in sent.into_iter().zip(self.sender.send_all(&requests)) {
            results[index] = Some(result);
        }
        let finished = (self.clock)();

        let mut outcomes = Vec::with_capacity(batch.len());
        let mut updates = Vec::with_capacity(batch.len());
        let mut gone: Vec<String> = Vec::new();
        for ((delivery, stored), result) in batch.into_iter().zip(results) {
            let result = result.expect("every delivery has a result");
            if matches!(&result, AttemptResult::Answered(answer) if answer.status == 410)
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
            let (updated, outcome) = apply(delivery, &result, started, finished, retry);
            outcomes.push(outcome);
            updates.push((updated, stored));
        }
        self.record(updates)?;
        for webhook_id in gone {
            self.disable(
                &webhook_id,
                format!("receiver answered 410 Gone at {}", record::rfc3339(finished)),
            )?;
        }
        Ok(outcomes)
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

    /// Makes each pending delivery of the list whose next attempt lies ahead (a claim) due
    /// now; answers how many.
    pub fn release(&self, ids: &[String]) -> Result<u32> {
        let now = (self.clock)();
        let claimed = self.load_deliveries(ids, |d| {
            d.status == Status::Pending && d.next_attempt_ms.is_some_and(|at| at > now)
        })?;
        Ok(self.reschedule(claimed, now)?.len() as u32)
    }

    /// The stored deliveries of the list that `keep` accepts, each with its record's bytes.
    fn load_deliveries(&self, ids: &[String], keep: impl Fn(&Delivery) -> bool) -> Result<Vec<(Delivery, Vec<u8>)>> {
        let record_keys: Vec<Vec<u8>> = ids.iter().map(|id| keys::delivery(id)).collect();
        let stored = self.kv.get_many(&record_keys).map_err(store::store_error)?;
        let mut found = Vec::with_capacity(ids.len());
        for bytes in stored.into_iter().flatten() {
            let delivery = Delivery::decode(&bytes)?;
            if keep(&delivery) {
                found.push((delivery, bytes));
            }
        }
        Ok(found)
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
            let Some((mut webhook, stored)) = store::load_webhook(self.kv, webhook_id)? else {
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
            store::put_webhook(&mut ops, &webhook);
            Ok(Step::Commit {
                guards,
                ops,
                answer: (),
            })
        })
    }

    /// Deletes up to `limit` deliveries, then up to `limit` remembered message ids, created
    /// before `now - retention_ms`; answers how many of both.
    pub fn expire(&self, retention_ms: u64, limit: u32) -> Result<u32> {
        let cutoff = (self.clock)().saturating_sub(retention_ms);
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

    fn load_webhooks<'i>(&self, ids: impl Iterator<Item = &'i str>) -> Result<HashMap<String, Webhook>> {
        let mut unique: Vec<&str> = ids.collect();
        unique.sort_unstable();
        unique.dedup();
        let record_keys: Vec<Vec<u8>> = unique.iter().map(|id| keys::webhook(id)).collect();
        let stored = self.kv.get_many(&record_keys).map_err(store::store_error)?;
        let mut webhooks = HashMap::with_capacity(unique.len());
        for bytes in stored.into_iter().flatten() {
            let webhook = Webhook::decode(&bytes)?;
            webhooks.insert(webhook.id.clone(), webhook);
        }
        Ok(webhooks)
    }

    /// Writes the outcomes of a batch; a delivery changed meanwhile by someone else keeps
    /// that change and drops this outcome.
    fn record(&self, mut updates: Vec<(Delivery, Vec<u8>)>) -> Result<()> {
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
                    Status::Delivered => ops.push(Op::Delete(keys::payload(&delivery.id))),
                    Status::Failed => {}
                }
                if delivery.status != before.status {
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

/// The request of one attempt: POST to the webhook's URL with its headers, the Content-Type
/// rule of SPEC.md section 3, the delivery id as `webhook-id`, the Standard Webhooks signature
/// when the webhook has a secret, and the exact payload.
pub fn request_for(webhook: &Webhook, delivery: &Delivery, payload: Vec<u8>, now_secs: u64) -> Request {
    let mut headers: Vec<(String, String)> = webhook
        .headers
        .iter()
        .filter_map(|(name, value)| value.as_str().map(|value| (name.clone(), value.to_owned())))
        .collect();
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        let content_type = delivery.content_type.clone().filter(|c| !c.is_empty());
        headers.push((
            "Content-Type".into(),
            content_type.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.into()),
        ));
    }
    // Every attempt carries the delivery id, so receivers can drop duplicates.
    headers.push(("webhook-id".into(), delivery.id.clone()));
    if let Some(key) = webhook
        .secret
        .as_deref()
        .and_then(|secret| validate_secret(secret).ok())
    {
        let timestamp = now_secs.to_string();
        headers.push((
            "webhook-signature".into(),
            signature(&key, &delivery.id, &timestamp, &payload),
        ));
        headers.push(("webhook-timestamp".into(), timestamp));
    }
    Request {
        url: webhook.url.clone(),
        headers,
        body: payload,
    }
}

/// The Standard Webhooks signature: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
pub fn signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    use base64::Engine;
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// A delivery after an attempt with this result, and the outcome to report.
fn apply(
    mut delivery: Delivery,
    result: &AttemptResult,
    started: u64,
    finished: u64,
    retry: impl Fn(usize, &AttemptResult) -> Option<u64>,
) -> (Delivery, AttemptOutcome) {
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
            Status::Delivered => DeliveryStatus::Delivered,
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
    use crate::deliveries::record::DESTINATION_REFUSED;
    use crate::store::memory::MemoryKv;
    use serde_json::{Map, Value, json};
    use std::cell::RefCell;

    /// Answers each request with the status its URL's last path segment names, and remembers
    /// what it was sent.
    #[derive(Default)]
    struct ScriptedSender {
        sent: RefCell<Vec<Request>>,
    }

    impl Sender for ScriptedSender {
        fn send_all(&self, requests: &[Request]) -> Vec<AttemptResult> {
            self.sent.borrow_mut().extend(requests.iter().cloned());
            requests
                .iter()
                .map(|r| match r.url.rsplit('/').next().unwrap() {
                    "refused" => AttemptResult::Refused(DESTINATION_REFUSED.into()),
                    "loopback" => AttemptResult::Refused(LOOPBACK_REFUSED.into()),
                    "down" => AttemptResult::Failed("connection refused".into()),
                    "malformed" => AttemptResult::Permanent("invalid request: header \"X\" refused".into()),
                    code => AttemptResult::Answered(crate::deliveries::record::Answer::status(code.parse().unwrap())),
                })
                .collect()
        }
    }

    fn clock() -> u64 {
        1_000_000
    }

    /// How the host explains a refused loopback destination.
    const LOOPBACK_REFUSED: &str = "destination refused: 127.0.0.1 is a loopback address; \
                                    set MF_WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS=true to allow it";

    fn events<'a>(kv: &'a MemoryKv, sender: &'a ScriptedSender) -> Events<'a> {
        Events::new(kv, sender, clock)
            .with_policy(RetryPolicy {
                schedule_ms: vec![1_000, 5_000],
            })
            .with_random(|| 0.5)
    }

    fn store_webhook(kv: &MemoryKv, id: &str, thing: &str, url: &str, headers: Value) {
        let webhook = Webhook {
            v: 1,
            id: id.into(),
            thing_id: thing.into(),
            group_id: "g".into(),
            name: id.into(),
            url: url.into(),
            headers: headers.as_object().cloned().unwrap_or_default(),
            metadata: Map::new(),
            secret: None,
            disabled: false,
            disabled_reason: None,
        };
        let mut ops = Vec::new();
        store::put_webhook(&mut ops, &webhook);
        kv.commit(&[], &ops).unwrap();
    }

    fn message(thing: &str, id: Option<&str>, payload: &[u8], content_type: Option<&str>) -> Message {
        Message {
            id: id.map(str::to_owned),
            thing_id: thing.into(),
            payload: payload.to_vec(),
            content_type: content_type.map(str::to_owned),
            subtopic: String::new(),
            received_ms: clock(),
        }
    }

    fn delivery(kv: &MemoryKv, id: &str) -> Delivery {
        Delivery::decode(&kv.get(&keys::delivery(id)).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn a_message_records_one_due_delivery_per_webhook_of_its_thing() {
        let kv = MemoryKv::default();
        let sender = ScriptedSender::default();
        store_webhook(&kv, "w1", "t", "http://a/200", json!({}));
        store_webhook(&kv, "w2", "t", "http://b/200", json!({}));
        store_webhook(&kv, "w3", "other", "http://c/200", json!({}));
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
        let kv = MemoryKv::default();
        let sender = ScriptedSender::default();
        store_webhook(&kv, "w1", "t", "http://a/200", json!({}));
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
    fn content_type_prefers_the_webhook_then_the_device_then_json() {
        let kv = MemoryKv::default();
        let sender = ScriptedSender::default();
        store_webhook(
            &kv,
            "own",
            "t",
            "http://a/200",
            json!({"content-TYPE": "text/csv", "X-Key": "k"}),
        );
        store_webhook(&kv, "plain", "t", "http://b/200", json!({}));
        let events = events(&kv, &sender);
        let ids: Vec<String> = events
            .on_message(message("t", None, b"x", Some("application/senml+json")))
            .unwrap()
            .deliveries
            .into_iter()
            .map(|d| d.id)
            .collect();
        events.deliver(&ids).unwrap();
        let sent = sender.sent.borrow();
        let header = |url: &str, name: &str| {
            sent.iter()
                .find(|r| r.url.starts_with(url))
                .unwrap()
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(header("http://a", "content-type"), ["text/csv"]);
        assert_eq!(header("http://a", "x-key"), ["k"]);
        assert_eq!(header("http://b", "content-type"), ["application/senml+json"]);
        let mut bare = delivery(&kv, &ids[0]);
        bare.content_type = None;
        let plain = Webhook::decode(&kv.get(&keys::webhook("plain")).unwrap().unwrap()).unwrap();
        assert_eq!(
            request_for(&plain, &bare, vec![], 0).headers,
            [
                ("Content-Type".to_string(), "application/json".to_string()),
                ("webhook-id".to_string(), bare.id.clone())
            ]
        );
    }

    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification's reference tests.
        let key = validate_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn retention_deletes_old_deliveries_and_message_ids() {
        let kv = MemoryKv::default();
        let sender = ScriptedSender::default();
        store_webhook(&kv, "w", "t", "http://a/503", json!({}));
        let events = events(&kv, &sender);
        let id = "7f1c1d2e-1111-4222-8333-444455556666";
        let delivery = events
            .on_message(message("t", Some(id), b"x", None))
            .unwrap()
            .deliveries[0]
            .id
            .clone();
        assert_eq!(events.expire(60_000, 100).unwrap(), 0, "nothing is old yet");
        // Everything was created at clock(); a retention of 0 makes it old one ms later.
        let later = Events::new(&kv, &sender, || clock() + 1);
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
                .map(|_| AttemptResult::Answered(crate::deliveries::record::Answer::status(200)))
                .collect()
        }
    }

    #[test]
    fn a_claimed_delivery_is_attempted_by_one_host_only_until_its_lease_ends() {
        let kv = MemoryKv::default();
        let quiet = ScriptedSender::default();
        store_webhook(&kv, "w1", "t", "http://a/200", json!({}));
        store_webhook(&kv, "w2", "t", "http://b/200", json!({}));
        let ids: Vec<String> = events(&kv, &quiet)
            .on_message(message("t", None, b"x", None))
            .unwrap()
            .deliveries
            .into_iter()
            .map(|d| d.id)
            .collect();

        // While host A's attempt is in flight, host B reads the same ids and finds them claimed.
        let rival_sender = ScriptedSender::default();
        let rival = events(&kv, &rival_sender).with_lease(10_000);
        let sender = RivalSender {
            rival: &rival,
            ids: ids.clone(),
            rival_attempted: RefCell::new(Vec::new()),
        };
        let host_a = Events::new(&kv, &sender, clock).with_lease(10_000);
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
        let ids: Vec<String> = events(&kv, &quiet)
            .on_message(message("t", None, b"y", None))
            .unwrap()
            .deliveries
            .into_iter()
            .map(|d| d.id)
            .collect();
        let batch = ids
            .iter()
            .map(|id| {
                let stored = kv.get(&keys::delivery(id)).unwrap().unwrap();
                (Delivery::decode(&stored).unwrap(), stored)
            })
            .collect();
        let claimed = events(&kv, &quiet).with_lease(10_000).claim(batch, clock()).unwrap();
        assert_eq!(claimed.len(), 2);
        assert!(
            events(&kv, &quiet).due(10).unwrap().is_empty(),
            "claimed deliveries are not due"
        );
        assert!(events(&kv, &quiet).deliver(&ids).unwrap().is_empty());
        // With a lease of 0 (one host), nothing is claimed.
        let unclaimed = events(&kv, &quiet).with_lease(0).claim(
            ids.iter()
                .map(|id| {
                    let stored = kv.get(&keys::delivery(id)).unwrap().unwrap();
                    (Delivery::decode(&stored).unwrap(), stored)
                })
                .collect(),
            clock(),
        );
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
            .claim(
                ids.iter()
                    .map(|id| {
                        let stored = kv.get(&keys::delivery(id)).unwrap().unwrap();
                        (Delivery::decode(&stored).unwrap(), stored)
                    })
                    .collect(),
                clock(),
            )
            .unwrap();
        assert_eq!(claimed.len(), 2);
        let after_lease = Events::new(&kv, &quiet, || clock() + 10_000).with_lease(10_000);
        assert_eq!(after_lease.due(10).unwrap().len(), 2, "due again once the lease ended");
        let outcomes = after_lease.deliver(&ids).unwrap();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.iter().all(|o| o.status == DeliveryStatus::Delivered));
    }

    #[test]
    fn a_gone_receiver_disables_its_webhook_and_it_gets_nothing_more() {
        let kv = MemoryKv::default();
        let sender = ScriptedSender::default();
        store_webhook(&kv, "gone", "t", "http://a/410", json!({}));
        store_webhook(&kv, "fine", "t", "http://b/200", json!({}));
        let events = events(&kv, &sender);
        let ids: Vec<String> = events
            .on_message(message("t", None, b"x", None))
            .unwrap()
            .deliveries
            .into_iter()
            .map(|d| d.id)
            .collect();
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
        let kv = MemoryKv::default();
        let sender = ScriptedSender::default();
        store_webhook(&kv, "busy", "t", "http://a/503", json!({}));
        store_webhook(&kv, "gone", "t", "http://b/404", json!({}));
        store_webhook(&kv, "blocked", "t", "http://c/refused", json!({}));
        store_webhook(&kv, "down", "t", "http://d/down", json!({}));
        store_webhook(&kv, "local", "t", "http://e/loopback", json!({}));
        store_webhook(&kv, "broken", "t", "http://f/malformed", json!({}));
        let events = events(&kv, &sender);
        let deliveries = events.on_message(message("t", None, b"x", None)).unwrap().deliveries;
        let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
        let outcomes = events.deliver(&ids).unwrap();
        let status = |webhook: &str| outcomes.iter().find(|o| o.webhook_id == webhook).unwrap().clone();
        assert_eq!(status("busy").status, DeliveryStatus::Pending);
        assert_eq!(status("busy").next_attempt_ms, Some(clock() + 1_000));
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

    #[test]
    fn removing_a_thing_removes_its_webhooks_and_fails_their_deliveries() {
        let kv = MemoryKv::default();
        let sender = ScriptedSender::default();
        store_webhook(&kv, "w1", "t", "http://a/200", json!({}));
        store_webhook(&kv, "w2", "u", "http://a/200", json!({}));
        let events = events(&kv, &sender);
        let ids: Vec<String> = events
            .on_message(message("t", None, b"x", None))
            .unwrap()
            .deliveries
            .into_iter()
            .map(|d| d.id)
            .collect();
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
