//! A webhook's transform asked about one message: the call through the [`Transformer`] port,
//! loading the component again from the store when the host no longer holds it, and what the
//! answer means (send with checked changes, skip, or fail). Deliveries and the try endpoint
//! both decide here, so a trial answers what a delivery would do.

use crate::deliveries::request::check_changes;
use crate::error::Result;
use crate::keys::truncate;
use crate::ports::{Action, Changes, Kv, TransformError, TransformMessage, Transformer};
use crate::webhooks::record::{TransformRef, Webhook};
use crate::webhooks::storage;

/// The most of a transform's reason (for a skip or a failure) that is kept, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// What a webhook's transform made of a message.
#[derive(Debug)]
pub enum Decision {
    /// Send it with these changes, checked by the rules of `transform.wit`.
    Send(Changes),
    /// Send nothing, for this reason (its first [`MAX_REASON_BYTES`]).
    Skip(String),
    /// The transform failed, or answered what the rules refuse: why, as the log shows it.
    Fail(String),
}

/// Cuts a transform's reason to its first [`MAX_REASON_BYTES`] bytes, at a char boundary.
pub fn cut_reason(reason: &str) -> String {
    truncate(reason, MAX_REASON_BYTES).to_owned()
}

/// The webhook's metadata as the transform receives it: JSON text, `{}` when empty.
pub fn metadata_json(webhook: &Webhook) -> String {
    serde_json::to_string(&webhook.metadata).expect("a JSON object always serializes")
}

/// Asks the webhook's transform about `message`. When the host does not hold the component
/// (another host checked it in, or it was dropped from memory), its bytes are read from the
/// store and loaded, and the transform asked again. Fails only when the store does.
pub fn decide(
    kv: &dyn Kv,
    transformer: &dyn Transformer,
    webhook: &Webhook,
    transform: &TransformRef,
    message: &TransformMessage,
) -> Result<Decision> {
    let metadata = metadata_json(webhook);
    let answer = match transformer.apply(&transform.sha256, message, &metadata) {
        Err(TransformError::Unknown) => {
            let Some(component) = storage::load_transform_component(kv, &webhook.id)? else {
                return Ok(Decision::Fail("the transform's component is no longer stored".into()));
            };
            match transformer.load(&component) {
                Ok(sha256) => transformer.apply(&sha256, message, &metadata),
                Err(error) => Err(error),
            }
        }
        answer => answer,
    };
    Ok(match answer {
        Ok(Action::Skip(reason)) => Decision::Skip(cut_reason(&reason)),
        Ok(Action::Send(changes)) => match check_changes(&changes) {
            Ok(()) => Decision::Send(changes),
            Err(reason) => Decision::Fail(cut_reason(&format!("the transform's answer was refused: {reason}"))),
        },
        Err(TransformError::Failed(reason) | TransformError::Invalid(reason)) => {
            Decision::Fail(format!("the transform failed: {}", cut_reason(&reason)))
        }
        // Only after loading it: the host dropped it again at once, which retrying would not
        // change within this attempt.
        Err(TransformError::Unknown) => Decision::Fail("the host did not keep the transform's component".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::bindings::exports::mainflux::webhooks::events::DeliveryStatus;
    use crate::deliveries::Events;
    use crate::deliveries::log::DeliveryLog;
    use crate::deliveries::record::Status;
    use crate::deliveries::request::signature;
    use crate::keys;
    use crate::ports::Request;
    use crate::testing::{
        AT_NOW, FakeTransformer, FixedAccess, MemoryKv, ScriptedSender, attach_stored, delivery, events, message,
        params, publish, store, unchanged, webhook,
    };
    use crate::webhooks::record::validate_secret;
    use serde_json::{Value, json};

    const COMPONENT: &[u8] = b"the transform";

    /// A webhook `w` of thing `t` in group `g1`, posting to `url`, with these headers and
    /// metadata, and the transform [`COMPONENT`] attached, not yet held by the host.
    fn transformed(kv: &MemoryKv, url: &str, headers: Value, secret: Option<&str>) {
        let mut hook = webhook("w", "t", "w");
        hook.group_id = "g1".into();
        hook.url = url.into();
        hook.headers = headers.as_object().cloned().unwrap_or_default();
        hook.metadata = json!({"unit": "C"}).as_object().cloned().unwrap();
        hook.secret = secret.map(str::to_owned);
        store(kv, &hook);
        attach_stored(kv, "w", COMPONENT);
    }

    fn with_transforms<'a>(kv: &'a MemoryKv, sender: &'a ScriptedSender, fake: &'a FakeTransformer) -> Events<'a> {
        events(kv, sender).with_transformer(fake)
    }

    fn log(kv: &MemoryKv, query: &[(&str, &str)]) -> Value {
        let answer = DeliveryLog::new(kv, &FixedAccess, &AT_NOW)
            .list("viewer", "w", &params(query))
            .unwrap();
        serde_json::from_str(&answer).unwrap()
    }

    #[test]
    fn a_skipped_message_is_logged_skipped_and_never_sent() {
        let (kv, sender, fake) = (
            MemoryKv::default(),
            ScriptedSender::default(),
            FakeTransformer::default(),
        );
        transformed(&kv, "http://a/200", json!({}), None);
        let long = "é".repeat(1000);
        let reason = long.clone();
        fake.behave(COMPONENT, move |_, _| Ok(Action::Skip(reason.clone())));
        let events = with_transforms(&kv, &sender, &fake);
        let ids = publish(&events, message("t", None, b"x", None));
        let outcomes = events.deliver(&ids).unwrap();
        assert!(sender.sent.borrow().is_empty(), "nothing is sent");
        // A skip is reported as delivered with no status code, the reason as the error.
        let cut = truncate(&long, MAX_REASON_BYTES).to_owned();
        assert_eq!(cut.len(), 1024);
        assert_eq!(outcomes[0].status, DeliveryStatus::Delivered);
        assert_eq!(outcomes[0].status_code, None);
        assert_eq!(outcomes[0].error.as_deref(), Some(cut.as_str()));
        let stored = delivery(&kv, &ids[0]);
        assert_eq!(stored.status, Status::Skipped);
        assert_eq!(stored.next_attempt_ms, None);
        assert!(
            kv.get(&keys::payload(&ids[0])).unwrap().is_none(),
            "the payload is dropped"
        );
        assert!(events.due(10).unwrap().is_empty());
        let page = log(&kv, &[]);
        assert_eq!(page["deliveries"][0]["status"], "skipped");
        assert_eq!(page["deliveries"][0]["attempts"][0]["error"], cut.as_str());
        assert!(page["deliveries"][0]["attempts"][0].get("status_code").is_none());
        assert_eq!(log(&kv, &[("status", "skipped")])["total"], 1);
        assert_eq!(log(&kv, &[("status", "delivered")])["total"], 0);
        let retried = DeliveryLog::new(&kv, &FixedAccess, &AT_NOW).retry("editor", "w", &ids[0]);
        assert!(matches!(retried, Err(Error::Conflict(m)) if m.ends_with("this one is skipped")));
    }

    #[test]
    fn a_failing_transform_fails_its_delivery_at_once_and_the_others_go_out() {
        let (kv, sender, fake) = (
            MemoryKv::default(),
            ScriptedSender::default(),
            FakeTransformer::default(),
        );
        transformed(&kv, "http://a/200", json!({}), None);
        crate::testing::store_webhook(&kv, "plain", "t", "http://b/200", json!({}));
        fake.behave(COMPONENT, |_, _| {
            Err(TransformError::Failed(format!("trap: {}", "x".repeat(2000))))
        });
        let events = with_transforms(&kv, &sender, &fake);
        let ids = publish(&events, message("t", None, b"x", None));
        let outcomes = events.deliver(&ids).unwrap();
        let of = |webhook: &str| outcomes.iter().find(|o| o.webhook_id == webhook).unwrap();
        assert_eq!(of("plain").status, DeliveryStatus::Delivered);
        assert_eq!(of("w").status, DeliveryStatus::Failed, "not retried");
        assert_eq!(of("w").next_attempt_ms, None);
        let error = of("w").error.clone().unwrap();
        assert!(error.starts_with("the transform failed: trap: xxx"));
        assert_eq!(error.len(), "the transform failed: ".len() + MAX_REASON_BYTES);
        assert_eq!(sender.sent.borrow().len(), 1);
        assert_eq!(delivery(&kv, &of("w").id).status, Status::Failed);
    }

    #[test]
    fn the_changes_shape_the_request_and_the_signature_covers_the_body_sent() {
        let (kv, sender, fake) = (
            MemoryKv::default(),
            ScriptedSender::default(),
            FakeTransformer::default(),
        );
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        transformed(
            &kv,
            "http://a/in/?k=1",
            json!({"X-Key": "k", "x-mode": "webhook", "Content-Type": "text/csv"}),
            Some(secret),
        );
        fake.behave(COMPONENT, |message, metadata| {
            Ok(Action::Send(Changes {
                body: Some([&message.payload[..], b" ", metadata.as_bytes()].concat()),
                content_type: Some("application/vnd.alert+json".into()),
                headers: vec![("X-Mode".into(), "transform".into()), ("X-Extra".into(), "e".into())],
                path: "/alerts/200".into(),
            }))
        });
        let events = with_transforms(&kv, &sender, &fake);
        let ids = publish(
            &events,
            message(
                "t",
                Some("7f1c1d2e-1111-4222-8333-444455556666"),
                b"21",
                Some("text/plain"),
            ),
        );
        let outcomes = events.deliver(&ids).unwrap();
        assert_eq!(outcomes[0].status, DeliveryStatus::Delivered);
        // The transform saw the message as the webhook would send it, and the metadata.
        let (_, seen, metadata) = fake.applied.borrow()[0].clone();
        assert_eq!(seen.payload, b"21");
        assert_eq!(seen.content_type.as_deref(), Some("text/plain"));
        assert_eq!(seen.thing_id, "t");
        assert_eq!(seen.message_id, "7f1c1d2e-1111-4222-8333-444455556666");
        assert_eq!(metadata, r#"{"unit":"C"}"#);
        let Request { url, headers, body } = sender.sent.borrow()[0].clone();
        assert_eq!(url, "http://a/in/alerts/200?k=1");
        assert_eq!(body, br#"21 {"unit":"C"}"#);
        let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "X-Key",
                "X-Mode",
                "X-Extra",
                "Content-Type",
                "webhook-id",
                "webhook-signature",
                "webhook-timestamp"
            ]
        );
        let value = |name: &str| headers.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(value("X-Mode"), "transform");
        assert_eq!(value("Content-Type"), "application/vnd.alert+json");
        let key = validate_secret(secret).unwrap();
        assert_eq!(
            value("webhook-signature"),
            signature(&key, &ids[0], &value("webhook-timestamp"), &body)
        );
    }

    #[test]
    fn a_refused_answer_fails_the_delivery_with_the_reason() {
        let (kv, sender, fake) = (
            MemoryKv::default(),
            ScriptedSender::default(),
            FakeTransformer::default(),
        );
        transformed(&kv, "http://a/200", json!({}), None);
        fake.behave(COMPONENT, |message, _| {
            Ok(Action::Send(match message.payload.as_slice() {
                b"header" => Changes {
                    headers: vec![("webhook-signature".into(), "v1,forged".into())],
                    ..unchanged()
                },
                _ => Changes {
                    path: "/a/../../admin".into(),
                    ..unchanged()
                },
            }))
        });
        let events = with_transforms(&kv, &sender, &fake);
        for (payload, expected) in [
            (
                &b"header"[..],
                "the transform's answer was refused: header \"webhook-signature\" is set by the service",
            ),
            (
                b"path",
                "the transform's answer was refused: path \"/a/../../admin\" holds a .. segment",
            ),
        ] {
            let ids = publish(&events, message("t", None, payload, None));
            let outcomes = events.deliver(&ids).unwrap();
            assert_eq!(outcomes[0].status, DeliveryStatus::Failed);
            let error = outcomes[0].error.clone().unwrap();
            assert!(error.starts_with(expected), "{error}");
        }
        assert!(sender.sent.borrow().is_empty());
    }

    #[test]
    fn an_unknown_component_is_loaded_from_the_store_and_asked_again() {
        let (kv, sender, fake) = (
            MemoryKv::default(),
            ScriptedSender::default(),
            FakeTransformer::default(),
        );
        transformed(&kv, "http://a/200", json!({}), None);
        let events = with_transforms(&kv, &sender, &fake);
        let ids = publish(&events, message("t", None, b"one", None));
        assert_eq!(events.deliver(&ids).unwrap()[0].status, DeliveryStatus::Delivered);
        assert_eq!(fake.loads.get(), 1);
        // Held now: the next delivery loads nothing.
        let ids = publish(&events, message("t", None, b"two", None));
        events.deliver(&ids).unwrap();
        assert_eq!(fake.loads.get(), 1);
        assert_eq!(sender.sent.borrow().len(), 2);
        // The host forgot it and its bytes are gone: that delivery fails, not retried.
        fake.forget();
        kv.map.borrow_mut().remove(&keys::transform_component("w"));
        let ids = publish(&events, message("t", None, b"three", None));
        let outcome = events.deliver(&ids).unwrap().remove(0);
        assert_eq!(outcome.status, DeliveryStatus::Failed);
        assert_eq!(
            outcome.error.as_deref(),
            Some("the transform's component is no longer stored")
        );
        assert_eq!(sender.sent.borrow().len(), 2);
    }

    #[test]
    fn transforms_run_in_turn_and_the_batch_goes_out_together() {
        let (kv, sender, fake) = (
            MemoryKv::default(),
            ScriptedSender::default(),
            FakeTransformer::default(),
        );
        transformed(&kv, "http://a/200", json!({}), None);
        crate::testing::store_webhook(&kv, "plain", "t", "http://b/200", json!({}));
        let events = with_transforms(&kv, &sender, &fake);
        let mut ids = publish(&events, message("t", None, b"1", None));
        ids.extend(publish(&events, message("t", None, b"2", None)));
        let outcomes = events.deliver(&ids).unwrap();
        assert_eq!(outcomes.len(), 4);
        assert!(outcomes.iter().all(|o| o.status == DeliveryStatus::Delivered));
        assert_eq!(fake.applied.borrow().len(), 2);
        assert_eq!(sender.sent.borrow().len(), 4, "one send_all call carried all four");
    }
}
