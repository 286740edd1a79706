//! The webhook logic of the webhooks service, built as a WebAssembly component.
//!
//! Everything a user can observe of webhooks is decided here: validation, who may do what,
//! the storage model and the JSON shape of every answer. The host only carries requests in
//! and grants the `store`, `identity` and `transforms` capabilities (DESIGN.md, principle 1).
//!
//! The logic is written against small traits, the [`ports`] ([`ports::Kv`], [`ports::Access`],
//! [`ports::Sender`], [`ports::Transformer`], [`ports::Clock`]), so that it runs unchanged over
//! the component's imports and, in unit tests, over the in-memory doubles of `testing`.
//!
//! Modules depend on each other in one direction only, each on those before it:
//!
//! 1. [`bindings`], [`error`], [`keys`] (the key layouts), [`record`] (the versioned codec);
//! 2. [`ports`]: the capabilities as traits;
//! 3. [`store`]: guarded commits and the retry loop over any [`ports::Kv`]; [`format`]: the
//!    stored data's format;
//! 4. [`webhooks`]: the record, listings, its place in the store, the name index, the
//!    operations behind the REST API;
//! 5. [`removal`]: the one path that removes webhooks;
//! 6. [`deliveries`]: the message path, the retry policy, what a transform decides of a
//!    delivery, and the delivery log;
//! 7. [`transforms`]: attaching, detaching and trying a webhook's transform;
//! 8. `component`: the exports and imports, adapted to the modules above;
//! 9. `testing` (tests only): the ports' doubles and the fixtures every suite shares.

pub mod deliveries;
pub mod error;
pub mod format;
pub mod keys;
pub mod ports;
pub mod record;
pub mod removal;
pub mod store;
pub mod transforms;
pub mod webhooks;

#[cfg(target_arch = "wasm32")]
pub mod component;

#[cfg(test)]
mod testing;

/// Bindings generated from the `webhooks` world in `wit/`.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    #[cfg(not(feature = "previous-world"))]
    wit_bindgen::generate!({
        path: "../wit",
        world: "webhooks",
        pub_export_macro: true,
        generate_all,
    });
    #[cfg(feature = "previous-world")]
    wit_bindgen::generate!({
        path: "../wit",
        world: "webhooks-before-migration",
        pub_export_macro: true,
        generate_all,
    });
}

pub use bindings::mainflux::webhooks::types::{Error, Role};
