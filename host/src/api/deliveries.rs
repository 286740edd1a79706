//! The delivery log endpoints: a webhook's deliveries with their attempts, and the manual
//! retry of a failed one.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::AppState;
use super::error::ApiError;
use super::request::{Bearer, PathParams, QueryPairs};

/// The routes of this area.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/{id}/deliveries", get(list))
        .route("/webhooks/{id}/deliveries/{delivery_id}/retry", post(retry))
}

async fn list(
    State(app): State<AppState>,
    PathParams(webhook_id): PathParams<String>,
    Bearer(token): Bearer,
    QueryPairs(query): QueryPairs,
) -> Result<Response, ApiError> {
    let page = app
        .runtime
        .call(move |plugin, store| {
            Box::pin(async move {
                plugin
                    .mainflux_webhooks_api()
                    .call_list_deliveries(store, &token, &webhook_id, &query)
                    .await
            })
        })
        .await??;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], page).into_response())
}

async fn retry(
    State(app): State<AppState>,
    PathParams((webhook_id, delivery_id)): PathParams<(String, String)>,
    Bearer(token): Bearer,
) -> Result<Response, ApiError> {
    let due = app
        .runtime
        .call(move |plugin, store| {
            Box::pin(async move {
                plugin
                    .mainflux_webhooks_api()
                    .call_retry_delivery(store, &token, &webhook_id, &delivery_id)
                    .await
            })
        })
        .await??;
    app.dispatcher.enqueue(vec![due]);
    Ok(StatusCode::ACCEPTED.into_response())
}
