//! The component's face: the `api`, `events`, `intake`, `migration` and `transform-api` exports
//! over the `store`, `identity`, `settings`, `transforms` and `wasi:http` imports. It only
//! adapts: each import becomes a port, each export one call into the module that decides.

use crate::bindings::exports::mainflux::webhooks::api::Guest;
#[cfg(not(feature = "previous-world"))]
use crate::bindings::mainflux::webhooks::transforms;
use crate::bindings::mainflux::webhooks::types::DueDelivery;
use crate::bindings::mainflux::webhooks::{identity, store};
use crate::deliveries::log::DeliveryLog;
use crate::ports::{Access, Clock, Kv};
use crate::webhooks::operations::Service;
use crate::{Error, Role};

/// The component: implements the `api`, `events`, `intake`, `migration` and `transform-api`
/// exports.
pub struct Plugin;

/// The `store` capability granted by the host.
struct HostStore;

impl Kv for HostStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, store::StoreError> {
        store::get(key)
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, store::StoreError> {
        store::get_many(keys)
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
        reverse: bool,
    ) -> Result<Vec<store::Entry>, store::StoreError> {
        store::scan(prefix, after, limit, reverse)
    }

    fn scan_prefixes(&self, prefixes: &[Vec<u8>], limit: u32) -> Result<Vec<Vec<store::Entry>>, store::StoreError> {
        store::scan_prefixes(prefixes, limit)
    }

    fn commit(&self, guards: &[store::Condition], ops: &[store::Op]) -> Result<(), store::StoreError> {
        store::commit(guards, ops)
    }
}

/// The `identity` capability granted by the host.
struct HostIdentity;

impl Access for HostIdentity {
    fn authenticate(&self, token: &str) -> Result<String, Error> {
        identity::authenticate(token)
    }

    fn authorize_thing(&self, token: &str, thing_id: &str, role: Role) -> Result<String, Error> {
        identity::authorize_thing(token, thing_id, role)
    }

    fn authorize_group(&self, token: &str, group_id: &str, role: Role) -> Result<(), Error> {
        identity::authorize_group(token, group_id, role)
    }
}

/// The `transforms` capability granted by the host.
#[cfg(not(feature = "previous-world"))]
struct HostTransforms;

#[cfg(not(feature = "previous-world"))]
impl crate::ports::Transformer for HostTransforms {
    fn load(&self, component: &[u8]) -> Result<String, crate::ports::TransformError> {
        transforms::load(component)
    }

    fn apply(
        &self,
        sha256: &str,
        message: &crate::ports::TransformMessage,
        metadata: &str,
    ) -> Result<crate::ports::Action, crate::ports::TransformError> {
        transforms::apply(sha256, message, metadata)
    }

    fn quota(&self) -> u32 {
        transforms::quota()
    }
}

/// The transforms this build runs: the host's, or none in the world before them.
#[cfg(not(feature = "previous-world"))]
static TRANSFORMER: HostTransforms = HostTransforms;
#[cfg(feature = "previous-world")]
static TRANSFORMER: crate::ports::NoTransforms = crate::ports::NoTransforms;

/// The host's wall clock.
struct WallClock;

impl Clock for WallClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

fn service() -> Service<'static> {
    Service::new(&HostStore, &HostIdentity)
}

impl Guest for Plugin {
    fn create_webhooks(token: String, thing_id: String, body: Vec<u8>) -> Result<String, Error> {
        service()
            .with_webhook_quota(crate::bindings::mainflux::webhooks::settings::webhook_quota())
            .create_webhooks(&token, &thing_id, &body)
    }

    fn list_thing_webhooks(token: String, thing_id: String, query: Vec<(String, String)>) -> Result<String, Error> {
        service().list_thing_webhooks(&token, &thing_id, &query)
    }

    fn list_group_webhooks(token: String, group_id: String, query: Vec<(String, String)>) -> Result<String, Error> {
        service().list_group_webhooks(&token, &group_id, &query)
    }

    fn search_thing_webhooks(token: String, thing_id: String, body: Vec<u8>) -> Result<String, Error> {
        service().search_thing_webhooks(&token, &thing_id, &body)
    }

    fn search_group_webhooks(token: String, group_id: String, body: Vec<u8>) -> Result<String, Error> {
        service().search_group_webhooks(&token, &group_id, &body)
    }

    fn view_webhook(token: String, id: String) -> Result<String, Error> {
        service().view_webhook(&token, &id)
    }

    fn update_webhook(token: String, id: String, body: Vec<u8>) -> Result<(), Error> {
        service().update_webhook(&token, &id, &body)
    }

    fn remove_webhooks(token: String, body: Vec<u8>) -> Result<(), Error> {
        service().remove_webhooks(&token, &body)
    }

    fn list_deliveries(token: String, webhook_id: String, query: Vec<(String, String)>) -> Result<String, Error> {
        DeliveryLog::new(&HostStore, &HostIdentity, &WallClock).list(&token, &webhook_id, &query)
    }

    fn retry_delivery(token: String, webhook_id: String, delivery_id: String) -> Result<DueDelivery, Error> {
        DeliveryLog::new(&HostStore, &HostIdentity, &WallClock).retry(&token, &webhook_id, &delivery_id)
    }
}

#[cfg(not(feature = "previous-world"))]
impl crate::bindings::exports::mainflux::webhooks::migration::Guest for Plugin {
    fn import_webhooks(
        webhooks: Vec<crate::bindings::exports::mainflux::webhooks::migration::ForeignWebhook>,
    ) -> Result<Vec<crate::bindings::exports::mainflux::webhooks::migration::ImportOutcome>, Error> {
        crate::webhooks::import::Import::new(&HostStore).import(&webhooks)
    }

    fn data_formats() -> crate::bindings::exports::mainflux::webhooks::migration::Formats {
        crate::bindings::exports::mainflux::webhooks::migration::Formats {
            oldest: crate::format::OLDEST,
            newest: crate::format::NEWEST,
            writes: crate::format::WRITES,
        }
    }
}

#[cfg(not(feature = "previous-world"))]
impl crate::bindings::exports::mainflux::webhooks::intake::Guest for Plugin {
    fn on_messages(
        messages: Vec<crate::bindings::exports::mainflux::webhooks::events::Message>,
    ) -> Result<Vec<Result<crate::bindings::exports::mainflux::webhooks::events::Accepted, Error>>, Error> {
        message_events::events().on_messages(messages)
    }
}

#[cfg(not(feature = "previous-world"))]
impl crate::bindings::exports::mainflux::webhooks::attempts::Guest for Plugin {
    fn deliver(
        deliveries: Vec<crate::bindings::mainflux::webhooks::types::DueDelivery>,
    ) -> Result<Vec<crate::bindings::exports::mainflux::webhooks::events::AttemptOutcome>, Error> {
        message_events::events().deliver_queued(&deliveries)
    }
}

#[cfg(not(feature = "previous-world"))]
impl crate::bindings::exports::mainflux::webhooks::transform_api::Guest for Plugin {
    fn attach_transform(token: String, webhook_id: String, component: Vec<u8>) -> Result<String, Error> {
        transform_operations().attach(&token, &webhook_id, component)
    }

    fn detach_transform(token: String, webhook_id: String) -> Result<(), Error> {
        transform_operations().detach(&token, &webhook_id)
    }

    fn try_transform(
        token: String,
        webhook_id: String,
        sample: Vec<u8>,
    ) -> Result<crate::bindings::exports::mainflux::webhooks::transform_api::Trial, Error> {
        use crate::bindings::exports::mainflux::webhooks::transform_api::Trial;
        Ok(
            match transform_operations().try_transform(&token, &webhook_id, &sample)? {
                crate::transforms::Trial::Answered(json) => Trial::Answered(json),
                crate::transforms::Trial::Failed(reason) => Trial::Failed(reason),
            },
        )
    }
}

#[cfg(not(feature = "previous-world"))]
fn transform_operations() -> crate::transforms::Transforms<'static> {
    crate::transforms::Transforms::new(&HostStore, &HostIdentity, &TRANSFORMER, &WallClock)
}

#[cfg(feature = "export")]
crate::bindings::export!(Plugin with_types_in crate::bindings);

mod message_events {
    use super::{HostStore, Plugin, TRANSFORMER, WallClock};
    use crate::Error;
    use crate::bindings::exports::mainflux::webhooks::events::{Accepted, AttemptOutcome, Guest, Message};
    use crate::bindings::mainflux::webhooks::settings;
    use crate::bindings::mainflux::webhooks::types::DueDelivery;
    use crate::deliveries::Events;
    use crate::deliveries::outbound::wasi_http::WasiHttp;
    use crate::deliveries::retry::RetryPolicy;
    use crate::removal::Removals;
    use crate::webhooks::name_index::Upkeep;

    pub(super) fn events() -> Events<'static> {
        let settings = settings::delivery_settings();
        let policy = RetryPolicy {
            schedule_ms: settings.retry_schedule_ms,
        };
        Events::new(&HostStore, &WasiHttp, &WallClock)
            .with_transformer(&TRANSFORMER)
            .with_policy(policy)
            .with_lease(settings::claim_lease_ms())
    }

    impl Guest for Plugin {
        fn on_message(message: Message) -> Result<Accepted, Error> {
            events().on_message(message)
        }

        fn due(limit: u32) -> Result<Vec<DueDelivery>, Error> {
            events().due(limit)
        }

        fn deliver(ids: Vec<String>) -> Result<Vec<AttemptOutcome>, Error> {
            events().deliver(&ids)
        }

        fn release(ids: Vec<String>) -> Result<u32, Error> {
            events().release(&ids)
        }

        fn expire(limit: u32) -> Result<u32, Error> {
            let retention = settings::delivery_settings().retention_ms;
            events().expire(retention, limit)
        }

        fn on_thing_removed(thing_id: String) -> Result<u32, Error> {
            Removals::new(&HostStore).on_thing_removed(&thing_id)
        }

        fn on_group_removed(group_id: String) -> Result<u32, Error> {
            Removals::new(&HostStore).on_group_removed(&group_id)
        }

        fn maintain(limit: u32) -> Result<u32, Error> {
            Upkeep::new(&HostStore).maintain(limit)
        }
    }
}
