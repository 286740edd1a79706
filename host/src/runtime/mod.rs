//! The plugin runtime: one engine with the pooling allocator and epoch interruption, the
//! loaded plugin version, and a fresh store and instance for every call.

pub mod bindings;
mod cache;
mod calls;
mod formats;
mod plugin;
mod rollout;
mod shadow;
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

pub use cache::{CompileCache, Origin};
pub use formats::DataFormats;
pub use rollout::{CanaryPolicy, Candidate, Mode, RolledBack};

pub use calls::{ApiCalls, EventCalls, MigrationCalls};
pub use plugin::{Inspection, LoadError, Plugin, WORLD, sha256_hex};
pub use state::{Capabilities, HostState};

use crate::metrics::METRICS;
use bindings::exports::mainflux::webhooks::{api, attempts, events, intake, migration, transform_api};
use bindings::mainflux::webhooks::types::Error as PluginError;
use rollout::{Arm, ErrorWindow};

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
#[derive(Debug, Clone, thiserror::Error)]
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

/// How long message intake lets a dry-run candidate go first, so that it reads the store
/// before the active version's commit changes it; a slower candidate goes on beside.
const SHADOW_HEAD_START: Duration = Duration::from_millis(100);

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
    /// A candidate made active by `POST /admin/plugin/promote`.
    Promote,
}

impl VersionSource {
    /// The name shown in `GET /admin/plugin`.
    pub fn name(self) -> &'static str {
        match self {
            VersionSource::File => "file",
            VersionSource::Admin => "admin",
            VersionSource::Sighup => "sighup",
            VersionSource::Rollback => "rollback",
            VersionSource::Promote => "promote",
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

/// Why a change of version was refused; the versions in place go on serving.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The component could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The version cannot serve the stored data.
    #[error("{0}")]
    Incompatible(String),
    /// A rollback was asked for with no earlier version.
    #[error("no earlier plugin version to roll back to")]
    NoEarlierVersion,
    /// A promote or drop was asked for with no candidate.
    #[error("no candidate plugin version")]
    NoCandidate,
    /// The store did not answer.
    #[error("{0}")]
    Unavailable(String),
    /// What was read changed before it was written; the caller reads again.
    #[error("the stored data changed meanwhile")]
    Conflict,
}

/// Reads and writes one raise of the data format tries before it gives up.
const RAISE_TRIES: usize = 8;

/// The active version, the earlier ones (newest first), the candidate beside them and the last
/// canary dropped.
struct Versions {
    active: Version,
    history: VecDeque<Version>,
    candidate: Option<Arc<Candidate>>,
    rolled_back: Option<RolledBack>,
    policy: CanaryPolicy,
}

/// What `GET /admin/plugin` shows.
pub struct Rollout {
    /// The version new calls use.
    pub active: Version,
    /// The earlier versions, newest first.
    pub history: Vec<Version>,
    /// The candidate beside the active version, if any.
    pub candidate: Option<Arc<Candidate>>,
    /// The last canary dropped for failing, if any.
    pub rolled_back: Option<RolledBack>,
    /// The format the store is in, if it could be read.
    pub stored_format: Result<u32, String>,
}

/// The engine, linker and current plugin version.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    limits: Limits,
    capabilities: Capabilities,
    /// The capabilities of a dry run: the live store read, its writes discarded.
    dry_run: Capabilities,
    cache: CompileCache,
    current: RwLock<Arc<Plugin>>,
    /// The candidate beside the current version, read on every call.
    candidate: RwLock<Option<Arc<Candidate>>>,
    /// How the current version came to be active, the versions active before it, and the
    /// rollout in progress.
    versions: std::sync::Mutex<Versions>,
    /// One permit per instance the pool holds: a call waits for a free slot (within its
    /// deadline) rather than fail when a burst or a stall has every slot in use.
    instances: Arc<tokio::sync::Semaphore>,
    /// Held while a new version is loaded, so two swaps never race to install.
    swapping: tokio::sync::Mutex<()>,
}

impl Runtime {
    /// Builds the engine and linker and loads the plugin at `path`, through `cache`. Whether it
    /// serves the stored data is checked by [`Runtime::check_stored_format`].
    pub fn new(
        path: &Path,
        limits: Limits,
        capabilities: Capabilities,
        cache: CompileCache,
    ) -> Result<Arc<Self>, LoadError> {
        let (engine, linker) = engine_and_linker(&limits)?;
        let bytes = std::fs::read(path).map_err(|e| LoadError::Read(path.display().to_string(), e))?;
        let plugin = Arc::new(plugin::load(&engine, &linker, &cache, &bytes)?);
        let dry_run = Capabilities {
            store: crate::store::DryRun::over(capabilities.store.clone()),
            ..capabilities.clone()
        };
        let runtime = Arc::new(Runtime {
            engine,
            linker,
            limits,
            capabilities,
            dry_run,
            cache,
            versions: std::sync::Mutex::new(Versions {
                active: Version::new(plugin.clone(), VersionSource::File),
                history: VecDeque::new(),
                candidate: None,
                rolled_back: None,
                policy: CanaryPolicy::default(),
            }),
            current: RwLock::new(plugin),
            candidate: RwLock::new(None),
            instances: Arc::new(tokio::sync::Semaphore::new(limits.max_instances as usize)),
            swapping: tokio::sync::Mutex::new(()),
        });
        runtime.start_epoch_ticker();
        Ok(runtime)
    }

    /// Sets when a canary is dropped for failing.
    pub fn set_canary_policy(&self, policy: CanaryPolicy) {
        self.versions.lock().expect("versions poisoned").policy = policy;
    }

    /// The plugin version new calls use.
    pub fn current(&self) -> Arc<Plugin> {
        self.current.read().expect("plugin lock poisoned").clone()
    }

    /// The candidate beside the current version, if any.
    pub fn candidate(&self) -> Option<Arc<Candidate>> {
        self.candidate.read().expect("candidate lock poisoned").clone()
    }

    /// Refuses a start on data the loaded version cannot serve: answers why.
    pub async fn check_stored_format(&self) -> Result<(), RolloutError> {
        let plugin = self.current();
        self.learn_formats(&plugin).await?;
        self.admissible(&plugin).await
    }

    /// Asks a freshly loaded version which data formats it serves, once.
    async fn learn_formats(&self, plugin: &Arc<Plugin>) -> Result<DataFormats, RolloutError> {
        if let Some(formats) = plugin.formats.get() {
            return Ok(*formats);
        }
        let declared = if plugin.migration.is_some() {
            let formats = self
                .run(plugin.clone(), false, Duration::ZERO, |exports, store| {
                    Box::pin(async move {
                        let migration = exports.migration(store)?.expect("checked: the version has the exports");
                        migration.call_data_formats(store).await
                    })
                })
                .await
                .map_err(|e| {
                    RolloutError::Incompatible(format!("cannot ask the plugin which data formats it reads: {e}"))
                })?;
            DataFormats {
                oldest: formats.oldest,
                newest: formats.newest,
                writes: formats.writes,
            }
        } else {
            DataFormats::EARLIER_WORLD
        };
        if let Some(flaw) = declared.flaw() {
            return Err(RolloutError::Incompatible(flaw));
        }
        Ok(*plugin.formats.get_or_init(|| declared))
    }

    /// Whether `plugin` (whose formats are known) may be handed the store as it is now.
    async fn admissible(&self, plugin: &Plugin) -> Result<(), RolloutError> {
        let stored = formats::stored(self.capabilities.store.as_ref())
            .await
            .map_err(RolloutError::Incompatible)?;
        match plugin.formats().refusal(stored) {
            Some(reason) => Err(RolloutError::Incompatible(reason)),
            None => Ok(()),
        }
    }

    /// Compiles (or maps from the cache) and checks `bytes`, and asks the version which data
    /// formats it serves: ready to become active or a candidate.
    async fn prepare(self: &Arc<Self>, bytes: Vec<u8>) -> Result<Arc<Plugin>, RolloutError> {
        let runtime = self.clone();
        // Compiling takes seconds of CPU: off the async workers.
        let plugin =
            tokio::task::spawn_blocking(move || plugin::load(&runtime.engine, &runtime.linker, &runtime.cache, &bytes))
                .await
                .map_err(|e| LoadError::Compile(format!("the compiler stopped: {e}")))??;
        let plugin = Arc::new(plugin);
        self.learn_formats(&plugin).await?;
        self.admissible(&plugin).await?;
        Ok(plugin)
    }

    /// Compiles (or maps from the cache) and checks `bytes`, then makes them the version new
    /// calls use; calls already running finish on the version they started with. Answers the
    /// new version and the one it replaced, which goes first in the history. A component that
    /// fails, or that cannot serve the stored data, leaves the current one.
    pub async fn swap(
        self: &Arc<Self>,
        bytes: Vec<u8>,
        source: VersionSource,
    ) -> Result<(Arc<Plugin>, Arc<Plugin>), RolloutError> {
        let _one_at_a_time = self.swapping.lock().await;
        let plugin = self.prepare(bytes).await?;
        let previous = self.activate(Version::new(plugin.clone(), source));
        Ok((plugin, previous))
    }

    /// Makes the version active before the current one active again, with the compiled code
    /// it kept; the current one goes first in the history, so a second rollback undoes the
    /// first. Refused when there is none, or when it cannot serve the stored data.
    pub async fn rollback(&self) -> Result<Version, RolloutError> {
        let _one_at_a_time = self.swapping.lock().await;
        let earlier = self
            .versions
            .lock()
            .expect("versions poisoned")
            .history
            .front()
            .cloned()
            .ok_or(RolloutError::NoEarlierVersion)?;
        self.admissible(&earlier.plugin).await?;
        self.versions.lock().expect("versions poisoned").history.pop_front();
        let version = Version::new(earlier.plugin, VersionSource::Rollback);
        self.activate(version.clone());
        Ok(version)
    }

    /// Names `format` as the stored data's format, for an operator who gives up rollbacks to
    /// versions that do not read it in exchange for what it brings: only upward, and only to a
    /// format the active version and the candidate, if any, serve. Answers the format stored
    /// before. Hosts sharing the store check it on their next swap, not at once. Upkeep may
    /// raise the format meanwhile (to 2, at start): the raise then reads it again.
    pub async fn raise_format(&self, format: u32) -> Result<u32, RolloutError> {
        let _one_at_a_time = self.swapping.lock().await;
        for _ in 0..RAISE_TRIES {
            match self.raise_format_once(format).await {
                Err(RolloutError::Conflict) => continue,
                answer => return answer,
            }
        }
        Err(RolloutError::Incompatible(
            "the stored data format kept changing while being raised; ask again".into(),
        ))
    }

    /// One read and guarded write of [`Runtime::raise_format`]; `Conflict` when the format
    /// changed between them.
    async fn raise_format_once(&self, format: u32) -> Result<u32, RolloutError> {
        let store = self.capabilities.store.as_ref();
        let key = formats::FORMAT_KEY.to_vec();
        let current = store
            .get(key.clone())
            .await
            .map_err(|e| RolloutError::Unavailable(format!("cannot read the stored data format: {e}")))?;
        let stored = match &current {
            None => 1,
            Some(value) => formats::parse(value).ok_or_else(|| {
                RolloutError::Incompatible(format!("the stored data format is not a number: {value:?}"))
            })?,
        };
        if format < stored {
            return Err(RolloutError::Incompatible(format!(
                "the stored data is in format {stored}, and a format is never lowered"
            )));
        }
        let (active, candidate) = {
            let versions = self.versions.lock().expect("versions poisoned");
            (versions.active.plugin.clone(), versions.candidate.clone())
        };
        let unserved = |role: &str, plugin: &Plugin| {
            let formats = plugin.formats();
            (!formats.serves(format)).then(|| {
                RolloutError::Incompatible(format!(
                    "the {role} plugin version reads data formats {} to {}, not {format}",
                    formats.oldest, formats.newest
                ))
            })
        };
        if let Some(refusal) = unserved("active", &active) {
            return Err(refusal);
        }
        if let Some(refusal) = candidate.and_then(|c| unserved("candidate", &c.version.plugin)) {
            return Err(refusal);
        }
        if format == stored && current.is_some() {
            return Ok(stored);
        }
        let guard = match current {
            Some(value) => crate::store::Condition::Equals(key.clone(), value),
            None => crate::store::Condition::Absent(key.clone()),
        };
        let put = crate::store::Op::Put(key, format.to_string().into_bytes());
        match store.commit(vec![guard], vec![put]).await {
            Ok(()) => Ok(stored),
            Err(crate::store::StoreError::Conflict(_)) => Err(RolloutError::Conflict),
            Err(e) => Err(RolloutError::Unavailable(format!(
                "cannot write the stored data format: {e}"
            ))),
        }
    }

    /// Compiles and checks `bytes` and sets them beside the active version as a canary or a
    /// dry run, in place of any candidate there was. Answers the candidate.
    pub async fn propose(self: &Arc<Self>, bytes: Vec<u8>, mode: Mode) -> Result<Arc<Candidate>, RolloutError> {
        let _one_at_a_time = self.swapping.lock().await;
        let plugin = self.prepare(bytes).await?;
        let mut versions = self.versions.lock().expect("versions poisoned");
        let candidate = Arc::new(Candidate::new(
            Version::new(plugin, VersionSource::Admin),
            mode,
            versions.policy.window,
        ));
        versions.candidate = Some(candidate.clone());
        *self.candidate.write().expect("candidate lock poisoned") = Some(candidate.clone());
        Ok(candidate)
    }

    /// Makes the candidate the active version; the one it replaces goes first in the history.
    pub async fn promote(&self) -> Result<Version, RolloutError> {
        let _one_at_a_time = self.swapping.lock().await;
        let candidate = self.candidate().ok_or(RolloutError::NoCandidate)?;
        self.admissible(&candidate.version.plugin).await?;
        let version = Version::new(candidate.version.plugin.clone(), VersionSource::Promote);
        self.clear_candidate();
        self.activate(version.clone());
        Ok(version)
    }

    /// Drops the candidate; calls it is running finish on it.
    pub async fn drop_candidate(&self) -> Result<Arc<Candidate>, RolloutError> {
        let _one_at_a_time = self.swapping.lock().await;
        let candidate = self.candidate().ok_or(RolloutError::NoCandidate)?;
        self.clear_candidate();
        Ok(candidate)
    }

    fn clear_candidate(&self) {
        self.versions.lock().expect("versions poisoned").candidate = None;
        *self.candidate.write().expect("candidate lock poisoned") = None;
    }

    /// The versions and the rollout in progress.
    pub async fn rollout(&self) -> Rollout {
        let stored_format = formats::stored(self.capabilities.store.as_ref()).await;
        let versions = self.versions.lock().expect("versions poisoned");
        Rollout {
            active: versions.active.clone(),
            history: versions.history.iter().cloned().collect(),
            candidate: versions.candidate.clone(),
            rolled_back: versions.rolled_back.clone(),
            stored_format,
        }
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
        // The canary is now judged against the new active version.
        if let Some(candidate) = &versions.candidate {
            *candidate.errors.lock().expect("error window poisoned") = ErrorWindow::new(versions.policy.window);
        }
        std::mem::replace(
            &mut *self.current.write().expect("plugin lock poisoned"),
            version.plugin,
        )
    }

    /// Counts a call tied to a group while a canary runs, and drops the canary when the rule of
    /// [`CanaryPolicy`] says so.
    fn judge<R>(&self, candidate: &Arc<Candidate>, arm: Arm, result: &Result<R, CallError>) {
        let failed = matches!(
            result,
            Err(CallError::Trap { .. } | CallError::Deadline | CallError::Refused(PluginError::Internal(_)))
        );
        let max_error_rate = self.versions.lock().expect("versions poisoned").policy.max_error_rate;
        let verdict = {
            let mut errors = candidate.errors.lock().expect("error window poisoned");
            errors.record(arm, failed, Instant::now());
            if arm == Arm::Canary && failed {
                errors.verdict(max_error_rate)
            } else {
                None
            }
        };
        if let Some(reason) = verdict {
            let mut versions = self.versions.lock().expect("versions poisoned");
            // Only the canary judged: a newer candidate may already have replaced it.
            if versions.candidate.as_ref().is_some_and(|c| Arc::ptr_eq(c, candidate)) {
                versions.candidate = None;
                *self.candidate.write().expect("candidate lock poisoned") = None;
                versions.rolled_back = Some(RolledBack {
                    sha256: candidate.version.plugin.sha256.clone(),
                    reason: reason.clone(),
                    at: std::time::SystemTime::now(),
                });
                METRICS.plugin_canary_rollbacks.inc();
                tracing::error!(sha256 = %candidate.version.plugin.sha256, %reason, "canary plugin version dropped: it fails more than the active one");
            }
        }
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
        self.call_waiting(export, Duration::ZERO, None, call).await
    }

    /// Like [`Runtime::call`], for a call that also waits on outgoing requests bounded by
    /// `waiting` (a delivery batch, whose requests are in flight together): its deadline is
    /// extended by that much, so a slow receiver is not taken for a runaway plugin. A call tied
    /// to `group` goes to the canary when the canary serves that group.
    async fn call_waiting<R, F>(
        &self,
        export: &'static str,
        waiting: Duration,
        group: Option<&str>,
        call: F,
    ) -> Result<R, CallError>
    where
        F: for<'a> FnOnce(&'a Exports, &'a mut Store<HostState>) -> bindings::BoxCall<'a, R>,
    {
        let canary = match (self.candidate(), group) {
            (Some(candidate), Some(group)) if matches!(candidate.mode, Mode::Canary { .. }) => {
                let arm = if candidate.serves(group) {
                    Arm::Canary
                } else {
                    Arm::Active
                };
                Some((candidate, arm))
            }
            _ => None,
        };
        let plugin = match &canary {
            Some((candidate, Arm::Canary)) => candidate.version.plugin.clone(),
            _ => self.current(),
        };
        let started = Instant::now();
        let span = tracing::debug_span!(
            target: crate::telemetry::SPANS,
            "plugin call",
            otel.name = export,
            otel.status_code = tracing::field::Empty,
        );
        let result = self.run(plugin, false, waiting, call).instrument(span.clone()).await;
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
        if let Some((candidate, arm)) = &canary {
            self.judge(candidate, *arm, &result);
        }
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

    async fn run<R, F>(&self, plugin: Arc<Plugin>, dry_run: bool, waiting: Duration, call: F) -> Result<R, CallError>
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
        self.run_bounded(plugin, dry_run, budget, call).await
    }

    /// A dry run's call: only when an instance slot is free at once, so it never holds up the
    /// service's own calls; `None` when none is.
    async fn run_shadow<R, F>(&self, plugin: Arc<Plugin>, call: F) -> Option<Result<R, CallError>>
    where
        F: for<'a> FnOnce(&'a Exports, &'a mut Store<HostState>) -> bindings::BoxCall<'a, R>,
    {
        let _slot = self.instances.try_acquire().ok()?;
        Some(self.run_bounded(plugin, true, self.limits.deadline, call).await)
    }

    /// Runs `call` in an instance slot already held, within `budget`.
    async fn run_bounded<R, F>(
        &self,
        plugin: Arc<Plugin>,
        dry_run: bool,
        budget: Duration,
        call: F,
    ) -> Result<R, CallError>
    where
        F: for<'a> FnOnce(&'a Exports, &'a mut Store<HostState>) -> bindings::BoxCall<'a, R>,
    {
        let deadline = Instant::now() + budget;
        // Epochs only interrupt guest code; this also bounds a call stuck inside a host import.
        match tokio::time::timeout(
            budget + 10 * EPOCH_TICK,
            self.run_in_slot(plugin, dry_run, deadline, call),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(CallError::Deadline),
        }
    }

    async fn run_in_slot<R, F>(
        &self,
        plugin: Arc<Plugin>,
        dry_run: bool,
        deadline: Instant,
        call: F,
    ) -> Result<R, CallError>
    where
        F: for<'a> FnOnce(&'a Exports, &'a mut Store<HostState>) -> bindings::BoxCall<'a, R>,
    {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let state = if dry_run {
            HostState::dry_run(&self.dry_run, limits, deadline)
        } else {
            HostState::new(&self.capabilities, limits, deadline)
        };
        let mut store = Store::new(&self.engine, state);
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

    /// The instance's `intake` interface, if this version of the plugin has it.
    pub fn intake(&self, store: &mut Store<HostState>) -> wasmtime::Result<Option<intake::Guest>> {
        self.plugin
            .intake
            .as_ref()
            .map(|indices| indices.load(store, &self.instance))
            .transpose()
    }

    /// The instance's `attempts` interface, if this version of the plugin has it.
    pub fn attempts(&self, store: &mut Store<HostState>) -> wasmtime::Result<Option<attempts::Guest>> {
        self.plugin
            .attempts
            .as_ref()
            .map(|indices| indices.load(store, &self.instance))
            .transpose()
    }

    /// The instance's `migration` interface, if this version of the plugin has it.
    pub fn migration(&self, store: &mut Store<HostState>) -> wasmtime::Result<Option<migration::Guest>> {
        self.plugin
            .migration
            .as_ref()
            .map(|indices| indices.load(store, &self.instance))
            .transpose()
    }

    /// The instance's `transform-api` interface, if this version of the plugin has it.
    pub fn transform_api(&self, store: &mut Store<HostState>) -> wasmtime::Result<Option<transform_api::Guest>> {
        self.plugin
            .transform_api
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
    Engine::new(&pooled_config(
        limits.max_instances,
        limits.memory_bytes,
        PoolShape {
            core_instances: 8,
            tables: 4,
        },
    ))
}

/// How many core instances and tables one component instance of an engine's pool may use.
pub struct PoolShape {
    /// Core instances per component instance.
    pub core_instances: u32,
    /// Tables per component instance.
    pub tables: u32,
}

/// The settings of an engine whose instances come from a pool of `instances` slots of at most
/// `memory_bytes` of linear memory each, with epoch interruption: the plugin's engine and the
/// transforms' share them.
pub fn pooled_config(instances: u32, memory_bytes: usize, shape: PoolShape) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        .total_core_instances(instances * shape.core_instances)
        .total_memories(instances)
        .total_tables(instances * shape.tables)
        .total_stacks(instances)
        .max_memory_size(memory_bytes)
        // Keep warm slots resident instead of returning them to the kernel after every call
        // (TOOLCHAIN.md: the largest single gain in instantiation cost). A Rust guest's stack
        // and data alone are over 1 MiB; the plugin links with 4 MiB of initial memory
        // (plugin/build.rs) so that a call neither grows the slot nor has it shrunk back.
        .linear_memory_keep_resident(4 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .epoch_interruption(true)
        .memory_reservation(memory_bytes as u64)
        .memory_reservation_for_growth(0);
    config
}

/// Composes the capabilities of the world, each added by its own module.
fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // Whatever Rust's std imports from WASI, served from an empty context.
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    crate::outbound::add_to_linker(linker)?;
    crate::store::add_to_linker(linker)?;
    crate::identity::add_to_linker(linker)?;
    crate::settings::add_to_linker(linker)?;
    crate::transform::add_to_linker(linker)?;
    Ok(())
}
