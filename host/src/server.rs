//! Start-up and shutdown: turns a [`ServeConfig`] into a running service, naming the variable
//! at fault when something in the configuration is wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{self, AppState, BuildInfo};
use crate::config::{ServeConfig, redact_url};
use crate::dispatch::{self, DispatchConfig, Dispatcher};
use crate::identity::IdentityBackend;
use crate::identity::registry::{RegistryBackend, Removed};
use crate::identity::things::{ThingsConfig, ThingsService};
use crate::ingress::event_stream::{self, Owner};
use crate::ingress::{self, Intake, gathering};
use crate::listener::{self, ListenerConfig};
use crate::outbound::{OutboundClient, OutboundConfig};
use crate::retention;
use crate::runtime::{CanaryPolicy, Capabilities, CompileCache, Limits, Runtime};
use crate::settings::DeliverySettings;
use crate::store;
use crate::tenancy::Tenancy;
use crate::transform::{TransformLimits, Transforms};

/// How long in-flight requests may take to finish after a stop signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A start-up failure, attributed to the configuration variable that caused it.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct StartupError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong, in one line.
    pub message: String,
}

fn fault(variable: &'static str, message: impl ToString) -> StartupError {
    StartupError {
        variable,
        message: message.to_string().replace('\n', " "),
    }
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn serve(config: ServeConfig) -> Result<(), StartupError> {
    let db_url = config
        .store_url()
        .map_err(|fault_of| fault(fault_of.variable, fault_of.message))?;
    // Before anything is opened or logged: HTTPS settings that cannot work are the only line.
    let tls = match config
        .server_tls()
        .map_err(|fault_of| fault(fault_of.variable, fault_of.message))?
    {
        None => None,
        Some((certificate, key)) => {
            Some(listener::server_tls(&certificate, &key).map_err(|e| fault("MF_WEBHOOKS_SERVER_CERT", e))?)
        }
    };
    let store_variable = store_variable(&config, &db_url);
    let db_tls = config
        .database_tls()
        .map_err(|fault_of| fault(fault_of.variable, fault_of.message))?;
    let kv = store::open_with_tls(&db_url, usize::from(config.db_pool), &db_tls)
        .await
        .map_err(|e| fault(store_variable, e))?;
    // The platform's things service when configured, else the registry file.
    let (identity, registry): (Arc<dyn IdentityBackend>, Option<Arc<RegistryBackend>>) = if config
        .things_grpc_url
        .is_empty()
    {
        let registry = Arc::new(RegistryBackend::open(&config.registry).map_err(|e| fault("MF_WEBHOOKS_REGISTRY", e))?);
        (registry.clone(), Some(registry))
    } else {
        let ca_certs = if config.ca_certs.is_empty() {
            None
        } else {
            Some(
                std::fs::read(&config.ca_certs)
                    .map_err(|e| fault("MF_WEBHOOKS_CA_CERTS", format!("cannot read {}: {e}", config.ca_certs)))?,
            )
        };
        let things = ThingsService::new(&ThingsConfig {
            address: config.things_grpc_url.clone(),
            timeout: config.things_grpc_timeout,
            tls: config.client_tls,
            ca_certs,
        })
        .map_err(|e| fault("MF_THINGS_AUTH_GRPC_URL", e))?;
        tracing::info!(address = %config.things_grpc_url, tls = config.client_tls, "identity from the platform's things service");
        (Arc::new(things), None)
    };
    let event_stream = if config.es_url.is_empty() {
        None
    } else {
        Some(event_stream::client(&config.es_url).map_err(|e| fault("MF_WEBHOOKS_ES_URL", e))?)
    };
    let outbound = OutboundClient::new(OutboundConfig {
        allow_private: config.allow_private_destinations,
        request_timeout: config.delivery_timeout,
        in_flight_per_destination: config.destination_max_in_flight as usize,
        ..OutboundConfig::default()
    })
    .map_err(|e| {
        fault(
            "MF_WEBHOOKS_DELIVERY_TIMEOUT",
            format!("cannot set up TLS for deliveries: {e}"),
        )
    })?;
    let settings = Arc::new(DeliverySettings {
        retry_schedule: config.retry_schedule.clone(),
        retention: config.retention,
        // A SQLite file serves one host, whose dispatcher never runs a delivery twice at once.
        claim_lease: if db_url.starts_with("sqlite://") {
            Duration::ZERO
        } else {
            crate::settings::claim_lease(config.plugin_deadline, config.delivery_timeout)
        },
        webhook_quota: config.quota_webhooks,
    });
    let capabilities = Capabilities {
        store: kv,
        identity: identity.clone(),
        outbound,
        settings,
        transforms: transforms(&config)?,
    };
    let plugin_path = config.plugin_path();
    let cache = CompileCache::new(config.plugin_cache_dir());
    let runtime = Runtime::new(&plugin_path, plugin_limits(&config), capabilities, cache)
        .map_err(|e| fault("MF_WEBHOOKS_PLUGIN", format!("{}: {e}", plugin_path.display())))?;
    runtime.set_canary_policy(CanaryPolicy {
        max_error_rate: config.canary_max_error_rate,
        window: config.canary_window,
    });
    // Before anything reads or writes the store through the plugin, the import included.
    runtime
        .check_stored_format()
        .await
        .map_err(|e| fault("MF_WEBHOOKS_PLUGIN", format!("{}: {e}", plugin_path.display())))?;
    if db_url.starts_with("postgres") {
        crate::migration::import_on_first_start(&db_url, &db_tls, &runtime)
            .await
            .map_err(|e| {
                fault(
                    store_variable,
                    format!("importing the Go webhooks service's table: {e}"),
                )
            })?;
    }
    let plugin = runtime.current();
    tracing::info!(
        plugin = %plugin_path.display(),
        sha256 = %plugin.sha256,
        cached = plugin.cached,
        load_ms = plugin.load_time.as_millis() as u64,
        "plugin loaded"
    );
    // Listening before anything else runs: an early SIGHUP must not take the default action,
    // which ends the process.
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => {
            tokio::spawn(reload_on_hangup(runtime.clone(), plugin_path, hangups));
        }
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGHUP; plugin reloads only through the admin endpoint")
        }
    }

    let _watcher = registry.map(|registry| {
        let (removed_tx, removed_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(apply_removals(runtime.clone(), removed_rx));
        registry.watch(move |removed| {
            let _ = removed_tx.send(removed);
        })
    });
    if let Some(client) = event_stream {
        tokio::spawn(event_stream::follow(
            client,
            config.event_consumer.clone(),
            runtime.clone(),
        ));
    }
    let embedded = db_url.starts_with("sqlite://");
    let dispatcher = Dispatcher::start(
        runtime.clone(),
        DispatchConfig {
            attempt_timeout: config.delivery_timeout,
            quick_per_group: if embedded {
                DispatchConfig::default().quick_per_group
            } else {
                dispatch::SHARED_QUICK_PER_GROUP
            },
            ..DispatchConfig::default()
        },
    );
    let intake = Arc::new(Intake::new(
        runtime.clone(),
        dispatcher.clone(),
        Tenancy::new(identity.clone(), config.quotas()),
        if embedded {
            gathering::EMBEDDED_BATCH
        } else {
            gathering::SHARED_BATCH
        },
    ));
    // When the stop signal came: everything in flight gets SHUTDOWN_GRACE from then.
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(None::<Instant>);
    let broker = if config.broker_url.is_empty() {
        None
    } else {
        let consumer = ingress::broker::start(&config.broker_url, intake.clone(), stopping_rx.clone())
            .await
            .map_err(|e| fault("MF_BROKER_URL", e))?;
        Some(consumer)
    };
    // Check often enough that nothing outlives the retention by more than a quarter of it.
    let sweep = (config.retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let _retention = retention::start(runtime.clone(), sweep);

    let state = AppState {
        runtime,
        build: Arc::new(BuildInfo::current()),
        identity,
        dispatcher: dispatcher.clone(),
        intake,
        admin_token: config.admin_token().map(Arc::from),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let address = format!("{}:{}", config.http_host, config.http_port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|e| fault("MF_WEBHOOKS_HTTP_PORT", format!("cannot listen on {address}: {e}")))?;
    // Once every setting has been taken: a refused one stops start-up with its one line alone.
    log_configuration(&config, &db_url);
    tracing::info!(%address, scheme, "webhooks service listening");

    let connections = ListenerConfig {
        read_timeout: config.http_read_timeout,
        max_connections: config.http_max_connections as usize,
        tls,
    };
    let server = listener::serve(listener, api::router(state), connections, async move {
        stop_signal().await;
        tracing::info!("stop signal received; finishing in-flight requests and deliveries");
        let _ = stopping_tx.send(Some(Instant::now()));
    });
    let mut stopping = stopping_rx.clone();
    let forced = async move {
        if let Ok(stopped) = stopping.wait_for(Option::is_some).await {
            let deadline = stopped.expect("waited for it") + SHUTDOWN_GRACE;
            tokio::time::sleep_until(deadline.into()).await;
        }
    };
    tokio::select! {
        () = server => {}
        () = forced => tracing::warn!("in-flight requests did not finish within {SHUTDOWN_GRACE:?}; stopping anyway"),
    }
    let stopped = stopping_rx.borrow().unwrap_or_else(Instant::now);
    if let Some(consumer) = broker {
        let _ = tokio::time::timeout_at((stopped + SHUTDOWN_GRACE).into(), consumer).await;
    }
    dispatcher.drain(stopped + SHUTDOWN_GRACE).await;
    tracing::info!("stopped");
    Ok(())
}

/// `webhooks-host import`: imports the Go webhooks service's table from the configured
/// PostgreSQL database now, whether or not it was imported before, and answers what it did.
pub async fn import(config: ServeConfig) -> Result<crate::migration::ImportReport, StartupError> {
    use crate::migration::{GoTable, Standing};
    let db_url = config
        .store_url()
        .map_err(|fault_of| fault(fault_of.variable, fault_of.message))?;
    let store_variable = store_variable(&config, &db_url);
    if !db_url.starts_with("postgres") {
        return Err(fault(
            store_variable,
            "the Go webhooks service's table is in PostgreSQL; configure its database",
        ));
    }
    let db_tls = config
        .database_tls()
        .map_err(|fault_of| fault(fault_of.variable, fault_of.message))?;
    let table = GoTable::connect(&db_url, &db_tls)
        .await
        .map_err(|e| fault(store_variable, e))?;
    if table.standing().await.map_err(|e| fault(store_variable, e))? == Standing::NoTable {
        return Err(fault(store_variable, "the database holds no webhooks table to import"));
    }
    let kv = store::open_with_tls(&db_url, usize::from(config.db_pool), &db_tls)
        .await
        .map_err(|e| fault(store_variable, e))?;
    let capabilities = Capabilities {
        store: kv,
        identity: Arc::new(crate::identity::offline::Offline),
        outbound: OutboundClient::new(OutboundConfig::default()).map_err(|e| {
            fault(
                "MF_WEBHOOKS_PLUGIN",
                format!("cannot set up the plugin's HTTP client: {e}"),
            )
        })?,
        settings: Arc::new(DeliverySettings::default()),
        transforms: transforms(&config)?,
    };
    let plugin_path = config.plugin_path();
    let runtime = Runtime::new(
        &plugin_path,
        plugin_limits(&config),
        capabilities,
        CompileCache::new(config.plugin_cache_dir()),
    )
    .map_err(|e| fault("MF_WEBHOOKS_PLUGIN", format!("{}: {e}", plugin_path.display())))?;
    runtime
        .check_stored_format()
        .await
        .map_err(|e| fault("MF_WEBHOOKS_PLUGIN", format!("{}: {e}", plugin_path.display())))?;
    if !runtime.migration().available() {
        return Err(fault(
            "MF_WEBHOOKS_PLUGIN",
            format!("{}: this plugin version cannot import webhooks", plugin_path.display()),
        ));
    }
    table.import(&runtime).await.map_err(|e| fault(store_variable, e))
}

/// The variable a store that cannot be opened is reported under: the one it was configured by.
fn store_variable(config: &ServeConfig, db_url: &str) -> &'static str {
    if config.db_url.as_deref().is_none_or(str::is_empty) && db_url != crate::config::DEFAULT_DB_URL {
        "MF_WEBHOOKS_DB_HOST"
    } else {
        "MF_WEBHOOKS_DB_URL"
    }
}

/// The sandbox of tenants' transforms, with the limits of the configuration.
fn transforms(config: &ServeConfig) -> Result<Arc<Transforms>, StartupError> {
    let limits = TransformLimits {
        memory_bytes: config.transform_memory,
        deadline: config.transform_deadline,
        group_quota: config.transform_quota,
        ..TransformLimits::default()
    };
    Transforms::new(limits, config.transform_cache_dir()).map_err(|e| {
        fault(
            "MF_WEBHOOKS_TRANSFORM_MEMORY",
            format!("cannot set up the transforms' sandbox: {e:#}"),
        )
    })
}

/// The limits of each plugin call, from the configuration.
fn plugin_limits(config: &ServeConfig) -> Limits {
    Limits {
        memory_bytes: config.plugin_memory,
        deadline: config.plugin_deadline,
        ..Limits::default()
    }
}

/// One line saying what this service runs on, so an operator can check it at a glance; no
/// secret is in it.
fn log_configuration(config: &ServeConfig, db_url: &str) {
    let identity = if config.things_grpc_url.is_empty() {
        format!("registry file {}", config.registry.display())
    } else {
        format!("things service {}", config.things_grpc_url)
    };
    let broker = if config.broker_url.is_empty() {
        "none".to_owned()
    } else {
        redact_url(&config.broker_url)
    };
    tracing::info!(
        store = %redact_url(db_url),
        identity,
        broker = %broker,
        event_stream = %if config.es_url.is_empty() { "none".to_owned() } else { redact_url(&config.es_url) },
        allow_private_destinations = config.allow_private_destinations,
        admin_endpoint = config.admin_token().is_some(),
        "configuration"
    );
}

/// Removes the webhooks of things and groups that left the registry, retrying until the
/// plugin has done it.
async fn apply_removals(runtime: Arc<Runtime>, mut removed: tokio::sync::mpsc::UnboundedReceiver<Removed>) {
    while let Some(Removed { things, groups }) = removed.recv().await {
        let owners = things
            .into_iter()
            .map(|id| (Owner::Thing, id))
            .chain(groups.into_iter().map(|id| (Owner::Group, id)));
        for (owner, id) in owners {
            let count = event_stream::remove_webhooks_of(&runtime, owner, &id).await;
            tracing::info!(
                ?owner,
                id,
                removed = count,
                "removed from the registry: its webhooks are removed"
            );
        }
    }
}

/// Swaps in the plugin file again on every `SIGHUP`; a file that fails to load is logged and
/// the current version keeps serving.
async fn reload_on_hangup(runtime: Arc<Runtime>, path: std::path::PathBuf, mut hangups: tokio::signal::unix::Signal) {
    while hangups.recv().await.is_some() {
        let requested = std::time::Instant::now();
        let file = path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(file)).await;
        let bytes = match read.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(plugin = %path.display(), %error, "SIGHUP: cannot read the plugin; the current one keeps serving");
                continue;
            }
        };
        let swapped = runtime.swap(bytes, crate::runtime::VersionSource::Sighup).await;
        let result = if swapped.is_ok() { "swapped" } else { "refused" };
        crate::metrics::METRICS
            .plugin_swaps
            .with_label_values(&["sighup", result])
            .inc();
        match swapped {
            Ok((plugin, previous)) => tracing::info!(
                plugin = %path.display(),
                sha256 = %plugin.sha256,
                previous = %previous.sha256,
                cached = plugin.cached,
                swap_ms = requested.elapsed().as_millis() as u64,
                "SIGHUP: plugin swapped"
            ),
            Err(error) => {
                tracing::error!(plugin = %path.display(), %error, "SIGHUP: plugin refused; the current one keeps serving")
            }
        }
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
