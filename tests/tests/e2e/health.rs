//! `/health` and the start-up contract.

use reqwest::{Method, StatusCode};
use webhooks_tests::{TestHost, plugin_component};

#[tokio::test]
async fn health_reports_the_build_and_the_plugin_hash() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    for path in ["/health", "/svcwebhooks/health"] {
        let response = host.request(Method::GET, path, "").send().await?;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/health+json");
        let body: serde_json::Value = response.json().await?;
        assert_eq!(body["status"], "pass");
        for field in ["version", "commit", "description", "build_time"] {
            assert!(body[field].is_string(), "{field} missing in {body}");
        }
        let bytes = std::fs::read(plugin_component())?;
        let expected = sha256_hex(&bytes);
        assert_eq!(body["plugin"]["sha256"], expected);
        assert!(body["plugin"]["loaded_at"].as_str().unwrap().ends_with('Z'));
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    let output = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .expect("sha256sum runs");
    String::from_utf8(output.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}
