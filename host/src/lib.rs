//! The wasmtime host of the webhooks service.
//!
//! The webhook logic is a WebAssembly component (`plugin/`); this crate gives it the
//! capabilities it imports and carries requests to it:
//!
//! - [`runtime`]: engine, pooling allocator, limits, plugin versions, one instance per call;
//! - [`api`]: REST routing, HTTP-level checks and the one error type;
//! - [`store`]: the ordered key-value capability and its backends;
//! - [`identity`]: the identity capability and its backends;
//! - [`config`] and [`server`]: configuration, start-up and shutdown.
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod identity;
pub mod runtime;
pub mod server;
pub mod store;
