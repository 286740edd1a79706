//! The host inside the platform (SPEC.md section 6): identity from the things service over
//! gRPC instead of the registry file, with its roles, refusals, time limit and short cache; and
//! removals from the platform's Redis event stream, applied in order from a cursor kept in
//! Redis, across Redis restarts and host restarts.
//!
//! Each test starts its own things service (a real gRPC server answering from a fixture the
//! test changes), its own `redis-server` when it needs one, and its own host, all on loopback.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use reqwest::header::AUTHORIZATION;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use webhooks_host::identity::Role;
use webhooks_host::identity::things::{CAN_USER_ACCESS_THING, GET_GROUP_ID_BY_THING, IDENTIFY, ThingKey};
use webhooks_tests::flows::{ALLOW_PRIVATE, PROMPTLY, add_webhook, admin_of, publish, send};
use webhooks_tests::receiver::{Receiver, bodies};
use webhooks_tests::redis_server::RedisServer;
use webhooks_tests::things_service::{Call, EXTERNAL_KEY_1, EXTERNAL_KEY_3, Fixture, ThingsServer};
use webhooks_tests::{
    ADMIN, EDITOR, GROUP_1, GROUP_2, LONER, OTHER_ADMIN, THING_1, THING_2, THING_3, TestHost, VIEWER, eventually,
    free_port, standard_registry,
};

/// The things service's time limit in these tests: short, so a slow service is found out fast.
const TIMEOUT: Duration = Duration::from_millis(500);
/// [`TIMEOUT`] as the host reads it.
const TIMEOUT_SETTING: (&str, &str) = ("MF_THINGS_AUTH_GRPC_TIMEOUT", "500ms");
/// Room on top of [`TIMEOUT`] for the rest of a request on a busy machine.
const SLACK: Duration = Duration::from_millis(1500);
/// How long a revoked role may keep working: the host reuses a yes for 2 s.
const REVOCATION_BOUND: Duration = Duration::from_secs(3);
/// How long a removal event may take to show: the host reads the stream every 200 ms.
const REMOVAL_BOUND: Duration = Duration::from_secs(5);
/// How long a removal may take after Redis comes back: the host retries with backoff.
const RECONNECT_BOUND: Duration = Duration::from_secs(10);
/// The key the host keeps its cursor under unless told otherwise.
const DEFAULT_CURSOR: &str = "webhooks";
/// A token the things service does not know.
const UNKNOWN_TOKEN: &str = "nobody-token";
/// A thing the things service does not know.
const UNKNOWN_THING: &str = "aaaaaaaa-0000-4000-8000-0000000000ff";
/// A group the things service does not know.
const UNKNOWN_GROUP: &str = "33333333-3333-4333-8333-333333333333";

/// A host whose identity comes from the things service at `address` (`HOST:PORT`), with
/// these extra variables; it may deliver to loopback receivers.
async fn host_asking(address: &str, extra: &[(&str, &str)]) -> Result<TestHost> {
    let mut env = vec![("MF_THINGS_AUTH_GRPC_URL", address), TIMEOUT_SETTING, ALLOW_PRIVATE];
    env.extend_from_slice(extra);
    // The registry file is still written, but in this mode the host never reads it.
    TestHost::start_with(standard_registry(), &env).await
}

/// A host asking this things service and following this Redis's event stream.
async fn host_following(things: &ThingsServer, redis: &RedisServer, extra: &[(&str, &str)]) -> Result<TestHost> {
    let url = redis.url();
    let mut env = vec![("MF_WEBHOOKS_ES_URL", url.as_str())];
    env.extend_from_slice(extra);
    host_asking(&things.address(), &env).await
}

/// A request `{"name", "url"}` to create one webhook.
fn one_webhook(name: &str) -> Value {
    json!([{"name": name, "url": format!("http://{}.example/hook", name.replace(' ', "-"))}])
}

/// `GET` of a listing (`/things/{id}/webhooks` or `/groups/{id}/webhooks`) as `token`,
/// expecting 200; answers its total.
async fn total(host: &TestHost, listing: &str, token: &str) -> Result<u64> {
    let (status, page) = host.call(Method::GET, listing, token, None).await?;
    ensure!(
        status == StatusCode::OK,
        "GET {listing} as {token} answered {status}: {page}"
    );
    page["total"]
        .as_u64()
        .with_context(|| format!("a page without a total: {page}"))
}

/// The number of webhooks a thing has, as its group's admin sees it.
async fn webhooks_of(host: &TestHost, thing: &str) -> Result<u64> {
    total(host, &format!("/things/{thing}/webhooks"), admin_of(thing)).await
}

/// Waits until a thing has no webhooks left.
async fn until_no_webhooks(host: &TestHost, thing: &str, within: Duration) -> Result<()> {
    eventually(within, || async move {
        let left = webhooks_of(host, thing).await?;
        ensure!(left == 0, "{thing} still has {left} webhooks");
        Ok(())
    })
    .await
}

/// Waits until the cursor key holds this entry id.
async fn until_cursor(redis: &RedisServer, key: &str, entry: &str) -> Result<()> {
    eventually(REMOVAL_BOUND, || async move {
        let cursor = redis.get(key).await?;
        ensure!(
            cursor.as_deref() == Some(entry),
            "cursor {key} is {cursor:?}, not {entry}"
        );
        Ok(())
    })
    .await
}

/// A publish request to `/messages` with `Authorization: <scheme> <key>`.
fn as_device(host: &TestHost, scheme: &str, key: &str) -> RequestBuilder {
    host.request(Method::POST, "/messages", "")
        .header(AUTHORIZATION, format!("{scheme} {key}"))
}

/// Sends a request and measures how long its answer took.
async fn timed(
    host: &TestHost,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value, Duration)> {
    let started = Instant::now();
    let (status, answer) = host.call(method, path, token, body).await?;
    Ok((status, answer, started.elapsed()))
}

/// The (token, action) of every access check the service was asked.
fn access_checks(things: &ThingsServer) -> BTreeSet<(String, String)> {
    things
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::CanUserAccessThing(request) | Call::CanUserAccessGroup(request) => {
                Some((request.token, request.action))
            }
            _ => None,
        })
        .collect()
}

fn check(token: &str, action: &str) -> (String, String) {
    (token.to_owned(), action.to_owned())
}

// --- roles and refusals -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_may_list_and_view_but_only_an_editor_may_create_update_and_remove() -> Result<()> {
    let things = ThingsServer::start().await?;
    let host = host_asking(&things.address(), &[]).await?;
    let listing = format!("/things/{THING_1}/webhooks");

    assert_eq!(total(&host, &listing, VIEWER).await?, 0);
    let (status, body) = host
        .call(Method::POST, &listing, VIEWER, Some(one_webhook("by viewer")))
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let created = host.create(THING_1, EDITOR, one_webhook("by editor")).await?;
    host.create(THING_1, ADMIN, one_webhook("by admin")).await?;
    // The group is the one the service named for the thing.
    assert_eq!(created[0]["group_id"], GROUP_1, "{}", created[0]);
    let id = created[0]["id"].as_str().context("a webhook has a string id")?;
    let by_id = format!("/webhooks/{id}");

    // The viewer sees both, by thing, by group and by id.
    assert_eq!(total(&host, &listing, VIEWER).await?, 2);
    assert_eq!(total(&host, &format!("/groups/{GROUP_1}/webhooks"), VIEWER).await?, 2);
    let (status, viewed) = host.call(Method::GET, &by_id, VIEWER, None).await?;
    assert_eq!(status, StatusCode::OK, "{viewed}");
    assert_eq!(viewed["name"], "by editor");

    // Only an editor changes them.
    let renamed = json!({"name": "renamed", "url": "http://renamed.example"});
    let (status, body) = host.call(Method::PUT, &by_id, VIEWER, Some(renamed.clone())).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = host.call(Method::PUT, &by_id, EDITOR, Some(renamed)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let removal = json!({"webhook_ids": [id]});
    let (status, body) = host
        .call(Method::DELETE, "/webhooks", VIEWER, Some(removal.clone()))
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = host.call(Method::DELETE, "/webhooks", EDITOR, Some(removal)).await?;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(total(&host, &listing, VIEWER).await?, 1);

    // The host asked for the least role each request needs, and never for more.
    let asked = access_checks(&things);
    for expected in [check(VIEWER, "viewer"), check(EDITOR, "editor"), check(ADMIN, "editor")] {
        assert!(asked.contains(&expected), "{expected:?} was not asked: {asked:?}");
    }
    assert!(!asked.iter().any(|(_, action)| action == "admin"), "{asked:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_is_401_and_a_user_outside_the_group_is_403() -> Result<()> {
    let things = ThingsServer::start().await?;
    let host = host_asking(&things.address(), &[]).await?;
    let created = host.create(THING_1, ADMIN, one_webhook("kept")).await?;
    let id = created[0]["id"].as_str().context("a webhook has a string id")?;
    let requests = [
        (Method::GET, format!("/things/{THING_1}/webhooks"), None),
        (
            Method::POST,
            format!("/things/{THING_1}/webhooks"),
            Some(one_webhook("intruder")),
        ),
        (Method::GET, format!("/groups/{GROUP_1}/webhooks"), None),
        (Method::GET, format!("/webhooks/{id}"), None),
        (
            Method::PUT,
            format!("/webhooks/{id}"),
            Some(json!({"name": "taken", "url": "http://taken.example"})),
        ),
    ];
    let callers = [
        ("", StatusCode::UNAUTHORIZED),
        (UNKNOWN_TOKEN, StatusCode::UNAUTHORIZED),
        // The admin of another group, and a known user of no group.
        (OTHER_ADMIN, StatusCode::FORBIDDEN),
        (LONER, StatusCode::FORBIDDEN),
    ];
    for (method, path, body) in &requests {
        for (token, expected) in callers {
            let (status, answer) = host.call(method.clone(), path, token, body.clone()).await?;
            assert_eq!(status, expected, "{method} {path} as {token:?}: {answer}");
        }
    }

    // None of them changed anything.
    assert_eq!(webhooks_of(&host, THING_1).await?, 1);
    let (status, viewed) = host.call(Method::GET, &format!("/webhooks/{id}"), ADMIN, None).await?;
    assert_eq!((status, &viewed["name"]), (StatusCode::OK, &json!("kept")), "{viewed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_file_grants_nothing_once_the_things_service_is_configured() -> Result<()> {
    let things = ThingsServer::start().await?;
    // An admin of GROUP_1 by the registry only.
    let mut registry = standard_registry();
    registry["users"]
        .as_array_mut()
        .context("the registry has users")?
        .push(json!({"id": "u-file", "token": "file-only-token"}));
    registry["groups"][0]["members"]["u-file"] = json!("admin");
    let address = things.address();
    let host = TestHost::start_with(
        registry,
        &[("MF_THINGS_AUTH_GRPC_URL", address.as_str()), TIMEOUT_SETTING],
    )
    .await?;

    let (status, answer) = host
        .call(
            Method::GET,
            &format!("/things/{THING_1}/webhooks"),
            "file-only-token",
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    // The service's roles are the ones that count: the file's viewer, an admin to the
    // service, may create.
    things.set_role(VIEWER, GROUP_1, Some(Role::Admin));
    host.create(THING_1, VIEWER, one_webhook("by the service's admin"))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thing_or_group_the_service_does_not_know_is_404() -> Result<()> {
    let things = ThingsServer::start().await?;
    let host = host_asking(&things.address(), &[]).await?;
    let unknown_thing = format!("/things/{UNKNOWN_THING}/webhooks");
    let requests = [
        (Method::GET, unknown_thing.clone(), None),
        (Method::POST, unknown_thing, Some(one_webhook("orphan"))),
        (Method::GET, format!("/groups/{UNKNOWN_GROUP}/webhooks"), None),
    ];
    for (method, path, body) in requests {
        let (status, answer) = host.call(method.clone(), &path, ADMIN, body).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {answer}");
    }
    // The answers came from the service, which was asked about exactly those ids.
    let asked: Vec<String> = things
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::CanUserAccessThing(request) | Call::CanUserAccessGroup(request) => Some(request.id),
            _ => None,
        })
        .collect();
    assert!(asked.iter().any(|id| id == UNKNOWN_THING), "{asked:?}");
    assert!(asked.iter().any(|id| id == UNKNOWN_GROUP), "{asked:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_role_works_at_once_because_refusals_are_not_cached() -> Result<()> {
    let things = ThingsServer::start().await?;
    let host = host_asking(&things.address(), &[]).await?;
    let listing = format!("/things/{THING_1}/webhooks");
    let (status, body) = host
        .call(Method::POST, &listing, LONER, Some(one_webhook("too early")))
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    things.set_role(LONER, GROUP_1, Some(Role::Editor));
    // No waiting: only a yes is remembered.
    let created = host.create(THING_1, LONER, one_webhook("just in time")).await?;
    assert_eq!(created[0]["name"], "just in time");
    Ok(())
}

// --- the short cache ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yes_is_reused_for_two_seconds_and_then_asked_again() -> Result<()> {
    let things = ThingsServer::start().await?;
    let host = host_asking(&things.address(), &[]).await?;
    let listing = format!("/things/{THING_1}/webhooks");

    let first = Instant::now();
    for _ in 0..5 {
        total(&host, &listing, VIEWER).await?;
    }
    for _ in 0..3 {
        publish(&host, "key-1", "cached").await?;
    }
    assert!(
        first.elapsed() < Duration::from_millis(1500),
        "eight requests took {:?}: too slow to show a 2 s cache",
        first.elapsed()
    );
    assert_eq!(things.count(CAN_USER_ACCESS_THING), 1, "{:?}", things.calls());
    assert_eq!(things.count(GET_GROUP_ID_BY_THING), 1, "{:?}", things.calls());
    assert_eq!(things.count(IDENTIFY), 1, "{:?}", things.calls());

    // Past the two seconds, each question goes to the service again, once.
    tokio::time::sleep_until((first + Duration::from_millis(2500)).into()).await;
    total(&host, &listing, VIEWER).await?;
    total(&host, &listing, VIEWER).await?;
    publish(&host, "key-1", "asked again").await?;
    assert_eq!(things.count(CAN_USER_ACCESS_THING), 2, "{:?}", things.calls());
    assert_eq!(things.count(GET_GROUP_ID_BY_THING), 2, "{:?}", things.calls());
    assert_eq!(things.count(IDENTIFY), 2, "{:?}", things.calls());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_or_revoked_role_stops_working_within_three_seconds() -> Result<()> {
    let things = ThingsServer::start().await?;
    let host = host_asking(&things.address(), &[]).await?;
    let listing = format!("/things/{THING_1}/webhooks");
    // The editor's yes to creating is now cached.
    host.create(THING_1, EDITOR, one_webhook("while editor")).await?;

    things.set_role(EDITOR, GROUP_1, Some(Role::Viewer));
    let lowered = Instant::now();
    let mut attempt = 0;
    eventually(REVOCATION_BOUND, || {
        attempt += 1;
        let listing = &listing;
        let host = &host;
        async move {
            let body = one_webhook(&format!("attempt {attempt}"));
            let (status, answer) = host.call(Method::POST, listing, EDITOR, Some(body)).await?;
            ensure!(
                status == StatusCode::FORBIDDEN,
                "creating still answers {status}: {answer}"
            );
            Ok(())
        }
    })
    .await?;
    eprintln!(
        "creating was refused {:?} after the role was lowered",
        lowered.elapsed()
    );
    // A viewer still sees the list.
    assert!(total(&host, &listing, EDITOR).await? >= 1);

    things.set_role(EDITOR, GROUP_1, None);
    let revoked = Instant::now();
    eventually(REVOCATION_BOUND, || async {
        let (status, answer) = host.call(Method::GET, &listing, EDITOR, None).await?;
        ensure!(
            status == StatusCode::FORBIDDEN,
            "listing still answers {status}: {answer}"
        );
        Ok(())
    })
    .await?;
    eprintln!("listing was refused {:?} after the role was revoked", revoked.elapsed());
    Ok(())
}

// --- an unavailable service ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_things_service_answers_503_within_the_timeout() -> Result<()> {
    // Nothing listens there; the host starts anyway, as it connects on first use.
    let closed = format!("127.0.0.1:{}", free_port());
    let host = host_asking(&closed, &[]).await?;
    let requests = [
        (Method::GET, format!("/things/{THING_1}/webhooks"), None),
        (
            Method::POST,
            format!("/things/{THING_1}/webhooks"),
            Some(one_webhook("lost")),
        ),
        (Method::GET, format!("/groups/{GROUP_1}/webhooks"), None),
    ];
    for (method, path, body) in requests {
        let (status, answer, took) = timed(&host, method.clone(), &path, ADMIN, body).await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method} {path}: {answer}");
        assert!(took < TIMEOUT + SLACK, "{method} {path} took {took:?}");
    }
    let started = Instant::now();
    let answer = send(as_device(&host, "Thing", "key-1").body("lost")).await?;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
    assert!(
        started.elapsed() < TIMEOUT + SLACK,
        "publishing took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_things_service_slower_than_the_timeout_answers_503_once_the_timeout_has_passed() -> Result<()> {
    let things = ThingsServer::start().await?;
    let host = host_asking(&things.address(), &[]).await?;
    let listing = format!("/things/{THING_1}/webhooks");
    things.set_delay(4 * TIMEOUT);

    let (status, answer, took) = timed(&host, Method::GET, &listing, VIEWER, None).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(
        took >= TIMEOUT.mul_f64(0.9),
        "gave up after {took:?}, before the timeout"
    );
    assert!(took < TIMEOUT + SLACK, "waited {took:?}");
    let started = Instant::now();
    let answer = send(as_device(&host, "Thing", "key-1").body("late")).await?;
    let took = started.elapsed();
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
    assert!(
        took >= TIMEOUT.mul_f64(0.9),
        "gave up after {took:?}, before the timeout"
    );
    assert!(took < TIMEOUT + SLACK, "waited {took:?}");
    // The service was reached each time: the host stopped waiting for it.
    assert_eq!(things.count(CAN_USER_ACCESS_THING), 1, "{:?}", things.calls());
    assert_eq!(things.count(IDENTIFY), 1, "{:?}", things.calls());

    // Quick again, the same service is used again.
    things.set_delay(Duration::ZERO);
    assert_eq!(total(&host, &listing, VIEWER).await?, 0);
    publish(&host, "key-1", "in time").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_things_service_that_goes_away_answers_503_and_is_used_again_once_back() -> Result<()> {
    let mut things = ThingsServer::start().await?;
    let port = things.addr.port();
    let host = host_asking(&things.address(), &[]).await?;
    let listing = format!("/things/{THING_1}/webhooks");
    assert_eq!(total(&host, &listing, ADMIN).await?, 0);

    things.stop().await?;
    // The viewer's question has not been asked, so nothing cached can answer it.
    let (status, answer, took) = timed(&host, Method::GET, &listing, VIEWER, None).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(took < TIMEOUT + SLACK, "took {took:?}");

    let back = ThingsServer::start_on(port, Fixture::standard()).await?;
    eventually(Duration::from_secs(5), || async {
        let (status, answer) = host.call(Method::GET, &listing, VIEWER, None).await?;
        ensure!(status == StatusCode::OK, "still {status}: {answer}");
        Ok(())
    })
    .await?;
    assert!(back.count(CAN_USER_ACCESS_THING) >= 1, "{:?}", back.calls());
    Ok(())
}

// --- devices ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_publish_with_their_internal_or_external_key_and_their_messages_are_delivered() -> Result<()> {
    let receiver = Receiver::start().await?;
    let things = ThingsServer::start().await?;
    let host = host_asking(&things.address(), &[]).await?;
    add_webhook(&host, THING_1, "device feed", &receiver.url("/device")).await?;

    publish(&host, "key-1", "through the internal key").await?;
    let answer = send(as_device(&host, "External", EXTERNAL_KEY_1).body("through the external key")).await?;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    let got = receiver.wait_for(Some("/device"), 2, PROMPTLY).await?;
    assert_eq!(bodies(&got), ["through the external key", "through the internal key"]);

    // A key is good for its own kind only, and an unknown key for none.
    for (scheme, key) in [
        ("Thing", EXTERNAL_KEY_1),
        ("External", "key-1"),
        ("Thing", "no-such-key"),
        ("External", "no-such-key"),
    ] {
        let answer = send(as_device(&host, scheme, key).body("refused")).await?;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{scheme} {key}: {answer:?}");
    }
    // Another thing's device is accepted, for its own webhooks: none reach THING_1's.
    let answer = send(as_device(&host, "External", EXTERNAL_KEY_3).body("another thing")).await?;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    receiver.exactly_after_a_while("/device", 2).await?;

    // The service was told which kind of key each was.
    let calls = things.calls();
    for (value, kind) in [("key-1", "internal"), (EXTERNAL_KEY_1, "external")] {
        let identify = Call::Identify(ThingKey {
            value: value.to_owned(),
            r#type: kind.to_owned(),
        });
        assert!(calls.contains(&identify), "{identify:?} not among {calls:?}");
    }
    Ok(())
}

// --- removals from the event stream -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thing_remove_event_removes_every_webhook_of_that_thing_and_no_other() -> Result<()> {
    let redis = RedisServer::start().await?;
    let things = ThingsServer::start().await?;
    let host = host_following(&things, &redis, &[]).await?;
    add_webhook(&host, THING_1, "first", "http://first.example").await?;
    add_webhook(&host, THING_1, "second", "http://second.example").await?;
    add_webhook(&host, THING_2, "sibling", "http://sibling.example").await?;
    add_webhook(&host, THING_3, "stranger", "http://stranger.example").await?;

    // Other operations on a thing are not removals.
    redis.xadd("thing.update", THING_2).await?;
    let entry = redis.xadd("thing.remove", THING_1).await?;
    // The service still knows the thing, so its (empty) list can be read.
    until_no_webhooks(&host, THING_1, REMOVAL_BOUND).await?;
    until_cursor(&redis, DEFAULT_CURSOR, &entry).await?;
    assert_eq!(webhooks_of(&host, THING_2).await?, 1);
    assert_eq!(webhooks_of(&host, THING_3).await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_remove_event_removes_every_webhook_of_the_group_and_the_cursor_has_the_consumers_name() -> Result<()> {
    let redis = RedisServer::start().await?;
    let things = ThingsServer::start().await?;
    let consumer = "webhooks-e2e";
    let host = host_following(&things, &redis, &[("MF_WEBHOOKS_EVENT_CONSUMER", consumer)]).await?;
    add_webhook(&host, THING_1, "one", "http://one.example").await?;
    add_webhook(&host, THING_2, "two", "http://two.example").await?;
    add_webhook(&host, THING_3, "three", "http://three.example").await?;

    let entry = redis.xadd("group.remove", GROUP_1).await?;
    eventually(REMOVAL_BOUND, || async {
        let left = total(&host, &format!("/groups/{GROUP_1}/webhooks"), ADMIN).await?;
        ensure!(left == 0, "{GROUP_1} still has {left} webhooks");
        Ok(())
    })
    .await?;
    assert_eq!(webhooks_of(&host, THING_1).await?, 0);
    assert_eq!(webhooks_of(&host, THING_2).await?, 0);
    assert_eq!(
        total(&host, &format!("/groups/{GROUP_2}/webhooks"), OTHER_ADMIN).await?,
        1
    );
    until_cursor(&redis, consumer, &entry).await?;
    assert_eq!(
        redis.get(DEFAULT_CURSOR).await?,
        None,
        "the cursor is kept under the consumer's name only"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_still_happen_after_redis_restarts() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let things = ThingsServer::start().await?;
    let host = host_following(&things, &redis, &[]).await?;
    add_webhook(&host, THING_1, "doomed", "http://doomed.example").await?;
    add_webhook(&host, THING_2, "survivor", "http://survivor.example").await?;
    // Once the cursor has moved, the host is following the stream.
    let before = redis.xadd("thing.update", THING_2).await?;
    until_cursor(&redis, DEFAULT_CURSOR, &before).await?;

    redis.stop().await?;
    // Down long enough for the host to notice and to fail reconnecting more than once.
    let reconnecting = || host.log().matches("event stream unreachable").count();
    eventually(REMOVAL_BOUND, || async {
        ensure!(reconnecting() > 0, "no reconnecting in the log yet");
        Ok(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(reconnecting() >= 2, "tried to reconnect {} times", reconnecting());
    redis.start_again().await?;
    // The stream and the cursor outlived the restart.
    assert_eq!(redis.get(DEFAULT_CURSOR).await?.as_deref(), Some(before.as_str()));

    let entry = redis.xadd("thing.remove", THING_1).await?;
    until_no_webhooks(&host, THING_1, RECONNECT_BOUND).await?;
    until_cursor(&redis, DEFAULT_CURSOR, &entry).await?;
    assert_eq!(webhooks_of(&host, THING_2).await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_added_while_the_host_is_stopped_are_all_applied_once_it_is_back() -> Result<()> {
    let redis = RedisServer::start().await?;
    let things = ThingsServer::start().await?;
    let mut host = host_following(&things, &redis, &[]).await?;
    add_webhook(&host, THING_1, "first", "http://first.example").await?;
    add_webhook(&host, THING_2, "last", "http://last.example").await?;
    add_webhook(&host, THING_3, "kept", "http://kept.example").await?;
    let before = redis.xadd("thing.update", THING_3).await?;
    until_cursor(&redis, DEFAULT_CURSOR, &before).await?;

    host.stop()?;
    // More entries than the host reads at once, with a removal first and another last.
    redis.xadd("thing.remove", THING_1).await?;
    for _ in 0..150 {
        redis.xadd("thing.update", THING_3).await?;
    }
    let last = redis.xadd("thing.remove", THING_2).await?;
    host.start_again().await?;

    until_no_webhooks(&host, THING_1, REMOVAL_BOUND).await?;
    until_no_webhooks(&host, THING_2, REMOVAL_BOUND).await?;
    until_cursor(&redis, DEFAULT_CURSOR, &last).await?;
    assert_eq!(webhooks_of(&host, THING_3).await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_resumes_from_its_cursor_not_from_the_start_of_the_stream() -> Result<()> {
    let redis = RedisServer::start().await?;
    let things = ThingsServer::start().await?;
    let mut host = host_following(&things, &redis, &[]).await?;
    add_webhook(&host, THING_1, "before", "http://before.example").await?;
    let removal = redis.xadd("thing.remove", THING_1).await?;
    until_no_webhooks(&host, THING_1, REMOVAL_BOUND).await?;
    until_cursor(&redis, DEFAULT_CURSOR, &removal).await?;

    // A webhook made after the removal was applied: reading the stream from its start again
    // would remove it.
    add_webhook(&host, THING_1, "after", "http://after.example").await?;
    host.restart().await?;
    let marker = redis.xadd("thing.update", THING_3).await?;
    until_cursor(&redis, DEFAULT_CURSOR, &marker).await?;
    assert_eq!(webhooks_of(&host, THING_1).await?, 1);
    Ok(())
}

/// With `MF_WEBHOOKS_CLIENT_TLS`, the host speaks TLS to the things service and verifies it
/// against `MF_WEBHOOKS_CA_CERTS`: a service signed by that CA is used; without the CA (the web
/// PKI roots), or without TLS, the same service is unreachable: 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_things_service_is_verified_against_the_configured_ca() -> Result<()> {
    let certificates = webhooks_tests::test_certificates()?;
    let read = |name: &str| std::fs::read(certificates.path().join(name));
    let things = ThingsServer::start_tls(&read("server.pem")?, &read("server.key")?).await?;
    let ca = certificates.path().join("ca.pem");
    let listing = format!("/things/{THING_1}/webhooks");

    let trusting = host_asking(
        &things.address(),
        &[
            ("MF_WEBHOOKS_CLIENT_TLS", "true"),
            ("MF_WEBHOOKS_CA_CERTS", ca.to_str().unwrap()),
        ],
    )
    .await?;
    assert_eq!(total(&trusting, &listing, VIEWER).await?, 0);
    let (status, _) = trusting.call(Method::GET, &listing, UNKNOWN_TOKEN, None).await?;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the service's answers come through TLS"
    );

    let distrusting = host_asking(&things.address(), &[("MF_WEBHOOKS_CLIENT_TLS", "true")]).await?;
    let (status, _) = distrusting.call(Method::GET, &listing, VIEWER, None).await?;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a certificate from an unknown CA is refused"
    );

    let plaintext = host_asking(&things.address(), &[]).await?;
    let (status, _) = plaintext.call(Method::GET, &listing, VIEWER, None).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "no plaintext to a TLS service");
    assert_eq!(
        things.count(CAN_USER_ACCESS_THING),
        2,
        "only the trusting host's calls got through"
    );
    Ok(())
}
