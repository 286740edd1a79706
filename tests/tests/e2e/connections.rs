//! Client connections (SPEC.md section 9): a client that sends part of a request's head or
//! body and then stalls is dropped after `MF_WEBHOOKS_HTTP_READ_TIMEOUT`, stalled clients
//! never keep the service from answering others, and at most
//! `MF_WEBHOOKS_HTTP_MAX_CONNECTIONS` connections are open at once.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use webhooks_tests::{TestHost, standard_registry};

/// The read timeout the hosts of this suite run with.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How long after the read timeout a stalled connection may still be open on a busy machine.
const SLACK: Duration = Duration::from_secs(4);

/// How a stalled client stops.
#[derive(Debug, Clone, Copy)]
enum Stall {
    /// Connects and sends nothing.
    Silent,
    /// Sends half a request head.
    InTheHead,
    /// Sends a whole head announcing 100 bytes of body, then 10 of them.
    InTheBody,
}

impl Stall {
    fn bytes(self) -> &'static [u8] {
        match self {
            Stall::Silent => b"",
            Stall::InTheHead => b"POST /messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthori",
            Stall::InTheBody => {
                b"POST /messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Thing key-1\r\nContent-Length: 100\r\n\r\n0123456789"
            }
        }
    }
}

/// Opens a connection that stalls as told.
async fn stalled(host: &TestHost, stall: Stall) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", host.port)).await?;
    stream.write_all(stall.bytes()).await?;
    stream.flush().await?;
    Ok(stream)
}

/// Waits until the host closes the connection; answers what it sent before closing.
async fn closed_by_the_host(mut stream: TcpStream, within: Duration) -> anyhow::Result<String> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await
    .with_context(|| format!("the connection is still open after {within:?}"))?;
    Ok(String::from_utf8_lossy(&received).into_owned())
}

/// A host with the suite's read timeout and these extra variables.
async fn host_with(extra: &[(&str, &str)]) -> anyhow::Result<TestHost> {
    let timeout = format!("{}ms", READ_TIMEOUT.as_millis());
    let mut env = vec![("MF_WEBHOOKS_HTTP_READ_TIMEOUT", timeout.as_str())];
    env.extend_from_slice(extra);
    TestHost::start_with(standard_registry(), &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_stalled_clients_is_dropped_after_the_read_timeout_while_others_are_served() -> anyhow::Result<()> {
    let host = host_with(&[]).await?;
    let mut crowd = Vec::new();
    for stall in [Stall::Silent, Stall::InTheHead, Stall::InTheBody] {
        for _ in 0..20 {
            crowd.push((stall, stalled(&host, stall).await?));
        }
    }
    let opened = Instant::now();

    // Everyone else is served as usual meanwhile.
    for n in 0..20 {
        let started = Instant::now();
        let (status, _) = host.call(Method::GET, "/health", "", None).await?;
        ensure!(status == StatusCode::OK, "health answered {status}");
        let response = host
            .request(Method::POST, "/messages", "")
            .header("Authorization", "Thing key-1")
            .body(format!("served {n}"))
            .send()
            .await?;
        ensure!(
            response.status() == StatusCode::ACCEPTED,
            "publish answered {}",
            response.status()
        );
        let took = started.elapsed();
        ensure!(
            took < READ_TIMEOUT,
            "request {n} took {took:?} beside the stalled crowd"
        );
    }

    for (stall, stream) in crowd {
        let answer = closed_by_the_host(stream, READ_TIMEOUT + SLACK)
            .await
            .with_context(|| format!("a client stalled {stall:?}"))?;
        if let Stall::InTheBody = stall {
            // The body never completed: 408 with the JSON error, and the connection closed.
            ensure!(answer.starts_with("HTTP/1.1 408"), "{stall:?} got {answer:?}");
            ensure!(answer.contains("\"error\""), "{stall:?} got {answer:?}");
        }
    }
    ensure!(
        opened.elapsed() >= READ_TIMEOUT.mul_f64(0.9),
        "stalled connections were dropped before the read timeout"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_cap_a_client_waits_until_a_stalled_connection_is_dropped() -> anyhow::Result<()> {
    let host = host_with(&[("MF_WEBHOOKS_HTTP_MAX_CONNECTIONS", "4")]).await?;
    let mut crowd = Vec::new();
    for _ in 0..4 {
        crowd.push(stalled(&host, Stall::InTheHead).await?);
    }
    let opened = Instant::now();
    // Let the host accept them before the fifth arrives, on a connection of its own (the
    // host's test client keeps one from start-up, which holds a slot as well).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = webhooks_tests::client_builder()
        .build()?
        .get(host.url("/health"))
        .send()
        .await?
        .status();
    let waited = opened.elapsed();
    ensure!(status == StatusCode::OK, "health answered {status}");
    ensure!(
        waited >= READ_TIMEOUT.mul_f64(0.9),
        "the fifth connection was served after {waited:?}, before a stalled one was dropped"
    );
    for stream in crowd {
        closed_by_the_host(stream, SLACK).await?;
    }
    Ok(())
}
