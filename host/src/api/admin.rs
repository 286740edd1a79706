//! The plugin's administration (SPEC.md section 8): `PUT /admin/plugin` replaces the webhook
//! logic without a restart, `GET /admin/plugin` shows the active version and the earlier ones,
//! `POST /admin/plugin/rollback` makes the previous one active again. Each needs the admin
//! token and does not exist without one.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use super::request::{Bearer, read_body_within};
use super::routes::Routes;
use crate::metrics::METRICS;
use crate::runtime::{Version, VersionSource};

/// The largest component accepted.
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;

/// The routes of this area.
pub fn routes() -> Routes {
    Routes::new()
        .put("/admin/plugin", swap_plugin)
        .get("/admin/plugin", plugin_versions)
        .post("/admin/plugin/rollback", roll_back)
}

/// Why an admin request is refused, if it is: the endpoints do not exist without a token.
fn admin_refusal(app: &AppState, token: &str) -> Option<ApiError> {
    match app.admin_token.as_deref() {
        None => Some(ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")),
        Some(expected) if !same_secret(token, expected) => Some(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer <MF_WEBHOOKS_ADMIN_TOKEN>)",
        )),
        Some(_) => None,
    }
}

/// A version as `GET /admin/plugin` shows it.
fn version_view(version: &Version) -> serde_json::Value {
    serde_json::json!({
        "sha256": version.plugin.sha256,
        "world": version.plugin.world(),
        "loaded_at": humantime::format_rfc3339_seconds(version.plugin.loaded_at).to_string(),
        "activated_at": humantime::format_rfc3339_seconds(version.activated_at).to_string(),
        "source": version.source.name(),
    })
}

fn json(body: serde_json::Value) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], body.to_string())
}

async fn plugin_versions(State(app): State<AppState>, Bearer(token): Bearer) -> Result<impl IntoResponse, ApiError> {
    if let Some(refusal) = admin_refusal(&app, &token) {
        return Err(refusal);
    }
    let (active, history) = app.runtime.versions();
    Ok(json(serde_json::json!({
        "active": version_view(&active),
        "candidate": null,
        "history": history.iter().map(version_view).collect::<Vec<_>>(),
    })))
}

async fn roll_back(State(app): State<AppState>, Bearer(token): Bearer) -> Result<impl IntoResponse, ApiError> {
    if let Some(refusal) = admin_refusal(&app, &token) {
        return Err(refusal);
    }
    let Some(active) = app.runtime.rollback().await else {
        METRICS.plugin_swaps.with_label_values(&["rollback", "refused"]).inc();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no earlier plugin version to roll back to",
        ));
    };
    METRICS.plugin_swaps.with_label_values(&["rollback", "swapped"]).inc();
    tracing::info!(sha256 = %active.plugin.sha256, "plugin rolled back through the admin endpoint");
    Ok(json(serde_json::json!({ "active": version_view(&active) })))
}

async fn swap_plugin(
    State(app): State<AppState>,
    Bearer(token): Bearer,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(refusal) = admin_refusal(&app, &token) {
        // Let a refused client finish sending, so it reads the answer instead of a connection
        // closed under its upload, without keeping what it sends.
        discard_body(request, MAX_PLUGIN_BYTES).await;
        return Err(refusal);
    }
    let bytes = read_body_within(request, MAX_PLUGIN_BYTES).await?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the request body must be the component's bytes"));
    }
    let requested = Instant::now();
    let swapped = app.runtime.swap(bytes.to_vec(), VersionSource::Admin).await;
    let result = if swapped.is_ok() { "swapped" } else { "refused" };
    METRICS.plugin_swaps.with_label_values(&["admin", result]).inc();
    match swapped {
        Ok((plugin, previous)) => {
            tracing::info!(
                sha256 = %plugin.sha256,
                previous = %previous.sha256,
                cached = plugin.cached,
                load_ms = plugin.load_time.as_millis() as u64,
                swap_ms = requested.elapsed().as_millis() as u64,
                "plugin swapped through the admin endpoint"
            );
            let body = serde_json::json!({
                "sha256": plugin.sha256,
                "loaded_at": humantime::format_rfc3339_seconds(plugin.loaded_at).to_string(),
                "previous_sha256": previous.sha256,
                "cached": plugin.cached,
                "load_ms": plugin.load_time.as_secs_f64() * 1000.0,
            });
            Ok(([(header::CONTENT_TYPE, "application/json")], body.to_string()))
        }
        Err(error) => {
            tracing::warn!(%error, "plugin swap refused; the current plugin keeps serving");
            Err(ApiError::bad_request(error.to_string()))
        }
    }
}

/// Reads and drops a body, up to `limit` bytes.
async fn discard_body(request: Request, limit: usize) {
    use http_body_util::BodyExt;
    let mut body = request.into_body();
    let mut seen = 0usize;
    while seen <= limit {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |data| data.len()),
            _ => return,
        }
    }
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(given: &str, expected: &str) -> bool {
    // Equal digests iff equal inputs; how far two digests agree says nothing of the token.
    Sha256::digest(given.as_bytes()) == Sha256::digest(expected.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cre", "s3cret"));
        assert!(!same_secret("", "s3cret"));
    }
}
