//! Operations (SPEC.md section 9): `GET /metrics` in Prometheus' text format counting exactly
//! what happened, JSON log lines that never show a token, key, secret or header value, `SIGTERM`
//! that finishes in-flight deliveries and leaves the backlog pending for the next start, and
//! `--help` naming every variable with its default.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use webhooks_tests::delivery_log::deliveries_of;
use webhooks_tests::flows::{
    ALLOW_PRIVATE, PROMPTLY, UNKNOWN_WEBHOOK, add_webhook, add_webhook_with, as_thing, publish, send,
};
use webhooks_tests::receiver::{Behaviour, QUIET, Receiver, bodies};
use webhooks_tests::{
    ADMIN, EDITOR, GROUP_1, LONER, OTHER_ADMIN, THING_1, TestHost, VIEWER, eventually, host_binary,
    plugin_variant_bytes, run_to_exit, standard_registry,
};

/// The admin token of the hosts here that swap plugins.
const OPS_ADMIN: &str = "ops-admin-token-9c41e07b5d";
/// The variable that turns `PUT /admin/plugin` on with [`OPS_ADMIN`].
const ADMIN_TOKEN: (&str, &str) = ("MF_WEBHOOKS_ADMIN_TOKEN", OPS_ADMIN);
/// How long in-flight work may take after `SIGTERM` (SPEC.md section 9).
const GRACE: Duration = Duration::from_secs(10);
/// Room on top of [`GRACE`] for the process to end and be reaped on a busy machine.
const EXIT_SLACK: Duration = Duration::from_millis(1500);
/// How long the slow receivers here take to answer.
const SLOW_ANSWER: Duration = Duration::from_secs(2);
/// How long the receiver of the in-flight delivery takes to answer: time enough to see the
/// host stop listening before it answers, on a busy machine.
const IN_FLIGHT: Duration = Duration::from_secs(3);

// --- helpers ----------------------------------------------------------------------------------

/// `GET` as `token`, expecting `status`; answers the body.
async fn get(host: &TestHost, path: &str, token: &str, status: StatusCode) -> anyhow::Result<Value> {
    host.expect(Method::GET, path, token, None, status).await
}

/// `POST` as `token` with this JSON body, if any, expecting `status`; answers the body.
async fn post(
    host: &TestHost,
    path: &str,
    token: &str,
    body: Option<Value>,
    status: StatusCode,
) -> anyhow::Result<Value> {
    host.expect(Method::POST, path, token, body, status).await
}

/// Stops the host with `SIGTERM` (again, if the test sent one already) and waits for its exit,
/// off the async workers so the test's receivers keep answering meanwhile; answers the code.
fn wait_for_exit(host: &mut TestHost) -> anyhow::Result<Option<i32>> {
    tokio::task::block_in_place(|| host.stop())
}

// --- the Prometheus text format, parsed -------------------------------------------------------

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    /// Whether its labels are exactly these.
    fn has_labels(&self, labels: &[(&str, &str)]) -> bool {
        self.labels.len() == labels.len()
            && labels
                .iter()
                .all(|(name, value)| self.labels.get(*name).is_some_and(|v| v == value))
    }
}

/// A `/metrics` answer, parsed.
#[derive(Debug, Default)]
pub(crate) struct Scrape {
    /// The `# TYPE` of each family.
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
    /// The text it was parsed from, for failure messages.
    text: String,
}

impl Scrape {
    /// Parses the text format: every line is a comment, blank, or a well-formed sample of a
    /// family with a `# TYPE`.
    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut scrape = Scrape {
            text: text.to_owned(),
            ..Scrape::default()
        };
        for (number, line) in text.lines().enumerate() {
            let at = || format!("/metrics line {}: {line:?}", number + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if words.next() == Some("TYPE") {
                    let family = words.next().with_context(at)?;
                    let kind = words.next().with_context(at)?;
                    ensure!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "an unknown type: {}",
                        at()
                    );
                    let earlier = scrape.types.insert(family.to_owned(), kind.to_owned());
                    ensure!(earlier.is_none(), "a second TYPE: {}", at());
                }
                continue;
            }
            scrape.samples.push(parse_sample(line).with_context(at)?);
        }
        for sample in &scrape.samples {
            ensure!(
                scrape.kind_of(&sample.name).is_some(),
                "the sample {} belongs to no family with a # TYPE",
                sample.name
            );
        }
        Ok(scrape)
    }

    /// The type of the family a sample name belongs to (`x_bucket`, `x_sum` and `x_count`
    /// belong to the histogram `x`).
    fn kind_of(&self, name: &str) -> Option<&str> {
        if let Some(kind) = self.types.get(name) {
            return Some(kind);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let family = name.strip_suffix(suffix)?;
            self.types
                .get(family)
                .map(String::as_str)
                .filter(|kind| ["histogram", "summary"].contains(kind))
        })
    }

    /// The samples of this name.
    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the one sample of this name with exactly these labels.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let found: Vec<&Sample> = self.named(name).filter(|s| s.has_labels(labels)).collect();
        ensure!(
            found.len() == 1,
            "{} samples {name}{labels:?} in /metrics:\n{}",
            found.len(),
            self.text
        );
        Ok(found[0].value)
    }

    /// Checks the declared type of a family.
    fn check_type(&self, family: &str, kind: &str) -> anyhow::Result<()> {
        let declared = self.types.get(family).map(String::as_str);
        ensure!(
            declared == Some(kind),
            "{family} is declared {declared:?}, expected {kind}:\n{}",
            self.text
        );
        Ok(())
    }

    /// Checks one series of a histogram (`labels` without `le`): ascending bounds ending at
    /// `+Inf`, cumulative counts, the `+Inf` bucket equal to `_count`, a sum ≥ 0; answers the count.
    fn histogram_count(&self, family: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        self.check_type(family, "histogram")?;
        let count = self.value(&format!("{family}_count"), labels)?;
        let sum = self.value(&format!("{family}_sum"), labels)?;
        ensure!(
            sum >= 0.0 && (count == 0.0 || sum > 0.0),
            "{family}{labels:?}: sum {sum}, count {count}"
        );
        let bucket = format!("{family}_bucket");
        let mut buckets = Vec::new();
        for sample in self.named(&bucket) {
            let mut rest = sample.labels.clone();
            let Some(le) = rest.remove("le") else {
                bail!("a bucket without le: {sample:?}");
            };
            let rest: Vec<(&str, &str)> = rest.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut wanted = labels.to_vec();
            wanted.sort();
            if rest == wanted {
                buckets.push((parse_number(&le)?, sample.value));
            }
        }
        ensure!(!buckets.is_empty(), "{family}{labels:?} has no buckets:\n{}", self.text);
        ensure!(
            buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{family}{labels:?}: buckets not ascending and cumulative: {buckets:?}"
        );
        let (last_bound, last_count) = buckets[buckets.len() - 1];
        ensure!(
            last_bound == f64::INFINITY && last_count == count,
            "{family}{labels:?}: the last bucket is ({last_bound}, {last_count}), count {count}"
        );
        Ok(count)
    }
}

/// Parses one sample line.
fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..end];
    ensure!(
        name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':'),
        "no metric name"
    );
    let mut chars = line[end..].chars().peekable();
    let mut labels = BTreeMap::new();
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            if chars.peek() == Some(&'}') {
                chars.next();
                break;
            }
            let mut label = String::new();
            while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_') {
                label.push(c);
            }
            ensure!(!label.is_empty(), "a label without a name");
            ensure!(
                chars.next() == Some('=') && chars.next() == Some('"'),
                "label {label} is not label=\"value\""
            );
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some(c @ ('\\' | '"')) => value.push(c),
                        other => bail!("an unknown escape \\{other:?} in label {label}"),
                    },
                    Some(c) => value.push(c),
                    None => bail!("the value of label {label} does not end"),
                }
            }
            ensure!(
                labels.insert(label.clone(), value).is_none(),
                "label {label} given twice"
            );
            match chars.next() {
                Some(',') => {}
                Some('}') => break,
                other => bail!("{other:?} after label {label}"),
            }
        }
    }
    let rest: String = chars.collect();
    ensure!(rest.starts_with([' ', '\t']), "no space before the value");
    let mut fields = rest.split_whitespace();
    let value = parse_number(fields.next().context("no value")?)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().context("a timestamp that is not an integer")?;
    }
    ensure!(fields.next().is_none(), "text after the timestamp");
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A number of the text format, `+Inf`, `-Inf` and `NaN` included.
fn parse_number(text: &str) -> anyhow::Result<f64> {
    Ok(match text {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => text.parse().with_context(|| format!("{text:?} is not a number"))?,
    })
}

/// `GET /metrics`, checked to answer `200` with the Prometheus text format's content type.
pub(crate) async fn scrape(host: &TestHost) -> anyhow::Result<Scrape> {
    let response = host
        .request(Method::GET, "/metrics", "")
        .send()
        .await
        .context("GET /metrics")?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await?;
    ensure!(status == StatusCode::OK, "/metrics answered {status}: {text}");
    let media: Vec<String> = content_type.split(';').map(|p| p.trim().to_ascii_lowercase()).collect();
    ensure!(
        media.first().is_some_and(|m| m == "text/plain") && media.iter().any(|p| p == "version=0.0.4"),
        "/metrics answered with Content-Type {content_type:?}, not the text format's text/plain; version=0.0.4"
    );
    Scrape::parse(&text)
}

const REQUESTS: &str = "webhooks_http_requests_total";
const REQUEST_DURATION: &str = "webhooks_http_request_duration_seconds";
const DELIVERIES: &str = "webhooks_deliveries_total";
const DELIVERY_LATENCY: &str = "webhooks_delivery_latency_seconds";
const PENDING: &str = "webhooks_pending_deliveries";
const PLUGIN_CALLS: &str = "webhooks_plugin_call_duration_seconds";
const PLUGIN_FAILURES: &str = "webhooks_plugin_call_failures_total";
const SWAPS: &str = "webhooks_plugin_swaps_total";

// --- 1. metrics -------------------------------------------------------------------------------

/// `/metrics` counts exactly the requests by route template and status, the delivery, plugin calls and swaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_status_the_delivery_plugin_calls_and_swaps() -> anyhow::Result<()> {
    let host = TestHost::start_with(standard_registry(), &[ALLOW_PRIVATE, ADMIN_TOKEN]).await?;
    let receiver = Receiver::start().await?;

    // Before anything happened: every outcome and swap series is there, at zero.
    let fresh = scrape(&host).await?;
    fresh.check_type(DELIVERIES, "counter")?;
    fresh.check_type(SWAPS, "counter")?;
    fresh.check_type(PENDING, "gauge")?;
    for outcome in ["delivered", "retrying", "failed"] {
        assert_eq!(fresh.value(DELIVERIES, &[("outcome", outcome)])?, 0.0, "{outcome}");
    }
    for trigger in ["admin", "sighup"] {
        for result in ["swapped", "refused"] {
            assert_eq!(fresh.value(SWAPS, &[("result", result), ("trigger", trigger)])?, 0.0);
        }
    }
    assert_eq!(fresh.value(PENDING, &[])?, 0.0);
    assert_eq!(fresh.histogram_count(DELIVERY_LATENCY, &[])?, 0.0);

    // REST calls: 200s, 201, 401, two kinds of 404, the gateway prefix.
    let webhook = add_webhook(&host, THING_1, "counted", &receiver.url("/counted")).await?;
    let things = format!("/things/{THING_1}/webhooks");
    get(&host, &things, ADMIN, StatusCode::OK).await?;
    get(&host, &things, VIEWER, StatusCode::OK).await?;
    get(&host, &things, "no-such-token", StatusCode::UNAUTHORIZED).await?;
    let gateway = format!("/svcwebhooks{things}");
    get(&host, &gateway, ADMIN, StatusCode::OK).await?;
    let view = format!("/webhooks/{webhook}");
    get(&host, &view, ADMIN, StatusCode::OK).await?;
    let unknown = format!("/webhooks/{UNKNOWN_WEBHOOK}");
    get(&host, &unknown, ADMIN, StatusCode::NOT_FOUND).await?;
    get(&host, "/no/such/endpoint", ADMIN, StatusCode::NOT_FOUND).await?;

    // A delivered message.
    publish(&host, "key-1", "counted message").await?;
    receiver.wait_for(Some("/counted"), 1, PROMPTLY).await?;

    // A refused swap and a good one.
    let (status, body) = host.put_plugin(OPS_ADMIN, plugin_variant_bytes("partial")?).await?;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the partial build was not refused: {body}"
    );
    let (status, body) = host.put_plugin(OPS_ADMIN, plugin_variant_bytes("tagged")?).await?;
    assert_eq!(status, StatusCode::OK, "the tagged build was not swapped in: {body}");

    // The outcome is counted once the plugin has recorded it, just after the receiver answered.
    let started = Instant::now();
    let metrics = loop {
        let metrics = scrape(&host).await?;
        if metrics.value(DELIVERIES, &[("outcome", "delivered")])? >= 1.0 && metrics.value(PENDING, &[])? == 0.0 {
            break metrics;
        }
        ensure!(
            started.elapsed() < PROMPTLY,
            "the delivery is not counted after {PROMPTLY:?}:\n{}",
            metrics.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // No label anywhere carries an id.
    for sample in &metrics.samples {
        for value in sample.labels.values() {
            for id in [THING_1, GROUP_1, webhook.as_str(), UNKNOWN_WEBHOOK] {
                assert!(!value.contains(id), "a label carries the id {id}: {sample:?}");
            }
        }
    }

    // Requests: exactly the ones made, by route template and status; the harness's health
    // checks and the scrapes themselves come on top.
    metrics.check_type(REQUESTS, "counter")?;
    let mut counted: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for sample in metrics.named(REQUESTS) {
        let keys: Vec<&str> = sample.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["method", "route", "status"], "{sample:?}");
        let key = (
            sample.labels["method"].clone(),
            sample.labels["route"].clone(),
            sample.labels["status"].clone(),
        );
        counted.insert(key, sample.value);
    }
    let health = counted
        .remove(&("GET".into(), "/health".into(), "200".into()))
        .unwrap_or_default();
    assert!(health >= 1.0, "the health checks are not counted: {counted:?}");
    counted.remove(&("GET".into(), "/metrics".into(), "200".into()));
    let expected: BTreeMap<(String, String, String), f64> = [
        ("POST", "/things/{thing_id}/webhooks", "201", 1.0),
        ("GET", "/things/{thing_id}/webhooks", "200", 2.0),
        ("GET", "/things/{thing_id}/webhooks", "401", 1.0),
        ("GET", "/svcwebhooks/things/{thing_id}/webhooks", "200", 1.0),
        ("GET", "/webhooks/{id}", "200", 1.0),
        ("GET", "/webhooks/{id}", "404", 1.0),
        ("GET", "unmatched", "404", 1.0),
        ("POST", "/messages", "202", 1.0),
        ("PUT", "/admin/plugin", "400", 1.0),
        ("PUT", "/admin/plugin", "200", 1.0),
    ]
    .into_iter()
    .map(|(m, r, s, n)| ((m.to_owned(), r.to_owned(), s.to_owned()), n))
    .collect();
    assert_eq!(counted, expected, "requests by method, route and status");

    // Each route's duration histogram counts as many requests as the counter, whatever status.
    let mut by_route: BTreeMap<(String, String), f64> = BTreeMap::new();
    for sample in metrics.named(REQUESTS) {
        *by_route
            .entry((sample.labels["method"].clone(), sample.labels["route"].clone()))
            .or_default() += sample.value;
    }
    for ((method, route), count) in &by_route {
        let timed = metrics.histogram_count(REQUEST_DURATION, &[("method", method), ("route", route)])?;
        assert_eq!(timed, *count, "{method} {route}: timed {timed}, counted {count}");
    }

    // The one delivery: delivered at the first attempt, its latency observed once.
    assert_eq!(metrics.value(DELIVERIES, &[("outcome", "delivered")])?, 1.0);
    assert_eq!(metrics.value(DELIVERIES, &[("outcome", "retrying")])?, 0.0);
    assert_eq!(metrics.value(DELIVERIES, &[("outcome", "failed")])?, 0.0);
    assert_eq!(metrics.histogram_count(DELIVERY_LATENCY, &[])?, 1.0);
    assert_eq!(metrics.value(PENDING, &[])?, 0.0);

    // The plugin calls behind them, by export.
    let exports: BTreeSet<String> = metrics
        .named(&format!("{PLUGIN_CALLS}_count"))
        .map(|s| s.labels.get("export").cloned().unwrap_or_default())
        .collect();
    assert!(
        exports
            .iter()
            .all(|e| e.starts_with("api.") || e.starts_with("events.")),
        "exports: {exports:?}"
    );
    assert!(metrics.histogram_count(PLUGIN_CALLS, &[("export", "events.on-message")])? >= 1.0);
    assert!(metrics.histogram_count(PLUGIN_CALLS, &[("export", "events.deliver")])? >= 1.0);
    assert!(
        metrics.histogram_count(PLUGIN_CALLS, &[("export", "api.list-thing-webhooks")])? >= 3.0,
        "three list calls reached the plugin; exports: {exports:?}"
    );
    for failure in metrics.named(PLUGIN_FAILURES) {
        assert_eq!(failure.value, 0.0, "a plugin call failed: {failure:?}");
    }

    // The swaps, by trigger and result.
    assert_eq!(
        metrics.value(SWAPS, &[("result", "swapped"), ("trigger", "admin")])?,
        1.0
    );
    assert_eq!(
        metrics.value(SWAPS, &[("result", "refused"), ("trigger", "admin")])?,
        1.0
    );
    assert_eq!(
        metrics.value(SWAPS, &[("result", "swapped"), ("trigger", "sighup")])?,
        0.0
    );
    assert_eq!(
        metrics.value(SWAPS, &[("result", "refused"), ("trigger", "sighup")])?,
        0.0
    );
    Ok(())
}

// --- 2. logs ----------------------------------------------------------------------------------

/// A webhook signing secret: `whsec_` and the base64 of [`SIGNING_KEY_TEXT`].
const SIGNING_SECRET: &str = "whsec_b3BzLWxvZy1zZWNyZWN5LXNpZ25pbmcta2V5LTA0Mjc=";
/// The base64 part of [`SIGNING_SECRET`].
const SIGNING_KEY: &str = "b3BzLWxvZy1zZWNyZWN5LXNpZ25pbmcta2V5LTA0Mjc=";
/// The decoded bytes of [`SIGNING_KEY`].
const SIGNING_KEY_TEXT: &str = "ops-log-secrecy-signing-key-0427";
/// Distinctive values of webhooks' custom headers.
const HEADER_VALUES: [&str; 5] = [
    "hv-api-key-5e0d1f",
    "hv-bearer-77b2c4",
    "hv-token-a9e3c0",
    "hv-updated-key-31fa",
    "hv-refused-0d9e42",
];
/// Credentials that are wrong, yet secrets all the same (a typo of a real one, say).
const WRONG_TOKEN: &str = "wrong-user-token-4b7e19";
const WRONG_KEY: &str = "wrong-thing-key-c2d85a";
const WRONG_ADMIN: &str = "wrong-admin-token-e61a3f";

/// A debug JSON log of every kind of operation is JSON lines only, none showing a token, key, secret or header value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_json_log_of_every_operation_is_json_lines_without_any_secret() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    receiver.set_behaviour("/broken", Behaviour::status(500));
    let mut host = TestHost::start_with(
        standard_registry(),
        &[
            ALLOW_PRIVATE,
            ADMIN_TOKEN,
            ("MF_WEBHOOKS_LOG_LEVEL", "debug"),
            ("MF_WEBHOOKS_LOG_FORMAT", "json"),
            ("MF_WEBHOOKS_RETRY_SCHEDULE", "1s"),
        ],
    )
    .await?;
    let [api_key, bearer, token, updated, refused] = HEADER_VALUES;

    // Webhooks with custom headers, one signed.
    let signed = add_webhook_with(
        &host,
        THING_1,
        json!({
            "name": "signed",
            "url": receiver.url("/ok"),
            "headers": {"X-Api-Key": api_key, "Authorization": format!("Bearer {bearer}")},
            "secret": SIGNING_SECRET,
        }),
    )
    .await?;
    let created = host
        .create(
            THING_1,
            EDITOR,
            json!([{"name": "broken", "url": receiver.url("/broken"), "headers": {"X-Token": token}}]),
        )
        .await?;
    let broken = created[0]["id"].as_str().context("a webhook id")?.to_owned();
    let injected = format!("{refused}\r\nX-Injected: 1");
    let bad_header = json!([{"name": "bad", "url": receiver.url("/bad"), "headers": {"X-Bad": injected}}]);
    let things = format!("/things/{THING_1}/webhooks");
    post(&host, &things, ADMIN, Some(bad_header), StatusCode::BAD_REQUEST).await?;

    // Lists, views, an update keeping the secret, searches; refusals.
    let groups = format!("/groups/{GROUP_1}/webhooks");
    get(&host, &things, VIEWER, StatusCode::OK).await?;
    get(&host, &groups, VIEWER, StatusCode::OK).await?;
    let view = format!("/webhooks/{signed}");
    let shown = get(&host, &view, VIEWER, StatusCode::OK).await?;
    assert_eq!(shown["headers"]["X-Api-Key"], api_key, "{shown}");
    let update = json!({
        "name": "signed",
        "url": receiver.url("/ok"),
        "headers": {"X-Api-Key": updated, "Authorization": format!("Bearer {bearer}")},
    });
    host.expect(Method::PUT, &view, EDITOR, Some(update.clone()), StatusCode::OK)
        .await?;
    host.expect(Method::PUT, &view, VIEWER, Some(update), StatusCode::FORBIDDEN)
        .await?;
    let search = Some(json!({"name": "sign"}));
    post(&host, &format!("{things}/search"), VIEWER, search, StatusCode::OK).await?;
    let search = Some(json!({"url": "/broken"}));
    post(&host, &format!("{groups}/search"), VIEWER, search, StatusCode::OK).await?;
    get(&host, &things, WRONG_TOKEN, StatusCode::UNAUTHORIZED).await?;
    get(&host, &things, LONER, StatusCode::FORBIDDEN).await?;
    get(&host, &things, OTHER_ADMIN, StatusCode::FORBIDDEN).await?;

    // Publishing: two messages, one under a subtopic; a wrong key.
    publish(&host, "key-1", r#"{"temperature": 21}"#).await?;
    let subtopic = send(as_thing(&host, "key-1", "/messages/sensors/room").body("second")).await?;
    assert_eq!(subtopic.status, StatusCode::ACCEPTED, "{subtopic:?}");
    let wrong = send(as_thing(&host, WRONG_KEY, "/messages").body("refused")).await?;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{wrong:?}");
    publish(&host, "key-2", "a thing without webhooks").await?;

    // Deliveries: the signed one arrives with the updated header; the broken one is retried
    // once, fails, and is retried by hand.
    let got = receiver.wait_for(Some("/ok"), 2, PROMPTLY).await?;
    assert!(
        got.iter()
            .all(|r| r.header("x-api-key") == Some(updated) && r.header("webhook-signature").is_some()),
        "the signed deliveries: {:?}",
        got.iter().map(|r| &r.headers).collect::<Vec<_>>()
    );
    receiver.wait_for(Some("/broken"), 4, Duration::from_secs(10)).await?;
    eventually(Duration::from_secs(10), || async {
        let list = deliveries_of(&host, &broken).await?;
        ensure!(
            list.len() == 2 && list.iter().all(|d| d["status"] == "failed"),
            "the broken webhook's deliveries are not both failed: {list:#?}"
        );
        Ok(())
    })
    .await?;
    let list = deliveries_of(&host, &broken).await?;
    let delivery = list[0]["id"].as_str().context("a delivery id")?;
    let retry = format!("/webhooks/{broken}/deliveries/{delivery}/retry");
    post(&host, &retry, EDITOR, None, StatusCode::ACCEPTED).await?;
    receiver.wait_for(Some("/broken"), 5, PROMPTLY).await?;

    // Swaps: a wrong admin token, a refused build, a good one; then SIGHUP; then SIGTERM.
    let (status, body) = host.put_plugin(WRONG_ADMIN, plugin_variant_bytes("tagged")?).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = host.put_plugin(OPS_ADMIN, plugin_variant_bytes("partial")?).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = host.put_plugin(OPS_ADMIN, plugin_variant_bytes("tagged")?).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    host.signal("HUP")?;
    host.logged(&["SIGHUP"], PROMPTLY).await?;
    assert_eq!(wait_for_exit(&mut host)?, Some(0), "the exit code after SIGTERM");

    let log = host.log();
    // Every line is a JSON object with a time, a level and a message.
    let mut levels = BTreeSet::new();
    for (number, line) in log.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let entry: Value =
            serde_json::from_str(line).with_context(|| format!("log line {} is not JSON: {line}", number + 1))?;
        let level = entry["level"].as_str().unwrap_or_default();
        ensure!(
            entry.is_object()
                && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
                && entry["message"].as_str().is_some_and(|m| !m.is_empty())
                && entry["timestamp"].is_string(),
            "log line {} lacks a timestamp, level or message: {line}",
            number + 1
        );
        levels.insert(level.to_owned());
    }
    assert!(levels.contains("DEBUG"), "nothing logged at debug level: {levels:?}");
    assert!(
        levels.contains("WARN"),
        "the failed delivery is not logged as a warning: {levels:?}"
    );

    // No secret anywhere.
    let mut secrets = vec![
        ADMIN,
        EDITOR,
        VIEWER,
        OTHER_ADMIN,
        LONER,
        "key-1",
        "key-2",
        "key-3",
        SIGNING_SECRET,
        SIGNING_KEY,
        SIGNING_KEY_TEXT,
        OPS_ADMIN,
        WRONG_TOKEN,
        WRONG_KEY,
        WRONG_ADMIN,
    ];
    secrets.extend(HEADER_VALUES);
    for secret in secrets {
        let leaks: Vec<&str> = log.lines().filter(|line| line.contains(secret)).collect();
        assert!(leaks.is_empty(), "the log shows {secret:?}:\n{}", leaks.join("\n"));
    }
    Ok(())
}

// --- 3. SIGTERM -------------------------------------------------------------------------------

/// SIGTERM refuses new connections, lets an in-flight delivery finish and be recorded, exits 0 within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_an_in_flight_delivery_and_records_it_before_exiting_0() -> anyhow::Result<()> {
    let mut host = TestHost::start_with(standard_registry(), &[ALLOW_PRIVATE]).await?;
    let receiver = Receiver::start().await?;
    receiver.set_behaviour("/slow", Behaviour::status(200).after(IN_FLIGHT));
    let webhook = add_webhook(&host, THING_1, "slow", &receiver.url("/slow")).await?;
    publish(&host, "key-1", "in flight at the stop").await?;
    receiver.wait_for_arrivals(1, PROMPTLY).await?;

    let signalled = Instant::now();
    host.signal("TERM")?;
    // The host stops taking work while the delivery is still waiting on its receiver.
    let fresh = webhooks_tests::client_builder()
        .timeout(Duration::from_millis(500))
        .build()?;
    let health = host.url("/health");
    eventually(PROMPTLY, || async {
        let answer = fresh.get(&health).send().await;
        ensure!(
            answer.is_err(),
            "a new request is still served after SIGTERM: {answer:?}"
        );
        Ok(())
    })
    .await?;
    assert_eq!(
        receiver.count(),
        0,
        "the receiver answered before the host stopped listening"
    );

    let code = wait_for_exit(&mut host)?;
    let took = signalled.elapsed();
    assert_eq!(code, Some(0), "the exit code after SIGTERM");
    assert!(took < GRACE + EXIT_SLACK, "the host took {took:?} to exit");
    assert_eq!(receiver.count(), 1, "the host exited before the receiver answered");

    host.start_again().await?;
    let list = deliveries_of(&host, &webhook).await?;
    ensure!(
        list.len() == 1 && list[0]["status"] == "delivered",
        "after the restart the log is not one delivered delivery: {list:#?}"
    );
    let attempts = list[0]["attempts"].as_array().context("an attempts array")?;
    ensure!(
        attempts.len() == 1 && attempts[0]["status_code"] == 200,
        "the delivery's attempts: {attempts:#?}"
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        bodies(&receiver.arrivals()),
        ["in flight at the stop"],
        "the receiver got the message once"
    );
    Ok(())
}

/// A backlog behind a slow receiver at SIGTERM does not hold the exit, and the next start delivers all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_backlog_exits_0_promptly_and_the_next_start_delivers_every_message() -> anyhow::Result<()> {
    const MESSAGES: usize = 40;
    const PATHS: [&str; 2] = ["/backlog-a", "/backlog-b"];
    let mut host = TestHost::start_with(standard_registry(), &[ALLOW_PRIVATE]).await?;
    let receiver = Receiver::start().await?;
    let mut webhooks = Vec::new();
    for path in PATHS {
        receiver.set_behaviour(path, Behaviour::status(200).after(SLOW_ANSWER));
        webhooks.push(add_webhook(&host, THING_1, path, &receiver.url(path)).await?);
    }
    let payloads: Vec<String> = (0..MESSAGES).map(|i| format!("backlog message #{i:02}")).collect();
    for payload in &payloads {
        publish(&host, "key-1", payload.clone()).await?;
    }

    let signalled = Instant::now();
    let code = wait_for_exit(&mut host)?;
    let took = signalled.elapsed();
    assert_eq!(code, Some(0), "the exit code after SIGTERM");
    assert!(took < GRACE + EXIT_SLACK, "the host took {took:?} to exit");
    let before = receiver.count();
    assert!(
        before < MESSAGES * PATHS.len(),
        "no backlog at the stop: all {before} deliveries were made"
    );

    host.start_again().await?;
    let expected: BTreeSet<String> = payloads.iter().cloned().collect();
    for (path, webhook) in PATHS.iter().zip(&webhooks) {
        eventually(Duration::from_secs(20), || async {
            let got: BTreeSet<String> = bodies(&receiver.received_on(path)).into_iter().collect();
            let missing: Vec<&String> = expected.difference(&got).collect();
            ensure!(
                missing.is_empty(),
                "{path} is missing {} messages: {missing:?}",
                missing.len()
            );
            ensure!(got == expected, "{path} got other messages: {got:?}");
            Ok(())
        })
        .await?;
        eventually(PROMPTLY, || async {
            let list = deliveries_of(&host, webhook).await?;
            let delivered = list.iter().filter(|d| d["status"] == "delivered").count();
            ensure!(
                list.len() == MESSAGES && delivered == MESSAGES,
                "{path}: {delivered} of {} deliveries delivered, {MESSAGES} messages",
                list.len()
            );
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// A delivery outlasting the 10 s grace period does not hold the exit and is attempted again at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_outlasting_the_grace_period_does_not_hold_the_exit_and_is_delivered_after_the_restart()
-> anyhow::Result<()> {
    let mut host = TestHost::start_with(
        standard_registry(),
        &[ALLOW_PRIVATE, ("MF_WEBHOOKS_DELIVERY_TIMEOUT", "60s")],
    )
    .await?;
    let receiver = Receiver::start().await?;
    receiver.set_behaviour("/stuck", Behaviour::status(200).after(Duration::from_secs(40)));
    let webhook = add_webhook(&host, THING_1, "stuck", &receiver.url("/stuck")).await?;
    publish(&host, "key-1", "outlasts the grace period").await?;
    receiver.wait_for_arrivals(1, PROMPTLY).await?;

    let signalled = Instant::now();
    let code = wait_for_exit(&mut host)?;
    let took = signalled.elapsed();
    assert_eq!(code, Some(0), "the exit code after SIGTERM");
    assert!(
        took < GRACE + EXIT_SLACK,
        "the host took {took:?} to exit with a delivery in flight"
    );
    assert!(
        took > GRACE - Duration::from_secs(1),
        "the host gave up on the in-flight delivery after {took:?}, before the grace period ended"
    );
    assert_eq!(receiver.count(), 0);

    receiver.set_behaviour("/stuck", Behaviour::status(200));
    host.start_again().await?;
    receiver.wait_for_arrivals(2, PROMPTLY).await?;
    eventually(PROMPTLY, || async {
        let list = deliveries_of(&host, &webhook).await?;
        ensure!(
            list.len() == 1 && list[0]["status"] == "delivered",
            "after the restart the log is not one delivered delivery: {list:#?}"
        );
        Ok(())
    })
    .await?;
    Ok(())
}

/// SIGINT stops the host as SIGTERM does: it stops listening and exits 0, and the next start has every webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_host_like_sigterm_with_exit_0() -> anyhow::Result<()> {
    let mut host = TestHost::start().await?;
    let webhook = add_webhook(&host, THING_1, "kept", "https://example.com/kept").await?;
    host.signal("INT")?;
    let fresh = webhooks_tests::client_builder()
        .timeout(Duration::from_millis(500))
        .build()?;
    let health = host.url("/health");
    eventually(PROMPTLY, || async {
        let answer = fresh.get(&health).send().await;
        ensure!(
            answer.is_err(),
            "a new request is still served after SIGINT: {answer:?}"
        );
        Ok(())
    })
    .await?;
    // The host is gone or going; a SIGTERM now changes nothing.
    assert_eq!(wait_for_exit(&mut host)?, Some(0), "the exit code after SIGINT");
    host.start_again().await?;
    let view = format!("/webhooks/{webhook}");
    get(&host, &view, ADMIN, StatusCode::OK).await?;
    Ok(())
}

// --- 4. --help --------------------------------------------------------------------------------

/// Every `MF_WEBHOOKS_*` variable of SPEC.md section 1 and the README, with its default
/// (`None`: no default).
const DOCUMENTED: [(&str, Option<&str>); 21] = [
    ("MF_THINGS_AUTH_GRPC_URL", None),
    ("MF_THINGS_AUTH_GRPC_TIMEOUT", Some("1s")),
    ("MF_WEBHOOKS_DB_POOL", Some("16")),
    ("MF_BROKER_URL", None),
    ("MF_WEBHOOKS_HTTP_PORT", Some("9021")),
    ("MF_WEBHOOKS_HTTP_HOST", Some("0.0.0.0")),
    ("MF_WEBHOOKS_HTTP_READ_TIMEOUT", Some("30s")),
    ("MF_WEBHOOKS_HTTP_MAX_CONNECTIONS", Some("4096")),
    ("MF_WEBHOOKS_DB_URL", Some("sqlite://./data/webhooks.db")),
    ("MF_WEBHOOKS_REGISTRY", Some("./examples/registry.json")),
    (
        "MF_WEBHOOKS_PLUGIN",
        Some("target/wasm32-wasip2/release/webhooks_plugin.wasm"),
    ),
    ("MF_WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS", Some("false")),
    ("MF_WEBHOOKS_LOG_LEVEL", Some("info")),
    ("MF_WEBHOOKS_DELIVERY_TIMEOUT", Some("15s")),
    ("MF_WEBHOOKS_RETRY_SCHEDULE", Some("5s,5m,30m,2h,5h,10h,10h")),
    ("MF_WEBHOOKS_RETENTION", Some("14d")),
    ("MF_WEBHOOKS_LOG_FORMAT", Some("text")),
    ("MF_WEBHOOKS_PLUGIN_MEMORY", Some("64MiB")),
    ("MF_WEBHOOKS_PLUGIN_DEADLINE", Some("10s")),
    ("MF_WEBHOOKS_PLUGIN_CACHE", Some("./data/plugin-cache")),
    ("MF_WEBHOOKS_ADMIN_TOKEN", None),
];

/// The `MF_WEBHOOKS_*` rows of the README's configuration table, with their defaults.
fn readme_variables() -> anyhow::Result<Vec<(String, Option<String>)>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for line in text.lines() {
        // | `VARIABLE` | meaning | `default` |
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() != 5 {
            continue;
        }
        let Some(variable) = cells[1].strip_prefix("`MF_WEBHOOKS_").and_then(|v| v.strip_suffix('`')) else {
            continue;
        };
        let default = cells[3].trim_matches('`');
        let default = (!default.is_empty() && default != "unset").then(|| default.to_owned());
        rows.push((format!("MF_WEBHOOKS_{variable}"), default));
    }
    ensure!(!rows.is_empty(), "no configuration table in {}", path.display());
    Ok(rows)
}

/// Runs `webhooks-host` with these arguments and only these variables (and `PATH`), expecting
/// exit 0; answers what it printed.
fn run_host(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let (code, stdout, stderr) = run_host_to_exit(args, env)?;
    let printed = format!("{stdout}{stderr}");
    ensure!(
        code == Some(0),
        "webhooks-host {args:?} exited with {code:?}:\n{printed}"
    );
    Ok(printed)
}

/// The options of a help text: each long flag with its whole description, whitespace collapsed.
fn option_blocks(help: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let starts_option = indent <= 6 && trimmed.starts_with('-');
        if starts_option && let Some(flag) = trimmed.split_whitespace().find(|w| w.starts_with("--")) {
            blocks.push((flag.trim_end_matches(',').to_owned(), String::new()));
        }
        if let Some((_, block)) = blocks.last_mut() {
            block.push(' ');
            block.push_str(trimmed);
        }
    }
    for (_, block) in &mut blocks {
        *block = block.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    blocks
}

/// The text of a help block's `[default: ...]`, if it shows one.
fn shown_default(block: &str) -> Option<&str> {
    let start = block.find("[default: ")? + "[default: ".len();
    let end = start + block[start..].find(']')?;
    Some(&block[start..end])
}

/// `--help` lists the commands, `serve --help` every variable with its default but never the admin token's value.
#[test]
fn help_lists_the_commands_and_every_variable_with_its_default_but_never_the_admin_token() -> anyhow::Result<()> {
    let top = run_host(&["--help"], &[])?;
    for command in ["serve", "import", "check-plugin"] {
        assert!(
            top.lines().any(|line| line.trim_start().starts_with(command)),
            "--help does not list {command}:\n{top}"
        );
    }
    let check = run_host(&["check-plugin", "--help"], &[])?;
    assert!(check.contains("FILE"), "check-plugin --help:\n{check}");

    let secret = "help-shows-no-admin-token-5d2a";
    let serve = run_host(&["serve", "--help"], &[("MF_WEBHOOKS_ADMIN_TOKEN", secret)])?;
    assert!(!serve.contains(secret), "serve --help shows the admin token:\n{serve}");
    let options = option_blocks(&serve);
    assert!(options.len() > DOCUMENTED.len(), "options found: {options:?}\n{serve}");
    for (flag, block) in &options {
        if flag != "--help" {
            assert!(block.contains("[env: MF_"), "{flag} has no variable: {block}");
        }
    }

    let mut documented: Vec<(String, Option<String>)> = DOCUMENTED
        .iter()
        .map(|(variable, default)| (variable.to_string(), default.map(str::to_owned)))
        .collect();
    documented.extend(readme_variables()?);
    for (variable, default) in &documented {
        let (flag, block) = options
            .iter()
            .find(|(_, block)| {
                block.contains(&format!("[env: {variable}=")) || block.contains(&format!("[env: {variable}]"))
            })
            .with_context(|| format!("serve --help does not name {variable}:\n{serve}"))?;
        if let Some(default) = default {
            let shown =
                shown_default(block).with_context(|| format!("{flag} ({variable}) shows no default: {block}"))?;
            assert!(
                shown.contains(default.as_str()),
                "{flag} ({variable}) shows the default {shown:?}, documented {default:?}"
            );
        }
    }
    Ok(())
}

/// Runs `webhooks-host` with these arguments and only these variables (and `PATH`); answers
/// its exit code and what it printed on each stream.
fn run_host_to_exit(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(Option<i32>, String, String)> {
    let mut command = Command::new(host_binary());
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied());
    let output = run_to_exit(command, Duration::from_secs(10))?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// No help text ever shows the value of a variable that may hold a secret: passwords in the
/// database, event stream and broker URLs, and the admin token.
#[test]
fn help_never_prints_the_value_of_a_variable_that_may_hold_a_secret() -> anyhow::Result<()> {
    let secrets = [
        (
            "MF_WEBHOOKS_DB_URL",
            "postgres://app:db-password-7f3e@127.0.0.1:5432/webhooks",
        ),
        ("MF_WEBHOOKS_ES_URL", "redis://:redis-password-7f3e@127.0.0.1:6379/0"),
        ("MF_BROKER_URL", "nats://nats-token-7f3e@127.0.0.1:4222"),
        ("MF_WEBHOOKS_ADMIN_TOKEN", "admin-token-7f3e"),
    ];
    for args in [&["--help"][..], &["serve", "--help"], &["help", "serve"]] {
        let printed = run_host(args, &secrets)?;
        assert!(
            !printed.contains("7f3e"),
            "webhooks-host {args:?} shows a secret:\n{printed}"
        );
    }
    Ok(())
}

/// `webhooks-host` alone is a mistake: it prints the usage with the commands on stderr and
/// exits 2.
#[test]
fn with_no_command_the_host_prints_its_usage_and_exits_2() -> anyhow::Result<()> {
    let (code, stdout, stderr) = run_host_to_exit(&[], &[])?;
    assert_eq!(code, Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("Usage: webhooks-host"), "{stderr}");
    for command in ["serve", "import", "check-plugin"] {
        assert!(
            stderr.lines().any(|line| line.trim_start().starts_with(command)),
            "the usage does not list {command}:\n{stderr}"
        );
    }
    Ok(())
}
