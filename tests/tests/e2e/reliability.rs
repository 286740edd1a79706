//! Reliable delivery as a user sees it (SPEC.md section 7, with sections 3 and 4): which
//! answers are retried and on what schedule, `Retry-After`, redirects, `410 Gone` disabling a
//! webhook, the delivery timeout, Standard Webhooks signing checked with an independent
//! implementation, the delivery log with its paging, filters and roles, manual retry,
//! idempotent publishing and retention.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail, ensure};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use webhooks_tests::receiver::{Behaviour, Received, Receiver};
use webhooks_tests::{
    ADMIN, EDITOR, GROUP_1, LONER, OTHER_ADMIN, THING_1, TestHost, VIEWER, eventually, standard_registry,
};

use crate::delivery::{
    ALLOW_PRIVATE, MESSAGE_ID, PROMPTLY, QUIET, add_webhook, add_webhook_with, as_thing, bodies, exactly_after_a_while,
    fresh_message_id, is_uuid, publish, send, summary,
};

/// The retry schedule of most tests here: three retries, after about 1 s, 1 s and 2 s.
const SCHEDULE: &str = "1s,1s,2s";
/// Attempts a delivery gets on [`SCHEDULE`] before it fails: the first and three retries.
const ATTEMPTS_ON_SCHEDULE: usize = 4;
/// How often the host looks for due retries, at most: added to every scheduled delay.
const POLL_SLACK: Duration = Duration::from_millis(600);
/// Room for a busy machine on top of an expected delay.
const SLACK: Duration = Duration::from_millis(1500);
/// A webhook id nobody has.
const UNKNOWN_WEBHOOK: &str = "0f0f0f0f-0000-4000-8000-0000000000ff";

/// A host with the standard registry that may deliver to loopback receivers, retrying on
/// `schedule`, with these extra variables.
async fn host_with(schedule: &str, extra: &[(&str, &str)]) -> anyhow::Result<TestHost> {
    let mut env = vec![ALLOW_PRIVATE, ("MF_WEBHOOKS_RETRY_SCHEDULE", schedule)];
    env.extend_from_slice(extra);
    TestHost::start_with(standard_registry(), &env).await
}

/// A loopback port where nothing listens.
fn closed_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

// --- the delivery log as the tests read it ----------------------------------------------------

/// `GET /webhooks/{webhook}/deliveries{query}` as `token`.
async fn log_page(host: &TestHost, webhook: &str, query: &str, token: &str) -> anyhow::Result<(StatusCode, Value)> {
    host.call(
        Method::GET,
        &format!("/webhooks/{webhook}/deliveries{query}"),
        token,
        None,
    )
    .await
}

/// Every delivery of a webhook as its group's admin sees it, newest first, each checked to
/// have the documented shape.
async fn deliveries_of(host: &TestHost, webhook: &str) -> anyhow::Result<Vec<Value>> {
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
async fn the_only_delivery(host: &TestHost, webhook: &str, status: &str, within: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let list = deliveries_of(host, webhook).await?;
        if list.len() == 1 && list[0]["status"] == status {
            return Ok(list[0].clone());
        }
        if Instant::now() > deadline {
            bail!("after {within:?} the log of {webhook} is not one {status} delivery: {list:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a webhook's only delivery is `pending` with exactly `count` attempts; answers it.
async fn pending_after(host: &TestHost, webhook: &str, count: usize, within: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let list = deliveries_of(host, webhook).await?;
        if list.len() == 1 && list[0]["status"] == "pending" && attempts(&list[0])?.len() == count {
            return Ok(list[0].clone());
        }
        if Instant::now() > deadline {
            bail!("after {within:?} the log of {webhook} is not one pending delivery with {count} attempts: {list:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A delivery's attempts.
fn attempts(delivery: &Value) -> anyhow::Result<&Vec<Value>> {
    delivery["attempts"]
        .as_array()
        .with_context(|| format!("a delivery has an attempts array: {delivery}"))
}

/// The `status_code` of each attempt (`None` where the receiver did not answer).
fn status_codes(delivery: &Value) -> anyhow::Result<Vec<Option<u64>>> {
    Ok(attempts(delivery)?.iter().map(|a| a["status_code"].as_u64()).collect())
}

/// Checks a delivery against SPEC.md section 7: exactly the documented fields with their types,
/// RFC 3339 times, `next_attempt_at` only while pending.
fn check_delivery_shape(delivery: &Value, webhook: &str) -> anyhow::Result<()> {
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
        ["pending", "delivered", "failed"].contains(&status),
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

/// The instant an RFC 3339 string such as `2024-05-01T12:00:00.123Z` names.
fn time_of(value: &Value) -> anyhow::Result<SystemTime> {
    let text = value.as_str().with_context(|| format!("{value} is not a string"))?;
    parse_rfc3339(text).with_context(|| format!("{text:?} is not an RFC 3339 time"))
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`.
fn parse_rfc3339(text: &str) -> anyhow::Result<SystemTime> {
    let bytes = text.as_bytes();
    ensure!(bytes.len() >= 20, "too short");
    ensure!(
        bytes[4] == b'-'
            && bytes[7] == b'-'
            && matches!(bytes[10], b'T' | b't')
            && bytes[13] == b':'
            && bytes[16] == b':',
        "misplaced separators"
    );
    let number = |from: usize, to: usize| -> anyhow::Result<i64> {
        let digits = &text[from..to];
        ensure!(digits.bytes().all(|b| b.is_ascii_digit()), "{digits:?} is not a number");
        Ok(digits.parse()?)
    };
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    ensure!(
        (1..=12).contains(&month) && (1..=31).contains(&day) && hour < 24 && minute < 60 && second < 61,
        "a field out of range"
    );
    let mut rest = &text[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits: String = fraction.chars().take_while(char::is_ascii_digit).collect();
        ensure!(!digits.is_empty(), "an empty fraction");
        let padded = format!("{digits:0<9}");
        nanos = padded[..9].parse()?;
        rest = &fraction[digits.len()..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => bail!("no zone"),
            };
            ensure!(rest.len() == 6 && rest.as_bytes()[3] == b':', "a malformed offset");
            let zone = text.len() - 6;
            sign * (number(zone + 1, zone + 3)? * 3600 + number(zone + 4, zone + 6)? * 60)
        }
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    ensure!(seconds >= 0, "before 1970");
    Ok(UNIX_EPOCH + Duration::new(seconds as u64, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a day since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// An HTTP date (RFC 9110 IMF-fixdate) such as `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(at: SystemTime) -> String {
    let seconds = at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs() as i64;
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days + 4).rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// How long after `earlier` the instant `later` is (negative durations are an error).
fn between(earlier: SystemTime, later: SystemTime) -> anyhow::Result<Duration> {
    later
        .duration_since(earlier)
        .map_err(|_| anyhow!("{later:?} is before {earlier:?}"))
}

/// The gaps between consecutive arrivals.
fn gaps(requests: &[Received]) -> Vec<Duration> {
    requests
        .windows(2)
        .map(|pair| pair[1].at.duration_since(pair[0].at))
        .collect()
}

/// `next_attempt_at` of a pending delivery minus the start of its last attempt.
fn next_delay(delivery: &Value) -> anyhow::Result<Duration> {
    let last = attempts(delivery)?.last().context("no attempt yet")?;
    between(time_of(&last["at"])?, time_of(&delivery["next_attempt_at"])?)
}

// --- retry policy -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_answers_and_unreachable_receivers_are_retried_on_the_schedule_then_fail() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_with(SCHEDULE, &[]).await?;
    let statuses = [408u16, 425, 429, 500, 502, 503, 504];
    let mut answering = Vec::new();
    for status in statuses {
        let path = format!("/answers-{status}");
        receiver.set_behaviour(&path, Behaviour::status(status));
        let id = add_webhook(&host, THING_1, &format!("answers {status}"), &receiver.url(&path)).await?;
        answering.push((path, status, id));
    }
    let unreachable = add_webhook(
        &host,
        THING_1,
        "nobody listens",
        &format!("http://127.0.0.1:{}/down", closed_port()?),
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
        exactly_after_a_while(&receiver, path, ATTEMPTS_ON_SCHEDULE).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_2xx_answer_delivers_on_the_first_attempt() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_with(SCHEDULE, &[]).await?;
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
    let host = host_with(SCHEDULE, &[]).await?;
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
    let host = host_with(SCHEDULE, &[]).await?;
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
    let got = exactly_after_a_while(&receiver, "/busy", 2).await?;
    Ok((waiting, delivered, got))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_in_seconds_sets_the_next_delay() -> anyhow::Result<()> {
    let host = host_with("1s,1s", &[]).await?;
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
    let host = host_with("1s,1s", &[]).await?;
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
    let host = host_with("2s,2s", &[]).await?;
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
    let host = host_with("500ms,500ms", &[]).await?;
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

/// `GET /webhooks/{id}` as the admin, expecting `200`.
async fn view(host: &TestHost, id: &str) -> anyhow::Result<Value> {
    let (status, body) = host.call(Method::GET, &format!("/webhooks/{id}"), ADMIN, None).await?;
    ensure!(status == StatusCode::OK, "GET /webhooks/{id} answered {status}: {body}");
    Ok(body)
}

/// `PUT /webhooks/{id}` as the admin, expecting `200`.
async fn update(host: &TestHost, id: &str, body: Value) -> anyhow::Result<()> {
    let (status, answer) = host
        .call(Method::PUT, &format!("/webhooks/{id}"), ADMIN, Some(body.clone()))
        .await?;
    ensure!(status == StatusCode::OK, "PUT {body} answered {status}: {answer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_answer_disables_the_webhook_until_a_put_re_enables_it() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    receiver.set_behaviour("/gone", Behaviour::status(410));
    let host = host_with(SCHEDULE, &[]).await?;
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
    let got = exactly_after_a_while(&receiver, "/gone", 1).await?;
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
    let got = exactly_after_a_while(&receiver, "/gone", 2).await?;
    assert_eq!(bodies(&got), ["first", "fourth"]);
    let got = exactly_after_a_while(&receiver, "/alive", 4).await?;
    assert_eq!(bodies(&got), ["first", "fourth", "second", "third"]);
    Ok(())
}

// --- timeouts -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_delivery_timeout_is_a_failed_attempt_that_is_retried() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    receiver.set_behaviour("/slow", Behaviour::status(200).after(Duration::from_secs(3)));
    let host = host_with(SCHEDULE, &[("MF_WEBHOOKS_DELIVERY_TIMEOUT", "1s")]).await?;
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

// --- signing ------------------------------------------------------------------------------------

/// `count` random bytes.
fn random_bytes(count: usize) -> Vec<u8> {
    use std::hash::{BuildHasher, RandomState};
    let state = RandomState::new();
    (0..count).map(|i| state.hash_one(i) as u8).collect()
}

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
    let host = host_with(SCHEDULE, &[]).await?;
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
    let host = host_with(SCHEDULE, &[]).await?;
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
    let host = host_with(SCHEDULE, &[]).await?;
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
    let host = host_with(SCHEDULE, &[]).await?;
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

// --- the delivery log ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_lists_a_webhooks_deliveries_newest_first_with_their_attempts() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_with(SCHEDULE, &[]).await?;
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
    let host = host_with("1m", &[]).await?;
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
    let host = host_with(SCHEDULE, &[]).await?;
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
    exactly_after_a_while(&receiver, "/refuses", 1).await?;
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
    let host = host_with("1m", &[]).await?;
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
    let again = eventually_attempts(&host, &webhook, "failed", 2).await?;
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
    exactly_after_a_while(&receiver, "/in", 3).await?;
    exactly_after_a_while(&receiver, "/busy", 1).await?;
    Ok(())
}

/// Waits until a webhook's only delivery has this status and `count` attempts; answers it.
async fn eventually_attempts(host: &TestHost, webhook: &str, status: &str, count: usize) -> anyhow::Result<Value> {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let list = deliveries_of(host, webhook).await?;
        if list.len() == 1 && list[0]["status"] == status && attempts(&list[0])?.len() == count {
            return Ok(list[0].clone());
        }
        if Instant::now() > deadline {
            bail!("no {status} delivery with {count} attempts: {list:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_twice_with_one_message_id_logs_one_delivery_and_delivers_once() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_with(SCHEDULE, &[]).await?;
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
    let got = exactly_after_a_while(&receiver, "/in", 1).await?;
    assert_eq!(got[0].body, "once");
    let list = deliveries_of(&host, &webhook).await?;
    assert_eq!(list.len(), 1, "{list:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_keeps_the_first_4_kib_of_the_receivers_answer() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_with(SCHEDULE, &[]).await?;
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
    let host = host_with(SCHEDULE, &[("MF_WEBHOOKS_RETENTION", "3s")]).await?;
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
