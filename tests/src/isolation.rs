//! The isolation scenario of SPEC.md section 7: group A floods its thing with publishes toward
//! many slow webhooks while group B publishes at a steady rate to one fast webhook; B's
//! publish-to-receipt latency is measured alone and beside the flood. Shared by the e2e test
//! and `bench isolation`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use reqwest::StatusCode;
use serde_json::json;

use crate::flows::{ALLOW_PRIVATE, as_thing};
use crate::receiver::{Behaviour, Receiver};
use crate::{ADMIN, OTHER_ADMIN, THING_1, THING_3, TestHost, standard_registry};

/// The scenario's sizes.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Webhooks of group A, all toward one slow receiver.
    pub a_webhooks: usize,
    /// How long A's receiver takes to answer.
    pub a_receiver_delay: Duration,
    /// Clients publishing to A's thing as fast as they can.
    pub a_clients: usize,
    /// B's publishes per second, and for how long.
    pub b_rate: u64,
    /// Seconds B publishes for, alone and again beside the flood.
    pub b_seconds: u64,
    /// `MF_WEBHOOKS_QUOTA_PENDING` of the host, 0 for none.
    pub pending_quota: u32,
}

/// Percentiles of B's publish-to-receipt latency.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

/// What one run of the scenario measured.
#[derive(Debug)]
pub struct Outcome {
    /// B alone.
    pub alone: Latency,
    /// B beside A's flood.
    pub beside: Latency,
    /// A's publishes answered `202`.
    pub a_accepted: usize,
    /// A's publishes answered `429`.
    pub a_refused: usize,
    /// Whether every `429` carried a `Retry-After` of whole seconds.
    pub retry_after_on_every_refusal: bool,
    /// Distinct deliveries A's receiver answered by the end (each accepted message once per
    /// webhook).
    pub a_delivered: usize,
    /// How long after the flood stopped A's last delivery arrived.
    pub a_drained_after: Duration,
}

/// Runs the scenario on a fresh host; fails if a message of B is missing or, given
/// `drain_within`, one of A is not delivered within it after the flood (without it, A's
/// deliveries are not waited for).
pub async fn run(scenario: Scenario, drain_within: Option<Duration>) -> Result<Outcome> {
    let slow = Receiver::start().await?;
    slow.set_behaviour("/slow", Behaviour::status(200).after(scenario.a_receiver_delay));
    let fast = Receiver::start().await?;
    let quota = scenario.pending_quota.to_string();
    let host = TestHost::start_with(
        standard_registry(),
        &[
            ALLOW_PRIVATE,
            ("MF_WEBHOOKS_QUOTA_PENDING", quota.as_str()),
            ("MF_WEBHOOKS_LOG_LEVEL", "warn"),
        ],
    )
    .await?;
    for chunk in (0..scenario.a_webhooks).collect::<Vec<_>>().chunks(50) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|i| json!({"name": format!("slow-{i:03}"), "url": slow.url("/slow")}))
            .collect();
        host.create(THING_1, ADMIN, json!(batch)).await?;
    }
    host.create(
        THING_3,
        OTHER_ADMIN,
        json!([{"name": "fast", "url": fast.url("/fast")}]),
    )
    .await?;

    let alone = steady_b(&host, &fast, scenario, "alone").await?;

    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let well_refused = Arc::new(AtomicBool::new(true));
    let mut flood = Vec::new();
    for _ in 0..scenario.a_clients {
        let (stop, accepted, refused, well_refused) =
            (stop.clone(), accepted.clone(), refused.clone(), well_refused.clone());
        let request = as_thing(&host, "key-1", "/messages/flood");
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let request = request.try_clone().context("a publish request")?;
                let response = request.body(r#"{"flood":true}"#).send().await?;
                match response.status() {
                    StatusCode::ACCEPTED => {
                        accepted.fetch_add(1, Ordering::SeqCst);
                    }
                    StatusCode::TOO_MANY_REQUESTS => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        let seconds = response
                            .headers()
                            .get("retry-after")
                            .and_then(|value| value.to_str().ok())
                            .and_then(|value| value.parse::<u64>().ok());
                        if seconds.is_none_or(|s| s < 1) {
                            well_refused.store(false, Ordering::SeqCst);
                        }
                    }
                    other => bail!("a flood publish answered {other}: {}", response.text().await?),
                }
            }
            anyhow::Ok(())
        }));
    }
    // The flood fills A's share of the dispatcher first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let beside = steady_b(&host, &fast, scenario, "beside").await;
    stop.store(true, Ordering::SeqCst);
    let stopped = Instant::now();
    for client in flood {
        client.await??;
    }
    let beside = beside?;

    let a_accepted = accepted.load(Ordering::SeqCst);
    let a_refused = refused.load(Ordering::SeqCst);
    let retry_after_on_every_refusal = well_refused.load(Ordering::SeqCst);
    let Some(drain_within) = drain_within else {
        return Ok(Outcome {
            alone,
            beside,
            a_accepted,
            a_refused,
            retry_after_on_every_refusal,
            a_delivered: 0,
            a_drained_after: Duration::ZERO,
        });
    };
    let expected = a_accepted * scenario.a_webhooks;
    // Counted by delivery id: an attempt that outlived its timeout at the host but was answered
    // is attempted again (at least once, never lost).
    let delivered = || {
        slow.received_on("/slow")
            .iter()
            .filter_map(|received| received.header("webhook-id").map(str::to_owned))
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let waited = Instant::now();
    while delivered() < expected {
        ensure!(
            waited.elapsed() < drain_within,
            "A's receiver got {} of {expected} deliveries ({a_accepted} messages) within {drain_within:?}",
            delivered()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a_drained_after = stopped.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a_delivered = delivered();
    ensure!(
        a_delivered == expected,
        "A's receiver got {a_delivered} distinct deliveries, expected {expected}"
    );
    Ok(Outcome {
        alone,
        beside,
        a_accepted,
        a_refused,
        retry_after_on_every_refusal,
        a_delivered,
        a_drained_after,
    })
}

/// Publishes B's messages at its rate and measures each one's publish-to-receipt latency.
async fn steady_b(host: &TestHost, fast: &Receiver, scenario: Scenario, phase: &str) -> Result<Latency> {
    let messages = (scenario.b_rate * scenario.b_seconds) as usize;
    let started = Instant::now();
    let mut sent_at = Vec::with_capacity(messages);
    let mut publishes = Vec::with_capacity(messages);
    for index in 0..messages {
        let due = started + Duration::from_nanos(index as u64 * 1_000_000_000 / scenario.b_rate);
        tokio::time::sleep_until(due.into()).await;
        let request = as_thing(host, "key-3", "/messages").body(format!("{phase}-{index}"));
        sent_at.push(Instant::now());
        publishes.push(tokio::spawn(async move { request.send().await }));
    }
    for publish in publishes {
        let response = publish.await??;
        ensure!(
            response.status() == StatusCode::ACCEPTED,
            "a publish of B answered {}",
            response.status()
        );
    }
    let prefix = format!("{phase}-");
    let of_phase = || {
        fast.received()
            .into_iter()
            .filter(|received| received.body.starts_with(prefix.as_bytes()))
            .collect::<Vec<_>>()
    };
    let waited = Instant::now();
    while of_phase().len() < messages {
        ensure!(
            waited.elapsed() < Duration::from_secs(10),
            "B ({phase}): {} of {messages} messages arrived within 10 s",
            of_phase().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = Vec::with_capacity(messages);
    for received in of_phase() {
        let body = std::str::from_utf8(&received.body)?;
        let index = body.strip_prefix(&prefix).context("a message of this phase")?;
        let index: usize = index.parse()?;
        latencies.push(received.at.saturating_duration_since(sent_at[index]));
    }
    ensure!(
        latencies.len() == messages,
        "B ({phase}): {} receipts for {messages} messages",
        latencies.len()
    );
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    Ok(Latency {
        p50: at(0.5),
        p99: at(0.99),
        max: *latencies.last().expect("at least one message"),
    })
}
