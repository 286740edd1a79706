//! Outgoing HTTP for the plugin's `wasi:http` requests: one pooled client shared by every
//! call, with connect and total timeouts and the SSRF guard. Nothing else in the host decides
//! where a delivery may go.

pub mod guard;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tracing::Instrument;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks, WasiHttpView};

use guard::{GuardedResolver, Refused, refusal, refused_class};

/// The most of a receiver's answer body that is read; the rest is dropped.
const MAX_RESPONSE_BODY: usize = 64 << 10;

/// Default of [`OutboundConfig::in_flight_per_destination`].
pub const IN_FLIGHT_PER_DESTINATION: usize = 128;

/// Destinations remembered before idle ones are forgotten.
const DESTINATIONS_KEPT: usize = 4096;

/// Adds outgoing HTTP only, `wasi:http`'s `types` and `outgoing-handler`, to `linker`: every
/// request goes through the hooks the call's [`WasiHttpView`] names ([`OutboundHooks`]).
pub fn add_to_linker<T: WasiHttpView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

/// How deliveries reach receivers.
#[derive(Debug, Clone, Copy)]
pub struct OutboundConfig {
    /// Let webhooks target loopback, private, link-local and unspecified addresses.
    pub allow_private: bool,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest wait for the whole request, answer body included, from the moment it may go
    /// out.
    pub request_timeout: Duration,
    /// Most requests in flight toward one destination (scheme, host and port) at once; as many
    /// idle connections to it are kept for reuse. Requests beyond it wait their turn, within
    /// their timeout, so a burst toward one receiver reuses connections instead of opening one
    /// per request.
    pub in_flight_per_destination: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            allow_private: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            in_flight_per_destination: IN_FLIGHT_PER_DESTINATION,
        }
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>;

/// The shared, pooled HTTP client of every delivery.
pub struct OutboundClient {
    client: Client<Connector, Full<Bytes>>,
    config: OutboundConfig,
    /// The in-flight bound of each destination.
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl OutboundClient {
    /// A client with its own connection pool.
    pub fn new(config: OutboundConfig) -> Result<Arc<Self>, rustls::Error> {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver {
            allow_private: config.allow_private,
        });
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.in_flight_per_destination)
            .build(connector);
        Ok(Arc::new(OutboundClient {
            client,
            config,
            destinations: Mutex::new(HashMap::new()),
        }))
    }

    /// Sends one request: checks a literal destination address, sends through the pool, and
    /// reads the answer within the total timeout.
    pub async fn send(&self, request: http::Request<WasiBody>) -> Result<http::Response<WasiBody>, HttpError> {
        if !self.config.allow_private
            && let Some(ip) = literal_ip(request.uri())
            && let Some(class) = refused_class(ip)
        {
            return Err(refused(&Refused::address(ip, class)));
        }
        let timeout = self.config.request_timeout;
        let started = std::time::Instant::now();
        let bound = self.bound_of(request.uri());
        let exchange = async {
            // Waiting for a turn counts against the timeout: a receiver that cannot keep up
            // with its share times out as a slow one does.
            let _turn = bound.acquire_owned().await.map_err(|_| HttpError::ConnectionTimeout)?;
            self.exchange(request).await
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::HttpResponseTimeout),
        };
        crate::metrics::METRICS
            .delivery_latency
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// The in-flight bound of the request's destination.
    fn bound_of(&self, uri: &http::Uri) -> Arc<Semaphore> {
        let destination = format!(
            "{}://{}:{}",
            uri.scheme_str().unwrap_or("http"),
            uri.host().unwrap_or_default(),
            uri.port_u16()
                .unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 })
        );
        let mut destinations = self.destinations.lock().expect("destinations poisoned");
        if let Some(bound) = destinations.get(&destination) {
            return bound.clone();
        }
        if destinations.len() >= DESTINATIONS_KEPT {
            let whole = self.config.in_flight_per_destination;
            destinations.retain(|_, bound| bound.available_permits() < whole);
        }
        let bound = Arc::new(Semaphore::new(self.config.in_flight_per_destination));
        destinations.insert(destination, bound.clone());
        bound
    }

    async fn exchange(&self, request: http::Request<WasiBody>) -> Result<http::Response<WasiBody>, HttpError> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        let response = self
            .client
            .request(http::Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(|e| {
                if let Some(refusal) = refusal(&e) {
                    refused(refusal)
                } else if e.is_connect() {
                    connect_error(&e)
                } else {
                    tracing::debug!(error = %e, "delivery request failed");
                    HttpError::ConnectionTerminated
                }
            })?;
        // Read the answer here, within the timeout, so the connection goes back to the pool
        // whatever the plugin does with the body.
        let (parts, body) = response.into_parts();
        let body = match Limited::new(body, MAX_RESPONSE_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let body = Full::new(body).map_err(|never| match never {}).boxed_unsync();
        Ok(http::Response::from_parts(parts, body))
    }
}

/// A refusal as the plugin receives it: the reason travels as the error's text, which the
/// plugin records as the attempt's error (`wasi:http`'s `destination-ip-prohibited` carries
/// none).
fn refused(refusal: &Refused) -> HttpError {
    HttpError::InternalError(Some(refusal.to_string()))
}

fn literal_ip(uri: &http::Uri) -> Option<IpAddr> {
    let host = uri.host()?;
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

fn connect_error(error: &hyper_util::client::legacy::Error) -> HttpError {
    let text = format!("{error:?}").to_ascii_lowercase();
    if text.contains("timed out") || text.contains("timeout") {
        HttpError::ConnectionTimeout
    } else if text.contains("refused") {
        HttpError::ConnectionRefused
    } else if text.contains("dns") || text.contains("no address") || text.contains("failed to lookup") {
        HttpError::DestinationNotFound
    } else {
        HttpError::DestinationUnavailable
    }
}

/// A delivery URL fit for traces: scheme, host, port and path, without the query, which may
/// carry a receiver's token.
fn redacted_uri(uri: &http::Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority()
            .map(|a| a.as_str().rsplit('@').next().unwrap_or_default())
            .unwrap_or_default(),
        uri.path()
    )
}

/// The `wasi:http` hooks of one plugin call: every outgoing request goes through the shared
/// [`OutboundClient`].
pub struct OutboundHooks {
    /// `None` in a dry run, which never sends.
    client: Option<Arc<OutboundClient>>,
}

impl OutboundHooks {
    /// Hooks over the shared client.
    pub fn new(client: Arc<OutboundClient>) -> Self {
        OutboundHooks { client: Some(client) }
    }

    /// Hooks that deny every request: a dry run's.
    pub fn denying() -> Self {
        OutboundHooks { client: None }
    }
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        let Some(client) = self.client.clone() else {
            return Box::new(std::future::ready(Err(HttpError::HttpRequestDenied)));
        };
        // A child of the plugin call that asked for it; the receiver gets its traceparent.
        let span = tracing::debug_span!(
            target: crate::telemetry::SPANS,
            "delivery attempt",
            otel.name = format!("POST {}", request.uri().host().unwrap_or_default()),
            otel.kind = "client",
            url.full = %redacted_uri(request.uri()),
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let mut request = request;
        crate::telemetry::inject(&span, request.headers_mut());
        let attempt = span.clone();
        Box::new(
            async move {
                let outcome = client.send(request).await;
                match &outcome {
                    Ok(response) => {
                        attempt.record("http.response.status_code", response.status().as_u16());
                        if !response.status().is_success() {
                            attempt.record("otel.status_code", "error");
                        }
                    }
                    Err(_) => {
                        attempt.record("otel.status_code", "error");
                    }
                }
                let response = outcome?;
                let request_done: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(async { Ok(()) });
                Ok((response, request_done))
            }
            .instrument(span),
        )
    }
}
