//! The request each attempt sends: the webhook's URL and headers, the Content-Type rule of
//! SPEC.md section 3, the delivery id as `webhook-id` and the Standard Webhooks signature. Kept
//! apart from sending so the exact bytes a receiver sees are tested without a network.

use crate::deliveries::record::Delivery;
use crate::ports::Request;
use crate::webhooks::record::{Webhook, validate_secret};

/// The content type sent when neither the webhook nor the device names one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use crate::ports::Kv;
    use crate::record::Record;
    use crate::testing::{MemoryKv, ScriptedSender, delivery, events, message, publish, store_webhook};
    use serde_json::json;

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
        let ids = publish(&events, message("t", None, b"x", Some("application/senml+json")));
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
}
