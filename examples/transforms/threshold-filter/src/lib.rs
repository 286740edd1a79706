//! A transform that lets a webhook send a message only when a number in its JSON payload is
//! above a threshold, and skip it otherwise, with the reason in the delivery log.
//!
//! The field and the threshold come from the webhook's metadata, so one component serves every
//! webhook that needs a filter:
//!
//! ```json
//! {"transform": {"field": "temperature", "above": 30}}
//! ```
//!
//! With it, `{"temperature": 31.5}` is sent unchanged, `{"temperature": 21}` is skipped
//! (`temperature is 21, not above 30`), and so is a payload that is not a JSON object or lacks
//! the field. `field` may be a dotted path into nested objects (`"room.temperature"`); a key
//! that itself holds the dots is looked up first. Metadata without both settings fails the
//! delivery with an error naming what is missing.
//!
//! To attach it: `cargo build --release --target wasm32-wasip2 -p threshold-filter`, set the
//! webhook's metadata as above, then `PUT /webhooks/{id}/transform` with
//! `Content-Type: application/wasm` and `target/wasm32-wasip2/release/threshold_filter.wasm`
//! as the body.

use serde_json::{Map, Value};

/// Bindings generated from the `transform` world in `wit/`.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/deps/transform",
        world: "transform",
        // So that tests compare whole answers.
        additional_derives: [PartialEq],
    });
}

use bindings::exports::mainflux::transform::transformation::{Action, Changes, Message};

/// The transform: sends `message` unchanged when its payload's field is above the threshold
/// that `metadata` (the webhook's metadata JSON) sets, skips it otherwise.
pub fn apply(message: &Message, metadata: &str) -> Result<Action, String> {
    let settings = Settings::from_metadata(metadata)?;
    Ok(settings.decide(&message.payload))
}

/// What a webhook's metadata asks of this transform.
#[derive(Debug, PartialEq)]
struct Settings {
    /// The payload field to compare: a top-level key or a dotted path.
    field: String,
    /// The number the field must exceed for the message to be sent.
    above: f64,
}

impl Settings {
    /// Reads `transform.field` and `transform.above` from the webhook's metadata JSON.
    fn from_metadata(metadata: &str) -> Result<Self, String> {
        let metadata: Value =
            serde_json::from_str(metadata).map_err(|error| format!("the webhook's metadata is not JSON: {error}"))?;
        let setting = |name: &str| metadata.get("transform").and_then(|transform| transform.get(name));
        let field = setting("field")
            .and_then(Value::as_str)
            .filter(|field| !field.is_empty());
        let above = setting("above").and_then(Value::as_f64);
        match (field, above) {
            (Some(field), Some(above)) => Ok(Self {
                field: field.to_owned(),
                above,
            }),
            (field, above) => {
                let mut missing = Vec::new();
                if field.is_none() {
                    missing.push("metadata.transform.field (the payload field to compare, a string)");
                }
                if above.is_none() {
                    missing.push("metadata.transform.above (the threshold, a number)");
                }
                Err(format!("the webhook's metadata lacks {}", missing.join(" and ")))
            }
        }
    }

    /// Sends the payload unchanged when its field is above the threshold; otherwise skips,
    /// saying why.
    fn decide(&self, payload: &[u8]) -> Action {
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(payload) else {
            return Action::Skip("the payload is not a JSON object".into());
        };
        let field = &self.field;
        let Some(value) = lookup(&object, field) else {
            return Action::Skip(format!("the payload has no field {field:?}"));
        };
        let Some(number) = value.as_f64() else {
            return Action::Skip(format!("{field} is {}, not a number", kind(value)));
        };
        if number > self.above {
            Action::Send(unchanged())
        } else {
            Action::Skip(format!("{field} is {value}, not above {}", self.above))
        }
    }
}

/// The value at `field` in `object`: the key itself, or else the dotted path it spells.
fn lookup<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    object.get(field).or_else(|| {
        let mut keys = field.split('.');
        let first = object.get(keys.next()?)?;
        keys.try_fold(first, |value, key| value.get(key))
    })
}

/// The JSON type of `value`, as a skip reason names it.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A send that changes nothing: the delivery goes out as it would without a transform.
fn unchanged() -> Changes {
    Changes {
        body: None,
        content_type: None,
        headers: Vec::new(),
        path: String::new(),
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    use crate::bindings::exports::mainflux::transform::transformation::{Action, Guest, Message};

    struct Component;

    impl Guest for Component {
        fn apply(message: Message, metadata: String) -> Result<Action, String> {
            crate::apply(&message, &metadata)
        }
    }

    crate::bindings::export!(Component with_types_in crate::bindings);
}

#[cfg(test)]
mod tests {
    use super::*;

    const METADATA: &str = r#"{"transform": {"field": "temperature", "above": 30}}"#;

    fn message(payload: &str) -> Message {
        Message {
            payload: payload.as_bytes().to_vec(),
            content_type: Some("application/json".into()),
            subtopic: String::new(),
            thing_id: "thing-1".into(),
            message_id: "0190b6b6-3c1e-7d4a-9d1e-3a6f3b1c2d4e".into(),
        }
    }

    fn skip_reason(answer: Result<Action, String>) -> String {
        match answer {
            Ok(Action::Skip(reason)) => reason,
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    #[test]
    fn a_value_above_the_threshold_is_sent_unchanged() {
        let answer = apply(&message(r#"{"temperature": 31.5, "unit": "C"}"#), METADATA);
        assert_eq!(answer, Ok(Action::Send(unchanged())));
    }

    #[test]
    fn a_value_at_the_threshold_is_skipped_naming_value_and_threshold() {
        let reason = skip_reason(apply(&message(r#"{"temperature": 30}"#), METADATA));
        assert_eq!(reason, "temperature is 30, not above 30");
    }

    #[test]
    fn a_value_below_the_threshold_is_skipped() {
        let reason = skip_reason(apply(&message(r#"{"temperature": -4.25}"#), METADATA));
        assert_eq!(reason, "temperature is -4.25, not above 30");
    }

    #[test]
    fn a_fractional_threshold_is_compared_as_a_number() {
        let metadata = r#"{"transform": {"field": "ratio", "above": 0.5}}"#;
        assert_eq!(
            apply(&message(r#"{"ratio": 0.75}"#), metadata),
            Ok(Action::Send(unchanged()))
        );
        assert_eq!(
            skip_reason(apply(&message(r#"{"ratio": 0.25}"#), metadata)),
            "ratio is 0.25, not above 0.5"
        );
    }

    #[test]
    fn a_payload_that_is_not_a_json_object_is_skipped() {
        for payload in ["temperature=31", "[31]", "31", ""] {
            let reason = skip_reason(apply(&message(payload), METADATA));
            assert_eq!(reason, "the payload is not a JSON object", "payload {payload:?}");
        }
    }

    #[test]
    fn a_missing_field_is_skipped() {
        let reason = skip_reason(apply(&message(r#"{"humidity": 80}"#), METADATA));
        assert_eq!(reason, r#"the payload has no field "temperature""#);
    }

    #[test]
    fn a_field_that_is_not_a_number_is_skipped() {
        let reason = skip_reason(apply(&message(r#"{"temperature": "31"}"#), METADATA));
        assert_eq!(reason, "temperature is a string, not a number");
        let reason = skip_reason(apply(&message(r#"{"temperature": null}"#), METADATA));
        assert_eq!(reason, "temperature is null, not a number");
    }

    #[test]
    fn a_dotted_field_reads_nested_objects() {
        let metadata = r#"{"transform": {"field": "room.air.temperature", "above": 30}}"#;
        let hot = r#"{"room": {"air": {"temperature": 35}}}"#;
        assert_eq!(apply(&message(hot), metadata), Ok(Action::Send(unchanged())));
        let cool = r#"{"room": {"air": {"temperature": 20}}}"#;
        assert_eq!(
            skip_reason(apply(&message(cool), metadata)),
            "room.air.temperature is 20, not above 30"
        );
        let elsewhere = r#"{"room": {"temperature": 35}}"#;
        assert_eq!(
            skip_reason(apply(&message(elsewhere), metadata)),
            r#"the payload has no field "room.air.temperature""#
        );
    }

    #[test]
    fn a_key_holding_dots_wins_over_the_path_it_spells() {
        let metadata = r#"{"transform": {"field": "a.b", "above": 1}}"#;
        let payload = r#"{"a.b": 2, "a": {"b": 0}}"#;
        assert_eq!(apply(&message(payload), metadata), Ok(Action::Send(unchanged())));
    }

    #[test]
    fn metadata_without_settings_is_an_error_naming_both() {
        for metadata in ["{}", r#"{"transform": {}}"#, r#"{"transform": 3}"#] {
            assert_eq!(
                apply(&message(r#"{"temperature": 31}"#), metadata),
                Err(
                    "the webhook's metadata lacks metadata.transform.field (the payload field to compare, a string) \
                     and metadata.transform.above (the threshold, a number)"
                        .into()
                ),
                "metadata {metadata}"
            );
        }
    }

    #[test]
    fn metadata_with_one_setting_missing_or_mistyped_names_that_one() {
        let error = apply(&message("{}"), r#"{"transform": {"field": "temperature"}}"#).unwrap_err();
        assert_eq!(
            error,
            "the webhook's metadata lacks metadata.transform.above (the threshold, a number)"
        );
        let error = apply(
            &message("{}"),
            r#"{"transform": {"field": "temperature", "above": "30"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            error,
            "the webhook's metadata lacks metadata.transform.above (the threshold, a number)"
        );
        let error = apply(&message("{}"), r#"{"transform": {"field": "", "above": 30}}"#).unwrap_err();
        assert_eq!(
            error,
            "the webhook's metadata lacks metadata.transform.field (the payload field to compare, a string)"
        );
    }

    #[test]
    fn metadata_that_is_not_json_is_an_error() {
        let error = apply(&message("{}"), "transform.field=temperature").unwrap_err();
        assert!(error.starts_with("the webhook's metadata is not JSON: "), "{error}");
    }

    #[test]
    fn metadata_is_checked_before_the_payload() {
        assert!(apply(&message("not json"), "{}").is_err());
    }
}
