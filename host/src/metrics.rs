//! The service's Prometheus metrics, served by `GET /metrics` (SPEC.md section 9).
//!
//! One process-wide set, like the `prometheus` crate's default registry: the places that count
//! (REST layer, runtime, dispatcher, outbound client) reach it without threading a handle
//! through every constructor.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    /// REST requests answered, by method, route template and status.
    pub requests: IntCounterVec,
    /// REST request duration, by method and route template.
    pub request_duration: HistogramVec,
    /// Delivery attempts, by outcome (`delivered`, `skipped`, `retrying`, `failed`).
    pub deliveries: IntCounterVec,
    /// Time from sending a delivery request to the receiver's answer (or the error).
    pub delivery_latency: Histogram,
    /// Deliveries this host has queued or is attempting.
    pub pending_deliveries: IntGauge,
    /// Duration of calls into the plugin, by export.
    pub plugin_calls: HistogramVec,
    /// Plugin calls that failed without an answer, by export and kind (`trap`, `deadline`,
    /// `instantiate`).
    pub plugin_failures: IntCounterVec,
    /// Plugin swaps, by trigger (`admin`, `sighup`, `rollback`, `promote`) and result
    /// (`swapped`, `refused`).
    pub plugin_swaps: IntCounterVec,
    /// Canary versions dropped for failing more than the active one.
    pub plugin_canary_rollbacks: IntCounter,
    /// Dry-run calls, by result (`same`, `different`, `failed`).
    pub plugin_shadow_calls: IntCounterVec,
    /// Broker messages handled, by outcome (`acked`, `duplicate`, `terminated`, `retried`).
    pub broker_messages: IntCounterVec,
    /// Publishes refused by a group's quota, by quota (`publish_rate`, `pending`).
    pub quota_refusals: IntCounterVec,
    /// Deliveries queued or running, for the groups with the most (at most
    /// [`Metrics::TOP_GROUPS`], set at each scrape).
    pub group_pending: IntGaugeVec,
    /// Delivery batches running, for the same groups.
    pub group_batches: IntGaugeVec,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Buckets from 0.5 ms to 30 s, for calls and requests that are usually fast but may wait on
/// a receiver.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Groups shown by the per-group gauges: the label's cardinality stays bounded however many
    /// groups there are.
    pub const TOP_GROUPS: usize = 10;

    fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(SECONDS.to_vec());
            let metric = HistogramVec::new(opts, labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let requests = counter(
            "webhooks_http_requests_total",
            "REST requests answered, by method, route and status.",
            &["method", "route", "status"],
        );
        let request_duration = histogram(
            "webhooks_http_request_duration_seconds",
            "REST request duration, by method and route.",
            &["method", "route"],
        );
        let deliveries = counter(
            "webhooks_deliveries_total",
            "Delivery attempts, by outcome: delivered, skipped (the webhook's transform chose not to send), retrying (another attempt follows) or failed (no more attempts).",
            &["outcome"],
        );
        let delivery_latency = Histogram::with_opts(
            HistogramOpts::new(
                "webhooks_delivery_latency_seconds",
                "Time from sending a delivery request to the receiver's answer or the error.",
            )
            .buckets(SECONDS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(delivery_latency.clone()))
            .expect("unique metric");
        let pending_deliveries = IntGauge::new(
            "webhooks_pending_deliveries",
            "Deliveries this host has queued or is attempting now.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(pending_deliveries.clone()))
            .expect("unique metric");
        let plugin_calls = histogram(
            "webhooks_plugin_call_duration_seconds",
            "Duration of calls into the plugin (instantiation included), by export.",
            &["export"],
        );
        let plugin_failures = counter(
            "webhooks_plugin_call_failures_total",
            "Plugin calls that ended without an answer, by export and kind: trap, deadline or instantiate.",
            &["export", "kind"],
        );
        let plugin_swaps = counter(
            "webhooks_plugin_swaps_total",
            "Plugin swaps, by trigger (admin, sighup, rollback, promote) and result (swapped, refused).",
            &["trigger", "result"],
        );
        let plugin_canary_rollbacks = IntCounter::new(
            "webhooks_plugin_canary_rollbacks_total",
            "Canary plugin versions dropped because they failed more than the active one.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(plugin_canary_rollbacks.clone()))
            .expect("unique metric");
        let plugin_shadow_calls = counter(
            "webhooks_plugin_shadow_calls_total",
            "Calls of a dry-run plugin version, by result: same answer as the active one, different, or failed.",
            &["result"],
        );
        for result in ["same", "different", "failed"] {
            plugin_shadow_calls.with_label_values(&[result]);
        }
        let broker_messages = counter(
            "webhooks_broker_messages_total",
            "Broker messages handled, by outcome: acked (deliveries recorded), duplicate (seen before, acked), terminated (malformed or refused, never redelivered) or retried (handed back for redelivery).",
            &["outcome"],
        );
        for outcome in ["acked", "duplicate", "terminated", "retried"] {
            broker_messages.with_label_values(&[outcome]);
        }
        let quota_refusals = counter(
            "webhooks_quota_refusals_total",
            "Publishes refused with 429 (or handed back to the broker) by a group's quota, by quota: publish_rate or pending.",
            &["quota"],
        );
        for quota in ["publish_rate", "pending"] {
            quota_refusals.with_label_values(&[quota]);
        }
        let gauge = |name: &str, help: &str| {
            let metric = IntGaugeVec::new(Opts::new(name, help), &["group"]).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let group_pending = gauge(
            "webhooks_group_pending_deliveries",
            "Deliveries this host has queued or is attempting, for the ten groups with the most.",
        );
        let group_batches = gauge(
            "webhooks_group_delivery_batches",
            "Delivery batches running, for the ten groups with the most deliveries queued or running.",
        );
        // Every known series from the start, so a dashboard shows zeros rather than gaps.
        for outcome in ["delivered", "skipped", "retrying", "failed"] {
            deliveries.with_label_values(&[outcome]);
        }
        for trigger in ["admin", "sighup"] {
            for result in ["swapped", "refused"] {
                plugin_swaps.with_label_values(&[trigger, result]);
            }
        }
        Metrics {
            registry,
            requests,
            request_duration,
            deliveries,
            delivery_latency,
            pending_deliveries,
            plugin_calls,
            plugin_failures,
            plugin_swaps,
            plugin_canary_rollbacks,
            plugin_shadow_calls,
            broker_messages,
            quota_refusals,
            group_pending,
            group_batches,
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        METRICS.requests.with_label_values(&["GET", "/health", "200"]).inc();
        METRICS
            .plugin_calls
            .with_label_values(&["api.view-webhook"])
            .observe(0.001);
        METRICS.delivery_latency.observe(0.01);
        let text = METRICS.render();
        assert!(text.contains(r#"webhooks_http_requests_total{method="GET",route="/health",status="200"} 1"#));
        assert!(text.contains("# TYPE webhooks_plugin_call_duration_seconds histogram"));
        assert!(text.contains("webhooks_delivery_latency_seconds_count 1"));
        assert!(text.contains("# TYPE webhooks_pending_deliveries gauge"));
    }
}
