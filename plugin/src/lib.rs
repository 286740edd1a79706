//! The webhook logic of the webhooks service, built as a WebAssembly component.
//!
//! Everything a user can observe of webhooks is decided here: validation, who may do what,
//! the storage model and the JSON shape of every answer. The host only carries requests in
//! and grants the `store` and `identity` capabilities (DESIGN.md, principle 1).
//!
//! The logic is written against small traits, [`store::Kv`], [`access::Access`] and
//! [`deliveries::outbound::Sender`], so
//! that it runs unchanged over the component's imports and, in unit tests, over in-memory
//! stand-ins.

pub mod access;
pub mod deliveries;
pub mod error;
pub mod keys;
pub mod record;
pub mod removal;
pub mod store;
pub mod webhooks;

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
