//! `GET /metrics`: the service's metrics in Prometheus' text format.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use super::routes::Routes;
use crate::dispatch::UNKNOWN_GROUP;
use crate::metrics::{METRICS, Metrics};

/// The routes of this area.
pub fn routes() -> Routes {
    Routes::new().get("/metrics", metrics)
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    // The busiest groups of this moment: a group that left the top loses its series.
    METRICS.group_pending.reset();
    METRICS.group_batches.reset();
    for (group, pending, batches) in app.dispatcher.busiest_groups(Metrics::TOP_GROUPS) {
        let label = if &*group == UNKNOWN_GROUP { "unknown" } else { &*group };
        METRICS.group_pending.with_label_values(&[label]).set(pending as i64);
        METRICS.group_batches.with_label_values(&[label]).set(batches as i64);
    }
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], METRICS.render())
}
