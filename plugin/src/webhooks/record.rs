//! The webhook record: its stored form, its JSON view and the validation of user input.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, invalid};
use crate::record::{FORMAT_VERSION, Record};

/// The longest name, in characters.
pub const MAX_NAME_CHARS: usize = 254;
/// The longest URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// A webhook as stored: the JSON view plus the record's format version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    /// Format version of the stored record.
    pub v: u32,
    /// UUID v4 assigned at creation.
    pub id: String,
    /// The thing whose messages the webhook receives.
    pub thing_id: String,
    /// The group the thing belonged to when the webhook was created.
    pub group_id: String,
    /// The user's label, unique within the thing.
    pub name: String,
    /// Where deliveries are sent.
    pub url: String,
    /// Headers sent with every delivery, names and values exactly as given.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub headers: Map<String, Value>,
    /// Free-form attributes of the user's.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// The Standard Webhooks signing secret (`whsec_...`); write-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Whether deliveries are stopped (a receiver answered 410 Gone, or a user said so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Why deliveries are stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// The transform attached to the webhook, if any; absent from records written before
    /// transforms, which read unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<TransformRef>,
}

/// The transform attached to a webhook: its component's bytes are kept under their own key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformRef {
    /// The SHA-256 of the component's bytes, in hex, as the host named it.
    pub sha256: String,
    /// The component's size in bytes.
    pub size: u64,
    /// When it was attached, ms since the Unix epoch.
    pub attached_ms: u64,
}

impl TransformRef {
    /// The JSON users see: `{"sha256", "size", "attached_at"}`.
    pub fn view(&self) -> Value {
        serde_json::json!({
            "sha256": self.sha256,
            "size": self.size,
            "attached_at": crate::deliveries::record::rfc3339(self.attached_ms),
        })
    }
}

impl Record for Webhook {
    const KIND: &'static str = "webhook";

    fn version(&mut self) -> &mut u32 {
        &mut self.v
    }
}

/// What a request says about a webhook's signing secret.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum SecretChange {
    /// The field is absent: keep what is there.
    #[default]
    Keep,
    /// Sign with this secret from now on.
    Set(String),
    /// `null`: stop signing.
    Remove,
}

/// The reason recorded when a user disables a webhook.
pub const DISABLED_BY_USER: &str = "disabled by a user";

/// The smallest and largest secret, in decoded bytes.
pub const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

impl Webhook {
    /// Builds a new record from validated input.
    pub fn new(id: String, thing_id: String, group_id: String, input: WebhookInput) -> Self {
        Webhook {
            v: FORMAT_VERSION,
            id,
            thing_id,
            group_id,
            name: input.name,
            url: input.url,
            headers: input.headers,
            metadata: input.metadata,
            secret: match input.secret {
                SecretChange::Set(secret) => Some(secret),
                SecretChange::Keep | SecretChange::Remove => None,
            },
            disabled: input.disabled == Some(true),
            disabled_reason: (input.disabled == Some(true)).then(|| DISABLED_BY_USER.to_owned()),
            // Only attaching one sets it, through its own endpoint.
            transform: None,
        }
    }

    /// The JSON users see: the record without its format version.
    pub fn view(&self) -> Value {
        let mut view = Map::new();
        view.insert("id".into(), self.id.clone().into());
        view.insert("thing_id".into(), self.thing_id.clone().into());
        view.insert("group_id".into(), self.group_id.clone().into());
        view.insert("name".into(), self.name.clone().into());
        view.insert("url".into(), self.url.clone().into());
        if !self.headers.is_empty() {
            view.insert("headers".into(), Value::Object(self.headers.clone()));
        }
        if !self.metadata.is_empty() {
            view.insert("metadata".into(), Value::Object(self.metadata.clone()));
        }
        if self.secret.is_some() {
            view.insert("signed".into(), true.into());
        }
        if self.disabled {
            view.insert("disabled".into(), true.into());
            if let Some(reason) = &self.disabled_reason {
                view.insert("disabled_reason".into(), reason.clone().into());
            }
        }
        if let Some(transform) = &self.transform {
            view.insert("transform".into(), transform.view());
        }
        Value::Object(view)
    }

    /// Replaces the fields a user may set; the secret and the disabled flag change only when
    /// the request names them, and the transform never (it has endpoints of its own).
    pub fn apply(&mut self, input: WebhookInput) {
        self.name = input.name;
        self.url = input.url;
        self.headers = input.headers;
        self.metadata = input.metadata;
        match input.secret {
            SecretChange::Keep => {}
            SecretChange::Set(secret) => self.secret = Some(secret),
            SecretChange::Remove => self.secret = None,
        }
        match input.disabled {
            Some(false) => {
                self.disabled = false;
                self.disabled_reason = None;
            }
            Some(true) if !self.disabled => {
                self.disabled = true;
                self.disabled_reason = Some(DISABLED_BY_USER.to_owned());
            }
            _ => {}
        }
    }
}

/// The fields a user gives when creating or replacing a webhook, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookInput {
    /// 1 to 254 characters.
    pub name: String,
    /// Absolute http or https URL with a host.
    pub url: String,
    /// Valid header names and values, as given.
    pub headers: Map<String, Value>,
    /// Any JSON object.
    pub metadata: Map<String, Value>,
    /// The signing secret, if the request names one.
    pub secret: SecretChange,
    /// `disabled`, if the request names it.
    pub disabled: Option<bool>,
}

impl WebhookInput {
    /// Validates one webhook object of a request body. Fields the service assigns (`id`,
    /// `thing_id`, `group_id`) are ignored when given.
    pub fn parse(value: &Value) -> Result<Self> {
        let Value::Object(fields) = value else {
            return Err(invalid("a webhook must be a JSON object"));
        };
        let name = match fields.get("name") {
            None | Some(Value::Null) => return Err(invalid("name is required")),
            Some(Value::String(name)) => name.clone(),
            Some(_) => return Err(invalid("name must be a string")),
        };
        validate_name(&name)?;
        let url = match fields.get("url") {
            None | Some(Value::Null) => return Err(invalid("url is required")),
            Some(Value::String(url)) => url.clone(),
            Some(_) => return Err(invalid("url must be a string")),
        };
        validate_url(&url)?;
        let headers = match fields.get("headers") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(headers)) => headers.clone(),
            Some(_) => return Err(invalid("headers must be an object of strings")),
        };
        validate_headers(&headers)?;
        let metadata = match fields.get("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(metadata)) => metadata.clone(),
            Some(_) => return Err(invalid("metadata must be a JSON object")),
        };
        let secret = match fields.get("secret") {
            None => SecretChange::Keep,
            Some(Value::Null) => SecretChange::Remove,
            Some(Value::String(secret)) => {
                validate_secret(secret)?;
                SecretChange::Set(secret.clone())
            }
            Some(_) => return Err(invalid("secret must be a string")),
        };
        let disabled = match fields.get("disabled") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(disabled)) => Some(*disabled),
            Some(_) => return Err(invalid("disabled must be true or false")),
        };
        Ok(WebhookInput {
            name,
            url,
            headers,
            metadata,
            secret,
            disabled,
        })
    }
}

/// Checks that a secret is `whsec_` and the base64 of 24 to 64 bytes; answers those bytes.
pub fn validate_secret(secret: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    let refused = || invalid("secret must be whsec_ followed by the base64 of 24 to 64 random bytes");
    let encoded = secret.strip_prefix("whsec_").ok_or_else(refused)?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| refused())?;
    if !SECRET_BYTES.contains(&key.len()) {
        return Err(refused());
    }
    Ok(key)
}

/// Checks the length rule of names.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid("name must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(format!("name must be at most {MAX_NAME_CHARS} characters")));
    }
    Ok(())
}

/// Checks that a URL is an absolute http or https URL with a host, within the size limit.
pub fn validate_url(url: &str) -> Result<()> {
    if url.len() > MAX_URL_BYTES {
        return Err(invalid(format!("url must be at most {MAX_URL_BYTES} bytes")));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("url must not contain whitespace or control characters"));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let authority = if lower.starts_with("http://") {
        &url["http://".len()..]
    } else if lower.starts_with("https://") {
        &url["https://".len()..]
    } else {
        return Err(invalid("url must be an absolute http or https URL"));
    };
    if authority.is_empty() || authority.starts_with(['/', '?', '#']) {
        return Err(invalid("url must have a host"));
    }
    let parsed =
        url::Url::parse(url).map_err(|e| invalid(format!("url must be an absolute http or https URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("url must use the http or https scheme"));
    }
    match parsed.host_str() {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(invalid("url must have a host")),
    }
}

/// Header names a delivery cannot carry, lowercased. The connection-level ones are those
/// wasmtime-wasi-http 48 refuses on an outgoing request (`DEFAULT_FORBIDDEN_HEADERS`, plus `te`
/// and every `proxy-*` name, which the HTTP client owns); the others the service sets itself
/// on every attempt, so a webhook's own value would be overwritten or sent twice.
pub const MANAGED_HEADERS: [&str; 11] = [
    "connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "host",
    "http2-settings",
    "content-length",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Every header name starting with this (lowercased) belongs to proxies, never to a receiver.
pub const MANAGED_HEADER_PREFIX: &str = "proxy-";

/// Whether the service or the HTTP client sets this header, so a webhook may not.
pub fn is_managed_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    MANAGED_HEADERS.contains(&lower.as_str()) || lower.starts_with(MANAGED_HEADER_PREFIX)
}

/// Checks that every header name is an HTTP token the service lets a webhook set and every
/// value a string free of control characters (horizontal tab aside), and that no name repeats
/// in another case.
pub fn validate_headers(headers: &Map<String, Value>) -> Result<()> {
    let mut seen: Vec<String> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        validate_header_name(name)?;
        let lower = name.to_ascii_lowercase();
        if seen.contains(&lower) {
            return Err(invalid(format!("header {name:?} is given more than once")));
        }
        seen.push(lower);
        let Value::String(value) = value else {
            return Err(invalid(format!("value of header {name:?} must be a string")));
        };
        validate_header_value(name, value)?;
    }
    Ok(())
}

/// Checks one header as a webhook's headers are checked: a name the service lets a webhook set,
/// a valid value. A transform's added headers are held to the same rule.
pub fn validate_header(name: &str, value: &str) -> Result<()> {
    validate_header_name(name)?;
    validate_header_value(name, value)
}

fn validate_header_name(name: &str) -> Result<()> {
    if !is_header_name(name) {
        return Err(invalid(format!("header name {name:?} is not a valid HTTP header name")));
    }
    // Refused here rather than at delivery, where every attempt would fail the same way.
    if is_managed_header(name) {
        return Err(invalid(format!(
            "header {name:?} cannot be set on a webhook: the service manages it"
        )));
    }
    Ok(())
}

fn validate_header_value(name: &str, value: &str) -> Result<()> {
    if !is_header_value(value) {
        return Err(invalid(format!(
            "value of header {name:?} contains a character not allowed in HTTP headers"
        )));
    }
    Ok(())
}

/// RFC 9110 `token`: one or more visible ASCII characters other than delimiters.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 9110 `field-value`: no control characters but horizontal tab, no leading or trailing
/// whitespace, which receivers would strip.
pub fn is_header_value(value: &str) -> bool {
    value.chars().all(|c| c == '\t' || !c.is_control())
        && !value.starts_with([' ', '\t'])
        && !value.ends_with([' ', '\t'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use serde_json::json;

    fn parse(value: Value) -> Result<WebhookInput> {
        WebhookInput::parse(&value)
    }

    fn assert_invalid(value: Value, needle: &str) {
        match parse(value.clone()) {
            Err(Error::Invalid(message)) => {
                assert!(message.contains(needle), "{value}: {message:?} lacks {needle:?}")
            }
            other => panic!("{value}: expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_full_webhook_and_keeps_header_case_and_order() {
        let input = parse(json!({
            "name": "Data pipeline",
            "url": "https://ingest.example.com/mainflux",
            "headers": {"X-Api-Key": "k", "accept": "*/*"},
            "metadata": {"a": {"b": 1}},
            "id": "ignored"
        }))
        .unwrap();
        assert_eq!(input.name, "Data pipeline");
        let names: Vec<_> = input.headers.keys().cloned().collect();
        assert_eq!(names, ["X-Api-Key", "accept"]);
        assert_eq!(input.metadata["a"]["b"], 1);
    }

    #[test]
    fn name_is_required_and_bounded() {
        assert_invalid(json!({"url": "http://h"}), "name is required");
        assert_invalid(json!({"name": 3, "url": "http://h"}), "name must be a string");
        assert_invalid(json!({"name": "", "url": "http://h"}), "must not be empty");
        let long: String = "é".repeat(255);
        assert_invalid(json!({"name": long, "url": "http://h"}), "at most 254");
        let max: String = "é".repeat(254);
        assert!(parse(json!({"name": max, "url": "http://h"})).is_ok());
    }

    #[test]
    fn url_must_be_absolute_http_with_a_host() {
        for url in [
            "",
            " http://h",
            "http://h/a b",
            "/relative",
            "ftp://h/x",
            "mailto:a@b",
            "http://",
            "https:///path",
            "not a url",
        ] {
            assert!(parse(json!({"name": "n", "url": url})).is_err(), "{url} accepted");
        }
        assert_invalid(json!({"name": "n"}), "url is required");
        let long = format!("http://h/{}", "a".repeat(2048));
        assert_invalid(json!({"name": "n", "url": long}), "at most 2048");
        for url in [
            "http://h",
            "https://h.example:8443/p?q=1#f",
            "http://127.0.0.1:9/x",
            "http://[::1]/",
        ] {
            assert!(parse(json!({"name": "n", "url": url})).is_ok(), "{url} refused");
        }
    }

    #[test]
    fn headers_must_be_valid_http_fields() {
        let base = |headers: Value| json!({"name": "n", "url": "http://h", "headers": headers});
        assert_invalid(base(json!(["a"])), "object of strings");
        assert_invalid(base(json!({"X-A": 1})), "must be a string");
        assert_invalid(base(json!({"bad name": "v"})), "not a valid HTTP header name");
        assert_invalid(base(json!({"": "v"})), "not a valid HTTP header name");
        assert_invalid(base(json!({"X-A": "a\r\nInjected: 1"})), "not allowed");
        assert_invalid(base(json!({"X-A": "a\u{0}"})), "not allowed");
        assert_invalid(base(json!({"X-A": "1", "x-a": "2"})), "more than once");
        assert!(parse(base(json!({"X-A": "tab\tand ünïcode"}))).is_ok());
    }

    #[test]
    fn headers_the_service_manages_are_refused_in_any_case() {
        let base = |name: &str| json!({"name": "n", "url": "http://h", "headers": {name: "v"}});
        for name in [
            "Connection",
            "keep-alive",
            "TE",
            "Transfer-Encoding",
            "UPGRADE",
            "Host",
            "HTTP2-Settings",
            "Proxy-Authorization",
            "proxy-authenticate",
            "Proxy-Connection",
            "Proxy-Anything",
            "Content-Length",
            "Webhook-Id",
            "webhook-timestamp",
            "WEBHOOK-SIGNATURE",
        ] {
            assert_invalid(
                base(name),
                &format!("header {name:?} cannot be set on a webhook: the service manages it"),
            );
        }
        for name in ["Content-Type", "X-Proxy", "Hostname", "Webhook-Source", "Connection-Id"] {
            assert!(parse(base(name)).is_ok(), "{name} refused");
        }
    }

    #[test]
    fn secrets_are_standard_webhooks_secrets_and_never_shown() {
        let secret = format!("whsec_{}", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let input = parse(json!({"name": "n", "url": "http://h", "secret": secret})).unwrap();
        assert_eq!(input.secret, SecretChange::Set(secret.clone()));
        let record = Webhook::new("i".into(), "t".into(), "g".into(), input);
        let view = record.view().to_string();
        assert!(!view.contains("whsec_") && view.contains("\"signed\":true"), "{view}");
        for bad in [
            json!("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            json!("whsec_!!"),
            json!("whsec_c2hvcnQ="),
            json!(7),
        ] {
            assert!(
                parse(json!({"name": "n", "url": "http://h", "secret": bad})).is_err(),
                "{bad}"
            );
        }
        let long = format!(
            "whsec_{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [1u8; 65])
        );
        assert_invalid(json!({"name": "n", "url": "http://h", "secret": long}), "24 to 64");
        let none = parse(json!({"name": "n", "url": "http://h", "secret": null})).unwrap();
        assert_eq!(none.secret, SecretChange::Remove);
    }

    #[test]
    fn disabling_is_kept_unless_named() {
        let mut record = Webhook::new(
            "i".into(),
            "t".into(),
            "g".into(),
            parse(json!({"name": "n", "url": "http://h"})).unwrap(),
        );
        record.disabled = true;
        record.disabled_reason = Some("receiver answered 410 Gone".into());
        record.apply(parse(json!({"name": "n", "url": "http://h"})).unwrap());
        assert!(record.disabled);
        assert_eq!(record.view()["disabled_reason"], "receiver answered 410 Gone");
        record.apply(parse(json!({"name": "n", "url": "http://h", "disabled": false})).unwrap());
        assert!(!record.disabled && record.view().get("disabled").is_none());
        assert_invalid(
            json!({"name": "n", "url": "http://h", "disabled": "no"}),
            "true or false",
        );
    }

    #[test]
    fn metadata_must_be_an_object() {
        assert_invalid(json!({"name": "n", "url": "http://h", "metadata": [1]}), "metadata");
        assert!(parse(json!({"name": "n", "url": "http://h", "metadata": null})).is_ok());
    }

    #[test]
    fn records_round_trip_and_views_omit_empty_fields() {
        let input = parse(json!({"name": "n", "url": "http://h"})).unwrap();
        let record = Webhook::new("id".into(), "t".into(), "g".into(), input);
        let decoded = Webhook::decode(&record.encode()).unwrap();
        assert_eq!(decoded, record);
        let view = record.view();
        assert!(view.get("headers").is_none() && view.get("metadata").is_none() && view.get("v").is_none());
    }

    #[test]
    fn records_of_a_newer_format_are_refused() {
        let bytes = br#"{"v":99,"id":"i","thing_id":"t","group_id":"g","name":"n","url":"http://h"}"#;
        assert!(matches!(Webhook::decode(bytes), Err(Error::Internal(_))));
    }
}
