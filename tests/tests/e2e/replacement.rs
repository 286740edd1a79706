//! Replacing the platform's Go webhooks service (SPEC.md section 1): its database with the
//! webhooks it kept, its configuration variables and its HTTPS settings, unchanged.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use webhooks_tests::flows::{ALLOW_PRIVATE, as_thing};
use webhooks_tests::receiver::{QUIET, Receiver};
use webhooks_tests::{
    ADMIN, GROUP_1, GROUP_2, OTHER_ADMIN, THING_1, THING_2, THING_3, TestHost, postgres_database, run_to_exit,
    standard_registry, test_certificates,
};

/// The Go service's schema, as its migration `webhooks_1` writes it through sql-migrate (which
/// keeps its own `gorp_migrations` table).
const GO_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS gorp_migrations (id TEXT NOT NULL PRIMARY KEY, applied_at TIMESTAMP WITH TIME ZONE);
CREATE TABLE IF NOT EXISTS webhooks (
    id          UUID UNIQUE,
    thing_id    UUID NOT NULL,
    group_id    UUID NOT NULL,
    name        VARCHAR(254) NOT NULL,
    url         VARCHAR(254) NOT NULL,
    headers     JSONB,
    metadata    JSONB,
    PRIMARY KEY (thing_id, name)
);
INSERT INTO gorp_migrations (id, applied_at) VALUES ('webhooks_1', now());
";

const ALARM: &str = "0b3c5d7e-1111-4aaa-8bbb-000000000001";
const AUDIT: &str = "0b3c5d7e-1111-4aaa-8bbb-000000000002";
const OTHER: &str = "0b3c5d7e-1111-4aaa-8bbb-000000000003";
const MANAGED_HEADER: &str = "0b3c5d7e-1111-4aaa-8bbb-000000000004";

/// Runs SQL on a database with `psql`; answers its unaligned output.
fn psql(database: &str, sql: &str) -> Result<String> {
    let output = std::process::Command::new("psql")
        .arg(database)
        .args(["-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .context("running psql")?;
    ensure!(
        output.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// A row as the Go service's repository writes it: headers and metadata marshalled to JSON,
/// `{}` when empty; `NULL` as rows of its first versions have them.
fn insert(
    id: &str,
    thing: &str,
    group: &str,
    name: &str,
    url: &str,
    headers: Option<&Value>,
    metadata: Option<&Value>,
) -> String {
    let json = |value: Option<&Value>| match value {
        Some(value) => format!("'{}'", value.to_string().replace('\'', "''")),
        None => "NULL".to_owned(),
    };
    format!(
        "INSERT INTO webhooks (id, thing_id, group_id, name, url, headers, metadata) \
         VALUES ('{id}', '{thing}', '{group}', '{name}', '{url}', {}, {});",
        json(headers),
        json(metadata)
    )
}

/// The table's rows in a stable text form, to show it is left as it was.
fn go_rows(database: &str) -> Result<String> {
    psql(
        database,
        "SELECT id, thing_id, group_id, name, url, headers::text, metadata::text FROM webhooks ORDER BY id",
    )
}

/// The server certificate and key files of `test_certificates`, as variable values.
fn server_files(certificates: &webhooks_tests::TempDir) -> (String, String) {
    let file = |name: &str| certificates.path().join(name).display().to_string();
    (file("server.pem"), file("server.key"))
}

/// The Go service's variables for a `postgres://USER@HOST:PORT/NAME` database.
fn go_database_variables(database: &str) -> Result<Vec<(String, String)>> {
    let rest = database.strip_prefix("postgres://").context("a postgres:// URL")?;
    let (user, rest) = rest.split_once('@').context("a user")?;
    let (address, name) = rest.split_once('/').context("a database")?;
    let (address, port) = address.rsplit_once(':').context("a port")?;
    Ok([
        ("MF_WEBHOOKS_DB_HOST", address),
        ("MF_WEBHOOKS_DB_PORT", port),
        ("MF_WEBHOOKS_DB_USER", user),
        ("MF_WEBHOOKS_DB", name),
        ("MF_WEBHOOKS_DB_SSL_MODE", "disable"),
        // As a compose file that lists every variable leaves the unused ones.
        ("MF_WEBHOOKS_DB_SSL_CERT", ""),
        ("MF_WEBHOOKS_DB_SSL_KEY", ""),
        ("MF_WEBHOOKS_DB_SSL_ROOT_CERT", ""),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec())
}

/// A database written by the Go service, and this service started on it with that service's
/// variables alone, over HTTPS: every webhook is served with its id, name, url, headers and
/// metadata and gets the messages of its thing with its headers; the one this service refuses
/// is named in the log; the Go table is left as it was; a restart imports nothing again, so a
/// webhook removed since stays removed; `webhooks-host import` brings it back on demand and
/// prints the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_services_database_and_variables_alone_serve_its_webhooks_over_https_and_deliver_to_them() -> Result<()>
{
    let database = postgres_database()?;
    let receiver = Receiver::start().await?;
    let alarm_headers = json!({"Authorization": "Bearer abc", "X-Site": "7"});
    let alarm_metadata = json!({"site": 7, "tags": ["roof"]});
    let empty = json!({});
    psql(
        &database,
        &[
            GO_SCHEMA.to_owned(),
            insert(
                ALARM,
                THING_1,
                GROUP_1,
                "alarm",
                &receiver.url("/alarm"),
                Some(&alarm_headers),
                Some(&alarm_metadata),
            ),
            insert(
                AUDIT,
                THING_1,
                GROUP_1,
                "audit",
                &receiver.url("/audit"),
                Some(&empty),
                Some(&empty),
            ),
            insert(OTHER, THING_3, GROUP_2, "other", &receiver.url("/other"), None, None),
            insert(
                MANAGED_HEADER,
                THING_2,
                GROUP_1,
                "managed",
                &receiver.url("/managed"),
                Some(&json!({"Connection": "close"})),
                Some(&empty),
            ),
        ]
        .concat(),
    )?;
    let go_table = go_rows(&database)?;

    let certificates = test_certificates()?;
    let (certificate, key) = server_files(&certificates);
    let mut env = go_database_variables(&database)?;
    env.extend(
        [
            // Empty: unset, so the parts above say where the store is.
            ("MF_WEBHOOKS_DB_URL", ""),
            ("MF_WEBHOOKS_SERVER_CERT", certificate.as_str()),
            ("MF_WEBHOOKS_SERVER_KEY", key.as_str()),
            ("MF_AUTH_GRPC_URL", "localhost:8181"),
            ("MF_AUTH_GRPC_TIMEOUT", "1s"),
            ("MF_WEBHOOKS_LOG_LEVEL", "info"),
            ALLOW_PRIVATE,
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut host = TestHost::prepare(standard_registry(), &env)?.over_https(&certificates.path().join("ca.pem"))?;
    host.start_again().await?;

    let imported = host
        .logged(&["imported the Go webhooks service's webhooks"], Duration::from_secs(5))
        .await?;
    assert!(
        imported.contains("imported=3") && imported.contains("refused=1"),
        "{imported}"
    );
    let refusal = host.log_lines_with(&[MANAGED_HEADER, "not imported"]);
    assert!(
        refusal.iter().any(|line| line.contains("Connection")),
        "the refused row is named with its reason: {refusal:?}"
    );

    let listed = host
        .expect(
            Method::GET,
            &format!("/things/{THING_1}/webhooks"),
            ADMIN,
            None,
            StatusCode::OK,
        )
        .await?;
    let mut webhooks = listed["webhooks"].as_array().context("a list")?.clone();
    webhooks.sort_by_key(|webhook| webhook["name"].as_str().map(str::to_owned));
    assert_eq!(webhooks.len(), 2, "{listed}");
    let alarm = &webhooks[0];
    assert_eq!(alarm["id"], ALARM);
    assert_eq!(alarm["thing_id"], THING_1);
    assert_eq!(alarm["group_id"], GROUP_1);
    assert_eq!(alarm["name"], "alarm");
    assert_eq!(alarm["url"], receiver.url("/alarm"));
    assert_eq!(alarm["headers"], alarm_headers);
    assert_eq!(alarm["metadata"], alarm_metadata);
    assert_eq!(webhooks[1]["id"], AUDIT);
    assert_eq!(webhooks[1]["url"], receiver.url("/audit"));
    let other = host
        .expect(
            Method::GET,
            &format!("/webhooks/{OTHER}"),
            OTHER_ADMIN,
            None,
            StatusCode::OK,
        )
        .await?;
    assert_eq!(
        (&other["id"], &other["thing_id"], &other["group_id"], &other["name"]),
        (&json!(OTHER), &json!(THING_3), &json!(GROUP_2), &json!("other"))
    );
    host.expect(
        Method::GET,
        &format!("/webhooks/{MANAGED_HEADER}"),
        ADMIN,
        None,
        StatusCode::NOT_FOUND,
    )
    .await?;

    let published = as_thing(&host, "key-1", "/messages")
        .header("content-type", "application/json")
        .body(r#"{"temperature": 21.5}"#)
        .send()
        .await?;
    assert_eq!(published.status(), StatusCode::ACCEPTED);
    let arrived = receiver.wait_for_arrivals(2, Duration::from_secs(10)).await?;
    let alarm_delivery = arrived
        .iter()
        .find(|r| r.path == "/alarm")
        .context("a delivery to the imported webhook")?;
    assert_eq!(alarm_delivery.body.as_ref(), br#"{"temperature": 21.5}"#);
    assert_eq!(alarm_delivery.header("authorization"), Some("Bearer abc"));
    assert_eq!(alarm_delivery.header("x-site"), Some("7"));
    assert!(arrived.iter().any(|r| r.path == "/audit"), "{arrived:?}");
    assert_eq!(
        go_rows(&database)?,
        go_table,
        "the Go service's table is left as it was"
    );

    // Imported once: a webhook removed here is not brought back by a restart.
    host.expect(
        Method::PATCH,
        "/webhooks",
        ADMIN,
        Some(json!({"webhook_ids": [AUDIT]})),
        StatusCode::NO_CONTENT,
    )
    .await?;
    host.stop()?;
    host.start_again().await?;
    host.expect(
        Method::GET,
        &format!("/webhooks/{AUDIT}"),
        ADMIN,
        None,
        StatusCode::NOT_FOUND,
    )
    .await?;
    assert_eq!(
        host.log_lines_with(&["importing the Go webhooks service's webhooks table"])
            .len(),
        1
    );
    host.stop()?;

    // On demand: whatever is missing, with the counts.
    let output = run_to_exit(host.command_for("import"), Duration::from_secs(60))?;
    let printed = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "import failed: {printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(printed.trim(), "imported 1, skipped 3 (2 already present, 1 refused)");
    host.start_again().await?;
    host.expect(Method::GET, &format!("/webhooks/{AUDIT}"), ADMIN, None, StatusCode::OK)
        .await?;
    tokio::time::sleep(QUIET).await;
    assert_eq!(receiver.count(), 2, "nothing was delivered twice");
    assert_eq!(go_rows(&database)?, go_table);
    Ok(())
}

/// Plain HTTP to a host that serves HTTPS gets no answer from the API; a client that does not
/// trust the certificate is refused at the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_serving_https_answers_only_over_tls_with_its_certificate() -> Result<()> {
    let certificates = test_certificates()?;
    let (certificate, key) = server_files(&certificates);
    let host = TestHost::prepare(
        standard_registry(),
        &[
            ("MF_WEBHOOKS_SERVER_CERT", certificate.as_str()),
            ("MF_WEBHOOKS_SERVER_KEY", key.as_str()),
        ],
    )?
    .over_https(&certificates.path().join("ca.pem"))?;
    let mut host = host;
    host.start_again().await?;
    host.expect(Method::GET, "/health", "", None, StatusCode::OK).await?;
    let plain = webhooks_tests::client_builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(format!("http://127.0.0.1:{}/health", host.port))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| r.status() != StatusCode::OK),
        "plain HTTP was served: {plain:?}"
    );
    let untrusting = webhooks_tests::client_builder()
        .timeout(Duration::from_secs(5))
        .tls_backend_preconfigured(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
        .build()?
        .get(host.url("/health"))
        .send()
        .await;
    assert!(
        untrusting.is_err(),
        "an unverified certificate was accepted: {untrusting:?}"
    );
    Ok(())
}

/// A certificate without its key, or a file that is not a certificate, stops start-up with one
/// line naming the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_settings_that_cannot_work_stop_start_up_naming_the_variable() -> Result<()> {
    let certificates = test_certificates()?;
    let (certificate, key) = server_files(&certificates);
    let request_as_certificate = certificates.path().join("server.csr").display().to_string();
    for (env, variable) in [
        (
            vec![("MF_WEBHOOKS_SERVER_CERT", certificate.as_str())],
            "MF_WEBHOOKS_SERVER_KEY",
        ),
        (
            vec![
                ("MF_WEBHOOKS_SERVER_CERT", request_as_certificate.as_str()),
                ("MF_WEBHOOKS_SERVER_KEY", key.as_str()),
            ],
            "MF_WEBHOOKS_SERVER_CERT",
        ),
    ] {
        let host = TestHost::prepare(standard_registry(), &env)?;
        let output = run_to_exit(host.command(), Duration::from_secs(30))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{env:?} started");
        let line = stderr.trim();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(line.contains(variable), "{env:?}: {line}");
    }
    Ok(())
}

/// The Go service's database variables with these replaced or added.
fn go_variables_with(database: &str, changes: &[(&str, &str)]) -> Result<Vec<(String, String)>> {
    let mut env = go_database_variables(database)?;
    for (name, value) in changes {
        env.retain(|(existing, _)| existing != name);
        env.push((name.to_string(), value.to_string()));
    }
    env.push(("MF_WEBHOOKS_DB_URL".to_owned(), String::new()));
    Ok(env)
}

fn as_pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// How many of the connections to `database` use TLS, and how many do not.
fn tls_connections(database: &str) -> Result<(u32, u32)> {
    let admin = std::env::var("WEBHOOKS_TEST_POSTGRES")?;
    let name = database.rsplit_once('/').context("a database name")?.1;
    let counts = psql(
        &admin,
        &format!(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{name}'"
        ),
    )?;
    let (with, without) = counts.trim().split_once('|').context("two counts")?;
    Ok((with.parse()?, without.parse()?))
}

/// `MF_WEBHOOKS_DB_SSL_MODE` and `_DB_SSL_ROOT_CERT` as libpq takes them: `verify-full` with the
/// server's CA connects over TLS (every connection of the host is encrypted) and the service
/// works; `verify-full` to a name the certificate does not carry, or without the CA, stops
/// start-up with one line; `verify-ca` accepts the other name; `require` encrypts unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_services_ssl_variables_connect_to_postgresql_over_tls_checked_as_libpq_checks_it() -> Result<()> {
    let database = postgres_database()?;
    let ca = std::env::var("WEBHOOKS_TEST_POSTGRES_CA").context("tests/services sets WEBHOOKS_TEST_POSTGRES_CA")?;
    let verified = go_variables_with(
        &database,
        &[
            ("MF_WEBHOOKS_DB_SSL_MODE", "verify-full"),
            ("MF_WEBHOOKS_DB_SSL_ROOT_CERT", ca.as_str()),
        ],
    )?;
    let host = TestHost::start_with(standard_registry(), &as_pairs(&verified)).await?;
    webhooks_tests::flows::add_webhook(&host, THING_1, "over-tls", "https://example.com/tls").await?;
    let (with, without) = tls_connections(&database)?;
    assert!(
        with > 0 && without == 0,
        "{with} connections over TLS, {without} without"
    );

    for (changes, fails) in [
        (
            vec![
                ("MF_WEBHOOKS_DB_HOST", "localhost"),
                ("MF_WEBHOOKS_DB_SSL_MODE", "verify-full"),
                ("MF_WEBHOOKS_DB_SSL_ROOT_CERT", ca.as_str()),
            ],
            true,
        ),
        (vec![("MF_WEBHOOKS_DB_SSL_MODE", "verify-full")], true),
        (
            vec![
                ("MF_WEBHOOKS_DB_HOST", "localhost"),
                ("MF_WEBHOOKS_DB_SSL_MODE", "verify-ca"),
                ("MF_WEBHOOKS_DB_SSL_ROOT_CERT", ca.as_str()),
            ],
            false,
        ),
        (vec![("MF_WEBHOOKS_DB_SSL_MODE", "require")], false),
    ] {
        let env = go_variables_with(&database, &changes)?;
        let other = TestHost::prepare(standard_registry(), &as_pairs(&env))?;
        if fails {
            let output = run_to_exit(other.command(), Duration::from_secs(30))?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{changes:?} started");
            let line = stderr.trim().lines().last().unwrap_or_default().to_owned();
            assert!(
                line.starts_with("webhooks-host: MF_WEBHOOKS_DB_HOST:") && line.contains("certificate"),
                "{changes:?}: {stderr}"
            );
        } else {
            let mut other = other;
            other.start_again().await?;
            let listed = other
                .expect(
                    Method::GET,
                    &format!("/things/{THING_1}/webhooks"),
                    ADMIN,
                    None,
                    StatusCode::OK,
                )
                .await?;
            assert_eq!(listed["total"], 1, "{changes:?}: {listed}");
        }
    }
    Ok(())
}
