//! Isolation between groups and their quotas (SPEC.md section 7, rows "isolation" and
//! "quotas"): one group's flood toward slow receivers never stalls another group's deliveries,
//! and a group over a quota gets `429` with `Retry-After`, with nothing recorded for it.

use std::time::Duration;

use anyhow::{Context, ensure};
use reqwest::StatusCode;
use webhooks_tests::delivery_log::log_page;
use webhooks_tests::flows::{ALLOW_PRIVATE, PROMPTLY, add_webhook, as_thing, publish, send};
use webhooks_tests::isolation::{self, Scenario};
use webhooks_tests::receiver::{Behaviour, Receiver};
use webhooks_tests::{ADMIN, GROUP_1, OTHER_ADMIN, THING_1, THING_2, THING_3, TestHost, standard_registry};

use crate::operations::scrape;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_groups_flood_toward_slow_receivers_never_stalls_another_groups_deliveries() -> anyhow::Result<()> {
    let scenario = Scenario {
        a_webhooks: 70,
        a_receiver_delay: Duration::from_secs(1),
        a_clients: 2,
        b_rate: 20,
        b_seconds: 3,
        pending_quota: 1_000,
    };
    let outcome = isolation::run(scenario, Some(Duration::from_secs(60))).await?;
    eprintln!("{outcome:?}");
    // The 50 ms bound of SPEC.md is a speed target, shown by `bench isolation` on a quiet
    // machine; here, beside the rest of the suite, the test shows that B never waits for A's
    // receiver: with every slot taken by A, B's deliveries would wait for an A batch to end,
    // up to a second each (p99 above 900 ms when one group could take every slot).
    ensure!(
        outcome.beside.p99 < scenario.a_receiver_delay / 2,
        "B's p99 rose from {:?} alone to {:?} beside A's flood: B waited behind A's receiver",
        outcome.alone.p99,
        outcome.beside.p99
    );
    ensure!(outcome.a_accepted > 0, "A's flood had some publishes accepted");
    ensure!(outcome.a_refused > 0, "A's flood ran into its pending quota");
    ensure!(outcome.retry_after_on_every_refusal, "every 429 carried a Retry-After");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_over_its_publish_rate_gets_429_with_retry_after_and_nothing_is_recorded() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = TestHost::start_with(
        standard_registry(),
        &[ALLOW_PRIVATE, ("MF_WEBHOOKS_QUOTA_PUBLISH_RATE", "5")],
    )
    .await?;
    let a = add_webhook(&host, THING_1, "a", &receiver.url("/a")).await?;
    let b = add_webhook(&host, THING_3, "b", &receiver.url("/b")).await?;

    for i in 0..5 {
        publish(&host, "key-1", format!("a-{i}")).await?;
    }
    let refused = as_thing(&host, "key-1", "/messages").body("a-refused").send().await?;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value = refused.json().await?;
    let error = body["error"].as_str().context("a JSON error")?;
    assert!(error.contains("5 publishes per second"), "{error}");
    // Another group has its own allowance.
    publish(&host, "key-3", "b-0").await?;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    publish(&host, "key-1", "a-5").await?;

    receiver.wait_for(Some("/a"), 6, PROMPTLY).await?;
    receiver.wait_for(Some("/b"), 1, PROMPTLY).await?;
    let bodies: Vec<String> = receiver
        .received_on("/a")
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(!bodies.contains(&"a-refused".to_owned()), "{bodies:?}");
    let (_, page) = log_page(&host, &a, "", ADMIN).await?;
    assert_eq!(page["total"], 6, "nothing recorded for the refused publish: {page}");
    let (_, page) = log_page(&host, &b, "", OTHER_ADMIN).await?;
    assert_eq!(page["total"], 1);
    let metrics = scrape(&host).await?;
    assert_eq!(
        metrics.value("webhooks_quota_refusals_total", &[("quota", "publish_rate")])?,
        1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_its_quota_of_pending_deliveries_gets_429_until_they_are_delivered() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    receiver.set_behaviour("/slow", Behaviour::status(200).after(Duration::from_millis(1_500)));
    let host = TestHost::start_with(
        standard_registry(),
        &[ALLOW_PRIVATE, ("MF_WEBHOOKS_QUOTA_PENDING", "3")],
    )
    .await?;
    let slow = add_webhook(&host, THING_1, "slow", &receiver.url("/slow")).await?;
    add_webhook(&host, THING_3, "other", &receiver.url("/other")).await?;

    for i in 0..3 {
        publish(&host, "key-1", format!("pending-{i}")).await?;
    }
    let refused = send(as_thing(&host, "key-1", "/messages").body("over")).await?;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{refused:?}");
    let error = refused.body["error"].as_str().context("a JSON error")?;
    assert!(error.contains("3 deliveries pending"), "{error}");
    let metrics = scrape(&host).await?;
    assert_eq!(
        metrics.value("webhooks_group_pending_deliveries", &[("group", GROUP_1)])?,
        3.0
    );
    assert!(metrics.value("webhooks_quota_refusals_total", &[("quota", "pending")])? >= 1.0);
    // The other group is not held back by the first one's quota.
    publish(&host, "key-3", "other").await?;
    receiver.wait_for(Some("/other"), 1, PROMPTLY).await?;

    receiver.wait_for(Some("/slow"), 3, PROMPTLY).await?;
    let mut accepted = false;
    for _ in 0..50 {
        let answer = send(as_thing(&host, "key-1", "/messages").body("after")).await?;
        if answer.status == StatusCode::ACCEPTED {
            accepted = true;
            break;
        }
        ensure!(answer.status == StatusCode::TOO_MANY_REQUESTS, "{answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(accepted, "a publish is accepted again once the deliveries are done");
    receiver.wait_for(Some("/slow"), 4, PROMPTLY).await?;
    let (_, page) = log_page(&host, &slow, "", ADMIN).await?;
    assert_eq!(page["total"], 4, "nothing recorded for the refused publish: {page}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_at_its_webhook_quota_creates_no_more_not_even_by_racing_creates() -> anyhow::Result<()> {
    let host = TestHost::start_with(standard_registry(), &[("MF_WEBHOOKS_QUOTA_WEBHOOKS", "5")]).await?;
    let hooks = |names: &[&str]| {
        serde_json::Value::Array(
            names
                .iter()
                .map(|name| serde_json::json!({"name": name, "url": format!("https://example.com/{name}")}))
                .collect(),
        )
    };
    let created = host.create(THING_1, ADMIN, hooks(&["a", "b", "c"])).await?;
    // The quota counts the group's webhooks, whatever thing they belong to.
    let listing = format!("/things/{THING_2}/webhooks");
    let (status, body) = host
        .call(reqwest::Method::POST, &listing, ADMIN, Some(hooks(&["d", "e", "f"])))
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let error = body["error"].as_str().context("a JSON error")?;
    assert!(error.contains("3 webhooks and a quota of 5"), "{error}");
    host.create(THING_2, ADMIN, hooks(&["d", "e"])).await?;
    let (status, _) = host
        .call(reqwest::Method::POST, &listing, ADMIN, Some(hooks(&["f"])))
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "the group holds 5");
    // Another group has its own quota; a removal makes room.
    host.create(THING_3, OTHER_ADMIN, hooks(&["other"])).await?;
    let id = created[0]["id"].as_str().context("an id")?;
    let (status, body) = host
        .call(
            reqwest::Method::DELETE,
            "/webhooks",
            ADMIN,
            Some(serde_json::json!({"webhook_ids": [id]})),
        )
        .await?;
    assert!(status.is_success(), "{status} {body}");
    host.create(THING_2, ADMIN, hooks(&["f"])).await?;

    // Ten creates racing in the other group, which holds 1: exactly 4 go in.
    let mut racing = Vec::new();
    for i in 0..10 {
        let request = host
            .request(
                reqwest::Method::POST,
                &format!("/things/{THING_3}/webhooks"),
                OTHER_ADMIN,
            )
            .json(&hooks(&[&format!("race-{i}")]));
        racing.push(tokio::spawn(async move { request.send().await }));
    }
    let mut statuses = Vec::new();
    for create in racing {
        statuses.push(create.await??.status());
    }
    let created = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    assert_eq!(created, 4, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [
            StatusCode::CREATED,
            StatusCode::CONFLICT,
            StatusCode::SERVICE_UNAVAILABLE
        ]
        .contains(s)),
        "{statuses:?}"
    );
    let (_, page) = host
        .call(
            reqwest::Method::GET,
            &format!("/things/{THING_3}/webhooks"),
            OTHER_ADMIN,
            None,
        )
        .await?;
    assert_eq!(page["total"], 5, "{page}");
    Ok(())
}
