//! A real NATS JetStream server for one test, on a free loopback port with its own storage
//! folder, stopped by its process id when dropped; and a publisher speaking the platform's
//! `Webhook` protobuf on subject `webhooks`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer::push};

use crate::{TempDir, free_port};
use webhooks_host::ingress::broker::{CONSUMER, STREAM, SUBJECT, WebhookMessage};

/// A running `nats-server -js`.
pub struct NatsServer {
    child: Child,
    /// Its client URL.
    pub url: String,
    _dir: TempDir,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub async fn start() -> Result<Self> {
        let dir = TempDir::new("nats");
        let port = free_port();
        let child = crate::orphans::tie(&mut Command::new("nats-server"))
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (tests/services installs it)")?;
        let server = NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("nats-server not listening on {port} after 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    /// A JetStream context on this server.
    pub async fn jetstream(&self) -> Result<jetstream::Context> {
        let client = async_nats::connect(&self.url).await?;
        Ok(jetstream::new(client))
    }

    /// Publishes one raw message on `webhooks`, waiting for the stream's acknowledgement.
    pub async fn publish_raw(&self, bytes: Vec<u8>) -> Result<()> {
        let context = self.jetstream().await?;
        context.publish(SUBJECT, bytes.into()).await?.await?;
        Ok(())
    }

    /// Publishes a `Webhook` message per (thing, payload), in order, with up to 512
    /// acknowledgements outstanding; answers once the stream holds them all.
    pub async fn publish(&self, messages: impl IntoIterator<Item = (String, Vec<u8>)>) -> Result<usize> {
        let context = self.jetstream().await?;
        let mut waiting = Vec::new();
        let mut count = 0;
        for (thing_id, payload) in messages {
            let bytes = prost::Message::encode_to_vec(&WebhookMessage {
                thing_id,
                payload,
                created: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_nanos() as i64,
            });
            waiting.push(context.publish(SUBJECT, bytes.into()).await?);
            count += 1;
            if waiting.len() >= 512 {
                for ack in waiting.drain(..) {
                    ack.await?;
                }
            }
        }
        for ack in waiting {
            ack.await?;
        }
        Ok(count)
    }

    /// The consumer the hosts share, as the server reports it now.
    pub async fn consumer_info(&self) -> Result<jetstream::consumer::Info> {
        let context = self.jetstream().await?;
        let mut consumer: jetstream::consumer::Consumer<push::Config> = context
            .get_stream(STREAM)
            .await?
            .get_consumer(CONSUMER)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(consumer.info().await?.clone())
    }

    /// Waits until every message the consumer was given has been acked or terminated.
    pub async fn wait_settled(&self, within: Duration) -> Result<jetstream::consumer::Info> {
        let deadline = Instant::now() + within;
        loop {
            let info = self.consumer_info().await?;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return Ok(info);
            }
            if Instant::now() > deadline {
                bail!(
                    "consumer not settled within {within:?}: {} pending, {} awaiting ack",
                    info.num_pending,
                    info.num_ack_pending
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
