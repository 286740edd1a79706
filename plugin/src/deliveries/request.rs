//! The request each attempt sends: the webhook's URL and headers, the Content-Type rule of
//! SPEC.md section 3, the delivery id as `webhook-id` and the Standard Webhooks signature, and
//! what a transform's answer changes of it (body, Content-Type, added headers, path suffix) once
//! checked by the rules of `transform.wit`. Kept apart from sending so the exact bytes a
//! receiver sees are tested without a network.

use crate::deliveries::record::Delivery;
use crate::ports::{Changes, Request};
use crate::webhooks::record::{Webhook, is_header_value, validate_header, validate_secret};

/// The content type sent when neither the webhook nor the device names one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// Header names a transform may not add, lowercased: the service sets them on every attempt
/// (`transform.wit`). The connection-level names a webhook may not set either are refused by
/// the webhook header rule the added headers also follow.
pub const TRANSFORM_RESERVED_HEADERS: [&str; 7] = [
    "content-type",
    "content-length",
    "host",
    "traceparent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// The longest path suffix a transform may add, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// The request of one attempt: POST to the webhook's URL with its headers, the Content-Type
/// rule of SPEC.md section 3, the delivery id as `webhook-id`, the Standard Webhooks signature
/// when the webhook has a secret, and the exact payload.
pub fn request_for(webhook: &Webhook, delivery: &Delivery, payload: Vec<u8>, now_secs: u64) -> Request {
    build(webhook, delivery, payload, None, now_secs)
}

/// The request of one attempt whose webhook's transform answered `changes`, which
/// [`check_changes`] accepted: its body (or the payload), its Content-Type (or the usual one),
/// its headers after the webhook's, replacing those of the same name, and its path suffix
/// before the URL's query. The signature covers the body sent.
pub fn transformed_request(
    webhook: &Webhook,
    delivery: &Delivery,
    payload: Vec<u8>,
    changes: Changes,
    now_secs: u64,
) -> Request {
    build(webhook, delivery, payload, Some(changes), now_secs)
}

fn build(webhook: &Webhook, delivery: &Delivery, payload: Vec<u8>, changes: Option<Changes>, now_secs: u64) -> Request {
    let (body, chosen_type, added, path) = match changes {
        None => (payload, None, Vec::new(), String::new()),
        Some(changes) => (
            changes.body.unwrap_or(payload),
            changes.content_type,
            added_headers(changes.headers),
            changes.path,
        ),
    };
    let replaced = |name: &str| {
        added.iter().any(|(added, _)| added.eq_ignore_ascii_case(name))
            || (chosen_type.is_some() && name.eq_ignore_ascii_case("content-type"))
    };
    let mut headers: Vec<(String, String)> = webhook
        .headers
        .iter()
        .filter(|(name, _)| !replaced(name))
        .filter_map(|(name, value)| value.as_str().map(|value| (name.clone(), value.to_owned())))
        .collect();
    headers.extend(added);
    match chosen_type {
        Some(content_type) => headers.push(("Content-Type".into(), content_type)),
        None if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type")) =>
        {
            let content_type = delivery.content_type.clone().filter(|c| !c.is_empty());
            headers.push((
                "Content-Type".into(),
                content_type.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.into()),
            ));
        }
        None => {}
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
            signature(&key, &delivery.id, &timestamp, &body),
        ));
        headers.push(("webhook-timestamp".into(), timestamp));
    }
    Request {
        url: with_path_suffix(&webhook.url, &path),
        headers,
        body,
    }
}

/// The Content-Type an attempt sends: the transform's choice, else the webhook's own header,
/// else the one the device published with, else [`DEFAULT_CONTENT_TYPE`].
pub fn content_type(webhook: &Webhook, published: Option<&str>, chosen: Option<&str>) -> String {
    let own = webhook
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .and_then(|(_, value)| value.as_str());
    chosen
        .or(own)
        .or(published.filter(|c| !c.is_empty()))
        .unwrap_or(DEFAULT_CONTENT_TYPE)
        .to_owned()
}

/// A transform's added headers as sent: names compare case-insensitively, and a later one
/// replaces an earlier one, taking its place at the end as it came later.
pub fn added_headers(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut kept: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        kept.retain(|(earlier, _)| !earlier.eq_ignore_ascii_case(&name));
        kept.push((name, value));
    }
    kept
}

/// Checks a transform's changes by the rules of `transform.wit`: added headers valid as a
/// webhook's are and none of the service's own; a Content-Type that is a header value; a path
/// suffix that stays under the webhook's path. Answers why it refuses.
pub fn check_changes(changes: &Changes) -> Result<(), String> {
    for (name, value) in &changes.headers {
        if TRANSFORM_RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!("header {name:?} is set by the service, not by a transform"));
        }
        validate_header(name, value).map_err(|error| match error {
            crate::Error::Invalid(reason) => reason,
            other => format!("{other:?}"),
        })?;
    }
    if let Some(content_type) = &changes.content_type
        && (content_type.is_empty() || !is_header_value(content_type))
    {
        return Err(format!("content type {content_type:?} is not a valid header value"));
    }
    check_path(&changes.path)
}

/// A path suffix must start with `/` and hold no `?`, `#`, space, control character or `..`
/// segment. A backslash and a percent-encoded dot are refused as well: URL parsers read `\`
/// as `/` and `%2e` as `.`, so either could spell a `..` that climbs out of the webhook's path.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "path is {} bytes, over the limit of {MAX_PATH_BYTES}",
            path.len()
        ));
    }
    if !path.starts_with('/') {
        return Err(format!("path {path:?} does not start with /"));
    }
    if let Some(refused) = path
        .chars()
        .find(|c| matches!(c, '?' | '#' | '\\') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("path {path:?} holds {refused:?}"));
    }
    let climbs = |segment: &str| segment.to_ascii_lowercase().replace("%2e", ".") == "..";
    if path.split('/').any(climbs) {
        return Err(format!("path {path:?} holds a .. segment"));
    }
    Ok(())
}

/// The URL with `suffix` appended to its path, before its query and fragment; a trailing `/`
/// of the path is dropped first, so `/in/` and `/alerts` make `/in/alerts`. Done on the text,
/// not through a URL parser, so the rest of the URL is sent exactly as the user wrote it.
pub fn with_path_suffix(url: &str, suffix: &str) -> String {
    if suffix.is_empty() {
        return url.to_owned();
    }
    let authority_at = url.find("://").map_or(0, |at| at + "://".len());
    let path_end = url[authority_at..]
        .find(['?', '#'])
        .map_or(url.len(), |at| authority_at + at);
    let (head, tail) = url.split_at(path_end);
    let head = head.strip_suffix('/').unwrap_or(head);
    format!("{head}{suffix}{tail}")
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

    fn changes(headers: &[(&str, &str)], content_type: Option<&str>, path: &str) -> Changes {
        Changes {
            body: None,
            content_type: content_type.map(str::to_owned),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            path: path.into(),
        }
    }

    #[test]
    fn a_transforms_headers_follow_the_webhook_rules_and_leave_the_services_own_alone() {
        assert_eq!(
            check_changes(&changes(&[("X-Ok", "v"), ("x-ok", "w")], Some("text/plain"), "")),
            Ok(())
        );
        for (name, value, needle) in [
            ("Content-Type", "text/plain", "set by the service"),
            ("TRACEPARENT", "00-x", "set by the service"),
            ("host", "h", "set by the service"),
            ("Webhook-Id", "x", "set by the service"),
            ("Content-Length", "1", "set by the service"),
            ("Connection", "close", "the service manages it"),
            ("Proxy-Authorization", "x", "the service manages it"),
            ("bad name", "x", "not a valid HTTP header name"),
            ("X-Value", "a\r\nInjected: 1", "not allowed in HTTP headers"),
            ("X-Value", " padded", "not allowed in HTTP headers"),
        ] {
            let refused = check_changes(&changes(&[(name, value)], None, "")).unwrap_err();
            assert!(refused.contains(needle), "{name}: {refused}");
        }
        for content_type in ["", "text/plain\n"] {
            assert!(
                check_changes(&changes(&[], Some(content_type), "")).is_err(),
                "{content_type:?}"
            );
        }
    }

    #[test]
    fn a_path_suffix_stays_under_the_webhooks_path() {
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        for path in ["", "/", "/alerts", "/a/b.c/..d", "/a..b/", "/%41"] {
            assert_eq!(check_changes(&changes(&[], None, path)), Ok(()), "{path}");
        }
        for path in [
            "alerts",
            "/a?b=1",
            "/a#f",
            "/a b",
            "/a\tb",
            "/a\u{7}",
            "/..",
            "/a/../b",
            "/%2e%2E/x",
            "/.%2e",
            "/a\\..\\b",
            &long,
        ] {
            assert!(check_changes(&changes(&[], None, path)).is_err(), "{path}");
        }
        assert_eq!(
            with_path_suffix("https://h/in?k=1", "/alerts"),
            "https://h/in/alerts?k=1"
        );
        assert_eq!(with_path_suffix("https://h/in/#f", "/alerts"), "https://h/in/alerts#f");
        assert_eq!(with_path_suffix("https://h", "/alerts"), "https://h/alerts");
        assert_eq!(with_path_suffix("https://h/", "/alerts"), "https://h/alerts");
        assert_eq!(with_path_suffix("https://h?k=/x", "/alerts"), "https://h/alerts?k=/x");
        assert_eq!(with_path_suffix("https://h/in?k=1", ""), "https://h/in?k=1");
    }

    #[test]
    fn a_later_added_header_replaces_an_earlier_one() {
        let added = added_headers(vec![
            ("X-A".into(), "1".into()),
            ("X-B".into(), "b".into()),
            ("x-a".into(), "2".into()),
        ]);
        assert_eq!(
            added,
            [
                ("X-B".to_string(), "b".to_string()),
                ("x-a".to_string(), "2".to_string())
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
