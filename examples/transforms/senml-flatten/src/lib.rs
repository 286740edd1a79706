//! A transform that flattens a SenML JSON pack (RFC 8428) into one JSON object of full name to
//! value, sent as `application/json`, for receivers that want `{"dev1/temp": 21.5}` rather than
//! a list of records.
//!
//! ```json
//! [{"bn": "urn:dev:ow:10e2073a01080063/", "n": "temp", "v": 21.5},
//!  {"n": "door", "vb": true}, {"n": "label", "vs": "kitchen"}]
//! ```
//!
//! becomes `{"urn:dev:ow:10e2073a01080063/temp":21.5,"urn:dev:ow:10e2073a01080063/door":true,
//! "urn:dev:ow:10e2073a01080063/label":"kitchen"}`.
//!
//! The base name `bn` carries forward to the records after it and prefixes their name `n`; the
//! base value `bv` carries forward too and is added to `v`. `vs`, `vb` and `vd` (kept as its
//! base64 text) are taken as they are. Times, units and sums are ignored: a record without a
//! value (one holding only base fields or a sum) adds nothing, and a name given more than once
//! keeps its last value. Names appear in the order they first occur. A payload that is not a
//! SenML JSON array, or holds no value, is skipped with the reason. Nothing is read from the
//! webhook's metadata.
//!
//! To attach it: `cargo build --release --target wasm32-wasip2 -p senml-flatten`, then
//! `PUT /webhooks/{id}/transform` with `Content-Type: application/wasm` and
//! `target/wasm32-wasip2/release/senml_flatten.wasm` as the body.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

/// Bindings generated from the `transform` world in `wit/`.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit/deps/transform",
        world: "transform",
    });
}

use bindings::exports::mainflux::transform::transformation::{Action, Changes, Message};

/// The transform: sends the flattened pack, or skips a payload that is not a SenML pack.
pub fn apply(message: &Message) -> Action {
    match flatten(&message.payload) {
        Ok(object) => Action::Send(Changes {
            body: Some(object.into_bytes()),
            content_type: Some("application/json".into()),
            headers: Vec::new(),
            path: String::new(),
        }),
        Err(reason) => Action::Skip(reason),
    }
}

/// The JSON object of full name to value for a SenML JSON pack, or why the payload is not one.
fn flatten(payload: &[u8]) -> Result<String, String> {
    let Ok(Value::Array(records)) = serde_json::from_slice::<Value>(payload) else {
        return Err("the payload is not a SenML JSON array".into());
    };
    let mut base_name = "";
    let mut base_value: Option<&Number> = None;
    let mut entries: Vec<(String, Value)> = Vec::new();
    // Name to its place in `entries`: keeps first-seen order without a quadratic search. A
    // BTreeMap, not a HashMap, since the latter's random seed would add a WASI import.
    let mut places: BTreeMap<String, usize> = BTreeMap::new();
    for (index, record) in records.iter().enumerate() {
        let Value::Object(fields) = record else {
            return Err(format!("SenML record {index} is not a JSON object"));
        };
        let record = Record { fields, index };
        if let Some(label) = fields.keys().find(|label| label.ends_with('_')) {
            // RFC 8428, section 4.4: a field whose label ends in `_` must be understood or the
            // pack rejected.
            return Err(format!(
                "SenML record {index} has the field {label:?}, which this transform does not know"
            ));
        }
        if let Some(name) = record.string("bn")? {
            base_name = name;
        }
        if let Some(value) = record.number("bv")? {
            base_value = Some(value);
        }
        let name = format!("{base_name}{}", record.string("n")?.unwrap_or_default());
        let Some(value) = record.value(base_value)? else {
            continue;
        };
        if name.is_empty() {
            return Err(format!(
                "SenML record {index} has a value but no name (neither bn nor n)"
            ));
        }
        match places.get(&name) {
            Some(&place) => entries[place].1 = value,
            None => {
                places.insert(name.clone(), entries.len());
                entries.push((name, value));
            }
        }
    }
    if entries.is_empty() {
        return Err("the SenML pack holds no value".into());
    }
    // Written out rather than collected into a `serde_json::Map`, whose key order depends on
    // the crate's features (sorted, or insertion order with `preserve_order`).
    let members: Vec<String> = entries
        .iter()
        .map(|(name, value)| format!("{}:{value}", Value::from(name.as_str())))
        .collect();
    Ok(format!("{{{}}}", members.join(",")))
}

/// One record of a pack, read field by field; a field of the wrong type is an error naming it.
struct Record<'a> {
    /// The record's fields.
    fields: &'a Map<String, Value>,
    /// Its place in the pack, for reasons.
    index: usize,
}

impl<'a> Record<'a> {
    /// The string field `label`, if present.
    fn string(&self, label: &str) -> Result<Option<&'a str>, String> {
        self.typed(label, "a string", Value::as_str)
    }

    /// The number field `label`, if present.
    fn number(&self, label: &str) -> Result<Option<&'a Number>, String> {
        self.typed(label, "a number", Value::as_number)
    }

    /// The field `label`, if present, read by `read`; an error says it is not `expected`.
    fn typed<T>(
        &self,
        label: &str,
        expected: &str,
        read: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, String> {
        match self.fields.get(label) {
            None => Ok(None),
            Some(value) => read(value)
                .map(Some)
                .ok_or_else(|| format!("SenML record {}: {label} is not {expected}", self.index)),
        }
    }

    /// The record's value, `base_value` added to a numeric one; none when it has no value field.
    fn value(&self, base_value: Option<&Number>) -> Result<Option<Value>, String> {
        let mut values = Vec::new();
        if let Some(number) = self.number("v")? {
            values.push(Value::Number(match base_value {
                Some(base) => {
                    add(base, number).ok_or_else(|| format!("SenML record {}: bv + v is out of range", self.index))?
                }
                None => number.clone(),
            }));
        }
        if let Some(text) = self.string("vs")? {
            values.push(text.into());
        }
        if let Some(flag) = self.typed("vb", "a boolean", Value::as_bool)? {
            values.push(flag.into());
        }
        if let Some(data) = self.string("vd")? {
            values.push(data.into());
        }
        match values.len() {
            0 | 1 => Ok(values.pop()),
            _ => Err(format!(
                "SenML record {} has more than one of v, vs, vb and vd",
                self.index
            )),
        }
    }
}

/// `base + number`, kept an integer when both are and the sum fits.
fn add(base: &Number, number: &Number) -> Option<Number> {
    if let (Some(base), Some(number)) = (base.as_i64(), number.as_i64())
        && let Some(sum) = base.checked_add(number)
    {
        return Some(sum.into());
    }
    Number::from_f64(base.as_f64()? + number.as_f64()?)
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

    fn message(payload: &str) -> Message {
        Message {
            payload: payload.as_bytes().to_vec(),
            content_type: Some("application/senml+json".into()),
            subtopic: String::new(),
            thing_id: "thing-1".into(),
            message_id: "0190b6b6-3c1e-7d4a-9d1e-3a6f3b1c2d4e".into(),
        }
    }

    /// The sent body as text, checking the content type on the way.
    fn sent(payload: &str) -> String {
        match apply(&message(payload)) {
            Action::Send(send) => {
                assert_eq!(send.content_type.as_deref(), Some("application/json"));
                assert!(send.headers.is_empty() && send.path.is_empty(), "{send:?}");
                String::from_utf8(send.body.expect("a body")).expect("UTF-8")
            }
            skip => panic!("expected a send, got {skip:?}"),
        }
    }

    fn skipped(payload: &str) -> String {
        match apply(&message(payload)) {
            Action::Skip(reason) => reason,
            send => panic!("expected a skip, got {send:?}"),
        }
    }

    #[test]
    fn the_base_name_prefixes_every_later_name() {
        let pack = r#"[{"bn": "urn:dev:ow:10e2073a01080063/", "n": "temp", "u": "Cel", "v": 21.5},
                       {"n": "door", "vb": true}, {"n": "label", "vs": "kitchen"}, {"n": "blob", "vd": "aGk"}]"#;
        assert_eq!(
            sent(pack),
            r#"{"urn:dev:ow:10e2073a01080063/temp":21.5,"urn:dev:ow:10e2073a01080063/door":true,"#.to_owned()
                + r#""urn:dev:ow:10e2073a01080063/label":"kitchen","urn:dev:ow:10e2073a01080063/blob":"aGk"}"#
        );
    }

    #[test]
    fn a_new_base_name_replaces_the_old_one() {
        let pack = r#"[{"bn": "a/", "n": "x", "v": 1}, {"bn": "b/", "n": "x", "v": 2}, {"n": "y", "v": 3}]"#;
        assert_eq!(sent(pack), r#"{"a/x":1,"b/x":2,"b/y":3}"#);
    }

    #[test]
    fn the_base_value_is_added_to_numeric_values_only() {
        let pack = r#"[{"bn": "d/", "bv": 100, "n": "a", "v": 5}, {"n": "b", "v": -0.5},
                       {"n": "c", "vs": "text"}, {"bv": 1.5, "n": "e", "v": 1}]"#;
        assert_eq!(sent(pack), r#"{"d/a":105,"d/b":99.5,"d/c":"text","d/e":2.5}"#);
    }

    #[test]
    fn a_name_alone_or_a_base_name_alone_is_a_full_name() {
        assert_eq!(sent(r#"[{"n": "temp", "v": 20}]"#), r#"{"temp":20}"#);
        assert_eq!(sent(r#"[{"bn": "dev/temp", "v": 20}]"#), r#"{"dev/temp":20}"#);
    }

    #[test]
    fn times_units_and_sums_are_ignored_and_the_last_value_of_a_name_wins() {
        let pack = r#"[{"bn": "d/", "bt": 1.320067464e9, "bu": "Cel", "n": "t", "v": 20, "t": -5},
                       {"n": "t", "v": 21, "t": 0}, {"n": "energy", "s": 42}, {"n": "u", "v": 3, "ut": 10}]"#;
        assert_eq!(sent(pack), r#"{"d/t":21,"d/u":3}"#);
    }

    #[test]
    fn a_record_of_base_fields_only_carries_them_forward() {
        assert_eq!(
            sent(r#"[{"bn": "dev/", "bv": 10}, {"n": "t", "v": 1}]"#),
            r#"{"dev/t":11}"#
        );
    }

    #[test]
    fn names_are_written_as_json_strings() {
        assert_eq!(sent(r#"[{"n": "quote\"d", "v": 1}]"#), r#"{"quote\"d":1}"#);
    }

    #[test]
    fn what_is_not_a_json_array_is_skipped() {
        for payload in ["", "21.5", r#"{"n": "t", "v": 1}"#, "[1, 2"] {
            assert_eq!(
                skipped(payload),
                "the payload is not a SenML JSON array",
                "payload {payload:?}"
            );
        }
    }

    #[test]
    fn a_pack_without_values_is_skipped() {
        assert_eq!(skipped("[]"), "the SenML pack holds no value");
        assert_eq!(
            skipped(r#"[{"bn": "d/"}, {"n": "e", "s": 5}]"#),
            "the SenML pack holds no value"
        );
    }

    #[test]
    fn a_malformed_record_is_skipped_naming_it() {
        assert_eq!(
            skipped(r#"[{"n": "t", "v": 1}, 2]"#),
            "SenML record 1 is not a JSON object"
        );
        assert_eq!(skipped(r#"[{"n": 3, "v": 1}]"#), "SenML record 0: n is not a string");
        assert_eq!(
            skipped(r#"[{"n": "t", "v": "1"}]"#),
            "SenML record 0: v is not a number"
        );
        assert_eq!(
            skipped(r#"[{"n": "t", "vb": "yes"}]"#),
            "SenML record 0: vb is not a boolean"
        );
        assert_eq!(
            skipped(r#"[{"bn": 1, "n": "t", "v": 1}]"#),
            "SenML record 0: bn is not a string"
        );
        assert_eq!(
            skipped(r#"[{"bv": "1", "n": "t", "v": 1}]"#),
            "SenML record 0: bv is not a number"
        );
        assert_eq!(
            skipped(r#"[{"v": 1}]"#),
            "SenML record 0 has a value but no name (neither bn nor n)"
        );
        assert_eq!(
            skipped(r#"[{"n": "t", "v": 1, "vs": "1"}]"#),
            "SenML record 0 has more than one of v, vs, vb and vd"
        );
    }

    #[test]
    fn a_must_understand_field_is_skipped() {
        assert_eq!(
            skipped(r#"[{"n": "t", "v": 1, "custom_": 2}]"#),
            r#"SenML record 0 has the field "custom_", which this transform does not know"#
        );
    }

    #[test]
    fn a_sum_beyond_the_number_range_is_skipped() {
        assert_eq!(
            skipped(r#"[{"bv": 1e308, "n": "t", "v": 1e308}]"#),
            "SenML record 0: bv + v is out of range"
        );
    }
}
