//! A real Redis server for one test, standing in for the platform's event store: a
//! `redis-server` on a free loopback port with its own folder, killed by its process id when
//! dropped. Every write is appended and synced to its folder, so a test can stop it and start
//! it again on the same port with the stream and the host's cursor intact.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use redis::aio::MultiplexedConnection;

use crate::{TempDir, free_port};

/// The platform's stream of things and groups events, which the host follows.
pub const THINGS_STREAM: &str = "mainflux.things";

/// A running, or stopped, `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1, the same across restarts.
    pub port: u16,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> Result<Self> {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: TempDir::new("redis"),
        };
        server.spawn().await?;
        Ok(server)
    }

    /// Its URL as `MF_WEBHOOKS_ES_URL` takes it.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn spawn(&mut self) -> Result<()> {
        let child = crate::orphans::tie(&mut Command::new("redis-server"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            // Every write synced to the append-only file, and no snapshots: what a test wrote
            // is there again after a restart, whenever it stopped the server.
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (tests/services installs it)")?;
        self.child = Some(child);
        // A listening server may still be loading its file; only a PONG means it serves.
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "redis-server exited with {status} during start-up; log:\n{}",
                    self.log()
                );
            }
            if let Ok(mut connection) = self.connection().await
                && let Ok(answer) = redis::cmd("PING").query_async::<String>(&mut connection).await
                && answer == "PONG"
            {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!(
                    "redis-server not answering on {} after 10 s; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the server has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Stops the server with SIGTERM, as an operator would, and waits for it to exit.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let started = Instant::now();
        while child.try_wait()?.is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                child.kill()?;
                let _ = child.wait();
                bail!("redis-server ignored SIGTERM for 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Starts the server again on the same port and folder after [`RedisServer::stop`].
    pub async fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("redis-server is still running");
        }
        self.spawn().await
    }

    /// A fresh connection; tests that restart the server need no reconnecting one.
    async fn connection(&self) -> Result<MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Appends an event to [`THINGS_STREAM`] as the platform does, `XADD mainflux.things *
    /// operation OPERATION id ID`; answers the entry's id.
    pub async fn xadd(&self, operation: &str, id: &str) -> Result<String> {
        let mut connection = self.connection().await?;
        let entry = redis::cmd("XADD")
            .arg(THINGS_STREAM)
            .arg("*")
            .arg("operation")
            .arg(operation)
            .arg("id")
            .arg(id)
            .query_async::<String>(&mut connection)
            .await
            .with_context(|| format!("XADD {THINGS_STREAM} * operation {operation} id {id}"))?;
        Ok(entry)
    }

    /// The value of a key, `None` when it is not set.
    pub async fn get(&self, key: &str) -> Result<Option<String>> {
        let mut connection = self.connection().await?;
        let value = redis::cmd("GET")
            .arg(key)
            .query_async::<Option<String>>(&mut connection)
            .await
            .with_context(|| format!("GET {key}"))?;
        Ok(value)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
