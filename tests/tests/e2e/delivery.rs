//! What a webhook receiver gets when a thing publishes (SPEC.md sections 3, 4, 5 and 7): the
//! exact payload bytes as a `POST` to the webhook's URL with its headers and the right
//! `Content-Type`, one copy per webhook and message, independently of other webhooks, never to
//! refused destinations, once per `X-Message-Id`, retried after `5xx` and across restarts.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use webhooks_tests::delivery_log::{attempts, the_only_delivery};
use webhooks_tests::flows::{
    ALLOW_PRIVATE, MESSAGE_ID, PROMPTLY, accepted, add_webhook, add_webhook_with, as_thing, fresh_message_id,
    host_retrying_on, publish, send,
};
use webhooks_tests::receiver::{Behaviour, QUIET, Received, Receiver, bodies, summary};
use webhooks_tests::{ADMIN, GROUP_1, THING_1, THING_2, THING_3, TestHost, eventually, standard_registry};

/// A retry schedule short enough for tests (each delay ±20%).
const SHORT_SCHEDULE: &str = "1s,5s,30s,2m,10m";
/// How long a log line or registry edit may take to show.
const LOG_BOUND: Duration = Duration::from_secs(5);
/// The publish endpoint's body limit.
const MIB: usize = 1 << 20;

/// A host with the standard registry that may deliver to loopback receivers.
async fn host_allowing_loopback() -> anyhow::Result<TestHost> {
    host_retrying_on(SHORT_SCHEDULE, &[]).await
}

/// The one request among `requests` whose body is `payload`.
fn the_copy_of<'a>(requests: &'a [Received], payload: &[u8]) -> anyhow::Result<&'a Received> {
    let copies: Vec<&Received> = requests.iter().filter(|r| r.body == payload).collect();
    ensure!(
        copies.len() == 1,
        "{} copies of the payload {:?} (of {} bytes) among {:?}",
        copies.len(),
        String::from_utf8_lossy(&payload[..payload.len().min(40)]),
        payload.len(),
        summary(requests)
    );
    Ok(copies[0])
}

/// Whether the host logged a refused delivery to this webhook.
fn logged_refusal(host: &TestHost, webhook_id: &str) -> bool {
    host.log()
        .lines()
        .any(|l| l.contains("delivery failed") && l.contains("destination refused") && l.contains(webhook_id))
}

// --- 1. the payload, byte for byte --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_arrive_byte_for_byte_as_a_post_to_the_exact_path_and_query_of_the_webhook() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_allowing_loopback().await?;
    let target = "/ingest/v1?token=abc&site=plant%20a&flag";
    add_webhook(&host, THING_1, "pipeline", &receiver.url(target)).await?;

    // Odd spacing and escapes: any re-encoding of the JSON would show.
    let json_payload = br#"{ "temperature":21.50,  "unit":"\u00b0C", "tags":["a","b"] }"#.to_vec();
    let every_byte: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    assert!(
        std::str::from_utf8(&every_byte).is_err(),
        "the binary payload is not UTF-8"
    );
    let empty = Vec::new();
    let just_under_the_limit: Vec<u8> = (0..MIB - 1).map(|i| (i * 7 % 251) as u8).collect();
    let at_the_limit: Vec<u8> = (0..MIB).map(|i| (i % 256) as u8 ^ 0x5a).collect();
    let payloads = [json_payload, every_byte, empty, just_under_the_limit, at_the_limit];

    for payload in &payloads {
        publish(&host, "key-1", payload.clone()).await?;
    }

    let got = receiver
        .wait_for(Some("/ingest/v1"), payloads.len(), 2 * PROMPTLY)
        .await?;
    for request in &got {
        assert_eq!(request.method, "POST", "{:?}", summary(&got));
        assert_eq!(request.path, target, "{:?}", summary(&got));
    }
    for payload in &payloads {
        the_copy_of(&got, payload)?;
    }
    receiver.exactly_after_a_while("/ingest/v1", payloads.len()).await?;
    Ok(())
}

// --- 2. the webhook's headers -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_header_of_the_webhook_arrives_with_its_exact_value() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_allowing_loopback().await?;
    let headers = [
        ("X-Api-Key", "k-123_ABC"),
        ("Authorization", "Bearer downstream-secret"),
        ("X-Note", "hello  wörld ✓ 21 °C, café"),
        ("x-lower-case", "Mixed Case Value"),
        ("X-MiXeD-CaSe", "a=1; b=2, c"),
    ];
    let header_object: serde_json::Map<String, Value> =
        headers.iter().map(|(n, v)| (n.to_string(), json!(v))).collect();
    add_webhook_with(
        &host,
        THING_1,
        json!({"name": "with headers", "url": receiver.url("/with-headers"), "headers": header_object}),
    )
    .await?;
    add_webhook(&host, THING_1, "without headers", &receiver.url("/without-headers")).await?;

    publish(&host, "key-1", "reading").await?;

    let with = receiver.wait_for(Some("/with-headers"), 1, PROMPTLY).await?;
    for (name, value) in headers {
        assert_eq!(
            with[0].header_values(name),
            [value],
            "header {name} as received: {:?}",
            with[0].headers
        );
    }
    let without = receiver.wait_for(Some("/without-headers"), 1, PROMPTLY).await?;
    for (name, _) in headers {
        assert_eq!(
            without[0].header(name),
            None,
            "another webhook's header {name} arrived: {:?}",
            without[0].headers
        );
    }
    // The device's credentials never reach a receiver.
    for request in with.iter().chain(&without) {
        assert!(
            !request.headers.iter().any(|(_, v)| v.contains("key-1")),
            "the thing key was forwarded: {:?}",
            request.headers
        );
    }
    Ok(())
}

// --- 3. Content-Type ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_type_is_the_webhooks_own_else_the_devices_else_json() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_allowing_loopback().await?;
    add_webhook_with(
        &host,
        THING_1,
        json!({"name": "own", "url": receiver.url("/own"), "headers": {"Content-Type": "text/csv"}}),
    )
    .await?;
    add_webhook_with(
        &host,
        THING_1,
        json!({"name": "own, lowercase", "url": receiver.url("/own-lowercase"),
               "headers": {"content-type": "application/xml; charset=utf-8"}}),
    )
    .await?;
    add_webhook(&host, THING_1, "plain", &receiver.url("/plain")).await?;

    let typed = b"[{\"n\":\"temp\",\"v\":21}]";
    let untyped = b"{\"v\":22}";
    accepted(
        send(
            as_thing(&host, "key-1", "/messages")
                .header(CONTENT_TYPE, "application/senml+json")
                .body(typed.to_vec()),
        )
        .await?,
    )?;
    accepted(send(as_thing(&host, "key-1", "/messages").body(untyped.to_vec())).await?)?;

    let expectations: [(&str, &[u8], &str); 6] = [
        ("/own", typed, "text/csv"),
        ("/own", untyped, "text/csv"),
        ("/own-lowercase", typed, "application/xml; charset=utf-8"),
        ("/own-lowercase", untyped, "application/xml; charset=utf-8"),
        ("/plain", typed, "application/senml+json"),
        ("/plain", untyped, "application/json"),
    ];
    for (path, payload, content_type) in expectations {
        let got = receiver.wait_for(Some(path), 2, PROMPTLY).await?;
        let request = the_copy_of(&got, payload)?;
        assert_eq!(
            request.header_values("content-type"),
            [content_type],
            "on {path} for {:?}",
            String::from_utf8_lossy(payload)
        );
    }
    Ok(())
}

// --- 4. fan-out -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_webhook_of_the_publishing_thing_gets_one_copy_and_no_other_thing_gets_any() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let other_receiver = Receiver::start().await?;
    let host = host_allowing_loopback().await?;
    let own_paths = ["/one", "/two", "/three"];
    add_webhook(&host, THING_1, "one", &receiver.url("/one")).await?;
    add_webhook(&host, THING_1, "two", &receiver.url("/two")).await?;
    add_webhook(&host, THING_1, "three", &other_receiver.url("/three")).await?;
    add_webhook(&host, THING_2, "same group", &receiver.url("/same-group")).await?;
    add_webhook(&host, THING_3, "other group", &receiver.url("/other-group")).await?;
    let at = |path: &str| if path == "/three" { &other_receiver } else { &receiver };

    publish(&host, "key-1", "first").await?;
    publish(&host, "key-1", "second").await?;
    for path in own_paths {
        at(path).wait_for(Some(path), 2, PROMPTLY).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for path in own_paths {
        let got = at(path).received_on(path);
        assert_eq!(bodies(&got), ["first", "second"], "on {path}: {:?}", summary(&got));
    }
    assert_eq!(summary(&receiver.received_on("/same-group")), Vec::<String>::new());
    assert_eq!(summary(&receiver.received_on("/other-group")), Vec::<String>::new());

    publish(&host, "key-3", "third").await?;
    let got = receiver.wait_for(Some("/other-group"), 1, PROMPTLY).await?;
    assert_eq!(bodies(&got), ["third"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bodies(&receiver.received_on("/other-group")), ["third"]);
    assert_eq!(
        receiver.count() + other_receiver.count(),
        7,
        "{:?}",
        summary(&receiver.received())
    );
    assert_eq!(summary(&receiver.received_on("/same-group")), Vec::<String>::new());
    Ok(())
}

// --- 5. isolation -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_does_not_delay_another_webhooks_deliveries() -> anyhow::Result<()> {
    let slow = Receiver::start().await?;
    slow.set_behaviour("/slow", Behaviour::status(200).after(Duration::from_secs(3)));
    let fast = Receiver::start().await?;
    let host = host_allowing_loopback().await?;
    add_webhook(&host, THING_1, "slow", &slow.url("/slow")).await?;
    add_webhook(&host, THING_1, "fast", &fast.url("/fast")).await?;
    // Same receiver as the slow one, but a fast path.
    add_webhook(&host, THING_1, "fast beside slow", &slow.url("/quick")).await?;

    let published = Instant::now();
    publish(&host, "key-1", "first").await?;
    let fast_copy = fast.wait_for(Some("/fast"), 1, PROMPTLY).await?;
    let quick_copy = slow.wait_for(Some("/quick"), 1, PROMPTLY).await?;
    for (name, copy) in [("fast", &fast_copy[0]), ("fast beside slow", &quick_copy[0])] {
        let took = copy.at.duration_since(published);
        ensure!(took < Duration::from_secs(1), "{name} got its copy after {took:?}");
    }

    // Five more while the slow receiver still sits on the first. Waiting for it to arrive
    // there first makes the order of arrivals certain; the order of answers is not (the
    // receiver answers the first and the first of the burst 3 s after each arrived, and a busy
    // machine may wake both at once).
    let sitting = slow.wait_for_arrivals_on("/slow", 1, PROMPTLY).await?;
    assert_eq!(sitting[0].body, "first");
    let burst = Instant::now();
    for n in 1..=5 {
        publish(&host, "key-1", format!("burst {n}")).await?;
    }
    let got = fast.wait_for(Some("/fast"), 6, PROMPTLY).await?;
    let last = got.iter().map(|r| r.at).max().unwrap();
    let took = last.duration_since(burst);
    ensure!(
        took < Duration::from_millis(1500),
        "the fast webhook got the burst after {took:?}"
    );
    assert_eq!(
        bodies(&got),
        ["burst 1", "burst 2", "burst 3", "burst 4", "burst 5", "first"]
    );

    // The first and the first of the burst are answered 3 s after they arrived, in either order.
    let answered = slow.wait_for(Some("/slow"), 2, 2 * PROMPTLY).await?;
    let slow_copy = answered
        .iter()
        .find(|r| r.body == "first")
        .with_context(|| format!("the first is not among the first answered: {:?}", summary(&answered)))?;
    let took = slow_copy.at.duration_since(published);
    ensure!(
        took >= Duration::from_secs(3),
        "the slow receiver answered after {took:?}"
    );
    assert!(slow_copy.at > fast_copy[0].at);
    Ok(())
}

/// Requests toward one receiver (scheme, host and port), whichever webhooks they belong to, are
/// bounded by `MF_WEBHOOKS_DESTINATION_MAX_IN_FLIGHT` and reuse that many connections; every
/// delivery still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_toward_one_receiver_are_bounded_across_webhooks_and_reuse_their_connections() -> anyhow::Result<()> {
    const BOUND: usize = 2;
    let receiver = Receiver::start().await?;
    let host = TestHost::start_with(
        standard_registry(),
        &[ALLOW_PRIVATE, ("MF_WEBHOOKS_DESTINATION_MAX_IN_FLIGHT", "2")],
    )
    .await?;
    for i in 0..4 {
        let path = format!("/bounded/{i}");
        receiver.set_behaviour(&path, Behaviour::status(200).after(Duration::from_millis(300)));
        add_webhook(&host, THING_1, &format!("bounded-{i}"), &receiver.url(&path)).await?;
    }
    for n in 0..3 {
        publish(&host, "key-1", format!("message {n}")).await?;
    }
    receiver.wait_for_count(12, Duration::from_secs(60)).await?;
    assert_eq!(
        receiver.most_in_flight(),
        BOUND,
        "12 deliveries of 4 webhooks to one receiver, at most {BOUND} at a time, and that many in parallel"
    );
    assert!(
        receiver.connections() <= 2 * BOUND,
        "{} connections opened for {BOUND} in flight",
        receiver.connections()
    );
    Ok(())
}

// --- 6. SSRF guard ------------------------------------------------------------------------

/// A host started with these variables, a receiver, and two webhooks of `THING_1` to it, one
/// by address (`/x`) and one by name (`/y`); answers them and the webhooks' ids.
async fn loopback_webhooks(env: &[(&str, &str)]) -> anyhow::Result<(TestHost, Receiver, [String; 2])> {
    let receiver = Receiver::start().await?;
    let host = TestHost::start_with(standard_registry(), env).await?;
    let port = receiver.addr.port();
    let by_address = add_webhook(&host, THING_1, "by address", &format!("http://127.0.0.1:{port}/x")).await?;
    let by_name = add_webhook(&host, THING_1, "by name", &format!("http://localhost:{port}/y")).await?;
    Ok((host, receiver, [by_address, by_name]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_to_loopback_are_refused_and_never_sent_by_default() -> anyhow::Result<()> {
    let (host, receiver, webhooks) = loopback_webhooks(&[]).await?;
    let published = Instant::now();
    publish(&host, "key-1", "must not leave").await?;

    eventually(LOG_BOUND, || async {
        for id in &webhooks {
            ensure!(
                logged_refusal(&host, id),
                "no refused delivery logged for {id}:\n{}",
                host.log()
            );
        }
        Ok(())
    })
    .await?;
    tokio::time::sleep(QUIET.saturating_sub(published.elapsed())).await;
    assert_eq!(summary(&receiver.received()), Vec::<String>::new());
    // Refused is final: no retry.
    for id in &webhooks {
        let log = host.log();
        let retries: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(id.as_str()) && l.contains("will retry"))
            .collect();
        assert_eq!(retries, Vec::<&str>::new(), "a refused delivery to {id} is retried");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_to_loopback_are_sent_when_private_destinations_are_allowed() -> anyhow::Result<()> {
    let (host, receiver, webhooks) = loopback_webhooks(&[ALLOW_PRIVATE]).await?;
    publish(&host, "key-1", "may leave").await?;
    for path in ["/x", "/y"] {
        let got = receiver.wait_for(Some(path), 1, PROMPTLY).await?;
        assert_eq!(got[0].body, "may leave");
    }
    receiver.exactly_after_a_while("/x", 1).await?;
    assert_eq!(receiver.count(), 2, "{:?}", summary(&receiver.received()));
    for id in &webhooks {
        assert!(!logged_refusal(&host, id), "{}", host.log());
    }
    Ok(())
}

// --- 7. the publish endpoint --------------------------------------------------------------

/// A raw publish request as `THING_1` with a body of this size.
fn raw_publish(port: u16, size: usize) -> Vec<u8> {
    let mut request = format!(
        "POST /messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Thing key-1\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    request.resize(request.len() + size, b'x');
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_publishes_answer_401_413_or_400_and_deliver_nothing() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_allowing_loopback().await?;
    add_webhook(&host, THING_1, "in", &receiver.url("/in")).await?;

    let messages = |host: &TestHost| host.request(Method::POST, "/messages", "");
    let unauthenticated = [
        ("no Authorization", messages(&host)),
        ("an unknown key", as_thing(&host, "wrong-key", "/messages")),
        ("an empty key", messages(&host).header(AUTHORIZATION, "Thing ")),
        ("a user token", host.request(Method::POST, "/messages", ADMIN)),
        ("a thing key as a bearer token", messages(&host).bearer_auth("key-1")),
        (
            "a thing key without a scheme",
            messages(&host).header(AUTHORIZATION, "key-1"),
        ),
    ];
    for (what, request) in unauthenticated {
        let answer = send(request.body("refused")).await?;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{what}: {answer:?}");
        assert!(
            answer.body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {answer:?}"
        );
    }

    let answer = host.raw_exchange(raw_publish(host.port, MIB + 1)).await?;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{answer:?}");
    assert_eq!(answer.content_type, "application/json", "{answer:?}");
    assert!(
        answer.body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{answer:?}"
    );

    for id in ["not-a-uuid", "12345", "", "aaaaaaaa-0000-4000-8000-00000000000g"] {
        let answer = send(
            as_thing(&host, "key-1", "/messages")
                .header(MESSAGE_ID, id)
                .body("refused"),
        )
        .await?;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "X-Message-Id {id:?}: {answer:?}"
        );
    }

    // A valid publish still goes through, and it is the only thing that arrives.
    publish(&host, "key-1", "accepted").await?;
    receiver.wait_for(Some("/in"), 1, PROMPTLY).await?;
    let got = receiver.exactly_after_a_while("/in", 1).await?;
    assert_eq!(got[0].body, "accepted");
    Ok(())
}

#[tokio::test]
async fn a_thing_without_webhooks_may_publish() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    publish(&host, "key-2", "to nobody").await?;
    let answer = send(as_thing(&host, "key-2", "/messages/some/topic").body("to nobody")).await?;
    accepted(answer)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_subtopic_or_under_the_gateway_prefix_is_delivered() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_allowing_loopback().await?;
    add_webhook(&host, THING_1, "in", &receiver.url("/in")).await?;

    for (path, payload) in [
        ("/messages/a/b/c", "to a subtopic"),
        ("/svcwebhooks/messages", "under the prefix"),
        ("/svcwebhooks/messages/a/b", "to a subtopic under the prefix"),
    ] {
        let answer = send(as_thing(&host, "key-1", path).body(payload)).await?;
        accepted(answer).with_context(|| format!("POST {path}"))?;
    }

    receiver.wait_for(Some("/in"), 3, PROMPTLY).await?;
    let got = receiver.exactly_after_a_while("/in", 3).await?;
    assert_eq!(
        bodies(&got),
        ["to a subtopic", "to a subtopic under the prefix", "under the prefix"]
    );
    Ok(())
}

// --- 8. idempotency -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_again_with_the_same_message_id_delivers_once() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_allowing_loopback().await?;
    add_webhook(&host, THING_1, "in", &receiver.url("/in")).await?;

    let id = fresh_message_id();
    for attempt in ["first", "retry"] {
        let answer = send(
            as_thing(&host, "key-1", "/messages")
                .header(MESSAGE_ID, &id)
                .body("exactly once"),
        )
        .await?;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{attempt}: {answer:?}");
        assert_eq!(answer.message_id.as_deref(), Some(id.as_str()), "{attempt}: {answer:?}");
    }
    receiver.wait_for(Some("/in"), 1, PROMPTLY).await?;
    let got = receiver.exactly_after_a_while("/in", 1).await?;
    assert_eq!(got[0].body, "exactly once");

    let other = fresh_message_id();
    let answer = send(
        as_thing(&host, "key-1", "/messages")
            .header(MESSAGE_ID, &other)
            .body("exactly once"),
    )
    .await?;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    assert_eq!(answer.message_id.as_deref(), Some(other.as_str()));
    receiver.wait_for(Some("/in"), 2, PROMPTLY).await?;
    let got = receiver.exactly_after_a_while("/in", 2).await?;
    assert_eq!(bodies(&got), ["exactly once", "exactly once"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_message_id_every_publish_is_a_new_message_with_its_own_id() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_allowing_loopback().await?;
    add_webhook(&host, THING_1, "in", &receiver.url("/in")).await?;

    let first = publish(&host, "key-1", "same payload").await?;
    let second = publish(&host, "key-1", "same payload").await?;
    assert_ne!(first, second);
    receiver.wait_for(Some("/in"), 2, PROMPTLY).await?;
    let got = receiver.exactly_after_a_while("/in", 2).await?;
    assert_eq!(bodies(&got), ["same payload", "same payload"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_id_from_another_thing_is_another_message() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_allowing_loopback().await?;
    add_webhook(&host, THING_1, "first thing", &receiver.url("/one")).await?;
    add_webhook(&host, THING_2, "second thing", &receiver.url("/two")).await?;

    let id = fresh_message_id();
    for (key, payload) in [("key-1", "from the first"), ("key-2", "from the second")] {
        let answer = send(as_thing(&host, key, "/messages").header(MESSAGE_ID, &id).body(payload)).await?;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{key}: {answer:?}");
    }
    let one = receiver.wait_for(Some("/one"), 1, PROMPTLY).await?;
    assert_eq!(one[0].body, "from the first");
    let two = receiver.wait_for(Some("/two"), 1, PROMPTLY).await?;
    assert_eq!(two[0].body, "from the second");
    Ok(())
}

/// Publishes 240 messages at once from two things: 20 ids sent four times each, over both
/// things' keys, and 160 without an id. Checks every publish was accepted and each message
/// delivered exactly once; answers how many intake calls took messages in batches.
async fn publish_together_and_count_once(host: &TestHost, receiver: &Receiver) -> anyhow::Result<f64> {
    let named: Vec<String> = (0..20).map(|_| fresh_message_id()).collect();
    let mut sends = Vec::new();
    for round in 0..4 {
        for (i, id) in named.iter().enumerate() {
            let key = if i.is_multiple_of(2) { "key-1" } else { "key-2" };
            let body = format!("named {i}");
            let request = as_thing(host, key, "/messages").header(MESSAGE_ID, id).body(body);
            sends.push((Some(id.clone()), round, send(request)));
        }
    }
    for i in 0..160usize {
        let key = if i.is_multiple_of(2) { "key-1" } else { "key-2" };
        sends.push((
            None,
            0,
            send(as_thing(host, key, "/messages").body(format!("unnamed {i}"))),
        ));
    }
    let (labels, requests): (Vec<_>, Vec<_>) = sends.into_iter().map(|(id, round, r)| ((id, round), r)).unzip();
    let answers = futures_util::future::join_all(requests).await;
    for ((id, round), answer) in labels.into_iter().zip(answers) {
        let answer = answer?;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{id:?} round {round}: {answer:?}");
        if let Some(id) = id {
            assert_eq!(answer.message_id.as_deref(), Some(id.as_str()));
        }
    }
    let got = receiver.wait_for(None, 180, 4 * PROMPTLY).await?;
    let mut seen: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    seen.sort();
    let mut expected: Vec<String> = (0..20)
        .map(|i| format!("named {i}"))
        .chain((0..160).map(|i| format!("unnamed {i}")))
        .collect();
    expected.sort();
    assert_eq!(seen, expected, "every message once");
    for request in &got {
        let body = String::from_utf8_lossy(&request.body);
        let number: usize = body.rsplit(' ').next().unwrap_or_default().parse()?;
        let to = if number.is_multiple_of(2) { "/one" } else { "/two" };
        assert_eq!(request.path, to, "{body} goes to its own thing's webhook");
    }
    let metrics = reqwest::get(host.url("/metrics")).await?.text().await?;
    let batched = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("webhooks_plugin_call_duration_seconds_count{export=\"intake.on-messages\"} ")
        })
        .map_or(Ok(0.0), |count| count.trim().parse::<f64>())?;
    Ok(batched)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_together_are_taken_in_together_and_each_delivered_once() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_allowing_loopback().await?;
    add_webhook(&host, THING_1, "in", &receiver.url("/one")).await?;
    add_webhook(&host, THING_2, "in", &receiver.url("/two")).await?;
    let batched = publish_together_and_count_once(&host, &receiver).await?;
    assert!(batched >= 1.0, "no intake call took several messages");
    receiver.exactly_after_a_while("/one", 90).await?;
    receiver.exactly_after_a_while("/two", 90).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_without_batched_intake_takes_messages_published_together_one_by_one() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let plugin = webhooks_tests::plugin_variant("previous");
    let plugin = plugin.to_str().context("a UTF-8 path")?;
    let host = host_retrying_on(SHORT_SCHEDULE, &[("MF_WEBHOOKS_PLUGIN", plugin)]).await?;
    add_webhook(&host, THING_1, "in", &receiver.url("/one")).await?;
    add_webhook(&host, THING_2, "in", &receiver.url("/two")).await?;
    publish_together_and_count_once(&host, &receiver).await?;
    receiver.exactly_after_a_while("/one", 90).await?;
    let (status, health) = host.call(Method::GET, "/health", "", None).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(
        health["plugin"]["world"]
            .as_str()
            .is_some_and(|w| w.ends_with("without migration")),
        "{health}"
    );
    Ok(())
}

// --- 9. registry removal ------------------------------------------------------------------

/// The `(thing_id, name)` of every webhook of `GROUP_1`, sorted.
async fn webhooks_of_group_1(host: &TestHost) -> anyhow::Result<Vec<(String, String)>> {
    let (status, page) = host
        .call(
            Method::GET,
            &format!("/groups/{GROUP_1}/webhooks?limit=200"),
            ADMIN,
            None,
        )
        .await?;
    ensure!(status == StatusCode::OK, "{status}: {page}");
    let mut found: Vec<(String, String)> = page["webhooks"]
        .as_array()
        .context("a page has a webhooks array")?
        .iter()
        .map(|w| {
            (
                w["thing_id"].as_str().unwrap().to_owned(),
                w["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    Ok(found)
}

#[tokio::test]
async fn a_thing_removed_from_the_registry_loses_its_webhooks() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    add_webhook(&host, THING_1, "stays", "http://stays.example/in").await?;
    add_webhook(&host, THING_2, "goes", "http://goes.example/in").await?;
    assert_eq!(
        webhooks_of_group_1(&host).await?,
        [
            (THING_1.to_owned(), "stays".to_owned()),
            (THING_2.to_owned(), "goes".to_owned())
        ]
    );

    let mut without_thing_2 = standard_registry();
    without_thing_2["things"]
        .as_array_mut()
        .unwrap()
        .retain(|thing| thing["id"] != THING_2);
    host.replace_registry(&without_thing_2)?;
    eventually(LOG_BOUND, || async {
        let found = webhooks_of_group_1(&host).await?;
        ensure!(
            found == [(THING_1.to_owned(), "stays".to_owned())],
            "group 1 still lists {found:?}"
        );
        Ok(())
    })
    .await?;
    let answer = send(as_thing(&host, "key-2", "/messages").body("gone")).await?;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");

    // Removed, not hidden: the thing coming back does not bring its webhooks back.
    host.replace_registry(&standard_registry())?;
    eventually(LOG_BOUND, || async {
        let (status, page) = host
            .call(Method::GET, &format!("/things/{THING_2}/webhooks"), ADMIN, None)
            .await?;
        ensure!(status == StatusCode::OK, "{status}: {page}");
        ensure!(page["total"] == 0, "{page}");
        Ok(())
    })
    .await?;
    assert_eq!(
        webhooks_of_group_1(&host).await?,
        [(THING_1.to_owned(), "stays".to_owned())]
    );
    Ok(())
}

// --- 10. pending deliveries across restarts -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_still_being_retried_is_resumed_after_a_restart() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    receiver.set_behaviour("/in", Behaviour::status(503));
    let mut host = host_allowing_loopback().await?;
    add_webhook(&host, THING_1, "in", &receiver.url("/in")).await?;

    accepted(
        send(
            as_thing(&host, "key-1", "/messages")
                .header(CONTENT_TYPE, "text/plain; charset=utf-8")
                .body("survives a restart"),
        )
        .await?,
    )?;
    receiver.wait_for(Some("/in"), 1, PROMPTLY).await?;
    assert_eq!(host.stop()?, Some(0));
    let before_restart = receiver.received_on("/in").len();
    receiver.set_behaviour("/in", Behaviour::default());
    host.start_again().await?;

    let got = receiver
        .wait_for(Some("/in"), before_restart + 1, Duration::from_secs(10))
        .await?;
    let resumed = &got[before_restart];
    assert_eq!(resumed.body, "survives a restart");
    assert_eq!(resumed.header("content-type"), Some("text/plain; charset=utf-8"));
    // Delivered is final.
    receiver.exactly_after_a_while("/in", before_restart + 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_for_a_receiver_that_is_down_arrives_once_it_is_up_even_across_a_restart() -> anyhow::Result<()> {
    let mut host = host_allowing_loopback().await?;
    // A port where nothing listens, until the receiver starts on it.
    let port = {
        let placeholder = Receiver::start().await?;
        placeholder.addr.port()
    };
    add_webhook(&host, THING_1, "down", &format!("http://127.0.0.1:{port}/in")).await?;

    publish(&host, "key-1", "waits for the receiver").await?;
    host.restart().await?;
    let receiver = Receiver::start_on(port).await?;
    let up = Instant::now();

    let got = receiver.wait_for(Some("/in"), 1, Duration::from_secs(10)).await?;
    assert_eq!(got[0].body, "waits for the receiver");
    assert_eq!(got[0].method, "POST");
    eprintln!("arrived {:?} after the receiver came up", got[0].at.duration_since(up));
    receiver.exactly_after_a_while("/in", 1).await?;
    Ok(())
}

// --- 11. retries --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_503_twice_gets_the_message_on_the_third_attempt() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    receiver.set_behaviour("/flaky", Behaviour::status(503));
    let host = host_allowing_loopback().await?;
    add_webhook(&host, THING_1, "flaky", &receiver.url("/flaky")).await?;

    accepted(
        send(
            as_thing(&host, "key-1", "/messages")
                .header(CONTENT_TYPE, "application/senml+json")
                .body(b"[{\"v\":1}]".to_vec()),
        )
        .await?,
    )?;
    receiver.wait_for(Some("/flaky"), 2, PROMPTLY).await?;
    receiver.set_behaviour("/flaky", Behaviour::default());
    let got = receiver.wait_for(Some("/flaky"), 3, Duration::from_secs(10)).await?;
    for attempt in &got {
        assert_eq!(attempt.body, b"[{\"v\":1}]"[..], "{:?}", summary(&got));
        assert_eq!(attempt.header_values("content-type"), ["application/senml+json"]);
        assert_eq!(attempt.path, "/flaky");
    }
    receiver.exactly_after_a_while("/flaky", 3).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_404_or_another_final_status_gets_exactly_one_attempt() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = host_allowing_loopback().await?;
    let finals = [("/missing", 404), ("/bad", 400), ("/moved", 302)];
    for (path, status) in finals {
        receiver.set_behaviour(path, Behaviour::status(status));
        add_webhook(&host, THING_1, &format!("answers {status}"), &receiver.url(path)).await?;
    }

    publish(&host, "key-1", "not retried").await?;
    for (path, _) in finals {
        receiver.wait_for(Some(path), 1, PROMPTLY).await?;
    }
    // The first retry would come after 1 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (path, status) in finals {
        let got = receiver.received_on(path);
        assert_eq!(got.len(), 1, "{status}: {:?}", summary(&got));
        assert_eq!(got[0].body, "not retried");
    }
    Ok(())
}

// --- 8. failures a retry cannot change ----------------------------------------------------

/// The attempts of a webhook's only delivery, once it has failed.
async fn failed_attempts(host: &TestHost, webhook: &str) -> anyhow::Result<Vec<Value>> {
    let delivery = the_only_delivery(host, webhook, "failed", LOG_BOUND).await?;
    Ok(attempts(&delivery)?.clone())
}

/// A refused destination's attempt says which address, what kind it is and which variable
/// allows it, for an address and for a name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_destination_names_the_address_its_kind_and_the_variable_that_allows_it() -> anyhow::Result<()> {
    let (host, receiver, [by_address, by_name]) = loopback_webhooks(&[]).await?;
    publish(&host, "key-1", "must not leave").await?;
    let allow = "; set MF_WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS=true to allow it";

    let attempts = failed_attempts(&host, &by_address).await?;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(
        attempts[0]["error"],
        format!("destination refused: 127.0.0.1 is a loopback address{allow}")
    );
    let attempts = failed_attempts(&host, &by_name).await?;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let error = attempts[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("destination refused: localhost resolves to "),
        "{error}"
    );
    assert!(error.contains("a loopback address"), "{error}");
    assert!(error.ends_with(allow), "{error}");
    assert_eq!(receiver.count(), 0);
    Ok(())
}

/// A webhook that an earlier version stored with a header no request can carry (creation now
/// refuses it): each delivery fails at its first attempt with the reason, and is never retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_be_built_fails_at_once_with_its_reason_and_is_not_retried() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let mut host = host_allowing_loopback().await?;
    let id = add_webhook_with(
        &host,
        THING_1,
        json!({"name": "legacy", "url": receiver.url("/legacy"), "headers": {"X-Legacy-Hop": "close"}}),
    )
    .await?;
    host.stop()?;
    let changed =
        webhooks_tests::stored::replace_in_values(&host.db_url, b"\"X-Legacy-Hop\"", b"\"Connection\"").await?;
    ensure!(changed >= 1, "no stored value named the header");
    host.start_again().await?;

    publish(&host, "key-1", "never sent").await?;
    let attempts = failed_attempts(&host, &id).await?;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let error = attempts[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("Connection"),
        "the reason does not name the header: {error}"
    );
    // Past the first retry's delay (1 s ± 20 %): still one attempt, nothing sent.
    tokio::time::sleep(QUIET).await;
    assert_eq!(failed_attempts(&host, &id).await?.len(), 1);
    assert_eq!(receiver.count(), 0);
    Ok(())
}
