//! `GET /health`: liveness, build identity and the loaded plugin's identity.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use super::routes::Routes;

/// The build's identity, fixed at compile time.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    /// Crate version.
    pub version: &'static str,
    /// Git commit the binary was built from, or `unknown`.
    pub commit: &'static str,
    /// When the binary was built, RFC 3339.
    pub build_time: String,
}

impl BuildInfo {
    /// The identity of this binary.
    pub fn current() -> Self {
        let seconds: u64 = env!("WEBHOOKS_BUILD_EPOCH").parse().unwrap_or(0);
        let built = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
        BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            commit: env!("WEBHOOKS_COMMIT"),
            build_time: humantime::format_rfc3339_seconds(built).to_string(),
        }
    }
}

/// The routes of this area.
pub fn routes() -> Routes {
    Routes::new().get("/health", health)
}

async fn health(State(app): State<AppState>) -> impl IntoResponse {
    let plugin = app.runtime.current();
    let body = serde_json::json!({
        "status": "pass",
        "version": app.build.version,
        "commit": app.build.commit,
        "description": "webhooks service: forwards device messages to HTTP webhooks, logic in a WebAssembly component",
        "build_time": app.build.build_time,
        "plugin": {
            "sha256": plugin.sha256,
            "world": plugin.world(),
            "loaded_at": humantime::format_rfc3339_seconds(plugin.loaded_at).to_string(),
        },
    });
    ([(header::CONTENT_TYPE, "application/health+json")], body.to_string())
}
