//! The `identity` interface of the world, granted to each plugin instance over a backend.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{IdentityBackend, IdentityError, Role};
use crate::runtime::bindings::mainflux::webhooks::identity as wit;
use crate::runtime::bindings::mainflux::webhooks::types::{Error, Role as WitRole};

/// How a call's data exposes its `identity` state, as `WasiHttpView` does for `wasi:http`.
pub trait IdentityView: Send + 'static {
    /// The call's `identity` state.
    fn identity(&mut self) -> &mut IdentityCtx;
}

/// Adds the `identity` interface to `linker`, served from each call's [`IdentityCtx`].
pub fn add_to_linker<T: IdentityView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<IdentityCtx>>(linker, T::identity)
}

/// The per-call state of the `identity` capability: a handle to the shared backend.
pub struct IdentityCtx {
    backend: Arc<dyn IdentityBackend>,
}

impl IdentityCtx {
    /// Grants access to `backend`.
    pub fn new(backend: Arc<dyn IdentityBackend>) -> Self {
        IdentityCtx { backend }
    }
}

fn role(role: WitRole) -> Role {
    match role {
        WitRole::Viewer => Role::Viewer,
        WitRole::Editor => Role::Editor,
        WitRole::Admin => Role::Admin,
    }
}

fn to_wit(error: IdentityError) -> Error {
    match error {
        IdentityError::Unauthenticated(m) => Error::Unauthenticated(m),
        IdentityError::Forbidden(m) => Error::Forbidden(m),
        IdentityError::NotFound(m) => Error::NotFound(m),
        IdentityError::Invalid(m) => Error::Invalid(m),
        IdentityError::Unavailable(m) => Error::Unavailable(m),
    }
}

impl wit::Host for IdentityCtx {
    async fn authenticate(&mut self, token: String) -> Result<String, Error> {
        self.backend.authenticate(&token).await.map_err(to_wit)
    }

    async fn authorize_thing(&mut self, token: String, thing_id: String, wanted: WitRole) -> Result<String, Error> {
        self.backend
            .authorize_thing(&token, &thing_id, role(wanted))
            .await
            .map_err(to_wit)
    }

    async fn authorize_group(&mut self, token: String, group_id: String, wanted: WitRole) -> Result<(), Error> {
        self.backend
            .authorize_group(&token, &group_id, role(wanted))
            .await
            .map_err(to_wit)
    }
}

impl crate::runtime::bindings::mainflux::webhooks::types::Host for IdentityCtx {}
