//! Traces (SPEC.md section 9): OpenTelemetry spans over OTLP for each REST request, each message
//! taken in and each delivery attempt, with the plugin call as a child span, received by a real
//! OTLP/HTTP collector on loopback; deliveries carry the W3C `traceparent` of their attempt.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::StatusCode;
use webhooks_tests::flows::{ALLOW_PRIVATE, add_webhook, as_thing, publish};
use webhooks_tests::otlp::OtlpReceiver;
use webhooks_tests::receiver::Receiver;
use webhooks_tests::{THING_1, TestHost, standard_registry};

/// How long spans may take to reach the collector: the batch goes out every 200 ms here.
const EXPORTED: Duration = Duration::from_secs(15);
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// A publish that carries its caller's `traceparent` continues that trace through the request,
/// the message taken in and its plugin call; the delivery's own trace runs from the batch
/// through the plugin's `deliver` call to the attempt, whose span id is the receiver's
/// `traceparent`; a REST call has its plugin call as a child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_messages_and_attempts_are_exported_as_spans_and_deliveries_carry_their_traceparent() -> Result<()> {
    let collector = OtlpReceiver::start().await?;
    let receiver = Receiver::start().await?;
    let endpoint = collector.url();
    let host = TestHost::start_with(
        standard_registry(),
        &[
            ALLOW_PRIVATE,
            ("MF_JAEGER_URL", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    )
    .await?;
    add_webhook(&host, THING_1, "traced", &receiver.url("/traced")).await?;

    let upstream_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let upstream_span = "00f067aa0ba902b7";
    let published = as_thing(&host, "key-1", "/messages")
        .header("traceparent", format!("00-{upstream_trace}-{upstream_span}-01"))
        .body(r#"{"t": 1}"#)
        .send()
        .await?;
    assert_eq!(published.status(), StatusCode::ACCEPTED);
    let delivered = receiver.wait_for_arrivals(1, Duration::from_secs(10)).await?;
    let traceparent = delivered[0]
        .header("traceparent")
        .context("a traceparent on the delivery")?;
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len()),
        ("00", 32, 16),
        "{traceparent}"
    );
    let (delivery_trace, attempt_id) = (parts[1].to_owned(), parts[2].to_owned());

    let attempt = collector.wait_for(EXPORTED, |s| s.span_id == attempt_id).await?;
    assert_eq!(attempt.trace_id, delivery_trace);
    assert_eq!(attempt.kind, CLIENT);
    assert_eq!(attempt.name, "POST 127.0.0.1");
    assert_eq!(attempt.attribute("http.response.status_code"), Some("200"));
    assert_eq!(attempt.service, "webhooks");
    let deliver = collector
        .wait_for(EXPORTED, |s| s.span_id == attempt.parent_span_id)
        .await?;
    assert_eq!(
        deliver.name, "events.deliver",
        "the plugin call is the attempt's parent"
    );
    let batch = collector
        .wait_for(EXPORTED, |s| s.span_id == deliver.parent_span_id)
        .await?;
    assert_eq!(batch.name, "deliver");

    let request = collector
        .wait_for(EXPORTED, |s| {
            s.trace_id == upstream_trace && s.parent_span_id == upstream_span
        })
        .await?;
    assert_eq!(request.kind, SERVER);
    assert_eq!(request.name, "POST /messages");
    let message = collector
        .wait_for(EXPORTED, |s| s.parent_span_id == request.span_id)
        .await?;
    assert_eq!(message.name, "message taken in");
    assert_eq!(message.attribute("thing_id"), Some(THING_1));
    let on_message = collector
        .wait_for(EXPORTED, |s| s.parent_span_id == message.span_id)
        .await?;
    assert_eq!(on_message.name, "events.on-message");
    assert_eq!(on_message.trace_id, upstream_trace);

    let create = collector
        .wait_for(EXPORTED, |s| s.kind == SERVER && s.name.starts_with("POST /things/"))
        .await?;
    assert_eq!(
        create.parent_span_id, "",
        "a request without traceparent starts its own trace"
    );
    let call = collector
        .wait_for(EXPORTED, |s| s.parent_span_id == create.span_id)
        .await?;
    assert_eq!(call.name, "api.create-webhooks");
    Ok(())
}

/// Without an endpoint, or with the Go service's Jaeger agent address (not OTLP), the service
/// runs as usual and deliveries carry no `traceparent`; the second case is said in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_otlp_endpoint_nothing_is_traced_and_a_jaeger_agent_address_is_named_in_the_log() -> Result<()> {
    let receiver = Receiver::start().await?;
    for env in [
        vec![ALLOW_PRIVATE],
        vec![ALLOW_PRIVATE, ("MF_JAEGER_URL", "localhost:6831")],
    ] {
        let host = TestHost::start_with(standard_registry(), &env).await?;
        add_webhook(&host, THING_1, "plain", &receiver.url("/plain")).await?;
        let before = receiver.count();
        publish(&host, "key-1", "{}").await?;
        let arrived = receiver.wait_for_arrivals(before + 1, Duration::from_secs(10)).await?;
        assert_eq!(arrived[before].header("traceparent"), None, "{env:?}");
        if env.len() == 2 {
            host.logged(&["MF_JAEGER_URL", "not an OTLP/HTTP endpoint"], Duration::from_secs(2))
                .await?;
        }
    }
    Ok(())
}
