//! A transform that turns each message into a Slack incoming-webhook message: the body becomes
//! `{"text": "<thing id>: <payload>"}`, sent as `application/json`, so a webhook pointed at a
//! Slack incoming-webhook URL posts every message to its channel.
//!
//! The payload is shown as UTF-8 text; bytes that are not valid UTF-8 show as `�`. Nothing is
//! read from the webhook's metadata.
//!
//! To attach it: `cargo build --release --target wasm32-wasip2 -p slack-message`, then
//! `PUT /webhooks/{id}/transform` with `Content-Type: application/wasm` and
//! `target/wasm32-wasip2/release/slack_message.wasm` as the body.

/// Bindings generated from the `transform` world in `wit/`.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/deps/transform",
        world: "transform",
    });
}

use bindings::exports::mainflux::transform::transformation::{Action, Changes, Message};

/// The transform: sends `message` as a Slack message naming the thing that published it.
pub fn apply(message: &Message) -> Action {
    let text = format!("{}: {}", message.thing_id, String::from_utf8_lossy(&message.payload));
    Action::Send(Changes {
        body: Some(serde_json::json!({ "text": text }).to_string().into_bytes()),
        content_type: Some("application/json".into()),
        headers: Vec::new(),
        path: String::new(),
    })
}

#[cfg(target_arch = "wasm32")]
mod component {
    use crate::bindings::exports::mainflux::transform::transformation::{Action, Guest, Message};

    struct Component;

    impl Guest for Component {
        fn apply(message: Message, _metadata: String) -> Result<Action, String> {
            Ok(crate::apply(&message))
        }
    }

    crate::bindings::export!(Component with_types_in crate::bindings);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn message(payload: &[u8]) -> Message {
        Message {
            payload: payload.to_vec(),
            content_type: None,
            subtopic: "rooms/kitchen".into(),
            thing_id: "5a1b2c3d-thermometer".into(),
            message_id: "0190b6b6-3c1e-7d4a-9d1e-3a6f3b1c2d4e".into(),
        }
    }

    /// The sent body, read back as JSON, and the content type sent with it.
    fn sent(action: Action) -> (Value, Option<String>) {
        let Action::Send(send) = action else {
            panic!("expected a send, got {action:?}")
        };
        assert!(send.headers.is_empty() && send.path.is_empty(), "{send:?}");
        let body = send.body.expect("a body");
        (
            serde_json::from_slice(&body).expect("the body is JSON"),
            send.content_type,
        )
    }

    #[test]
    fn the_payload_becomes_slack_text_prefixed_by_the_thing_id() {
        let (body, content_type) = sent(apply(&message(b"{\"temperature\": 21.5}")));
        assert_eq!(body, json!({"text": "5a1b2c3d-thermometer: {\"temperature\": 21.5}"}));
        assert_eq!(content_type.as_deref(), Some("application/json"));
    }

    #[test]
    fn quotes_backslashes_and_control_characters_are_escaped() {
        let payload = "line \"one\"\\\nline\ttwo\r\u{1}\u{1f} é ✓";
        let (body, _) = sent(apply(&message(payload.as_bytes())));
        assert_eq!(body, json!({ "text": format!("5a1b2c3d-thermometer: {payload}") }));
    }

    #[test]
    fn bytes_that_are_not_utf8_show_as_replacement_characters() {
        let (body, _) = sent(apply(&message(b"ok \xff\xfe end")));
        assert_eq!(body, json!({"text": "5a1b2c3d-thermometer: ok \u{fffd}\u{fffd} end"}));
    }

    #[test]
    fn an_empty_payload_leaves_just_the_thing_id() {
        let (body, _) = sent(apply(&message(b"")));
        assert_eq!(body, json!({"text": "5a1b2c3d-thermometer: "}));
    }
}
