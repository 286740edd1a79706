//! The webhook logic of the webhooks service, built as a WebAssembly component.
//!
//! Everything a user can observe of webhooks is decided here: validation, who may do what,
//! the storage model and the JSON shape of every answer. The host only carries requests in
//! and grants the `store` and `identity` capabilities (DESIGN.md, principle 1).
//!
//! The logic is written against small traits, [`repo::Kv`], [`access::Access`] and
//! [`outbound::Sender`], so
//! that it runs unchanged over the component's imports and, in unit tests, over in-memory
//! stand-ins.

pub mod access;
pub mod delivery;
pub mod delivery_log;
pub mod error;
pub mod events;
pub mod keys;
pub mod outbound;
pub mod page;
pub mod record;
pub mod repo;
pub mod service;
pub mod upkeep;
pub mod webhook;

#[cfg(target_arch = "wasm32")]
pub mod component;

/// Bindings generated from the `webhooks` world in `wit/`.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "webhooks",
        pub_export_macro: true,
        generate_all,
    });
}

pub use bindings::mainflux::webhooks::types::{Error, Role};
