//! What the suites do over and over through the API: create a webhook as its thing's admin,
//! publish as a thing and read the answer, with the settings and bounds those flows share.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reqwest::header::AUTHORIZATION;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

use crate::{ADMIN, OTHER_ADMIN, THING_3, TestHost, read, standard_registry};

/// The variable that lets the host deliver to loopback receivers.
pub const ALLOW_PRIVATE: (&str, &str) = ("MF_WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS", "true");
/// How long a delivery that should happen at once may take, with room for a busy machine.
pub const PROMPTLY: Duration = Duration::from_secs(5);
/// The retry schedule of most reliability tests: three retries, after about 1 s, 1 s and 2 s
/// (each ±20%).
pub const SCHEDULE: &str = "1s,1s,2s";
/// The header carrying a message's id.
pub const MESSAGE_ID: &str = "X-Message-Id";
/// A webhook id nobody has.
pub const UNKNOWN_WEBHOOK: &str = "0f0f0f0f-0000-4000-8000-0000000000ff";

/// A host with the standard registry that may deliver to loopback receivers, retrying on
/// `schedule`, with these extra variables.
pub async fn host_retrying_on(schedule: &str, extra: &[(&str, &str)]) -> Result<TestHost> {
    let mut env = vec![ALLOW_PRIVATE, ("MF_WEBHOOKS_RETRY_SCHEDULE", schedule)];
    env.extend_from_slice(extra);
    TestHost::start_with(standard_registry(), &env).await
}

/// The admin of a standard thing's group.
pub fn admin_of(thing: &str) -> &'static str {
    if thing == THING_3 { OTHER_ADMIN } else { ADMIN }
}

/// Creates one webhook (`{name, url, headers?}`) on a thing as its group's admin; answers its id.
pub async fn add_webhook_with(host: &TestHost, thing: &str, item: Value) -> Result<String> {
    let created = host.create(thing, admin_of(thing), json!([item])).await?;
    Ok(created[0]["id"]
        .as_str()
        .context("a webhook has a string id")?
        .to_owned())
}

/// Creates one webhook without headers on a thing; answers its id.
pub async fn add_webhook(host: &TestHost, thing: &str, name: &str, url: &str) -> Result<String> {
    add_webhook_with(host, thing, json!({"name": name, "url": url})).await
}

/// `GET /webhooks/{id}` as the admin, expecting `200`; answers the webhook.
pub async fn view(host: &TestHost, id: &str) -> Result<Value> {
    host.expect(Method::GET, &format!("/webhooks/{id}"), ADMIN, None, StatusCode::OK)
        .await
}

/// Raises the host's stored data to `format` through `PUT /admin/data-format`, as an operator
/// would, with the admin token the host was started with.
pub async fn raise_data_format(host: &TestHost, admin_token: &str, format: u32) -> Result<()> {
    let (status, answer) = host
        .call(
            Method::PUT,
            "/admin/data-format",
            admin_token,
            Some(json!({ "format": format })),
        )
        .await?;
    ensure!(
        status == StatusCode::OK,
        "raising the data format answered {status}: {answer}"
    );
    Ok(())
}

/// `PUT /webhooks/{id}` as the admin, expecting `200`.
pub async fn update(host: &TestHost, id: &str, body: Value) -> Result<()> {
    host.expect(
        Method::PUT,
        &format!("/webhooks/{id}"),
        ADMIN,
        Some(body),
        StatusCode::OK,
    )
    .await?;
    Ok(())
}

/// A publish request as the thing with this key, to a path such as `/messages`.
pub fn as_thing(host: &TestHost, key: &str, path: &str) -> RequestBuilder {
    host.request(Method::POST, path, "")
        .header(AUTHORIZATION, format!("Thing {key}"))
}

/// The answer to a publish.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: StatusCode,
    /// The `X-Message-Id` header of the answer.
    pub message_id: Option<String>,
    /// The JSON body (`Null` when empty); errors are checked to be `{"error": "..."}`.
    pub body: Value,
}

/// Sends a publish request and reads its answer.
pub async fn send(request: RequestBuilder) -> Result<Answer> {
    let response = request.send().await?;
    let message_id = response
        .headers()
        .get(MESSAGE_ID)
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()?;
    let (status, body) = read(response).await?;
    Ok(Answer {
        status,
        message_id,
        body,
    })
}

/// Publishes a payload to `/messages` as the thing with this key, expecting `202`; answers
/// the message id.
pub async fn publish(host: &TestHost, key: &str, payload: impl Into<Vec<u8>>) -> Result<String> {
    accepted(send(as_thing(host, key, "/messages").body(payload.into())).await?)
}

/// Checks that a publish was accepted with a message id; answers the id.
pub fn accepted(answer: Answer) -> Result<String> {
    ensure!(answer.status == StatusCode::ACCEPTED, "publish answered {answer:?}");
    let id = answer.message_id.context("a 202 without X-Message-Id")?;
    ensure!(is_uuid(&id), "the message id {id:?} is not a UUID");
    Ok(id)
}

/// Whether `text` is a UUID in its canonical hyphenated form (any version, either case).
pub fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// `count` random bytes, each call others.
pub fn random_bytes(count: usize) -> Vec<u8> {
    use std::hash::{BuildHasher, RandomState};
    // Every `RandomState` has its own random keys.
    let state = RandomState::new();
    (0..count).map(|i| state.hash_one(i) as u8).collect()
}

/// A fresh random UUID v4 for `X-Message-Id`.
pub fn fresh_message_id() -> String {
    let mut bytes = random_bytes(16);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}
