//! The webhook endpoints: each handler extracts the request's parts and makes one typed call
//! into the plugin.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::request::{Bearer, JsonBody, OptionalJsonBody, PathParams, QueryPairs, WasmBody};
use super::routes::Routes;
use crate::runtime::bindings::exports::mainflux::webhooks::transform_api::Trial;

/// The routes of this area.
pub fn routes() -> Routes {
    Routes::new()
        .post("/things/{thing_id}/webhooks", create)
        .get("/things/{thing_id}/webhooks", list_by_thing)
        .post("/things/{thing_id}/webhooks/search", search_by_thing)
        .get("/groups/{group_id}/webhooks", list_by_group)
        .post("/groups/{group_id}/webhooks/search", search_by_group)
        .delete("/webhooks", remove)
        .patch("/webhooks", remove)
        .get("/webhooks/{id}", view)
        .put("/webhooks/{id}", update)
        .put("/webhooks/{id}/transform", attach_transform)
        .delete("/webhooks/{id}/transform", detach_transform)
        .post("/webhooks/{id}/transform/test", try_transform)
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn create(
    State(app): State<AppState>,
    PathParams(thing_id): PathParams<String>,
    Bearer(token): Bearer,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let created = app.runtime.api().create_webhooks(token, thing_id, body).await?;
    Ok(json(StatusCode::CREATED, created))
}

async fn list_by_thing(
    State(app): State<AppState>,
    PathParams(thing_id): PathParams<String>,
    Bearer(token): Bearer,
    QueryPairs(query): QueryPairs,
) -> Result<Response, ApiError> {
    let page = app.runtime.api().list_thing_webhooks(token, thing_id, query).await?;
    Ok(json(StatusCode::OK, page))
}

async fn list_by_group(
    State(app): State<AppState>,
    PathParams(group_id): PathParams<String>,
    Bearer(token): Bearer,
    QueryPairs(query): QueryPairs,
) -> Result<Response, ApiError> {
    let page = app.runtime.api().list_group_webhooks(token, group_id, query).await?;
    Ok(json(StatusCode::OK, page))
}

async fn search_by_thing(
    State(app): State<AppState>,
    PathParams(thing_id): PathParams<String>,
    Bearer(token): Bearer,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Response, ApiError> {
    let page = app.runtime.api().search_thing_webhooks(token, thing_id, body).await?;
    Ok(json(StatusCode::OK, page))
}

async fn search_by_group(
    State(app): State<AppState>,
    PathParams(group_id): PathParams<String>,
    Bearer(token): Bearer,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Response, ApiError> {
    let page = app.runtime.api().search_group_webhooks(token, group_id, body).await?;
    Ok(json(StatusCode::OK, page))
}

async fn view(
    State(app): State<AppState>,
    PathParams(id): PathParams<String>,
    Bearer(token): Bearer,
) -> Result<Response, ApiError> {
    let webhook = app.runtime.api().view_webhook(token, id).await?;
    Ok(json(StatusCode::OK, webhook))
}

async fn update(
    State(app): State<AppState>,
    PathParams(id): PathParams<String>,
    Bearer(token): Bearer,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    app.runtime.api().update_webhook(token, id, body).await?;
    Ok(StatusCode::OK.into_response())
}

async fn remove(
    State(app): State<AppState>,
    Bearer(token): Bearer,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    app.runtime.api().remove_webhooks(token, body).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn attach_transform(
    State(app): State<AppState>,
    PathParams(id): PathParams<String>,
    Bearer(token): Bearer,
    WasmBody(component): WasmBody,
) -> Result<Response, ApiError> {
    let attached = app.runtime.transforms().attach(token, id, component).await?;
    Ok(json(StatusCode::OK, attached))
}

async fn detach_transform(
    State(app): State<AppState>,
    PathParams(id): PathParams<String>,
    Bearer(token): Bearer,
) -> Result<Response, ApiError> {
    app.runtime.transforms().detach(token, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn try_transform(
    State(app): State<AppState>,
    PathParams(id): PathParams<String>,
    Bearer(token): Bearer,
    JsonBody(sample): JsonBody,
) -> Result<Response, ApiError> {
    match app.runtime.transforms().try_sample(token, id, sample).await? {
        Trial::Answered(action) => Ok(json(StatusCode::OK, action)),
        // The transform, not the request, failed: the sample was understood.
        Trial::Failed(reason) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason)),
    }
}
