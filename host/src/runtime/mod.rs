//! The plugin runtime: one engine with the pooling allocator and epoch interruption, the
//! loaded plugin version, and a fresh store and instance for every call.

pub mod bindings;
mod cache;
mod calls;
mod plugin;
mod state;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::Instrument;
use wasmtime::component::Linker;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder, Trap,
    UpdateDeadline,
};

pub use cache::CompileCache;
pub use calls::{ApiCalls, EventCalls, MigrationCalls};
pub use plugin::{Inspection, LoadError, Plugin, WORLD};
pub use state::{Capabilities, HostState};

use crate::metrics::METRICS;
use bindings::exports::mainflux::webhooks::{api, events, migration};
use bindings::mainflux::webhooks::types::Error as PluginError;

/// How often the engine's epoch advances; the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits applied to every call into the plugin.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest linear memory of one instance, in bytes.
    pub memory_bytes: usize,
    /// Longest wall time of one call once it has an instance, beside the time it is granted
    /// for outgoing requests.
    pub deadline: Duration,
    /// Instances that may exist at once.
    pub max_instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            deadline: Duration::from_secs(10),
            max_instances: 256,
        }
    }
}

/// Why a call into the plugin gave no result: the plugin's own refusal, or a call that failed
/// without an answer of its own.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin answered with an error of its policy (invalid, not found, forbidden, …).
    #[error("the plugin refused: {0}")]
    Refused(PluginError),
    /// The call ran past its deadline and was stopped.
    #[error("the plugin call exceeded its deadline")]
    Deadline,
    /// The plugin trapped, or ran out of memory.
    #[error("the plugin call failed: {reason}")]
    Trap {
        /// What went wrong, in a few words (the trap, without the guest's backtrace).
        reason: String,
        /// Everything wasmtime says, backtrace included, on one line, for the log.
        detail: String,
    },
    /// No instance could be created (for example, every pool slot is in use).
    #[error("no plugin instance could be created: {0}")]
    Instantiate(String),
}

/// How many earlier versions are kept, compiled, for rollbacks.
pub const HISTORY: usize = 8;

/// How a version came to be active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    /// Loaded from `MF_WEBHOOKS_PLUGIN` at start-up.
    File,
    /// Swapped in through `PUT /admin/plugin`.
    Admin,
    /// Swapped in by `SIGHUP`, from `MF_WEBHOOKS_PLUGIN`.
    Sighup,
    /// Made active again by `POST /admin/plugin/rollback`.
    Rollback,
}

impl VersionSource {
    /// The name shown in `GET /admin/plugin`.
    pub fn name(self) -> &'static str {
        match self {
            VersionSource::File => "file",
            VersionSource::Admin => "admin",
            VersionSource::Sighup => "sighup",
            VersionSource::Rollback => "rollback",
        }
    }
}

/// A version of the plugin as it was made active.
#[derive(Clone)]
pub struct Version {
    /// The loaded version, compiled code included.
    pub plugin: Arc<Plugin>,
    /// How it came to be active.
    pub source: VersionSource,
    /// When it became active.
    pub activated_at: std::time::SystemTime,
}

impl Version {
    fn new(plugin: Arc<Plugin>, source: VersionSource) -> Self {
        Version {
            plugin,
            source,
            activated_at: std::time::SystemTime::now(),
        }
    }
}

/// The active version and the earlier ones, newest first.
struct Versions {
    active: Version,
    history: VecDeque<Version>,
}

/// The engine, linker and current plugin version.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    limits: Limits,
    capabilities: Capabilities,
    cache: CompileCache,
    current: RwLock<Arc<Plugin>>,
    /// How the current version came to be active, and the versions active before it.
    versions: std::sync::Mutex<Versions>,
    /// One permit per instance the pool holds: a call waits for a free slot (within its
    /// deadline) rather than fail when a burst or a stall has every slot in use.
    instances: Arc<tokio::sync::Semaphore>,
    /// Held while a new version is loaded, so two swaps never race to install.
    swapping: tokio::sync::Mutex<()>,
}

impl Runtime {
    /// Builds the engine and linker and loads the plugin at `path`, through `cache`.
    pub fn new(
        path: &Path,
        limits: Limits,
        capabilities: Capabilities,
        cache: CompileCache,
    ) -> Result<Arc<Self>, LoadError> {
        let (engine, linker) = engine_and_linker(&limits)?;
        let bytes = std::fs::read(path).map_err(|e| LoadError::Read(path.display().to_string(), e))?;
        let plugin = Arc::new(plugin::load(&engine, &linker, &cache, &bytes)?);
        let runtime = Arc::new(Runtime {
            engine,
            linker,
            limits,
            capabilities,
            cache,
            versions: std::sync::Mutex::new(Versions {
                active: Version::new(plugin.clone(), VersionSource::File),
                history: VecDeque::new(),
            }),
            current: RwLock::new(plugin),
            instances: Arc::new(tokio::sync::Semaphore::new(limits.max_instances as usize)),
            swapping: tokio::sync::Mutex::new(()),
        });
        runtime.start_epoch_ticker();
        Ok(runtime)
    }

    /// The plugin version new calls use.
    pub fn current(&self) -> Arc<Plugin> {
        self.current.read().expect("plugin lock poisoned").clone()
    }

    /// Compiles (or maps from the cache) and checks `bytes`, then makes them the version new
    /// calls use; calls already running finish on the version they started with. Answers the
    /// new version and the one it replaced, which goes first in the history. A component that
    /// fails leaves the current one.
    pub async fn swap(
        self: &Arc<Self>,
        bytes: Vec<u8>,
        source: VersionSource,
    ) -> Result<(Arc<Plugin>, Arc<Plugin>), LoadError> {
        let _one_at_a_time = self.swapping.lock().await;
        let runtime = self.clone();
        // Compiling takes seconds of CPU: off the async workers.
        let plugin =
            tokio::task::spawn_blocking(move || plugin::load(&runtime.engine, &runtime.linker, &runtime.cache, &bytes))
                .await
                .map_err(|e| LoadError::Compile(format!("the compiler stopped: {e}")))??;
        let plugin = Arc::new(plugin);
        let previous = self.activate(Version::new(plugin.clone(), source));
        Ok((plugin, previous))
    }

    /// Makes the version active before the current one active again, with the compiled code
    /// it kept; the current one goes first in the history, so a second rollback undoes the
    /// first. Answers the version now active, or `None` when there was no earlier one.
    pub async fn rollback(&self) -> Option<Version> {
        let _one_at_a_time = self.swapping.lock().await;
        let earlier = self.versions.lock().expect("versions poisoned").history.pop_front()?;
        let version = Version::new(earlier.plugin, VersionSource::Rollback);
        self.activate(version.clone());
        Some(version)
    }

    /// The active version and the earlier ones, newest first.
    pub fn versions(&self) -> (Version, Vec<Version>) {
        let versions = self.versions.lock().expect("versions poisoned");
        (versions.active.clone(), versions.history.iter().cloned().collect())
    }

    /// Installs `version` for new calls; the one it replaces goes first in the history.
    /// Callers hold `swapping`.
    fn activate(&self, version: Version) -> Arc<Plugin> {
        let mut versions = self.versions.lock().expect("versions poisoned");
        let replaced = std::mem::replace(&mut versions.active, version.clone());
        versions.history.push_front(replaced);
        versions.history.truncate(HISTORY);
        std::mem::replace(
            &mut *self.current.write().expect("plugin lock poisoned"),
            version.plugin,
        )
    }

    /// Runs `call` against a fresh instance of the current plugin, within the call limits.
    /// `export` names the export for metrics and logs (`api.view-webhook`, `events.deliver`).
    /// The host's own calls go through the typed [`Runtime::api`] and [`Runtime::events`];
    /// this one is for calls they do not name (a benchmark's empty call), and never answers
    /// [`CallError::Refused`].
    pub async fn call<R, F>(&self, export: &'static str, call: F) -> Result<R, CallError>
    where
        F: for<'a> FnOnce(&'a Exports, &'a mut Store<HostState>) -> bindings::BoxCall<'a, R>,
    {
        self.call_waiting(export, Duration::ZERO, call).await
    }

    /// Like [`Runtime::call`], for a call that also waits on outgoing requests bounded by
    /// `waiting` (a delivery batch, whose requests are in flight together): its deadline is
    /// extended by that much, so a slow receiver is not taken for a runaway plugin.
    async fn call_waiting<R, F>(&self, export: &'static str, waiting: Duration, call: F) -> Result<R, CallError>
    where
        F: for<'a> FnOnce(&'a Exports, &'a mut Store<HostState>) -> bindings::BoxCall<'a, R>,
    {
        let started = Instant::now();
        let span = tracing::debug_span!(
            target: crate::telemetry::SPANS,
            "plugin call",
            otel.name = export,
            otel.status_code = tracing::field::Empty,
        );
        let result = self.run(waiting, call).instrument(span.clone()).await;
        if result
            .as_ref()
            .is_err_and(|error| !matches!(error, CallError::Refused(_)))
        {
            span.record("otel.status_code", "error");
        }
        tracing::debug!(
            export,
            micros = started.elapsed().as_micros() as u64,
            ok = result.is_ok(),
            "plugin call"
        );
        METRICS
            .plugin_calls
            .with_label_values(&[export])
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            let kind = match error {
                CallError::Deadline => "deadline",
                CallError::Trap { .. } => "trap",
                CallError::Instantiate(_) => "instantiate",
                // Not a failure of the call: only the typed façade lifts refusals, after this.
                CallError::Refused(_) => return result,
            };
            METRICS.plugin_failures.with_label_values(&[export, kind]).inc();
        }
        result
    }

    async fn run<R, F>(&self, waiting: Duration, call: F) -> Result<R, CallError>
    where
        F: for<'a> FnOnce(&'a Exports, &'a mut Store<HostState>) -> bindings::BoxCall<'a, R>,
    {
        let budget = self.limits.deadline + waiting;
        // The deadline starts once the call has an instance: time queued behind other calls is
        // not the plugin's. Counted from before the queue, a delivery batch that waited could be
        // stopped after its requests went out and before their outcomes were recorded, and be
        // sent again when its claims lapse. A call that finds no slot within its budget ends
        // having done nothing.
        let _slot = match tokio::time::timeout(budget, self.instances.acquire()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) | Err(_) => return Err(CallError::Deadline),
        };
        let deadline = Instant::now() + budget;
        // Epochs only interrupt guest code; this also bounds a call stuck inside a host import.
        match tokio::time::timeout(budget + 10 * EPOCH_TICK, self.run_in_slot(deadline, call)).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Deadline),
        }
    }

    async fn run_in_slot<R, F>(&self, deadline: Instant, call: F) -> Result<R, CallError>
    where
        F: for<'a> FnOnce(&'a Exports, &'a mut Store<HostState>) -> bindings::BoxCall<'a, R>,
    {
        let plugin = self.current();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(&self.engine, HostState::new(&self.capabilities, limits, deadline));
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            if Instant::now() >= store.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Let other tasks run on this worker while a long call goes on.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let instance = plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        let exports = Exports { instance, plugin };
        call(&exports, &mut store)
            .await
            .map_err(|e| match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => CallError::Deadline,
                _ => CallError::Trap {
                    reason: e.root_cause().to_string(),
                    detail: format!("{e:#}").replace('\n', " |"),
                },
            })
    }

    fn start_epoch_ticker(self: &Arc<Self>) {
        let engine = self.engine.weak();
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while let Some(engine) = engine.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .expect("the epoch ticker thread starts");
    }
}

/// A fresh instance of the plugin, whose exports a call looks up as it needs them:
/// type-checking all of the world's exports on every instance cost a tenth of instantiating.
pub struct Exports {
    instance: wasmtime::component::Instance,
    plugin: Arc<Plugin>,
}

impl Exports {
    /// The instance's `api` interface.
    pub fn api(&self, store: &mut Store<HostState>) -> wasmtime::Result<api::Guest> {
        self.plugin.api.load(store, &self.instance)
    }

    /// The instance's `events` interface.
    pub fn events(&self, store: &mut Store<HostState>) -> wasmtime::Result<events::Guest> {
        self.plugin.events.load(store, &self.instance)
    }

    /// The instance's `migration` interface, if this version of the plugin has it.
    pub fn migration(&self, store: &mut Store<HostState>) -> wasmtime::Result<Option<migration::Guest>> {
        self.plugin
            .migration
            .as_ref()
            .map(|indices| indices.load(store, &self.instance))
            .transpose()
    }
}

/// Compiles the component at `path` with the service's engine settings and reports what it
/// imports and exports and whether it implements the world (`webhooks-host check-plugin`).
pub fn inspect(path: &Path, limits: &Limits) -> Result<Inspection, LoadError> {
    let (engine, linker) = engine_and_linker(limits)?;
    let bytes = std::fs::read(path).map_err(|e| LoadError::Read(path.display().to_string(), e))?;
    plugin::inspect(&engine, &linker, &bytes)
}

fn engine_and_linker(limits: &Limits) -> Result<(Engine, Linker<HostState>), LoadError> {
    let engine = engine(limits).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
    let mut linker = Linker::new(&engine);
    link(&mut linker).map_err(|e| LoadError::World(format!("{e:#}")))?;
    Ok((engine, linker))
}

fn engine(limits: &Limits) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(limits.max_instances)
        .total_core_instances(limits.max_instances * 8)
        .total_memories(limits.max_instances)
        .total_tables(limits.max_instances * 4)
        .total_stacks(limits.max_instances)
        .max_memory_size(limits.memory_bytes)
        // Keep warm slots resident instead of returning them to the kernel after every call
        // (TOOLCHAIN.md: the largest single gain in instantiation cost).
        .linear_memory_keep_resident(4 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .epoch_interruption(true)
        .memory_reservation(limits.memory_bytes as u64)
        .memory_reservation_for_growth(0);
    Engine::new(&config)
}

/// Composes the capabilities of the world, each added by its own module.
fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // Whatever Rust's std imports from WASI, served from an empty context.
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    crate::outbound::add_to_linker(linker)?;
    crate::store::add_to_linker(linker)?;
    crate::identity::add_to_linker(linker)?;
    crate::settings::add_to_linker(linker)?;
    Ok(())
}
