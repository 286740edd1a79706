//! The plugin's administration (SPEC.md section 8): `PUT /admin/plugin` replaces the webhook
//! logic without a restart, or sets a candidate beside it (`?canary=P`, `?shadow=true`);
//! `GET /admin/plugin` shows the active version, the candidate and the earlier ones;
//! `POST /admin/plugin/rollback` makes the previous one active again, `POST
//! /admin/plugin/promote` the candidate, and `DELETE /admin/plugin/candidate` drops it. Each
//! needs the admin token and does not exist without one.

use std::time::Instant;

use axum::extract::{RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use super::request::{Bearer, read_body_within};
use super::routes::Routes;
use crate::metrics::METRICS;
use crate::runtime::{Candidate, Mode, Plugin, RolledBack, Version, VersionSource};

/// The largest component accepted.
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;

/// The routes of this area.
pub fn routes() -> Routes {
    Routes::new()
        .put("/admin/plugin", swap_plugin)
        .get("/admin/plugin", plugin_versions)
        .post("/admin/plugin/rollback", roll_back)
        .post("/admin/plugin/promote", promote)
        .delete("/admin/plugin/candidate", drop_candidate)
        .put("/admin/data-format", raise_format)
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

fn time(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// What every view of a version shows of its component.
fn plugin_view(plugin: &Plugin) -> serde_json::Map<String, serde_json::Value> {
    let formats = plugin.formats();
    let serde_json::Value::Object(view) = serde_json::json!({
        "sha256": plugin.sha256,
        "world": plugin.world(),
        "loaded_at": time(plugin.loaded_at),
        "data_formats": {"oldest": formats.oldest, "newest": formats.newest, "writes": formats.writes},
    }) else {
        unreachable!("an object literal")
    };
    view
}

/// A version as `GET /admin/plugin` shows it.
fn version_view(version: &Version) -> serde_json::Value {
    let mut view = plugin_view(&version.plugin);
    view.insert("activated_at".into(), time(version.activated_at).into());
    view.insert("source".into(), version.source.name().into());
    view.into()
}

/// The candidate as `GET /admin/plugin` shows it.
fn candidate_view(candidate: &Candidate) -> serde_json::Value {
    let mut view = plugin_view(&candidate.version.plugin);
    view.insert("proposed_at".into(), time(candidate.version.activated_at).into());
    view.insert("mode".into(), candidate.mode.name().into());
    let percent = match candidate.mode {
        Mode::Canary { percent } => serde_json::Value::from(percent),
        Mode::Shadow => serde_json::Value::Null,
    };
    view.insert("percent".into(), percent);
    view.into()
}

fn rolled_back_view(rolled_back: &RolledBack) -> serde_json::Value {
    serde_json::json!({
        "sha256": rolled_back.sha256,
        "reason": rolled_back.reason,
        "at": time(rolled_back.at),
    })
}

fn json(body: serde_json::Value) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], body.to_string())
}

async fn plugin_versions(State(app): State<AppState>, Bearer(token): Bearer) -> Result<impl IntoResponse, ApiError> {
    if let Some(refusal) = admin_refusal(&app, &token) {
        return Err(refusal);
    }
    let rollout = app.runtime.rollout().await;
    Ok(json(serde_json::json!({
        "active": version_view(&rollout.active),
        "candidate": rollout.candidate.as_deref().map(candidate_view),
        "rolled_back": rollout.rolled_back.as_ref().map(rolled_back_view),
        "history": rollout.history.iter().map(version_view).collect::<Vec<_>>(),
        "data_format": rollout.stored_format.ok(),
    })))
}

async fn roll_back(State(app): State<AppState>, Bearer(token): Bearer) -> Result<impl IntoResponse, ApiError> {
    if let Some(refusal) = admin_refusal(&app, &token) {
        return Err(refusal);
    }
    let rolled = app.runtime.rollback().await;
    let result = if rolled.is_ok() { "swapped" } else { "refused" };
    METRICS.plugin_swaps.with_label_values(&["rollback", result]).inc();
    let active = rolled.inspect_err(|error| tracing::warn!(%error, "plugin rollback refused"))?;
    tracing::info!(sha256 = %active.plugin.sha256, "plugin rolled back through the admin endpoint");
    Ok(json(serde_json::json!({ "active": version_view(&active) })))
}

async fn promote(State(app): State<AppState>, Bearer(token): Bearer) -> Result<impl IntoResponse, ApiError> {
    if let Some(refusal) = admin_refusal(&app, &token) {
        return Err(refusal);
    }
    let promoted = app.runtime.promote().await;
    let result = if promoted.is_ok() { "swapped" } else { "refused" };
    METRICS.plugin_swaps.with_label_values(&["promote", result]).inc();
    let active = promoted.inspect_err(|error| tracing::warn!(%error, "plugin promote refused"))?;
    tracing::info!(sha256 = %active.plugin.sha256, "candidate plugin promoted through the admin endpoint");
    Ok(json(serde_json::json!({ "active": version_view(&active) })))
}

async fn drop_candidate(State(app): State<AppState>, Bearer(token): Bearer) -> Result<impl IntoResponse, ApiError> {
    if let Some(refusal) = admin_refusal(&app, &token) {
        return Err(refusal);
    }
    let dropped = app.runtime.drop_candidate().await?;
    tracing::info!(sha256 = %dropped.version.plugin.sha256, mode = dropped.mode.name(), "candidate plugin dropped through the admin endpoint");
    Ok(StatusCode::NO_CONTENT)
}

async fn raise_format(
    State(app): State<AppState>,
    Bearer(token): Bearer,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(refusal) = admin_refusal(&app, &token) {
        return Err(refusal);
    }
    let asked = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|body| body.get("format")?.as_u64())
        .and_then(|format| u32::try_from(format).ok())
        .filter(|format| *format >= 1)
        .ok_or_else(|| ApiError::bad_request(r#"the body must be {"format": N}, N a whole number from 1"#))?;
    let previous = app
        .runtime
        .raise_format(asked)
        .await
        .inspect_err(|error| tracing::warn!(%error, format = asked, "raising the stored data format refused"))?;
    if previous != asked {
        tracing::info!(
            previous,
            format = asked,
            "stored data format raised through the admin endpoint"
        );
    }
    Ok(json(serde_json::json!({ "data_format": asked, "previous": previous })))
}

/// What a `PUT /admin/plugin` asks for, from its query.
fn requested_mode(query: Option<&str>) -> Result<Option<Mode>, ApiError> {
    let mut canary = None;
    let mut shadow = false;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "canary" => {
                let percent = value
                    .parse::<u8>()
                    .ok()
                    .filter(|p| (1..=99).contains(p))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("canary must be a whole percent from 1 to 99, not {value:?}"))
                    })?;
                canary = Some(percent);
            }
            "shadow" => {
                shadow = match value.as_ref() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "shadow must be true or false, not {other:?}"
                        )));
                    }
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}; expected canary or shadow"
                )));
            }
        }
    }
    match (canary, shadow) {
        (Some(_), true) => Err(ApiError::bad_request(
            "a candidate is either a canary or a dry run, not both",
        )),
        (Some(percent), false) => Ok(Some(Mode::Canary { percent })),
        (None, true) => Ok(Some(Mode::Shadow)),
        (None, false) => Ok(None),
    }
}

async fn swap_plugin(
    State(app): State<AppState>,
    Bearer(token): Bearer,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(refusal) = admin_refusal(&app, &token) {
        // Let a refused client finish sending, so it reads the answer instead of a connection
        // closed under its upload, without keeping what it sends.
        discard_body(request, MAX_PLUGIN_BYTES).await;
        return Err(refusal);
    }
    let mode = match requested_mode(query.as_deref()) {
        Ok(mode) => mode,
        Err(error) => {
            discard_body(request, MAX_PLUGIN_BYTES).await;
            return Err(error);
        }
    };
    let bytes = read_body_within(request, MAX_PLUGIN_BYTES).await?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the request body must be the component's bytes"));
    }
    if let Some(mode) = mode {
        let candidate =
            app.runtime.propose(bytes.to_vec(), mode).await.inspect_err(
                |error| tracing::warn!(%error, "candidate plugin refused; the current one keeps serving"),
            )?;
        tracing::info!(
            sha256 = %candidate.version.plugin.sha256,
            mode = mode.name(),
            percent = ?match mode { Mode::Canary { percent } => Some(percent), Mode::Shadow => None },
            "candidate plugin set beside the active one through the admin endpoint"
        );
        return Ok(json(serde_json::json!({ "candidate": candidate_view(&candidate) })).into_response());
    }
    let requested = Instant::now();
    let swapped = app.runtime.swap(bytes.to_vec(), VersionSource::Admin).await;
    let result = if swapped.is_ok() { "swapped" } else { "refused" };
    METRICS.plugin_swaps.with_label_values(&["admin", result]).inc();
    let (plugin, previous) =
        swapped.inspect_err(|error| tracing::warn!(%error, "plugin swap refused; the current plugin keeps serving"))?;
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
        "loaded_at": time(plugin.loaded_at),
        "previous_sha256": previous.sha256,
        "cached": plugin.cached,
        "load_ms": plugin.load_time.as_secs_f64() * 1000.0,
    });
    Ok(json(body).into_response())
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
