//! The wasmtime host of the webhooks service.
//!
//! The webhook logic is a WebAssembly component (`plugin/`); this crate gives it the
//! capabilities it imports and carries requests to it:
//!
//! - [`runtime`]: engine, pooling allocator, limits, plugin versions, one instance per call;
//! - [`api`]: REST routing, HTTP-level checks and the one error type;
//! - [`store`]: the ordered key-value capability and its backends;
//! - [`identity`]: the identity capability and its backends;
//! - [`outbound`]: the pooled HTTP client and SSRF guard behind `wasi:http`;
//! - [`ingress`] and [`dispatch`]: messages (and the platform's removals) in, delivery
//!   attempts out;
//! - [`retention`]: old records deleted and stored data kept up to date, beside the service;
//! - [`settings`]: the operator's delivery settings, for the plugin's policy;
//! - [`transform`]: tenants' transform components, checked, compiled and run in their own sandbox;
//! - [`migration`]: the import of the webhooks the platform's Go service kept;
//! - [`telemetry`]: traces over OTLP;
//! - [`config`] and [`server`]: configuration, start-up and shutdown.
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod dispatch;
pub mod identity;
pub mod ingress;
pub mod listener;
pub mod metrics;
pub mod migration;
pub mod outbound;
pub mod retention;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod tenancy;
pub mod transform;
