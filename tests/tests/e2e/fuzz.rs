//! The OpenAPI description proven by fuzzing (SPEC.md section 9): `schemathesis`, with every
//! check on, runs a bounded number of generated requests against `/openapi.json` of a running
//! host, with real ids and credentials so the cases reach the logic behind authentication. It
//! must find no 5xx, no answer that breaks the description, and no crash.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, ensure};
use reqwest::{Method, StatusCode};
use webhooks_tests::flows::{add_webhook, publish};
use webhooks_tests::{ADMIN, GROUP_1, THING_1, TestHost, standard_registry};

/// Generated cases per operation and phase; about 1,700 requests in all.
const MAX_EXAMPLES: &str = "40";
/// A fixed seed, so a failure in CI reproduces; `SCHEMATHESIS_SEED` picks another.
const SEED: &str = "20261127";

/// The `schemathesis` executable: `SCHEMATHESIS`, else the one `make fuzz-tools` installs in
/// the build folder.
fn schemathesis() -> PathBuf {
    if let Ok(path) = std::env::var("SCHEMATHESIS") {
        return path.into();
    }
    webhooks_tests::shared_plugin_cache()
        .parent()
        .expect("the build folder")
        .join("schemathesis/bin/schemathesis")
}

/// Every operation fuzzed with all checks, from the description the host serves, finds
/// nothing; the host is still healthy afterwards and logged no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_description() -> anyhow::Result<()> {
    let tool = schemathesis();
    ensure!(
        tool.exists(),
        "{} is missing: run `make fuzz-tools` (make test does)",
        tool.display()
    );
    let host = TestHost::start_with(standard_registry(), &[("MF_WEBHOOKS_ADMIN_TOKEN", "fuzz-admin-token")]).await?;
    // Real ids, so generated requests reach validation and storage, not only 404s.
    let webhook = add_webhook(&host, THING_1, "fuzzed", "http://127.0.0.1:9/never").await?;
    publish(&host, "key-1", "a message with a delivery to list").await?;

    let config = host.dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"headers = {{ Authorization = "Bearer {ADMIN}" }}

# Webhook fields are validated further than OpenAPI 3.0 can say (URL syntax, header names and
# values, base64 of the secret) and names are unique per thing: those answers are the
# documented 400 and 409, not a refusal of valid data.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

[parameters]
"path.thing_id" = "{THING_1}"
"path.group_id" = "{GROUP_1}"
"path.id" = "{webhook}"

[[operations]]
include-path-regex = "^/messages"
headers = {{ Authorization = "Thing key-1" }}
"#
        ),
    )?;
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.to_owned());
    let output = Command::new(&tool)
        .arg("--config-file")
        .arg(&config)
        .args(["run", &host.url("/openapi.json"), "--checks", "all"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", &seed, "--no-color"])
        .current_dir(host.dir.path())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    let report = String::from_utf8_lossy(&output.stdout);
    // The summary: operations, phases, failures and the number of cases.
    let summary = report
        .lines()
        .skip_while(|line| !line.contains("SUMMARY"))
        .collect::<Vec<_>>()
        .join("\n");
    println!("{summary}");
    ensure!(
        output.status.success(),
        "schemathesis found problems (seed {seed}):\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(report.contains("generated"), "no cases were generated:\n{report}");

    let (status, _) = host.call(Method::GET, "/health", "", None).await?;
    ensure!(
        status == StatusCode::OK,
        "the host is unhealthy after the fuzzing: {status}"
    );
    let log = host.log();
    ensure!(
        !log.contains("panicked"),
        "the host panicked during the fuzzing:\n{log}"
    );
    Ok(())
}
