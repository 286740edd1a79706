//! One version of the plugin: compiled (or mapped from the compile cache), checked against the
//! `webhooks` world, and ready to instantiate.

use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, InstancePre, Linker};

use super::HostState;
use super::bindings::exports::mainflux::webhooks::{api, attempts, events, intake, migration, transform_api};
use super::cache::{CompileCache, Origin};
use super::formats::DataFormats;

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    /// The bytes are not a component this engine can compile.
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// The component does not fit the `webhooks` world.
    #[error("the component does not implement the webhooks world: {0}")]
    World(String),
}

/// The world a plugin implements. Plugins built for earlier versions run too: one without the
/// `attempts` export (0.1.3) is given the ids of the deliveries to attempt alone; one built for
/// 0.1.2 also does not use `store.scan-prefixes`; one without the
/// `transform-api` export (0.1.1) serves no transforms, one without the `intake` export (0.1.0)
/// also takes messages one call each, one without the `migration` exports also runs without
/// the import.
pub const WORLD: &str = "mainflux:webhooks/webhooks@0.1.4";

/// One loaded version of the plugin, ready to instantiate.
pub struct Plugin {
    pub(super) pre: InstancePre<HostState>,
    /// Where the `api` exports are, found once per version.
    pub(super) api: api::GuestIndices,
    /// Where the `events` exports are, found once per version.
    pub(super) events: events::GuestIndices,
    /// Where the `migration` exports are, if this version has them: a plugin built before
    /// they were added runs without the import of the Go service's webhooks.
    pub(super) migration: Option<migration::GuestIndices>,
    /// Where the `intake` export is, if this version has it: a plugin built before it was
    /// added takes messages one call each.
    pub(super) intake: Option<intake::GuestIndices>,
    /// Where the `attempts` export is, if this version has it: a plugin built before it was
    /// added is given the ids of the deliveries to attempt alone.
    pub(super) attempts: Option<attempts::GuestIndices>,
    /// Where the `transform-api` export is, if this version has it: a plugin built before it
    /// was added serves no transforms.
    pub(super) transform_api: Option<transform_api::GuestIndices>,
    /// Hex SHA-256 of the component's bytes.
    pub sha256: String,
    /// When this version was loaded.
    pub loaded_at: SystemTime,
    /// How long compiling (or mapping from the cache) and checking took.
    pub load_time: Duration,
    /// Whether the compiled code came from the compile cache.
    pub cached: bool,
    /// The stored data formats it serves, learnt once it can be called.
    pub(super) formats: std::sync::OnceLock<DataFormats>,
}

impl Plugin {
    /// The world this version implements, with the optional exports it lacks.
    pub fn world(&self) -> String {
        world_name(
            self.migration.is_some(),
            self.intake.is_some(),
            self.transform_api.is_some(),
            self.attempts.is_some(),
        )
    }

    /// Whether this version serves transforms (has the `transform-api` export).
    pub fn serves_transforms(&self) -> bool {
        self.transform_api.is_some()
    }

    /// The stored data formats this version serves (what an earlier world serves until it
    /// has been asked).
    pub fn formats(&self) -> DataFormats {
        self.formats.get().copied().unwrap_or(DataFormats::EARLIER_WORLD)
    }
}

/// The world's name, with the optional exports a version lacks: each earlier world lacks the
/// exports of the later ones too, so it is named by the first it lacks.
fn world_name(has_migration: bool, has_intake: bool, has_transforms: bool, has_attempts: bool) -> String {
    match (has_migration, has_intake, has_transforms, has_attempts) {
        (true, true, true, true) => WORLD.to_owned(),
        (true, true, true, false) => format!("{WORLD} without attempts"),
        (true, true, false, _) => format!("{WORLD} without transform-api"),
        (true, false, _, _) => format!("{WORLD} without intake"),
        (false, _, _, _) => format!("{WORLD} without migration"),
    }
}

/// Compiles `bytes` (or maps them from `cache`) and checks them against the world; only a
/// component that passes is written to the cache.
pub(super) fn load(
    engine: &Engine,
    linker: &Linker<HostState>,
    cache: &CompileCache,
    bytes: &[u8],
) -> Result<Plugin, LoadError> {
    let started = Instant::now();
    let sha256 = sha256_hex(bytes);
    let (component, origin) = cache
        .component(engine, bytes, &sha256)
        .map_err(|e| LoadError::Compile(one_line(&e)))?;
    let (pre, api, events) = check(linker, &component)?;
    let migration = migration::GuestIndices::new(&pre).ok();
    let intake = intake::GuestIndices::new(&pre).ok();
    let attempts = attempts::GuestIndices::new(&pre).ok();
    let transform_api = transform_api::GuestIndices::new(&pre).ok();
    if transform_api.is_none() {
        tracing::info!(
            %sha256,
            "the plugin has no transform-api export (built for an earlier world): it serves no transforms"
        );
    }
    if intake.is_none() {
        tracing::info!(
            %sha256,
            "the plugin has no intake export (built for an earlier world): messages are taken in one call each"
        );
    }
    if attempts.is_none() {
        tracing::info!(
            %sha256,
            "the plugin has no attempts export (built for an earlier world): deliveries are attempted by id alone"
        );
    }
    if origin == Origin::Compiled {
        cache.store(engine, &component, &sha256);
    }
    Ok(Plugin {
        pre,
        api,
        events,
        migration,
        intake,
        attempts,
        transform_api,
        sha256,
        loaded_at: SystemTime::now(),
        load_time: started.elapsed(),
        cached: origin == Origin::Cached,
        formats: std::sync::OnceLock::new(),
    })
}

/// The component linked against the host's capabilities, and where its required exports are.
type Checked = (InstancePre<HostState>, api::GuestIndices, events::GuestIndices);

/// Links `component` against the host's capabilities and finds the exports every plugin must
/// have (`api` and `events`); the others are looked for by [`load`].
pub(super) fn check(linker: &Linker<HostState>, component: &Component) -> Result<Checked, LoadError> {
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| LoadError::World(one_line(&e)))?;
    let api = api::GuestIndices::new(&pre).map_err(|e| LoadError::World(one_line(&e)))?;
    let events = events::GuestIndices::new(&pre).map_err(|e| LoadError::World(one_line(&e)))?;
    Ok((pre, api, events))
}

/// What `check-plugin` tells an operator about a component.
#[derive(Debug)]
pub struct Inspection {
    /// Hex SHA-256 of the component's bytes.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: usize,
    /// How long compiling took.
    pub compile_time: Duration,
    /// The component's imports, by name.
    pub imports: Vec<String>,
    /// The component's exports, by name.
    pub exports: Vec<String>,
    /// Whether it implements the world, and if not, why.
    pub verdict: Result<(), LoadError>,
    /// The world it implements when it does, with the optional exports it lacks.
    pub world: Option<String>,
}

/// Compiles `bytes` and reports its imports, exports and whether it implements the world.
pub(super) fn inspect(engine: &Engine, linker: &Linker<HostState>, bytes: &[u8]) -> Result<Inspection, LoadError> {
    let started = Instant::now();
    let component = Component::new(engine, bytes).map_err(|e| LoadError::Compile(one_line(&e)))?;
    let compile_time = started.elapsed();
    let kind = component.component_type();
    let imports = kind.imports(engine).map(|(name, _)| name.to_owned()).collect();
    let exports = kind.exports(engine).map(|(name, _)| name.to_owned()).collect();
    let checked = check(linker, &component);
    let world = checked.as_ref().ok().map(|(pre, _, _)| {
        world_name(
            migration::GuestIndices::new(pre).is_ok(),
            intake::GuestIndices::new(pre).is_ok(),
            transform_api::GuestIndices::new(pre).is_ok(),
            attempts::GuestIndices::new(pre).is_ok(),
        )
    });
    Ok(Inspection {
        sha256: sha256_hex(bytes),
        size: bytes.len(),
        compile_time,
        imports,
        exports,
        verdict: checked.map(drop),
        world,
    })
}

/// An error and its causes on one line, for logs and JSON answers.
fn one_line(error: &wasmtime::Error) -> String {
    format!("{error:#}").replace('\n', " ")
}

/// The SHA-256 of `bytes` in lowercase hex: how components are named everywhere.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_is_named_by_what_it_lacks_first() {
        assert_eq!(world_name(true, true, true, true), WORLD);
        assert_eq!(world_name(true, true, true, false), format!("{WORLD} without attempts"));
        // Each earlier world predates the later exports too.
        assert_eq!(
            world_name(true, true, false, false),
            format!("{WORLD} without transform-api")
        );
        assert_eq!(world_name(true, false, false, false), format!("{WORLD} without intake"));
        assert_eq!(
            world_name(false, false, false, false),
            format!("{WORLD} without migration")
        );
    }
}
