//! The delivery log endpoints: a webhook's deliveries with their attempts, and the manual
//! retry of a failed one.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::request::{Bearer, PathParams, QueryPairs};
use super::routes::Routes;

/// The routes of this area.
pub fn routes() -> Routes {
    Routes::new()
        .get("/webhooks/{id}/deliveries", list)
        .post("/webhooks/{id}/deliveries/{delivery_id}/retry", retry)
}

async fn list(
    State(app): State<AppState>,
    PathParams(webhook_id): PathParams<String>,
    Bearer(token): Bearer,
    QueryPairs(query): QueryPairs,
) -> Result<Response, ApiError> {
    let page = app.runtime.api().list_deliveries(token, webhook_id, query).await?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], page).into_response())
}

async fn retry(
    State(app): State<AppState>,
    PathParams((webhook_id, delivery_id)): PathParams<(String, String)>,
    Bearer(token): Bearer,
) -> Result<Response, ApiError> {
    let due = app.runtime.api().retry_delivery(token, webhook_id, delivery_id).await?;
    app.dispatcher.enqueue(None, vec![due]);
    Ok(StatusCode::ACCEPTED.into_response())
}
