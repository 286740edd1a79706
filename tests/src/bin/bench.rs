//! Benchmarks of the running service, printed as tables.
//!
//! `bench list [WEBHOOKS] [REQUESTS]`: latency of `GET /things/{id}/webhooks` on a thing with
//! WEBHOOKS webhooks (default 100), over REQUESTS sequential requests (default 2,000).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use reqwest::{Method, StatusCode};
use serde_json::json;
use webhooks_tests::{EDITOR, THING_1, TestHost, VIEWER};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("list") | None => {
            let webhooks = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(100);
            let requests = args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(2_000);
            list(webhooks, requests).await
        }
        Some(other) => bail!("unknown benchmark {other:?}; try: list"),
    }
}

/// Percentiles of a set of durations.
struct Summary {
    p50: Duration,
    p99: Duration,
    max: Duration,
    mean: Duration,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let at = |q: f64| {
        samples[((samples.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(samples.len() - 1)]
    };
    Summary {
        p50: at(0.50),
        p99: at(0.99),
        max: *samples.last().unwrap(),
        mean: samples.iter().sum::<Duration>() / samples.len() as u32,
    }
}

async fn list(webhooks: usize, requests: usize) -> Result<()> {
    let host = TestHost::start().await?;
    for chunk in (0..webhooks).collect::<Vec<_>>().chunks(50) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|i| json!({"name": format!("hook-{i:05}"), "url": format!("https://example.com/{i}")}))
            .collect();
        host.create(THING_1, EDITOR, json!(batch)).await?;
    }
    println!(
        "GET /things/{{id}}/webhooks, thing with {webhooks} webhooks, {requests} sequential requests, one connection"
    );
    println!("| query | p50 | p99 | max | mean | requests/s |");
    println!("|---|---|---|---|---|---|");
    for query in ["", "?limit=100", "?order=name&dir=asc&name=hook-0"] {
        let path = format!("/things/{THING_1}/webhooks{query}");
        // Warm the connection and the plugin's compiled code.
        for _ in 0..50 {
            host.request(Method::GET, &path, VIEWER).send().await?.bytes().await?;
        }
        let mut samples = Vec::with_capacity(requests);
        let started = Instant::now();
        for _ in 0..requests {
            let begun = Instant::now();
            let response = host.request(Method::GET, &path, VIEWER).send().await?;
            let status = response.status();
            response.bytes().await?;
            samples.push(begun.elapsed());
            if status != StatusCode::OK {
                bail!("{path} answered {status}");
            }
        }
        let rate = requests as f64 / started.elapsed().as_secs_f64();
        let s = summarize(samples);
        println!(
            "| `{}` | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {rate:.0} |",
            if query.is_empty() { "(defaults)" } else { query },
            s.p50.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3,
            s.max.as_secs_f64() * 1e3,
            s.mean.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
