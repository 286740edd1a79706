//! Tenants' transform components (world `mainflux:transform/transform`, SPEC.md section 10): each checked and
//! compiled once per SHA-256, its compiled code kept on disk beside the plugin's, then run in a
//! fresh instance per call, in an engine of its own with tighter limits than the plugin's and
//! nothing granted but an empty WASI context. A call that traps, overruns or answers too much
//! fails alone; the host and every other call go on.

mod capability;
mod ticker;

pub use capability::{TransformsCtx, TransformsView, add_to_linker};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::runtime::{CompileCache, PoolShape, pooled_config, sha256_hex};
use ticker::Ticker;

/// The host's side of the `transform` world.
#[allow(
    missing_docs,
    reason = "generated from the WIT, whose doc comments it carries where it can"
)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/transform",
        world: "transform",
        exports: { default: async },
    });
}

pub use bindings::exports::mainflux::transform::transformation::{Action, Changes, Message};
use bindings::{Transform, TransformPre};

/// The largest transform component accepted (SPEC.md section 10).
pub const MAX_COMPONENT_BYTES: usize = 2 << 20;

/// Limits of transforms, each its own setting (SPEC.md section 10).
#[derive(Debug, Clone, Copy)]
pub struct TransformLimits {
    /// Largest linear memory of one instance, in bytes (`MF_WEBHOOKS_TRANSFORM_MEMORY`).
    pub memory_bytes: usize,
    /// Longest time of one call, instantiation included (`MF_WEBHOOKS_TRANSFORM_DEADLINE`).
    pub deadline: Duration,
    /// Largest answer: body, content type, headers and path together, in bytes.
    pub answer_bytes: usize,
    /// Largest component accepted, in bytes.
    pub component_bytes: usize,
    /// Instances that may exist at once; a call beyond waits for a free one within its deadline.
    pub max_instances: u32,
    /// Compiled transforms kept loaded in memory; past it the least recently used is dropped
    /// (and mapped from the disk cache again when next called).
    pub loaded: usize,
    /// Most webhooks of one group with a transform (`MF_WEBHOOKS_TRANSFORM_QUOTA`); 0 for no
    /// limit. The plugin enforces it.
    pub group_quota: u32,
}

impl Default for TransformLimits {
    fn default() -> Self {
        TransformLimits {
            memory_bytes: 16 << 20,
            deadline: Duration::from_millis(10),
            answer_bytes: 1 << 20,
            component_bytes: MAX_COMPONENT_BYTES,
            max_instances: 64,
            loaded: 256,
            group_quota: 100,
        }
    }
}

/// Why a transform could not be loaded or gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The bytes are over the size limit.
    #[error("the component is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a component of the `transform` world, or it does not compile.
    #[error("not a transform component: {0}")]
    Invalid(String),
    /// No transform of this SHA-256 is loaded: load its bytes first.
    #[error("no transform {0} is loaded")]
    Unknown(String),
    /// The call trapped.
    #[error("the transform trapped: {0}")]
    Trap(String),
    /// The call reached the memory limit.
    #[error("the transform reached its memory limit of {0} bytes")]
    Memory(usize),
    /// The call ran past its deadline.
    #[error("the transform ran past its deadline of {0:?}")]
    Deadline(Duration),
    /// The answer is over the size limit.
    #[error("the transform's answer is {size} bytes, over the limit of {limit}")]
    AnswerTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The transform answered with an error of its own.
    #[error("the transform failed: {0}")]
    Failed(String),
}

/// One call's store data: an empty WASI context and the memory limit.
struct TransformState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimit,
}

impl WasiView for TransformState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Refuses growth past the limit and remembers that it did, so the trap that follows is
/// reported as the memory limit rather than as a failure of the component's own.
struct MemoryLimit {
    max: usize,
    reached: bool,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.reached = true;
            return Err(wasmtime::format_err!("memory limit of {} bytes reached", self.max));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A loaded transform and when it was last called, for dropping the least recently used.
struct Loaded {
    pre: TransformPre<TransformState>,
    used: Instant,
}

/// Checks, compiles and runs transforms.
pub struct Transforms {
    engine: Engine,
    linker: Linker<TransformState>,
    cache: CompileCache,
    loaded: Mutex<HashMap<String, Loaded>>,
    limits: TransformLimits,
    ticker: Ticker,
    instances: tokio::sync::Semaphore,
}

/// How often the transforms' engine's epoch advances while a call runs: deadlines are
/// milliseconds, so a tick must be finer than the plugin's.
const TICK: Duration = Duration::from_millis(1);

impl Transforms {
    /// An engine and linker for transforms under `limits`, their compiled code kept in
    /// `cache_dir` (none: compiled again after each start).
    pub fn new(limits: TransformLimits, cache_dir: Option<PathBuf>) -> anyhow::Result<Arc<Self>> {
        let config = pooled_config(
            limits.max_instances,
            limits.memory_bytes,
            PoolShape {
                core_instances: 4,
                tables: 2,
            },
        );
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // What Rust's std links from WASI, served from an empty context; nothing else.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        let ticker = Ticker::start(&engine, TICK);
        Ok(Arc::new(Transforms {
            engine,
            linker,
            cache: CompileCache::new(cache_dir).keeping(1024),
            loaded: Mutex::new(HashMap::new()),
            limits,
            ticker,
            instances: tokio::sync::Semaphore::new(limits.max_instances as usize),
        }))
    }

    /// The limits in force.
    pub fn limits(&self) -> &TransformLimits {
        &self.limits
    }

    /// Checks that `bytes` is a transform component, compiles it (or maps its code from the
    /// disk cache) and keeps it loaded; answers its SHA-256 in hex.
    pub fn load(&self, bytes: &[u8]) -> Result<String, TransformError> {
        if bytes.len() > self.limits.component_bytes {
            return Err(TransformError::TooLarge {
                size: bytes.len(),
                limit: self.limits.component_bytes,
            });
        }
        let sha256 = sha256_hex(bytes);
        if self.touch(&sha256) {
            return Ok(sha256);
        }
        let (component, origin) = self
            .cache
            .component(&self.engine, bytes, &sha256)
            .map_err(|e| TransformError::Invalid(format!("{e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(TransformPre::new)
            .map_err(|e| TransformError::Invalid(format!("{e:#}")))?;
        if origin == crate::runtime::Origin::Compiled {
            self.cache.store(&self.engine, &component, &sha256);
        }
        self.keep(&sha256, pre);
        Ok(sha256)
    }

    /// Whether the transform of this SHA-256 is loaded, marking it recently used.
    fn touch(&self, sha256: &str) -> bool {
        let mut loaded = self.loaded.lock().expect("loaded transforms poisoned");
        match loaded.get_mut(sha256) {
            Some(entry) => {
                entry.used = Instant::now();
                true
            }
            None => false,
        }
    }

    fn keep(&self, sha256: &str, pre: TransformPre<TransformState>) {
        let mut loaded = self.loaded.lock().expect("loaded transforms poisoned");
        if loaded.len() >= self.limits.loaded
            && let Some(oldest) = loaded
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(sha, _)| sha.clone())
        {
            loaded.remove(&oldest);
        }
        loaded.insert(
            sha256.to_owned(),
            Loaded {
                pre,
                used: Instant::now(),
            },
        );
    }

    /// Runs the transform of this SHA-256 on `message`, with the webhook's `metadata` (JSON
    /// text), in a fresh instance under the limits.
    pub async fn apply(&self, sha256: &str, message: &Message, metadata: &str) -> Result<Action, TransformError> {
        let pre = {
            let mut loaded = self.loaded.lock().expect("loaded transforms poisoned");
            let entry = loaded
                .get_mut(sha256)
                .ok_or_else(|| TransformError::Unknown(sha256.to_owned()))?;
            entry.used = Instant::now();
            entry.pre.clone()
        };
        let deadline = Instant::now() + self.limits.deadline;
        let overrun = TransformError::Deadline(self.limits.deadline);
        let _slot = tokio::time::timeout_at(deadline.into(), self.instances.acquire())
            .await
            .map_err(|_| overrun.clone())?
            .expect("the instance semaphore is never closed");
        let _running = self.ticker.running();
        let mut store = Store::new(
            &self.engine,
            TransformState {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                limiter: MemoryLimit {
                    max: self.limits.memory_bytes,
                    reached: false,
                },
            },
        );
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(1);
        // A call runs to its end or its deadline without yielding: calls that took turns on a
        // worker would each see the others' time counted against their milliseconds.
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        let result = async {
            let transform: Transform = pre.instantiate_async(&mut store).await?;
            transform
                .mainflux_transform_transformation()
                .call_apply(&mut store, message, metadata)
                .await
        }
        .await;
        let answer = match result {
            Ok(answer) => answer,
            Err(error) if store.data().limiter.reached => {
                drop(error);
                return Err(TransformError::Memory(self.limits.memory_bytes));
            }
            Err(error) => {
                return Err(match error.downcast_ref::<Trap>() {
                    Some(Trap::Interrupt) => overrun,
                    _ => TransformError::Trap(format!("{error:#}")),
                });
            }
        };
        let action = answer.map_err(TransformError::Failed)?;
        let size = answer_size(&action);
        if size > self.limits.answer_bytes {
            return Err(TransformError::AnswerTooLarge {
                size,
                limit: self.limits.answer_bytes,
            });
        }
        Ok(action)
    }
}

/// The bytes of an answer that the host holds on to: the reason of a skip, or what a send
/// changes.
fn answer_size(action: &Action) -> usize {
    match action {
        Action::Skip(reason) => reason.len(),
        Action::Send(send) => {
            send.body.as_ref().map_or(0, Vec::len)
                + send.content_type.as_ref().map_or(0, String::len)
                + send.path.len()
                + send
                    .headers
                    .iter()
                    .map(|(name, value)| name.len() + value.len())
                    .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_measured_by_what_it_carries() {
        let send = Action::Send(Changes {
            body: Some(vec![0; 10]),
            content_type: Some("text/plain".into()),
            headers: vec![("x-a".into(), "bc".into())],
            path: "/p".into(),
        });
        assert_eq!(answer_size(&send), 10 + 10 + 5 + 2);
        assert_eq!(answer_size(&Action::Skip("why".into())), 3);
    }
}
