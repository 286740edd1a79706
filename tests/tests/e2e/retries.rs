//! Retrying deliveries (SPEC.md section 7, with section 4): which answers are retried and on
//! what schedule, redirects and final `4xx` answers failing a delivery at once, `Retry-After`
//! in seconds or as a date within the schedule's bounds, `410 Gone` disabling a webhook until a
//! `PUT` re-enables it, and the delivery timeout.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use webhooks_tests::delivery_log::{attempts, next_delay, pending_after, status_codes, the_only_delivery};
use webhooks_tests::flows::{PROMPTLY, SCHEDULE, add_webhook, host_retrying_on, publish, update, view};
use webhooks_tests::receiver::{Behaviour, QUIET, Received, Receiver, bodies, summary};
use webhooks_tests::times::{between, http_date, time_of};
use webhooks_tests::{ADMIN, THING_1, TestHost, eventually};

/// Attempts a delivery gets on [`SCHEDULE`] before it fails: the first and three retries.
const ATTEMPTS_ON_SCHEDULE: usize = 4;
/// How often the host looks for due retries, at most: added to every scheduled delay.
const POLL_SLACK: Duration = Duration::from_millis(600);
/// Room for a busy machine on top of an expected delay.
const SLACK: Duration = Duration::from_millis(1500);

/// A loopback port where nothing listens, held for as long as the socket lives: bound and never
/// listening, so a connection is refused, and no server of a test running beside this one can
/// take the port (a port only closed again could be, and answer).
fn closed_port() -> anyhow::Result<(tokio::net::TcpSocket, u16)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let port = socket.local_addr()?.port();
    Ok((socket, port))
}

/// The gaps between consecutive arrivals.
fn gaps(requests: &[Received]) -> Vec<Duration> {
    requests
        .windows(2)
        .map(|pair| pair[1].at.duration_since(pair[0].at))
        .collect()
}

// --- retry policy -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_answers_and_unreachable_receivers_are_retried_on_the_schedule_then_fail() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_retrying_on(SCHEDULE, &[]).await?;
    let statuses = [408u16, 425, 429, 500, 502, 503, 504];
    let mut answering = Vec::new();
    for status in statuses {
        let path = format!("/answers-{status}");
        receiver.set_behaviour(&path, Behaviour::status(status));
        let id = add_webhook(&host, THING_1, &format!("answers {status}"), &receiver.url(&path)).await?;
        answering.push((path, status, id));
    }
    let (_held, port) = closed_port()?;
    let unreachable = add_webhook(
        &host,
        THING_1,
        "nobody listens",
        &format!("http://127.0.0.1:{port}/down"),
    )
    .await?;

    let message_id = publish(&host, "key-1", "retried").await?;

    // The first attempt and three retries, about 1 s, 1 s and 2 s apart (each ±20%).
    let expected_gaps = [(0.8, 1.2), (0.8, 1.2), (1.6, 2.4)];
    for (path, status, _) in &answering {
        let got = receiver
            .wait_for(Some(path), ATTEMPTS_ON_SCHEDULE, Duration::from_secs(15))
            .await?;
        assert_eq!(bodies(&got), ["retried"; ATTEMPTS_ON_SCHEDULE], "{status}");
        for (gap, (low, high)) in gaps(&got).into_iter().zip(expected_gaps) {
            let (low, high) = (Duration::from_secs_f64(low), Duration::from_secs_f64(high));
            assert!(
                gap >= low - Duration::from_millis(50) && gap <= high + POLL_SLACK + SLACK,
                "{status}: a retry {gap:?} after the attempt before, expected {low:?} to {high:?}"
            );
        }
    }
    for (_, status, id) in &answering {
        let delivery = the_only_delivery(&host, id, "failed", PROMPTLY).await?;
        assert_eq!(delivery["message_id"], message_id.as_str());
        assert_eq!(
            status_codes(&delivery)?,
            [Some(u64::from(*status)); ATTEMPTS_ON_SCHEDULE],
            "{delivery:#}"
        );
    }
    let delivery = the_only_delivery(&host, &unreachable, "failed", PROMPTLY).await?;
    assert_eq!(status_codes(&delivery)?, [None; ATTEMPTS_ON_SCHEDULE], "{delivery:#}");
    for attempt in attempts(&delivery)? {
        assert!(
            attempt["error"].as_str().is_some_and(|e| !e.is_empty()),
            "a connection error without a reason: {delivery:#}"
        );
    }

    // Failed is final.
    tokio::time::sleep(QUIET).await;
    for (path, _, _) in &answering {
        receiver.exactly_after_a_while(path, ATTEMPTS_ON_SCHEDULE).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_2xx_answer_delivers_on_the_first_attempt() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_retrying_on(SCHEDULE, &[]).await?;
    let mut webhooks = Vec::new();
    for status in [200u16, 201, 202, 204, 299] {
        let path = format!("/answers-{status}");
        receiver.set_behaviour(&path, Behaviour::status(status));
        let id = add_webhook(&host, THING_1, &format!("answers {status}"), &receiver.url(&path)).await?;
        webhooks.push((path, status, id));
    }

    publish(&host, "key-1", "done").await?;
    for (_, status, id) in &webhooks {
        let delivery = the_only_delivery(&host, id, "delivered", PROMPTLY).await?;
        assert_eq!(status_codes(&delivery)?, [Some(u64::from(*status))], "{delivery:#}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (path, _, _) in &webhooks {
        assert_eq!(bodies(&receiver.received_on(path)), ["done"], "on {path}");
    }
    Ok(())
}

/// Publishes one message to webhooks answering each of `statuses` (with `headers`) and checks
/// that each got exactly one attempt and its delivery failed at once.
async fn each_fails_at_once(
    receiver: &Receiver,
    host: &TestHost,
    statuses: &[u16],
    headers: &[(&str, String)],
) -> anyhow::Result<()> {
    let mut webhooks = Vec::new();
    for &status in statuses {
        let path = format!("/answers-{status}");
        let mut behaviour = Behaviour::status(status);
        for (name, value) in headers {
            behaviour = behaviour.with_header(name, value);
        }
        receiver.set_behaviour(&path, behaviour);
        let id = add_webhook(host, THING_1, &format!("answers {status}"), &receiver.url(&path)).await?;
        webhooks.push((path, status, id));
    }

    let published = Instant::now();
    publish(host, "key-1", "given up").await?;
    for (path, status, id) in &webhooks {
        receiver.wait_for(Some(path), 1, PROMPTLY).await?;
        let delivery = the_only_delivery(host, id, "failed", PROMPTLY).await?;
        assert_eq!(status_codes(&delivery)?, [Some(u64::from(*status))], "{delivery:#}");
    }
    // A retry would come after about 1 s.
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(published.elapsed())).await;
    for (path, status, id) in &webhooks {
        assert_eq!(bodies(&receiver.received_on(path)), ["given up"], "{status} on {path}");
        let delivery = the_only_delivery(host, id, "failed", Duration::ZERO).await?;
        assert_eq!(attempts(&delivery)?.len(), 1, "{delivery:#}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_and_fails_the_delivery_at_once() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_retrying_on(SCHEDULE, &[]).await?;
    let elsewhere = receiver.url("/new-home");
    each_fails_at_once(&receiver, &host, &[301, 302, 303, 307, 308], &[("Location", elsewhere)]).await?;
    assert_eq!(
        summary(&receiver.received_on("/new-home")),
        Vec::<String>::new(),
        "a redirect was followed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_answer_other_than_408_425_and_429_fails_the_delivery_at_once() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_retrying_on(SCHEDULE, &[]).await?;
    each_fails_at_once(
        &receiver,
        &host,
        &[400, 401, 403, 404, 405, 409, 413, 422, 451],
        &[("Retry-After", "1".to_owned())],
    )
    .await
}

// --- Retry-After --------------------------------------------------------------------------------

/// One webhook of `THING_1` to `/busy`, answering `status` with `Retry-After: retry_after`
/// until the first attempt has been logged, then `200`; answers the delivery as it was after
/// the first attempt, as delivered, and the two arrivals.
async fn retried_after(
    host: &TestHost,
    status: u16,
    retry_after: &str,
) -> anyhow::Result<(Value, Value, Vec<Received>)> {
    let receiver = Receiver::start().await?;
    receiver.set_behaviour(
        "/busy",
        Behaviour::status(status).with_header("Retry-After", retry_after),
    );
    let webhook = add_webhook(host, THING_1, "busy", &receiver.url("/busy")).await?;
    publish(host, "key-1", "later").await?;
    receiver.wait_for(Some("/busy"), 1, PROMPTLY).await?;
    let waiting = pending_after(host, &webhook, 1, PROMPTLY).await?;
    receiver.set_behaviour("/busy", Behaviour::default());
    let delivered = the_only_delivery(host, &webhook, "delivered", Duration::from_secs(20)).await?;
    assert_eq!(
        status_codes(&delivered)?,
        [Some(u64::from(status)), Some(200)],
        "{delivered:#}"
    );
    let got = receiver.exactly_after_a_while("/busy", 2).await?;
    Ok((waiting, delivered, got))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_in_seconds_sets_the_next_delay() -> anyhow::Result<()> {
    let host = host_retrying_on("1s,1s", &[]).await?;
    let (waiting, _, got) = retried_after(&host, 429, "3").await?;
    let next = next_delay(&waiting)?;
    assert!(
        next >= Duration::from_secs(3) && next < Duration::from_secs(4),
        "next attempt {next:?} after the first, asked for 3 s: {waiting:#}"
    );
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_millis(2950) && gap <= Duration::from_secs(3) + POLL_SLACK + SLACK,
        "the retry came {gap:?} after the first attempt, asked for 3 s"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_as_an_http_date_sets_the_next_delay() -> anyhow::Result<()> {
    let host = host_retrying_on("1s,1s", &[]).await?;
    let at = SystemTime::now() + Duration::from_secs(5);
    let (waiting, _, got) = retried_after(&host, 503, &http_date(at)).await?;
    // The date has whole seconds: it names a moment between 4 and 5 s from now.
    let asked = UNIX_EPOCH + Duration::from_secs(at.duration_since(UNIX_EPOCH)?.as_secs());
    let next = time_of(&waiting["next_attempt_at"])?;
    let off = between(asked, next).or_else(|_| between(next, asked))?;
    assert!(
        off <= Duration::from_millis(100),
        "next attempt at {next:?}, Retry-After named {asked:?}: {waiting:#}"
    );
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_millis(3500) && gap <= Duration::from_secs(5) + POLL_SLACK + SLACK,
        "the retry came {gap:?} after the first attempt, asked for 4 to 5 s"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_never_brings_a_retry_before_its_scheduled_delay() -> anyhow::Result<()> {
    let host = host_retrying_on("2s,2s", &[]).await?;
    let (waiting, _, got) = retried_after(&host, 503, "0").await?;
    let next = next_delay(&waiting)?;
    assert!(
        next >= Duration::from_secs(2),
        "next attempt {next:?} after the first, the schedule says 2 s: {waiting:#}"
    );
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_millis(1950),
        "the retry came {gap:?} after the first attempt, the schedule says 2 s"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_stretches_a_delay_to_at_most_ten_times_the_scheduled_one() -> anyhow::Result<()> {
    let host = host_retrying_on("500ms,500ms", &[]).await?;
    let (waiting, _, got) = retried_after(&host, 503, "3600").await?;
    let next = next_delay(&waiting)?;
    assert!(
        next >= Duration::from_secs(5) && next < Duration::from_secs(6),
        "next attempt {next:?} after the first; 10 × 500 ms is 5 s: {waiting:#}"
    );
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_millis(4950) && gap <= Duration::from_secs(5) + POLL_SLACK + SLACK,
        "the retry came {gap:?} after the first attempt, expected 5 s"
    );
    Ok(())
}

// --- 410 Gone -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_answer_disables_the_webhook_until_a_put_re_enables_it() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    receiver.set_behaviour("/gone", Behaviour::status(410));
    let host = host_retrying_on(SCHEDULE, &[]).await?;
    let gone = add_webhook(&host, THING_1, "gone", &receiver.url("/gone")).await?;
    let alive = add_webhook(&host, THING_1, "alive", &receiver.url("/alive")).await?;

    publish(&host, "key-1", "first").await?;
    receiver.wait_for(Some("/gone"), 1, PROMPTLY).await?;
    let delivery = the_only_delivery(&host, &gone, "failed", PROMPTLY).await?;
    assert_eq!(status_codes(&delivery)?, [Some(410)], "{delivery:#}");
    eventually(PROMPTLY, || async {
        let webhook = view(&host, &gone).await?;
        ensure!(webhook["disabled"] == true, "{webhook:#}");
        ensure!(
            webhook["disabled_reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{webhook:#}"
        );
        Ok(())
    })
    .await?;
    let (status, page) = host
        .call(
            Method::GET,
            &format!("/things/{THING_1}/webhooks?order=name&dir=asc"),
            ADMIN,
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["webhooks"][0]["id"], alive.as_str(), "{page:#}");
    assert_eq!(page["webhooks"][0].get("disabled"), None, "{page:#}");
    assert_eq!(page["webhooks"][1]["id"], gone.as_str(), "{page:#}");
    assert_eq!(page["webhooks"][1]["disabled"], true, "{page:#}");
    let alive_view = view(&host, &alive).await?;
    assert_eq!(alive_view.get("disabled"), None, "{alive_view:#}");
    assert_eq!(alive_view.get("disabled_reason"), None, "{alive_view:#}");

    // Disabled: nothing more arrives, while the thing's other webhook still gets everything.
    publish(&host, "key-1", "second").await?;
    receiver.wait_for(Some("/alive"), 2, PROMPTLY).await?;
    receiver.set_behaviour("/gone", Behaviour::default());

    // A PUT without the field leaves it disabled.
    update(&host, &gone, json!({"name": "gone", "url": receiver.url("/gone")})).await?;
    let after_put = view(&host, &gone).await?;
    assert_eq!(after_put["disabled"], true, "{after_put:#}");
    assert!(after_put["disabled_reason"].is_string(), "{after_put:#}");
    publish(&host, "key-1", "third").await?;
    receiver.wait_for(Some("/alive"), 3, PROMPTLY).await?;
    let got = receiver.exactly_after_a_while("/gone", 1).await?;
    assert_eq!(bodies(&got), ["first"]);

    // `"disabled": false` re-enables it.
    update(
        &host,
        &gone,
        json!({"name": "gone", "url": receiver.url("/gone"), "disabled": false}),
    )
    .await?;
    let enabled = view(&host, &gone).await?;
    assert_eq!(enabled.get("disabled"), None, "{enabled:#}");
    assert_eq!(enabled.get("disabled_reason"), None, "{enabled:#}");
    publish(&host, "key-1", "fourth").await?;
    receiver.wait_for(Some("/gone"), 2, PROMPTLY).await?;
    let got = receiver.exactly_after_a_while("/gone", 2).await?;
    assert_eq!(bodies(&got), ["first", "fourth"]);
    let got = receiver.exactly_after_a_while("/alive", 4).await?;
    assert_eq!(bodies(&got), ["first", "fourth", "second", "third"]);
    Ok(())
}

// --- timeouts -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_delivery_timeout_is_a_failed_attempt_that_is_retried() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    receiver.set_behaviour("/slow", Behaviour::status(200).after(Duration::from_secs(3)));
    let host = host_retrying_on(SCHEDULE, &[("MF_WEBHOOKS_DELIVERY_TIMEOUT", "1s")]).await?;
    let webhook = add_webhook(&host, THING_1, "slow", &receiver.url("/slow")).await?;

    let published = Instant::now();
    publish(&host, "key-1", "in time?").await?;
    let waiting = pending_after(&host, &webhook, 1, Duration::from_millis(2500)).await?;
    let noticed = published.elapsed();
    receiver.set_behaviour("/slow", Behaviour::default());
    let first = &attempts(&waiting)?[0];
    assert_eq!(first.get("status_code"), None, "{waiting:#}");
    assert!(
        first["error"].as_str().is_some_and(|e| !e.is_empty()),
        "a timed-out attempt without a reason: {waiting:#}"
    );
    let took = first["duration_ms"].as_u64().context("duration_ms")?;
    assert!(
        (900..2500).contains(&took),
        "the attempt took {took} ms with a 1 s timeout: {waiting:#}"
    );
    assert!(noticed < Duration::from_secs(3), "the host waited {noticed:?}");

    let delivered = the_only_delivery(&host, &webhook, "delivered", Duration::from_secs(15)).await?;
    let codes = status_codes(&delivered)?;
    let (last, before) = codes.split_last().context("attempts")?;
    assert_eq!(*last, Some(200), "{delivered:#}");
    assert!(!before.is_empty(), "{delivered:#}");
    assert!(before.iter().all(Option::is_none), "{delivered:#}");
    Ok(())
}
