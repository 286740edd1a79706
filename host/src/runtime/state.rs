//! What one plugin call's store holds: the WASI context (empty), the granted capabilities and
//! the call's limits.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::identity::{IdentityBackend, IdentityCtx, IdentityView};
use crate::outbound::{OutboundClient, OutboundHooks};
use crate::settings::{DeliverySettings, SettingsCtx, SettingsView};
use crate::store::{KvBackend, StoreCtx, StoreView};
use crate::transform::{Transforms, TransformsCtx, TransformsView};

/// The capabilities every call is granted, shared by all calls.
#[derive(Clone)]
pub struct Capabilities {
    /// The storage backend behind `store`.
    pub store: Arc<dyn KvBackend>,
    /// The identity backend behind `identity`.
    pub identity: Arc<dyn IdentityBackend>,
    /// The pooled client behind `wasi:http/outgoing-handler`.
    pub outbound: Arc<OutboundClient>,
    /// The operator's delivery settings behind `settings`.
    pub settings: Arc<DeliverySettings>,
    /// The sandbox of tenants' transforms behind `transforms`.
    pub transforms: Arc<Transforms>,
}

/// The data of one call's `wasmtime::Store`.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: OutboundHooks,
    pub(crate) limits: StoreLimits,
    pub(crate) deadline: Instant,
    store: StoreCtx,
    identity: IdentityCtx,
    settings: SettingsCtx,
    transforms: TransformsCtx,
}

impl HostState {
    /// Fresh state for one call.
    pub fn new(capabilities: &Capabilities, limits: StoreLimits, deadline: Instant) -> Self {
        HostState {
            // No preopened directories, no environment, no inherited stdio, no sockets.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: OutboundHooks::new(capabilities.outbound.clone()),
            limits,
            deadline,
            store: StoreCtx::new(capabilities.store.clone()),
            identity: IdentityCtx::new(capabilities.identity.clone()),
            settings: SettingsCtx::new(&capabilities.settings),
            transforms: TransformsCtx::new(capabilities.transforms.clone()),
        }
    }

    /// Fresh state for one call of a dry run: as [`HostState::new`], over `capabilities` whose
    /// store discards writes, and with every outgoing request denied.
    pub fn dry_run(capabilities: &Capabilities, limits: StoreLimits, deadline: Instant) -> Self {
        HostState {
            hooks: OutboundHooks::denying(),
            ..HostState::new(capabilities, limits, deadline)
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl StoreView for HostState {
    fn store(&mut self) -> &mut StoreCtx {
        &mut self.store
    }
}

impl IdentityView for HostState {
    fn identity(&mut self) -> &mut IdentityCtx {
        &mut self.identity
    }
}

impl SettingsView for HostState {
    fn settings(&mut self) -> &mut SettingsCtx {
        &mut self.settings
    }
}

impl TransformsView for HostState {
    fn transforms(&mut self) -> &mut TransformsCtx {
        &mut self.transforms
    }
}
