//! A real OTLP/HTTP trace receiver on a loopback port: it answers `POST /v1/traces` as a
//! collector does and keeps every span it is sent, decoded with the OpenTelemetry protocol's
//! own messages.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio::net::TcpListener;

use crate::eventually;

/// One span as received, ids in lowercase hex as `traceparent` writes them.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The span's name.
    pub name: String,
    /// Its trace, 32 hex digits.
    pub trace_id: String,
    /// Itself, 16 hex digits.
    pub span_id: String,
    /// Its parent, 16 hex digits; empty for a root.
    pub parent_span_id: String,
    /// `SPAN_KIND_SERVER` is 2, `SPAN_KIND_CLIENT` 3, internal 1.
    pub kind: i32,
    /// Its string and integer attributes, as text.
    pub attributes: Vec<(String, String)>,
    /// The `service.name` of the resource that sent it.
    pub service: String,
}

impl ReceivedSpan {
    /// The value of an attribute, as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let shared = spans.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let spans = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| export(spans.clone(), request));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(OtlpReceiver { addr, spans, task })
    }

    /// The base URL to configure as the endpoint (no path: the exporter adds `/v1/traces`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans poisoned").clone()
    }

    /// Waits until a span satisfying `wanted` has arrived; answers it.
    pub async fn wait_for(&self, within: Duration, wanted: impl Fn(&ReceivedSpan) -> bool) -> Result<ReceivedSpan> {
        let mut found = None;
        eventually(within, || {
            found = self.spans().into_iter().find(|span| wanted(span));
            let result = match &found {
                Some(_) => Ok(()),
                None => Err(anyhow::anyhow!(
                    "no such span among {:?}",
                    self.spans().iter().map(|s| s.name.clone()).collect::<Vec<_>>()
                )),
            };
            async move { result }
        })
        .await?;
        Ok(found.expect("found"))
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn export(
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if request.method() != hyper::Method::POST || request.uri().path() != "/v1/traces" {
        return Ok(status(StatusCode::NOT_FOUND));
    }
    let body = request.into_body().collect().await?.to_bytes();
    let Ok(export) = ExportTraceServiceRequest::decode(body) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let mut received = spans.lock().expect("spans poisoned");
    for resource in export.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref().and_then(|v| v.value.as_ref()).map(text))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                received.push(ReceivedSpan {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?))))
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    Ok(Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(answer)))
        .expect("a valid response"))
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .body(Full::new(Bytes::new()))
        .expect("a valid response")
}

fn text(value: &Value) -> String {
    match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
