//! The embedded identity registry (SPEC.md section 5): edits take effect without a restart,
//! invalid edits are logged and ignored; and the start-up contract of section 1: bad
//! configuration stops the host with one line naming the variable, `--help` lists them all.

use std::time::Duration;

use anyhow::ensure;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use webhooks_tests::{
    ADMIN, GROUP_1, GROUP_2, LONER, OTHER_ADMIN, THING_1, THING_2, THING_3, TestHost, VIEWER, eventually, host_binary,
    run_to_exit, standard_registry,
};

/// How long a registry edit may take to show, with room for a busy machine (SPEC.md: 2 s).
const RELOAD_BOUND: Duration = Duration::from_secs(5);

/// The standard registry with `LONER` made an editor of `GROUP_1`.
fn registry_with_loner_as_editor() -> Value {
    let mut registry = standard_registry();
    registry["groups"][0]["members"]["u-loner"] = json!("editor");
    registry
}

/// The standard registry without the viewer: neither its token nor its membership.
fn registry_without_viewer() -> Value {
    let mut registry = standard_registry();
    registry["users"]
        .as_array_mut()
        .unwrap()
        .retain(|user| user["id"] != "u-viewer");
    registry["groups"][0]["members"]
        .as_object_mut()
        .unwrap()
        .remove("u-viewer");
    registry
}

async fn loner_creates(host: &TestHost, name: &str) -> anyhow::Result<(StatusCode, Value)> {
    host.call(
        Method::POST,
        &format!("/things/{THING_1}/webhooks"),
        LONER,
        Some(json!([{"name": name, "url": "http://h.example"}])),
    )
    .await
}

/// Waits until `LONER` may create webhooks on `THING_1`.
async fn until_loner_can_create(host: &TestHost) -> anyhow::Result<()> {
    let mut attempt = 0;
    eventually(RELOAD_BOUND, || {
        attempt += 1;
        let name = format!("by loner {attempt}");
        async move {
            let (status, body) = loner_creates(host, &name).await?;
            ensure!(status == StatusCode::CREATED, "LONER still gets {status}: {body}");
            ensure!(body[0]["name"] == name.as_str(), "{body}");
            Ok(())
        }
    })
    .await
}

#[tokio::test]
async fn a_role_granted_by_renaming_a_new_registry_over_takes_effect_without_restart() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let (status, body) = loner_creates(&host, "before").await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    host.replace_registry(&registry_with_loner_as_editor())?;
    until_loner_can_create(&host).await
}

#[tokio::test]
async fn a_role_granted_by_rewriting_the_registry_in_place_takes_effect_without_restart() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let (status, body) = loner_creates(&host, "before").await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    host.rewrite_registry(&serde_json::to_vec_pretty(&registry_with_loner_as_editor())?)?;
    until_loner_can_create(&host).await
}

#[tokio::test]
async fn a_removed_token_is_refused_without_restart() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let path = format!("/groups/{GROUP_1}/webhooks");
    let (status, body) = host.call(Method::GET, &path, VIEWER, None).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    host.replace_registry(&registry_without_viewer())?;
    eventually(RELOAD_BOUND, || async {
        let (status, body) = host.call(Method::GET, &path, VIEWER, None).await?;
        ensure!(
            status == StatusCode::UNAUTHORIZED,
            "the removed viewer still gets {status}: {body}"
        );
        Ok(())
    })
    .await?;
    // The others keep their access.
    let (status, body) = host.call(Method::GET, &path, ADMIN, None).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(())
}

#[tokio::test]
async fn an_invalid_registry_edit_is_logged_and_the_last_good_registry_stays() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let created = host
        .create(THING_1, ADMIN, json!([{"name": "kept", "url": "http://h.example"}]))
        .await?;
    let warnings_before = registry_warnings(&host.log());

    host.rewrite_registry(b"{not json")?;
    eventually(RELOAD_BOUND, || async {
        let warnings = registry_warnings(&host.log());
        ensure!(
            warnings > warnings_before,
            "no log line about the invalid registry yet:\n{}",
            host.log()
        );
        Ok(())
    })
    .await?;

    // The change has been seen and refused: the last good registry is still in force.
    let (status, body) = host
        .call(
            Method::GET,
            &format!("/webhooks/{}", created[0]["id"].as_str().unwrap()),
            VIEWER,
            None,
        )
        .await?;
    assert_eq!((status, &body), (StatusCode::OK, &created[0]));
    let (status, body) = host
        .call(Method::GET, &format!("/things/{THING_2}/webhooks"), VIEWER, None)
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = loner_creates(&host, "still refused").await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // The same through a rename, then a good edit still takes effect.
    let before_rename = registry_warnings(&host.log());
    let temporary = host.dir.path().join("broken.json");
    std::fs::write(&temporary, b"{\"users\": [")?;
    std::fs::rename(&temporary, host.registry_path())?;
    eventually(RELOAD_BOUND, || async {
        ensure!(
            registry_warnings(&host.log()) > before_rename,
            "no log line about the renamed invalid registry yet"
        );
        Ok(())
    })
    .await?;
    let (status, body) = host
        .call(Method::GET, &format!("/things/{THING_1}/webhooks"), VIEWER, None)
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 1, "{body}");

    host.replace_registry(&registry_with_loner_as_editor())?;
    until_loner_can_create(&host).await
}

/// How many warning or error lines of the log speak of the registry.
fn registry_warnings(log: &str) -> usize {
    log.lines()
        .filter(|line| (line.contains("WARN") || line.contains("ERROR")) && line.contains("registry"))
        .count()
}

/// The names on a page of webhooks.
fn names(page: &Value) -> Vec<&str> {
    page["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn things_and_groups_removed_from_the_registry_lose_their_webhooks() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    host.create(THING_1, ADMIN, json!([{"name": "stays", "url": "http://h.example"}]))
        .await?;
    host.create(
        THING_2,
        ADMIN,
        json!([{"name": "thing goes", "url": "http://h.example"}]),
    )
    .await?;
    host.create(
        THING_3,
        OTHER_ADMIN,
        json!([{"name": "group goes", "url": "http://h.example"}]),
    )
    .await?;

    let mut shrunk = standard_registry();
    shrunk["things"]
        .as_array_mut()
        .unwrap()
        .retain(|thing| thing["id"] == THING_1);
    shrunk["groups"]
        .as_array_mut()
        .unwrap()
        .retain(|group| group["id"] == GROUP_1);
    host.replace_registry(&shrunk)?;
    let group_1 = format!("/groups/{GROUP_1}/webhooks");
    eventually(RELOAD_BOUND, || async {
        let (status, page) = host.call(Method::GET, &group_1, ADMIN, None).await?;
        ensure!(status == StatusCode::OK, "{status}: {page}");
        ensure!(
            names(&page) == ["stays"],
            "the removed thing's webhooks are still listed: {page}"
        );
        Ok(())
    })
    .await?;

    // Brought back, the thing and the group start with no webhooks.
    host.replace_registry(&standard_registry())?;
    let group_2 = format!("/groups/{GROUP_2}/webhooks");
    eventually(RELOAD_BOUND, || async {
        let (status, page) = host.call(Method::GET, &group_2, OTHER_ADMIN, None).await?;
        ensure!(status == StatusCode::OK, "the group is not back yet: {status}: {page}");
        ensure!(page["total"] == 0, "the returning group still has webhooks: {page}");
        Ok(())
    })
    .await?;
    let (status, page) = host
        .call(Method::GET, &format!("/things/{THING_2}/webhooks"), ADMIN, None)
        .await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 0, "the returning thing still has webhooks: {page}");
    let (_, page) = host.call(Method::GET, &group_1, ADMIN, None).await?;
    assert_eq!(names(&page), ["stays"]);
    Ok(())
}

/// Starts the host with these variables overridden and checks that it stops at once with a
/// non-zero code and exactly one line on stderr that names `variable`.
fn assert_start_up_fails_naming(env: &[(&str, &str)], variable: &str) -> anyhow::Result<()> {
    start_up_failure(env, variable).map(drop)
}

/// As [`assert_start_up_fails_naming`], answering the line.
fn start_up_failure(env: &[(&str, &str)], variable: &str) -> anyhow::Result<String> {
    let host = TestHost::prepare(standard_registry(), env)?;
    let output = run_to_exit(host.command(), Duration::from_secs(30))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "{env:?}: exited with {} ; stderr:\n{stderr}",
        output.status
    );
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{env:?}: stderr should be one line, got:\n{stderr}");
    assert!(
        lines[0].contains(variable),
        "{env:?}: {:?} does not name {variable}",
        lines[0]
    );
    Ok(lines[0].to_owned())
}

#[tokio::test]
async fn an_unreadable_registry_stops_start_up_naming_mf_webhooks_registry() -> anyhow::Result<()> {
    let folder = webhooks_tests::TempDir::new("registry-folder");
    let missing = folder.path().join("missing.json");
    assert_start_up_fails_naming(
        &[("MF_WEBHOOKS_REGISTRY", missing.to_str().unwrap())],
        "MF_WEBHOOKS_REGISTRY",
    )?;
    assert_start_up_fails_naming(
        &[("MF_WEBHOOKS_REGISTRY", folder.path().to_str().unwrap())],
        "MF_WEBHOOKS_REGISTRY",
    )?;
    let invalid = folder.path().join("invalid.json");
    std::fs::write(&invalid, b"{not json")?;
    assert_start_up_fails_naming(
        &[("MF_WEBHOOKS_REGISTRY", invalid.to_str().unwrap())],
        "MF_WEBHOOKS_REGISTRY",
    )
}

#[tokio::test]
async fn an_unknown_storage_scheme_stops_start_up_naming_mf_webhooks_db_url() -> anyhow::Result<()> {
    assert_start_up_fails_naming(&[("MF_WEBHOOKS_DB_URL", "mysql://x")], "MF_WEBHOOKS_DB_URL")
}

#[tokio::test]
async fn a_plugin_that_is_not_a_component_stops_start_up_naming_mf_webhooks_plugin() -> anyhow::Result<()> {
    let folder = webhooks_tests::TempDir::new("plugin");
    let text = folder.path().join("plugin.wasm");
    std::fs::write(&text, b"this is a text file, not a WebAssembly component\n")?;
    assert_start_up_fails_naming(&[("MF_WEBHOOKS_PLUGIN", text.to_str().unwrap())], "MF_WEBHOOKS_PLUGIN")?;
    let missing = folder.path().join("missing.wasm");
    assert_start_up_fails_naming(
        &[("MF_WEBHOOKS_PLUGIN", missing.to_str().unwrap())],
        "MF_WEBHOOKS_PLUGIN",
    )
}

#[tokio::test]
async fn bad_platform_settings_stop_start_up_naming_their_variable() -> anyhow::Result<()> {
    assert_start_up_fails_naming(
        &[("MF_THINGS_AUTH_GRPC_URL", "not a host:port")],
        "MF_THINGS_AUTH_GRPC_URL",
    )?;
    assert_start_up_fails_naming(
        &[
            ("MF_THINGS_AUTH_GRPC_URL", "127.0.0.1:1"),
            ("MF_THINGS_AUTH_GRPC_TIMEOUT", "soon"),
        ],
        "MF_THINGS_AUTH_GRPC_TIMEOUT",
    )?;
    let folder = webhooks_tests::TempDir::new("ca");
    let missing = folder.path().join("missing-ca.pem");
    assert_start_up_fails_naming(
        &[
            ("MF_THINGS_AUTH_GRPC_URL", "127.0.0.1:1"),
            ("MF_WEBHOOKS_CLIENT_TLS", "true"),
            ("MF_WEBHOOKS_CA_CERTS", missing.to_str().unwrap()),
        ],
        "MF_WEBHOOKS_CA_CERTS",
    )?;
    assert_start_up_fails_naming(&[("MF_WEBHOOKS_CLIENT_TLS", "perhaps")], "MF_WEBHOOKS_CLIENT_TLS")?;
    assert_start_up_fails_naming(&[("MF_WEBHOOKS_ES_URL", "http://not-redis")], "MF_WEBHOOKS_ES_URL")
}

#[tokio::test]
async fn a_port_that_is_not_a_number_stops_start_up_naming_mf_webhooks_http_port() -> anyhow::Result<()> {
    assert_start_up_fails_naming(&[("MF_WEBHOOKS_HTTP_PORT", "notaport")], "MF_WEBHOOKS_HTTP_PORT")
}

/// Every `MF_WEBHOOKS_*` variable of SPEC.md section 1, with its default where it has a
/// literal one.
const VARIABLES: [(&str, Option<&str>); 7] = [
    ("MF_WEBHOOKS_HTTP_PORT", Some("9021")),
    ("MF_WEBHOOKS_HTTP_HOST", Some("0.0.0.0")),
    ("MF_WEBHOOKS_DB_URL", Some("sqlite://./data/webhooks.db")),
    ("MF_WEBHOOKS_REGISTRY", Some("./examples/registry.json")),
    ("MF_WEBHOOKS_PLUGIN", Some("webhooks_plugin.wasm")),
    ("MF_WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS", Some("false")),
    ("MF_WEBHOOKS_LOG_LEVEL", Some("info")),
];

#[tokio::test]
async fn help_exits_0_and_serve_help_lists_every_variable_with_its_default() -> anyhow::Result<()> {
    let mut top = std::process::Command::new(host_binary());
    top.arg("--help");
    let output = run_to_exit(top, Duration::from_secs(10))?;
    assert_eq!(
        output.status.code(),
        Some(0),
        "--help: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("serve"), "--help names the serve command:\n{help}");

    let mut serve = std::process::Command::new(host_binary());
    serve.args(["serve", "--help"]);
    let output = run_to_exit(serve, Duration::from_secs(10))?;
    assert_eq!(
        output.status.code(),
        Some(0),
        "serve --help: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let help = String::from_utf8_lossy(&output.stdout);
    for (variable, default) in VARIABLES {
        assert!(
            help.contains(variable),
            "serve --help does not mention {variable}:\n{help}"
        );
        if let Some(default) = default {
            assert!(
                help.contains(default),
                "serve --help does not show the default {default} of {variable}:\n{help}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_unreachable_postgresql_stops_start_up_naming_its_address_and_the_cause_but_not_the_password()
-> anyhow::Result<()> {
    let closed = webhooks_tests::free_port();
    let url = format!("postgres://app:pw-never-shown@127.0.0.1:{closed}/webhooks");
    let line = start_up_failure(&[("MF_WEBHOOKS_DB_URL", &url)], "MF_WEBHOOKS_DB_URL")?;
    assert!(line.contains(&format!("127.0.0.1:{closed}")), "{line}");
    assert!(line.to_lowercase().contains("connection refused"), "{line}");
    assert!(!line.contains("pw-never-shown"), "{line}");
    Ok(())
}

#[tokio::test]
async fn an_invalid_log_level_stops_start_up_listing_the_valid_levels() -> anyhow::Result<()> {
    let line = start_up_failure(&[("MF_WEBHOOKS_LOG_LEVEL", "verbose")], "MF_WEBHOOKS_LOG_LEVEL")?;
    assert!(line.contains("verbose"), "{line}");
    assert!(line.contains("debug, info, warn, error"), "{line}");
    Ok(())
}

#[tokio::test]
async fn a_zero_read_timeout_stops_start_up_naming_its_variable() -> anyhow::Result<()> {
    assert_start_up_fails_naming(
        &[("MF_WEBHOOKS_HTTP_READ_TIMEOUT", "0s")],
        "MF_WEBHOOKS_HTTP_READ_TIMEOUT",
    )?;
    assert_start_up_fails_naming(
        &[("MF_WEBHOOKS_HTTP_MAX_CONNECTIONS", "0")],
        "MF_WEBHOOKS_HTTP_MAX_CONNECTIONS",
    )
}

#[tokio::test]
async fn start_up_logs_one_line_with_the_effective_configuration_and_no_secret() -> anyhow::Result<()> {
    let host = TestHost::start_with(
        standard_registry(),
        &[
            ("MF_WEBHOOKS_ALLOW_PRIVATE_DESTINATIONS", "true"),
            ("MF_WEBHOOKS_ADMIN_TOKEN", "admin-token-never-logged"),
        ],
    )
    .await?;
    let log = host.log();
    let lines: Vec<&str> = log.lines().filter(|line| line.contains(" configuration ")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    let line = lines[0];
    let store = host.db_url.split_once("://").map_or("", |(scheme, _)| scheme);
    assert!(line.contains(&format!("store={store}://")), "{line}");
    assert!(line.contains("identity=\"registry file "), "{line}");
    assert!(line.contains("broker=none"), "{line}");
    assert!(line.contains("allow_private_destinations=true"), "{line}");
    assert!(line.contains("admin_endpoint=true"), "{line}");
    assert!(!log.contains("admin-token-never-logged"), "{log}");
    if let Some(password) = host.db_url.split_once("://").and_then(|(_, rest)| {
        rest.split_once('@')
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, password)| password.to_owned())
    }) {
        assert!(!log.contains(&format!(":{password}@")), "{line}");
    }
    Ok(())
}

/// A host process stopped when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The platform's Go webhooks service names its PostgreSQL database with `MF_WEBHOOKS_DB_HOST`,
/// `_DB_PORT`, `_DB_USER`, `_DB_PASS` and `MF_WEBHOOKS_DB`: with those alone, no URL, the host
/// runs on that database (the password left to the Go service's default, which the test
/// server's trust authentication ignores), and what it stores is there for a host given the
/// database's URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_services_database_variables_alone_run_the_host_on_that_postgresql_database() -> anyhow::Result<()> {
    use anyhow::Context;
    let database = webhooks_tests::postgres_database()?;
    // postgres://USER@HOST:PORT/NAME, as the test server's superuser.
    let rest = database.strip_prefix("postgres://").context("a postgres:// URL")?;
    let (user, rest) = rest.split_once('@').context("a user")?;
    let (address, name) = rest.split_once('/').context("a database")?;
    let (address, port) = address.rsplit_once(':').context("a port")?;
    let parts = [
        ("MF_WEBHOOKS_DB_HOST", address),
        ("MF_WEBHOOKS_DB_PORT", port),
        ("MF_WEBHOOKS_DB_USER", user),
        ("MF_WEBHOOKS_DB", name),
        ("MF_WEBHOOKS_DB_SSL_MODE", "disable"),
        ("MF_WEBHOOKS_LOG_LEVEL", "info"),
    ];
    let host = TestHost::prepare(standard_registry(), &parts)?;
    let log = std::fs::File::create(host.log_path())?;
    let mut command = host.command();
    command
        .env_remove("MF_WEBHOOKS_DB_URL")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let running = Running(command.spawn()?);
    eventually(Duration::from_secs(30), || async {
        let response = host.request(Method::GET, "/health", ADMIN).send().await?;
        ensure!(response.status() == StatusCode::OK, "not healthy yet");
        Ok(())
    })
    .await
    .with_context(|| format!("host log:\n{}", host.log()))?;
    let configured = host.log_lines_with(&["configuration", "store"]);
    assert!(
        configured
            .iter()
            .any(|line| line.contains(&format!("@{address}:{port}/{name}"))),
        "the configuration line names the database built from the parts: {configured:?}"
    );
    assert!(
        !host.log().contains(":mainflux@"),
        "the default password is never logged"
    );
    webhooks_tests::flows::add_webhook(&host, THING_1, "from-parts", "https://example.com/parts").await?;
    drop(running);

    let by_url = TestHost::start_with(standard_registry(), &[("MF_WEBHOOKS_DB_URL", database.as_str())]).await?;
    let listed = by_url
        .expect(
            Method::GET,
            &format!("/things/{THING_1}/webhooks"),
            ADMIN,
            None,
            StatusCode::OK,
        )
        .await?;
    let names: Vec<&str> = listed["webhooks"]
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["from-parts"]);
    Ok(())
}

/// A URL and Go-service database parts that disagree stop start-up with one line naming the
/// part, and never the password; so does an SSL mode libpq does not know.
#[test]
fn a_database_url_and_parts_that_disagree_stop_start_up_naming_the_part() -> anyhow::Result<()> {
    let url = ("MF_WEBHOOKS_DB_URL", "postgres://app:s3cret-pw@127.0.0.1:1/hooks");
    for (part, value) in [
        ("MF_WEBHOOKS_DB_PORT", "5433"),
        ("MF_WEBHOOKS_DB_PASS", "another-pw"),
        ("MF_WEBHOOKS_DB", "other"),
    ] {
        let line = start_up_failure(&[url, (part, value)], part)?;
        assert!(
            !line.contains("s3cret-pw") && !line.contains("another-pw"),
            "no password in: {line}"
        );
    }
    assert_start_up_fails_naming(
        &[("MF_WEBHOOKS_DB_URL", "sqlite://./x.db"), ("MF_WEBHOOKS_DB_HOST", "db")],
        "MF_WEBHOOKS_DB_URL",
    )?;
    assert_start_up_fails_naming(
        &[("MF_WEBHOOKS_DB_URL", ""), ("MF_WEBHOOKS_DB_SSL_MODE", "on")],
        "MF_WEBHOOKS_DB_SSL_MODE",
    )?;
    Ok(())
}
