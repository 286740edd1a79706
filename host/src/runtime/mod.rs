//! The plugin runtime: one engine with the pooling allocator and epoch interruption, the
//! loaded plugin version, and a fresh store and instance for every call.

pub mod bindings;
mod state;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder, Trap,
    UpdateDeadline,
};

pub use state::{Capabilities, HostState};

use bindings::{Webhooks, WebhooksPre};

/// How often the engine's epoch advances; the granularity of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits applied to every call into the plugin.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest linear memory of one instance, in bytes.
    pub memory_bytes: usize,
    /// Longest wall time of one call.
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

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    /// The bytes are not a component this engine can compile.
    #[error("not a valid WebAssembly component: {0:#}")]
    Compile(wasmtime::Error),
    /// The component does not fit the `webhooks` world.
    #[error("the component does not implement the webhooks world: {0:#}")]
    World(wasmtime::Error),
}

/// Why a call into the plugin failed without an answer of its own.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call ran past its deadline and was stopped.
    #[error("the plugin call exceeded its deadline")]
    Deadline,
    /// The plugin trapped, or ran out of memory.
    #[error("the plugin call failed: {0}")]
    Trap(String),
    /// No instance could be created (for example, every pool slot is in use).
    #[error("no plugin instance could be created: {0}")]
    Instantiate(String),
}

/// One loaded version of the plugin, ready to instantiate.
pub struct Plugin {
    pre: WebhooksPre<HostState>,
    /// Hex SHA-256 of the component's bytes.
    pub sha256: String,
    /// When this version was loaded.
    pub loaded_at: SystemTime,
}

/// The engine, linker and current plugin version.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    limits: Limits,
    capabilities: Capabilities,
    current: RwLock<Arc<Plugin>>,
}

impl Runtime {
    /// Builds the engine and linker and loads the plugin at `path`.
    pub fn new(path: &Path, limits: Limits, capabilities: Capabilities) -> Result<Arc<Self>, LoadError> {
        let engine = engine(&limits).map_err(LoadError::Compile)?;
        let mut linker = Linker::new(&engine);
        link(&mut linker).map_err(LoadError::World)?;
        let bytes = std::fs::read(path).map_err(|e| LoadError::Read(path.display().to_string(), e))?;
        let plugin = load(&engine, &linker, &bytes)?;
        let runtime = Arc::new(Runtime {
            engine,
            linker,
            limits,
            capabilities,
            current: RwLock::new(Arc::new(plugin)),
        });
        runtime.start_epoch_ticker();
        Ok(runtime)
    }

    /// The plugin version new calls use.
    pub fn current(&self) -> Arc<Plugin> {
        self.current.read().expect("plugin lock poisoned").clone()
    }

    /// Compiles, checks and installs a new plugin version; calls already running finish on the
    /// version they started with.
    pub fn swap(&self, bytes: &[u8]) -> Result<Arc<Plugin>, LoadError> {
        let plugin = Arc::new(load(&self.engine, &self.linker, bytes)?);
        *self.current.write().expect("plugin lock poisoned") = plugin.clone();
        Ok(plugin)
    }

    /// Runs `call` against a fresh instance of the current plugin, within the call limits.
    pub async fn call<R, F>(&self, call: F) -> Result<R, CallError>
    where
        F: for<'a> FnOnce(&'a Webhooks, &'a mut Store<HostState>) -> bindings::BoxCall<'a, R>,
    {
        let plugin = self.current();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let deadline = Instant::now() + self.limits.deadline;
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
        call(&instance, &mut store)
            .await
            .map_err(|e| match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => CallError::Deadline,
                _ => CallError::Trap(format!("{e:#}")),
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

fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // Whatever Rust's std imports from WASI, served from an empty context.
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    // Outgoing HTTP only: `types` and `outgoing-handler`, through the host's hooks.
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    bindings::mainflux::webhooks::store::add_to_linker::<_, HasSelf<crate::store::StoreCtx>>(linker, |s| &mut s.store)?;
    bindings::mainflux::webhooks::identity::add_to_linker::<_, HasSelf<crate::identity::IdentityCtx>>(linker, |s| {
        &mut s.identity
    })?;
    bindings::mainflux::webhooks::settings::add_to_linker::<_, HasSelf<crate::settings::SettingsCtx>>(linker, |s| {
        &mut s.settings
    })?;
    Ok(())
}

fn load(engine: &Engine, linker: &Linker<HostState>, bytes: &[u8]) -> Result<Plugin, LoadError> {
    let component = Component::new(engine, bytes).map_err(LoadError::Compile)?;
    let instance_pre = linker.instantiate_pre(&component).map_err(LoadError::World)?;
    let pre = WebhooksPre::new(instance_pre).map_err(LoadError::World)?;
    Ok(Plugin {
        pre,
        sha256: hex(&Sha256::digest(bytes)),
        loaded_at: SystemTime::now(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
