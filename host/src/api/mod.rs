//! The REST layer: one module per API area, each exposing its `router()`; this module only
//! mounts them, at the root and under `/svcwebhooks`, with the JSON 404 and 405 answers.

pub mod admin;
pub mod deliveries;
pub mod error;
pub mod health;
pub mod messages;
pub mod metrics;
pub mod openapi;
pub mod request;
pub mod routes;
pub mod webhooks;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use tracing::Instrument;

use crate::dispatch::Dispatcher;
use crate::identity::IdentityBackend;
use crate::ingress::Intake;
use crate::runtime::Runtime;
use error::ApiError;
pub use health::BuildInfo;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The plugin runtime.
    pub runtime: Arc<Runtime>,
    /// The build's identity, for `/health`.
    pub build: Arc<BuildInfo>,
    /// Who devices are, for the publish endpoint.
    pub identity: Arc<dyn IdentityBackend>,
    /// Where accepted messages' deliveries go.
    pub dispatcher: Arc<Dispatcher>,
    /// Where published messages are taken in.
    pub intake: Arc<Intake>,
    /// The token of the admin endpoints; `None` turns them off.
    pub admin_token: Option<Arc<str>>,
}

/// The prefix under which the platform's gateway serves this API.
pub const GATEWAY_PREFIX: &str = "/svcwebhooks";

/// Every route of the API, at the root.
pub fn routes() -> routes::Routes {
    routes::Routes::new()
        .merge(webhooks::routes())
        .merge(deliveries::routes())
        .merge(messages::routes())
        .merge(health::routes())
        .merge(admin::routes())
        .merge(metrics::routes())
        .merge(openapi::routes())
}

/// The whole REST API.
pub fn router(state: AppState) -> Router {
    let api = routes().into_router().method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .merge(api.clone())
        .nest(GATEWAY_PREFIX, api)
        .fallback(not_found)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
}

/// One log line per request: method, path (never the query, which may carry filters), status
/// and duration. Headers are never logged: they carry tokens and keys.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // The route's template, not the path: ids would make one time series per webhook.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |matched| matched.as_str().to_owned());
    let span = tracing::debug_span!(
        target: crate::telemetry::SPANS,
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    crate::telemetry::continue_from(&span, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    tracing::info!(%method, path, status, micros = elapsed.as_micros() as u64, "request");
    let metrics = &crate::metrics::METRICS;
    metrics
        .requests
        .with_label_values(&[method.as_str(), &route, &status.to_string()])
        .inc();
    metrics
        .request_duration
        .with_label_values(&[method.as_str(), &route])
        .observe(elapsed.as_secs_f64());
    response
}
