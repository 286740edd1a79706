//! Webhooks another service kept, brought in with their ids: validated as a create is, stored
//! with the same record and indexes, and never twice.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::Error;
use crate::bindings::exports::mainflux::webhooks::migration::{ForeignWebhook, ImportOutcome};
use crate::bindings::mainflux::webhooks::store::{Condition, Entry, Op};
use crate::error::Result;
use crate::keys;
use crate::ports::Kv;
use crate::store::{self, CommitFailure, store_error};
use crate::webhooks::record::{Webhook, WebhookInput};
use crate::webhooks::storage;

/// The import of foreign webhooks over a store.
pub struct Import<'a> {
    kv: &'a dyn Kv,
}

impl<'a> Import<'a> {
    /// Binds the import to the store.
    pub fn new(kv: &'a dyn Kv) -> Self {
        Import { kv }
    }

    /// Stores each webhook whose id is not stored yet; one outcome per webhook, in order.
    pub fn import(&self, foreign: &[ForeignWebhook]) -> Result<Vec<ImportOutcome>> {
        let mut outcomes: Vec<Option<ImportOutcome>> = vec![None; foreign.len()];
        let mut candidates: Vec<(usize, Webhook)> = Vec::with_capacity(foreign.len());
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for (index, webhook) in foreign.iter().enumerate() {
            let webhook = match to_webhook(webhook) {
                Ok(webhook) => webhook,
                Err(reason) => {
                    outcomes[index] = Some(ImportOutcome::Refused(reason));
                    continue;
                }
            };
            // Guards see the store as it was before the commit, so repeats within one call
            // are settled here.
            if !ids.insert(webhook.id.clone()) {
                outcomes[index] = Some(ImportOutcome::Present);
            } else if !names.insert((webhook.thing_id.clone(), webhook.name.clone())) {
                outcomes[index] = Some(name_taken(&webhook));
            } else {
                candidates.push((index, webhook));
            }
        }
        // What is already stored is settled with two reads rather than one failed commit each.
        let record_keys: Vec<Vec<u8>> = candidates.iter().map(|(_, w)| keys::webhook(&w.id)).collect();
        let name_keys: Vec<Vec<u8>> = candidates
            .iter()
            .map(|(_, w)| keys::name(&w.thing_id, &w.name))
            .collect();
        let stored = self.kv.get_many(&record_keys).map_err(store_error)?;
        let named = self.kv.get_many(&name_keys).map_err(store_error)?;
        let mut pending = Vec::with_capacity(candidates.len());
        for (((index, webhook), stored), named) in candidates.into_iter().zip(stored).zip(named) {
            if stored.is_some() {
                outcomes[index] = Some(ImportOutcome::Present);
            } else if named.is_some() {
                outcomes[index] = Some(name_taken(&webhook));
            } else {
                pending.push((index, webhook));
            }
        }
        // Another writer may store an id or a name meanwhile: its guard fails, that webhook is
        // settled and the others are committed again.
        while !pending.is_empty() {
            let mut guards = Vec::with_capacity(pending.len() * 2);
            let mut ops = Vec::new();
            for (_, webhook) in &pending {
                let name_key = keys::name(&webhook.thing_id, &webhook.name);
                guards.push(Condition::Absent(keys::webhook(&webhook.id)));
                guards.push(Condition::Absent(name_key.clone()));
                ops.push(Op::Put(Entry {
                    key: name_key,
                    value: webhook.id.clone().into_bytes(),
                }));
                storage::put_webhook(&mut ops, webhook);
            }
            match store::commit(self.kv, &guards, &ops) {
                Ok(()) => {
                    for (index, _) in pending.drain(..) {
                        outcomes[index] = Some(ImportOutcome::Imported);
                    }
                }
                Err(CommitFailure::Conflict(guard)) => {
                    let (index, webhook) = pending.remove(guard / 2);
                    outcomes[index] = Some(if guard % 2 == 0 {
                        ImportOutcome::Present
                    } else {
                        name_taken(&webhook)
                    });
                }
                Err(CommitFailure::Store(error)) => return Err(error),
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every webhook is settled"))
            .collect())
    }
}

/// The record a foreign webhook becomes, or why it cannot be stored.
fn to_webhook(foreign: &ForeignWebhook) -> std::result::Result<Webhook, String> {
    let id = uuid::Uuid::parse_str(&foreign.id).map_err(|_| format!("id {:?} is not a UUID", foreign.id))?;
    if foreign.thing_id.is_empty() {
        return Err("thing_id is empty".to_owned());
    }
    if foreign.group_id.is_empty() {
        return Err("group_id is empty".to_owned());
    }
    let mut fields = Map::new();
    fields.insert("name".into(), foreign.name.clone().into());
    fields.insert("url".into(), foreign.url.clone().into());
    fields.insert("headers".into(), json_object("headers", &foreign.headers)?);
    fields.insert("metadata".into(), json_object("metadata", &foreign.metadata)?);
    let input = WebhookInput::parse(&Value::Object(fields)).map_err(|error| message(&error))?;
    Ok(Webhook::new(
        id.hyphenated().to_string(),
        foreign.thing_id.clone(),
        foreign.group_id.clone(),
        input,
    ))
}

/// A JSON object column: empty text and `null` are no object.
fn json_object(field: &str, text: &str) -> std::result::Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    match serde_json::from_str(text) {
        Ok(value @ (Value::Object(_) | Value::Null)) => Ok(value),
        Ok(_) => Err(format!("{field} is not a JSON object")),
        Err(e) => Err(format!("{field} is not valid JSON: {e}")),
    }
}

fn name_taken(webhook: &Webhook) -> ImportOutcome {
    ImportOutcome::Refused(format!(
        "thing {} already has a webhook named {:?}",
        webhook.thing_id, webhook.name
    ))
}

fn message(error: &Error) -> String {
    match error {
        Error::Unauthenticated(m)
        | Error::Forbidden(m)
        | Error::NotFound(m)
        | Error::Conflict(m)
        | Error::Invalid(m)
        | Error::Unavailable(m)
        | Error::Internal(m) => m.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FixedAccess, MemoryKv, WatchedKv};
    use crate::webhooks::operations::Service;

    const ID: &str = "6f1c1f1e-0f5a-4a8e-9c39-2b1f3c4d5e6f";

    fn foreign(id: &str, thing: &str, name: &str) -> ForeignWebhook {
        ForeignWebhook {
            id: id.to_owned(),
            thing_id: thing.to_owned(),
            group_id: "g1".to_owned(),
            name: name.to_owned(),
            url: "https://receiver.example/hook".to_owned(),
            headers: r#"{"Authorization": "Bearer abc"}"#.to_owned(),
            metadata: r#"{"site": 7}"#.to_owned(),
        }
    }

    fn described(outcomes: &[ImportOutcome]) -> Vec<String> {
        outcomes
            .iter()
            .map(|outcome| match outcome {
                ImportOutcome::Imported => "imported".to_owned(),
                ImportOutcome::Present => "present".to_owned(),
                ImportOutcome::Refused(reason) => reason.clone(),
            })
            .collect()
    }

    fn id(n: u8) -> String {
        format!("6f1c1f1e-0f5a-4a8e-9c39-2b1f3c4d5e{n:02x}")
    }

    #[test]
    fn an_imported_webhook_keeps_its_id_and_fields_and_is_listed_like_a_created_one() {
        let kv = MemoryKv::default();
        let outcomes = Import::new(&kv).import(&[foreign(ID, "t1", "alarm")]).unwrap();
        assert_eq!(described(&outcomes), ["imported"]);
        let service = Service::new(&kv, &FixedAccess);
        let view: Value = serde_json::from_str(&service.view_webhook("viewer", ID).unwrap()).unwrap();
        assert_eq!(view["id"], ID);
        assert_eq!(view["thing_id"], "t1");
        assert_eq!(view["group_id"], "g1");
        assert_eq!(view["name"], "alarm");
        assert_eq!(view["headers"]["Authorization"], "Bearer abc");
        assert_eq!(view["metadata"]["site"], 7);
        let listed: Value = serde_json::from_str(&service.list_thing_webhooks("viewer", "t1", &[]).unwrap()).unwrap();
        assert_eq!(listed["total"], 1);
        let created = service.create_webhooks("editor", "t1", br#"[{"name": "alarm", "url": "http://h/"}]"#);
        assert!(
            matches!(created, Err(Error::Conflict(_))),
            "the name is reserved: {created:?}"
        );
    }

    #[test]
    fn importing_again_stores_nothing_twice_and_says_which_were_present() {
        let kv = MemoryKv::default();
        let first = [foreign(&id(1), "t1", "a"), foreign(&id(2), "t1", "b")];
        Import::new(&kv).import(&first).unwrap();
        let before = kv.map.borrow().clone();
        let again = [
            foreign(&id(1), "t1", "a"),
            foreign(&id(2), "t1", "b"),
            foreign(&id(3), "t2", "a"),
        ];
        let outcomes = Import::new(&kv).import(&again).unwrap();
        assert_eq!(described(&outcomes), ["present", "present", "imported"]);
        let after = kv.map.borrow().clone();
        assert!(
            before.iter().all(|(key, value)| after.get(key) == Some(value)),
            "nothing was rewritten"
        );
    }

    #[test]
    fn bad_rows_are_refused_with_their_reason_and_the_others_imported() {
        let kv = MemoryKv::default();
        let mut not_uuid = foreign("17", "t1", "a");
        not_uuid.id = "17".to_owned();
        let mut bad_url = foreign(&id(2), "t1", "b");
        bad_url.url = "ftp://x".to_owned();
        let mut managed_header = foreign(&id(3), "t1", "c");
        managed_header.headers = r#"{"Connection": "close"}"#.to_owned();
        let mut broken_metadata = foreign(&id(4), "t1", "d");
        broken_metadata.metadata = "[1".to_owned();
        let mut null_columns = foreign(&id(5), "t1", "e");
        null_columns.headers = String::new();
        null_columns.metadata = "null".to_owned();
        let same_name = foreign(&id(6), "t1", "e");
        let outcomes = Import::new(&kv)
            .import(&[
                not_uuid,
                bad_url,
                managed_header,
                broken_metadata,
                null_columns,
                same_name,
            ])
            .unwrap();
        let reasons = described(&outcomes);
        assert!(reasons[0].contains("not a UUID"), "{reasons:?}");
        assert!(reasons[1].contains("url"), "{reasons:?}");
        assert!(reasons[2].contains("Connection"), "{reasons:?}");
        assert!(reasons[3].contains("metadata"), "{reasons:?}");
        assert_eq!(reasons[4], "imported");
        assert!(reasons[5].contains("already has a webhook named"), "{reasons:?}");
    }

    #[test]
    fn a_name_taken_between_the_reads_and_the_commit_refuses_that_webhook_alone() {
        let kv = WatchedKv::default();
        kv.before_next_commit(|inner| {
            Service::new(inner, &FixedAccess)
                .create_webhooks("editor", "t1", br#"[{"name": "b", "url": "http://h/"}]"#)
                .unwrap();
        });
        let outcomes = Import::new(&kv)
            .import(&[
                foreign(&id(1), "t1", "a"),
                foreign(&id(2), "t1", "b"),
                foreign(&id(3), "t1", "c"),
            ])
            .unwrap();
        let described = described(&outcomes);
        assert_eq!(described[0], "imported");
        assert!(described[1].contains("named \"b\""), "{described:?}");
        assert_eq!(described[2], "imported");
    }
}
