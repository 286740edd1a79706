//! The delivery log: each webhook's deliveries with every attempt, newest first, and the
//! manual retry of a failed delivery.

use serde_json::{Map, Value, json};

use crate::Role;
use crate::bindings::mainflux::webhooks::store::{Condition, Entry, Op};
use crate::bindings::mainflux::webhooks::types::DueDelivery;
use crate::deliveries::record::{Delivery, Status, rfc3339};
use crate::error::{Result, conflict, invalid, not_found};
use crate::format;
use crate::keys;
use crate::ports::{Access, Clock, Kv, require_token};
use crate::record::Record;
use crate::store::{self, CommitFailure};
use crate::webhooks::listing::{DEFAULT_LIMIT, parse_limit, parse_offset, refuse_repeats};
use crate::webhooks::record::Webhook;
use crate::webhooks::storage;

/// How many log entries one scan call asks for.
const SCAN_CHUNK: u32 = 1024;

/// A validated request for one page of a delivery log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogQuery {
    /// Entries skipped before the page.
    pub offset: u64,
    /// Most entries on the page.
    pub limit: u64,
    /// Only deliveries in this status.
    pub status: Option<Status>,
}

impl LogQuery {
    /// Reads `offset`, `limit` and `status` from the query; other parameters are ignored.
    pub fn from_query(params: &[(String, String)]) -> Result<Self> {
        refuse_repeats(params)?;
        let mut query = LogQuery {
            offset: 0,
            limit: DEFAULT_LIMIT,
            status: None,
        };
        for (key, value) in params.iter().filter(|(_, value)| !value.is_empty()) {
            match key.as_str() {
                "offset" => query.offset = parse_offset(value)?,
                "limit" => query.limit = parse_limit(value)?,
                "status" => {
                    query.status = Some(match value.as_str() {
                        "pending" => Status::Pending,
                        "delivered" => Status::Delivered,
                        "failed" => Status::Failed,
                        "skipped" => Status::Skipped,
                        _ => return Err(invalid("status must be pending, delivered, failed or skipped")),
                    })
                }
                _ => {}
            }
        }
        Ok(query)
    }
}

/// The JSON users see of a delivery.
pub fn view(delivery: &Delivery) -> Value {
    let attempts: Vec<Value> = delivery
        .attempts
        .iter()
        .map(|attempt| {
            let mut view = Map::new();
            view.insert("at".into(), rfc3339(attempt.at_ms).into());
            if let Some(code) = attempt.status_code {
                view.insert("status_code".into(), code.into());
            }
            if let Some(error) = &attempt.error {
                view.insert("error".into(), error.clone().into());
            }
            view.insert("duration_ms".into(), attempt.duration_ms.into());
            if let Some(body) = &attempt.response_body {
                view.insert("response_body".into(), body.clone().into());
            }
            Value::Object(view)
        })
        .collect();
    let mut view = json!({
        "id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "message_id": delivery.message_id,
        "status": Status::name(delivery.status),
        "attempts": attempts,
        "created_at": rfc3339(delivery.created_ms),
    });
    if let (Status::Pending, Some(at)) = (delivery.status, delivery.next_attempt_ms) {
        view["next_attempt_at"] = rfc3339(at).into();
    }
    view
}

/// The delivery log operations over a store and an identity service.
pub struct DeliveryLog<'a> {
    kv: &'a dyn Kv,
    access: &'a dyn Access,
    clock: &'a dyn Clock,
}

impl<'a> DeliveryLog<'a> {
    /// Binds the operations to their capabilities and a clock.
    pub fn new(kv: &'a dyn Kv, access: &'a dyn Access, clock: &'a dyn Clock) -> Self {
        DeliveryLog { kv, access, clock }
    }

    fn webhook(&self, token: &str, webhook_id: &str, role: Role) -> Result<Webhook> {
        require_token(token)?;
        self.access.authenticate(token)?;
        let (webhook, _) = storage::load_webhook(self.kv, webhook_id)?.ok_or_else(|| not_found("webhook not found"))?;
        self.access.authorize_group(token, &webhook.group_id, role)?;
        Ok(webhook)
    }

    /// A page of the webhook's deliveries, newest first, for a viewer of its group.
    pub fn list(&self, token: &str, webhook_id: &str, params: &[(String, String)]) -> Result<String> {
        let webhook = self.webhook(token, webhook_id, Role::Viewer)?;
        let query = LogQuery::from_query(params)?;
        // From format 5 only the records know the statuses; before, the log entries do.
        let statuses_in_records = query.status.is_some() && format::stored(self.kv)? >= format::LEAN;
        let prefix = keys::log_prefix(&webhook.id);
        let (mut total, mut page_ids) = (0u64, Vec::new());
        let mut after: Option<Vec<u8>> = None;
        loop {
            let chunk = self
                .kv
                .scan(&prefix, after.as_deref(), SCAN_CHUNK, true)
                .map_err(store::store_error)?;
            let full = chunk.len() as u32 == SCAN_CHUNK;
            let statuses = match query.status {
                Some(_) if statuses_in_records => self.record_statuses(&chunk)?,
                Some(_) => chunk.iter().map(|entry| Status::from_name(&entry.value)).collect(),
                None => Vec::new(),
            };
            for (at, entry) in chunk.iter().enumerate() {
                if query.status.is_some_and(|wanted| statuses[at] != Some(wanted)) {
                    continue;
                }
                if total >= query.offset && (page_ids.len() as u64) < query.limit {
                    page_ids.push(keys::log_entry_id(&entry.key).unwrap_or_default().to_owned());
                }
                total += 1;
            }
            if !full {
                break;
            }
            after = chunk.into_iter().last().map(|entry| entry.key);
        }
        let record_keys: Vec<Vec<u8>> = page_ids.iter().map(|id| keys::delivery(id)).collect();
        let records = self.kv.get_many(&record_keys).map_err(store::store_error)?;
        let mut deliveries = Vec::with_capacity(records.len());
        for bytes in records.into_iter().flatten() {
            deliveries.push(view(&Delivery::decode(&bytes)?));
        }
        Ok(json!({
            "total": total,
            "offset": query.offset,
            "limit": query.limit,
            "deliveries": deliveries,
        })
        .to_string())
    }

    /// The status of each log entry's delivery, read from the records in one store call;
    /// `None` for a record no longer kept.
    fn record_statuses(&self, entries: &[Entry]) -> Result<Vec<Option<Status>>> {
        let record_keys: Vec<Vec<u8>> = entries
            .iter()
            .map(|entry| keys::delivery(keys::log_entry_id(&entry.key).unwrap_or_default()))
            .collect();
        let records = self.kv.get_many(&record_keys).map_err(store::store_error)?;
        records
            .into_iter()
            .map(|bytes| {
                bytes
                    .map(|bytes| Delivery::decode(&bytes).map(|d| d.status))
                    .transpose()
            })
            .collect()
    }

    /// Makes a failed delivery of the webhook due now, for an editor of its group.
    pub fn retry(&self, token: &str, webhook_id: &str, delivery_id: &str) -> Result<DueDelivery> {
        let webhook = self.webhook(token, webhook_id, Role::Editor)?;
        let key = keys::delivery(delivery_id);
        let missing = || not_found("delivery not found");
        let mut read = self
            .kv
            .get_many(&[key.clone(), keys::data_format()])
            .map_err(store::store_error)?;
        let status_in_log = format::of_value(read.pop().flatten().as_deref())? < format::LEAN;
        let stored = read.pop().flatten().ok_or_else(missing)?;
        let mut delivery = Delivery::decode(&stored)?;
        if delivery.webhook_id != webhook.id {
            return Err(missing());
        }
        if delivery.status != Status::Failed {
            return Err(conflict(format!(
                "only a failed delivery can be retried; this one is {}",
                Status::name(delivery.status)
            )));
        }
        if delivery.payload.is_none()
            && self
                .kv
                .get(&keys::payload(&delivery.id))
                .map_err(store::store_error)?
                .is_none()
        {
            return Err(conflict("this delivery's payload is no longer kept"));
        }
        let now = self.clock.now_ms();
        delivery.status = Status::Pending;
        delivery.next_attempt_ms = Some(now);
        let guards = vec![Condition::Equals(Entry {
            key: key.clone(),
            value: stored,
        })];
        let mut ops = vec![Op::Put(Entry {
            key: keys::due(now, &delivery.id),
            value: delivery.webhook_id.clone().into_bytes(),
        })];
        if status_in_log {
            ops.push(Op::Put(Entry {
                key: keys::log_entry(&delivery.webhook_id, delivery.created_ms, &delivery.id),
                value: Status::name(Status::Pending).as_bytes().to_vec(),
            }));
        }
        ops.push(Op::Put(Entry {
            key,
            value: delivery.encode(),
        }));
        match store::commit(self.kv, &guards, &ops) {
            Ok(()) => Ok(DueDelivery {
                id: delivery.id,
                webhook_id: delivery.webhook_id,
            }),
            Err(CommitFailure::Conflict(_)) => Err(conflict("the delivery changed meanwhile; try again")),
            Err(CommitFailure::Store(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::params;

    fn q(pairs: &[(&str, &str)]) -> Result<LogQuery> {
        LogQuery::from_query(&params(pairs))
    }

    #[test]
    fn log_queries_follow_the_paging_rules() {
        assert_eq!(
            q(&[]).unwrap(),
            LogQuery {
                offset: 0,
                limit: 10,
                status: None
            }
        );
        assert_eq!(
            q(&[("status", "failed"), ("limit", "5")]).unwrap().status,
            Some(Status::Failed)
        );
        assert_eq!(q(&[("status", "skipped")]).unwrap().status, Some(Status::Skipped));
        for bad in [("status", "lost"), ("limit", "0"), ("limit", "201"), ("offset", "-1")] {
            assert!(matches!(q(&[bad]), Err(crate::Error::Invalid(_))), "{bad:?}");
        }
        assert!(q(&[("status", "failed"), ("status", "pending")]).is_err());
    }

    #[test]
    fn from_format_5_outcomes_leave_the_log_entries_alone_and_the_status_filter_reads_the_records() {
        use crate::testing::{AT_NOW, Deliveries, FixedAccess, delivery, events, message, publish, store, webhook};
        let Deliveries { kv, sender } = Deliveries::default();
        let mut hook = webhook("w", "t", "w");
        (hook.group_id, hook.url) = ("g1".into(), "http://a/200".into());
        store(&kv, &hook);
        let events = events(&kv, &sender);
        let log_value = |id: &str| {
            let created_ms = delivery(&kv, id).created_ms;
            kv.get(&keys::log_entry("w", created_ms, id)).unwrap().unwrap()
        };
        let log = DeliveryLog::new(&kv, &FixedAccess, &AT_NOW);
        let total = |status: &str| -> Value {
            let query = if status.is_empty() {
                vec![]
            } else {
                params(&[("status", status)])
            };
            let page: Value = serde_json::from_str(&log.list("viewer", "w", &query).unwrap()).unwrap();
            page["total"].clone()
        };

        format::raise(&kv, format::COMPACT).unwrap();
        let earlier = publish(&events, message("t", None, b"1", None));
        events.deliver(&earlier).unwrap();
        assert_eq!(log_value(&earlier[0]), b"delivered");
        format::raise(&kv, format::LEAN).unwrap();
        let delivered = publish(&events, message("t", None, b"2", None));
        assert_eq!(log_value(&delivered[0]), b"", "written once, empty");
        events.deliver(&delivered).unwrap();
        hook.url = "http://a/malformed".into();
        store(&kv, &hook);
        let failed = publish(&events, message("t", None, b"3", None));
        events.deliver(&failed).unwrap();
        let pending = publish(&events, message("t", None, b"4", None));
        for id in [&delivered[0], &failed[0], &pending[0]] {
            assert_eq!(log_value(id), b"", "no outcome rewrites it");
        }
        assert_eq!(delivery(&kv, &failed[0]).status, Status::Failed);
        assert_eq!(
            [
                total(""),
                total("delivered"),
                total("failed"),
                total("pending"),
                total("skipped")
            ],
            [4, 2, 1, 1, 0]
        );
        let page: Value =
            serde_json::from_str(&log.list("viewer", "w", &params(&[("status", "pending")])).unwrap()).unwrap();
        assert_eq!(page["deliveries"][0]["id"], pending[0].as_str());
        log.retry("editor", "w", &failed[0]).unwrap();
        assert_eq!(log_value(&failed[0]), b"", "a retry leaves it alone too");
        assert_eq!([total("failed"), total("pending")], [0, 2]);
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
