//! Helpers for end-to-end tests that read like prose: start the real `webhooks-host` binary
//! with the real plugin on a loopback port, talk to it over HTTP, stop and restart it.

pub mod broker;
pub mod delivery_log;
pub mod flows;
pub mod isolation;
pub mod orphans;
pub mod otlp;
pub mod receiver;
pub mod redis_server;
pub mod stored;
pub mod things_service;
pub mod times;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;

/// The group of the standard fixture's things `THING_1` and `THING_2`.
pub const GROUP_1: &str = "11111111-1111-4111-8111-111111111111";
/// The group of the standard fixture's thing `THING_3`.
pub const GROUP_2: &str = "22222222-2222-4222-8222-222222222222";
/// A thing of `GROUP_1`.
pub const THING_1: &str = "aaaaaaaa-0000-4000-8000-000000000001";
/// Another thing of `GROUP_1`.
pub const THING_2: &str = "aaaaaaaa-0000-4000-8000-000000000002";
/// A thing of `GROUP_2`.
pub const THING_3: &str = "aaaaaaaa-0000-4000-8000-000000000003";
/// Admin of `GROUP_1`.
pub const ADMIN: &str = "admin-token";
/// Editor of `GROUP_1`.
pub const EDITOR: &str = "editor-token";
/// Viewer of `GROUP_1`.
pub const VIEWER: &str = "viewer-token";
/// Admin of `GROUP_2` only.
pub const OTHER_ADMIN: &str = "other-admin-token";
/// A known user in no group.
pub const LONER: &str = "loner-token";

/// The standard registry of the tests: two groups, three things, five users.
pub fn standard_registry() -> Value {
    serde_json::json!({
        "users": [
            {"id": "u-admin", "token": ADMIN},
            {"id": "u-editor", "token": EDITOR},
            {"id": "u-viewer", "token": VIEWER},
            {"id": "u-other", "token": OTHER_ADMIN},
            {"id": "u-loner", "token": LONER}
        ],
        "groups": [
            {"id": GROUP_1, "name": "one", "members": {"u-admin": "admin", "u-editor": "editor", "u-viewer": "viewer"}},
            {"id": GROUP_2, "name": "two", "members": {"u-other": "admin"}}
        ],
        "things": [
            {"id": THING_1, "group_id": GROUP_1, "key": "key-1"},
            {"id": THING_2, "group_id": GROUP_1, "key": "key-2"},
            {"id": THING_3, "group_id": GROUP_2, "key": "key-3"}
        ]
    })
}

/// The build folder the test binary runs from (`target/release` or `target/debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash>
    // target/<profile>/bench for the benchmarks.
    let dir = exe.parent().expect("executable has a folder");
    if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent").to_owned()
    } else {
        dir.to_owned()
    }
}

/// The host binary under test: `WEBHOOKS_HOST_BIN`, else the release build beside the tests.
pub fn host_binary() -> PathBuf {
    if let Ok(path) = std::env::var("WEBHOOKS_HOST_BIN") {
        return path.into();
    }
    let profile = profile_dir();
    let beside = profile.join("webhooks-host");
    if beside.exists() {
        beside
    } else {
        profile.parent().unwrap().join("release/webhooks-host")
    }
}

/// The plugin under test: `WEBHOOKS_PLUGIN_WASM`, else the one `make build` writes.
pub fn plugin_component() -> PathBuf {
    if let Ok(path) = std::env::var("WEBHOOKS_PLUGIN_WASM") {
        return path.into();
    }
    profile_dir()
        .parent()
        .unwrap()
        .join("wasm32-wasip2/release/webhooks_plugin.wasm")
}

/// A test build of the plugin (`tagged`, `trap`, `spin`, `grow`, `partial`), as
/// `make plugin-variants` writes it under `target/plugin-variants/`.
pub fn plugin_variant(name: &str) -> PathBuf {
    profile_dir()
        .parent()
        .unwrap()
        .join(format!("plugin-variants/{name}.wasm"))
}

/// The bytes of a test build of the plugin (see [`plugin_variant`]).
pub fn plugin_variant_bytes(name: &str) -> Result<Vec<u8>> {
    let path = plugin_variant(name);
    std::fs::read(&path).with_context(|| format!("reading {} (run `make plugin-variants`)", path.display()))
}

/// A test transform (`echo`, `spin`, `grow`, `huge`, `trap`, `slow`), as
/// `make transform-variants` writes it under `target/transform-variants/`.
pub fn transform_variant_bytes(name: &str) -> Result<Vec<u8>> {
    let path = profile_dir()
        .parent()
        .unwrap()
        .join(format!("transform-variants/{name}.wasm"));
    std::fs::read(&path).with_context(|| format!("reading {} (run `make transform-variants`)", path.display()))
}

/// An example transform of `examples/transforms/` (`threshold_filter`, `slack_message`,
/// `senml_flatten`), as `make build` writes it.
pub fn example_transform_bytes(name: &str) -> Result<Vec<u8>> {
    let path = plugin_component().with_file_name(format!("{name}.wasm"));
    std::fs::read(&path).with_context(|| format!("reading {} (run `make build`)", path.display()))
}

/// The compile cache the suite's hosts share, in the build folder.
pub fn shared_plugin_cache() -> PathBuf {
    profile_dir().parent().unwrap().join("e2e-plugin-cache")
}

/// A fresh folder under the system's temporary folder, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates the folder.
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "webhooks-e2e-{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temporary folder");
        TempDir(path)
    }

    /// The folder's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port, never one this process handed out before: the port is only free
/// until its user binds it, and two hosts started at once that were told the same port had
/// the second one's test talk to the first host.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().expect("port list poisoned");
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// Whether process `pid` holds the socket listening on loopback port `port` (from `/proc`).
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let listening: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let listens = *fields.get(3)? == "0A";
            (listens && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| format!("socket:[{}]", fields.get(9).copied().unwrap_or_default()))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .any(|target| listening.iter().any(|socket| target.as_os_str() == socket.as_str()))
}

/// The store backend the suite runs against: `WEBHOOKS_TEST_STORE=postgres` for PostgreSQL
/// (with `WEBHOOKS_TEST_POSTGRES`, as `tests/services` sets), else SQLite.
pub fn postgres_suite() -> bool {
    std::env::var("WEBHOOKS_TEST_STORE").is_ok_and(|store| store == "postgres")
}

/// The URL of a new, empty database on the test PostgreSQL server (`WEBHOOKS_TEST_POSTGRES`).
pub fn postgres_database() -> Result<String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let admin = std::env::var("WEBHOOKS_TEST_POSTGRES")
        .context("WEBHOOKS_TEST_POSTGRES is not set: run the tests through tests/services (make test)")?;
    let name = format!(
        "e2e_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros()
    );
    let output = Command::new("psql")
        .arg(&admin)
        .args(["-v", "ON_ERROR_STOP=1", "-qc", &format!("CREATE DATABASE {name}")])
        .output()
        .context("running psql")?;
    if !output.status.success() {
        bail!("creating database {name}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let base = admin
        .rsplit_once('/')
        .context("WEBHOOKS_TEST_POSTGRES names a database")?
        .0;
    Ok(format!("{base}/{name}"))
}

/// A running `webhooks-host serve` with its own database, registry file and port.
pub struct TestHost {
    child: Option<Child>,
    /// Its storage URL: a SQLite file in its folder, or its own PostgreSQL database when the
    /// suite runs on PostgreSQL (see [`postgres_suite`]).
    pub db_url: String,
    /// Its folder: database, registry, log.
    pub dir: TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Extra environment variables it was started with.
    pub env: Vec<(String, String)>,
    client: reqwest::Client,
    /// `http`, or `https` once [`TestHost::over_https`] said so.
    scheme: &'static str,
}

impl TestHost {
    /// Starts a host with the standard registry.
    pub async fn start() -> Result<Self> {
        Self::start_with(standard_registry(), &[]).await
    }

    /// Starts a host with this registry and these extra variables.
    pub async fn start_with(registry: Value, env: &[(&str, &str)]) -> Result<Self> {
        let mut host = Self::prepare(registry, env)?;
        host.spawn().await?;
        Ok(host)
    }

    /// Sets up a host's folder, registry and port without starting it, for tests that run
    /// [`TestHost::command`] themselves (start-up failures, for one).
    pub fn prepare(registry: Value, env: &[(&str, &str)]) -> Result<Self> {
        let dir = TempDir::new("host");
        std::fs::write(dir.path().join("registry.json"), serde_json::to_vec_pretty(&registry)?)?;
        let db_url = if postgres_suite() {
            postgres_database()?
        } else {
            format!("sqlite://{}", dir.path().join("webhooks.db").display())
        };
        Ok(TestHost {
            child: None,
            db_url,
            dir,
            port: free_port(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            client: client_builder().build()?,
            scheme: "http",
        })
    }

    /// Speaks HTTPS to this host, trusting the CA certificates of this PEM file alone; the
    /// host is to be started with a certificate they signed (`MF_WEBHOOKS_SERVER_CERT`).
    pub fn over_https(mut self, ca_pem: &Path) -> Result<Self> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(ca_pem)? {
            roots.add(certificate?)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        self.client = client_builder().tls_backend_preconfigured(tls).build()?;
        self.scheme = "https";
        Ok(self)
    }

    /// The command line that starts this host, without running it.
    pub fn command(&self) -> Command {
        self.command_for("serve")
    }

    /// The command line of another `webhooks-host` command (`import`) with this host's
    /// configuration.
    pub fn command_for(&self, subcommand: &str) -> Command {
        let mut command = Command::new(host_binary());
        command
            .arg(subcommand)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MF_WEBHOOKS_HTTP_HOST", "127.0.0.1")
            .env("MF_WEBHOOKS_HTTP_PORT", self.port.to_string())
            .env("MF_WEBHOOKS_DB_URL", &self.db_url)
            .env("MF_WEBHOOKS_REGISTRY", self.registry_path())
            .env("MF_WEBHOOKS_PLUGIN", plugin_component())
            // One compile cache for the whole suite: each host maps the plugin instead of
            // compiling it again. Tests of the cache itself set their own.
            .env("MF_WEBHOOKS_PLUGIN_CACHE", shared_plugin_cache())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = self.command();
        let child = orphans::tie(&mut command)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", host_binary().display()))?;
        self.child = Some(child);
        self.wait_healthy().await
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("host exited with {status} during start-up; log:\n{}", self.log());
            }
            // A health answer alone may come from another process on the port, if this host
            // could not bind it.
            if let Ok(response) = self.client.get(self.url("/health")).send().await
                && response.status() == StatusCode::OK
                && self
                    .child
                    .as_ref()
                    .is_some_and(|child| listens_on(child.id(), self.port))
            {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("host not healthy after 30 s; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Where the registry file lives.
    pub fn registry_path(&self) -> PathBuf {
        self.dir.path().join("registry.json")
    }

    /// Where the host's output goes.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("host.log")
    }

    /// Everything the host has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The lines of the host's log that contain every one of `words`.
    pub fn log_lines_with(&self, words: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| words.iter().all(|word| line.contains(word)))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the host's log has a line containing every one of `words`; answers the
    /// last such line.
    pub async fn logged(&self, words: &[&str], within: Duration) -> Result<String> {
        let mut found = String::new();
        eventually(within, || {
            let lines = self.log_lines_with(words);
            found = lines.last().cloned().unwrap_or_default();
            let result = if lines.is_empty() {
                Err(anyhow::anyhow!("no log line with {words:?}; log:\n{}", self.log()))
            } else {
                Ok(())
            };
            async move { result }
        })
        .await?;
        Ok(found)
    }

    /// The URL of a path on this host.
    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    /// A request to a path, with a bearer token unless it is empty.
    pub fn request(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        let request = self.client.request(method, self.url(path));
        if token.is_empty() {
            request
        } else {
            request.bearer_auth(token)
        }
    }

    /// Sends a request with a JSON body and answers the status and the parsed body (`Null`
    /// when the body is empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut request = self.request(method, path, token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        read(response).await
    }

    /// Sends a request with a JSON body, expecting `status`; answers the parsed body.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        status: StatusCode,
    ) -> Result<Value> {
        let (got, answer) = self
            .call(method.clone(), path, token, body)
            .await
            .with_context(|| format!("{method} {path}"))?;
        if got != status {
            bail!("{method} {path} answered {got}, expected {status}: {answer}");
        }
        Ok(answer)
    }

    /// `PUT /admin/plugin` with these component bytes and this bearer token (none when
    /// empty); answers the status and the parsed body.
    pub async fn put_plugin(&self, token: &str, bytes: Vec<u8>) -> Result<(StatusCode, Value)> {
        let response = self
            .request(Method::PUT, "/admin/plugin", token)
            .body(bytes)
            .send()
            .await
            .context("PUT /admin/plugin")?;
        read(response).await
    }

    /// Stops the host with SIGTERM and waits for it to exit; answers its exit code.
    pub fn stop(&mut self) -> Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if started.elapsed() > Duration::from_secs(15) {
                child.kill()?;
                bail!("host ignored SIGTERM for 15 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of the running host, to send it signals.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends the host a signal (`TERM`, `HUP`, `INT`) without waiting for anything.
    pub fn signal(&self, name: &str) -> Result<()> {
        let pid = self.pid().context("the host is not running")?;
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{name} {pid} failed");
        }
        Ok(())
    }

    /// Kills the host with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the host again on the same port, database and registry.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn().await
    }

    /// Starts the host again on the same port, database and registry after [`TestHost::kill`]
    /// or [`TestHost::stop`].
    pub async fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the host is still running");
        }
        self.spawn().await
    }

    /// Sends raw bytes over a fresh TCP connection while reading the answer, for requests a
    /// client library will not send (a chunked body with no `Content-Length`). The bytes are
    /// written in the background so an early answer is read even if the host stops reading.
    pub async fn raw_exchange(&self, request: Vec<u8>) -> Result<RawResponse> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let (mut reader, mut writer) = stream.into_split();
        let writing = tokio::spawn(async move {
            for chunk in request.chunks(16 * 1024) {
                if writer.write_all(chunk).await.is_err() {
                    return;
                }
            }
            let _ = writer.flush().await;
            // Keep the write half open until the answer has been read.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let mut received = Vec::new();
        let mut buffer = [0u8; 16 * 1024];
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(response) = RawResponse::parse(&received)? {
                    return Ok(response);
                }
                let read = reader.read(&mut buffer).await?;
                if read == 0 {
                    bail!(
                        "connection closed before a whole answer: {:?}",
                        String::from_utf8_lossy(&received)
                    );
                }
                received.extend_from_slice(&buffer[..read]);
            }
        })
        .await;
        writing.abort();
        answer.context("no answer within 30 s")?
    }

    /// Replaces the registry file by writing a temporary file and renaming it over.
    pub fn replace_registry(&self, registry: &Value) -> Result<()> {
        let temporary = self.dir.path().join("registry.json.new");
        std::fs::write(&temporary, serde_json::to_vec_pretty(registry)?)?;
        std::fs::rename(temporary, self.registry_path())?;
        Ok(())
    }

    /// Rewrites the registry file in place.
    pub fn rewrite_registry(&self, content: &[u8]) -> Result<()> {
        std::fs::write(self.registry_path(), content)?;
        Ok(())
    }

    /// Creates webhooks for a thing as `token`, expecting 201; answers them.
    pub async fn create(&self, thing: &str, token: &str, webhooks: Value) -> Result<Vec<Value>> {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/things/{thing}/webhooks"),
                token,
                Some(webhooks),
            )
            .await?;
        if status != StatusCode::CREATED {
            bail!("create answered {status}: {body}");
        }
        Ok(serde_json::from_value(body)?)
    }
}

/// A throwaway CA and a server certificate it signed for 127.0.0.1, made by the `openssl`
/// command line; answers the folder holding `ca.pem`, `server.pem` and `server.key`.
pub fn test_certificates() -> Result<TempDir> {
    let dir = TempDir::new("tls");
    let run = |args: &[&str]| -> Result<()> {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .context("running openssl")?;
        anyhow::ensure!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=webhooks test CA",
        ],
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    ]
    .concat())?;
    run(&[
        &["req"][..],
        &ec,
        &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
    ]
    .concat())?;
    std::fs::write(
        dir.path().join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ])?;
    Ok(dir)
}

/// The capabilities of a plugin runtime run inside the test process (the runtime tests and
/// `bench runtime`): a SQLite store and the standard registry in `dir`, the default outbound
/// client, and these delivery settings.
pub async fn in_process_capabilities(
    dir: &Path,
    settings: webhooks_host::settings::DeliverySettings,
) -> Result<webhooks_host::runtime::Capabilities> {
    let registry = dir.join("registry.json");
    std::fs::write(&registry, serde_json::to_vec(&standard_registry())?)?;
    Ok(webhooks_host::runtime::Capabilities {
        store: webhooks_host::store::open(&format!("sqlite://{}", dir.join("db").display()), 1).await?,
        identity: Arc::new(webhooks_host::identity::registry::RegistryBackend::open(&registry)?),
        outbound: webhooks_host::outbound::OutboundClient::new(webhooks_host::outbound::OutboundConfig::default())?,
        settings: Arc::new(settings),
        transforms: webhooks_host::transform::Transforms::new(Default::default(), None)?,
    })
}

/// A new HTTP client's settings, with a 30 s timeout; every client of the tests and the bench
/// starts here, since reqwest builds its TLS settings even for plain HTTP, from the process's
/// default rustls provider, which this installs once.
pub fn client_builder() -> reqwest::ClientBuilder {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        // Err only when another thread installed one first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().timeout(Duration::from_secs(30))
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads an answer: its status and parsed JSON body (`Null` when empty), checking that every
/// error answer has the JSON error shape.
pub async fn read(response: reqwest::Response) -> Result<(StatusCode, Value)> {
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = response.bytes().await?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{status}: body is not JSON: {}", String::from_utf8_lossy(&bytes)))?
    };
    if status.is_client_error() || status.is_server_error() {
        if content_type != "application/json" {
            bail!("{status} answered with Content-Type {content_type:?}");
        }
        if !body.get("error").is_some_and(Value::is_string) {
            bail!("{status} answered without an error sentence: {body}");
        }
    }
    Ok((status, body))
}

/// An HTTP/1.1 answer read off a raw connection by [`TestHost::raw_exchange`].
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: StatusCode,
    /// The `Content-Type` header, empty when absent.
    pub content_type: String,
    /// The body parsed as JSON, `Null` when empty.
    pub body: Value,
}

impl RawResponse {
    /// Parses a whole answer with a `Content-Length` body; `None` while bytes are missing.
    fn parse(bytes: &[u8]) -> Result<Option<Self>> {
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&bytes[..end])?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let code: u16 = status_line
            .split(' ')
            .nth(1)
            .context("status line without a code")?
            .parse()?;
        let mut content_type = String::new();
        let mut length = 0usize;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "content-type" => content_type = value.trim().to_owned(),
                "content-length" => length = value.trim().parse()?,
                _ => {}
            }
        }
        let body = &bytes[end + 4..];
        if body.len() < length {
            return Ok(None);
        }
        let body = &body[..length];
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body)?
        };
        Ok(Some(RawResponse {
            status: StatusCode::from_u16(code)?,
            content_type,
            body,
        }))
    }
}

/// Runs a command to its end within `within` (killing it after that), capturing its output.
pub fn run_to_exit(mut command: Command, within: Duration) -> Result<std::process::Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    while child.try_wait()?.is_none() {
        if started.elapsed() > within {
            child.kill()?;
            let output = child.wait_with_output()?;
            bail!(
                "still running after {within:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

/// Retries an assertion until it holds or `within` has passed.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(e) if started.elapsed() > within => return Err(e.context(format!("still failing after {within:?}"))),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
