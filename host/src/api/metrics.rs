//! `GET /metrics`: the service's metrics in Prometheus' text format.

use axum::http::header;
use axum::response::IntoResponse;

use super::routes::Routes;
use crate::metrics::METRICS;

/// The routes of this area.
pub fn routes() -> Routes {
    Routes::new().get("/metrics", metrics)
}

async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], METRICS.render())
}
