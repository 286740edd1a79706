//! Builds of the webhooks plugin that differ on purpose, for the runtime's swap and fault
//! tests. Each cargo feature makes one component (the Makefile builds them all into
//! `target/plugin-variants/<feature>.wasm`):
//!
//! - `tagged`: the real logic; list and view answers carry `"variant": "tagged"`.
//! - `trap`, `spin`, `grow`: the real logic, except that every `deliver` call (of `events` or
//!   `attempts`) and any list filtered by `name=fault` traps, never returns, or allocates
//!   without end. Every other call works, so a test can show that good calls go on beside a
//!   faulty one.
//! - `previous`: the `tagged` logic built for the world before the `migration` exports.
//! - `legacy`: the real logic declaring that it serves only stored data format 1 (what plugins
//!   before the name-search index wrote), with no upkeep: the host must refuse it over a store
//!   in format 2.
//! - `partial`: exports `api` but not `events`, so it does not implement the world.

#[cfg(feature = "wrap")]
mod wrapped;

#[cfg(feature = "partial")]
mod partial;
