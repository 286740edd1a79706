//! The command line and configuration: every `serve` option is a flag and an environment
//! variable of SPEC.md section 1.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The wasmtime host of the webhooks service.
#[derive(Debug, Parser)]
#[command(name = "webhooks-host", version, about, long_about = None, arg_required_else_help = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The host's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: REST API, plugin runtime, storage and identity.
    Serve(Box<ServeConfig>),
    /// Import the webhooks the platform's Go webhooks service kept in its PostgreSQL database
    /// (configured as for serve), keeping their ids, and print how many were imported and
    /// skipped; `serve` does it once by itself on its first start.
    Import(Box<ServeConfig>),
    /// Say whether a component implements the webhooks world, and list what it imports and
    /// exports, before swapping it in.
    CheckPlugin(CheckPluginArgs),
}

/// The arguments of `webhooks-host check-plugin`.
#[derive(Debug, Clone, Args)]
pub struct CheckPluginArgs {
    /// The component (`.wasm`) to check.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// The level of detail of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Everything, including each plugin call.
    Debug,
    /// One line per request and event.
    Info,
    /// Only what needs attention.
    Warn,
    /// Only failures.
    Error,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable key=value lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The configuration of `webhooks-host serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Port of the REST API.
    #[arg(
        long,
        env = "MF_WEBHOOKS_HTTP_PORT",
        value_name = "MF_WEBHOOKS_HTTP_PORT",
        default_value_t = 9021
    )]
    pub http_port: u16,

    /// Longest wait for a request's head, and for each part of its body, before the
    /// connection is dropped (e.g. 30s).
    #[arg(long, env = "MF_WEBHOOKS_HTTP_READ_TIMEOUT", value_name = "MF_WEBHOOKS_HTTP_READ_TIMEOUT", default_value = "30s", value_parser = parse_nonzero_duration)]
    pub http_read_timeout: Duration,

    /// Most client connections open at once; further clients wait to be accepted.
    #[arg(long, env = "MF_WEBHOOKS_HTTP_MAX_CONNECTIONS", value_name = "MF_WEBHOOKS_HTTP_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,

    /// Address the REST API binds to.
    #[arg(
        long,
        env = "MF_WEBHOOKS_HTTP_HOST",
        value_name = "MF_WEBHOOKS_HTTP_HOST",
        default_value = "0.0.0.0"
    )]
    pub http_host: String,

    /// Storage: sqlite://PATH (created if missing) or postgres://USER:PASS@HOST:PORT/DB
    /// [default: sqlite://./data/webhooks.db, or PostgreSQL from the MF_WEBHOOKS_DB_* parts
    /// below when any of them is set].
    #[arg(
        long,
        env = "MF_WEBHOOKS_DB_URL",
        value_name = "MF_WEBHOOKS_DB_URL",
        // May carry a password: the value is never printed.
        hide_env_values = true
    )]
    pub db_url: Option<String>,

    /// PostgreSQL host, as the platform's Go webhooks service names it [default: localhost].
    #[arg(long, env = "MF_WEBHOOKS_DB_HOST", value_name = "MF_WEBHOOKS_DB_HOST")]
    pub db_host: Option<String>,

    /// PostgreSQL port [default: 5432].
    // A string: the Go service's compose files may set it empty, which means unset.
    #[arg(long, env = "MF_WEBHOOKS_DB_PORT", value_name = "MF_WEBHOOKS_DB_PORT")]
    pub db_port: Option<String>,

    /// PostgreSQL user [default: mainflux].
    #[arg(long, env = "MF_WEBHOOKS_DB_USER", value_name = "MF_WEBHOOKS_DB_USER")]
    pub db_user: Option<String>,

    /// PostgreSQL password [default: mainflux].
    #[arg(
        long,
        env = "MF_WEBHOOKS_DB_PASS",
        value_name = "MF_WEBHOOKS_DB_PASS",
        hide_env_values = true
    )]
    pub db_pass: Option<String>,

    /// PostgreSQL database [default: webhooks].
    #[arg(long = "db", env = "MF_WEBHOOKS_DB", value_name = "MF_WEBHOOKS_DB")]
    pub db_name: Option<String>,

    /// PostgreSQL SSL mode, as libpq's: disable, allow, prefer, require, verify-ca or verify-full
    /// [default: disable].
    #[arg(long, env = "MF_WEBHOOKS_DB_SSL_MODE", value_name = "MF_WEBHOOKS_DB_SSL_MODE")]
    pub db_ssl_mode: Option<String>,

    /// PEM file of the client certificate PostgreSQL may ask for, with MF_WEBHOOKS_DB_SSL_KEY.
    #[arg(long, env = "MF_WEBHOOKS_DB_SSL_CERT", value_name = "MF_WEBHOOKS_DB_SSL_CERT")]
    pub db_ssl_cert: Option<String>,

    /// PEM file of that client certificate's private key.
    #[arg(long, env = "MF_WEBHOOKS_DB_SSL_KEY", value_name = "MF_WEBHOOKS_DB_SSL_KEY")]
    pub db_ssl_key: Option<String>,

    /// PEM file of the CA certificates PostgreSQL's certificate is checked with [default: the
    /// web PKI roots].
    #[arg(
        long,
        env = "MF_WEBHOOKS_DB_SSL_ROOT_CERT",
        value_name = "MF_WEBHOOKS_DB_SSL_ROOT_CERT"
    )]
    pub db_ssl_root_cert: Option<String>,

    /// PEM file of the certificate chain the REST API is served with over HTTPS; with
    /// MF_WEBHOOKS_SERVER_KEY. Unset: plain HTTP.
    #[arg(long, env = "MF_WEBHOOKS_SERVER_CERT", value_name = "MF_WEBHOOKS_SERVER_CERT")]
    pub server_cert: Option<String>,

    /// PEM file of the private key of MF_WEBHOOKS_SERVER_CERT.
    #[arg(long, env = "MF_WEBHOOKS_SERVER_KEY", value_name = "MF_WEBHOOKS_SERVER_KEY")]
    pub server_key: Option<String>,

    /// OTLP/HTTP endpoint that traces are exported to, e.g. http://jaeger:4318 (Jaeger or any
    /// OpenTelemetry collector; `/v1/traces` is added to a URL without a path); unset: the
    /// standard OTEL_EXPORTER_OTLP_ENDPOINT, else no traces. Another value (the Go service's
    /// Jaeger agent address, HOST:6831) is logged and ignored.
    #[arg(long, env = "MF_JAEGER_URL", value_name = "MF_JAEGER_URL")]
    pub jaeger_url: Option<String>,

    /// The platform's auth service, as the Go webhooks service names it: accepted and unused,
    /// since the things service answers every access question.
    #[arg(long, env = "MF_AUTH_GRPC_URL", value_name = "MF_AUTH_GRPC_URL")]
    pub auth_grpc_url: Option<String>,

    /// Time limit of calls to the auth service: accepted and unused, as MF_AUTH_GRPC_URL.
    #[arg(long, env = "MF_AUTH_GRPC_TIMEOUT", value_name = "MF_AUTH_GRPC_TIMEOUT")]
    pub auth_grpc_timeout: Option<String>,

    /// The platform's things service, HOST:PORT; when set, identity comes from it over gRPC
    /// instead of the registry file.
    #[arg(
        long,
        env = "MF_THINGS_AUTH_GRPC_URL",
        value_name = "MF_THINGS_AUTH_GRPC_URL",
        default_value = ""
    )]
    pub things_grpc_url: String,

    /// Time limit of one call to the things service (e.g. 1s).
    #[arg(long, env = "MF_THINGS_AUTH_GRPC_TIMEOUT", value_name = "MF_THINGS_AUTH_GRPC_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub things_grpc_timeout: Duration,

    /// Speak TLS to the things service.
    #[arg(
        long,
        env = "MF_WEBHOOKS_CLIENT_TLS",
        value_name = "MF_WEBHOOKS_CLIENT_TLS",
        default_value = "false",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub client_tls: bool,

    /// PEM file of the CA certificates the things service is verified with; empty: the web PKI roots.
    #[arg(
        long,
        env = "MF_WEBHOOKS_CA_CERTS",
        value_name = "MF_WEBHOOKS_CA_CERTS",
        default_value = ""
    )]
    pub ca_certs: String,

    /// The platform's Redis event stream, redis://HOST:PORT/DB; its thing.remove and
    /// group.remove events remove webhooks. Empty: not followed.
    #[arg(
        long,
        env = "MF_WEBHOOKS_ES_URL",
        value_name = "MF_WEBHOOKS_ES_URL",
        // May carry a password: the value is never printed.
        hide_env_values = true,
        default_value = ""
    )]
    pub es_url: String,

    /// The key the event stream's cursor is kept under in Redis.
    #[arg(
        long,
        env = "MF_WEBHOOKS_EVENT_CONSUMER",
        value_name = "MF_WEBHOOKS_EVENT_CONSUMER",
        default_value = "webhooks"
    )]
    pub event_consumer: String,

    /// Most pooled connections to PostgreSQL (unused with SQLite).
    #[arg(long, env = "MF_WEBHOOKS_DB_POOL", value_name = "MF_WEBHOOKS_DB_POOL", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub db_pool: u16,

    /// NATS server whose JetStream subject `webhooks` (stream `mainflux`) is consumed as
    /// durable queue consumer `webhooks_webhooks`, e.g. nats://127.0.0.1:4222; empty: no broker.
    // May carry credentials (nats://USER:PASS@HOST): the value is never printed.
    #[arg(
        long,
        env = "MF_BROKER_URL",
        value_name = "MF_BROKER_URL",
        default_value = "",
        hide_env_values = true
    )]
    pub broker_url: String,

    /// Path of the identity registry file (users, groups, things), re-read when it changes.
    #[arg(
        long,
        env = "MF_WEBHOOKS_REGISTRY",
        value_name = "MF_WEBHOOKS_REGISTRY",
        default_value = "./examples/registry.json"
    )]
    pub registry: PathBuf,

    /// Path of the webhook logic component [default: the one `make build` writes,
    /// target/wasm32-wasip2/release/webhooks_plugin.wasm]
    #[arg(long, env = "MF_WEBHOOKS_PLUGIN", value_name = "MF_WEBHOOKS_PLUGIN")]
    pub plugin: Option<PathBuf>,

    /// Let webhooks target loopback, private, link-local and unspecified addresses.
    #[arg(
        long,
        env = "MF_WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS",
        value_name = "MF_WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS",
        default_value = "false",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_private_destinations: bool,

    /// Longest wait for one delivery attempt, answer included (e.g. 15s).
    #[arg(long, env = "MF_WEBHOOKS_DELIVERY_TIMEOUT", value_name = "MF_WEBHOOKS_DELIVERY_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,

    /// Most delivery requests in flight toward one receiver (scheme, host and port) at once;
    /// further ones wait their turn within their timeout, and connections are reused.
    #[arg(long, env = "MF_WEBHOOKS_DESTINATION_MAX_IN_FLIGHT", value_name = "MF_WEBHOOKS_DESTINATION_MAX_IN_FLIGHT", default_value_t = crate::outbound::IN_FLIGHT_PER_DESTINATION as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub destination_max_in_flight: u32,

    /// Delays before each retry of a failed delivery, comma-separated (e.g. 5s,5m,30m).
    #[arg(long, env = "MF_WEBHOOKS_RETRY_SCHEDULE", value_name = "MF_WEBHOOKS_RETRY_SCHEDULE", default_value = "5s,5m,30m,2h,5h,10h,10h", value_parser = crate::settings::parse_schedule)]
    pub retry_schedule: RetrySchedule,

    /// How long deliveries and message ids are kept (e.g. 14d).
    #[arg(long, env = "MF_WEBHOOKS_RETENTION", value_name = "MF_WEBHOOKS_RETENTION", default_value = "14d", value_parser = parse_duration)]
    pub retention: Duration,

    /// Log level.
    #[arg(
        long,
        env = "MF_WEBHOOKS_LOG_LEVEL",
        value_name = "MF_WEBHOOKS_LOG_LEVEL",
        value_enum,
        default_value = "info"
    )]
    pub log_level: LogLevel,

    /// Log format.
    #[arg(
        long,
        env = "MF_WEBHOOKS_LOG_FORMAT",
        value_name = "MF_WEBHOOKS_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Largest linear memory of one plugin call (e.g. 64MiB).
    #[arg(long, env = "MF_WEBHOOKS_PLUGIN_MEMORY", value_name = "MF_WEBHOOKS_PLUGIN_MEMORY", default_value = "64MiB", value_parser = parse_bytes)]
    pub plugin_memory: usize,

    /// Folder of compiled plugin code, keyed by the component's hash and the engine's settings,
    /// so a restart does not compile again; empty turns the cache off.
    #[arg(
        long,
        env = "MF_WEBHOOKS_PLUGIN_CACHE",
        value_name = "MF_WEBHOOKS_PLUGIN_CACHE",
        default_value = "./data/plugin-cache"
    )]
    // A string, not a path: an empty value is meaningful (no cache), and clap refuses empty paths.
    pub plugin_cache: String,

    /// Bearer token of `PUT /admin/plugin`, which swaps the plugin without a restart; unset
    /// turns the endpoint off.
    #[arg(
        long,
        env = "MF_WEBHOOKS_ADMIN_TOKEN",
        value_name = "MF_WEBHOOKS_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Longest wall time of one plugin call (e.g. 10s).
    #[arg(long, env = "MF_WEBHOOKS_PLUGIN_DEADLINE", value_name = "MF_WEBHOOKS_PLUGIN_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub plugin_deadline: Duration,

    /// Largest excess of a canary's failures per call over the active version's (0 to 1)
    /// before the canary is dropped by itself.
    #[arg(long, env = "MF_WEBHOOKS_CANARY_MAX_ERROR_RATE", value_name = "MF_WEBHOOKS_CANARY_MAX_ERROR_RATE", default_value = "0.01", value_parser = parse_rate)]
    pub canary_max_error_rate: f64,

    /// How far back a canary's calls count when it is judged (e.g. 60s).
    #[arg(long, env = "MF_WEBHOOKS_CANARY_WINDOW", value_name = "MF_WEBHOOKS_CANARY_WINDOW", default_value = "60s", value_parser = parse_nonzero_duration)]
    pub canary_window: Duration,

    /// Most messages the things of one group may publish per second, over HTTP and the broker
    /// together on this host; 0 for no limit. Beyond it a publish gets `429` with `Retry-After`.
    #[arg(
        long,
        env = "MF_WEBHOOKS_QUOTA_PUBLISH_RATE",
        value_name = "MF_WEBHOOKS_QUOTA_PUBLISH_RATE",
        default_value_t = 0
    )]
    pub quota_publish_rate: u32,

    /// Most deliveries of one group waiting for or in their attempt on this host; 0 for no
    /// limit. Beyond it a publish gets `429` with `Retry-After`.
    #[arg(
        long,
        env = "MF_WEBHOOKS_QUOTA_PENDING",
        value_name = "MF_WEBHOOKS_QUOTA_PENDING",
        default_value_t = 0
    )]
    pub quota_pending: u32,

    /// Most webhooks one group may have; 0 for no limit. A create that would pass it is
    /// refused whole with `409`.
    #[arg(
        long,
        env = "MF_WEBHOOKS_QUOTA_WEBHOOKS",
        value_name = "MF_WEBHOOKS_QUOTA_WEBHOOKS",
        default_value_t = 0
    )]
    pub quota_webhooks: u32,

    /// Largest linear memory of one transform call (e.g. 16MiB).
    #[arg(long, env = "MF_WEBHOOKS_TRANSFORM_MEMORY", value_name = "MF_WEBHOOKS_TRANSFORM_MEMORY", default_value = "16MiB", value_parser = parse_bytes)]
    pub transform_memory: usize,

    /// Longest wall time of one transform call, its instantiation included (e.g. 10ms).
    #[arg(long, env = "MF_WEBHOOKS_TRANSFORM_DEADLINE", value_name = "MF_WEBHOOKS_TRANSFORM_DEADLINE", default_value = "10ms", value_parser = parse_nonzero_duration)]
    pub transform_deadline: Duration,

    /// Most webhooks of one group with a transform; 0 for no limit. An attach that would pass
    /// it is refused with `409`.
    #[arg(
        long,
        env = "MF_WEBHOOKS_TRANSFORM_QUOTA",
        value_name = "MF_WEBHOOKS_TRANSFORM_QUOTA",
        default_value_t = 100
    )]
    pub transform_quota: u32,
}

/// A rate from 0 to 1.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("expected a rate from 0 to 1, such as 0.01, not {text:?}")),
    }
}

/// The store when neither `MF_WEBHOOKS_DB_URL` nor any database part is set.
pub const DEFAULT_DB_URL: &str = "sqlite://./data/webhooks.db";

/// A configuration variable at fault and what is wrong with it, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFault {
    /// The variable to fix.
    pub variable: &'static str,
    /// What is wrong.
    pub message: String,
}

fn config_fault(variable: &'static str, message: impl Into<String>) -> ConfigFault {
    ConfigFault {
        variable,
        message: message.into(),
    }
}

impl ServeConfig {
    /// The store to open: `MF_WEBHOOKS_DB_URL`; else, when any of the Go service's database
    /// variables is set, PostgreSQL built from them with that service's defaults for the
    /// others; else [`DEFAULT_DB_URL`]. A URL and parts that disagree are refused, naming the
    /// part, never a password.
    pub fn store_url(&self) -> Result<String, ConfigFault> {
        let db_url = set(&self.db_url);
        let any_part = [
            &self.db_host,
            &self.db_port,
            &self.db_user,
            &self.db_pass,
            &self.db_name,
            &self.db_ssl_mode,
            &self.db_ssl_cert,
            &self.db_ssl_key,
            &self.db_ssl_root_cert,
        ]
        .into_iter()
        .any(|part| set(part).is_some());
        if !any_part {
            return Ok(db_url.unwrap_or(DEFAULT_DB_URL).to_owned());
        }
        let db_port = match set(&self.db_port) {
            None => None,
            Some(port) => Some(
                port.parse::<u16>()
                    .map_err(|_| config_fault("MF_WEBHOOKS_DB_PORT", format!("{port:?} is not a port number")))?,
            ),
        };
        let Some(url) = db_url else {
            return Ok(self.url_from_parts(db_port));
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(config_fault(
                "MF_WEBHOOKS_DB_URL",
                format!(
                    "{} is not PostgreSQL, but MF_WEBHOOKS_DB_* parts are set; set the URL or the parts",
                    redact_url(url)
                ),
            ));
        }
        let given: tokio_postgres::Config = url
            .parse()
            .map_err(|e| config_fault("MF_WEBHOOKS_DB_URL", format!("not a PostgreSQL URL: {e}")))?;
        let host = given.get_hosts().first().map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        });
        let port = given.get_ports().first().copied().unwrap_or(5432);
        let disagrees = |variable: &'static str, what: String| {
            config_fault(
                variable,
                format!("disagrees with MF_WEBHOOKS_DB_URL: {what}; set one or the other"),
            )
        };
        if let Some(part) = set(&self.db_host)
            && host.as_deref() != Some(part)
        {
            return Err(disagrees(
                "MF_WEBHOOKS_DB_HOST",
                format!("{part} against {}", host.unwrap_or_default()),
            ));
        }
        if let Some(part) = db_port
            && part != port
        {
            return Err(disagrees("MF_WEBHOOKS_DB_PORT", format!("{part} against {port}")));
        }
        if let Some(part) = set(&self.db_user)
            && given.get_user() != Some(part)
        {
            return Err(disagrees(
                "MF_WEBHOOKS_DB_USER",
                format!("{part} against {}", given.get_user().unwrap_or_default()),
            ));
        }
        if let Some(part) = set(&self.db_pass)
            && given.get_password() != Some(part.as_bytes())
        {
            return Err(disagrees("MF_WEBHOOKS_DB_PASS", "the passwords differ".to_owned()));
        }
        if let Some(part) = set(&self.db_ssl_mode)
            && url.contains("sslmode=")
            && let Ok(mode) = crate::store::tls::SslMode::parse(part)
            && mode.negotiation() != given.get_ssl_mode()
        {
            return Err(disagrees(
                "MF_WEBHOOKS_DB_SSL_MODE",
                format!("{part} against the URL's sslmode"),
            ));
        }
        if let Some(part) = set(&self.db_name)
            && given.get_dbname() != Some(part)
        {
            return Err(disagrees(
                "MF_WEBHOOKS_DB",
                format!("{part} against {}", given.get_dbname().unwrap_or_default()),
            ));
        }
        Ok(url.to_owned())
    }

    /// PostgreSQL's TLS settings from `MF_WEBHOOKS_DB_SSL_MODE` and its three files, checked
    /// here (files read, modes known) so a mistake stops start-up naming its variable. With the
    /// other database parts and no mode, `disable`, the Go service's default; with only a URL,
    /// the URL's own `sslmode`.
    pub fn database_tls(&self) -> Result<crate::store::tls::TlsSettings, ConfigFault> {
        use crate::store::tls::{SslMode, TlsSettings};
        let mode = match set(&self.db_ssl_mode) {
            Some(mode) => Some(SslMode::parse(mode).map_err(|e| config_fault("MF_WEBHOOKS_DB_SSL_MODE", e))?),
            None if set(&self.db_url).is_none() => Some(SslMode::Disable),
            None => None,
        };
        let settings = TlsSettings {
            mode,
            root_cert: set(&self.db_ssl_root_cert).map(PathBuf::from),
            client_cert: set(&self.db_ssl_cert).map(PathBuf::from),
            client_key: set(&self.db_ssl_key).map(PathBuf::from),
        };
        settings.connector().map_err(|fault| {
            let variable = match fault.setting {
                "client certificate" => "MF_WEBHOOKS_DB_SSL_CERT",
                "client key" => "MF_WEBHOOKS_DB_SSL_KEY",
                _ => "MF_WEBHOOKS_DB_SSL_ROOT_CERT",
            };
            config_fault(variable, fault.message)
        })?;
        Ok(settings)
    }

    /// `postgres://` from the database parts, with the Go service's defaults.
    fn url_from_parts(&self, port: Option<u16>) -> String {
        let host = set(&self.db_host).unwrap_or("localhost");
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        format!(
            "postgres://{}:{}@{host}:{}/{}",
            url_encoded(set(&self.db_user).unwrap_or("mainflux")),
            url_encoded(set(&self.db_pass).unwrap_or("mainflux")),
            port.unwrap_or(5432),
            url_encoded(set(&self.db_name).unwrap_or("webhooks")),
        )
    }

    /// The plugin to load: the configured path, else the one `make build` writes, looked for
    /// beside this executable's build folder and then under the working directory.
    pub fn plugin_path(&self) -> PathBuf {
        if let Some(path) = &self.plugin {
            return path.clone();
        }
        let relative = PathBuf::from("wasm32-wasip2/release/webhooks_plugin.wasm");
        if let Ok(exe) = std::env::current_exe()
            && let Some(target) = exe.parent().and_then(|release| release.parent())
        {
            let beside = target.join(&relative);
            if beside.exists() {
                return beside;
            }
        }
        PathBuf::from("target").join(relative)
    }

    /// The compile cache folder, unless turned off.
    pub fn plugin_cache_dir(&self) -> Option<PathBuf> {
        (!self.plugin_cache.is_empty()).then(|| PathBuf::from(&self.plugin_cache))
    }

    /// Where compiled transforms are kept: beside the plugin's compiled code, when that is kept.
    pub fn transform_cache_dir(&self) -> Option<PathBuf> {
        self.plugin_cache_dir().map(|dir| dir.join("transforms"))
    }

    /// The certificate chain and key files of HTTPS on the API, when both are set; one
    /// without the other is refused, naming the missing one.
    pub fn server_tls(&self) -> Result<Option<(PathBuf, PathBuf)>, ConfigFault> {
        match (set(&self.server_cert), set(&self.server_key)) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some((PathBuf::from(cert), PathBuf::from(key)))),
            (Some(_), None) => Err(config_fault(
                "MF_WEBHOOKS_SERVER_KEY",
                "is required with MF_WEBHOOKS_SERVER_CERT to serve HTTPS",
            )),
            (None, Some(_)) => Err(config_fault(
                "MF_WEBHOOKS_SERVER_CERT",
                "is required with MF_WEBHOOKS_SERVER_KEY to serve HTTPS",
            )),
        }
    }

    /// The admin token, unless unset or empty.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref().filter(|token| !token.is_empty())
    }

    /// The quotas per group on intake.
    pub fn quotas(&self) -> crate::tenancy::Quotas {
        crate::tenancy::Quotas {
            publish_rate: self.quota_publish_rate,
            pending: self.quota_pending as usize,
            ..crate::tenancy::Quotas::default()
        }
    }
}

/// A variable's value unless unset or empty: compose files often list every variable of the
/// Go service, leaving the unused ones empty.
fn set(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|value| !value.is_empty())
}

/// A URL fit for logs: the password of its user information, if any, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            // A database names its user here; NATS and others may put a token there instead.
            None if scheme.starts_with("postgres") => url.to_owned(),
            None => format!("{scheme}://***@{host}{path}"),
        },
        None => url.to_owned(),
    }
}

/// Percent-encodes all but the unreserved characters, for a URL's user, password or path.
fn url_encoded(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A parsed retry schedule.
pub type RetrySchedule = Vec<Duration>;

/// Parses a size such as `64MiB`, `512KiB`, `1GiB`, `65536`.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 64MiB"))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?}; use B, KiB, MiB or GiB")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a duration such as `30s` that must not be zero.
pub fn parse_nonzero_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("{text:?} is zero; give a duration such as 30s")),
        duration => Ok(duration),
    }
}

/// Parses a duration such as `10s`, `500ms`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("{text:?} is not a duration such as 10s: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5PiB").is_err());
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn redacted_urls_keep_everything_but_the_password() {
        assert_eq!(
            redact_url("postgres://app:s3cr%40t@db.internal:5432/webhooks?sslmode=disable"),
            "postgres://app:***@db.internal:5432/webhooks?sslmode=disable"
        );
        assert_eq!(
            redact_url("redis://:pw@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(redact_url("nats://s3cr3t@127.0.0.1:4222"), "nats://***@127.0.0.1:4222");
        assert_eq!(redact_url("postgres://app@db/webhooks"), "postgres://app@db/webhooks");
        assert_eq!(redact_url("sqlite://./data/webhooks.db"), "sqlite://./data/webhooks.db");
        assert_eq!(redact_url("postgres://a:b@c/d@e"), "postgres://a:***@c/d@e");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    fn serve_with(env: &[(&str, &str)]) -> ServeConfig {
        let mut args = vec!["webhooks-host".to_owned(), "serve".to_owned()];
        for (name, value) in env {
            let flag = match *name {
                "MF_WEBHOOKS_DB" => "--db".to_owned(),
                "MF_AUTH_GRPC_URL" => "--auth-grpc-url".to_owned(),
                "MF_JAEGER_URL" => "--jaeger-url".to_owned(),
                other => format!(
                    "--{}",
                    other
                        .trim_start_matches("MF_WEBHOOKS_")
                        .to_lowercase()
                        .replace('_', "-")
                ),
            };
            args.push(format!("{flag}={value}"));
        }
        match Cli::try_parse_from(args).unwrap().command {
            Command::Serve(config) => *config,
            Command::CheckPlugin(_) | Command::Import(_) => unreachable!(),
        }
    }

    #[test]
    fn the_go_services_database_parts_build_a_postgresql_url_with_its_defaults() {
        assert_eq!(serve_with(&[]).store_url().unwrap(), DEFAULT_DB_URL);
        assert_eq!(
            serve_with(&[("MF_WEBHOOKS_DB_HOST", "db.internal")])
                .store_url()
                .unwrap(),
            "postgres://mainflux:mainflux@db.internal:5432/webhooks"
        );
        assert_eq!(
            serve_with(&[
                ("MF_WEBHOOKS_DB_USER", "app"),
                ("MF_WEBHOOKS_DB_PASS", "p@ss:w/rd"),
                ("MF_WEBHOOKS_DB_PORT", "6543"),
                ("MF_WEBHOOKS_DB", "hooks"),
                ("MF_WEBHOOKS_DB_SSL_MODE", "disable"),
            ])
            .store_url()
            .unwrap(),
            "postgres://app:p%40ss%3Aw%2Frd@localhost:6543/hooks"
        );
        let parsed: tokio_postgres::Config = "postgres://app:p%40ss%3Aw%2Frd@localhost:6543/hooks".parse().unwrap();
        assert_eq!(
            parsed.get_password(),
            Some(&b"p@ss:w/rd"[..]),
            "the password survives encoding"
        );
        assert_eq!(
            serve_with(&[("MF_WEBHOOKS_DB_HOST", "::1")]).store_url().unwrap(),
            "postgres://mainflux:mainflux@[::1]:5432/webhooks"
        );
    }

    #[test]
    fn a_url_and_parts_that_disagree_are_refused_naming_the_part_and_no_password() {
        let url = ("MF_WEBHOOKS_DB_URL", "postgres://app:s3cret@db:5432/hooks");
        assert_eq!(
            serve_with(&[url, ("MF_WEBHOOKS_DB_HOST", "db"), ("MF_WEBHOOKS_DB_PASS", "s3cret")])
                .store_url()
                .unwrap(),
            url.1,
            "parts that agree are fine"
        );
        for (part, variable) in [
            (("MF_WEBHOOKS_DB_HOST", "other"), "MF_WEBHOOKS_DB_HOST"),
            (("MF_WEBHOOKS_DB_PORT", "5433"), "MF_WEBHOOKS_DB_PORT"),
            (("MF_WEBHOOKS_DB_USER", "root"), "MF_WEBHOOKS_DB_USER"),
            (("MF_WEBHOOKS_DB_PASS", "guess"), "MF_WEBHOOKS_DB_PASS"),
            (("MF_WEBHOOKS_DB", "other"), "MF_WEBHOOKS_DB"),
        ] {
            let fault = serve_with(&[url, part]).store_url().unwrap_err();
            assert_eq!(fault.variable, variable);
            assert!(
                !fault.message.contains("s3cret") && !fault.message.contains("guess"),
                "{fault:?}"
            );
        }
        let fault = serve_with(&[("MF_WEBHOOKS_DB_URL", "sqlite://./x.db"), ("MF_WEBHOOKS_DB_HOST", "db")])
            .store_url()
            .unwrap_err();
        assert_eq!(fault.variable, "MF_WEBHOOKS_DB_URL");
        let fault = serve_with(&[
            ("MF_WEBHOOKS_DB_URL", "postgres://app@db/hooks?sslmode=disable"),
            ("MF_WEBHOOKS_DB_SSL_MODE", "verify-full"),
        ])
        .store_url()
        .unwrap_err();
        assert_eq!(fault.variable, "MF_WEBHOOKS_DB_SSL_MODE");
    }

    #[test]
    fn the_ssl_variables_make_the_tls_settings_and_bad_ones_are_refused_naming_them() {
        use crate::store::tls::SslMode;
        assert_eq!(serve_with(&[]).database_tls().unwrap().mode, Some(SslMode::Disable));
        assert_eq!(
            serve_with(&[("MF_WEBHOOKS_DB_URL", "postgres://a@b/c?sslmode=require")])
                .database_tls()
                .unwrap()
                .mode,
            None,
            "a URL alone says itself"
        );
        assert_eq!(
            serve_with(&[("MF_WEBHOOKS_DB_SSL_MODE", "verify-full")])
                .database_tls()
                .unwrap()
                .mode,
            Some(SslMode::VerifyFull)
        );
        for (env, variable) in [
            (("MF_WEBHOOKS_DB_SSL_MODE", "on"), "MF_WEBHOOKS_DB_SSL_MODE"),
            (
                ("MF_WEBHOOKS_DB_SSL_ROOT_CERT", "/nonexistent/ca.pem"),
                "MF_WEBHOOKS_DB_SSL_ROOT_CERT",
            ),
            (
                ("MF_WEBHOOKS_DB_SSL_CERT", "/nonexistent/c.pem"),
                "MF_WEBHOOKS_DB_SSL_KEY",
            ),
            (
                ("MF_WEBHOOKS_DB_SSL_KEY", "/nonexistent/k.pem"),
                "MF_WEBHOOKS_DB_SSL_CERT",
            ),
        ] {
            let fault = serve_with(&[env]).database_tls().unwrap_err();
            assert_eq!(fault.variable, variable, "{env:?}");
        }
    }

    #[test]
    fn parts_set_empty_count_as_unset() {
        let empty = [
            ("MF_WEBHOOKS_DB_HOST", ""),
            ("MF_WEBHOOKS_DB_PORT", ""),
            ("MF_WEBHOOKS_DB_USER", ""),
            ("MF_WEBHOOKS_DB_PASS", ""),
            ("MF_WEBHOOKS_DB", ""),
            ("MF_WEBHOOKS_DB_SSL_MODE", ""),
            ("MF_WEBHOOKS_DB_SSL_CERT", ""),
            ("MF_WEBHOOKS_DB_SSL_KEY", ""),
            ("MF_WEBHOOKS_DB_SSL_ROOT_CERT", ""),
            ("MF_WEBHOOKS_SERVER_CERT", ""),
            ("MF_WEBHOOKS_SERVER_KEY", ""),
        ];
        let config = serve_with(&empty);
        assert_eq!(config.store_url().unwrap(), DEFAULT_DB_URL);
        assert_eq!(config.server_tls().unwrap(), None);
        let with_host: Vec<(&str, &str)> = empty
            .iter()
            .map(|&(name, value)| {
                if name == "MF_WEBHOOKS_DB_HOST" {
                    (name, "db")
                } else {
                    (name, value)
                }
            })
            .collect();
        assert_eq!(
            serve_with(&with_host).store_url().unwrap(),
            "postgres://mainflux:mainflux@db:5432/webhooks",
            "the empty ones take the Go service's defaults"
        );
        let fault = serve_with(&[("MF_WEBHOOKS_DB_PORT", "http")]).store_url().unwrap_err();
        assert_eq!(fault.variable, "MF_WEBHOOKS_DB_PORT");
    }

    #[test]
    fn https_needs_both_the_certificate_and_the_key() {
        assert_eq!(
            serve_with(&[
                ("MF_WEBHOOKS_SERVER_CERT", "/c.pem"),
                ("MF_WEBHOOKS_SERVER_KEY", "/k.pem")
            ])
            .server_tls()
            .unwrap(),
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
        let fault = serve_with(&[("MF_WEBHOOKS_SERVER_CERT", "/c.pem")])
            .server_tls()
            .unwrap_err();
        assert_eq!(fault.variable, "MF_WEBHOOKS_SERVER_KEY");
        let fault = serve_with(&[("MF_WEBHOOKS_SERVER_KEY", "/k.pem")])
            .server_tls()
            .unwrap_err();
        assert_eq!(fault.variable, "MF_WEBHOOKS_SERVER_CERT");
    }

    #[test]
    fn every_option_has_its_variable() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        for arg in serve
            .get_arguments()
            .filter(|a| a.get_long().is_some_and(|l| l != "help"))
        {
            assert!(
                arg.get_env().is_some(),
                "--{} has no environment variable",
                arg.get_long().unwrap()
            );
        }
    }
}
