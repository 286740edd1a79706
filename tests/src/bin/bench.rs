//! Benchmarks of the running service, printed as tables.
//!
//! `bench list [WEBHOOKS] [REQUESTS]`: latency of `GET /things/{id}/webhooks` on a thing with
//! WEBHOOKS webhooks (default 100), over REQUESTS sequential requests (default 2,000).
//!
//! `bench deliver [MESSAGES] [K...]`: publishes MESSAGES messages (default 10,000) to a thing
//! with K webhooks (default 1 and 3) pointing at a local receiver, and prints deliveries/s and
//! publish-to-receipt latency, beside a native baseline: the same POSTs sent by a pooled hyper
//! client to the same receiver in the same run.
//!
//! `bench e2e [ROUNDS] [MESSAGES]`: ROUNDS rounds (default 3) of MESSAGES publishes (default
//! 10,000) to a fresh host with one webhook, then through the native relay, each after a
//! warm-up of half as many publishes; prints each round (with the host's CPU time per delivery
//! and its plugin calls) and the medians. `bench report` measures its end-to-end row this way.
//!
//! `bench drain [MESSAGES] [K...]`: pre-loads MESSAGES broker messages (default 20,000) over 100
//! things with K webhooks each (default 1 and 3) into NATS JetStream while the host is stopped,
//! starts it on SQLite, and prints deliveries/s until the last is received, the host's CPU time
//! per delivery and peak resident memory (from `/proc`), and the connections the receiver
//! accepted; median of 3 runs. With `--store postgres` (inside `tests/services`) the host uses
//! its own PostgreSQL database, and the bench adds PostgreSQL's CPU per delivery (all its
//! processes, from `/proc`), the rows it wrote per delivery (`pg_stat_user_tables`) and its top
//! statements by total time from `pg_stat_statements`, those the commit function runs among them.
//!
//! `bench scale [MESSAGES] [K]`: end-to-end deliveries/s and publish-to-receipt latency of
//! MESSAGES messages (default 10,000) to a thing with K webhooks (default 2) on SQLite, on
//! PostgreSQL, and on PostgreSQL with two hosts (publishing over HTTP to both, then through NATS
//! JetStream); then, on PostgreSQL with one host and with two, a steady 1,000 messages/s for
//! 10 s: latency, the backlog each second and each host's share of the deliveries, each the
//! median of three runs by p99. Needs
//! `WEBHOOKS_TEST_POSTGRES` (`make bench` runs it inside `tests/services`).
//!
//! `bench scale-steady [HOSTS] [RATE] [SECONDS]`: only the steady row of `bench scale`, with
//! HOSTS hosts (default 2) at RATE messages/s (default 1,000) for SECONDS s (default 10).
//!
//! `bench isolation`: SPEC.md section 7's isolation scenario: group B's publish-to-receipt
//! latency at 20 messages/s alone and beside group A's flood toward 70 webhooks whose receiver
//! answers in 3 s (A's pending quota 1,000), and how long A's deliveries take to drain after it.
//!
//! `bench report [FILE]`: every target of the performance issues (HTTP end-to-end throughput
//! beside the one-hop native client and the native relay, the drain at 1 and 3 webhooks per
//! thing with CPU per delivery, peak memory and connections, latency at a steady 1,000
//! messages/s (median of three runs by p99), group listing on 10,000 webhooks, the isolation
//! scenario, instantiation, cached restart, idle memory) and the cost growth with webhooks per
//! thing and webhooks stored; printed and written to FILE (default `BENCHMARKS.md`) under a
//! summary line.
//!
//! `bench runtime [CALLS]`: the plugin runtime's costs: a new store and instance per call
//! (over CALLS calls, default 20,000), restart to healthy with and without the compile cache,
//! the time of a swap, a rollback and a promote (request to the first call answered by the
//! version it puts in place), and idle resident memory; `make bench` appends it to `BENCHMARKS.md`.
//!
//! The delivery benches (deliver, drain, steady, scale, report) raise each host's store to data
//! format 6, as an operator who gives up rollbacks to earlier versions does, so deliveries are
//! compact and packed and their outcomes leave the log entries alone;
//! `WEBHOOKS_BENCH_DATA_FORMAT=5`, `4` or `2` runs them on the layouts earlier versions read.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reqwest::{Method, StatusCode};
use serde_json::json;
use webhooks_tests::broker::NatsServer;
use webhooks_tests::flows::ALLOW_PRIVATE;
use webhooks_tests::isolation::Scenario;
use webhooks_tests::receiver::Receiver;
use webhooks_tests::{
    EDITOR, THING_1, TempDir, TestHost, VIEWER, plugin_component, plugin_variant, postgres_database, standard_registry,
};

/// Publishers (or native senders) in flight at once.
const CONCURRENCY: usize = 32;
/// Payload size of each message.
const PAYLOAD_BYTES: usize = 256;

#[tokio::main]
async fn main() -> Result<()> {
    webhooks_tests::orphans::die_with_this_process();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().cloned().as_deref() {
        Some("list") | None => {
            let webhooks = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(100);
            let requests = args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(2_000);
            list(webhooks, requests).await
        }
        Some("deliver") => {
            let messages = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(10_000);
            let mut ks: Vec<usize> = args.iter().skip(2).map(|k| k.parse()).collect::<Result<_, _>>()?;
            if ks.is_empty() {
                ks = vec![1, 3];
            }
            deliver(messages, &ks).await
        }
        Some("drain") => {
            let store = match args.iter().position(|a| a == "--store") {
                Some(at) => {
                    let name = args.get(at + 1).context("--store takes sqlite or postgres")?;
                    let store = DrainStore::parse(name)?;
                    args.drain(at..at + 2);
                    store
                }
                None => DrainStore::Sqlite,
            };
            let messages = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(20_000);
            let mut ks: Vec<usize> = args.iter().skip(2).map(|k| k.parse()).collect::<Result<_, _>>()?;
            if ks.is_empty() {
                ks = vec![1, 3];
            }
            drain(messages, &ks, store).await
        }
        Some("e2e") => {
            let rounds = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(3);
            let messages = args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(10_000);
            end_to_end(rounds, messages).await.map(drop)
        }
        Some("relay-serve") => {
            // The native relay as its own process (see `RelayProcess`): its address on the
            // first line, then it serves until killed.
            let relay = NativeRelay::start(args[1..].to_vec()).await?;
            println!("{}", relay.url);
            std::future::pending::<()>().await;
            Ok(())
        }
        Some("report") => {
            let out = args.get(1).map_or("BENCHMARKS.md", String::as_str);
            report(std::path::Path::new(out)).await
        }
        Some("scale") => {
            let messages = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(10_000);
            let k = args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(2);
            scale(messages, k).await
        }
        Some("scale-steady") => {
            let hosts = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(2);
            let rate = args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(1_000);
            let seconds = args.get(3).map(|n| n.parse()).transpose()?.unwrap_or(10);
            println!("{}", scale_steady(rate, seconds, hosts).await?.row);
            Ok(())
        }
        Some("runtime") => {
            let calls = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(20_000);
            runtime(calls).await
        }
        Some("steady") => {
            let rate = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(1_000);
            let seconds = args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(10);
            let s = steady_latency(rate, seconds).await?;
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "{rate} messages/s for {seconds} s: publish → receipt p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                ms(s.p50),
                ms(s.p99),
                ms(s.max)
            );
            Ok(())
        }
        Some("transform") => {
            let messages = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(10_000);
            let (plain, transformed) = transform_throughput(messages).await?;
            let call = transform_call(20_000).await?;
            println!(
                "{messages} messages, 1 webhook: {plain:.0}/s without a transform, {transformed:.0}/s with the \
                 pass-through one ({:.2}×); one threshold filter call {:.1} µs",
                transformed / plain,
                call.as_secs_f64() * 1e6
            );
            Ok(())
        }
        Some("isolation") => {
            isolation(ISOLATION).await?;
            isolation(Scenario {
                pending_quota: 0,
                ..ISOLATION
            })
            .await
            .map(drop)
        }
        Some(other) => {
            bail!(
                "unknown benchmark {other:?}; try: report, list, deliver, e2e, drain, steady, scale, runtime, isolation, \
                 transform"
            )
        }
    }
}

/// Percentiles of a set of durations.
#[derive(Clone, Copy)]
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

/// One message's payload: its index in the first 8 bytes, padded to the payload size.
fn payload(index: u64) -> Vec<u8> {
    let mut body = index.to_le_bytes().to_vec();
    body.resize(PAYLOAD_BYTES, b'x');
    body
}

fn index_of(body: &[u8]) -> usize {
    u64::from_le_bytes(body[..8].try_into().expect("8 bytes")) as usize
}

/// Throughput and latency of one run.
struct Run {
    deliveries: usize,
    elapsed: Duration,
    latency: Summary,
}

async fn deliver(messages: usize, ks: &[usize]) -> Result<()> {
    println!(
        "{messages} messages of {PAYLOAD_BYTES} B, {CONCURRENCY} publishers in flight, receiver on loopback, SQLite store"
    );
    println!(
        "| webhooks per thing | deliveries | service deliveries/s | native deliveries/s | ratio | service p50 / p99 publish→receipt | native p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &k in ks {
        let (receiver, host) = host_with_webhooks(k).await?;
        let service = service_run(&[&host], &receiver, messages, k).await?;
        let native = native_run(&receiver, messages * k).await?;
        let rate = |run: &Run| run.deliveries as f64 / run.elapsed.as_secs_f64();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {k} | {} | {:.0} | {:.0} | {:.2}× | {:.1} / {:.1} ms | {:.1} / {:.1} ms |",
            service.deliveries,
            rate(&service),
            rate(&native),
            rate(&service) / rate(&native),
            ms(service.latency.p50),
            ms(service.latency.p99),
            ms(native.latency.p50),
            ms(native.latency.p99),
        );
    }
    Ok(())
}

/// The admin token of the benches' hosts, which the stored data format is raised with.
const BENCH_ADMIN: (&str, &str) = ("MF_WEBHOOKS_ADMIN_TOKEN", "bench-admin");

/// The stored data format the benches run on: 6, whose deliveries are compact and packed and
/// whose outcomes leave the log entries alone, unless `WEBHOOKS_BENCH_DATA_FORMAT` names another
/// (5: JSON records; 4: compact deliveries, statuses in the log; 2: the layout versions before 4
/// read).
fn bench_data_format() -> Result<u32> {
    match std::env::var("WEBHOOKS_BENCH_DATA_FORMAT") {
        Err(_) => Ok(6),
        Ok(text) => text
            .parse()
            .ok()
            .filter(|format| (2..=6).contains(format))
            .with_context(|| format!("WEBHOOKS_BENCH_DATA_FORMAT must be 2, 3, 4, 5 or 6, not {text:?}")),
    }
}

/// Raises the store of a host started with [`BENCH_ADMIN`] to [`bench_data_format`], as an
/// operator would (`PUT /admin/data-format`); 2 is where upkeep brings it by itself.
async fn raise_data_format(host: &TestHost) -> Result<()> {
    let format = bench_data_format()?;
    if format <= 2 {
        return Ok(());
    }
    webhooks_tests::flows::raise_data_format(host, BENCH_ADMIN.1, format).await
}

/// A receiver, and a host on SQLite with `k` webhooks on `THING_1` pointing at it.
async fn host_with_webhooks(k: usize) -> Result<(Receiver, TestHost)> {
    let receiver = Receiver::start().await?;
    let host = TestHost::start_with(
        standard_registry(),
        &[ALLOW_PRIVATE, BENCH_ADMIN, ("MF_WEBHOOKS_LOG_LEVEL", "warn")],
    )
    .await?;
    raise_data_format(&host).await?;
    let hooks: Vec<_> = (0..k)
        .map(|i| json!({"name": format!("bench-{i}"), "url": receiver.url(&format!("/hook/{i}"))}))
        .collect();
    host.create(THING_1, EDITOR, json!(hooks)).await?;
    Ok((receiver, host))
}

/// Publishes `messages` messages over HTTP, spread over `hosts`, and waits for their `k`
/// deliveries each.
async fn service_run(hosts: &[&TestHost], receiver: &Receiver, messages: usize, k: usize) -> Result<Run> {
    let urls = hosts.iter().map(|h| h.url("/messages/bench")).collect();
    publish_run(urls, receiver, messages, k).await
}

/// Publishes `messages` messages over HTTP, spread over `urls`, and waits for their `k`
/// deliveries each.
async fn publish_run(urls: Vec<String>, receiver: &Receiver, messages: usize, k: usize) -> Result<Run> {
    let client = webhooks_tests::client_builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;
    let urls = std::sync::Arc::new(urls);
    let started = Instant::now();
    let mut sent_at = vec![started; messages];
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, urls, next) = (client.clone(), urls.clone(), next.clone());
        publishers.push(tokio::spawn(async move {
            let mut times = Vec::new();
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if index >= messages {
                    return Ok::<_, anyhow::Error>(times);
                }
                let begun = Instant::now();
                let response = client
                    .post(&urls[index % urls.len()])
                    .header("Authorization", "Thing key-1")
                    .header("Content-Type", "application/octet-stream")
                    .body(payload(index as u64))
                    .send()
                    .await?;
                if response.status() != StatusCode::ACCEPTED {
                    bail!("publish answered {}", response.status());
                }
                times.push((index, begun));
            }
        }));
    }
    for publisher in publishers {
        for (index, begun) in publisher.await?? {
            sent_at[index] = begun;
        }
    }
    receiver.wait_for_count(messages * k, Duration::from_secs(600)).await?;
    let received = receiver.received();
    let elapsed = received.iter().map(|r| r.at).max().unwrap_or(started) - started;
    let latencies = received
        .iter()
        .map(|r| r.at.saturating_duration_since(sent_at[index_of(&r.body)]))
        .collect();
    Ok(Run {
        deliveries: received.len(),
        elapsed,
        latency: summarize(latencies),
    })
}

/// Publishes `messages` messages for `THING_1` through JetStream, with up to 512
/// acknowledgements outstanding, and waits for their `k` deliveries each.
async fn broker_run(nats: &NatsServer, receiver: &Receiver, messages: usize, k: usize) -> Result<Run> {
    use webhooks_host::ingress::broker::{SUBJECT, WebhookMessage};
    let context = nats.jetstream().await?;
    let started = Instant::now();
    let mut sent_at = Vec::with_capacity(messages);
    let mut waiting = Vec::new();
    for index in 0..messages {
        let bytes = prost::Message::encode_to_vec(&WebhookMessage {
            thing_id: THING_1.to_owned(),
            payload: payload(index as u64),
            created: 0,
        });
        sent_at.push(Instant::now());
        waiting.push(context.publish(SUBJECT, bytes.into()).await?);
        if waiting.len() >= 512 {
            for ack in waiting.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in waiting {
        ack.await?;
    }
    receiver.wait_for_count(messages * k, Duration::from_secs(600)).await?;
    let received = receiver.received();
    let elapsed = received.iter().map(|r| r.at).max().unwrap_or(started) - started;
    let latencies = received
        .iter()
        .map(|r| r.at.saturating_duration_since(sent_at[index_of(&r.body)]))
        .collect();
    Ok(Run {
        deliveries: received.len(),
        elapsed,
        latency: summarize(latencies),
    })
}

/// The same load on each store and number of hosts.
async fn scale(messages: usize, k: usize) -> Result<()> {
    println!(
        "{messages} messages of {PAYLOAD_BYTES} B to a thing with {k} webhooks, {CONCURRENCY} HTTP publishers \
         in flight, receiver, PostgreSQL and NATS on the same machine\n"
    );
    println!("| store | hosts | ingress | deliveries | deliveries/s | p50 / p99 publish→receipt |");
    println!("|---|---|---|---|---|---|");
    for (store, hosts, via_broker) in [
        ("SQLite", 1, false),
        ("PostgreSQL", 1, false),
        ("PostgreSQL", 2, false),
        ("PostgreSQL", 2, true),
    ] {
        let receiver = Receiver::start().await?;
        let nats = if via_broker {
            Some(NatsServer::start().await?)
        } else {
            None
        };
        let database = if store == "PostgreSQL" {
            Some(postgres_database()?)
        } else {
            None
        };
        let mut env = vec![ALLOW_PRIVATE, BENCH_ADMIN, ("MF_WEBHOOKS_LOG_LEVEL", "warn")];
        if let Some(database) = &database {
            env.push(("MF_WEBHOOKS_DB_URL", database));
        }
        if let Some(nats) = &nats {
            env.push(("MF_BROKER_URL", &nats.url));
        }
        let mut started = Vec::new();
        for _ in 0..hosts {
            started.push(TestHost::start_with(standard_registry(), &env).await?);
        }
        raise_data_format(&started[0]).await?;
        let hooks: Vec<_> = (0..k)
            .map(|i| json!({"name": format!("bench-{i}"), "url": receiver.url(&format!("/hook/{i}"))}))
            .collect();
        started[0].create(THING_1, EDITOR, json!(hooks)).await?;
        let run = match &nats {
            Some(nats) => broker_run(nats, &receiver, messages, k).await?,
            None => service_run(&started.iter().collect::<Vec<_>>(), &receiver, messages, k).await?,
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {store} | {hosts} | {} | {} | {:.0} | {:.1} / {:.1} ms |",
            if via_broker { "NATS JetStream" } else { "HTTP" },
            run.deliveries,
            run.deliveries as f64 / run.elapsed.as_secs_f64(),
            ms(run.latency.p50),
            ms(run.latency.p99),
        );
    }
    println!(
        "\nPostgreSQL, a steady rate over HTTP spread over the hosts, 1 webhook; the backlog is the deliveries \
         owed and not yet received, once a second, the publishing then the draining; the median of {STEADY_RUNS} \
         runs by p99:\n"
    );
    println!(
        "| hosts | load | p50 / p99 / max publish→receipt | backlog each second | share of deliveries by host | mean \
         plugin call (10 calls or more) | p99 of each run |"
    );
    println!("|---|---|---|---|---|---|---|");
    for hosts in [1, 2] {
        let (median, p99s) = median_by_p99(async || scale_steady(1_000, 10, hosts).await, |run| run.p99).await?;
        println!("{} {p99s} ms |", median.row);
    }
    Ok(())
}

/// Publishes `messages` messages as `THING_1` at a steady `rate` per second, spread over
/// `urls` in turn, each without waiting for the one before; answers when each was sent, and
/// the deliveries `receiver` was owed but had not received, once a second.
async fn publish_steadily(
    urls: &[String],
    receiver: &Receiver,
    rate: u64,
    messages: usize,
) -> Result<(Vec<Instant>, Vec<usize>)> {
    let client = webhooks_tests::client_builder().pool_max_idle_per_host(64).build()?;
    let started = Instant::now();
    let mut sent_at = Vec::with_capacity(messages);
    let mut tasks = Vec::with_capacity(messages);
    let mut backlog = Vec::new();
    let mut next_sample = started + Duration::from_secs(1);
    for index in 0..messages {
        let due = started + Duration::from_nanos(index as u64 * 1_000_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        if Instant::now() >= next_sample {
            backlog.push(index - receiver.count().min(index));
            next_sample += Duration::from_secs(1);
        }
        sent_at.push(Instant::now());
        let (client, url) = (client.clone(), urls[index % urls.len()].clone());
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(&url)
                .header("Authorization", "Thing key-1")
                .body(payload(index as u64))
                .send()
                .await?;
            if response.status() != StatusCode::ACCEPTED {
                let status = response.status();
                bail!(
                    "publish answered {status}: {}",
                    response.text().await.unwrap_or_default()
                );
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((sent_at, backlog))
}

/// One steady run of `bench scale-steady`: its p99 publish → receipt, and its row of the table.
struct SteadyRow {
    p99: Duration,
    row: String,
}

/// Steady publishes at `rate` messages/s for `seconds` s over HTTP, spread over `hosts` hosts
/// sharing one PostgreSQL database, to a thing with one webhook: publish → receipt latency,
/// the backlog (deliveries owed but not yet received) once a second, and each host's share of
/// the deliveries (from its `/metrics`).
async fn scale_steady(rate: u64, seconds: u64, hosts: usize) -> Result<SteadyRow> {
    let receiver = Receiver::start().await?;
    let database = postgres_database()?;
    let env = [
        ALLOW_PRIVATE,
        BENCH_ADMIN,
        ("MF_WEBHOOKS_LOG_LEVEL", "warn"),
        ("MF_WEBHOOKS_DB_URL", database.as_str()),
    ];
    let mut started_hosts = Vec::with_capacity(hosts);
    for _ in 0..hosts {
        started_hosts.push(TestHost::start_with(standard_registry(), &env).await?);
    }
    raise_data_format(&started_hosts[0]).await?;
    started_hosts[0]
        .create(
            THING_1,
            EDITOR,
            json!([{"name": "steady", "url": receiver.url("/steady")}]),
        )
        .await?;
    let urls: Vec<String> = started_hosts.iter().map(|h| h.url("/messages/steady")).collect();
    let messages = (rate * seconds) as usize;
    let (sent_at, mut backlog) = publish_steadily(&urls, &receiver, rate, messages).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while receiver.count() < messages {
        if Instant::now() >= deadline {
            bail!("{} of {messages} deliveries after 120 s", receiver.count());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        backlog.push(messages - receiver.count().min(messages));
    }
    let latency = summarize(
        receiver
            .received()
            .iter()
            .map(|r| r.at.saturating_duration_since(sent_at[index_of(&r.body)]))
            .collect(),
    );
    let mut shares = Vec::with_capacity(hosts);
    let mut calls: Vec<(String, f64, f64)> = Vec::new();
    for host in &started_hosts {
        let text = reqwest::get(host.url("/metrics")).await?.text().await?;
        for (export, sum, count) in plugin_call_times(&text) {
            match calls.iter_mut().find(|(name, _, _)| *name == export) {
                Some(entry) => {
                    entry.1 += sum;
                    entry.2 += count;
                }
                None => calls.push((export, sum, count)),
            }
        }
        let delivered: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("webhooks_deliveries_total{outcome=\"delivered\"} "))
            .map(|count| count.trim().parse())
            .transpose()?
            .unwrap_or(0.0);
        shares.push(delivered);
    }
    let total: f64 = shares.iter().sum();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let calls = calls
        .iter()
        .filter(|(_, _, count)| *count >= 10.0)
        .map(|(export, sum, count)| format!("{export} {:.2} ms", sum * 1e3 / count))
        .collect::<Vec<_>>()
        .join(", ");
    let row = format!(
        "| {hosts} | {rate} msg/s for {seconds} s | {:.1} / {:.1} / {:.1} ms | {} | {} | {calls} |",
        ms(latency.p50),
        ms(latency.p99),
        ms(latency.max),
        backlog.iter().map(usize::to_string).collect::<Vec<_>>().join(", "),
        shares
            .iter()
            .map(|share| format!("{:.0}%", share * 100.0 / total.max(1.0)))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    Ok(SteadyRow { p99: latency.p99, row })
}

/// A native relay: a plain hyper server that answers `202` to each publish and POSTs its body
/// to each of `targets` with a pooled client; no storage, no Wasm, no retries. Stops when
/// dropped.
struct NativeRelay {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl NativeRelay {
    async fn start(targets: Vec<String>) -> Result<Self> {
        use http_body_util::{BodyExt, Full};
        use hyper_util::client::legacy::Client;
        use hyper_util::client::legacy::connect::HttpConnector;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<_, Full<bytes::Bytes>> =
            Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        let targets: std::sync::Arc<Vec<hyper::Uri>> =
            std::sync::Arc::new(targets.iter().map(|t| t.parse()).collect::<Result<_, _>>()?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/messages/bench", listener.local_addr()?);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (client, targets) = (client.clone(), targets.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let (client, targets) = (client.clone(), targets.clone());
                        async move {
                            let body = request.into_body().collect().await?.to_bytes();
                            for target in targets.iter() {
                                let forward = hyper::Request::post(target.clone())
                                    .header("content-type", "application/octet-stream")
                                    .body(Full::new(body.clone()))
                                    .expect("a valid request");
                                let client = client.clone();
                                tokio::spawn(async move {
                                    if let Ok(response) = client.request(forward).await {
                                        let _ = response.into_body().collect().await;
                                    }
                                });
                            }
                            let answer = hyper::Response::builder()
                                .status(202)
                                .body(Full::new(bytes::Bytes::new()))
                                .expect("a valid answer");
                            Ok::<_, hyper::Error>(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(NativeRelay { url, task })
    }
}

impl Drop for NativeRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A [`NativeRelay`] in a process of its own, as the host runs in its own (this binary's
/// `relay-serve`); killed when dropped. Inside the bench's process, the relay's speed
/// depended on what that process had run before (35,500/s in a first round, 41,000–43,000/s
/// in the next ones); in its own process, warmed as the host is, it ran 41,000–43,000/s from
/// the first round.
struct RelayProcess {
    url: String,
    _child: tokio::process::Child,
}

impl RelayProcess {
    async fn start(targets: Vec<String>) -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command
            .arg("relay-serve")
            .args(&targets)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped());
        webhooks_tests::orphans::tie(&mut command);
        let mut child = tokio::process::Command::from(command).kill_on_drop(true).spawn()?;
        let stdout = child.stdout.take().context("the relay's output")?;
        let mut line = String::new();
        tokio::io::BufReader::new(stdout).read_line(&mut line).await?;
        let url = line.trim().to_owned();
        if url.is_empty() {
            bail!("the relay process printed no address");
        }
        Ok(RelayProcess { url, _child: child })
    }
}

/// The same publishes as a service run through a [`RelayProcess`] to `k` paths of a fresh
/// receiver: `messages` of them, measured after `warm` unmeasured ones.
async fn relay_run(warm: usize, messages: usize, k: usize) -> Result<Run> {
    let receiver = Receiver::start().await?;
    let relay = RelayProcess::start((0..k).map(|i| receiver.url(&format!("/relay/{i}"))).collect()).await?;
    if warm > 0 {
        publish_run(vec![relay.url.clone()], &receiver, warm, k).await?;
        receiver.forget();
    }
    publish_run(vec![relay.url.clone()], &receiver, messages, k).await
}

async fn native_run(receiver: &Receiver, requests: usize) -> Result<Run> {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let url: hyper::Uri = receiver.url("/native").parse()?;
    let before = receiver.received_on("/native").len();
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if index >= requests {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let begun = Instant::now();
                let request = hyper::Request::post(url.clone())
                    .header("content-type", "application/octet-stream")
                    .body(Full::new(bytes::Bytes::from(payload(index as u64))))?;
                let response = client.request(request).await?;
                let status = response.status();
                http_body_util::BodyExt::collect(response.into_body()).await?;
                if !status.is_success() {
                    bail!("receiver answered {status}");
                }
                latencies.push(begun.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    for sender in senders {
        latencies.extend(sender.await??);
    }
    let elapsed = started.elapsed();
    let got = receiver.received_on("/native").len() - before;
    if got != requests {
        bail!("native run: {got} of {requests} arrived");
    }
    Ok(Run {
        deliveries: requests,
        elapsed,
        latency: summarize(latencies),
    })
}

/// Things the drain's messages are spread over.
const DRAIN_THINGS: usize = 100;

/// One drain of pre-loaded broker messages.
struct Drain {
    deliveries: usize,
    elapsed: Duration,
    /// Host CPU time (user and system) over the drain.
    cpu: CpuTime,
    /// The host's peak resident memory, in KiB.
    peak_rss_kib: u64,
    /// Its anonymous and file-backed (the mapped database) resident memory at the end, in KiB.
    end_rss_kib: (u64, u64),
    /// Connections the receiver accepted during the drain.
    connections: usize,
    /// Plugin calls the host made during the drain, by export.
    calls: Vec<(String, u64)>,
    /// PostgreSQL's CPU time over the drain, all its processes, when the store is PostgreSQL.
    database_cpu: Option<CpuTime>,
    /// PostgreSQL's top statements by total time over the drain, as a table.
    statements: Option<String>,
    /// Statements the host sent PostgreSQL on the drain's database, each one a round trip or
    /// part of one (not those run inside the commit function).
    statement_calls: Option<u64>,
    /// Rows of the drain's database inserted, updated (of which HOT: no index entry written)
    /// and deleted over the drain.
    rows: Option<RowWrites>,
}

/// Row writes to a database's tables, from `pg_stat_user_tables`.
#[derive(Clone, Copy, Debug, Default)]
struct RowWrites {
    inserted: u64,
    updated: u64,
    hot: u64,
    deleted: u64,
}

impl RowWrites {
    fn since(self, before: RowWrites) -> RowWrites {
        RowWrites {
            inserted: self.inserted.saturating_sub(before.inserted),
            updated: self.updated.saturating_sub(before.updated),
            hot: self.hot.saturating_sub(before.hot),
            deleted: self.deleted.saturating_sub(before.deleted),
        }
    }

    /// Per delivery, as `I + U (H HOT) + D = T`.
    fn per_delivery(self, deliveries: usize) -> String {
        let per = |rows: u64| rows as f64 / deliveries as f64;
        format!(
            "{:.2} + {:.2} ({:.2} HOT) + {:.2} = {:.2}",
            per(self.inserted),
            per(self.updated),
            per(self.hot),
            per(self.deleted),
            per(self.inserted + self.updated + self.deleted)
        )
    }
}

/// The store a drain runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DrainStore {
    Sqlite,
    Postgres,
}

impl DrainStore {
    fn parse(name: &str) -> Result<Self> {
        match name {
            "sqlite" => Ok(DrainStore::Sqlite),
            "postgres" => Ok(DrainStore::Postgres),
            other => bail!("--store takes sqlite or postgres, not {other:?}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            DrainStore::Sqlite => "SQLite",
            DrainStore::Postgres => "PostgreSQL",
        }
    }
}

impl Drain {
    fn rate(&self) -> f64 {
        self.deliveries as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_per_delivery_ms(&self) -> f64 {
        self.cpu.total().as_secs_f64() * 1e3 / self.deliveries as f64
    }

    fn database_cpu_per_delivery_ms(&self) -> Option<f64> {
        self.database_cpu
            .map(|cpu| cpu.total().as_secs_f64() * 1e3 / self.deliveries as f64)
    }
}

/// Loads `messages` broker messages spread over [`DRAIN_THINGS`] things with `k` webhooks each
/// into JetStream while the host is stopped, then starts it on `store` and times until every
/// delivery has been received, reading the host's CPU time and peak memory from `/proc`.
async fn drain_run(messages: usize, k: usize, store: DrainStore) -> Result<Drain> {
    let nats = NatsServer::start().await?;
    let receiver = Receiver::start().await?;
    let database = match store {
        DrainStore::Sqlite => None,
        DrainStore::Postgres => Some(postgres_database()?),
    };
    let mut env = vec![
        ALLOW_PRIVATE,
        BENCH_ADMIN,
        ("MF_WEBHOOKS_LOG_LEVEL", "warn"),
        ("MF_BROKER_URL", nats.url.as_str()),
    ];
    if let Some(database) = &database {
        env.push(("MF_WEBHOOKS_DB_URL", database));
    }
    // The first start makes the stream and the durable consumer; the messages then wait in it.
    let mut host = TestHost::start_with(registry_with_things(DRAIN_THINGS), &env).await?;
    raise_data_format(&host).await?;
    for t in 0..DRAIN_THINGS {
        let hooks: Vec<_> = (0..k)
            .map(|i| json!({"name": format!("drain-{i}"), "url": receiver.url(&format!("/hook/{i}"))}))
            .collect();
        host.create(&bench_thing(t), EDITOR, json!(hooks)).await?;
    }
    host.stop()?;
    nats.publish((0..messages).map(|i| (bench_thing(i % DRAIN_THINGS), payload(i as u64))))
        .await?;

    let connections_before = receiver.connections();
    let server = match &database {
        Some(database) => Some(DatabaseServer::watch(database)?),
        None => None,
    };
    let started = Instant::now();
    host.start_again().await?;
    let pid = host.pid().context("the host runs")?;
    receiver.wait_for_count(messages * k, Duration::from_secs(600)).await?;
    let elapsed = started.elapsed();
    let cpu = process_cpu(pid)?;
    let (database_cpu, statements, statement_calls) = match &server {
        Some(server) => (
            Some(server.cpu_since()?),
            Some(server.top_statements(14)?),
            server.statement_calls()?,
        ),
        None => (None, None, None),
    };
    let peak_rss_kib = process_status_kib(pid, "VmHWM:")?;
    let end_rss_kib = (
        process_status_kib(pid, "RssAnon:")?,
        process_status_kib(pid, "RssFile:")? + process_status_kib(pid, "RssShmem:")?,
    );
    let connections = receiver.connections() - connections_before;
    let calls = plugin_calls(&host).await?;
    host.stop()?;
    // After the stop: a backend reports its row counts when it ends, if not sooner.
    let rows = match &server {
        Some(server) => Some(server.rows_since()?),
        None => None,
    };
    Ok(Drain {
        deliveries: messages * k,
        elapsed,
        cpu,
        peak_rss_kib,
        end_rss_kib,
        connections,
        calls,
        database_cpu,
        statements,
        statement_calls,
        rows,
    })
}

/// The PostgreSQL server of `tests/services` (`WEBHOOKS_TEST_POSTGRES`, whose postmaster's pid
/// is `WEBHOOKS_TEST_POSTGRES_PID`), watched over a drain: its CPU time and its statements on
/// one database from the moment it is watched.
struct DatabaseServer {
    admin: String,
    database_url: String,
    database: String,
    postmaster: u32,
    cpu_before: CpuTime,
    rows_before: RowWrites,
    statements: bool,
}

impl DatabaseServer {
    /// Starts watching the server that holds `database_url`: notes the CPU its processes have
    /// used and resets `pg_stat_statements` if the server loads it.
    fn watch(database_url: &str) -> Result<Self> {
        let admin = std::env::var("WEBHOOKS_TEST_POSTGRES").context("WEBHOOKS_TEST_POSTGRES is not set")?;
        let postmaster = std::env::var("WEBHOOKS_TEST_POSTGRES_PID")
            .context("WEBHOOKS_TEST_POSTGRES_PID is not set: run the bench through tests/services")?
            .parse()
            .context("WEBHOOKS_TEST_POSTGRES_PID")?;
        let database = database_url.rsplit_once('/').context("a database URL")?.1.to_owned();
        let rows_before = row_writes(database_url)?;
        let statements = psql(
            &admin,
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset();",
        )
        .is_ok();
        Ok(DatabaseServer {
            admin,
            database_url: database_url.to_owned(),
            database,
            postmaster,
            cpu_before: server_cpu(postmaster)?,
            rows_before,
            statements,
        })
    }

    /// Rows the database's tables had written since it was watched.
    fn rows_since(&self) -> Result<RowWrites> {
        Ok(row_writes(&self.database_url)?.since(self.rows_before))
    }

    /// CPU time of the server's processes since it was watched.
    fn cpu_since(&self) -> Result<CpuTime> {
        Ok(server_cpu(self.postmaster)?.since(self.cpu_before))
    }

    /// Statements the host sent the database since it was watched, if `pg_stat_statements`
    /// counts them: top-level ones only, as the server also tracks the statements the commit
    /// function runs.
    fn statement_calls(&self) -> Result<Option<u64>> {
        if !self.statements {
            return Ok(None);
        }
        let sum = psql(
            &self.admin,
            &format!(
                "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
                 WHERE d.datname = '{}' AND s.toplevel",
                self.database
            ),
        )?;
        Ok(Some(sum.trim().parse().context("a count of statements")?))
    }

    /// The `limit` statements on the database with the most execution time since it was
    /// watched, as a Markdown table; those run inside the commit function (when the server
    /// tracks nested statements) are marked as such, their time also counted in the call's.
    fn top_statements(&self, limit: usize) -> Result<String> {
        if !self.statements {
            return Ok("(pg_stat_statements is not loaded by this server)\n".into());
        }
        let rows = psql(
            &self.admin,
            &format!(
                "SELECT s.calls, round(s.total_exec_time::numeric, 1), round(s.mean_exec_time::numeric * 1000, 1), \
                 s.rows, CASE WHEN s.toplevel THEN 'host' ELSE 'in the function' END, \
                 left(regexp_replace(s.query, '\\s+', ' ', 'g'), 150) \
                 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
                 WHERE d.datname = '{}' ORDER BY s.total_exec_time DESC LIMIT {limit}",
                self.database
            ),
        )?;
        let mut table =
            String::from("| calls | total ms | mean µs | rows | sent by | statement |\n|---|---|---|---|---|---|\n");
        for row in rows.lines().filter(|row| !row.is_empty()) {
            let fields: Vec<&str> = row.splitn(6, '\t').collect();
            if fields.len() == 6 {
                table.push_str(&format!(
                    "| {} | {} | {} | {} | {} | `{}` |\n",
                    fields[0],
                    fields[1],
                    fields[2],
                    fields[3],
                    fields[4],
                    fields[5].replace('|', "\\|")
                ));
            }
        }
        Ok(table)
    }
}

/// The row writes counted so far on the tables of the database at `url`.
fn row_writes(url: &str) -> Result<RowWrites> {
    let row = psql(
        url,
        "SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0), coalesce(sum(n_tup_hot_upd), 0), \
         coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables",
    )?;
    let counts: Vec<u64> = row
        .trim()
        .split('\t')
        .map(|count| count.parse().context("a count of rows"))
        .collect::<Result<_>>()?;
    let [inserted, updated, hot, deleted] = counts[..] else {
        bail!("pg_stat_user_tables answered {row:?}");
    };
    Ok(RowWrites {
        inserted,
        updated,
        hot,
        deleted,
    })
}

/// Runs `sql` on the server at `url` and answers its rows, tab-separated.
fn psql(url: &str, sql: &str) -> Result<String> {
    let output = std::process::Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .context("running psql")?;
    if !output.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// CPU time of a PostgreSQL server so far: its postmaster's own and its reaped children's, and
/// that of every live child (backends, background workers), from `/proc`.
fn server_cpu(postmaster: u32) -> Result<CpuTime> {
    let (own, reaped) = process_cpu_with_children(postmaster)?;
    let mut total = own.plus(reaped);
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        // A child may end between the listing and the read.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(fields) = stat_fields(&stat)
            && fields.get(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(postmaster)
        {
            total = total.plus(CpuTime::of_fields(&fields[11..13])?);
        }
    }
    Ok(total)
}

/// Each export's total and count of plugin call seconds in a host's `/metrics` text.
fn plugin_call_times(metrics: &str) -> Vec<(String, f64, f64)> {
    let figure = |suffix: &str, export: &str| {
        let prefix = format!("webhooks_plugin_call_duration_seconds_{suffix}{{export=\"{export}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("webhooks_plugin_call_duration_seconds_count{export=\""))
        .filter_map(|rest| rest.split_once('"').map(|(export, _)| export.to_owned()))
        .map(|export| {
            let (sum, count) = (figure("sum", &export), figure("count", &export));
            (export, sum, count)
        })
        .collect()
}

/// The plugin calls a host made since it started, by export, from its `/metrics`.
async fn plugin_calls(host: &TestHost) -> Result<Vec<(String, u64)>> {
    let text = reqwest::get(host.url("/metrics")).await?.text().await?;
    let prefix = "webhooks_plugin_call_duration_seconds_count{export=\"";
    let mut calls = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(prefix) else {
            continue;
        };
        let (export, count) = rest.split_once("\"} ").context("a metrics count line")?;
        calls.push((export.to_owned(), count.trim().parse()?));
    }
    Ok(calls)
}

/// The median drain of three by deliveries/s.
async fn drain_median(messages: usize, k: usize, store: DrainStore) -> Result<Drain> {
    let mut runs = Vec::with_capacity(3);
    for _ in 0..3 {
        runs.push(drain_run(messages, k, store).await?);
    }
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    Ok(runs.swap_remove(1))
}

/// `bench drain`: the drain table for each K, and on PostgreSQL its top statements.
async fn drain(messages: usize, ks: &[usize], store: DrainStore) -> Result<()> {
    println!(
        "{messages} messages of {PAYLOAD_BYTES} B pre-loaded in NATS JetStream over {DRAIN_THINGS} things, {} store, \
         {}, receiver on loopback; median of 3 runs\n",
        store.name(),
        data_format_note()
    );
    let mut statements = Vec::new();
    let mut rows = Vec::new();
    let mut runs = Vec::new();
    for &k in ks {
        let run = drain_median(messages, k, store).await?;
        rows.push(drain_row(k, &run));
        if let Some(table) = &run.statements {
            statements.push((k, table.clone()));
        }
        runs.push((k, run));
    }
    print!("{}", drain_header(store));
    for row in rows {
        println!("{row}");
    }
    if store == DrainStore::Postgres {
        print!("{}", capacity_model(&runs));
    }
    for (k, table) in statements {
        println!(
            "\nPostgreSQL's top statements by total time, {k} webhook(s) per thing (the median run, from \
             `pg_stat_statements`):\n"
        );
        print!("{table}");
    }
    Ok(())
}

/// How many hosts one PostgreSQL server carries, and at what rate, from the drains' measured
/// CPU per delivery on each side: a server of C cores kept busy delivers C / (its CPU per
/// delivery) per second, which keeps that rate × (host CPU per delivery) host cores busy.
fn capacity_model(runs: &[(usize, Drain)]) -> String {
    let mut model = String::from(
        "\nCapacity model from these drains (CPU per delivery measured on each side; PostgreSQL's cores fully \
         used, hosts of 2 cores fully used; the receivers elsewhere; rows written are inserted + updated (HOT: \
         no index entry) + deleted, from `pg_stat_user_tables`):\n\n| webhooks per thing | host CPU per delivery \
         | PostgreSQL CPU per delivery | statements per delivery | rows written per delivery | PostgreSQL of 2 \
         cores | 4 cores | 8 cores | 16 cores |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (k, run) in runs {
        let (Some(database), host) = (run.database_cpu_per_delivery_ms(), run.cpu_per_delivery_ms()) else {
            continue;
        };
        let statements = run
            .statement_calls
            .map(|calls| format!("{:.2}", calls as f64 / run.deliveries as f64))
            .unwrap_or_else(|| "(not counted)".into());
        let rows = run
            .rows
            .map(|rows| rows.per_delivery(run.deliveries))
            .unwrap_or_else(|| "(not counted)".into());
        let mut line = format!("| {k} | {host:.3} ms | {database:.3} ms | {statements} | {rows} |");
        for cores in [2.0, 4.0, 8.0, 16.0] {
            let rate = cores * 1e3 / database;
            let hosts = rate * host / 1e3 / 2.0;
            line.push_str(&format!(" {rate:.0}/s, {hosts:.1} hosts |"));
        }
        model.push_str(&line);
        model.push('\n');
    }
    model
}

/// The head of the drain table, in `bench drain` and in the report.
/// What the benches' stored data format means, for their tables.
fn data_format_note() -> String {
    match bench_data_format() {
        Ok(6) | Err(_) => "stored data in format 6 (compact, packed deliveries, statuses in the records alone, raised by `PUT /admin/data-format`)".into(),
        Ok(format) => format!("stored data in format {format} (`WEBHOOKS_BENCH_DATA_FORMAT`)"),
    }
}

fn drain_header(store: DrainStore) -> String {
    let database = if store == DrainStore::Postgres {
        " PostgreSQL CPU per delivery (kernel share) |"
    } else {
        ""
    };
    let columns = if store == DrainStore::Postgres { 8 } else { 7 };
    format!(
        "| webhooks per thing | deliveries | deliveries/s | host CPU per delivery (kernel share) |{database} peak RSS (anon + file at \
         the end) | new connections to the receiver | plugin calls per 100 deliveries |\n|{}\n",
        "---|".repeat(columns)
    )
}

fn drain_row(k: usize, run: &Drain) -> String {
    let database = match (run.database_cpu_per_delivery_ms(), run.database_cpu) {
        (Some(ms), Some(cpu)) => format!(" {ms:.3} ms ({:.0} % kernel) |", cpu.kernel_percent()),
        _ => String::new(),
    };
    format!(
        "| {k} | {} | {:.0} | {:.3} ms ({:.0} % kernel) |{database} {:.1} MiB ({:.1} + {:.1} MiB) | {} | {} |",
        run.deliveries,
        run.rate(),
        run.cpu_per_delivery_ms(),
        run.cpu.kernel_percent(),
        run.peak_rss_kib as f64 / 1024.0,
        run.end_rss_kib.0 as f64 / 1024.0,
        run.end_rss_kib.1 as f64 / 1024.0,
        run.connections,
        run.calls
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(export, count)| format!("{export} {:.1}", *count as f64 * 100.0 / run.deliveries as f64))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// CPU time, in user mode and in the kernel: a kernel share of half or more says the time
/// goes to system calls (round trips on sockets, waits and wake-ups) rather than to the work.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct CpuTime {
    user: Duration,
    system: Duration,
}

impl CpuTime {
    /// From two `/proc/PID/stat` fields in clock ticks: user time, then system time.
    fn of_fields(fields: &[&str]) -> Result<Self> {
        Ok(CpuTime {
            user: ticks_to_duration(fields[0].parse()?)?,
            system: ticks_to_duration(fields[1].parse()?)?,
        })
    }

    fn total(self) -> Duration {
        self.user + self.system
    }

    fn plus(self, other: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }

    fn since(self, before: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
        }
    }

    /// The kernel's share of the total, in percent.
    fn kernel_percent(self) -> f64 {
        let total = self.total().as_secs_f64();
        if total > 0.0 {
            self.system.as_secs_f64() * 100.0 / total
        } else {
            0.0
        }
    }
}

/// A process's CPU time so far, from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> Result<CpuTime> {
    Ok(process_cpu_with_children(pid)?.0)
}

/// A process's own CPU time, and that of its children it has reaped, from `/proc/PID/stat`.
fn process_cpu_with_children(pid: u32) -> Result<(CpuTime, CpuTime)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields = stat_fields(&stat).context("a stat line")?;
    // utime, stime, cutime and cstime are fields 14 to 17 of the line, 12 to 15 after the name.
    Ok((
        CpuTime::of_fields(&fields[11..13])?,
        CpuTime::of_fields(&fields[13..15])?,
    ))
}

/// The fields of a `/proc/PID/stat` line after the command name, which is in parentheses and
/// may hold spaces: the state first, then the parent's pid.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    (fields.len() > 14).then_some(fields)
}

fn ticks_to_duration(ticks: u64) -> Result<Duration> {
    static PER_SECOND: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let per_second = match PER_SECOND.get() {
        Some(per_second) => *per_second,
        None => {
            let output = std::process::Command::new("getconf").arg("CLK_TCK").output()?;
            *PER_SECOND.get_or_init(|| String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(100))
        }
    };
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// A `/proc/PID/status` figure given in kB (`VmHWM:`, `VmRSS:`).
fn process_status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

/// Issue 18's scenario: 70 webhooks of group A whose receiver answers in 3 s, two clients
/// flooding A's thing, group B publishing 20 messages/s for 3 s.
const ISOLATION: Scenario = Scenario {
    a_webhooks: 70,
    a_receiver_delay: Duration::from_secs(3),
    a_clients: 2,
    b_rate: 20,
    b_seconds: 3,
    pending_quota: 1_000,
};

/// Runs the isolation scenario and prints its figures.
async fn isolation(scenario: Scenario) -> Result<webhooks_tests::isolation::Outcome> {
    // Without a quota, A's backlog grows as fast as it publishes: it is not waited for.
    let drain_within = (scenario.pending_quota > 0).then_some(Duration::from_secs(180));
    let outcome = webhooks_tests::isolation::run(scenario, drain_within).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "isolation, A's pending quota {}: B p99 {:.1} ms alone, {:.1} ms beside A's flood (p50 {:.1} / {:.1} ms); A {} \
         accepted, {} refused, drained {:.1} s after the flood",
        scenario.pending_quota,
        ms(outcome.alone.p99),
        ms(outcome.beside.p99),
        ms(outcome.alone.p50),
        ms(outcome.beside.p50),
        outcome.a_accepted,
        outcome.a_refused,
        outcome.a_drained_after.as_secs_f64()
    );
    Ok(outcome)
}

/// Starts of each kind measured; the table shows the median.
const STARTS: usize = 5;
/// Swaps of each kind measured.
const SWAPS: usize = 6;

async fn runtime(calls: usize) -> Result<()> {
    println!(
        "\n## Plugin runtime\n\n`target/release/bench runtime {calls}`, plugin of {} bytes.\n",
        std::fs::metadata(plugin_component())?.len()
    );
    println!("| measure | median | min | max |");
    println!("|---|---|---|---|");
    let row = |name: &str, mut samples: Vec<Duration>| {
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms(samples[samples.len() / 2]),
            ms(samples[0]),
            ms(*samples.last().unwrap())
        );
    };

    let (per_call, with_events) = instantiation(calls).await?;
    println!(
        "| new store + instance per call ({calls} calls, one at a time, median of {ROUNDS} rounds) | {:.1} µs | | |",
        per_call.as_secs_f64() * 1e6
    );
    println!(
        "| same, and the `events` exports looked up | {:.1} µs | | |",
        with_events.as_secs_f64() * 1e6
    );

    // Without the cache: a fresh, empty cache folder each start, so the plugin is compiled.
    let mut cold = Vec::new();
    for _ in 0..STARTS {
        let cache = TempDir::new("bench-cache");
        cold.push(time_start(cache.path()).await?.0);
    }
    row("restart to healthy, compiling the plugin", cold);
    let cache = TempDir::new("bench-cache");
    time_start(cache.path()).await?;
    let mut warm = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..STARTS {
        let (took, resident) = time_start(cache.path()).await?;
        warm.push(took);
        rss.push(resident);
    }
    row("restart to healthy, compiled plugin in the cache", warm);

    let changes = version_changes(cache.path()).await?;
    row(
        "swap, new version compiled (request → first call on it)",
        changes.compiled,
    );
    row(
        "swap, version in the cache (request → first call on it)",
        changes.cached,
    );
    row(
        "rollback to the version before (request → first call on it)",
        changes.rollback,
    );
    row("promote of a candidate (request → first call on it)", changes.promote);

    rss.sort();
    println!(
        "| idle resident memory after start-up (VmRSS) | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        rss[rss.len() / 2] as f64 / 1024.0,
        rss[0] as f64 / 1024.0,
        rss[rss.len() - 1] as f64 / 1024.0
    );
    Ok(())
}

/// Mean cost of a call that only creates a store and an instance of the real plugin.
/// Mean cost of a call that only creates a store and an instance of the real plugin, and of
/// one that also looks up the `events` interface, as every message and delivery call does.
async fn instantiation(calls: usize) -> Result<(Duration, Duration)> {
    use webhooks_host::runtime::{CompileCache, Limits, Runtime};
    use webhooks_host::settings::DeliverySettings;

    let dir = TempDir::new("bench-runtime");
    let capabilities = webhooks_tests::in_process_capabilities(
        dir.path(),
        DeliverySettings {
            retry_schedule: vec![Duration::from_secs(5)],
            retention: Duration::from_secs(3600),
            ..DeliverySettings::default()
        },
    )
    .await?;
    let cache = CompileCache::new(Some(dir.path().join("cache")));
    let runtime = Runtime::new(&plugin_component(), Limits::default(), capabilities, cache)?;
    let empty = || async { runtime.call("bench", |_, _| Box::pin(async { Ok(()) })).await };
    for _ in 0..1_000 {
        empty().await?;
    }
    let bare = median_of_rounds(calls, async || empty().await.map_err(anyhow::Error::from)).await?;
    let with_events = || async {
        runtime
            .call("bench", |exports, store| {
                Box::pin(async move {
                    exports.events(store)?;
                    Ok(())
                })
            })
            .await
    };
    let looked_up = median_of_rounds(calls, async || with_events().await.map_err(anyhow::Error::from)).await?;
    Ok((bare, looked_up))
}

/// Rounds a microbenchmark's calls are split into.
const ROUNDS: usize = 10;

/// The median, over [`ROUNDS`] rounds, of the mean time of one call: a neighbour's burst on
/// this shared machine spoils a round or two, not the figure.
async fn median_of_rounds(calls: usize, mut call: impl AsyncFnMut() -> Result<()>) -> Result<Duration> {
    let per_round = (calls / ROUNDS).max(1);
    let mut means = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..per_round {
            call().await?;
        }
        means.push(started.elapsed() / per_round as u32);
    }
    means.sort();
    Ok(means[ROUNDS / 2])
}

/// Starts a host with this compile cache and answers the time to its first healthy answer and
/// its resident memory a moment later, idle.
async fn time_start(cache: &std::path::Path) -> Result<(Duration, u64)> {
    let cache = cache.display().to_string();
    let env = [
        ("MF_WEBHOOKS_PLUGIN_CACHE", cache.as_str()),
        ("MF_WEBHOOKS_LOG_LEVEL", "warn"),
    ];
    let started = Instant::now();
    let mut host = TestHost::start_with(standard_registry(), &env).await?;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.pid().unwrap_or(0)))?;
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    host.stop()?;
    Ok((took, rss))
}

/// Times of the admin operations that change the version serving calls; each sample runs from
/// the request to the first list call answered by the version it puts in place.
struct VersionChanges {
    /// Swaps to a version the cache has never seen.
    compiled: Vec<Duration>,
    /// Swaps to a version in the cache.
    cached: Vec<Duration>,
    /// Rollbacks to the version before.
    rollback: Vec<Duration>,
    /// Promotions of a candidate (set as a dry run, so it already sits compiled beside the active one).
    promote: Vec<Duration>,
}

/// Changes between the real plugin and the `tagged` build: first swaps, each to a version the
/// cache has never seen (a custom section, which the runtime ignores, makes each one new), then
/// swaps with both in the cache, rollbacks and promotions.
async fn version_changes(cache: &std::path::Path) -> Result<VersionChanges> {
    const TOKEN: &str = "bench-admin-token";
    let cache = cache.display().to_string();
    let env = [
        ("MF_WEBHOOKS_PLUGIN_CACHE", cache.as_str()),
        ("MF_WEBHOOKS_ADMIN_TOKEN", TOKEN),
        ("MF_WEBHOOKS_LOG_LEVEL", "warn"),
    ];
    let mut host = TestHost::start_with(standard_registry(), &env).await?;
    let components = [
        std::fs::read(plugin_variant("tagged"))?,
        std::fs::read(plugin_component())?,
    ];
    // Sends one admin request and answers the time until a list call is answered by the
    // version expected after it (`tagged` or not).
    let change = |method: Method, path: &'static str, bytes: Option<Vec<u8>>, tagged: bool| {
        let host = &host;
        async move {
            let started = Instant::now();
            let mut request = host.request(method, path, TOKEN);
            if let Some(bytes) = bytes {
                request = request.body(bytes);
            }
            let response = request.send().await?;
            if !response.status().is_success() {
                bail!("{path} answered {}: {}", response.status(), response.text().await?);
            }
            loop {
                let (status, page) = host
                    .call(Method::GET, &format!("/things/{THING_1}/webhooks"), VIEWER, None)
                    .await?;
                if status != StatusCode::OK {
                    bail!("list answered {status} after {path}");
                }
                if page.get("variant").is_some() == tagged {
                    return Ok::<_, anyhow::Error>(started.elapsed());
                }
            }
        }
    };
    let swap = |bytes: Vec<u8>, tagged: bool| change(Method::PUT, "/admin/plugin", Some(bytes), tagged);
    let mut compiled = Vec::new();
    for round in 0..SWAPS {
        let mut bytes = components[round % 2].clone();
        append_custom_section(&mut bytes, &format!("bench-{round}-{}", std::process::id()));
        compiled.push(swap(bytes, round % 2 == 0).await?);
    }
    // Both plain versions into the cache, then measured.
    swap(components[0].clone(), true).await?;
    swap(components[1].clone(), false).await?;
    let mut cached = Vec::new();
    for round in 0..SWAPS {
        cached.push(swap(components[round % 2].clone(), round % 2 == 0).await?);
    }
    // The plain version serves now; each round swaps to the tagged one and rolls back.
    let mut rollback = Vec::new();
    for _ in 0..SWAPS {
        swap(components[0].clone(), true).await?;
        rollback.push(change(Method::POST, "/admin/plugin/rollback", None, false).await?);
    }
    // Each round proposes the other version as a dry run and promotes it.
    let mut promote = Vec::new();
    for round in 0..SWAPS {
        let tagged = round % 2 == 0;
        let proposed = host
            .request(Method::PUT, "/admin/plugin?shadow=true", TOKEN)
            .body(components[round % 2].clone())
            .send()
            .await?;
        if !proposed.status().is_success() {
            bail!("a dry run answered {}: {}", proposed.status(), proposed.text().await?);
        }
        promote.push(change(Method::POST, "/admin/plugin/promote", None, tagged).await?);
    }
    host.stop()?;
    Ok(VersionChanges {
        compiled,
        cached,
        rollback,
        promote,
    })
}

/// Appends a custom section named `name` to a component; it stays valid and gets a new hash.
fn append_custom_section(bytes: &mut Vec<u8>, name: &str) {
    fn leb128(mut value: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut content = Vec::new();
    leb128(name.len(), &mut content);
    content.extend_from_slice(name.as_bytes());
    bytes.push(0);
    leb128(content.len(), bytes);
    bytes.extend_from_slice(&content);
}

/// One row of the targets table.
struct Target {
    measure: String,
    target: &'static str,
    measured: String,
    met: bool,
}

/// A registry with one group (`GROUP_1`, `EDITOR` among its members) holding `things` things.
fn registry_with_things(things: usize) -> serde_json::Value {
    let mut registry = standard_registry();
    let list = registry["things"]
        .as_array_mut()
        .expect("the standard registry has things");
    for i in 0..things {
        list.push(json!({"id": bench_thing(i), "group_id": webhooks_tests::GROUP_1, "key": format!("bench-key-{i}")}));
    }
    registry
}

fn bench_thing(i: usize) -> String {
    format!("bbbbbbbb-0000-4000-8000-{i:012}")
}

/// p50 and p99 of `GET /groups/{GROUP_1}/webhooks?name=…` on a group of `webhooks` webhooks
/// spread over `things` things, the filter matching one webhook.
async fn group_list(webhooks: usize, things: usize, requests: usize) -> Result<Summary> {
    let host = TestHost::start_with(registry_with_things(things), &[("MF_WEBHOOKS_LOG_LEVEL", "warn")]).await?;
    let per_thing = webhooks / things;
    for t in 0..things {
        for chunk in (0..per_thing).collect::<Vec<_>>().chunks(100) {
            let batch: Vec<_> = chunk
                .iter()
                .map(|i| {
                    let n = t * per_thing + i;
                    json!({"name": format!("hook-{n:06}"), "url": format!("https://example.com/{n}")})
                })
                .collect();
            host.create(&bench_thing(t), EDITOR, json!(batch)).await?;
        }
    }
    let path = |n: usize| format!("/groups/{}/webhooks?name=hook-{n:06}", webhooks_tests::GROUP_1);
    for n in 0..20 {
        host.request(Method::GET, &path(n), VIEWER)
            .send()
            .await?
            .bytes()
            .await?;
    }
    let mut samples = Vec::with_capacity(requests);
    for r in 0..requests {
        let begun = Instant::now();
        let response = host
            .request(Method::GET, &path((r * 7919) % webhooks), VIEWER)
            .send()
            .await?;
        let status = response.status();
        response.bytes().await?;
        samples.push(begun.elapsed());
        if status != StatusCode::OK {
            bail!("group list answered {status}");
        }
    }
    Ok(summarize(samples))
}

/// Runs of each steady latency measure.
const STEADY_RUNS: usize = 3;

/// The run of median p99 among [`STEADY_RUNS`] runs of `run`, and every run's p99 in ms, lowest
/// first ("1.8, 2.1, 6.4"): a p99 of one 10 s run rests on its 100 slowest deliveries, so one
/// stall of a neighbour on this shared machine moves it by milliseconds.
async fn median_by_p99<T>(
    mut run: impl AsyncFnMut() -> Result<T>,
    p99: impl Fn(&T) -> Duration,
) -> Result<(T, String)> {
    let mut runs = Vec::with_capacity(STEADY_RUNS);
    for _ in 0..STEADY_RUNS {
        runs.push(run().await?);
    }
    runs.sort_by_key(|r| p99(r));
    let p99s: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.1}", p99(r).as_secs_f64() * 1e3))
        .collect();
    Ok((runs.swap_remove(STEADY_RUNS / 2), p99s.join(", ")))
}

/// Publish → receipt latency of `rate` messages/s for `seconds`, each publish on its own task so
/// a slow answer never delays the next one.
async fn steady_latency(rate: u64, seconds: u64) -> Result<Summary> {
    let (receiver, host) = host_with_webhooks(1).await?;
    let messages = (rate * seconds) as usize;
    let (sent_at, _) = publish_steadily(&[host.url("/messages/steady")], &receiver, rate, messages)
        .await
        .with_context(|| format!("host log:\n{}", host.log()))?;
    receiver.wait_for_count(messages, Duration::from_secs(120)).await?;
    let received = receiver.received();
    Ok(summarize(
        received
            .iter()
            .map(|r| r.at.saturating_duration_since(sent_at[index_of(&r.body)]))
            .collect(),
    ))
}

/// Deliveries/s of the service and of the native client for `messages` messages to a thing with
/// `k` webhooks.
async fn throughput(messages: usize, k: usize) -> Result<(f64, f64)> {
    let (receiver, host) = host_with_webhooks(k).await?;
    let service = service_run(&[&host], &receiver, messages, k).await?;
    let native = native_run(&receiver, messages * k).await?;
    let rate = |run: &Run| run.deliveries as f64 / run.elapsed.as_secs_f64();
    Ok((rate(&service), rate(&native)))
}

/// Deliveries/s of two runs of `messages` messages to one webhook, back to back: without a
/// transform, then with the pass-through test transform attached (it changes nothing, so the
/// difference is what running a transform per delivery costs).
async fn transform_throughput(messages: usize) -> Result<(f64, f64)> {
    let rate = |run: &Run| run.deliveries as f64 / run.elapsed.as_secs_f64();
    let (receiver, host) = host_with_webhooks(1).await?;
    let plain = service_run(&[&host], &receiver, messages, 1).await?;
    drop(host);
    let (receiver, host) = host_with_webhooks(1).await?;
    let (status, page) = host
        .call(Method::GET, &format!("/things/{THING_1}/webhooks"), EDITOR, None)
        .await?;
    let webhook = page["webhooks"][0]["id"].as_str().context("a webhook")?.to_owned();
    ensure_ok(status, &page)?;
    let attached = host
        .request(Method::PUT, &format!("/webhooks/{webhook}/transform"), EDITOR)
        .header("Content-Type", "application/wasm")
        .body(webhooks_tests::transform_variant_bytes("pass")?)
        .send()
        .await?;
    if attached.status() != StatusCode::OK {
        bail!("attaching the transform answered {}", attached.status());
    }
    let transformed = service_run(&[&host], &receiver, messages, 1).await?;
    Ok((rate(&plain), rate(&transformed)))
}

fn ensure_ok(status: StatusCode, answer: &serde_json::Value) -> Result<()> {
    if status != StatusCode::OK {
        bail!("answered {status}: {answer}");
    }
    Ok(())
}

/// The time of one call of the threshold filter example on a 256-byte JSON payload, each in a
/// fresh instance, in the host's transform sandbox run in this process.
async fn transform_call(calls: usize) -> Result<Duration> {
    use webhooks_host::transform::{Message, Transforms};
    let transforms = Transforms::new(Default::default(), None)?;
    let sha = transforms.load(&webhooks_tests::example_transform_bytes("threshold_filter")?)?;
    let mut payload = br#"{"temperature": 31.5, "pad": ""#.to_vec();
    payload.resize(PAYLOAD_BYTES - 2, b'x');
    payload.extend_from_slice(br#""}"#);
    let message = Message {
        payload,
        content_type: Some("application/json".into()),
        subtopic: String::new(),
        thing_id: THING_1.into(),
        message_id: "01a23c61-1df9-7000-b46c-27968b44f10a".into(),
    };
    let metadata = r#"{"transform": {"field": "temperature", "above": 30}}"#;
    median_of_rounds(calls, async || {
        transforms.apply(&sha, &message, metadata).await?;
        Ok(())
    })
    .await
}

/// The machine, in one line: CPU model, cores and memory.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {memory}")
}

/// Medians of alternating rounds of the service end to end and the native relay (see
/// [`end_to_end`]), and each round's ratio of the two.
struct EndToEnd {
    service: f64,
    relay: f64,
    ratios: Vec<f64>,
}

/// Alternates `rounds` rounds of the service end to end (a fresh host on SQLite, 1 webhook per
/// thing, `messages` publishes) and the native relay (the same publishes, a [`RelayProcess`]),
/// each measured after a warm-up of half as many publishes through the same host or relay and
/// receiver: the machine's load drifts between runs, and a process's first thousands of
/// requests run slower than the next, so both sides are measured warm. Prints each round.
async fn end_to_end(rounds: usize, messages: usize) -> Result<EndToEnd> {
    let rate = |run: &Run| run.deliveries as f64 / run.elapsed.as_secs_f64();
    let warm = messages / 2;
    let (mut services, mut relays, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (receiver, host) = host_with_webhooks(1).await?;
        service_run(&[&host], &receiver, warm, 1).await?;
        receiver.forget();
        let pid = host.pid().context("the host runs")?;
        let cpu_before = process_cpu(pid)?;
        let calls_before = plugin_calls(&host).await?;
        let run = service_run(&[&host], &receiver, messages, 1).await?;
        let cpu = process_cpu(pid)?.since(cpu_before);
        let calls = plugin_calls(&host).await?;
        drop(host);
        let service = rate(&run);
        let relay = rate(&relay_run(warm, messages, 1).await?);
        let per_100 = |export: &str, count: u64| {
            let before = calls_before
                .iter()
                .find(|(name, _)| name == export)
                .map_or(0, |(_, count)| *count);
            count.saturating_sub(before) as f64 * 100.0 / run.deliveries as f64
        };
        println!(
            "round {round}: service {service:.0}/s ({:.1} µs host CPU per delivery, {:.0} % kernel; plugin calls per \
             100 deliveries: {}), relay {relay:.0}/s, {:.3}×",
            cpu.total().as_secs_f64() * 1e6 / run.deliveries as f64,
            cpu.kernel_percent(),
            calls
                .iter()
                .map(|(export, count)| (export, per_100(export, *count)))
                .filter(|(_, per_100)| *per_100 > 0.0)
                .map(|(export, per_100)| format!("{export} {per_100:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            service / relay
        );
        services.push(service);
        relays.push(relay);
        ratios.push(service / relay);
    }
    let result = EndToEnd {
        service: median(&mut services),
        relay: median(&mut relays),
        ratios,
    };
    println!(
        "median: service {:.0}/s, relay {:.0}/s; median ratio {:.3}×",
        result.service,
        result.relay,
        median(&mut result.ratios.clone()),
    );
    Ok(result)
}

/// The median of `values` (the upper one of an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Measures every target of the performance issue and the cost-growth figures, prints the
/// tables, and writes them to `out` under a summary line.
async fn report(out: &std::path::Path) -> Result<()> {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut targets = Vec::new();

    // The one-hop baseline the drain targets scale by is measured as the issue measured it:
    // after one run of the service, with no warm-up.
    let (service, native) = throughput(10_000, 1).await?;
    let end_to_end = end_to_end(3, 10_000).await?;
    let relay_ratio = median(&mut end_to_end.ratios.clone());
    targets.push(Target {
        measure: "HTTP end to end (publish → recorded → receiver 2xx), SQLite, 1 webhook per thing (10,000 \
                  messages of 256 B, 32 publishers), beside a native relay (hyper, answers 202, pooled client, no \
                  storage, no Wasm); 3 rounds alternating with the relay, each side after a warm-up of 5,000 \
                  publishes; median ratio"
            .into(),
        target: "≥ 0.35× the native relay",
        measured: format!(
            "{:.0}/s, {relay_ratio:.2}× the relay ({:.0}/s; each round: {}); one-hop native {native:.0}/s",
            end_to_end.service,
            end_to_end.relay,
            end_to_end
                .ratios
                .iter()
                .map(|ratio| format!("{ratio:.2}×"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        met: relay_ratio >= 0.35,
    });
    // The issue's absolute drain targets were set where one hop ran at 65,412/s; they scale
    // with this machine's one-hop baseline.
    let drains = [(1, 0.115, 7_500), (3, 0.21, 14_000)];
    let mut drained = Vec::new();
    for (k, share, nominal) in drains {
        let run = drain_median(20_000, k, DrainStore::Sqlite).await?;
        let target = share * native;
        targets.push(Target {
            measure: format!(
                "drain of 20,000 pre-loaded JetStream messages over {DRAIN_THINGS} things, {k} webhook(s) per thing \
                 (median of 3)"
            ),
            target: if k == 1 {
                "≥ 7,500/s at 65,412/s one-hop native: ≥ 0.115× one-hop native"
            } else {
                "≥ 14,000/s at 65,412/s one-hop native: ≥ 0.21× one-hop native"
            },
            measured: format!(
                "{:.0}/s ({:.3}× one-hop native; {target:.0}/s here, {nominal}/s there)",
                run.rate(),
                run.rate() / native
            ),
            met: run.rate() >= target,
        });
        drained.push((k, run));
    }
    let (_, drain_1) = &drained[0];
    let (_, drain_3) = &drained[1];
    targets.push(Target {
        measure: "host CPU per delivery during the drain, 1 webhook per thing (from `/proc`)".into(),
        target: "≤ 0.12 ms",
        measured: format!(
            "{:.3} ms ({:.3} ms at 3 per thing)",
            drain_1.cpu_per_delivery_ms(),
            drain_3.cpu_per_delivery_ms()
        ),
        met: drain_1.cpu_per_delivery_ms() <= 0.12,
    });
    let peak = drain_3.peak_rss_kib as f64 / 1024.0;
    targets.push(Target {
        measure: "peak RSS of the host during a 60,000-delivery drain (3 webhooks per thing)".into(),
        target: "≤ 64 MiB",
        measured: format!("{peak:.1} MiB"),
        met: peak <= 64.0,
    });
    let limit = webhooks_host::outbound::IN_FLIGHT_PER_DESTINATION;
    let most_connections = drain_1.connections.max(drain_3.connections);
    targets.push(Target {
        measure: format!("new connections to the one receiver over a drain (in-flight limit toward it: {limit})"),
        target: "≤ 2× the in-flight limit",
        measured: format!(
            "{} at 1 webhook per thing, {} at 3",
            drain_1.connections, drain_3.connections
        ),
        met: most_connections <= 2 * limit,
    });
    let (steady, p99s) = median_by_p99(async || steady_latency(1_000, 10).await, |run| run.p99).await?;
    targets.push(Target {
        measure: format!(
            "publish → receipt latency at a steady 1,000 messages/s (10 s, median of {STEADY_RUNS} runs by p99)"
        ),
        target: "p99 ≤ 2 ms",
        measured: format!(
            "p50 {:.1} ms, p99 {:.1} ms (p99 of each run: {} ms)",
            ms(steady.p50),
            ms(steady.p99),
            p99s
        ),
        met: steady.p99 <= Duration::from_millis(2),
    });
    let isolated = isolation(ISOLATION).await?;
    targets.push(Target {
        measure: format!(
            "group B's publish → receipt p99 at {} msg/s beside group A's flood ({} clients publishing as fast as \
             they can to {} webhooks whose receiver answers in {} s; A's pending quota {})",
            ISOLATION.b_rate,
            ISOLATION.a_clients,
            ISOLATION.a_webhooks,
            ISOLATION.a_receiver_delay.as_secs(),
            ISOLATION.pending_quota
        ),
        target: "≤ B's p99 alone + 50 ms",
        measured: format!(
            "{:.1} ms beside, {:.1} ms alone; A: {} publishes accepted, {} answered 429, all {} deliveries done {:.1} s \
             after the flood",
            ms(isolated.beside.p99),
            ms(isolated.alone.p99),
            isolated.a_accepted,
            isolated.a_refused,
            isolated.a_delivered,
            isolated.a_drained_after.as_secs_f64()
        ),
        met: isolated.beside.p99 <= isolated.alone.p99 + Duration::from_millis(50),
    });
    let (plain, transformed) = transform_throughput(10_000).await?;
    targets.push(Target {
        measure: "HTTP end to end with a transform (the pass-through test component) on every webhook, beside the \
                  same run without, just before (10,000 messages, 1 webhook per thing)"
            .into(),
        target: "≥ 0.8× without",
        measured: format!("{transformed:.0}/s, {:.2}× without ({plain:.0}/s)", transformed / plain),
        met: transformed / plain >= 0.8,
    });
    let call = transform_call(20_000).await?;
    targets.push(Target {
        measure: format!(
            "one transform call: the threshold filter example on a {PAYLOAD_BYTES} B JSON payload, fresh instance \
             (median of {ROUNDS} rounds of 2,000)"
        ),
        target: "≤ 1 ms (a tenth of the default 10 ms deadline)",
        measured: format!("{:.1} µs", call.as_secs_f64() * 1e6),
        met: call <= Duration::from_millis(1),
    });
    let listed = group_list(10_000, 100, 500).await?;
    targets.push(Target {
        measure: "`GET /groups/{id}/webhooks?name=…`, group of 10,000 webhooks on 100 things, one match".into(),
        target: "p99 ≤ 20 ms",
        measured: format!("p50 {:.1} ms, p99 {:.1} ms", ms(listed.p50), ms(listed.p99)),
        met: listed.p99 <= Duration::from_millis(20),
    });
    let (per_call, with_events) = instantiation(20_000).await?;
    targets.push(Target {
        measure: format!("new store + instance per call (median of {ROUNDS} rounds of 2,000)"),
        target: "≤ 15 µs",
        measured: format!(
            "{:.1} µs ({:.1} µs with the `events` exports looked up)",
            per_call.as_secs_f64() * 1e6,
            with_events.as_secs_f64() * 1e6
        ),
        met: per_call <= Duration::from_micros(15),
    });
    let cache = TempDir::new("bench-cache");
    time_start(cache.path()).await?;
    let (mut starts, mut rss) = (Vec::new(), Vec::new());
    for _ in 0..STARTS {
        let (took, resident) = time_start(cache.path()).await?;
        starts.push(took);
        rss.push(resident);
    }
    starts.sort();
    rss.sort();
    let start = starts[starts.len() / 2];
    targets.push(Target {
        measure: "restart to healthy with a cached compiled plugin (median of 5)".into(),
        target: "≤ 100 ms",
        measured: format!("{:.1} ms", ms(start)),
        met: start <= Duration::from_millis(100),
    });
    let idle = rss[rss.len() / 2] as f64 / 1024.0;
    targets.push(Target {
        measure: "idle resident memory of the host (median of 5)".into(),
        target: "≤ 40 MiB",
        measured: format!("{idle:.1} MiB"),
        met: idle <= 40.0,
    });

    let mut growth = String::from("| webhooks per thing | deliveries/s | native/s | ratio |\n|---|---|---|---|\n");
    for k in [1, 3, 10] {
        let (service, native) = if k == 1 {
            (service, native)
        } else {
            throughput(10_000 / k, k).await?
        };
        growth.push_str(&format!(
            "| {k} | {service:.0} | {native:.0} | {:.2}× |\n",
            service / native
        ));
    }
    let mut lists = String::from("| webhooks stored (in 100 things) | p50 | p99 |\n|---|---|---|\n");
    for webhooks in [1_000, 10_000, 100_000] {
        // Fewer requests where each one may read every webhook stored.
        let requests = if webhooks >= 100_000 { 50 } else { 300 };
        let summary = if webhooks == 10_000 {
            listed
        } else {
            group_list(webhooks, 100, requests).await?
        };
        lists.push_str(&format!(
            "| {webhooks} | {:.1} ms | {:.1} ms |\n",
            ms(summary.p50),
            ms(summary.p99)
        ));
    }

    let mut table = String::from("| measure | target | measured | met |\n|---|---|---|---|\n");
    for row in &targets {
        table.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            row.measure,
            row.target,
            row.measured,
            if row.met { "yes" } else { "no" }
        ));
    }
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut drain_table = drain_header(DrainStore::Sqlite);
    for (k, run) in &drained {
        drain_table.push_str(&drain_row(*k, run));
        drain_table.push('\n');
    }
    let text = format!(
        "end-to-end: {:.0} deliveries/s, {relay_ratio:.2}× native relay; drain: {:.0} deliveries/s, {:.3} ms CPU \
         per delivery\n\n# Benchmarks\n\nMeasured {date} on {} by `make bench` (`target/release/bench report`), with \
         the receiver, NATS and the load generator on the same machine. Baselines measured in the same run: the \
         one-hop native client (a pooled hyper client sending the same POSTs straight to the receiver) and the \
         native relay (a hyper server answering `202` and forwarding each body to the receiver).\n\n## Targets\n\n\
         {table}\n## Drain\n\n20,000 messages of 256 B pre-loaded in NATS JetStream over {DRAIN_THINGS} things, the \
         host started on SQLite, {}, until the last delivery is received (median of 3 by deliveries/s):\n\n{drain_table}\n\
         ## Cost growth\n\nEnd-to-end deliveries/s by webhooks per thing (10,000 deliveries in all):\n\n{growth}\n\
         Group listing filtered by name (one match) by webhooks stored:\n\n{lists}",
        end_to_end.service,
        drain_1.rate(),
        drain_1.cpu_per_delivery_ms(),
        machine(),
        data_format_note()
    );
    print!("{text}");
    std::fs::write(out, text)?;
    Ok(())
}
