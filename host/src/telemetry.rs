//! Traces over OTLP (SPEC.md section 9): spans for each REST request, each message taken in,
//! each delivery attempt and each plugin call, exported over OTLP/HTTP (protobuf) to
//! `MF_JAEGER_URL` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`; deliveries carry the W3C
//! `traceparent` of their attempt's span.
//!
//! The spans are `tracing` spans at debug level under the target [`SPANS`]: the log's own
//! filter leaves them out at `info`, so the log reads as before and, with no endpoint, they
//! cost nothing; the OpenTelemetry layer takes them whatever the log level.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span exported as a trace.
pub const SPANS: &str = "webhooks_host::trace";

/// Where traces go, from `MF_JAEGER_URL`, else `OTEL_EXPORTER_OTLP_ENDPOINT`: an `http` or
/// `https` URL, to which `/v1/traces` is added when it has no path. `None` with a reason when a
/// value is set but is not such a URL (the Go service's `MF_JAEGER_URL` names a Jaeger agent,
/// `HOST:6831`, which speaks another protocol).
pub fn endpoint(jaeger_url: Option<&str>, otlp_endpoint: Option<&str>) -> Result<Option<String>, String> {
    let (variable, url) = match (
        jaeger_url.filter(|url| !url.is_empty()),
        otlp_endpoint.filter(|url| !url.is_empty()),
    ) {
        (Some(url), _) => ("MF_JAEGER_URL", url),
        (None, Some(url)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", url),
        (None, None) => return Ok(None),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{variable}: {url:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!(
            "{variable}: {url:?} is not an OTLP/HTTP endpoint such as http://jaeger:4318; no traces are exported"
        ));
    }
    Ok(Some(if matches!(uri.path(), "" | "/") {
        format!("{}/v1/traces", url.trim_end_matches('/'))
    } else {
        url.to_owned()
    }))
}

/// The exporting side of tracing: keeps the provider so that spans still buffered are sent
/// when the service stops.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Starts exporting to `endpoint` in batches, from a thread of the SDK's; answers the
    /// `tracing` layer that feeds it.
    pub fn start<S>(endpoint: &str) -> Result<(Self, impl tracing_subscriber::Layer<S>), String>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(std::time::Duration::from_secs(10))
            .with_headers(Default::default())
            .build()
            .map_err(|e| format!("cannot export traces to {endpoint}: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("webhooks")
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("webhooks-host"));
        Ok((Exporter { provider }, layer))
    }

    /// Sends what is buffered and stops.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("webhooks-host: traces not all exported at shutdown: {error}");
        }
    }
}

/// Sets the W3C `traceparent` (and `tracestate`) of `span` on an outgoing request's headers,
/// when the span is exported; otherwise leaves them alone.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let context = span.context();
    use opentelemetry::trace::TraceContextExt;
    if !context.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// Makes `span` a child of the trace a request's `traceparent` names, if it names one.
pub fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_comes_from_the_jaeger_url_first_and_gets_the_traces_path() {
        assert_eq!(endpoint(None, None), Ok(None));
        assert_eq!(
            endpoint(Some("http://jaeger:4318"), Some("http://other:4318")),
            Ok(Some("http://jaeger:4318/v1/traces".to_owned()))
        );
        assert_eq!(
            endpoint(Some(""), Some("https://collector.example/")),
            Ok(Some("https://collector.example/v1/traces".to_owned()))
        );
        assert_eq!(
            endpoint(None, Some("http://c:4318/custom/traces")),
            Ok(Some("http://c:4318/custom/traces".to_owned()))
        );
        let agent = endpoint(Some("localhost:6831"), None).unwrap_err();
        assert!(agent.starts_with("MF_JAEGER_URL:"), "{agent}");
    }
}
