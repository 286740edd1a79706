//! The delivery log as the tests read it (SPEC.md section 7): a webhook's deliveries, each
//! checked to have the documented shape, and waits for a delivery to reach a status.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::flows::is_uuid;
use crate::times::{between, time_of};
use crate::{ADMIN, TestHost};

/// `GET /webhooks/{webhook}/deliveries{query}` as `token`.
pub async fn log_page(host: &TestHost, webhook: &str, query: &str, token: &str) -> Result<(StatusCode, Value)> {
    host.call(
        Method::GET,
        &format!("/webhooks/{webhook}/deliveries{query}"),
        token,
        None,
    )
    .await
}

/// The `total` of a webhook's delivery log with this query (such as `?status=delivered`), as
/// its group's admin sees it.
pub async fn logged_total(host: &TestHost, webhook: &str, query: &str) -> Result<u64> {
    let (status, page) = log_page(host, webhook, query, ADMIN).await?;
    ensure!(status == StatusCode::OK, "{status}: {page}");
    page["total"].as_u64().context("a total")
}

/// Every delivery of a webhook as its group's admin sees it, newest first, each checked to
/// have the documented shape.
pub async fn deliveries_of(host: &TestHost, webhook: &str) -> Result<Vec<Value>> {
    let (status, page) = log_page(host, webhook, "?limit=200", ADMIN).await?;
    ensure!(status == StatusCode::OK, "the delivery log answered {status}: {page}");
    let list = page["deliveries"]
        .as_array()
        .with_context(|| format!("a log page has a deliveries array: {page}"))?
        .clone();
    ensure!(page["total"] == list.len(), "total disagrees with the list: {page:#}");
    for delivery in &list {
        check_delivery_shape(delivery, webhook)?;
    }
    Ok(list)
}

/// Waits until a webhook's log holds exactly one delivery and it has this status; answers it.
pub async fn the_only_delivery(host: &TestHost, webhook: &str, status: &str, within: Duration) -> Result<Value> {
    the_only_delivery_as(host, webhook, status, None, within).await
}

/// Waits until a webhook's only delivery is `pending` with exactly `count` attempts; answers it.
pub async fn pending_after(host: &TestHost, webhook: &str, count: usize, within: Duration) -> Result<Value> {
    the_only_delivery_as(host, webhook, "pending", Some(count), within).await
}

/// Waits until a webhook's only delivery has this status and exactly `count` attempts;
/// answers it.
pub async fn the_only_delivery_after(
    host: &TestHost,
    webhook: &str,
    status: &str,
    count: usize,
    within: Duration,
) -> Result<Value> {
    the_only_delivery_as(host, webhook, status, Some(count), within).await
}

/// Waits until a webhook's log holds exactly one delivery, with this status and, if given,
/// this many attempts; answers it.
async fn the_only_delivery_as(
    host: &TestHost,
    webhook: &str,
    status: &str,
    count: Option<usize>,
    within: Duration,
) -> Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let list = deliveries_of(host, webhook).await?;
        if list.len() == 1
            && list[0]["status"] == status
            && count.is_none_or(|count| attempts(&list[0]).is_ok_and(|a| a.len() == count))
        {
            return Ok(list[0].clone());
        }
        if Instant::now() > deadline {
            let attempts = count.map_or(String::new(), |count| format!(" with {count} attempts"));
            bail!("after {within:?} the log of {webhook} is not one {status} delivery{attempts}: {list:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A delivery's attempts.
pub fn attempts(delivery: &Value) -> Result<&Vec<Value>> {
    delivery["attempts"]
        .as_array()
        .with_context(|| format!("a delivery has an attempts array: {delivery}"))
}

/// The `status_code` of each attempt (`None` where the receiver did not answer).
pub fn status_codes(delivery: &Value) -> Result<Vec<Option<u64>>> {
    Ok(attempts(delivery)?.iter().map(|a| a["status_code"].as_u64()).collect())
}

/// Checks a delivery against SPEC.md section 7: exactly the documented fields with their types,
/// RFC 3339 times, `next_attempt_at` only while pending.
pub fn check_delivery_shape(delivery: &Value, webhook: &str) -> Result<()> {
    let object = delivery.as_object().context("a delivery is an object")?;
    for key in object.keys() {
        ensure!(
            [
                "id",
                "webhook_id",
                "message_id",
                "status",
                "attempts",
                "created_at",
                "next_attempt_at"
            ]
            .contains(&key.as_str()),
            "undocumented field {key:?} in {delivery:#}"
        );
    }
    let id = delivery["id"].as_str().context("a delivery has a string id")?;
    ensure!(is_uuid(id), "the delivery id {id:?} is not a UUID");
    ensure!(delivery["webhook_id"] == webhook, "{delivery:#}");
    let message = delivery["message_id"].as_str().context("a string message_id")?;
    ensure!(is_uuid(message), "the message id {message:?} is not a UUID");
    let status = delivery["status"].as_str().context("a string status")?;
    ensure!(
        ["pending", "delivered", "failed", "skipped"].contains(&status),
        "status {status:?}"
    );
    let created = time_of(&delivery["created_at"])?;
    match (status, delivery.get("next_attempt_at")) {
        ("pending", Some(next)) => {
            time_of(next)?;
        }
        ("pending", None) => bail!("a pending delivery without next_attempt_at: {delivery:#}"),
        (_, Some(_)) => bail!("a {status} delivery with next_attempt_at: {delivery:#}"),
        (_, None) => {}
    }
    for attempt in attempts(delivery)? {
        let object = attempt.as_object().context("an attempt is an object")?;
        for key in object.keys() {
            ensure!(
                ["at", "status_code", "error", "duration_ms", "response_body"].contains(&key.as_str()),
                "undocumented attempt field {key:?} in {attempt}"
            );
        }
        let at = time_of(&attempt["at"])?;
        ensure!(
            at >= created,
            "an attempt before its delivery was created: {delivery:#}"
        );
        ensure!(attempt["duration_ms"].is_u64(), "duration_ms: {attempt}");
        if let Some(code) = attempt.get("status_code") {
            ensure!(
                code.as_u64().is_some_and(|c| (100..=599).contains(&c)),
                "status_code: {attempt}"
            );
        }
        for text in ["error", "response_body"] {
            if let Some(value) = attempt.get(text) {
                ensure!(value.is_string(), "{text}: {attempt}");
            }
        }
        ensure!(
            attempt.get("status_code").is_some() || attempt["error"].as_str().is_some_and(|e| !e.is_empty()),
            "an attempt with neither a status code nor an error: {attempt}"
        );
    }
    if status == "delivered" {
        let last = attempts(delivery)?.last().context("delivered without an attempt")?;
        ensure!(
            last["status_code"].as_u64().is_some_and(|c| (200..300).contains(&c)),
            "delivered, but the last attempt is {last}"
        );
    }
    Ok(())
}

/// `next_attempt_at` of a pending delivery minus the start of its last attempt.
pub fn next_delay(delivery: &Value) -> Result<Duration> {
    let last = attempts(delivery)?.last().context("no attempt yet")?;
    between(time_of(&last["at"])?, time_of(&delivery["next_attempt_at"])?)
}
