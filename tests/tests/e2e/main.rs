//! End-to-end tests: the real `webhooks-host` binary, the real plugin, real HTTP.
//!
//! One test binary with a module per area keeps build times down.

mod connections;
mod crash;
mod delivery;
mod delivery_log;
mod errors;
mod fuzz;
mod health;
mod isolation;
mod operations;
mod paging;
mod persistence;
mod platform;
mod registry;
mod replacement;
mod retries;
mod rollout;
mod runtime;
mod signing;
mod traces;
mod transforms;
mod webhook_transforms;
mod webhooks;
