//! The `store` interface of the world, granted to each plugin instance over a backend.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{Condition, KvBackend, Op, StoreError};
use crate::runtime::bindings::mainflux::webhooks::store as wit;

/// How a call's data exposes its `store` state, as `WasiHttpView` does for `wasi:http`.
pub trait StoreView: Send + 'static {
    /// The call's `store` state.
    fn store(&mut self) -> &mut StoreCtx;
}

/// Adds the `store` interface to `linker`, served from each call's [`StoreCtx`].
pub fn add_to_linker<T: StoreView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<StoreCtx>>(linker, T::store)
}

/// The per-call state of the `store` capability: a handle to the shared backend.
pub struct StoreCtx {
    backend: Arc<dyn KvBackend>,
}

impl StoreCtx {
    /// Grants access to `backend`.
    pub fn new(backend: Arc<dyn KvBackend>) -> Self {
        StoreCtx { backend }
    }
}

fn to_wit(error: StoreError) -> wit::StoreError {
    match error {
        StoreError::Conflict(index) => wit::StoreError::Conflict(index),
        StoreError::Unavailable(reason) => {
            tracing::error!(%reason, "store call failed");
            wit::StoreError::Unavailable(reason)
        }
    }
}

impl wit::Host for StoreCtx {
    async fn get(&mut self, key: Vec<u8>) -> Result<Option<Vec<u8>>, wit::StoreError> {
        self.backend.get(key).await.map_err(to_wit)
    }

    async fn get_many(&mut self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>, wit::StoreError> {
        self.backend.get_many(keys).await.map_err(to_wit)
    }

    async fn scan(
        &mut self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: u32,
        reverse: bool,
    ) -> Result<Vec<wit::Entry>, wit::StoreError> {
        let entries = self.backend.scan(prefix, after, limit, reverse).await.map_err(to_wit)?;
        Ok(entries
            .into_iter()
            .map(|(key, value)| wit::Entry { key, value })
            .collect())
    }

    async fn scan_prefixes(
        &mut self,
        prefixes: Vec<Vec<u8>>,
        limit: u32,
    ) -> Result<Vec<Vec<wit::Entry>>, wit::StoreError> {
        let answers = self.backend.scan_prefixes(prefixes, limit).await.map_err(to_wit)?;
        Ok(answers
            .into_iter()
            .map(|entries| {
                entries
                    .into_iter()
                    .map(|(key, value)| wit::Entry { key, value })
                    .collect()
            })
            .collect())
    }

    async fn commit(&mut self, guards: Vec<wit::Condition>, ops: Vec<wit::Op>) -> Result<(), wit::StoreError> {
        let guards = guards
            .into_iter()
            .map(|guard| match guard {
                wit::Condition::Absent(key) => Condition::Absent(key),
                wit::Condition::Present(key) => Condition::Present(key),
                wit::Condition::Equals(entry) => Condition::Equals(entry.key, entry.value),
            })
            .collect();
        let ops = ops
            .into_iter()
            .map(|op| match op {
                wit::Op::Put(entry) => Op::Put(entry.key, entry.value),
                wit::Op::Delete(key) => Op::Delete(key),
            })
            .collect();
        self.backend.commit(guards, ops).await.map_err(to_wit)
    }
}
