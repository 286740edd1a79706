//! The webhook operations behind the REST API: access checks, validation, and the guarded
//! commits that keep records and indexes consistent.

use serde_json::Value;

use crate::Role;
use crate::bindings::mainflux::webhooks::store::{Condition, Entry, Op};
use crate::error::{Result, conflict, invalid, not_found, unavailable};
use crate::keys;
use crate::ports::{Access, Kv, require_token};
use crate::record::Record;
use crate::store::{self, COMMIT_ATTEMPTS, CommitFailure, Step};
use crate::webhooks::listing::PageQuery;
use crate::webhooks::record::{Webhook, WebhookInput};
use crate::webhooks::storage;

/// The webhook operations over a store and an identity service.
pub struct Service<'a> {
    kv: &'a dyn Kv,
    access: &'a dyn Access,
    webhook_quota: u32,
}

impl<'a> Service<'a> {
    /// Binds the operations to their capabilities.
    pub fn new(kv: &'a dyn Kv, access: &'a dyn Access) -> Self {
        Service {
            kv,
            access,
            webhook_quota: 0,
        }
    }

    /// The same, with at most `quota` webhooks per group (0: no limit).
    pub fn with_webhook_quota(mut self, quota: u32) -> Self {
        self.webhook_quota = quota;
        self
    }

    /// Creates every webhook of the body for the thing, or none; answers the JSON array of
    /// the created webhooks in input order.
    pub fn create_webhooks(&self, token: &str, thing_id: &str, body: &[u8]) -> Result<String> {
        require_token(token)?;
        let group_id = self.access.authorize_thing(token, thing_id, Role::Editor)?;
        let inputs = parse_create_body(body)?;
        for (i, input) in inputs.iter().enumerate() {
            if inputs[..i].iter().any(|earlier| earlier.name == input.name) {
                return Err(conflict(format!("the request names two webhooks {:?}", input.name)));
            }
        }
        for _ in 0..COMMIT_ATTEMPTS {
            let mut guards = Vec::with_capacity(inputs.len() + 1);
            let mut ops = Vec::with_capacity(inputs.len() * 4 + 1);
            let mut created = Vec::with_capacity(inputs.len());
            for input in &inputs {
                let id = uuid::Uuid::new_v4().to_string();
                let name_key = keys::name(thing_id, &input.name);
                guards.push(Condition::Absent(name_key.clone()));
                ops.push(Op::Put(Entry {
                    key: name_key,
                    value: id.clone().into_bytes(),
                }));
                let webhook = Webhook::new(id, thing_id.to_owned(), group_id.clone(), input.clone());
                storage::put_webhook(&mut ops, &webhook);
                created.push(webhook);
            }
            if self.webhook_quota > 0 {
                let (guard, op) = self.within_quota(&group_id, created.len())?;
                guards.push(guard);
                ops.push(op);
            }
            match store::commit(self.kv, &guards, &ops) {
                Ok(()) => return Ok(Value::Array(created.iter().map(Webhook::view).collect()).to_string()),
                // Another create in the group went in since this one counted: count again.
                Err(CommitFailure::Conflict(index)) if index == created.len() => continue,
                Err(CommitFailure::Conflict(index)) => return Err(name_taken(&created[index].name)),
                Err(CommitFailure::Store(e)) => return Err(e),
            }
        }
        Err(unavailable(
            "too many webhooks are being created in this group at once; try again",
        ))
    }

    /// Checks that `adding` more webhooks keep the group within its quota; answers the guard
    /// and write that make a concurrent create in the group, counted against the same webhooks,
    /// fail this commit.
    fn within_quota(&self, group_id: &str, adding: usize) -> Result<(Condition, Op)> {
        // Read before counting: a create that goes in after this read changes the token.
        let guarded = storage::group_creates_guard(self.kv, group_id)?;
        let stored = storage::count_under(self.kv, &keys::by_group_prefix(group_id))?;
        let quota = self.webhook_quota as usize;
        if stored + adding > quota {
            return Err(conflict(format!(
                "the group has {stored} webhooks and a quota of {quota}; {adding} more would pass it"
            )));
        }
        Ok(guarded)
    }

    /// A page of the thing's webhooks, selected by URL query parameters.
    pub fn list_thing_webhooks(&self, token: &str, thing_id: &str, query: &[(String, String)]) -> Result<String> {
        require_token(token)?;
        self.access.authorize_thing(token, thing_id, Role::Viewer)?;
        let query = PageQuery::from_query(query)?;
        self.page(&keys::by_thing_prefix(thing_id), &query)
    }

    /// A page of the group's webhooks, selected by URL query parameters.
    pub fn list_group_webhooks(&self, token: &str, group_id: &str, query: &[(String, String)]) -> Result<String> {
        require_token(token)?;
        self.access.authorize_group(token, group_id, Role::Viewer)?;
        let query = PageQuery::from_query(query)?;
        self.group_page(group_id, &query)
    }

    /// A page of the thing's webhooks, selected by a JSON search body.
    pub fn search_thing_webhooks(&self, token: &str, thing_id: &str, body: &[u8]) -> Result<String> {
        require_token(token)?;
        self.access.authorize_thing(token, thing_id, Role::Viewer)?;
        let query = PageQuery::from_body(body)?;
        self.page(&keys::by_thing_prefix(thing_id), &query)
    }

    /// A page of the group's webhooks, selected by a JSON search body.
    pub fn search_group_webhooks(&self, token: &str, group_id: &str, body: &[u8]) -> Result<String> {
        require_token(token)?;
        self.access.authorize_group(token, group_id, Role::Viewer)?;
        let query = PageQuery::from_body(body)?;
        self.group_page(group_id, &query)
    }

    /// One webhook, for a viewer of its group.
    pub fn view_webhook(&self, token: &str, id: &str) -> Result<String> {
        require_token(token)?;
        self.access.authenticate(token)?;
        let (webhook, _) = storage::load_webhook(self.kv, id)?.ok_or_else(webhook_not_found)?;
        self.access.authorize_group(token, &webhook.group_id, Role::Viewer)?;
        Ok(webhook.view().to_string())
    }

    /// Replaces a webhook's name, url, headers and metadata, for an editor of its group.
    pub fn update_webhook(&self, token: &str, id: &str, body: &[u8]) -> Result<()> {
        require_token(token)?;
        self.access.authenticate(token)?;
        let mut input: Option<WebhookInput> = None;
        let mut new_name = String::new();
        store::commit_retrying(self.kv, busy, |conflict| {
            // Guard 0 is the record as read: a concurrent update, so read again. Any later
            // guard is the new name, taken meanwhile.
            if conflict.is_some_and(|index| index > 0) {
                return Err(name_taken(&new_name));
            }
            let (current, stored) = storage::load_webhook(self.kv, id)?.ok_or_else(webhook_not_found)?;
            self.access.authorize_group(token, &current.group_id, Role::Editor)?;
            let input = match &input {
                Some(input) => input,
                None => input.insert(WebhookInput::parse(&parse_json(body)?)?),
            };
            let mut updated = current.clone();
            updated.apply(input.clone());
            let mut guards = vec![Condition::Equals(Entry {
                key: keys::webhook(id),
                value: stored,
            })];
            let mut ops = Vec::with_capacity(5);
            if updated.name != current.name {
                let new_name_key = keys::name(&updated.thing_id, &updated.name);
                guards.push(Condition::Absent(new_name_key.clone()));
                ops.push(Op::Delete(keys::name(&current.thing_id, &current.name)));
                ops.push(Op::Put(Entry {
                    key: new_name_key,
                    value: id.as_bytes().to_vec(),
                }));
                // Before the put: suffixes both names share are deleted, then written again.
                storage::delete_name_suffixes(&mut ops, &current);
            }
            storage::put_webhook(&mut ops, &updated);
            new_name = updated.name;
            Ok(Step::Commit {
                guards,
                ops,
                answer: (),
            })
        })
    }

    /// Removes every listed webhook, or none: all must exist and the caller must be an editor
    /// of each one's group.
    pub fn remove_webhooks(&self, token: &str, body: &[u8]) -> Result<()> {
        require_token(token)?;
        self.access.authenticate(token)?;
        let ids = parse_remove_body(body)?;
        let record_keys: Vec<Vec<u8>> = ids.iter().map(|id| keys::webhook(id)).collect();
        crate::removal::remove_webhooks(self.kv, busy, || {
            let stored = self.kv.get_many(&record_keys).map_err(store::store_error)?;
            let mut webhooks = Vec::with_capacity(ids.len());
            for (id, bytes) in ids.iter().zip(stored) {
                let Some(bytes) = bytes else {
                    return Err(not_found(format!("webhook {id} not found")));
                };
                webhooks.push((Webhook::decode(&bytes)?, bytes));
            }
            let mut checked: Vec<&str> = Vec::new();
            for (webhook, _) in &webhooks {
                if !checked.contains(&webhook.group_id.as_str()) {
                    self.access.authorize_group(token, &webhook.group_id, Role::Editor)?;
                    checked.push(&webhook.group_id);
                }
            }
            Ok(webhooks)
        })?;
        Ok(())
    }

    /// A group's page: with a name filter, only the webhooks the name-search index names are
    /// read, so the cost grows with the matches, not with the group; until the backfill has
    /// indexed every webhook, the whole group is read.
    fn group_page(&self, group_id: &str, query: &PageQuery) -> Result<String> {
        if let Some(name) = query.name.as_deref().filter(|name| !name.is_empty())
            && storage::group_names_indexed(self.kv)?
        {
            let mut matches = storage::scan_name_candidates(self.kv, group_id, name)?;
            // The index only narrows: truncated suffixes match more than the query does.
            matches.retain(|webhook| webhook.group_id == group_id && query.matches(webhook));
            return Ok(query.page(matches).to_string());
        }
        self.page(&keys::by_group_prefix(group_id), query)
    }

    fn page(&self, prefix: &[u8], query: &PageQuery) -> Result<String> {
        let mut matches = storage::scan_webhooks(self.kv, prefix)?;
        matches.retain(|webhook| query.matches(webhook));
        Ok(query.page(matches).to_string())
    }
}

fn parse_json(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body).map_err(|e| invalid(format!("request body is not valid JSON: {e}")))
}

/// Reads a create body: an array of webhooks, or `{"webhooks": [...]}`.
fn parse_create_body(body: &[u8]) -> Result<Vec<WebhookInput>> {
    let items = match parse_json(body)? {
        Value::Array(items) => items,
        Value::Object(mut fields) => match fields.remove("webhooks") {
            Some(Value::Array(items)) => items,
            _ => return Err(invalid("request body must be a JSON array of webhooks")),
        },
        _ => return Err(invalid("request body must be a JSON array of webhooks")),
    };
    if items.is_empty() {
        return Err(invalid("at least one webhook is required"));
    }
    let several = items.len() > 1;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            WebhookInput::parse(item).map_err(|e| match e {
                crate::Error::Invalid(message) if several => invalid(format!("webhook {i}: {message}")),
                other => other,
            })
        })
        .collect()
}

/// Reads a remove body, `{"webhook_ids": [...]}`, without repeated ids.
fn parse_remove_body(body: &[u8]) -> Result<Vec<String>> {
    let shape = || invalid("request body must be {\"webhook_ids\": [\"<id>\", ...]}");
    let Value::Object(mut fields) = parse_json(body)? else {
        return Err(shape());
    };
    let Some(Value::Array(items)) = fields.remove("webhook_ids") else {
        return Err(shape());
    };
    if items.is_empty() {
        return Err(invalid("webhook_ids must not be empty"));
    }
    let mut ids: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(id) = item else {
            return Err(invalid("webhook_ids must be strings"));
        };
        if id.is_empty() {
            return Err(invalid("webhook_ids must not contain an empty id"));
        }
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn webhook_not_found() -> crate::Error {
    not_found("webhook not found")
}

fn name_taken(name: &str) -> crate::Error {
    conflict(format!("a webhook named {name:?} already exists for this thing"))
}

fn busy() -> crate::Error {
    conflict("the webhook was changed by another request at the same time; try again")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::testing::{FixedAccess, MemoryKv, WatchedKv, params, store_unindexed, webhook};
    use serde_json::json;

    fn with_service<T>(f: impl FnOnce(&Service) -> T) -> T {
        let kv = MemoryKv::default();
        f(&Service::new(&kv, &FixedAccess))
    }

    fn create(service: &Service, thing: &str, body: Value) -> Result<Vec<Value>> {
        let answer = service.create_webhooks("editor", thing, body.to_string().as_bytes())?;
        Ok(serde_json::from_str::<Vec<Value>>(&answer).unwrap())
    }

    fn list(service: &Service, thing: &str) -> Value {
        serde_json::from_str(&service.list_thing_webhooks("viewer", thing, &[]).unwrap()).unwrap()
    }

    #[test]
    fn a_create_past_the_groups_webhook_quota_is_refused_whole() {
        let kv = MemoryKv::default();
        let service = Service::new(&kv, &FixedAccess).with_webhook_quota(3);
        let hooks =
            |names: &[&str]| Value::Array(names.iter().map(|n| json!({"name": n, "url": "http://h"})).collect());
        create(&service, "t1", hooks(&["a", "b"])).unwrap();
        let refused = create(&service, "t2", hooks(&["c", "d"])).unwrap_err();
        assert!(
            matches!(&refused, Error::Conflict(m) if m.contains("2 webhooks and a quota of 3")),
            "{refused:?}"
        );
        assert_eq!(
            list(&service, "t2")["total"],
            0,
            "nothing of a refused create is stored"
        );
        create(&service, "t2", hooks(&["c"])).unwrap();
        assert!(matches!(create(&service, "t1", hooks(&["e"])), Err(Error::Conflict(_))));
        assert!(kv.get(&keys::group_creates("g1")).unwrap().is_some());
        // Without a quota nothing is counted and no token is kept.
        let kv = MemoryKv::default();
        let service = Service::new(&kv, &FixedAccess);
        create(&service, "t1", hooks(&["a", "b", "c", "d"])).unwrap();
        assert!(kv.get(&keys::group_creates("g1")).unwrap().is_none());
    }

    #[test]
    fn create_assigns_ids_and_groups_and_keeps_input_order() {
        with_service(|service| {
            let created = create(
                service,
                "t1",
                json!([{"name": "b", "url": "http://h/1"}, {"name": "a", "url": "http://h/2", "id": "mine"}]),
            )
            .unwrap();
            assert_eq!(created.len(), 2);
            assert_eq!(created[0]["name"], "b");
            assert_ne!(created[1]["id"], "mine");
            assert!(
                uuid::Uuid::parse_str(created[1]["id"].as_str().unwrap())
                    .unwrap()
                    .get_version_num()
                    == 4
            );
            assert_eq!(created[0]["group_id"], "g1");
            assert_eq!(created[0]["thing_id"], "t1");
            let wrapped = create(service, "t1", json!({"webhooks": [{"name": "c", "url": "http://h"}]})).unwrap();
            assert_eq!(wrapped.len(), 1);
        });
    }

    #[test]
    fn create_is_all_or_nothing() {
        with_service(|service| {
            create(service, "t1", json!([{"name": "taken", "url": "http://h"}])).unwrap();
            let again = create(
                service,
                "t1",
                json!([{"name": "fresh", "url": "http://h"}, {"name": "taken", "url": "http://h"}]),
            );
            assert!(matches!(again, Err(Error::Conflict(_))));
            let invalid = create(
                service,
                "t1",
                json!([{"name": "fresh", "url": "http://h"}, {"name": "x", "url": "ftp://h"}]),
            );
            assert!(matches!(invalid, Err(Error::Invalid(m)) if m.starts_with("webhook 1:")));
            let twice = create(
                service,
                "t1",
                json!([{"name": "d", "url": "http://h"}, {"name": "d", "url": "http://h"}]),
            );
            assert!(matches!(twice, Err(Error::Conflict(_))));
            assert_eq!(list(service, "t1")["total"], 1);
            // The same name on another thing is fine.
            create(service, "t2", json!([{"name": "taken", "url": "http://h"}])).unwrap();
        });
    }

    #[test]
    fn a_header_the_service_manages_is_refused_on_create_and_update() {
        with_service(|service| {
            let refused = "header \"Connection\" cannot be set on a webhook: the service manages it";
            let created = create(
                service,
                "t1",
                json!([{"name": "n", "url": "http://h", "headers": {"Connection": "close"}}]),
            );
            assert!(matches!(created, Err(Error::Invalid(m)) if m == refused));
            let id = create(
                service,
                "t1",
                json!([{"name": "n", "url": "http://h", "headers": {"Content-Type": "text/csv"}}]),
            )
            .unwrap()[0]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let update = json!({"name": "n", "url": "http://h", "headers": {"webhook-Signature": "v1,x"}});
            assert!(matches!(
                service.update_webhook("editor", &id, update.to_string().as_bytes()),
                Err(Error::Invalid(m)) if m.contains("\"webhook-Signature\" cannot be set")
            ));
            let view: Value = serde_json::from_str(&service.view_webhook("viewer", &id).unwrap()).unwrap();
            assert_eq!(
                view["headers"],
                json!({"Content-Type": "text/csv"}),
                "the update changed nothing"
            );
        });
    }

    #[test]
    fn roles_are_enforced() {
        with_service(|service| {
            let body = json!([{"name": "n", "url": "http://h"}]).to_string();
            assert!(matches!(
                service.create_webhooks("", "t1", body.as_bytes()),
                Err(Error::Unauthenticated(_))
            ));
            assert!(matches!(
                service.create_webhooks("nobody", "t1", body.as_bytes()),
                Err(Error::Unauthenticated(_))
            ));
            assert!(matches!(
                service.create_webhooks("viewer", "t1", body.as_bytes()),
                Err(Error::Forbidden(_))
            ));
            assert!(matches!(
                service.create_webhooks("editor", "t9", body.as_bytes()),
                Err(Error::NotFound(_))
            ));
            assert!(matches!(
                service.list_thing_webhooks("outsider", "t1", &[]),
                Err(Error::Forbidden(_))
            ));
            let id = create(service, "t1", json!([{"name": "n", "url": "http://h"}])).unwrap()[0]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(service.view_webhook("viewer", &id).is_ok());
            assert!(matches!(
                service.view_webhook("outsider", &id),
                Err(Error::Forbidden(_))
            ));
            assert!(matches!(
                service.view_webhook("nobody", "missing"),
                Err(Error::Unauthenticated(_))
            ));
            let update = json!({"name": "n", "url": "http://h"}).to_string();
            assert!(matches!(
                service.update_webhook("viewer", &id, update.as_bytes()),
                Err(Error::Forbidden(_))
            ));
            let remove = json!({"webhook_ids": [id]}).to_string();
            assert!(matches!(
                service.remove_webhooks("viewer", remove.as_bytes()),
                Err(Error::Forbidden(_))
            ));
        });
    }

    #[test]
    fn update_replaces_fields_and_moves_the_name() {
        with_service(|service| {
            let created = create(service, "t1", json!([{"name": "a", "url": "http://h", "headers": {"X": "1"}, "metadata": {"k": 1}}, {"name": "b", "url": "http://h"}])).unwrap();
            let id = created[0]["id"].as_str().unwrap();
            service
                .update_webhook("editor", id, br#"{"name":"c","url":"https://new"}"#)
                .unwrap();
            let view: Value = serde_json::from_str(&service.view_webhook("viewer", id).unwrap()).unwrap();
            assert_eq!(
                view,
                json!({"id": id, "thing_id": "t1", "group_id": "g1", "name": "c", "url": "https://new"})
            );
            // The old name is free again, the new one taken.
            create(service, "t1", json!([{"name": "a", "url": "http://h"}])).unwrap();
            assert!(matches!(
                service.update_webhook("editor", id, br#"{"name":"b","url":"http://h"}"#),
                Err(Error::Conflict(_))
            ));
            assert!(matches!(
                service.update_webhook("editor", "missing", br#"{"name":"b","url":"http://h"}"#),
                Err(Error::NotFound(_))
            ));
            assert!(matches!(
                service.update_webhook("editor", id, br#"{"name":""}"#),
                Err(Error::Invalid(_))
            ));
            let listed = list(service, "t1");
            assert_eq!(listed["total"], 3);
        });
    }

    #[test]
    fn remove_is_all_or_nothing() {
        with_service(|service| {
            let created = create(
                service,
                "t1",
                json!([{"name": "a", "url": "http://h"}, {"name": "b", "url": "http://h"}]),
            )
            .unwrap();
            let a = created[0]["id"].as_str().unwrap();
            let b = created[1]["id"].as_str().unwrap();
            let body = json!({"webhook_ids": [a, "missing"]}).to_string();
            assert!(matches!(
                service.remove_webhooks("editor", body.as_bytes()),
                Err(Error::NotFound(_))
            ));
            assert_eq!(list(service, "t1")["total"], 2);
            assert!(matches!(
                service.remove_webhooks("editor", br#"{"webhook_ids":[]}"#),
                Err(Error::Invalid(_))
            ));
            assert!(matches!(
                service.remove_webhooks("editor", br#"{"ids":["x"]}"#),
                Err(Error::Invalid(_))
            ));
            let body = json!({"webhook_ids": [a, b, a]}).to_string();
            service.remove_webhooks("editor", body.as_bytes()).unwrap();
            assert_eq!(list(service, "t1")["total"], 0);
            // Names are free again.
            create(service, "t1", json!([{"name": "a", "url": "http://h"}])).unwrap();
        });
    }

    #[test]
    fn group_lists_span_things_and_filter() {
        with_service(|service| {
            create(
                service,
                "t1",
                json!([{"name": "Alpha", "url": "http://one", "metadata": {"site": "x"}}]),
            )
            .unwrap();
            create(service, "t2", json!([{"name": "beta", "url": "http://two"}])).unwrap();
            let page: Value = serde_json::from_str(&service.list_group_webhooks("viewer", "g1", &[]).unwrap()).unwrap();
            assert_eq!(page["total"], 2);
            let filtered: Value = serde_json::from_str(
                &service
                    .search_group_webhooks("viewer", "g1", br#"{"metadata":{"site":"x"}}"#)
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(filtered["total"], 1);
            assert_eq!(filtered["webhooks"][0]["name"], "Alpha");
            assert_eq!(list(service, "t2")["total"], 1);
            assert!(matches!(
                service.list_group_webhooks("viewer", "g9", &[]),
                Err(Error::NotFound(_))
            ));
        });
    }

    impl WatchedKv {
        /// Whether a listing since the last call read the whole group.
        fn read_whole_group(&self) -> bool {
            let whole = keys::by_group_prefix("g1");
            self.take_scanned().contains(&whole)
        }

        /// The name-search entries stored, as (suffix, id) pairs.
        fn name_entries(&self) -> Vec<(String, String)> {
            let map = self.memory.map.borrow();
            map.keys()
                .filter(|k| k.starts_with(b"gs\0"))
                .map(|k| {
                    let id = keys::name_suffix_id(k).unwrap().to_owned();
                    let suffix = keys::name_suffix_text("g1", k).unwrap().to_owned();
                    (suffix, id)
                })
                .collect()
        }
    }

    fn maintain_all(kv: &dyn Kv) {
        let upkeep = crate::webhooks::name_index::Upkeep::new(kv);
        while upkeep.maintain(3).unwrap() > 0 {}
    }

    fn group_list(service: &Service, pairs: &[(&str, &str)]) -> Value {
        serde_json::from_str(&service.list_group_webhooks("viewer", "g1", &params(pairs)).unwrap()).unwrap()
    }

    /// The page the full scan answers, to hold the indexed one against.
    fn full_scan(service: &Service, pairs: &[(&str, &str)]) -> Value {
        let query = PageQuery::from_query(&params(pairs)).unwrap();
        serde_json::from_str(&service.page(&keys::by_group_prefix("g1"), &query).unwrap()).unwrap()
    }

    #[test]
    fn indexed_name_search_answers_what_the_full_scan_answers() {
        let kv = WatchedKv::default();
        let service = Service::new(&kv, &FixedAccess);
        let long = format!("{}needle{}", "x".repeat(60), "é".repeat(40));
        let names = [
            "Alpha",
            "alphabet soup",
            "ALPHA-2",
            "beta",
            "mid-alph-dle",
            "Ünïcode hook",
            "ünÏCODE",
            "ab ab ab",
            "end-ab",
            &long,
            &"a".repeat(60),
            &format!("{}é{}", "b".repeat(47), "tail"),
        ];
        for (i, name) in names.iter().enumerate() {
            let thing = if i % 2 == 0 { "t1" } else { "t2" };
            create(
                &service,
                thing,
                json!([{"name": name, "url": "http://h", "metadata": {"i": i % 3}}]),
            )
            .unwrap();
        }
        maintain_all(&kv);
        let long_query = format!("{}needle", "x".repeat(50));
        let near_miss = format!("{}nope", "x".repeat(60));
        let cut_query = format!("{}é", "b".repeat(47));
        let queries = [
            "alph",
            "ALPH",
            "pha",
            "a",
            "bet",
            "ünï",
            "ÜNÏCODE",
            "code",
            "hook",
            "ab",
            "b",
            "needle",
            "zzz",
            &long_query,
            &near_miss,
            &long,
            &cut_query,
            "éta",
        ];
        let pagings: [&[(&str, &str)]; 4] = [
            &[],
            &[("limit", "2"), ("offset", "1")],
            &[("order", "name"), ("dir", "asc")],
            &[
                ("order", "id"),
                ("dir", "asc"),
                ("offset", "1"),
                ("limit", "3"),
                ("metadata", r#"{"i":1}"#),
            ],
        ];
        for query in queries {
            for paging in pagings {
                let mut params = vec![("name", query)];
                params.extend_from_slice(paging);
                let expected = full_scan(&service, &params);
                kv.take_scanned();
                let indexed = group_list(&service, &params);
                assert!(!kv.read_whole_group(), "{params:?} read the whole group");
                assert_eq!(indexed, expected, "{params:?}");
            }
        }
        // A name holding the query three times is listed once.
        let page = group_list(&service, &[("name", "ab "), ("limit", "100")]);
        assert_eq!(page["total"], 1);
        assert_eq!(page["webhooks"][0]["name"], "ab ab ab");
        let page = group_list(&service, &[("name", "AB"), ("limit", "100")]);
        assert_eq!(page["total"], 3, "{page}");
        assert_eq!(group_list(&service, &[("name", &near_miss)])["total"], 0);
        assert_eq!(group_list(&service, &[("name", &long_query)])["total"], 1);
        assert_eq!(group_list(&service, &[("name", "ÜNÏ")])["total"], 2);
        // The search body takes the same path.
        kv.take_scanned();
        let body = json!({"name": "Alph", "order": "name", "dir": "asc"}).to_string();
        let searched: Value =
            serde_json::from_str(&service.search_group_webhooks("viewer", "g1", body.as_bytes()).unwrap()).unwrap();
        assert!(!kv.read_whole_group());
        assert_eq!(
            searched,
            full_scan(&service, &[("name", "alph"), ("order", "name"), ("dir", "asc")])
        );
        assert_eq!(searched["total"], 4);
        // No name filter, or a thing's list, reads the whole list as before.
        assert_eq!(group_list(&service, &[])["total"], names.len());
        assert!(kv.read_whole_group());
    }

    #[test]
    fn a_rename_or_removal_leaves_no_name_entries_behind() {
        let kv = WatchedKv::default();
        let service = Service::new(&kv, &FixedAccess);
        maintain_all(&kv);
        let created = create(
            &service,
            "t1",
            json!([{"name": "Old-Name", "url": "http://h"}, {"name": "other", "url": "http://h"}]),
        )
        .unwrap();
        let id = created[0]["id"].as_str().unwrap();
        let other = created[1]["id"].as_str().unwrap();
        assert_eq!(group_list(&service, &[("name", "old")])["total"], 1);
        service
            .update_webhook("editor", id, br#"{"name":"new-name","url":"http://h"}"#)
            .unwrap();
        assert_eq!(group_list(&service, &[("name", "old")])["total"], 0);
        assert_eq!(group_list(&service, &[("name", "new-")])["total"], 1);
        // Suffixes both names share ("-name", "name", ...) are there, written again.
        assert_eq!(group_list(&service, &[("name", "-name")])["total"], 1);
        let mine: Vec<String> = kv
            .name_entries()
            .into_iter()
            .filter(|(_, owner)| owner == id)
            .map(|(suffix, _)| suffix)
            .collect();
        let expected: Vec<String> = keys::name_suffixes("g1", id, "new-name")
            .iter()
            .map(|k| keys::name_suffix_text("g1", k).unwrap().to_owned())
            .collect();
        assert_eq!(mine, expected);
        // An update that keeps the name keeps its entries.
        service
            .update_webhook("editor", id, br#"{"name":"new-name","url":"http://other"}"#)
            .unwrap();
        assert_eq!(group_list(&service, &[("name", "new-name")])["total"], 1);
        let body = json!({"webhook_ids": [id]}).to_string();
        service.remove_webhooks("editor", body.as_bytes()).unwrap();
        assert!(kv.name_entries().iter().all(|(_, owner)| owner == other));
        assert_eq!(group_list(&service, &[("name", "name")])["total"], 0);
        let body = json!({"webhook_ids": [other]}).to_string();
        service.remove_webhooks("editor", body.as_bytes()).unwrap();
        assert!(kv.name_entries().is_empty());
    }

    /// Stores a webhook of group `g1` as the version before the name-search index did.
    fn store_unindexed_in_g1(kv: &dyn Kv, id: &str, thing: &str, name: &str) {
        let mut legacy = webhook(id, thing, name);
        legacy.group_id = "g1".into();
        store_unindexed(kv, &legacy);
    }

    #[test]
    fn records_from_before_the_index_are_found_by_the_full_scan_until_the_backfill_ends() {
        let kv = WatchedKv::default();
        let service = Service::new(&kv, &FixedAccess);
        for i in 0..7 {
            store_unindexed_in_g1(
                &kv,
                &format!("00000000-0000-4000-8000-00000000000{i}"),
                "t1",
                &format!("Legacy {i}"),
            );
        }
        // One written by this version before the backfill ran.
        create(&service, "t2", json!([{"name": "legacy new", "url": "http://h"}])).unwrap();
        let upkeep = crate::webhooks::name_index::Upkeep::new(&kv);
        let mut calls = 0;
        loop {
            let page = group_list(&service, &[("name", "LEGACY"), ("limit", "100")]);
            assert_eq!(page["total"], 8, "after {calls} maintain calls");
            assert!(kv.read_whole_group(), "the index is not complete yet");
            calls += 1;
            let handled = upkeep.maintain(3).unwrap();
            if handled < 3 {
                break;
            }
        }
        // 8 records, 3 at a time: the third call finds the last two and completes the index.
        assert_eq!(calls, 3);
        assert!(kv.memory.get(&keys::group_names_indexed()).unwrap().is_some());
        assert!(kv.memory.get(&keys::group_names_cursor()).unwrap().is_none());
        assert_eq!(upkeep.maintain(3).unwrap(), 0);
        let page = group_list(&service, &[("name", "LEGACY"), ("limit", "100")]);
        assert!(!kv.read_whole_group());
        assert_eq!(page["total"], 8);
        assert_eq!(page, full_scan(&service, &[("name", "LEGACY"), ("limit", "100")]));
        assert_eq!(group_list(&service, &[("name", "acy 3")])["total"], 1);
    }

    #[test]
    fn an_unindexed_record_is_not_found_once_the_index_is_marked_complete() {
        // What the marker promises: listings read the index alone, so it must be complete.
        let kv = WatchedKv::default();
        let service = Service::new(&kv, &FixedAccess);
        maintain_all(&kv);
        store_unindexed_in_g1(&kv, "00000000-0000-4000-8000-000000000001", "t1", "hidden");
        assert_eq!(group_list(&service, &[("name", "hid")])["total"], 0);
        assert_eq!(group_list(&service, &[])["total"], 1);
    }
}
