//! Crash safety (SPEC.md section 7): every message the host accepted reaches every webhook of
//! its thing at least once, even when the host is killed with SIGKILL while messages pour in.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;
use webhooks_tests::delivery_log::logged_total;
use webhooks_tests::flows::{ALLOW_PRIVATE, MESSAGE_ID, add_webhook, raise_data_format};
use webhooks_tests::receiver::Receiver;
use webhooks_tests::{THING_1, TestHost, standard_registry};

/// Messages published.
const MESSAGES: usize = 5_000;
/// Publishers sending at once.
const PUBLISHERS: usize = 16;
/// The receiver paths of the thing's two webhooks.
const PATHS: [&str; 2] = ["/first", "/second"];
/// How long one message may take to be accepted, host restarts included.
const PUBLISH_BOUND: Duration = Duration::from_secs(60);
/// How long every accepted message may take to arrive once publishing is over.
const ARRIVAL_BOUND: Duration = Duration::from_secs(120);

/// The fixed `X-Message-Id` of message `n`, so a retried publish is the same message.
fn message_id(n: usize) -> String {
    format!("c0ffee00-0000-4000-8000-{n:012}")
}

/// The unique body of message `n`.
fn body(n: usize) -> String {
    format!("msg-{n}")
}

/// A random number below `bound`.
fn random_below(bound: usize) -> usize {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(0u8) % bound as u64) as usize
}

/// What one publisher did: the messages it got a `202` for, and how many publishes it had to
/// repeat because the host was down or answered `5xx`.
struct Published {
    accepted: Vec<usize>,
    repeated: usize,
}

/// Takes message numbers from `next` until none are left, publishing each as `THING_1` until
/// it is answered `202`.
async fn publisher(url: String, next: Arc<AtomicUsize>, accepted: Arc<AtomicUsize>) -> anyhow::Result<Published> {
    let client = webhooks_tests::client_builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut done = Published {
        accepted: Vec::new(),
        repeated: 0,
    };
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= MESSAGES {
            return Ok(done);
        }
        let started = Instant::now();
        loop {
            let answer = client
                .post(&url)
                .header(AUTHORIZATION, "Thing key-1")
                .header(MESSAGE_ID, message_id(n))
                .body(body(n))
                .send()
                .await;
            match answer {
                Ok(response) if response.status() == StatusCode::ACCEPTED => {
                    done.accepted.push(n);
                    accepted.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(response) if !response.status().is_server_error() => {
                    let status = response.status();
                    bail!(
                        "message {n} answered {status}: {}",
                        response.text().await.unwrap_or_default()
                    );
                }
                // The host is down, restarting, or answered 5xx: the same message again.
                Ok(_) | Err(_) => done.repeated += 1,
            }
            if started.elapsed() > PUBLISH_BOUND {
                bail!("message {n} not accepted within {PUBLISH_BOUND:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How many times each message body arrived on each path.
fn arrivals(receiver: &Receiver) -> HashMap<&'static str, HashMap<String, usize>> {
    let mut counts: HashMap<&'static str, HashMap<String, usize>> = HashMap::new();
    for request in receiver.received() {
        let path = PATHS.into_iter().find(|p| request.path == *p).unwrap_or("elsewhere");
        *counts
            .entry(path)
            .or_default()
            .entry(String::from_utf8_lossy(&request.body).into_owned())
            .or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_reaches_both_webhooks_although_the_host_is_killed_twice() -> anyhow::Result<()> {
    killed_twice(None).await
}

/// As above, on data format 5, where a new delivery has no due entry: what a killed host
/// accepted and never attempted is found by the recovery of first attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_lean_deliveries_every_accepted_message_reaches_both_webhooks_although_the_host_is_killed_twice()
-> anyhow::Result<()> {
    killed_twice(Some(5)).await
}

/// The admin token of the hosts whose stored data format is raised.
const ADMIN: &str = "crash-admin";

/// Publishes [`MESSAGES`] while the host is killed twice, on the stored data format `format`
/// (raised by `PUT /admin/data-format`; `None`: where upkeep brings it).
async fn killed_twice(format: Option<u32>) -> anyhow::Result<()> {
    let started = Instant::now();
    let receiver = Receiver::start().await?;
    let mut host = TestHost::start_with(
        standard_registry(),
        &[
            ALLOW_PRIVATE,
            ("MF_WEBHOOKS_ADMIN_TOKEN", ADMIN),
            ("MF_WEBHOOKS_RETRY_SCHEDULE", "1s,1s,2s,5s,10s,10s,10s"),
            ("MF_WEBHOOKS_LOG_LEVEL", "warn"),
            // Attempts claimed by a killed host come back when their claim lapses: deadline +
            // timeout + 5 s, 9 s here.
            ("MF_WEBHOOKS_DELIVERY_TIMEOUT", "2s"),
            ("MF_WEBHOOKS_PLUGIN_DEADLINE", "2s"),
        ],
    )
    .await?;
    if let Some(format) = format {
        raise_data_format(&host, ADMIN, format).await?;
    }
    let mut webhooks = Vec::new();
    for path in PATHS {
        webhooks.push(add_webhook(&host, THING_1, path, &receiver.url(path)).await?);
    }

    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| tokio::spawn(publisher(host.url("/messages"), next.clone(), accepted.clone())))
        .collect();

    let kill_points = [1_500 + random_below(300), 3_200 + random_below(300)];
    let mut downtimes = Vec::new();
    for point in kill_points {
        let waiting = Instant::now();
        while accepted.load(Ordering::Relaxed) < point {
            ensure!(
                waiting.elapsed() < PUBLISH_BOUND,
                "only {} of {point} publishes accepted within {PUBLISH_BOUND:?}",
                accepted.load(Ordering::Relaxed)
            );
            ensure!(
                !publishers.iter().all(|p| p.is_finished()),
                "the publishers stopped early"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let at = accepted.load(Ordering::Relaxed);
        let down = Instant::now();
        host.kill();
        host.start_again().await?;
        downtimes.push((at, down.elapsed()));
    }

    let mut accepted_messages = Vec::new();
    let mut repeated = 0;
    for publisher in publishers {
        let published = publisher.await??;
        accepted_messages.extend(published.accepted);
        repeated += published.repeated;
    }
    let published_in = started.elapsed();
    accepted_messages.sort_unstable();
    accepted_messages.dedup();
    ensure!(
        accepted_messages.len() == MESSAGES,
        "{} of {MESSAGES} messages accepted",
        accepted_messages.len()
    );

    // Every (message, webhook) pair that got a 202 arrives.
    let waiting = Instant::now();
    let missing = loop {
        let counts = arrivals(&receiver);
        let missing: Vec<(&str, usize)> = PATHS
            .into_iter()
            .flat_map(|path| {
                let got = counts.get(path);
                accepted_messages
                    .iter()
                    .filter(move |n| got.is_none_or(|g| !g.contains_key(&body(**n))))
                    .map(move |n| (path, *n))
            })
            .collect();
        if missing.is_empty() || waiting.elapsed() > ARRIVAL_BOUND {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let counts = arrivals(&receiver);
    let pairs = accepted_messages.len() * PATHS.len();
    let arrived = pairs - missing.len();
    let duplicated: usize = PATHS
        .iter()
        .filter_map(|path| counts.get(path))
        .map(|got| got.values().filter(|c| **c > 1).count())
        .sum();
    let extra_copies: usize = PATHS
        .iter()
        .filter_map(|path| counts.get(path))
        .map(|got| got.values().map(|c| c.saturating_sub(1)).sum::<usize>())
        .sum();
    println!(
        "crash test: {} messages accepted ({repeated} publishes repeated), host killed at {:?} \
         accepted publishes (down and back up in {:?}); published in {published_in:?}",
        accepted_messages.len(),
        downtimes.iter().map(|(at, _)| at).collect::<Vec<_>>(),
        downtimes.iter().map(|(_, took)| took).collect::<Vec<_>>(),
    );
    println!(
        "crash test: {pairs} (message, webhook) pairs: {arrived} arrived, {duplicated} arrived more \
         than once ({extra_copies} extra copies), {} lost; all arrived {:?} after publishing ended",
        missing.len(),
        waiting.elapsed()
    );
    let unexpected: Vec<&String> = counts
        .values()
        .flat_map(|got| got.keys())
        .filter(|b| {
            b.strip_prefix("msg-")
                .and_then(|n| n.parse::<usize>().ok())
                .is_none_or(|n| n >= MESSAGES)
        })
        .collect();
    ensure!(unexpected.is_empty(), "unexpected bodies arrived: {unexpected:?}");
    ensure!(
        !counts.contains_key("elsewhere"),
        "requests arrived on unexpected paths"
    );
    if !missing.is_empty() {
        bail!(
            "{} of {pairs} pairs never arrived within {ARRIVAL_BOUND:?}, such as {:?}; host log tail:\n{}",
            missing.len(),
            &missing[..missing.len().min(10)],
            host.log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    // Publishing again after a lost answer made no second delivery: one per message and webhook,
    // all delivered. Attempts a killed host had claimed are made again once their claim lapses
    // (9 s here), so the log may need that long to show every one delivered.
    for webhook in &webhooks {
        let total = logged_total(&host, webhook, "?limit=1").await?;
        let settling = Instant::now();
        let mut delivered = logged_total(&host, webhook, "?limit=1&status=delivered").await?;
        while delivered < MESSAGES as u64 && settling.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            delivered = logged_total(&host, webhook, "?limit=1&status=delivered").await?;
        }
        println!("crash test: webhook {webhook}: {total} deliveries logged, {delivered} delivered");
        ensure!(
            total == MESSAGES as u64,
            "{total} deliveries logged for {MESSAGES} messages"
        );
        ensure!(
            delivered == MESSAGES as u64,
            "{delivered} of {MESSAGES} deliveries delivered"
        );
    }
    println!("crash test: took {:?} in all", started.elapsed());
    Ok(())
}
