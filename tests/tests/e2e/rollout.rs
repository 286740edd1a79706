//! Safe rollout of the webhook logic (SPEC.md section 8, rows "data compatibility" to "dry
//! run"): a version that cannot read the stored data format is refused (swap, candidate,
//! rollback and start-up) while the active one serves on; a canary serves its share of the
//! groups and is promoted or dropped; a canary that traps is dropped by itself with nothing
//! accepted lost; a dry run compares answers and never writes or sends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use webhooks_tests::delivery_log::{deliveries_of, logged_total};
use webhooks_tests::flows::{ALLOW_PRIVATE, PROMPTLY, add_webhook, publish};
use webhooks_tests::receiver::{Receiver, bodies};
use webhooks_tests::{
    ADMIN, GROUP_1, GROUP_2, THING_1, THING_3, TestHost, eventually, plugin_component, plugin_variant,
    plugin_variant_bytes, read, run_to_exit,
};

use super::operations::scrape;
use super::runtime::{FAULT_QUERY, PLUGIN_ADMIN, SWAP_BOUND, admin_host, is_tagged, list, real_bytes, sha256_of};

// --- helpers ----------------------------------------------------------------------------------

/// Whether the host sends a group's calls to a canary of `percent`: the host's rule (64-bit
/// FNV-1a of the group id, modulo 100, below the percent), written again here.
fn in_canary(group: &str, percent: u8) -> bool {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in group.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash % 100 < u64::from(percent)
}

/// A request to an admin endpoint with the admin token; answers the status and the body.
async fn admin(host: &TestHost, method: Method, path: &str) -> anyhow::Result<(StatusCode, Value)> {
    host.call(method.clone(), path, PLUGIN_ADMIN, None)
        .await
        .with_context(|| format!("{method} {path}"))
}

/// `PUT /admin/plugin{query}` with these component bytes.
async fn put(host: &TestHost, query: &str, bytes: Vec<u8>) -> anyhow::Result<(StatusCode, Value)> {
    let response = host
        .request(Method::PUT, &format!("/admin/plugin{query}"), PLUGIN_ADMIN)
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("PUT /admin/plugin{query}"))?;
    read(response).await
}

/// `GET /admin/plugin`, expecting `200`.
async fn rollout(host: &TestHost) -> anyhow::Result<Value> {
    let (status, body) = admin(host, Method::GET, "/admin/plugin").await?;
    ensure!(status == StatusCode::OK, "GET /admin/plugin answered {status}: {body}");
    Ok(body)
}

/// Waits until the store is named as being in `format`.
async fn stored_format_becomes(host: &TestHost, format: u64) -> anyhow::Result<()> {
    eventually(SWAP_BOUND, || async move {
        let body = rollout(host).await?;
        ensure!(body["data_format"] == format, "the stored data format: {body}");
        Ok(())
    })
    .await
}

/// Lists a thing's webhooks as its group's admin, expecting `200`; answers whether the `tagged` build
/// answered.
async fn thing_tagged(host: &TestHost, thing: &str) -> anyhow::Result<bool> {
    let token = GROUPS
        .iter()
        .find(|(_, t, _, _)| *t == thing)
        .map_or(ADMIN, |(_, _, _, token)| *token);
    let (status, page) = host
        .call(Method::GET, &format!("/things/{thing}/webhooks"), token, None)
        .await?;
    ensure!(status == StatusCode::OK, "listing {thing} answered {status}: {page}");
    is_tagged(&page)
}

/// Lists a group's webhooks as its admin, expecting `200`; answers whether the `tagged` build
/// answered.
async fn group_tagged(host: &TestHost, group: &str, token: &str) -> anyhow::Result<bool> {
    let (status, page) = host
        .call(Method::GET, &format!("/groups/{group}/webhooks"), token, None)
        .await?;
    ensure!(
        status == StatusCode::OK,
        "listing group {group} answered {status}: {page}"
    );
    is_tagged(&page)
}

/// A refusal for data the version cannot read: `409` naming the stored format and the one it reads.
fn refused_for_format(status: StatusCode, body: &Value) -> anyhow::Result<()> {
    ensure!(status == StatusCode::CONFLICT, "answered {status}: {body}");
    let error = body["error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("the stored data is in format 2") && error.contains("reads only data format 1"),
        "the refusal does not give the reason: {body}"
    );
    Ok(())
}

/// The things of the standard registry's two groups, and their device keys.
const GROUPS: [(&str, &str, &str, &str); 2] = [
    (GROUP_1, THING_1, "key-1", ADMIN),
    (GROUP_2, THING_3, "key-3", webhooks_tests::OTHER_ADMIN),
];

// --- 1. data compatibility --------------------------------------------------------------------

/// Once upkeep has named the store format 2, a version that reads only format 1 is refused with
/// `409` and the reason, as a swap, a canary and a dry run alike, and the active one serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_cannot_read_the_stored_data_is_refused_and_the_active_one_serves_on() -> anyhow::Result<()> {
    let host = admin_host(&[]).await?;
    add_webhook(&host, THING_1, "kept", "https://example.com/kept").await?;
    stored_format_becomes(&host, 2).await?;
    let real = sha256_of(&plugin_component())?;
    let versions = rollout(&host).await?;
    assert_eq!(
        versions["active"]["data_formats"],
        json!({"oldest": 1, "newest": 6, "writes": 2}),
        "{versions}"
    );

    let legacy = plugin_variant_bytes("legacy")?;
    for query in ["", "?canary=50", "?shadow=true"] {
        let (status, body) = put(&host, query, legacy.clone()).await?;
        refused_for_format(status, &body).with_context(|| format!("PUT /admin/plugin{query}"))?;
    }
    let versions = rollout(&host).await?;
    assert_eq!(versions["active"]["sha256"], real.as_str(), "{versions}");
    assert_eq!(versions["candidate"], Value::Null, "{versions}");
    assert_eq!(versions["history"], json!([]), "{versions}");
    let (status, page) = list(&host, "").await?;
    assert_eq!((status, &page["total"]), (StatusCode::OK, &json!(1)), "{page}");
    let metrics = scrape(&host).await?;
    assert_eq!(
        metrics.value(
            "webhooks_plugin_swaps_total",
            &[("trigger", "admin"), ("result", "refused")]
        )?,
        1.0
    );
    Ok(())
}

/// A host started on a version that reads only format 1 keeps the store in format 1; the real
/// plugin swapped in raises it to 2; from then on a rollback to the old version is refused with
/// `409`, and so is a start on it, with one line naming the variable and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_or_a_start_onto_data_the_version_cannot_read_is_refused() -> anyhow::Result<()> {
    let legacy_path = plugin_variant("legacy");
    let legacy_file = legacy_path.to_str().context("a UTF-8 path")?;
    // Retention of 4 s runs upkeep every second.
    let mut host = admin_host(&[("MF_WEBHOOKS_PLUGIN", legacy_file), ("MF_WEBHOOKS_RETENTION", "4s")]).await?;
    add_webhook(&host, THING_1, "kept", "https://example.com/kept").await?;
    let versions = rollout(&host).await?;
    assert_eq!(
        versions["active"]["data_formats"],
        json!({"oldest": 1, "newest": 1, "writes": 1}),
        "{versions}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        rollout(&host).await?["data_format"],
        1,
        "the old version raises nothing"
    );

    let real = sha256_of(&plugin_component())?;
    let (status, body) = put(&host, "", real_bytes()?).await?;
    assert_eq!(status, StatusCode::OK, "format 1 is one the real plugin reads: {body}");
    stored_format_becomes(&host, 2).await?;

    let (status, body) = admin(&host, Method::POST, "/admin/plugin/rollback").await?;
    refused_for_format(status, &body)?;
    let versions = rollout(&host).await?;
    assert_eq!(versions["active"]["sha256"], real.as_str(), "{versions}");
    assert_eq!(
        versions["history"][0]["sha256"],
        sha256_of(&legacy_path)?.as_str(),
        "the refused version stays in the history: {versions}"
    );
    let metrics = scrape(&host).await?;
    assert_eq!(
        metrics.value(
            "webhooks_plugin_swaps_total",
            &[("trigger", "rollback"), ("result", "refused")]
        )?,
        1.0
    );

    host.stop()?;
    let output = run_to_exit(host.command(), SWAP_BOUND)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a start on data it cannot read: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("MF_WEBHOOKS_PLUGIN"))
        .collect();
    assert_eq!(lines.len(), 1, "one line naming the variable: {stderr}");
    assert!(
        lines[0].contains("the stored data is in format 2"),
        "the reason: {stderr}"
    );
    Ok(())
}

/// `PUT /admin/data-format` with this body.
async fn raise_format(host: &TestHost, body: Value) -> anyhow::Result<(StatusCode, Value)> {
    host.call(Method::PUT, "/admin/data-format", PLUGIN_ADMIN, Some(body))
        .await
        .context("PUT /admin/data-format")
}

/// Asks to raise the stored data to `format` and expects a `409` whose error says `reason`.
async fn assert_raise_refused(host: &TestHost, format: u32, reason: &str) -> anyhow::Result<()> {
    let (status, answer) = raise_format(host, json!({ "format": format })).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| e.contains(reason)),
        "{reason}: {answer}"
    );
    Ok(())
}

/// The operator raises the stored data to format 4 (compact deliveries) only when the active
/// version and the candidate read it; deliveries made before and after go out with their exact
/// payloads and expire alike; from then on a rollback to a version that does not read format
/// 4 is refused, and the format is never lowered. Then to format 5, where the log is filtered
/// by the records' statuses, and to format 6, where new records are packed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_raises_the_data_format_and_rollbacks_past_it_are_refused() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    // Retention of 4 s runs retention and upkeep every second.
    let host = admin_host(&[ALLOW_PRIVATE, ("MF_WEBHOOKS_RETENTION", "4s")]).await?;
    let webhook = add_webhook(&host, THING_1, "compact", &receiver.url("/compact")).await?;
    stored_format_becomes(&host, 2).await?;
    let before: &[u8] = b"\x00before\xff\x00";
    publish(&host, "key-1", before).await?;
    receiver.wait_for(Some("/compact"), 1, PROMPTLY).await?;

    for body in [
        json!({}),
        json!({"format": 0}),
        json!({"format": "4"}),
        json!({"format": 4.5}),
    ] {
        let (status, answer) = raise_format(&host, body.clone()).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains("format")),
            "{answer}"
        );
    }
    let (status, answer) = host
        .call(Method::PUT, "/admin/data-format", "wrong", Some(json!({"format": 4})))
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    // A candidate or an active version that does not read format 4 holds the raise back.
    let previous = plugin_variant_bytes("previous")?;
    let (status, answer) = put(&host, "?shadow=true", previous.clone()).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_raise_refused(
        &host,
        4,
        "the candidate plugin version reads data formats 1 to 2, not 4",
    )
    .await?;
    let (status, answer) = admin(&host, Method::DELETE, "/admin/plugin/candidate").await?;
    assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
    let (status, answer) = put(&host, "", previous).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_raise_refused(&host, 4, "the active plugin version reads data formats 1 to 2").await?;
    let (status, answer) = admin(&host, Method::POST, "/admin/plugin/rollback").await?;
    assert_eq!(status, StatusCode::OK, "back to the real plugin: {answer}");
    assert_eq!(rollout(&host).await?["data_format"], 2);

    let (status, answer) = raise_format(&host, json!({"format": 4})).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"data_format": 4, "previous": 2}));
    assert_eq!(rollout(&host).await?["data_format"], 4);
    let (status, answer) = raise_format(&host, json!({"format": 4})).await?;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!({"data_format": 4, "previous": 4}))
    );
    assert_raise_refused(&host, 3, "never lowered").await?;

    let after: &[u8] = b"after\x00\x01{\"v\":1}";
    publish(&host, "key-1", after).await?;
    let received = receiver.wait_for(Some("/compact"), 2, PROMPTLY).await?;
    let bodies: Vec<&[u8]> = received.iter().map(|r| r.body.as_ref()).collect();
    assert_eq!(bodies, [before, after], "both layouts carry their exact payloads");
    eventually(PROMPTLY, || async {
        let delivered = logged_total(&host, &webhook, "?status=delivered").await?;
        ensure!(delivered == 2, "{delivered} deliveries logged as delivered");
        Ok(())
    })
    .await?;

    let (status, answer) = admin(&host, Method::POST, "/admin/plugin/rollback").await?;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("the stored data is in format 4") && e.contains("data formats 1 to 2")),
        "{answer}"
    );
    // Format 5: outcomes leave the log entries alone, and the status filter reads the records,
    // over deliveries made in both formats.
    let (status, answer) = raise_format(&host, json!({"format": 5})).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"data_format": 5, "previous": 4}));
    assert_raise_refused(&host, 4, "never lowered").await?;
    let lean: &[u8] = b"lean\x00";
    publish(&host, "key-1", lean).await?;
    let received = receiver.wait_for(Some("/compact"), 3, PROMPTLY).await?;
    assert_eq!(received[2].body.as_ref(), lean);
    eventually(PROMPTLY, || async {
        let delivered = logged_total(&host, &webhook, "?status=delivered").await?;
        let pending = logged_total(&host, &webhook, "?status=pending").await?;
        ensure!(
            (delivered, pending) == (3, 0),
            "{delivered} deliveries logged as delivered, {pending} as pending"
        );
        Ok(())
    })
    .await?;
    // Format 7 is read by no version: refused, and nothing changes.
    assert_raise_refused(&host, 7, "reads data formats 1 to 6, not 7").await?;
    // Format 6: new records are packed; the JSON ones made before are read beside them, by
    // the status filter and the listing.
    let (status, answer) = raise_format(&host, json!({"format": 6})).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"data_format": 6, "previous": 5}));
    assert_raise_refused(&host, 5, "never lowered").await?;
    let packed: &[u8] = b"packed\x00\x01{\"v\":1}";
    publish(&host, "key-1", packed).await?;
    let received = receiver.wait_for(Some("/compact"), 4, PROMPTLY).await?;
    assert_eq!(received[3].body.as_ref(), packed);
    eventually(PROMPTLY, || async {
        let delivered = logged_total(&host, &webhook, "?status=delivered").await?;
        ensure!(delivered == 4, "{delivered} deliveries logged as delivered");
        Ok(())
    })
    .await?;
    let logged = deliveries_of(&host, &webhook).await?;
    assert_eq!(logged.len(), 4);
    for delivery in &logged {
        assert_eq!(delivery["status"], "delivered", "{delivery}");
        assert_eq!(delivery["attempts"].as_array().map(Vec::len), Some(1), "{delivery}");
    }
    // Every delivery passes the retention of 4 s and goes, the compact ones found by their ids.
    eventually(Duration::from_secs(15), || async {
        let total = logged_total(&host, &webhook, "").await?;
        ensure!(total == 0, "{total} deliveries are still logged");
        Ok(())
    })
    .await?;
    Ok(())
}

// --- 2. canary --------------------------------------------------------------------------------

/// A percent that puts exactly one of the two groups in the canary; answers it and the index of
/// the group inside.
fn split_percent() -> anyhow::Result<(u8, usize)> {
    let percent = (1..=99u8)
        .find(|p| in_canary(GROUPS[0].0, *p) != in_canary(GROUPS[1].0, *p))
        .context("the two groups hash alike")?;
    let inside = usize::from(!in_canary(GROUPS[0].0, percent));
    Ok((percent, inside))
}

/// A canary serves the calls of its share of the groups, by thing and by group, intake
/// included, and no other; a promote makes it active; a dropped candidate leaves the active
/// one serving everything; bad queries are `400`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_serves_its_share_of_the_groups_until_promoted_or_dropped() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = admin_host(&[ALLOW_PRIVATE]).await?;
    for (_, thing, _, _) in GROUPS {
        add_webhook(&host, thing, "canary", &receiver.url(&format!("/{thing}"))).await?;
    }
    let (percent, inside) = split_percent()?;
    let outside = 1 - inside;
    let tagged = sha256_of(&plugin_variant("tagged"))?;

    let (status, body) = put(&host, &format!("?canary={percent}"), plugin_variant_bytes("tagged")?).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["candidate"]["sha256"], tagged.as_str(), "{body}");
    assert_eq!(body["candidate"]["mode"], "canary", "{body}");
    assert_eq!(body["candidate"]["percent"], percent, "{body}");
    let versions = rollout(&host).await?;
    assert_eq!(versions["candidate"]["mode"], "canary", "{versions}");
    assert_ne!(versions["active"]["sha256"], tagged.as_str(), "{versions}");

    let (group_in, thing_in, key_in, admin_in) = GROUPS[inside];
    let (group_out, thing_out, key_out, admin_out) = GROUPS[outside];
    for _ in 0..3 {
        assert!(
            thing_tagged(&host, thing_in).await?,
            "the canary serves its groups' things"
        );
        assert!(
            group_tagged(&host, group_in, admin_in).await?,
            "and the groups themselves"
        );
        assert!(
            !thing_tagged(&host, thing_out).await?,
            "the active one serves the others"
        );
        assert!(!group_tagged(&host, group_out, admin_out).await?);
    }
    for key in [key_in, key_out] {
        publish(&host, key, format!("through {key}")).await?;
    }
    for thing in [thing_in, thing_out] {
        receiver.wait_for(Some(&format!("/{thing}")), 1, PROMPTLY).await?;
    }

    let (status, body) = admin(&host, Method::POST, "/admin/plugin/promote").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["active"]["sha256"], &body["active"]["source"]),
        (&json!(tagged), &json!("promote"))
    );
    assert_eq!(rollout(&host).await?["candidate"], Value::Null);
    assert!(thing_tagged(&host, thing_out).await?, "promoted: it serves everyone");

    let (status, body) = put(&host, &format!("?canary={percent}"), real_bytes()?).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        !thing_tagged(&host, thing_in).await?,
        "the real plugin is now the canary"
    );
    assert!(thing_tagged(&host, thing_out).await?);
    let (status, body) = admin(&host, Method::DELETE, "/admin/plugin/candidate").await?;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(
        thing_tagged(&host, thing_in).await?,
        "dropped: the active one serves everyone"
    );
    let (status, body) = admin(&host, Method::DELETE, "/admin/plugin/candidate").await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = admin(&host, Method::POST, "/admin/plugin/promote").await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    for query in [
        "?canary=0",
        "?canary=100",
        "?canary=ten",
        "?canary=5&shadow=true",
        "?shadow=yes",
        "?mode=canary",
    ] {
        let (status, body) = put(&host, query, real_bytes()?).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body["error"].is_string(), "{query}: {body}");
    }
    let (status, _) = host
        .call(Method::POST, "/admin/plugin/promote", "wrong-token", None)
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    Ok(())
}

/// A canary that traps on some calls is dropped by itself once its failures exceed the active
/// one's over at least 20 calls: `GET /admin/plugin` and `/metrics` show it, with the reason; messages
/// published all along are each delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_traps_is_dropped_by_itself_and_nothing_accepted_is_lost() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = Arc::new(admin_host(&[ALLOW_PRIVATE]).await?);
    for (_, thing, _, _) in GROUPS {
        add_webhook(&host, thing, "canary", &receiver.url(&format!("/{thing}"))).await?;
    }
    let (percent, inside) = split_percent()?;
    let (_, thing_in, _, admin_in) = GROUPS[inside];
    let trap = sha256_of(&plugin_variant("trap"))?;
    let (status, body) = put(&host, &format!("?canary={percent}"), plugin_variant_bytes("trap")?).await?;
    assert_eq!(status, StatusCode::OK, "{body}");

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (host, stop) = (host.clone(), stop.clone());
        tokio::spawn(async move {
            let mut published: Vec<Vec<String>> = vec![Vec::new(); GROUPS.len()];
            while !stop.load(Ordering::SeqCst) {
                for (at, (_, _, key, _)) in GROUPS.iter().enumerate() {
                    let payload = format!("{key} #{}", published[at].len());
                    publish(&host, key, payload.clone()).await?;
                    published[at].push(payload);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(published)
        })
    };

    let mut failed = 0;
    for _ in 0..200 {
        if rollout(&host).await?["candidate"].is_null() {
            break;
        }
        let (status, _) = host
            .call(
                Method::GET,
                &format!("/things/{thing_in}/webhooks{FAULT_QUERY}"),
                admin_in,
                None,
            )
            .await?;
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            failed += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let published = publisher.await??;

    let versions = rollout(&host).await?;
    assert_eq!(versions["candidate"], Value::Null, "dropped by itself: {versions}");
    assert_eq!(versions["rolled_back"]["sha256"], trap.as_str(), "{versions}");
    let reason = versions["rolled_back"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(" of its ") && reason.contains("calls failed"),
        "{versions}"
    );
    assert!(versions["rolled_back"]["at"].is_string(), "{versions}");
    // Its intake calls succeed, so it is judged on those and the failures together.
    assert!((1..=20).contains(&failed), "dropped after {failed} failed calls");
    let (status, _) = host
        .call(
            Method::GET,
            &format!("/things/{thing_in}/webhooks{FAULT_QUERY}"),
            admin_in,
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "the active version answers again");
    assert_eq!(
        scrape(&host)
            .await?
            .value("webhooks_plugin_canary_rollbacks_total", &[])?,
        1.0
    );
    host.logged(&["canary plugin version dropped", &trap], PROMPTLY).await?;

    for (at, (_, thing, _, _)) in GROUPS.iter().enumerate() {
        let path = format!("/{thing}");
        let mut expected = published[at].clone();
        ensure!(!expected.is_empty(), "nothing published to {thing}");
        expected.sort();
        let got = receiver.wait_for(Some(&path), expected.len(), 4 * PROMPTLY).await?;
        let mut got = bodies(&got);
        got.sort();
        assert_eq!(got, expected, "every accepted message of {thing}, once");
        receiver.exactly_after_a_while(&path, expected.len()).await?;
    }
    Ok(())
}

// --- 3. dry run -------------------------------------------------------------------------------

/// The dry-run counts of `/metrics`: same, different, failed.
async fn shadow_counts(host: &TestHost) -> anyhow::Result<[f64; 3]> {
    let metrics = scrape(host).await?;
    let count = |result| metrics.value("webhooks_plugin_shadow_calls_total", &[("result", result)]);
    Ok([count("same")?, count("different")?, count("failed")?])
}

/// A dry run of the same version finds every answer the same and changes nothing: callers get
/// the active one's answers, receivers get each message once and the delivery log holds one
/// delivery per message; a dry run of a version whose answers differ counts and logs each
/// difference, naming the export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reports_differences_and_of_the_same_version_none() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = admin_host(&[ALLOW_PRIVATE]).await?;
    let webhook = add_webhook(&host, THING_1, "dry", &receiver.url("/dry")).await?;
    let real = sha256_of(&plugin_component())?;

    let (status, body) = put(&host, "?shadow=true", real_bytes()?).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["candidate"]["mode"], &body["candidate"]["percent"]),
        (&json!("shadow"), &Value::Null),
        "{body}"
    );
    assert_eq!(rollout(&host).await?["active"]["sha256"], real.as_str());

    const MESSAGES: usize = 5;
    let mut calls = 0;
    for turn in 0..MESSAGES {
        publish(&host, "key-1", format!("dry #{turn}")).await?;
        assert!(!thing_tagged(&host, THING_1).await?);
        assert!(!group_tagged(&host, GROUP_1, ADMIN).await?);
        host.expect(
            Method::GET,
            &format!("/webhooks/{webhook}"),
            ADMIN,
            None,
            StatusCode::OK,
        )
        .await?;
        calls += 4;
    }
    // A refusal is an answer too: both versions give the same one.
    host.expect(
        Method::GET,
        &format!("/things/{THING_1}/webhooks"),
        "",
        None,
        StatusCode::UNAUTHORIZED,
    )
    .await?;
    calls += 1;
    eventually(PROMPTLY, || async {
        let [same, different, failed] = shadow_counts(&host).await?;
        ensure!(
            different == 0.0 && failed == 0.0,
            "a dry run of the same version: {different} different, {failed} failed"
        );
        ensure!(same >= calls as f64, "{same} of {calls} calls compared");
        Ok(())
    })
    .await?;
    receiver.exactly_after_a_while("/dry", MESSAGES).await?;
    assert_eq!(
        logged_total(&host, &webhook, "").await?,
        MESSAGES as u64,
        "the dry run wrote no delivery"
    );

    let (status, body) = put(&host, "?shadow=true", plugin_variant_bytes("tagged")?).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = shadow_counts(&host).await?;
    for _ in 0..3 {
        assert!(
            !thing_tagged(&host, THING_1).await?,
            "callers get the active version's answers"
        );
    }
    eventually(PROMPTLY, || async {
        let [_, different, failed] = shadow_counts(&host).await?;
        ensure!(different >= before[1] + 3.0, "{different} differences counted");
        ensure!(failed == before[2], "{failed} failed");
        Ok(())
    })
    .await?;
    host.logged(
        &[
            "dry run: the candidate plugin answered differently",
            "api.list-thing-webhooks",
        ],
        PROMPTLY,
    )
    .await?;
    let (status, _) = admin(&host, Method::DELETE, "/admin/plugin/candidate").await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    Ok(())
}
