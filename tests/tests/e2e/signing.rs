//! Standard Webhooks signing (SPEC.md section 7, signing and identity, with section 2): the
//! headers of a signed delivery checked with an independent implementation, one `webhook-id`
//! per delivery across its attempts, a secret that never shows in an answer or the log, invalid
//! secrets refused, and updates that keep, replace or stop the signing.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, ensure};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use webhooks_tests::delivery_log::{status_codes, the_only_delivery};
use webhooks_tests::flows::{
    PROMPTLY, SCHEDULE, add_webhook, add_webhook_with, host_retrying_on, is_uuid, publish, random_bytes, update, view,
};
use webhooks_tests::receiver::{Behaviour, Received, Receiver};
use webhooks_tests::{ADMIN, GROUP_1, THING_1, TestHost, VIEWER};

// --- signing ------------------------------------------------------------------------------------

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let word = chunk
            .iter()
            .enumerate()
            .fold(0u32, |w, (i, b)| w | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(ALPHABET[(word >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// A fresh signing secret of `count` random bytes.
fn secret_of(count: usize) -> String {
    format!("whsec_{}", base64(&random_bytes(count)))
}

/// Verifies a received request with the `standardwebhooks` crate and this secret.
fn verify(secret: &str, request: &Received) -> anyhow::Result<()> {
    let mut headers = hyper::HeaderMap::new();
    for (name, value) in &request.headers {
        headers.append(
            hyper::header::HeaderName::from_bytes(name.as_bytes())?,
            hyper::header::HeaderValue::from_str(value)?,
        );
    }
    standardwebhooks::Webhook::new(secret)
        .map_err(|e| anyhow!("the secret {secret:?} is refused by standardwebhooks: {e}"))?
        .verify(&request.body, &headers)
        .map_err(|e| anyhow!("{e} ({:?})", request.headers))
}

/// Checks the Standard Webhooks headers of a signed request; answers its `webhook-id`.
fn check_signed(secret: &str, request: &Received, sent: SystemTime) -> anyhow::Result<String> {
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        ensure!(request.header_values(name).len() == 1, "{name}: {:?}", request.headers);
    }
    let id = request.header("webhook-id").unwrap_or_default().to_owned();
    ensure!(is_uuid(&id), "webhook-id {id:?}");
    let timestamp: u64 = request
        .header("webhook-timestamp")
        .unwrap_or_default()
        .parse()
        .context("webhook-timestamp is Unix seconds")?;
    let sent = sent.duration_since(UNIX_EPOCH)?.as_secs();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    ensure!(
        timestamp + 1 >= sent && timestamp <= now + 1,
        "webhook-timestamp {timestamp}, sent between {sent} and {now}"
    );
    let signature = request.header("webhook-signature").unwrap_or_default();
    let encoded = signature
        .strip_prefix("v1,")
        .with_context(|| format!("webhook-signature {signature:?}"))?;
    ensure!(
        encoded.len() == 44 && encoded.ends_with('='),
        "not the base64 of an HMAC-SHA256: {signature:?}"
    );
    verify(secret, request)?;
    ensure!(
        !request
            .headers
            .iter()
            .any(|(_, v)| v.contains(&secret["whsec_".len()..])),
        "the secret was sent: {:?}",
        request.headers
    );
    Ok(id)
}

/// A copy of a request with another body.
fn with_body(request: &Received, body: &str) -> Received {
    let mut copy = request.clone();
    copy.body = body.as_bytes().to_vec().into();
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_gets_standard_webhooks_headers_that_verify_with_its_secret() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_retrying_on(SCHEDULE, &[]).await?;
    let secret = secret_of(32);
    let signed = add_webhook_with(
        &host,
        THING_1,
        json!({"name": "signed", "url": receiver.url("/signed"), "secret": secret}),
    )
    .await?;
    add_webhook(&host, THING_1, "unsigned", &receiver.url("/unsigned")).await?;

    let sent = SystemTime::now();
    let payload = r#"{"temperature": 21.5, "unit": "°C"}"#;
    publish(&host, "key-1", payload).await?;
    let got = receiver.wait_for(Some("/signed"), 1, PROMPTLY).await?;
    assert_eq!(got[0].body, payload);
    let id = check_signed(&secret, &got[0], sent)?;
    let delivery = the_only_delivery(&host, &signed, "delivered", PROMPTLY).await?;
    assert_eq!(
        delivery["id"],
        id.as_str(),
        "webhook-id is the delivery id: {delivery:#}"
    );

    // The check is real: another secret or another body does not verify.
    assert!(verify(&secret_of(32), &got[0]).is_err());
    assert!(verify(&secret, &with_body(&got[0], r#"{"temperature": 99}"#)).is_err());

    let unsigned = receiver.wait_for(Some("/unsigned"), 1, PROMPTLY).await?;
    for name in ["webhook-signature", "webhook-timestamp"] {
        assert_eq!(unsigned[0].header(name), None, "{:?}", unsigned[0].headers);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_of_a_signed_delivery_has_the_same_webhook_id_and_verifies() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    receiver.set_behaviour("/flaky", Behaviour::status(503));
    let host = host_retrying_on(SCHEDULE, &[]).await?;
    let secret = secret_of(24);
    let webhook = add_webhook_with(
        &host,
        THING_1,
        json!({"name": "flaky", "url": receiver.url("/flaky"), "secret": secret}),
    )
    .await?;

    let sent = SystemTime::now();
    publish(&host, "key-1", "twice").await?;
    receiver.wait_for(Some("/flaky"), 1, PROMPTLY).await?;
    receiver.set_behaviour("/flaky", Behaviour::default());
    let got = receiver.wait_for(Some("/flaky"), 2, PROMPTLY).await?;
    let first = check_signed(&secret, &got[0], sent)?;
    let second = check_signed(&secret, &got[1], sent)?;
    assert_eq!(
        first, second,
        "the attempts of one delivery carry different webhook-ids"
    );
    let delivery = the_only_delivery(&host, &webhook, "delivered", PROMPTLY).await?;
    assert_eq!(delivery["id"], first.as_str(), "{delivery:#}");
    assert_eq!(status_codes(&delivery)?, [Some(503), Some(200)]);

    // Another message is another delivery with another id.
    publish(&host, "key-1", "another").await?;
    let got = receiver.wait_for(Some("/flaky"), 3, PROMPTLY).await?;
    let third = check_signed(&secret, &got[2], sent)?;
    assert_ne!(third, first);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_of_an_unsigned_delivery_carries_its_delivery_id_as_webhook_id() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    receiver.set_behaviour("/plain", Behaviour::status(503));
    let host = host_retrying_on(SCHEDULE, &[]).await?;
    let webhook = add_webhook(&host, THING_1, "plain", &receiver.url("/plain")).await?;

    publish(&host, "key-1", "identified").await?;
    receiver.wait_for(Some("/plain"), 1, PROMPTLY).await?;
    receiver.set_behaviour("/plain", Behaviour::default());
    let got = receiver.wait_for(Some("/plain"), 2, PROMPTLY).await?;
    let delivery = the_only_delivery(&host, &webhook, "delivered", PROMPTLY).await?;
    for attempt in &got {
        assert_eq!(attempt.header("webhook-signature"), None);
        assert_eq!(
            attempt.header_values("webhook-id"),
            [delivery["id"].as_str().unwrap_or_default()],
            "SPEC.md section 7, identity: the delivery id is sent as webhook-id; got {:?}",
            attempt.headers
        );
    }
    Ok(())
}

/// Sends a request as `token` and answers the status and the raw body text.
async fn raw(
    host: &TestHost,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, String)> {
    let mut request = host.request(method, path, token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    Ok((response.status(), response.text().await?))
}

#[tokio::test]
async fn the_secret_never_appears_in_an_answer_and_views_show_signed() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let secret = secret_of(48);
    let key = secret["whsec_".len()..].to_owned();
    let leaks = |what: &str, text: &str| {
        assert!(!text.contains(&key), "{what} shows the secret: {text}");
        assert!(!text.contains("whsec_"), "{what} shows a secret: {text}");
    };

    let (status, created) = raw(
        &host,
        Method::POST,
        &format!("/things/{THING_1}/webhooks"),
        ADMIN,
        Some(json!([{"name": "signed", "url": "https://signed.example/in", "secret": secret}])),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    leaks("the create answer", &created);
    let created: Value = serde_json::from_str(&created)?;
    assert_eq!(created[0]["signed"], true, "{created:#}");
    assert_eq!(created[0].get("secret"), None, "{created:#}");
    let id = created[0]["id"].as_str().context("an id")?.to_owned();
    add_webhook(&host, THING_1, "unsigned", "https://unsigned.example/in").await?;

    let (status, answer) = raw(
        &host,
        Method::PUT,
        &format!("/webhooks/{id}"),
        ADMIN,
        Some(json!({"name": "signed", "url": "https://signed.example/in", "secret": secret})),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    leaks("the PUT answer", &answer);

    let reads = [
        (Method::GET, format!("/webhooks/{id}")),
        (Method::GET, format!("/svcwebhooks/webhooks/{id}")),
        (Method::GET, format!("/things/{THING_1}/webhooks")),
        (Method::GET, format!("/groups/{GROUP_1}/webhooks")),
        (Method::POST, format!("/things/{THING_1}/webhooks/search")),
        (Method::POST, format!("/groups/{GROUP_1}/webhooks/search")),
        (Method::GET, format!("/webhooks/{id}/deliveries")),
    ];
    for (method, path) in reads {
        let (status, text) = raw(&host, method.clone(), &path, VIEWER, None).await?;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {text}");
        leaks(&format!("{method} {path}"), &text);
        let body: Value = serde_json::from_str(&text)?;
        let views: Vec<&Value> = match body.get("webhooks") {
            Some(list) => list.as_array().context("a webhooks array")?.iter().collect(),
            None if path.ends_with("deliveries") => Vec::new(),
            None => vec![&body],
        };
        for webhook in views {
            let expected = if webhook["id"] == id.as_str() {
                Some(&Value::Bool(true))
            } else {
                None
            };
            assert_eq!(webhook.get("signed"), expected, "{method} {path}: {webhook:#}");
            assert_eq!(webhook.get("secret"), None, "{method} {path}: {webhook:#}");
        }
    }
    assert!(!host.log().contains(&key), "the log shows the secret");
    Ok(())
}

#[tokio::test]
async fn an_invalid_secret_is_refused_with_400_and_changes_nothing() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let good = secret_of(32);
    let webhook = add_webhook_with(
        &host,
        THING_1,
        json!({"name": "signed", "url": "https://signed.example/in", "secret": good}),
    )
    .await?;
    let invalid = [
        ("no whsec_ prefix", json!(base64(&random_bytes(32)))),
        ("another prefix", json!(format!("whsec-{}", base64(&random_bytes(32))))),
        ("the prefix alone", json!("whsec_")),
        ("not base64", json!("whsec_this is not base64!")),
        (
            "broken padding",
            json!(format!("whsec_{}", &base64(&random_bytes(32))[..43])),
        ),
        ("10 bytes", json!(secret_of(10))),
        ("23 bytes", json!(secret_of(23))),
        ("65 bytes", json!(secret_of(65))),
        ("100 bytes", json!(secret_of(100))),
        ("a number", json!(12345)),
        ("a boolean", json!(true)),
        ("an array", json!([good])),
        ("an object", json!({"secret": good})),
    ];
    for (what, secret) in &invalid {
        let item = json!({"name": format!("bad: {what}"), "url": "https://bad.example/in", "secret": secret});
        let (status, body) = host
            .call(
                Method::POST,
                &format!("/things/{THING_1}/webhooks"),
                ADMIN,
                Some(json!([item])),
            )
            .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "create with {what}: {body}");
        let (status, body) = host
            .call(
                Method::PUT,
                &format!("/webhooks/{webhook}"),
                ADMIN,
                Some(json!({"name": "signed", "url": "https://signed.example/in", "secret": secret})),
            )
            .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "update with {what}: {body}");
    }
    let (status, page) = host
        .call(Method::GET, &format!("/things/{THING_1}/webhooks"), ADMIN, None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 1, "{page:#}");
    assert_eq!(page["webhooks"][0]["signed"], true, "{page:#}");

    // The bounds themselves are fine.
    for bytes in [24, 64] {
        let created = host
            .create(
                THING_1,
                ADMIN,
                json!([{"name": format!("{bytes} bytes"), "url": "https://ok.example/in", "secret": secret_of(bytes)}]),
            )
            .await?;
        assert_eq!(created[0]["signed"], true, "{created:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_without_a_secret_keeps_signing_a_new_one_replaces_it_and_null_stops_it() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_retrying_on(SCHEDULE, &[]).await?;
    let url = receiver.url("/in");
    let first_secret = secret_of(32);
    let webhook = add_webhook_with(
        &host,
        THING_1,
        json!({"name": "in", "url": url, "secret": first_secret}),
    )
    .await?;
    let sent = SystemTime::now();

    update(&host, &webhook, json!({"name": "in", "url": url})).await?;
    assert_eq!(view(&host, &webhook).await?["signed"], true);
    publish(&host, "key-1", "one").await?;
    let got = receiver.wait_for(Some("/in"), 1, PROMPTLY).await?;
    check_signed(&first_secret, &got[0], sent)?;

    let second_secret = secret_of(64);
    update(
        &host,
        &webhook,
        json!({"name": "in", "url": url, "secret": second_secret}),
    )
    .await?;
    assert_eq!(view(&host, &webhook).await?["signed"], true);
    publish(&host, "key-1", "two").await?;
    let got = receiver.wait_for(Some("/in"), 2, PROMPTLY).await?;
    check_signed(&second_secret, &got[1], sent)?;
    assert!(verify(&first_secret, &got[1]).is_err(), "the old secret still signs");

    update(&host, &webhook, json!({"name": "in", "url": url, "secret": null})).await?;
    let unsigned = view(&host, &webhook).await?;
    assert_eq!(unsigned.get("signed"), None, "{unsigned:#}");
    publish(&host, "key-1", "three").await?;
    let got = receiver.wait_for(Some("/in"), 3, PROMPTLY).await?;
    for name in ["webhook-signature", "webhook-timestamp"] {
        assert_eq!(got[2].header(name), None, "{:?}", got[2].headers);
    }

    // An unsigned webhook is signed from the update that gives it a secret.
    let third_secret = secret_of(40);
    update(
        &host,
        &webhook,
        json!({"name": "in", "url": url, "secret": third_secret}),
    )
    .await?;
    publish(&host, "key-1", "four").await?;
    let got = receiver.wait_for(Some("/in"), 4, PROMPTLY).await?;
    check_signed(&third_secret, &got[3], sent)?;
    assert_eq!(
        got.iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect::<Vec<_>>(),
        ["one", "two", "three", "four"]
    );
    Ok(())
}
