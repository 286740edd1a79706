//! The delivery log (SPEC.md section 7, with section 3): a webhook's deliveries newest first
//! with their attempts, paging and the status filter, who may read it and who may retry, a
//! manual retry, one delivery per idempotent message, the first 4 KiB of an answer kept, and
//! retention.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, ensure};
use reqwest::{Method, StatusCode};
use serde_json::json;
use webhooks_tests::delivery_log::{
    attempts, deliveries_of, log_page, next_delay, pending_after, status_codes, the_only_delivery,
    the_only_delivery_after,
};
use webhooks_tests::flows::{
    MESSAGE_ID, PROMPTLY, SCHEDULE, UNKNOWN_WEBHOOK, add_webhook, as_thing, fresh_message_id, host_retrying_on,
    publish, send, view,
};
use webhooks_tests::receiver::{Behaviour, Receiver, bodies};
use webhooks_tests::times::time_of;
use webhooks_tests::{ADMIN, EDITOR, LONER, OTHER_ADMIN, THING_1, VIEWER, eventually};

// --- the delivery log ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_lists_a_webhooks_deliveries_newest_first_with_their_attempts() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_retrying_on(SCHEDULE, &[]).await?;
    let webhook = add_webhook(&host, THING_1, "in", &receiver.url("/in")).await?;
    let other = add_webhook(&host, THING_1, "other", &receiver.url("/other")).await?;

    let started = SystemTime::now();
    let mut message_ids = Vec::new();
    for n in 1..=3 {
        message_ids.push(publish(&host, "key-1", format!("message {n}")).await?);
        receiver.wait_for(Some("/in"), n, PROMPTLY).await?;
    }
    let given = fresh_message_id();
    let answer = send(
        as_thing(&host, "key-1", "/messages")
            .header(MESSAGE_ID, &given)
            .body("message 4"),
    )
    .await?;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    assert_eq!(answer.message_id.as_deref(), Some(given.as_str()));
    message_ids.push(given);
    receiver.wait_for(Some("/in"), 4, PROMPTLY).await?;

    eventually(PROMPTLY, || async {
        let list = deliveries_of(&host, &webhook).await?;
        ensure!(
            list.len() == 4 && list.iter().all(|d| d["status"] == "delivered"),
            "{list:#?}"
        );
        Ok(())
    })
    .await?;
    let list = deliveries_of(&host, &webhook).await?;
    let (status, page) = log_page(&host, &webhook, "", VIEWER).await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 4);
    assert_eq!(page["offset"], 0);
    assert_eq!(page["limit"], 10);
    assert_eq!(page["deliveries"].as_array().map(Vec::len), Some(4));

    let newest_first: Vec<&str> = message_ids.iter().rev().map(String::as_str).collect();
    let listed: Vec<&str> = list
        .iter()
        .map(|d| d["message_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(listed, newest_first, "{list:#?}");
    let finished = SystemTime::now();
    let mut ids = Vec::new();
    for delivery in &list {
        let created = time_of(&delivery["created_at"])?;
        assert!(
            created + Duration::from_secs(1) >= started && created <= finished,
            "{delivery:#}"
        );
        let [attempt] = attempts(delivery)?.as_slice() else {
            panic!("one attempt expected: {delivery:#}");
        };
        let mut keys: Vec<&str> = attempt
            .as_object()
            .context("an attempt object")?
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(keys, ["at", "duration_ms", "response_body", "status_code"], "{attempt}");
        assert_eq!(attempt["status_code"], 200);
        assert_eq!(attempt["response_body"], "ok");
        assert!(attempt["duration_ms"].as_u64().is_some_and(|d| d < 5000), "{attempt}");
        let mut keys: Vec<&str> = delivery
            .as_object()
            .context("a delivery object")?
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            ["attempts", "created_at", "id", "message_id", "status", "webhook_id"],
            "{delivery:#}"
        );
        ids.push(delivery["id"].as_str().unwrap_or_default().to_owned());
    }
    let times: Vec<SystemTime> = list
        .iter()
        .map(|d| time_of(&d["created_at"]))
        .collect::<anyhow::Result<_>>()?;
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "not newest first: {list:#?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "delivery ids repeat: {list:#?}");

    // The other webhook's log has its own deliveries of the same messages.
    let others = deliveries_of(&host, &other).await?;
    assert_eq!(others.len(), 4, "{others:#?}");
    for delivery in &others {
        assert!(!ids.contains(&delivery["id"].as_str().unwrap_or_default().to_owned()));
    }
    let listed: Vec<&str> = others
        .iter()
        .map(|d| d["message_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(listed, newest_first);

    // Under the gateway prefix too.
    let (status, prefixed) = host
        .call(
            Method::GET,
            &format!("/svcwebhooks/webhooks/{webhook}/deliveries"),
            VIEWER,
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{prefixed}");
    assert_eq!(prefixed["total"], 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_pages_with_offset_and_limit_and_filters_by_status() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    // Pending deliveries stay pending for the whole test.
    let host = host_retrying_on("1m", &[]).await?;
    let webhook = add_webhook(&host, THING_1, "mixed", &receiver.url("/mixed")).await?;

    // Two failed, three delivered, one pending, in this order.
    let mut published = Vec::new();
    let phases = [(404u16, "failed", 2usize), (200, "delivered", 3), (503, "pending", 1)];
    let mut seen = 0;
    for (status, _, count) in phases {
        receiver.set_behaviour("/mixed", Behaviour::status(status));
        for _ in 0..count {
            published.push(publish(&host, "key-1", format!("answered {status}")).await?);
            seen += 1;
            receiver.wait_for(Some("/mixed"), seen, PROMPTLY).await?;
        }
    }
    eventually(PROMPTLY, || async {
        let list = deliveries_of(&host, &webhook).await?;
        let statuses: Vec<&str> = list.iter().map(|d| d["status"].as_str().unwrap_or_default()).collect();
        ensure!(
            statuses == ["pending", "delivered", "delivered", "delivered", "failed", "failed"],
            "{statuses:?}"
        );
        Ok(())
    })
    .await?;
    let newest_first: Vec<&str> = published.iter().rev().map(String::as_str).collect();
    let page_of = |query: &'static str| {
        let host = &host;
        let webhook = &webhook;
        async move {
            let (status, page) = log_page(host, webhook, query, VIEWER).await?;
            ensure!(status == StatusCode::OK, "{query}: {status} {page}");
            let ids: Vec<String> = page["deliveries"]
                .as_array()
                .context("deliveries")?
                .iter()
                .map(|d| d["message_id"].as_str().unwrap_or_default().to_owned())
                .collect();
            anyhow::Ok((page, ids))
        }
    };

    let (page, ids) = page_of("?offset=1&limit=2").await?;
    assert_eq!(
        (&page["total"], &page["offset"], &page["limit"]),
        (&json!(6), &json!(1), &json!(2))
    );
    assert_eq!(ids, newest_first[1..3]);
    let (page, ids) = page_of("?offset=4").await?;
    assert_eq!(page["total"], 6);
    assert_eq!(ids, newest_first[4..]);
    let (page, ids) = page_of("?offset=6&limit=200").await?;
    assert_eq!((&page["total"], &page["limit"]), (&json!(6), &json!(200)));
    assert!(ids.is_empty(), "{page:#}");
    let (page, ids) = page_of("?offset=100").await?;
    assert_eq!(page["total"], 6);
    assert!(ids.is_empty());
    let (_, ids) = page_of("?limit=1").await?;
    assert_eq!(ids, newest_first[..1]);

    let (page, ids) = page_of("?status=failed").await?;
    assert_eq!(page["total"], 2);
    assert_eq!(ids, newest_first[4..]);
    for delivery in page["deliveries"].as_array().context("deliveries")? {
        assert_eq!(delivery["status"], "failed");
        assert_eq!(status_codes(delivery)?, [Some(404)]);
        assert_eq!(delivery.get("next_attempt_at"), None);
    }
    let (page, ids) = page_of("?status=delivered").await?;
    assert_eq!(page["total"], 3);
    assert_eq!(ids, newest_first[1..4]);
    let (page, ids) = page_of("?status=pending").await?;
    assert_eq!(page["total"], 1);
    assert_eq!(ids, newest_first[..1]);
    let pending = &page["deliveries"][0];
    assert_eq!(status_codes(pending)?, [Some(503)]);
    let next = next_delay(pending)?;
    assert!(
        next >= Duration::from_secs(48) && next <= Duration::from_secs(73),
        "next attempt {next:?} after the first on a 1 min schedule: {pending:#}"
    );
    let (page, ids) = page_of("?status=delivered&offset=1&limit=1").await?;
    assert_eq!(page["total"], 3);
    assert_eq!(ids, newest_first[2..3]);

    let refused = [
        "?limit=0",
        "?limit=-1",
        "?limit=201",
        "?limit=ten",
        "?limit=1.5",
        "?offset=-1",
        "?offset=one",
        "?limit=1&limit=2",
        "?offset=0&offset=0",
        "?status=lost",
        "?status=all",
        "?status=failed&status=pending",
    ];
    for query in refused {
        let (status, body) = log_page(&host, &webhook, query, VIEWER).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_may_read_the_delivery_log_and_only_editors_may_retry() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    receiver.set_behaviour("/refuses", Behaviour::status(400));
    let host = host_retrying_on(SCHEDULE, &[]).await?;
    let webhook = add_webhook(&host, THING_1, "refuses", &receiver.url("/refuses")).await?;
    publish(&host, "key-1", "refused").await?;
    let delivery = the_only_delivery(&host, &webhook, "failed", PROMPTLY).await?;
    let delivery_id = delivery["id"].as_str().context("an id")?.to_owned();

    for token in [ADMIN, EDITOR, VIEWER] {
        let (status, page) = log_page(&host, &webhook, "", token).await?;
        assert_eq!(status, StatusCode::OK, "{token}: {page}");
        assert_eq!(page["total"], 1, "{token}: {page}");
    }
    let refusals = [
        ("", StatusCode::UNAUTHORIZED),
        ("not-a-known-token", StatusCode::UNAUTHORIZED),
        (OTHER_ADMIN, StatusCode::FORBIDDEN),
        (LONER, StatusCode::FORBIDDEN),
    ];
    for (token, expected) in refusals {
        let (status, body) = log_page(&host, &webhook, "", token).await?;
        assert_eq!(status, expected, "log as {token:?}: {body}");
    }
    let (status, body) = log_page(&host, UNKNOWN_WEBHOOK, "", ADMIN).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let retry = format!("/webhooks/{webhook}/deliveries/{delivery_id}/retry");
    for (token, expected) in [
        ("", StatusCode::UNAUTHORIZED),
        ("not-a-known-token", StatusCode::UNAUTHORIZED),
        (VIEWER, StatusCode::FORBIDDEN),
        (OTHER_ADMIN, StatusCode::FORBIDDEN),
        (LONER, StatusCode::FORBIDDEN),
    ] {
        let (status, body) = host.call(Method::POST, &retry, token, None).await?;
        assert_eq!(status, expected, "retry as {token:?}: {body}");
    }
    // Nothing was retried by the refused requests.
    receiver.exactly_after_a_while("/refuses", 1).await?;
    let delivery = the_only_delivery(&host, &webhook, "failed", Duration::ZERO).await?;
    assert_eq!(attempts(&delivery)?.len(), 1, "{delivery:#}");

    let (status, body) = host.call(Method::POST, &retry, EDITOR, None).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    receiver.wait_for(Some("/refuses"), 2, PROMPTLY).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_retried_by_hand_is_attempted_again_at_once() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    receiver.set_behaviour("/in", Behaviour::status(404));
    receiver.set_behaviour("/busy", Behaviour::status(503));
    let host = host_retrying_on("1m", &[]).await?;
    let webhook = add_webhook(&host, THING_1, "in", &receiver.url("/in")).await?;
    let busy = add_webhook(&host, THING_1, "busy", &receiver.url("/busy")).await?;

    let message = publish(&host, "key-1", "again").await?;
    let failed = the_only_delivery(&host, &webhook, "failed", PROMPTLY).await?;
    assert_eq!(failed["message_id"], message.as_str());
    let delivery_id = failed["id"].as_str().context("an id")?.to_owned();
    let retry_path = |webhook: &str, delivery: &str| format!("/webhooks/{webhook}/deliveries/{delivery}/retry");

    // Still refused: a new attempt, failed again.
    let (status, body) = host
        .call(Method::POST, &retry_path(&webhook, &delivery_id), EDITOR, None)
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    receiver.wait_for(Some("/in"), 2, PROMPTLY).await?;
    let again = the_only_delivery_after(&host, &webhook, "failed", 2, PROMPTLY).await?;
    assert_eq!(status_codes(&again)?, [Some(404), Some(404)]);
    assert_eq!(again["id"], delivery_id.as_str());

    // Now the receiver takes it.
    receiver.set_behaviour("/in", Behaviour::default());
    let asked = Instant::now();
    let (status, body) = host
        .call(Method::POST, &retry_path(&webhook, &delivery_id), ADMIN, None)
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let got = receiver.wait_for(Some("/in"), 3, PROMPTLY).await?;
    let took = got[2].at.duration_since(asked);
    assert!(
        took < Duration::from_secs(2),
        "the retry came {took:?} after it was asked for"
    );
    assert_eq!(bodies(&got), ["again", "again", "again"]);
    let delivered = the_only_delivery(&host, &webhook, "delivered", PROMPTLY).await?;
    assert_eq!(status_codes(&delivered)?, [Some(404), Some(404), Some(200)]);
    assert_eq!(delivered["id"], delivery_id.as_str());
    assert_eq!(delivered["message_id"], message.as_str());

    // A delivered delivery, or a pending one, is not retried by hand.
    let (status, body) = host
        .call(Method::POST, &retry_path(&webhook, &delivery_id), EDITOR, None)
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "a delivered delivery: {body}");
    let pending = pending_after(&host, &busy, 1, PROMPTLY).await?;
    let pending_id = pending["id"].as_str().context("an id")?.to_owned();
    let (status, body) = host
        .call(Method::POST, &retry_path(&busy, &pending_id), EDITOR, None)
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "a pending delivery: {body}");

    // Unknown ones, and one of another webhook, are not found.
    for (what, path) in [
        (
            "an unknown delivery",
            retry_path(&webhook, "0f0f0f0f-0000-4000-8000-00000000abcd"),
        ),
        ("another webhook's delivery", retry_path(&webhook, &pending_id)),
        ("a delivery under another webhook", retry_path(&busy, &delivery_id)),
        ("an unknown webhook", retry_path(UNKNOWN_WEBHOOK, &delivery_id)),
    ] {
        let (status, body) = host.call(Method::POST, &path, EDITOR, None).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {body}");
    }
    receiver.exactly_after_a_while("/in", 3).await?;
    receiver.exactly_after_a_while("/busy", 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_twice_with_one_message_id_logs_one_delivery_and_delivers_once() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_retrying_on(SCHEDULE, &[]).await?;
    let webhook = add_webhook(&host, THING_1, "in", &receiver.url("/in")).await?;

    let id = fresh_message_id();
    for _ in 0..2 {
        let answer = send(
            as_thing(&host, "key-1", "/messages")
                .header(MESSAGE_ID, &id)
                .body("once"),
        )
        .await?;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
        assert_eq!(answer.message_id.as_deref(), Some(id.as_str()));
    }
    receiver.wait_for(Some("/in"), 1, PROMPTLY).await?;
    let delivery = the_only_delivery(&host, &webhook, "delivered", PROMPTLY).await?;
    assert_eq!(delivery["message_id"], id.as_str());
    // Once more after the delivery is done.
    let answer = send(
        as_thing(&host, "key-1", "/messages")
            .header(MESSAGE_ID, &id)
            .body("once"),
    )
    .await?;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    let got = receiver.exactly_after_a_while("/in", 1).await?;
    assert_eq!(got[0].body, "once");
    let list = deliveries_of(&host, &webhook).await?;
    assert_eq!(list.len(), 1, "{list:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_keeps_the_first_4_kib_of_the_receivers_answer() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_retrying_on(SCHEDULE, &[]).await?;
    let text: String = (0..10_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let cases = [
        ("/empty", 0usize),
        ("/short", 11),
        ("/exact", 4096),
        ("/over", 4097),
        ("/big", 10_000),
    ];
    let mut webhooks = Vec::new();
    for (path, size) in cases {
        receiver.set_behaviour(path, Behaviour::status(200).with_body(text[..size].to_owned()));
        webhooks.push((
            path,
            size,
            add_webhook(&host, THING_1, path, &receiver.url(path)).await?,
        ));
    }
    receiver.set_behaviour("/failing", Behaviour::status(500).with_body(text.clone()));
    let failing = add_webhook(&host, THING_1, "failing", &receiver.url("/failing")).await?;

    publish(&host, "key-1", "answer me").await?;
    for (path, size, id) in &webhooks {
        let delivery = the_only_delivery(&host, id, "delivered", PROMPTLY).await?;
        let attempt = &attempts(&delivery)?[0];
        let logged = attempt["response_body"].as_str().unwrap_or_default();
        assert_eq!(logged.len(), (*size).min(4096), "{path}: {attempt}");
        assert_eq!(logged, &text[..(*size).min(4096)], "{path}");
    }
    let waiting = pending_after(&host, &failing, 1, PROMPTLY).await?;
    let attempt = &attempts(&waiting)?[0];
    assert_eq!(attempt["status_code"], 500);
    assert_eq!(attempt["response_body"].as_str(), Some(&text[..4096]));
    Ok(())
}

// --- retention ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_older_than_the_retention_disappear_from_the_log() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_retrying_on(SCHEDULE, &[("MF_WEBHOOKS_RETENTION", "3s")]).await?;
    let webhook = add_webhook(&host, THING_1, "in", &receiver.url("/in")).await?;

    let published = Instant::now();
    publish(&host, "key-1", "short-lived").await?;
    receiver.wait_for(Some("/in"), 1, PROMPTLY).await?;
    the_only_delivery(&host, &webhook, "delivered", PROMPTLY).await?;
    assert!(
        published.elapsed() < Duration::from_secs(3),
        "too slow to see the delivery before it expires"
    );

    eventually(Duration::from_secs(30), || async {
        let list = deliveries_of(&host, &webhook).await?;
        ensure!(list.is_empty(), "still logged: {list:#?}");
        Ok(())
    })
    .await?;
    let expired_after = published.elapsed();
    assert!(
        expired_after >= Duration::from_millis(2900),
        "gone after {expired_after:?}, before the 3 s retention"
    );
    eprintln!("the delivery left the log {expired_after:?} after it was published");

    // The webhook stays and keeps working.
    view(&host, &webhook).await?;
    publish(&host, "key-1", "next").await?;
    let got = receiver.wait_for(Some("/in"), 2, PROMPTLY).await?;
    assert_eq!(bodies(&got), ["next", "short-lived"]);
    Ok(())
}
