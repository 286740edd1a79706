//! A component that exports the REST operations but not the message events: the host must
//! refuse it, since it does not implement the `webhooks` world. Its operations are never
//! called; each answers that it is incomplete.

wit_bindgen::generate!({
    inline: "
        package mainflux:plugin-variants;

        world partial {
            export mainflux:webhooks/api@0.1.4;
        }
    ",
    path: "../../wit",
    generate_all,
});

use exports::mainflux::webhooks::api::Guest;
use mainflux::webhooks::types::{DueDelivery, Error};

struct Partial;

fn incomplete<T>() -> Result<T, Error> {
    Err(Error::Internal(
        "this component does not implement the webhooks world".into(),
    ))
}

impl Guest for Partial {
    fn create_webhooks(_: String, _: String, _: Vec<u8>) -> Result<String, Error> {
        incomplete()
    }

    fn list_thing_webhooks(_: String, _: String, _: Vec<(String, String)>) -> Result<String, Error> {
        incomplete()
    }

    fn list_group_webhooks(_: String, _: String, _: Vec<(String, String)>) -> Result<String, Error> {
        incomplete()
    }

    fn search_thing_webhooks(_: String, _: String, _: Vec<u8>) -> Result<String, Error> {
        incomplete()
    }

    fn search_group_webhooks(_: String, _: String, _: Vec<u8>) -> Result<String, Error> {
        incomplete()
    }

    fn view_webhook(_: String, _: String) -> Result<String, Error> {
        incomplete()
    }

    fn update_webhook(_: String, _: String, _: Vec<u8>) -> Result<(), Error> {
        incomplete()
    }

    fn remove_webhooks(_: String, _: Vec<u8>) -> Result<(), Error> {
        incomplete()
    }

    fn list_deliveries(_: String, _: String, _: Vec<(String, String)>) -> Result<String, Error> {
        incomplete()
    }

    fn retry_delivery(_: String, _: String, _: String) -> Result<DueDelivery, Error> {
        incomplete()
    }
}

export!(Partial);
