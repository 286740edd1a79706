//! The plugin runtime (SPEC.md section 8): hot swaps through `PUT /admin/plugin` and `SIGHUP`
//! under load without a failed request or a lost message, refusals that leave the old plugin
//! serving, call limits (trap, deadline, memory) that fail one call and spare the others, a
//! delivery whose call trapped retried later, the compile cache on disk, and `check-plugin`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use webhooks_tests::flows::{ALLOW_PRIVATE, PROMPTLY, add_webhook, publish};
use webhooks_tests::receiver::{Receiver, bodies, summary};
use webhooks_tests::{
    ADMIN, THING_1, TempDir, TestHost, eventually, host_binary, plugin_component, plugin_variant, plugin_variant_bytes,
    run_to_exit, standard_registry,
};

/// The admin token of the hosts here.
pub(crate) const PLUGIN_ADMIN: &str = "plugin-admin-secret";
/// The variable that turns `PUT /admin/plugin` on with [`PLUGIN_ADMIN`].
pub(crate) const ADMIN_TOKEN: (&str, &str) = ("MF_WEBHOOKS_ADMIN_TOKEN", PLUGIN_ADMIN);
/// The exported interface a partial component lacks.
const EVENTS: &str = "mainflux:webhooks/events@0.1.4";
/// How long a swap, a signal or a log line may take to show, with room for a compilation on a
/// busy machine.
pub(crate) const SWAP_BOUND: Duration = Duration::from_secs(20);
/// The `name` filter that sets off a fault build's fault in a list call.
pub(crate) const FAULT_QUERY: &str = "?name=fault";

// --- helpers ----------------------------------------------------------------------------------

/// The bytes of the real plugin.
pub(crate) fn real_bytes() -> anyhow::Result<Vec<u8>> {
    let path = plugin_component();
    std::fs::read(&path).with_context(|| format!("reading {} (run `make build`)", path.display()))
}

/// The hex SHA-256 of a file, computed by `sha256sum`, independently of the host.
pub(crate) fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    ensure!(output.status.success(), "sha256sum {} failed", path.display());
    let text = String::from_utf8(output.stdout)?;
    Ok(text
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_owned())
}

/// `PUT /admin/plugin` with these bytes and this `Authorization` header (none when empty),
/// over a raw connection that reads the answer while the body is still being written, so an
/// answer sent before the whole upload was read (as a refusal may be) is seen, not a broken
/// pipe.
async fn put_plugin_early(host: &TestHost, authorization: &str, bytes: &[u8]) -> anyhow::Result<(StatusCode, Value)> {
    let mut request = format!("PUT /admin/plugin HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n", host.port);
    if !authorization.is_empty() {
        request.push_str(&format!("Authorization: {authorization}\r\n"));
    }
    request.push_str(&format!(
        "Content-Type: application/wasm\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        bytes.len()
    ));
    let mut request = request.into_bytes();
    request.extend_from_slice(bytes);
    let answer = host
        .raw_exchange(request)
        .await
        .context("PUT /admin/plugin over a raw connection")?;
    if answer.status.is_client_error() || answer.status.is_server_error() {
        ensure!(
            answer.content_type == "application/json" && answer.body["error"].is_string(),
            "an error answer without the JSON error shape: {answer:?}"
        );
    }
    Ok((answer.status, answer.body))
}

/// Swaps in a component through the admin endpoint, expecting `200` with the documented body
/// naming its hash `sha256`; answers the body and how long the swap took, request to answer.
async fn swap_in(host: &TestHost, bytes: Vec<u8>, sha256: &str) -> anyhow::Result<(Value, Duration)> {
    let started = Instant::now();
    let (status, body) = host.put_plugin(PLUGIN_ADMIN, bytes).await?;
    let took = started.elapsed();
    ensure!(status == StatusCode::OK, "the swap answered {status}: {body}");
    ensure!(body["sha256"] == sha256, "the swap answered another hash: {body}");
    ensure!(body["loaded_at"].is_string(), "loaded_at: {body}");
    ensure!(body["previous_sha256"].is_string(), "previous_sha256: {body}");
    ensure!(body["cached"].is_boolean(), "cached: {body}");
    ensure!(body["load_ms"].is_number(), "load_ms: {body}");
    Ok((body, took))
}

/// The hash of the plugin `/health` reports.
async fn health_sha(host: &TestHost) -> anyhow::Result<String> {
    let (status, body) = host.call(Method::GET, "/health", "", None).await?;
    ensure!(status == StatusCode::OK, "/health answered {status}: {body}");
    ensure!(
        body["plugin"]["loaded_at"].is_string(),
        "/health without plugin.loaded_at: {body}"
    );
    Ok(body["plugin"]["sha256"]
        .as_str()
        .with_context(|| format!("/health without plugin.sha256: {body}"))?
        .to_owned())
}

/// `GET /things/THING_1/webhooks{query}` as the group's admin.
pub(crate) async fn list(host: &TestHost, query: &str) -> anyhow::Result<(StatusCode, Value)> {
    host.call(Method::GET, &format!("/things/{THING_1}/webhooks{query}"), ADMIN, None)
        .await
}

/// Whether a list page came from the `tagged` build: `true` when the page and every webhook in
/// it carry `"variant": "tagged"`, `false` when none does, an error when they disagree.
pub(crate) fn is_tagged(page: &Value) -> anyhow::Result<bool> {
    let tag_of = |value: &Value| -> anyhow::Result<bool> {
        match value.get("variant") {
            None => Ok(false),
            Some(variant) if variant == "tagged" => Ok(true),
            Some(other) => bail!("an unknown variant {other} in {page}"),
        }
    };
    let tagged = tag_of(page)?;
    let webhooks = page["webhooks"]
        .as_array()
        .with_context(|| format!("a list page without a webhooks array: {page}"))?;
    for webhook in webhooks {
        ensure!(tag_of(webhook)? == tagged, "a page mixing two plugin versions: {page}");
    }
    Ok(tagged)
}

/// Lists THING_1's webhooks, expecting `200` with `count` webhooks; answers whether the
/// `tagged` build answered.
async fn list_tagged(host: &TestHost, count: usize) -> anyhow::Result<bool> {
    let (status, page) = list(host, "").await?;
    ensure!(status == StatusCode::OK, "the list answered {status}: {page}");
    let listed = page["webhooks"].as_array().map_or(0, Vec::len);
    ensure!(listed == count, "{listed} webhooks listed, expected {count}: {page}");
    is_tagged(&page)
}

/// A host with the standard registry, the admin endpoint on, and these extra variables.
pub(crate) async fn admin_host(extra: &[(&str, &str)]) -> anyhow::Result<TestHost> {
    let mut env = vec![ADMIN_TOKEN];
    env.extend_from_slice(extra);
    TestHost::start_with(standard_registry(), &env).await
}

// --- 1. hot swap under load -------------------------------------------------------------------

/// Swaps made in the load test, alternating `tagged` and the real plugin.
const SWAPS: usize = 10;
/// Tasks listing webhooks at once during the swaps.
const LISTERS: usize = 4;
/// Messages published, at least, while each version serves in the load test.
const PUBLISHED_PER_SWAP: usize = 10;
/// The receiver paths of THING_1's two webhooks in the load test.
const LOAD_PATHS: [&str; 2] = ["/swap-a", "/swap-b"];

/// How many list answers each version gave during the load test.
#[derive(Default)]
struct Seen {
    tagged: AtomicUsize,
    real: AtomicUsize,
}

impl Seen {
    fn of(&self, tagged: bool) -> usize {
        if tagged {
            self.tagged.load(Ordering::SeqCst)
        } else {
            self.real.load(Ordering::SeqCst)
        }
    }
}

/// Lists THING_1's two webhooks until `stop`, checking each answer is `200` and wholly one
/// version; answers how many calls it made.
async fn keep_listing(host: Arc<TestHost>, stop: Arc<AtomicBool>, seen: Arc<Seen>) -> anyhow::Result<usize> {
    let mut calls = 0;
    while !stop.load(Ordering::SeqCst) {
        let tagged = list_tagged(&host, LOAD_PATHS.len())
            .await
            .with_context(|| format!("list call {calls} during the swaps"))?;
        let counter = if tagged { &seen.tagged } else { &seen.real };
        counter.fetch_add(1, Ordering::SeqCst);
        calls += 1;
    }
    Ok(calls)
}

/// Publishes distinct messages as THING_1 until `stop`, each expecting `202`, counting them in
/// `count`; answers them.
async fn keep_publishing(
    host: Arc<TestHost>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> anyhow::Result<Vec<String>> {
    let mut published = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let payload = format!("during the swaps #{}", published.len());
        publish(&host, "key-1", payload.clone())
            .await
            .with_context(|| format!("publishing {payload:?} during the swaps"))?;
        published.push(payload);
        count.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(published)
}

/// Ten hot swaps between two versions under list and publish load fail no request, lose no
/// message, and each answer comes wholly from one version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_under_load_fails_no_request_and_loses_no_message() -> anyhow::Result<()> {
    swaps_under_load("tagged").await
}

/// The same between the current world and the previous one (the `previous` build lacks the
/// `migration` exports): the host loads it, names its world in `/health`, and moving down and
/// back up under load fails no request, loses no message and answers each call from one version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_to_the_previous_world_and_back_under_load_fails_nothing() -> anyhow::Result<()> {
    swaps_under_load("previous").await
}

/// Ten swaps between the real plugin and the variant `other`, a build that tags its answers.
async fn swaps_under_load(other: &str) -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = Arc::new(admin_host(&[ALLOW_PRIVATE]).await?);
    for path in LOAD_PATHS {
        add_webhook(&host, THING_1, path, &receiver.url(path)).await?;
    }
    let versions = [
        (other, plugin_variant_bytes(other)?, sha256_of(&plugin_variant(other))?),
        ("real", real_bytes()?, sha256_of(&plugin_component())?),
    ];
    ensure!(
        health_sha(&host).await? == versions[1].2,
        "the host did not start on the real plugin"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let listers: Vec<_> = (0..LISTERS)
        .map(|_| tokio::spawn(keep_listing(host.clone(), stop.clone(), seen.clone())))
        .collect();
    let publishing = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn(keep_publishing(host.clone(), stop.clone(), publishing.clone()));

    let mut swap_times = Vec::new();
    let swapping = async {
        for turn in 0..SWAPS {
            let (name, bytes, sha) = &versions[turn % 2];
            let tagged = *name != "real";
            let before = (seen.of(tagged), publishing.load(Ordering::SeqCst));
            let (body, took) = swap_in(&host, bytes.clone(), sha)
                .await
                .with_context(|| format!("swap {turn} to {name}"))?;
            println!(
                "swap {turn} to {name}: {} ms request to answer (load_ms {}, cached {})",
                took.as_millis(),
                body["load_ms"],
                body["cached"]
            );
            swap_times.push(took);
            let (_, _, previous) = &versions[(turn + 1) % 2];
            ensure!(
                body["previous_sha256"] == *previous,
                "swap {turn} replaced another version: {body}"
            );
            ensure!(health_sha(&host).await? == *sha, "/health after swap {turn} to {name}");
            let (_, health) = host.call(Method::GET, "/health", "", None).await?;
            let world = health["plugin"]["world"].as_str().unwrap_or_default().to_owned();
            ensure!(
                world.ends_with("without migration") == (*name == "previous"),
                "/health names the world {world:?} after swap {turn} to {name}"
            );
            // A call made after the swap answered uses the new version.
            ensure!(
                list_tagged(&host, LOAD_PATHS.len()).await? == tagged,
                "a list call after swap {turn} was not answered by {name}"
            );
            // Let the load see this version, and a few messages go out, before the next swap.
            eventually(SWAP_BOUND, || {
                let now = (seen.of(tagged), publishing.load(Ordering::SeqCst));
                async move {
                    ensure!(now.0 > before.0, "no list call of the load answered with {name}");
                    ensure!(
                        now.1 >= before.1 + PUBLISHED_PER_SWAP,
                        "only {} messages published since swap {turn}",
                        now.1 - before.1
                    );
                    Ok(())
                }
            })
            .await?;
        }
        anyhow::Ok(())
    };
    let swapped = swapping.await;
    stop.store(true, Ordering::SeqCst);
    let mut calls = 0;
    for lister in listers {
        calls += lister.await??;
    }
    let published = publisher.await??;
    swapped?;

    let mut sorted: Vec<u128> = swap_times.iter().map(Duration::as_millis).collect();
    sorted.sort_unstable();
    println!(
        "{SWAPS} swaps under load, request to answer (ms): {sorted:?}; {calls} list calls \
         ({} {other}, {} real), {} messages published",
        seen.of(true),
        seen.of(false),
        published.len()
    );
    ensure!(
        seen.of(true) > 0 && seen.of(false) > 0,
        "both versions answered the load"
    );
    ensure!(!published.is_empty(), "nothing was published during the swaps");

    let mut expected = published.clone();
    expected.sort();
    for path in LOAD_PATHS {
        let got = receiver
            .wait_for(Some(path), published.len(), 6 * PROMPTLY)
            .await
            .with_context(|| format!("deliveries to {path}"))?;
        let mut distinct = bodies(&got);
        distinct.dedup();
        ensure!(
            distinct == expected,
            "{path} got {} distinct payloads of {} published",
            distinct.len(),
            expected.len()
        );
        // Nothing failed, so nothing was sent twice either.
        receiver.exactly_after_a_while(path, published.len()).await?;
    }
    Ok(())
}

// --- 2. refused swaps -------------------------------------------------------------------------

/// Components that do not implement the world, bodies that are no component, an empty body and
/// a missing or wrong token are refused, and the old plugin keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_swap_leaves_the_old_plugin_serving() -> anyhow::Result<()> {
    let host = admin_host(&[]).await?;
    add_webhook(&host, THING_1, "still here", "https://example.com/hook").await?;
    let original = health_sha(&host).await?;
    ensure!(
        original == sha256_of(&plugin_component())?,
        "started on the real plugin"
    );

    let (status, body) = host.put_plugin(PLUGIN_ADMIN, plugin_variant_bytes("partial")?).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "partial: {body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("does not implement the webhooks world") && error.contains(EVENTS),
        "partial: {body}"
    );

    let mut garbage = b"\0asm but not really: ".to_vec();
    garbage.extend((0..4096u32).map(|i| (i * 31 % 256) as u8));
    for (what, bytes) in [("garbage", garbage), ("text", b"hello, plugin".to_vec())] {
        let (status, body) = host.put_plugin(PLUGIN_ADMIN, bytes).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("not a valid WebAssembly component"),
            "{what}: {body}"
        );
    }

    let (status, body) = host.put_plugin(PLUGIN_ADMIN, Vec::new()).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "empty body: {body}");

    // A good component with a bad token would show as a swap if the token were not checked.
    let tagged = plugin_variant_bytes("tagged")?;
    for (what, authorization) in [
        ("wrong token", "Bearer not-the-admin-token".to_owned()),
        ("no token", String::new()),
        ("a user's token", format!("Bearer {ADMIN}")),
        ("the token without Bearer", PLUGIN_ADMIN.to_owned()),
        ("the token as a thing key", format!("Thing {PLUGIN_ADMIN}")),
    ] {
        let (status, body) = put_plugin_early(&host, &authorization, &tagged).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    }

    assert_eq!(health_sha(&host).await?, original, "a refused swap changed the plugin");
    assert!(!list_tagged(&host, 1).await?, "the real plugin still answers");
    assert!(
        !host.log_lines_with(&["plugin swap refused"]).is_empty(),
        "refusals are logged; log:\n{}",
        host.log()
    );
    Ok(())
}

/// Without an admin token, or with an empty one, the admin endpoint does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_does_not_exist_without_an_admin_token() -> anyhow::Result<()> {
    let tagged = plugin_variant_bytes("tagged")?;
    let real = sha256_of(&plugin_component())?;
    for env in [vec![], vec![("MF_WEBHOOKS_ADMIN_TOKEN", "")]] {
        let host = TestHost::start_with(standard_registry(), &env).await?;
        for token in ["", PLUGIN_ADMIN, ADMIN] {
            let authorization = if token.is_empty() {
                String::new()
            } else {
                format!("Bearer {token}")
            };
            let (status, body) = put_plugin_early(&host, &authorization, &tagged).await?;
            assert_eq!(status, StatusCode::NOT_FOUND, "{env:?}, token {token:?}: {body}");
            assert_eq!(body["error"], "no such endpoint", "{env:?}, token {token:?}");
        }
        assert_eq!(health_sha(&host).await?, real, "{env:?}");
    }
    Ok(())
}

// --- 3. faulty plugins ------------------------------------------------------------------------

/// What a fault test saw of its faulty call and the good call made beside it.
struct Fault {
    /// How long the faulty call took to be answered.
    faulty_took: Duration,
    /// How long the good call took.
    good_took: Duration,
    /// Whether the faulty call was still running when the good one was answered.
    overlapped: bool,
    /// Whether the faulty call was still running when the swap back to the real plugin was
    /// answered.
    swapped_while_running: bool,
}

/// Swaps in a fault build and makes its faulty list call; meanwhile makes a good call and swaps
/// the real plugin back. Checks the faulty call fails with `status`, a JSON error and an ERROR
/// line, the good call succeeds, and the same call on the real plugin answers `200`.
async fn faulty_call_fails_alone(variant: &str, extra: &[(&str, &str)], status: StatusCode) -> anyhow::Result<Fault> {
    let host = Arc::new(admin_host(extra).await?);
    add_webhook(&host, THING_1, "fault", "https://example.com/fault").await?;
    add_webhook(&host, THING_1, "fine", "https://example.com/fine").await?;
    let sha = sha256_of(&plugin_variant(variant))?;
    swap_in(&host, plugin_variant_bytes(variant)?, &sha).await?;
    assert_eq!(health_sha(&host).await?, sha);

    let started = Instant::now();
    let faulty = tokio::spawn({
        let host = host.clone();
        async move {
            let answer = list(&host, FAULT_QUERY).await;
            (answer, started.elapsed())
        }
    });
    // Give the faulty call time to reach the plugin, then make a good call beside it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let good_started = Instant::now();
    let good = list_tagged(&host, 2).await.context("a good call beside the faulty one");
    let good_took = good_started.elapsed();
    let overlapped = !faulty.is_finished();
    // The real plugin back at once: a call already running finishes on the version it began on.
    let real_sha = sha256_of(&plugin_component())?;
    let (_, swap_took) = swap_in(&host, real_bytes()?, &real_sha).await?;
    let swapped_while_running = !faulty.is_finished();
    let (answer, took) = faulty.await?;
    let (faulty_status, body) = answer.context("the faulty call")?;
    println!(
        "{variant}: faulty call {faulty_status} after {} ms; good call beside it {} ms (faulty still running: \
         {overlapped}); swap back {} ms (faulty still running: {swapped_while_running})",
        took.as_millis(),
        good_took.as_millis(),
        swap_took.as_millis()
    );
    assert!(!good?, "{variant} answers untagged");
    assert_eq!(faulty_status, status, "{variant}: {body}");
    // `read` has checked the JSON error shape; say what it was.
    assert!(body["error"].is_string(), "{variant}: {body}");
    host.logged(&["ERROR", status.as_str()], SWAP_BOUND).await?;

    // The host goes on, and the same call on the real plugin is fine.
    assert_eq!(health_sha(&host).await?, real_sha);
    assert!(!list_tagged(&host, 2).await?, "{variant}: a good call after the fault");
    let (status, page) = list(&host, FAULT_QUERY).await?;
    assert_eq!(status, StatusCode::OK, "the real plugin after {variant}: {page}");
    assert_eq!(page["webhooks"].as_array().map(Vec::len), Some(1), "{page}");
    Ok(Fault {
        faulty_took: took,
        good_took,
        overlapped,
        swapped_while_running,
    })
}

/// A plugin call that traps fails with `500` and a JSON error; other calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_call_answers_500_and_other_calls_go_on() -> anyhow::Result<()> {
    faulty_call_fails_alone("trap", &[], StatusCode::INTERNAL_SERVER_ERROR).await?;
    Ok(())
}

/// A plugin call that never returns is stopped at the deadline with `503`; a good call and a
/// swap made while it spins answer at once, and it ends on the version it began on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_deadline_answers_503_and_does_not_hold_up_other_calls() -> anyhow::Result<()> {
    let deadline = ("MF_WEBHOOKS_PLUGIN_DEADLINE", "1s");
    let delivery = ("MF_WEBHOOKS_DELIVERY_TIMEOUT", "2s");
    let fault = faulty_call_fails_alone("spin", &[deadline, delivery], StatusCode::SERVICE_UNAVAILABLE).await?;
    assert!(
        fault.overlapped,
        "the good call was answered only after the spinning one was stopped ({:?})",
        fault.good_took
    );
    assert!(
        fault.swapped_while_running,
        "the swap waited for the spinning call to be stopped"
    );
    assert!(
        fault.faulty_took >= Duration::from_secs(1),
        "the spinning call was stopped before its deadline, after {:?}",
        fault.faulty_took
    );
    assert!(
        fault.faulty_took < Duration::from_secs(5),
        "the spinning call was answered only after {:?}",
        fault.faulty_took
    );
    Ok(())
}

/// A plugin call that allocates past the memory limit fails with `500`; other calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_memory_limit_answers_500_and_other_calls_go_on() -> anyhow::Result<()> {
    let memory = ("MF_WEBHOOKS_PLUGIN_MEMORY", "32MiB");
    faulty_call_fails_alone("grow", &[memory], StatusCode::INTERNAL_SERVER_ERROR).await?;
    Ok(())
}

/// A call's deadline starts once it has an instance: a call queued behind others for most of
/// its deadline still gets all of it, so a delivery batch is never stopped between sending its
/// requests and recording their outcomes because it waited for a free instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_queued_for_an_instance_does_not_count_against_a_calls_deadline() -> anyhow::Result<()> {
    use webhooks_host::runtime::{CompileCache, Limits, Runtime};
    use webhooks_host::settings::DeliverySettings;

    let dir = TempDir::new("runtime-queue");
    let capabilities = webhooks_tests::in_process_capabilities(dir.path(), DeliverySettings::default()).await?;
    // One instance at a time, and calls that each hold it for 70 % of the deadline, waiting
    // inside the call as a batch waits on its receivers and the store.
    let limits = Limits {
        deadline: Duration::from_secs(1),
        max_instances: 1,
        ..Limits::default()
    };
    let cache = CompileCache::new(Some(dir.path().join("cache")));
    let runtime = Runtime::new(&plugin_component(), limits, capabilities, cache)?;
    let held = Duration::from_millis(700);
    let call = |runtime: Arc<Runtime>| async move {
        runtime
            .call("test", move |_, _| {
                Box::pin(async move {
                    tokio::time::sleep(held).await;
                    Ok(())
                })
            })
            .await
    };
    let started = Instant::now();
    let (first, second) = tokio::join!(call(runtime.clone()), call(runtime.clone()));
    let took = started.elapsed();
    assert!(first.is_ok(), "the first call failed: {first:?}");
    assert!(
        second.is_ok(),
        "the queued call was stopped after {took:?} although it held its instance for {held:?} of its 1 s deadline: {second:?}"
    );
    assert!(took >= 2 * held, "the calls ran one after the other ({took:?})");
    Ok(())
}

// --- 4. a delivery whose call trapped -----------------------------------------------------------

/// A delivery whose plugin call trapped stays pending and arrives, once, when a working plugin
/// is swapped back in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_call_trapped_is_retried_later_and_not_lost() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let host = admin_host(&[ALLOW_PRIVATE]).await?;
    let webhook = add_webhook(&host, THING_1, "trapped", &receiver.url("/trapped")).await?;
    swap_in(
        &host,
        plugin_variant_bytes("trap")?,
        &sha256_of(&plugin_variant("trap"))?,
    )
    .await?;

    publish(&host, "key-1", "kept through a trap").await?;
    host.logged(&["ERROR", "delivery batch failed"], PROMPTLY).await?;
    // Several polls bring the delivery back to the trapping plugin meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        receiver.count() == 0,
        "the trapping plugin delivered: {:?}",
        summary(&receiver.received())
    );
    let (status, page) = host
        .call(Method::GET, &format!("/webhooks/{webhook}/deliveries"), ADMIN, None)
        .await?;
    ensure!(status == StatusCode::OK, "the delivery log answered {status}: {page}");
    ensure!(
        page["deliveries"][0]["status"] == "pending",
        "the delivery is not pending while the plugin traps: {page:#}"
    );

    swap_in(&host, real_bytes()?, &sha256_of(&plugin_component())?).await?;
    let got = receiver.wait_for(Some("/trapped"), 1, PROMPTLY).await?;
    assert_eq!(bodies(&got), ["kept through a trap"]);
    receiver.exactly_after_a_while("/trapped", 1).await?;
    let (_, page) = host
        .call(Method::GET, &format!("/webhooks/{webhook}/deliveries"), ADMIN, None)
        .await?;
    let deliveries = page["deliveries"].as_array().context("a deliveries array")?;
    assert_eq!(deliveries.len(), 1, "{page:#}");
    assert_eq!(deliveries[0]["status"], "delivered", "{page:#}");
    assert_eq!(
        deliveries[0]["attempts"].as_array().map(Vec::len),
        Some(1),
        "a trapped call is no attempt: {page:#}"
    );
    Ok(())
}

// --- 5. SIGHUP --------------------------------------------------------------------------------

/// Replaces a file by writing a temporary file beside it and renaming it over.
fn replace_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension("wasm.new");
    std::fs::write(&temporary, bytes).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("renaming over {}", path.display()))?;
    Ok(())
}

/// SIGHUP swaps in the plugin file as it is now; a file that does not implement the world is
/// logged and the old plugin keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_in_the_plugin_file_and_a_refused_one_leaves_the_old_serving() -> anyhow::Result<()> {
    let folder = TempDir::new("sighup");
    let file = folder.path().join("plugin.wasm");
    std::fs::copy(plugin_component(), &file).context("copying the plugin")?;
    let file_env = file.to_str().context("a UTF-8 path")?.to_owned();
    let host = TestHost::start_with(standard_registry(), &[("MF_WEBHOOKS_PLUGIN", &file_env)]).await?;
    add_webhook(&host, THING_1, "signalled", "https://example.com/hook").await?;
    assert_eq!(health_sha(&host).await?, sha256_of(&plugin_component())?);
    assert!(!list_tagged(&host, 1).await?);

    replace_file(&file, &plugin_variant_bytes("tagged")?)?;
    let tagged = sha256_of(&file)?;
    host.signal("HUP")?;
    eventually(SWAP_BOUND, || async {
        let now = health_sha(&host).await?;
        ensure!(now == tagged, "/health still shows {now}");
        Ok(())
    })
    .await?;
    assert!(list_tagged(&host, 1).await?, "after SIGHUP the tagged build answers");
    host.logged(&["SIGHUP: plugin swapped", &tagged], SWAP_BOUND).await?;

    replace_file(&file, &plugin_variant_bytes("partial")?)?;
    host.signal("HUP")?;
    let line = host.logged(&["SIGHUP: plugin refused"], SWAP_BOUND).await?;
    assert!(line.contains(EVENTS), "the refusal names the missing export: {line}");
    assert_eq!(health_sha(&host).await?, tagged, "a refused file replaced the plugin");
    assert!(list_tagged(&host, 1).await?, "the tagged build still answers");
    Ok(())
}

// --- 6. the compile cache ---------------------------------------------------------------------

/// The `cached=` value of every "plugin loaded" line of the host's log, in order.
fn load_origins(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("plugin loaded"))
        .map(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("cached="))
                .unwrap_or("(no cached= field)")
                .to_owned()
        })
        .collect()
}

/// The files in a folder, by name, sorted.
fn files_in(folder: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = std::fs::read_dir(folder)
        .with_context(|| format!("reading {}", folder.display()))?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// Whether a cache file's name is `<sha256>-<16 hex>.cwasm` for this component hash.
fn is_cache_file_of(name: &str, sha256: &str) -> bool {
    name.strip_prefix(sha256)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_suffix(".cwasm"))
        .is_some_and(|hash| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The first start compiles and fills the cache, a restart maps the cached code, and an
/// unusable cache file is logged and compiled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_maps_the_cached_plugin_and_an_unusable_cache_file_is_compiled_again() -> anyhow::Result<()> {
    let folder = TempDir::new("plugin-cache");
    // Not there yet: the host creates it when it first writes.
    let cache = folder.path().join("compiled");
    let cache_env = cache.to_str().context("a UTF-8 path")?.to_owned();
    let mut host = TestHost::start_with(standard_registry(), &[("MF_WEBHOOKS_PLUGIN_CACHE", &cache_env)]).await?;
    let sha = sha256_of(&plugin_component())?;
    assert_eq!(load_origins(&host.log()), ["false"], "the first start compiles");
    let files = files_in(&cache)?;
    assert!(
        files.len() == 1 && is_cache_file_of(&files[0], &sha),
        "one compiled plugin named after its hash {sha}: {files:?}"
    );
    let compiled = cache.join(&files[0]);

    host.restart().await?;
    assert_eq!(
        load_origins(&host.log()),
        ["false", "true"],
        "a restart maps the cached code"
    );
    assert!(!list_tagged(&host, 0).await?, "the cached plugin serves");

    host.stop()?;
    std::fs::write(&compiled, b"this is not compiled code")?;
    host.start_again().await?;
    assert_eq!(
        load_origins(&host.log()),
        ["false", "true", "false"],
        "an unusable cache file is compiled again"
    );
    let warning = host
        .logged(&["WARN", "unusable compiled plugin in the cache"], PROMPTLY)
        .await?;
    assert!(warning.contains(&files[0]), "the warning names the file: {warning}");
    assert!(!list_tagged(&host, 0).await?, "the recompiled plugin serves");
    assert_eq!(
        files_in(&cache)?,
        files,
        "the file is written again under the same name"
    );

    host.restart().await?;
    assert_eq!(
        load_origins(&host.log()),
        ["false", "true", "false", "true"],
        "the rewritten cache file is used"
    );
    Ok(())
}

/// A host started by hand in its own working folder, killed when dropped.
struct HandStarted(Child);

impl Drop for HandStarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the host's command in `working` with its output appended to its log, and waits
/// until it is healthy.
async fn start_in(host: &TestHost, working: &Path) -> anyhow::Result<HandStarted> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(host.log_path())?;
    let child = host
        .command()
        .current_dir(working)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", host_binary().display()))?;
    let mut started = HandStarted(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = started.0.try_wait()? {
            bail!("the host exited with {status} during start-up; log:\n{}", host.log());
        }
        if health_sha(host).await.is_ok() {
            return Ok(started);
        }
        ensure!(
            Instant::now() < deadline,
            "not healthy after 30 s; log:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An empty `MF_WEBHOOKS_PLUGIN_CACHE` turns the cache off: every start compiles and nothing
/// is written, not even to the default folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_cache_setting_compiles_at_every_start_and_writes_nothing() -> anyhow::Result<()> {
    let host = TestHost::prepare(standard_registry(), &[("MF_WEBHOOKS_PLUGIN_CACHE", "")])?;
    // The default cache folder is relative to the working folder: run in an empty one.
    let working = TempDir::new("no-cache");
    for start in 0..2 {
        let running = start_in(&host, working.path()).await?;
        drop(running);
        let origins = load_origins(&host.log());
        assert_eq!(origins.len(), start + 1, "{}", host.log());
        assert!(origins.iter().all(|o| o == "false"), "start {start}: {origins:?}");
    }
    assert_eq!(
        files_in(working.path())?,
        Vec::<String>::new(),
        "the host wrote into its working folder"
    );
    Ok(())
}

// --- 7. check-plugin --------------------------------------------------------------------------

/// Runs `webhooks-host check-plugin FILE`; answers its exit code, stdout and stderr.
fn check_plugin(file: &Path) -> anyhow::Result<(Option<i32>, String, String)> {
    let mut command = Command::new(host_binary());
    command.arg("check-plugin").arg(file).env_remove("MF_WEBHOOKS_PLUGIN");
    let output = run_to_exit(command, Duration::from_secs(60))?;
    Ok((
        output.status.code(),
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?,
    ))
}

/// The indented names under a heading such as `imports:` in check-plugin's report.
fn section(report: &str, heading: &str) -> Vec<String> {
    report
        .lines()
        .skip_while(|line| *line != heading)
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .map(|line| line.trim().to_owned())
        .collect()
}

/// check-plugin accepts a component implementing the world and reports its hash, imports and
/// exports.
#[test]
fn check_plugin_accepts_the_real_plugin_and_lists_its_imports_and_exports() -> anyhow::Result<()> {
    let file = plugin_component();
    let (code, stdout, stderr) = check_plugin(&file)?;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.lines().next().is_some_and(|l| l.starts_with("ok: ")), "{stdout}");
    let sha = sha256_of(&file)?;
    assert!(stdout.lines().any(|l| l == format!("sha256: {sha}")), "{stdout}");
    let imports = section(&stdout, "imports:");
    assert!(imports.iter().any(|i| i == "mainflux:webhooks/store@0.1.4"), "{stdout}");
    let exports = section(&stdout, "exports:");
    for export in [
        "mainflux:webhooks/api@0.1.4",
        "mainflux:webhooks/attempts@0.1.4",
        EVENTS,
    ] {
        assert!(exports.iter().any(|e| e == export), "{export} not among {exports:?}");
    }
    Ok(())
}

/// check-plugin accepts a component built for the world before the `migration` exports, and
/// says so: the host loads it and turns off only the import.
#[test]
fn check_plugin_accepts_a_plugin_of_the_previous_world_and_names_what_it_lacks() -> anyhow::Result<()> {
    let file = plugin_variant("previous");
    ensure!(file.exists(), "{} missing (run `make plugin-variants`)", file.display());
    let (code, stdout, stderr) = check_plugin(&file)?;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("ok: ") && first.ends_with("without migration)"),
        "{stdout}"
    );
    let exports = section(&stdout, "exports:");
    assert!(!exports.iter().any(|e| e.contains("migration")), "{exports:?}");
    assert!(exports.iter().any(|e| e == EVENTS), "{exports:?}");
    Ok(())
}

/// check-plugin refuses a component lacking an export, naming it, with exit code 1.
#[test]
fn check_plugin_refuses_a_component_lacking_an_export_and_names_it() -> anyhow::Result<()> {
    let file = plugin_variant("partial");
    ensure!(file.exists(), "{} missing (run `make plugin-variants`)", file.display());
    let (code, stdout, stderr) = check_plugin(&file)?;
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.starts_with("refused: ") && first.contains(EVENTS), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l == format!("sha256: {}", sha256_of(&file).unwrap_or_default()))
    );
    assert_eq!(
        section(&stdout, "exports:"),
        ["mainflux:webhooks/api@0.1.4"],
        "{stdout}"
    );
    assert!(!section(&stdout, "imports:").is_empty(), "{stdout}");
    Ok(())
}

/// check-plugin answers a file that is no component, or no file, with one line on stderr and
/// exit code 1.
#[test]
fn check_plugin_reports_a_file_that_is_not_a_component_or_does_not_exist() -> anyhow::Result<()> {
    let folder = TempDir::new("check-plugin");
    let text = folder.path().join("notes.wasm");
    std::fs::write(&text, "this is not WebAssembly")?;
    let missing: PathBuf = folder.path().join("missing.wasm");
    for (what, file) in [("not wasm", &text), ("missing", &missing)] {
        let (code, stdout, stderr) = check_plugin(file)?;
        assert_eq!(code, Some(1), "{what}: stdout:\n{stdout}\nstderr:\n{stderr}");
        assert_eq!(stdout, "", "{what}");
        assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
        assert!(stderr.starts_with("webhooks-host: "), "{what}: {stderr}");
        assert!(
            stderr.contains(&*file.to_string_lossy()),
            "{what} names the file: {stderr}"
        );
    }
    Ok(())
}

/// `GET /admin/plugin` names the active version (hash, world, how it became active) and the
/// earlier ones, newest first; `POST /admin/plugin/rollback` makes the previous one active again
/// at once (its compiled code kept), answering it, and a second rollback undoes the first; with
/// nothing earlier it is `409`; both need the admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_versions_are_listed_and_a_rollback_makes_the_previous_one_active_again() -> anyhow::Result<()> {
    let host = TestHost::start_with(standard_registry(), &[ADMIN_TOKEN]).await?;
    let real = sha256_of(&plugin_component())?;
    let tagged = sha256_of(&plugin_variant("tagged"))?;
    add_webhook(&host, THING_1, "kept", "https://example.com/kept").await?;

    let admin = |method: Method, path: &'static str| host.call(method, path, PLUGIN_ADMIN, None);
    let (status, body) = admin(Method::POST, "/admin/plugin/rollback").await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("no earlier")),
        "{body}"
    );
    let (status, versions) = admin(Method::GET, "/admin/plugin").await?;
    assert_eq!(status, StatusCode::OK, "{versions}");
    assert_eq!(versions["active"]["sha256"], real.as_str());
    assert_eq!(versions["active"]["source"], "file");
    assert_eq!(versions["active"]["world"], "mainflux:webhooks/webhooks@0.1.4");
    assert_eq!(versions["candidate"], Value::Null);
    assert_eq!(versions["history"], serde_json::json!([]));

    swap_in(&host, plugin_variant_bytes("tagged")?, &tagged).await?;
    assert!(is_tagged(&list(&host, "").await?.1)?);
    let (_, versions) = admin(Method::GET, "/admin/plugin").await?;
    assert_eq!(
        (&versions["active"]["sha256"], &versions["active"]["source"]),
        (&Value::from(tagged.as_str()), &Value::from("admin"))
    );
    assert_eq!(versions["history"][0]["sha256"], real.as_str());

    let started = Instant::now();
    let (status, body) = admin(Method::POST, "/admin/plugin/rollback").await?;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active"]["sha256"], real.as_str());
    assert_eq!(body["active"]["source"], "rollback");
    assert!(took < Duration::from_secs(1), "a rollback compiles nothing: {took:?}");
    let (status, page) = list(&host, "").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(!is_tagged(&page)?, "new calls use the version rolled back to: {page}");
    assert_eq!(page["total"], 1, "the data is untouched: {page}");
    assert_eq!(health_sha(&host).await?, real);
    let (_, versions) = admin(Method::GET, "/admin/plugin").await?;
    assert_eq!(versions["history"][0]["sha256"], tagged.as_str());

    let (status, body) = admin(Method::POST, "/admin/plugin/rollback").await?;
    assert_eq!(
        (status, &body["active"]["sha256"]),
        (StatusCode::OK, &Value::from(tagged.as_str()))
    );
    assert!(
        is_tagged(&list(&host, "").await?.1)?,
        "a second rollback undoes the first"
    );

    for path in ["/admin/plugin", "/admin/plugin/rollback"] {
        let method = if path.ends_with("rollback") {
            Method::POST
        } else {
            Method::GET
        };
        let (status, _) = host.call(method, path, "wrong-token", None).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let without = TestHost::start().await?;
    let (status, _) = without.call(Method::GET, "/admin/plugin", PLUGIN_ADMIN, None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "off without an admin token");
    Ok(())
}
