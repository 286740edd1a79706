//! The `transform-api` operations (SPEC.md section 10): attaching a component to a webhook,
//! detaching it, and trying it on a sample without sending anything. The host checks and runs
//! components; the plugin decides who may, what the quota allows, where the bytes are kept and
//! what an answer means.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use crate::Role;
use crate::bindings::mainflux::webhooks::store::{Condition, Entry};
use crate::deliveries::request::{added_headers, content_type};
use crate::deliveries::transform::{Decision, decide};
use crate::error::{Result, conflict, internal, invalid, not_found};
use crate::format;
use crate::keys;
use crate::ports::{Access, Clock, Kv, TransformError, TransformMessage, Transformer, require_token};
use crate::store::{self, Step};
use crate::webhooks::record::{TransformRef, Webhook};
use crate::webhooks::storage;

/// What trying a transform on a sample gave (the `trial` of `transforms.wit`).
#[derive(Debug, Clone, PartialEq)]
pub enum Trial {
    /// The transform answered: the JSON of the try endpoint's `200`.
    Answered(String),
    /// It failed, or answered what the rules refuse; the reason (`422`).
    Failed(String),
}

/// The transform operations over a store, an identity service, the transforms capability and
/// a clock.
pub struct Transforms<'a> {
    kv: &'a dyn Kv,
    access: &'a dyn Access,
    transformer: &'a dyn Transformer,
    clock: &'a dyn Clock,
}

impl<'a> Transforms<'a> {
    /// Binds the operations to their capabilities.
    pub fn new(kv: &'a dyn Kv, access: &'a dyn Access, transformer: &'a dyn Transformer, clock: &'a dyn Clock) -> Self {
        Transforms {
            kv,
            access,
            transformer,
            clock,
        }
    }

    /// The webhook, for a holder of `role` in its group.
    fn webhook(&self, token: &str, webhook_id: &str, role: Role) -> Result<Webhook> {
        require_token(token)?;
        self.access.authenticate(token)?;
        let (webhook, _) = storage::load_webhook(self.kv, webhook_id)?.ok_or_else(webhook_not_found)?;
        self.access.authorize_group(token, &webhook.group_id, role)?;
        Ok(webhook)
    }

    /// Attaches the component to the webhook, replacing any before it, for an editor of its
    /// group; answers `{"sha256", "size", "attached_at"}`. The first attach names the stored
    /// data format 3, in the same commit, so no version that knows no transforms takes over.
    pub fn attach(&self, token: &str, webhook_id: &str, component: Vec<u8>) -> Result<String> {
        let group_id = self.webhook(token, webhook_id, Role::Editor)?.group_id;
        // Checked by the host before anything is stored: a component it refuses is the user's
        // mistake (400), told now rather than at each delivery.
        let sha256 = self.transformer.load(&component).map_err(|error| match error {
            TransformError::Invalid(reason) => invalid(reason),
            TransformError::Failed(reason) => internal(format!("checking the transform failed: {reason}")),
            TransformError::Unknown => internal("the host did not keep the component it checked"),
        })?;
        let attached = TransformRef {
            sha256,
            size: component.len() as u64,
            attached_ms: self.clock.now_ms(),
        };
        let quota = self.transformer.quota();
        store::commit_retrying(self.kv, busy, |_| {
            let (current, stored) = storage::load_webhook(self.kv, webhook_id)?.ok_or_else(webhook_not_found)?;
            let mut guards = vec![Condition::Equals(Entry {
                key: keys::webhook(webhook_id),
                value: stored,
            })];
            let mut ops = Vec::with_capacity(8);
            if quota > 0 {
                // Read before counting, as the webhook quota does: an attach or create in the
                // group that goes in after this read fails this commit, which counts again.
                let (guard, op) = storage::group_creates_guard(self.kv, &group_id)?;
                let all = storage::count_under(self.kv, &keys::group_transforms_prefix(&group_id))?;
                // The record as read says whether one of them is this webhook's: its entry is
                // written with it, and the record's guard fails this commit if either changed.
                let others = all.saturating_sub(usize::from(current.transform.is_some()));
                if others >= quota as usize {
                    return Err(conflict(format!(
                        "the group has {others} transforms and a quota of {quota}; one more would pass it"
                    )));
                }
                guards.push(guard);
                ops.push(op);
            }
            if let Some((guard, op)) = format::raise_within(self.kv, format::TRANSFORMS)? {
                guards.push(guard);
                ops.push(op);
            }
            let mut updated = current;
            updated.transform = Some(attached.clone());
            storage::put_webhook(&mut ops, &updated);
            storage::put_transform(&mut ops, &updated, &attached.sha256, component.clone());
            Ok(Step::Commit {
                guards,
                ops,
                answer: attached.view().to_string(),
            })
        })
    }

    /// Detaches the webhook's transform, for an editor of its group; not found when it has none.
    pub fn detach(&self, token: &str, webhook_id: &str) -> Result<()> {
        require_token(token)?;
        self.access.authenticate(token)?;
        store::commit_retrying(self.kv, busy, |_| {
            let (current, stored) = storage::load_webhook(self.kv, webhook_id)?.ok_or_else(webhook_not_found)?;
            self.access.authorize_group(token, &current.group_id, Role::Editor)?;
            if current.transform.is_none() {
                return Err(not_found("the webhook has no transform"));
            }
            let guards = vec![Condition::Equals(Entry {
                key: keys::webhook(webhook_id),
                value: stored,
            })];
            let mut updated = current;
            updated.transform = None;
            let mut ops = Vec::with_capacity(5);
            storage::put_webhook(&mut ops, &updated);
            storage::delete_transform(&mut ops, &updated);
            Ok(Step::Commit {
                guards,
                ops,
                answer: (),
            })
        })
    }

    /// Runs the webhook's transform on the sample of a JSON body `{"payload" or
    /// "payload_base64", "content_type"?, "subtopic"?}`, for a viewer of its group; sends
    /// nothing. Answers what a delivery would send, or why it would skip or fail.
    pub fn try_transform(&self, token: &str, webhook_id: &str, sample: &[u8]) -> Result<Trial> {
        let webhook = self.webhook(token, webhook_id, Role::Viewer)?;
        let sample = Sample::parse(sample)?;
        let transform = webhook
            .transform
            .clone()
            .ok_or_else(|| not_found("the webhook has no transform"))?;
        let message = TransformMessage {
            payload: sample.payload,
            content_type: sample.content_type.filter(|c| !c.is_empty()),
            subtopic: sample.subtopic,
            thing_id: webhook.thing_id.clone(),
            message_id: uuid::Uuid::now_v7().to_string(),
        };
        Ok(
            match decide(self.kv, self.transformer, &webhook, &transform, &message)? {
                Decision::Skip(reason) => Trial::Answered(json!({"action": "skip", "reason": reason}).to_string()),
                Decision::Fail(reason) => Trial::Failed(reason),
                Decision::Send(changes) => {
                    let sent_type = content_type(
                        &webhook,
                        message.content_type.as_deref(),
                        changes.content_type.as_deref(),
                    );
                    let body = changes.body.as_deref().unwrap_or(&message.payload);
                    let headers: Map<String, Value> = added_headers(changes.headers)
                        .into_iter()
                        .map(|(name, value)| (name, Value::String(value)))
                        .collect();
                    Trial::Answered(
                        json!({
                            "action": "send",
                            "body_base64": BASE64.encode(body),
                            "content_type": sent_type,
                            "headers": headers,
                            "path": changes.path,
                        })
                        .to_string(),
                    )
                }
            },
        )
    }
}

/// The message a user tries a transform on.
#[derive(Debug, PartialEq)]
struct Sample {
    payload: Vec<u8>,
    content_type: Option<String>,
    subtopic: String,
}

impl Sample {
    /// Reads `{"payload": "<text>"}` or `{"payload_base64": "..."}` (exactly one), with an
    /// optional `content_type` and `subtopic`, both strings.
    fn parse(body: &[u8]) -> Result<Self> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| invalid(format!("request body is not valid JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(invalid("request body must be a JSON object"));
        };
        let text = |field: &str| match fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(invalid(format!("{field} must be a string"))),
        };
        let payload = match (text("payload")?, text("payload_base64")?) {
            (Some(payload), None) => payload.into_bytes(),
            (None, Some(encoded)) => BASE64
                .decode(encoded)
                .map_err(|_| invalid("payload_base64 must be base64"))?,
            _ => return Err(invalid("give exactly one of payload and payload_base64")),
        };
        Ok(Sample {
            payload,
            content_type: text("content_type")?,
            subtopic: text("subtopic")?.unwrap_or_default(),
        })
    }
}

fn webhook_not_found() -> crate::Error {
    not_found("webhook not found")
}

fn busy() -> crate::Error {
    conflict("the webhook was changed by another request at the same time; try again")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::ports::{Action, Changes};
    use crate::removal::Removals;
    use crate::testing::{AT_NOW, FakeTransformer, FixedAccess, MemoryKv, NOT_A_COMPONENT, WatchedKv, sha256_hex};
    use crate::webhooks::operations::Service;

    const COMPONENT: &[u8] = b"component one";
    const OTHER: &[u8] = b"component two";

    /// A store with webhooks `w1`, `w2`, `w3` of group `g1` (things `t1`, `t1`, `t2`).
    fn setting(kv: &dyn Kv) {
        for (id, thing) in [("w1", "t1"), ("w2", "t1"), ("w3", "t2")] {
            let mut hook = crate::testing::webhook(id, thing, id);
            hook.group_id = "g1".into();
            hook.metadata = json!({"site": id}).as_object().cloned().unwrap();
            crate::testing::store(kv, &hook);
        }
    }

    fn record(kv: &dyn Kv, id: &str) -> Option<Webhook> {
        storage::load_webhook(kv, id).unwrap().map(|(webhook, _)| webhook)
    }

    fn view(kv: &dyn Kv, id: &str) -> Value {
        let answer = Service::new(kv, &FixedAccess).view_webhook("viewer", id).unwrap();
        serde_json::from_str(&answer).unwrap()
    }

    fn transform_keys(kv: &MemoryKv) -> Vec<Vec<u8>> {
        let map = kv.map.borrow();
        map.keys()
            .filter(|k| k.starts_with(b"tc\0") || k.starts_with(b"tg\0"))
            .cloned()
            .collect()
    }

    fn trial(answer: Trial) -> Value {
        match answer {
            Trial::Answered(json) => serde_json::from_str(&json).unwrap(),
            Trial::Failed(reason) => panic!("the trial failed: {reason}"),
        }
    }

    #[test]
    fn an_attached_transform_is_stored_shown_and_kept_by_an_update() {
        let kv = MemoryKv::default();
        setting(&kv);
        let fake = FakeTransformer::default();
        let transforms = Transforms::new(&kv, &FixedAccess, &fake, &AT_NOW);
        let answer: Value =
            serde_json::from_str(&transforms.attach("editor", "w1", COMPONENT.to_vec()).unwrap()).unwrap();
        let expected = json!({"sha256": sha256_hex(COMPONENT), "size": COMPONENT.len(), "attached_at": "1970-01-01T00:16:40.000Z"});
        assert_eq!(answer, expected);
        assert_eq!(view(&kv, "w1")["transform"], expected);
        assert!(view(&kv, "w2").get("transform").is_none());
        assert_eq!(kv.get(&keys::transform_component("w1")).unwrap().unwrap(), COMPONENT);
        assert_eq!(
            kv.get(&keys::group_transform("g1", "w1")).unwrap().unwrap(),
            sha256_hex(COMPONENT).as_bytes()
        );
        // The index copies carry it too, so listings show it.
        let page: Value = serde_json::from_str(
            &Service::new(&kv, &FixedAccess)
                .list_thing_webhooks("viewer", "t1", &[])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            page["webhooks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["transform"] == expected)
                .count(),
            1
        );
        // PUT replaces name, url, headers and metadata, never the transform.
        Service::new(&kv, &FixedAccess)
            .update_webhook("editor", "w1", br#"{"name":"renamed","url":"http://other"}"#)
            .unwrap();
        assert_eq!(view(&kv, "w1")["transform"], expected);
        // Attaching again replaces it.
        transforms.attach("editor", "w1", OTHER.to_vec()).unwrap();
        assert_eq!(view(&kv, "w1")["transform"]["sha256"], sha256_hex(OTHER));
        assert_eq!(kv.get(&keys::transform_component("w1")).unwrap().unwrap(), OTHER);
        assert_eq!(transform_keys(&kv).len(), 2);
    }

    #[test]
    fn attaching_needs_an_editor_and_a_component_the_host_accepts() {
        let kv = MemoryKv::default();
        setting(&kv);
        let fake = FakeTransformer::default();
        let transforms = Transforms::new(&kv, &FixedAccess, &fake, &AT_NOW);
        assert!(matches!(
            transforms.attach("viewer", "w1", COMPONENT.to_vec()),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            transforms.attach("", "w1", COMPONENT.to_vec()),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            transforms.attach("editor", "nope", COMPONENT.to_vec()),
            Err(Error::NotFound(_))
        ));
        assert_eq!(
            fake.loads.get(),
            0,
            "nothing is checked for a caller who may not attach"
        );
        let refused = transforms.attach("editor", "w1", NOT_A_COMPONENT.to_vec()).unwrap_err();
        assert!(
            matches!(&refused, Error::Invalid(m) if m.contains("not a component")),
            "{refused:?}"
        );
        assert!(record(&kv, "w1").unwrap().transform.is_none());
        assert!(transform_keys(&kv).is_empty());
        assert_eq!(format::stored(&kv).unwrap(), 1, "a refused attach raises nothing");
    }

    #[test]
    fn the_first_attach_names_format_3_in_its_own_commit() {
        let kv = WatchedKv::default();
        setting(&kv.memory);
        let fake = FakeTransformer::default();
        let transforms = Transforms::new(&kv, &FixedAccess, &fake, &AT_NOW);
        // Upkeep names format 2 between the attach's read and its commit: the guard on the
        // format as read fails the commit, which reads again and raises from 2.
        kv.before_next_commit(|memory| format::raise(memory, 2).unwrap());
        transforms.attach("editor", "w1", COMPONENT.to_vec()).unwrap();
        assert_eq!(format::stored(&kv).unwrap(), 3);
        // Upkeep never lowers it, and another attach leaves it.
        format::raise(&kv, format::WRITES).unwrap();
        transforms.attach("editor", "w2", COMPONENT.to_vec()).unwrap();
        assert_eq!(format::stored(&kv).unwrap(), 3);
        // A detach keeps it: the format only rises.
        transforms.detach("editor", "w1").unwrap();
        assert_eq!(format::stored(&kv).unwrap(), 3);
    }

    #[test]
    fn the_groups_transform_quota_refuses_like_the_webhook_quota() {
        let kv = WatchedKv::default();
        setting(&kv.memory);
        let fake = FakeTransformer::default();
        fake.quota.set(2);
        let transforms = Transforms::new(&kv, &FixedAccess, &fake, &AT_NOW);
        transforms.attach("editor", "w1", COMPONENT.to_vec()).unwrap();
        transforms.attach("editor", "w2", COMPONENT.to_vec()).unwrap();
        // Replacing one's own transform is not one more.
        transforms.attach("editor", "w1", OTHER.to_vec()).unwrap();
        let refused = transforms.attach("editor", "w3", COMPONENT.to_vec()).unwrap_err();
        assert!(
            matches!(&refused, Error::Conflict(m) if m.contains("2 transforms and a quota of 2")),
            "{refused:?}"
        );
        assert!(record(&kv, "w3").unwrap().transform.is_none());
        assert!(kv.get(&keys::group_creates("g1")).unwrap().is_some());
        transforms.detach("editor", "w2").unwrap();
        // Another attach in the group goes in between this one's count and its commit: the
        // creates token it replaced fails this commit, which counts again and refuses.
        kv.before_next_commit(|memory| {
            let mut ops = Vec::new();
            let (_, token) = storage::group_creates_guard(memory, "g1").unwrap();
            let mut rival = record(memory, "w2").unwrap();
            rival.transform = Some(TransformRef {
                sha256: sha256_hex(OTHER),
                size: 1,
                attached_ms: 1,
            });
            storage::put_webhook(&mut ops, &rival);
            storage::put_transform(&mut ops, &rival, &sha256_hex(OTHER), OTHER.to_vec());
            ops.push(token);
            memory.commit(&[], &ops).unwrap();
        });
        let refused = transforms.attach("editor", "w3", COMPONENT.to_vec()).unwrap_err();
        assert!(
            matches!(&refused, Error::Conflict(m) if m.contains("quota")),
            "{refused:?}"
        );
        assert!(record(&kv, "w3").unwrap().transform.is_none());
        // Without a quota nothing is counted and no token is replaced.
        fake.quota.set(0);
        let token = kv.get(&keys::group_creates("g1")).unwrap();
        transforms.attach("editor", "w3", COMPONENT.to_vec()).unwrap();
        assert_eq!(kv.get(&keys::group_creates("g1")).unwrap(), token);
    }

    #[test]
    fn detaching_removes_the_field_the_component_and_the_groups_entry() {
        let kv = MemoryKv::default();
        setting(&kv);
        let fake = FakeTransformer::default();
        let transforms = Transforms::new(&kv, &FixedAccess, &fake, &AT_NOW);
        transforms.attach("editor", "w1", COMPONENT.to_vec()).unwrap();
        assert!(matches!(transforms.detach("viewer", "w1"), Err(Error::Forbidden(_))));
        transforms.detach("editor", "w1").unwrap();
        assert!(record(&kv, "w1").unwrap().transform.is_none());
        assert!(view(&kv, "w1").get("transform").is_none());
        assert!(transform_keys(&kv).is_empty());
        assert!(matches!(
            transforms.detach("editor", "w1"),
            Err(Error::NotFound(m)) if m == "the webhook has no transform"
        ));
        assert!(matches!(transforms.detach("editor", "nope"), Err(Error::NotFound(m)) if m == "webhook not found"));
    }

    #[test]
    fn every_removal_deletes_the_webhooks_transform_with_it() {
        let kv = MemoryKv::default();
        setting(&kv);
        let fake = FakeTransformer::default();
        let transforms = Transforms::new(&kv, &FixedAccess, &fake, &AT_NOW);
        for id in ["w1", "w2", "w3"] {
            transforms.attach("editor", id, COMPONENT.to_vec()).unwrap();
        }
        assert_eq!(transform_keys(&kv).len(), 6);
        Service::new(&kv, &FixedAccess)
            .remove_webhooks("editor", br#"{"webhook_ids":["w1"]}"#)
            .unwrap();
        assert_eq!(transform_keys(&kv).len(), 4);
        assert!(kv.get(&keys::transform_component("w1")).unwrap().is_none());
        Removals::new(&kv).on_thing_removed("t2").unwrap();
        assert_eq!(transform_keys(&kv).len(), 2);
        Removals::new(&kv).on_group_removed("g1").unwrap();
        assert!(transform_keys(&kv).is_empty());
    }

    #[test]
    fn a_trial_answers_what_a_delivery_would_send() {
        let kv = MemoryKv::default();
        setting(&kv);
        let fake = FakeTransformer::default();
        let transforms = Transforms::new(&kv, &FixedAccess, &fake, &AT_NOW);
        fake.behave(COMPONENT, |message, metadata| {
            let site: Value = serde_json::from_str(metadata).unwrap();
            Ok(Action::Send(Changes {
                body: Some(format!("{}:{}", site["site"].as_str().unwrap(), message.subtopic).into_bytes()),
                content_type: None,
                headers: vec![
                    ("X-A".into(), "1".into()),
                    ("x-a".into(), "2".into()),
                    ("X-B".into(), "b".into()),
                ],
                path: "/alerts".into(),
            }))
        });
        transforms.attach("editor", "w1", COMPONENT.to_vec()).unwrap();
        // A viewer may try; the host no longer holds the component: loaded from the store.
        fake.forget();
        let loads = fake.loads.get();
        let sample = br#"{"payload": "21.5", "content_type": "text/plain", "subtopic": "room/1"}"#;
        let answer = trial(transforms.try_transform("viewer", "w1", sample).unwrap());
        assert_eq!(fake.loads.get(), loads + 1);
        assert_eq!(
            answer,
            json!({
                "action": "send",
                "body_base64": BASE64.encode("w1:room/1"),
                "content_type": "text/plain",
                "headers": {"X-B": "b", "x-a": "2"},
                "path": "/alerts",
            })
        );
        let (_, message, metadata) = fake.applied.borrow().last().cloned().unwrap();
        assert_eq!(message.payload, b"21.5");
        assert_eq!(message.thing_id, "t1");
        assert!(uuid::Uuid::parse_str(&message.message_id).is_ok());
        assert_eq!(metadata, r#"{"site":"w1"}"#);
        // Without a content type anywhere, the default; a binary payload goes in as base64.
        fake.behave(OTHER, |_, _| Ok(Action::Send(crate::testing::unchanged())));
        transforms.attach("editor", "w2", OTHER.to_vec()).unwrap();
        let answer = trial(
            transforms
                .try_transform("viewer", "w2", br#"{"payload_base64": "AP8="}"#)
                .unwrap(),
        );
        assert_eq!(
            answer,
            json!({"action": "send", "body_base64": "AP8=", "content_type": "application/json", "headers": {}, "path": ""})
        );
        assert_eq!(fake.applied.borrow().last().unwrap().1.payload, [0u8, 255]);
    }

    #[test]
    fn a_trial_tells_a_skip_from_a_failure() {
        let kv = MemoryKv::default();
        setting(&kv);
        let fake = FakeTransformer::default();
        let transforms = Transforms::new(&kv, &FixedAccess, &fake, &AT_NOW);
        let sample = br#"{"payload": "x"}"#;
        assert!(matches!(
            transforms.try_transform("viewer", "w1", sample),
            Err(Error::NotFound(m)) if m == "the webhook has no transform"
        ));
        fake.behave(COMPONENT, |message, _| match message.payload.as_slice() {
            b"skip" => Ok(Action::Skip("below the threshold".into())),
            b"trap" => Err(TransformError::Failed("wasm trap: unreachable".into())),
            _ => Ok(Action::Send(Changes {
                headers: vec![("Host".into(), "evil".into())],
                ..crate::testing::unchanged()
            })),
        });
        transforms.attach("editor", "w1", COMPONENT.to_vec()).unwrap();
        assert_eq!(
            trial(
                transforms
                    .try_transform("viewer", "w1", br#"{"payload": "skip"}"#)
                    .unwrap()
            ),
            json!({"action": "skip", "reason": "below the threshold"})
        );
        assert_eq!(
            transforms
                .try_transform("viewer", "w1", br#"{"payload": "trap"}"#)
                .unwrap(),
            Trial::Failed("the transform failed: wasm trap: unreachable".into())
        );
        let refused = transforms.try_transform("viewer", "w1", sample).unwrap();
        assert!(
            matches!(&refused, Trial::Failed(m) if m.starts_with("the transform's answer was refused: header \"Host\"")),
            "{refused:?}"
        );
        assert!(matches!(
            transforms.try_transform("outsider", "w1", sample),
            Err(Error::Forbidden(_))
        ));
    }

    #[test]
    fn a_malformed_sample_is_invalid() {
        let kv = MemoryKv::default();
        setting(&kv);
        let fake = FakeTransformer::default();
        let transforms = Transforms::new(&kv, &FixedAccess, &fake, &AT_NOW);
        transforms.attach("editor", "w1", COMPONENT.to_vec()).unwrap();
        for sample in [
            &b"not json"[..],
            br#"["x"]"#,
            br#"{}"#,
            br#"{"payload": "x", "payload_base64": "eA=="}"#,
            br#"{"payload": 3}"#,
            br#"{"payload_base64": "not base64!"}"#,
            br#"{"payload": "x", "content_type": 1}"#,
            br#"{"payload": "x", "subtopic": ["a"]}"#,
        ] {
            let answer = transforms.try_transform("viewer", "w1", sample);
            assert!(
                matches!(answer, Err(Error::Invalid(_))),
                "{}: {answer:?}",
                String::from_utf8_lossy(sample)
            );
        }
        assert!(fake.applied.borrow().is_empty());
    }
}
