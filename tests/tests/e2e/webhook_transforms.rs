//! A webhook's transform through the REST API and real deliveries (SPEC.md section 10):
//! attaching, viewing, trying and detaching one; each delivery reshaped, skipped or failed as
//! its transform answers, with the outcome in the delivery log; a faulty transform failing its
//! own deliveries only; the group's quota; and the three example transforms end to end.

use std::time::Duration;

use anyhow::{Context, ensure};
use base64::Engine;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use webhooks_tests::delivery_log::{attempts, deliveries_of, the_only_delivery};
use webhooks_tests::flows::{PROMPTLY, add_webhook, add_webhook_with, host_retrying_on, publish, view};
use webhooks_tests::receiver::Receiver;
use webhooks_tests::{
    ADMIN, EDITOR, THING_1, TestHost, VIEWER, eventually, example_transform_bytes, read, transform_variant_bytes,
};

const SCHEDULE: &str = "1s,1s";

/// `PUT /webhooks/{id}/transform` with these bytes as `application/wasm`.
async fn attach(host: &TestHost, webhook: &str, token: &str, bytes: Vec<u8>) -> anyhow::Result<(StatusCode, Value)> {
    let response = host
        .request(Method::PUT, &format!("/webhooks/{webhook}/transform"), token)
        .header(CONTENT_TYPE, "application/wasm")
        .body(bytes)
        .send()
        .await
        .context("PUT /webhooks/{id}/transform")?;
    read(response).await
}

/// Attaches, expecting `200`; answers the transform's description.
async fn attached(host: &TestHost, webhook: &str, bytes: Vec<u8>) -> anyhow::Result<Value> {
    let (status, answer) = attach(host, webhook, EDITOR, bytes).await?;
    ensure!(status == StatusCode::OK, "attach answered {status}: {answer}");
    Ok(answer)
}

/// `POST /webhooks/{id}/transform/test` with this sample.
async fn try_sample(host: &TestHost, webhook: &str, token: &str, sample: Value) -> anyhow::Result<(StatusCode, Value)> {
    host.call(
        Method::POST,
        &format!("/webhooks/{webhook}/transform/test"),
        token,
        Some(sample),
    )
    .await
}

fn decoded(text: &Value) -> anyhow::Result<Vec<u8>> {
    Ok(base64::engine::general_purpose::STANDARD.decode(text.as_str().context("base64 text")?)?)
}

async fn host() -> anyhow::Result<TestHost> {
    host_retrying_on(SCHEDULE, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_transform_reshapes_every_delivery_of_its_webhook() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host().await?;
    let webhook = add_webhook_with(
        &host,
        THING_1,
        json!({"name": "reshaped", "url": receiver.url("/in?k=1"), "headers": {"X-Key": "k"}, "metadata": {"site": "a"}}),
    )
    .await?;
    let bytes = transform_variant_bytes("echo")?;
    let described = attached(&host, &webhook, bytes.clone()).await?;
    let sha = described["sha256"].as_str().context("a sha256")?;
    ensure!(
        sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()),
        "{described}"
    );
    ensure!(described["size"] == json!(bytes.len()), "{described}");
    ensure!(described["attached_at"].is_string(), "{described}");
    let shown = view(&host, &webhook).await?;
    ensure!(shown["transform"] == described, "the view shows the transform: {shown}");

    // Trying it sends nothing and says what would be sent.
    let (status, trial) = try_sample(&host, &webhook, VIEWER, json!({"payload": "hello"})).await?;
    ensure!(status == StatusCode::OK, "try answered {status}: {trial}");
    ensure!(trial["action"] == "send", "{trial}");
    ensure!(decoded(&trial["body_base64"])? == br#"{"site":"a"}|hello"#, "{trial}");
    ensure!(trial["headers"] == json!({"x-transformed": "yes"}), "{trial}");
    ensure!(trial["path"] == "/echoed", "{trial}");
    ensure!(receiver.count() == 0, "trying sent nothing");

    publish(&host, "key-1", &b"{\"t\":21}"[..]).await?;
    let got = receiver.wait_for(Some("/in/echoed"), 1, PROMPTLY).await?;
    ensure!(
        got[0].body[..] == br#"{"site":"a"}|{"t":21}"#[..],
        "{:?}",
        String::from_utf8_lossy(&got[0].body)
    );
    ensure!(got[0].header("x-transformed") == Some("yes"));
    ensure!(got[0].header("x-key") == Some("k"), "the webhook's own headers stay");
    ensure!(got[0].path == "/in/echoed?k=1", "the query stays: {}", got[0].path);
    the_only_delivery(&host, &webhook, "delivered", PROMPTLY).await?;

    // Detached, the next message goes as it came.
    host.expect(
        Method::DELETE,
        &format!("/webhooks/{webhook}/transform"),
        EDITOR,
        None,
        StatusCode::NO_CONTENT,
    )
    .await?;
    ensure!(view(&host, &webhook).await?.get("transform").is_none());
    host.expect(
        Method::DELETE,
        &format!("/webhooks/{webhook}/transform"),
        EDITOR,
        None,
        StatusCode::NOT_FOUND,
    )
    .await?;
    publish(&host, "key-1", &b"plain"[..]).await?;
    let got = receiver.wait_for(Some("/in"), 1, PROMPTLY).await?;
    ensure!(got[0].body[..] == b"plain"[..]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_message_is_logged_as_skipped_and_never_sent() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host().await?;
    let webhook = add_webhook_with(
        &host,
        THING_1,
        json!({"name": "filtered", "url": receiver.url("/hot"),
               "metadata": {"transform": {"field": "temperature", "above": 30}}}),
    )
    .await?;
    attached(&host, &webhook, example_transform_bytes("threshold_filter")?).await?;
    publish(&host, "key-1", &br#"{"temperature":21}"#[..]).await?;
    publish(&host, "key-1", &br#"{"temperature":35}"#[..]).await?;
    let got = receiver.wait_for(Some("/hot"), 1, PROMPTLY).await?;
    ensure!(got[0].body[..] == br#"{"temperature":35}"#[..]);
    eventually(PROMPTLY, || async {
        let deliveries = deliveries_of(&host, &webhook).await?;
        let statuses: Vec<&str> = deliveries.iter().filter_map(|d| d["status"].as_str()).collect();
        ensure!(statuses.len() == 2 && statuses.contains(&"skipped"), "{statuses:?}");
        Ok(())
    })
    .await?;
    let deliveries = deliveries_of(&host, &webhook).await?;
    let skipped = deliveries
        .iter()
        .find(|d| d["status"] == "skipped")
        .context("a skipped delivery")?;
    let reason = attempts(skipped)?[0]["error"].as_str().unwrap_or_default().to_owned();
    ensure!(reason.contains("21") && reason.contains("30"), "{skipped}");
    let (status, page) = host
        .call(
            Method::GET,
            &format!("/webhooks/{webhook}/deliveries?status=skipped"),
            ADMIN,
            None,
        )
        .await?;
    ensure!(status == StatusCode::OK && page["total"] == 1, "{status} {page}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(receiver.count() == 1, "the skipped message was never sent");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_transform_fails_its_own_deliveries_once_and_nothing_else() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host().await?;
    let trapping = add_webhook(&host, THING_1, "trapping", &receiver.url("/trap")).await?;
    let spinning = add_webhook(&host, THING_1, "spinning", &receiver.url("/spin")).await?;
    let plain = add_webhook(&host, THING_1, "plain", &receiver.url("/plain")).await?;
    attached(&host, &trapping, transform_variant_bytes("trap")?).await?;
    attached(&host, &spinning, transform_variant_bytes("spin")?).await?;

    publish(&host, "key-1", &b"payload"[..]).await?;
    receiver.wait_for(Some("/plain"), 1, PROMPTLY).await?;
    for (webhook, cause) in [(&trapping, "trapped"), (&spinning, "deadline")] {
        let failed = the_only_delivery(&host, webhook, "failed", PROMPTLY).await?;
        let tried = attempts(&failed)?;
        ensure!(tried.len() == 1, "not retried: {failed}");
        let error = tried[0]["error"].as_str().unwrap_or_default();
        ensure!(error.contains("transform") && error.contains(cause), "{failed}");
    }
    // Past the whole retry schedule, still one attempt each, and nothing reached them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for webhook in [&trapping, &spinning] {
        let failed = the_only_delivery(&host, webhook, "failed", PROMPTLY).await?;
        ensure!(attempts(&failed)?.len() == 1, "{failed}");
    }
    ensure!(receiver.received_on("/trap").is_empty() && receiver.received_on("/spin").is_empty());
    the_only_delivery(&host, &plain, "delivered", PROMPTLY).await?;

    // Trying the trapping one says why, as 422.
    let (status, answer) = try_sample(&host, &trapping, VIEWER, json!({"payload": "x"})).await?;
    ensure!(status == StatusCode::UNPROCESSABLE_ENTITY, "{status} {answer}");
    ensure!(
        answer["error"].as_str().unwrap_or_default().contains("trapped"),
        "{answer}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attaching_refuses_what_is_not_an_allowed_transform() -> anyhow::Result<()> {
    let host = host().await?;
    let webhook = add_webhook(&host, THING_1, "guarded", "http://127.0.0.1:9/in").await?;
    let echo = transform_variant_bytes("echo")?;

    let (status, answer) = attach(&host, &webhook, EDITOR, b"not wasm".to_vec()).await?;
    ensure!(status == StatusCode::BAD_REQUEST, "garbage: {status} {answer}");
    // Raw, since the host answers before reading a body it refuses, which a client still
    // sending may see as a reset.
    let size = (2 << 20) + 1;
    let mut request = format!(
        "PUT /webhooks/{webhook}/transform HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {EDITOR}\r\n\
         Content-Type: application/wasm\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n",
        host.port
    )
    .into_bytes();
    request.resize(request.len() + size, 0);
    let answer = host.raw_exchange(request).await?;
    ensure!(answer.status == StatusCode::PAYLOAD_TOO_LARGE, "over 2 MiB: {answer:?}");
    let response = host
        .request(Method::PUT, &format!("/webhooks/{webhook}/transform"), EDITOR)
        .header(CONTENT_TYPE, "application/json")
        .body(echo.clone())
        .send()
        .await?;
    ensure!(response.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) = attach(&host, &webhook, "", echo.clone()).await?;
    ensure!(status == StatusCode::UNAUTHORIZED, "no token: {status}");
    let (status, _) = attach(&host, &webhook, VIEWER, echo.clone()).await?;
    ensure!(status == StatusCode::FORBIDDEN, "a viewer: {status}");
    let (status, _) = attach(&host, "0f0f0f0f-0000-4000-8000-0000000000ff", EDITOR, echo.clone()).await?;
    ensure!(status == StatusCode::NOT_FOUND, "an unknown webhook: {status}");
    ensure!(
        view(&host, &webhook).await?.get("transform").is_none(),
        "nothing attached"
    );

    // A sample must name its payload once.
    attached(&host, &webhook, echo).await?;
    let (status, answer) = try_sample(&host, &webhook, VIEWER, json!({"content_type": "text/plain"})).await?;
    ensure!(status == StatusCode::BAD_REQUEST, "{status} {answer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_has_at_most_its_quota_of_transforms() -> anyhow::Result<()> {
    let host = host_retrying_on(SCHEDULE, &[("MF_WEBHOOKS_TRANSFORM_QUOTA", "1")]).await?;
    let first = add_webhook(&host, THING_1, "first", "http://127.0.0.1:9/a").await?;
    let second = add_webhook(&host, THING_1, "second", "http://127.0.0.1:9/b").await?;
    let echo = transform_variant_bytes("echo")?;
    attached(&host, &first, echo.clone()).await?;
    let (status, answer) = attach(&host, &second, EDITOR, echo.clone()).await?;
    ensure!(status == StatusCode::CONFLICT, "over the quota: {status} {answer}");
    // Replacing the one it has is no second transform.
    attached(&host, &first, example_transform_bytes("slack_message")?).await?;
    // Removing the webhook frees its place.
    host.expect(
        Method::DELETE,
        "/webhooks",
        ADMIN,
        Some(json!({"webhook_ids": [first]})),
        StatusCode::NO_CONTENT,
    )
    .await?;
    attached(&host, &second, echo).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_transforms_format_and_flatten_deliveries() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host().await?;
    let slack = add_webhook(&host, THING_1, "slack", &receiver.url("/slack")).await?;
    let senml = add_webhook(&host, THING_1, "senml", &receiver.url("/senml")).await?;
    attached(&host, &slack, example_transform_bytes("slack_message")?).await?;
    attached(&host, &senml, example_transform_bytes("senml_flatten")?).await?;
    publish(
        &host,
        "key-1",
        &br#"[{"bn":"dev/","n":"t","v":20.5},{"n":"on","vb":true}]"#[..],
    )
    .await?;

    let got = receiver.wait_for(Some("/slack"), 1, PROMPTLY).await?;
    let text: Value = serde_json::from_slice(&got[0].body)?;
    ensure!(
        text == json!({"text": format!("{THING_1}: [{{\"bn\":\"dev/\",\"n\":\"t\",\"v\":20.5}},{{\"n\":\"on\",\"vb\":true}}]")}),
        "{text}"
    );
    ensure!(got[0].header("content-type") == Some("application/json"));
    let got = receiver.wait_for(Some("/senml"), 1, PROMPTLY).await?;
    let flat: Value = serde_json::from_slice(&got[0].body)?;
    ensure!(flat == json!({"dev/t": 20.5, "dev/on": true}), "{flat}");
    Ok(())
}
