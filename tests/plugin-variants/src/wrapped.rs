//! The real plugin, wrapped: every export delegates to `webhooks_plugin::component::Plugin`,
//! with this build's difference applied on the way.

use webhooks_plugin::Error;
use webhooks_plugin::bindings::exports::mainflux::webhooks::{api, events};
#[cfg(not(feature = "previous"))]
use webhooks_plugin::bindings::exports::mainflux::webhooks::{attempts, intake, migration, transform_api};
use webhooks_plugin::bindings::mainflux::webhooks::types::DueDelivery;
use webhooks_plugin::component::Plugin as Real;

/// The `name` filter value that sets off this build's fault in list calls.
const FAULT_TRIGGER: &str = "fault";

struct Variant;

/// This build's fault, if it has one.
#[allow(unreachable_code, reason = "each fault build diverges here")]
fn fault() {
    #[cfg(feature = "trap")]
    panic!("plugin-variants: trapping on purpose");
    #[cfg(feature = "spin")]
    {
        let mut turns = 0u64;
        loop {
            turns = std::hint::black_box(turns.wrapping_add(1));
        }
    }
    #[cfg(feature = "grow")]
    {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Written, not just reserved, so every page is really used.
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

fn fault_if_asked(query: &[(String, String)]) {
    if query.iter().any(|(key, value)| key == "name" && value == FAULT_TRIGGER) {
        fault();
    }
}

/// Marks an answer of the `tagged` build: the object, and each webhook in a list.
fn tag(answer: Result<String, Error>) -> Result<String, Error> {
    if !cfg!(feature = "tagged") {
        return answer;
    }
    let json = answer?;
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str(&json) else {
        return Ok(json);
    };
    if let Some(serde_json::Value::Array(webhooks)) = object.get_mut("webhooks") {
        for webhook in webhooks.iter_mut().filter_map(|w| w.as_object_mut()) {
            webhook.insert("variant".into(), "tagged".into());
        }
    }
    object.insert("variant".into(), "tagged".into());
    Ok(serde_json::Value::Object(object).to_string())
}

impl api::Guest for Variant {
    fn create_webhooks(token: String, thing_id: String, body: Vec<u8>) -> Result<String, Error> {
        <Real as api::Guest>::create_webhooks(token, thing_id, body)
    }

    fn list_thing_webhooks(token: String, thing_id: String, query: Vec<(String, String)>) -> Result<String, Error> {
        fault_if_asked(&query);
        tag(<Real as api::Guest>::list_thing_webhooks(token, thing_id, query))
    }

    fn list_group_webhooks(token: String, group_id: String, query: Vec<(String, String)>) -> Result<String, Error> {
        fault_if_asked(&query);
        tag(<Real as api::Guest>::list_group_webhooks(token, group_id, query))
    }

    fn search_thing_webhooks(token: String, thing_id: String, body: Vec<u8>) -> Result<String, Error> {
        tag(<Real as api::Guest>::search_thing_webhooks(token, thing_id, body))
    }

    fn search_group_webhooks(token: String, group_id: String, body: Vec<u8>) -> Result<String, Error> {
        tag(<Real as api::Guest>::search_group_webhooks(token, group_id, body))
    }

    fn view_webhook(token: String, id: String) -> Result<String, Error> {
        tag(<Real as api::Guest>::view_webhook(token, id))
    }

    fn update_webhook(token: String, id: String, body: Vec<u8>) -> Result<(), Error> {
        <Real as api::Guest>::update_webhook(token, id, body)
    }

    fn remove_webhooks(token: String, body: Vec<u8>) -> Result<(), Error> {
        <Real as api::Guest>::remove_webhooks(token, body)
    }

    fn list_deliveries(token: String, webhook_id: String, query: Vec<(String, String)>) -> Result<String, Error> {
        <Real as api::Guest>::list_deliveries(token, webhook_id, query)
    }

    fn retry_delivery(token: String, webhook_id: String, delivery_id: String) -> Result<DueDelivery, Error> {
        <Real as api::Guest>::retry_delivery(token, webhook_id, delivery_id)
    }
}

impl events::Guest for Variant {
    fn on_message(message: events::Message) -> Result<events::Accepted, Error> {
        <Real as events::Guest>::on_message(message)
    }

    fn due(limit: u32) -> Result<Vec<DueDelivery>, Error> {
        <Real as events::Guest>::due(limit)
    }

    fn deliver(ids: Vec<String>) -> Result<Vec<events::AttemptOutcome>, Error> {
        fault();
        <Real as events::Guest>::deliver(ids)
    }

    fn release(ids: Vec<String>) -> Result<u32, Error> {
        <Real as events::Guest>::release(ids)
    }

    fn expire(limit: u32) -> Result<u32, Error> {
        <Real as events::Guest>::expire(limit)
    }

    fn on_thing_removed(thing_id: String) -> Result<u32, Error> {
        <Real as events::Guest>::on_thing_removed(thing_id)
    }

    fn on_group_removed(group_id: String) -> Result<u32, Error> {
        <Real as events::Guest>::on_group_removed(group_id)
    }

    fn maintain(limit: u32) -> Result<u32, Error> {
        if cfg!(feature = "legacy") {
            // A version from before the name-search index has no upkeep to do.
            return Ok(0);
        }
        <Real as events::Guest>::maintain(limit)
    }
}

#[cfg(not(feature = "previous"))]
impl migration::Guest for Variant {
    fn import_webhooks(webhooks: Vec<migration::ForeignWebhook>) -> Result<Vec<migration::ImportOutcome>, Error> {
        <Real as migration::Guest>::import_webhooks(webhooks)
    }

    fn data_formats() -> migration::Formats {
        if cfg!(feature = "legacy") {
            // Reads and writes only what plugins before the name-search index wrote.
            return migration::Formats {
                oldest: 1,
                newest: 1,
                writes: 1,
            };
        }
        <Real as migration::Guest>::data_formats()
    }
}

#[cfg(not(feature = "previous"))]
impl intake::Guest for Variant {
    fn on_messages(messages: Vec<events::Message>) -> Result<Vec<Result<events::Accepted, Error>>, Error> {
        <Real as intake::Guest>::on_messages(messages)
    }
}

#[cfg(not(feature = "previous"))]
impl attempts::Guest for Variant {
    fn deliver(deliveries: Vec<DueDelivery>) -> Result<Vec<events::AttemptOutcome>, Error> {
        fault();
        <Real as attempts::Guest>::deliver(deliveries)
    }
}

#[cfg(not(feature = "previous"))]
impl transform_api::Guest for Variant {
    fn attach_transform(token: String, webhook_id: String, component: Vec<u8>) -> Result<String, Error> {
        <Real as transform_api::Guest>::attach_transform(token, webhook_id, component)
    }

    fn detach_transform(token: String, webhook_id: String) -> Result<(), Error> {
        <Real as transform_api::Guest>::detach_transform(token, webhook_id)
    }

    fn try_transform(token: String, webhook_id: String, sample: Vec<u8>) -> Result<transform_api::Trial, Error> {
        <Real as transform_api::Guest>::try_transform(token, webhook_id, sample)
    }
}

webhooks_plugin::bindings::export!(Variant with_types_in webhooks_plugin::bindings);
