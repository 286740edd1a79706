//! Webhooks are durable: they survive a graceful restart and a crash with exactly the same
//! view; SIGTERM stops the host with exit code 0.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use webhooks_tests::{ADMIN, GROUP_1, GROUP_2, OTHER_ADMIN, THING_1, THING_2, THING_3, TestHost};

/// Creates, updates and removes a few webhooks across both groups.
async fn populate(host: &TestHost) -> anyhow::Result<()> {
    let created = host
        .create(
            THING_1,
            ADMIN,
            json!([
                {"name": "Data pipeline", "url": "https://ingest.example.com/mainflux", "headers": {"X-Api-Key": "k", "x-lower": "v"}, "metadata": {"site": {"line": 4}}},
                {"name": "to update", "url": "http://before.example"},
                {"name": "to remove", "url": "http://gone.example"}
            ]),
        )
        .await?;
    host.create(
        THING_2,
        ADMIN,
        json!({"webhooks": [{"name": "second thing", "url": "http://two.example", "metadata": {"n": 2}}]}),
    )
    .await?;
    host.create(
        THING_3,
        OTHER_ADMIN,
        json!([{"name": "other group", "url": "https://three.example/x"}]),
    )
    .await?;
    let (status, body) = host
        .call(
            Method::PUT,
            &format!("/webhooks/{}", created[1]["id"].as_str().unwrap()),
            ADMIN,
            Some(json!({"name": "updated", "url": "http://after.example", "headers": {"Authorization": "Bearer x"}})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = host
        .call(
            Method::DELETE,
            "/webhooks",
            ADMIN,
            Some(json!({"webhook_ids": [created[2]["id"]]})),
        )
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    Ok(())
}

/// Everything a user can see: both groups' lists, each thing's list and each webhook's view.
async fn snapshot(host: &TestHost) -> anyhow::Result<Value> {
    let mut seen = serde_json::Map::new();
    let lists = [
        (
            format!("/groups/{GROUP_1}/webhooks?limit=200&order=name&dir=asc"),
            ADMIN,
        ),
        (
            format!("/groups/{GROUP_2}/webhooks?limit=200&order=name&dir=asc"),
            OTHER_ADMIN,
        ),
        (format!("/things/{THING_1}/webhooks?limit=200"), ADMIN),
        (format!("/things/{THING_2}/webhooks?limit=200"), ADMIN),
        (format!("/things/{THING_3}/webhooks?limit=200"), OTHER_ADMIN),
    ];
    for (path, token) in lists {
        let (status, page) = host.call(Method::GET, &path, token, None).await?;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        for webhook in page["webhooks"].as_array().unwrap() {
            let id = webhook["id"].as_str().unwrap();
            let (status, view) = host.call(Method::GET, &format!("/webhooks/{id}"), token, None).await?;
            assert_eq!(
                (status, &view),
                (StatusCode::OK, webhook),
                "the view of {id} matches its list entry"
            );
            seen.insert(format!("/webhooks/{id}"), view);
        }
        seen.insert(path, page);
    }
    Ok(Value::Object(seen))
}

fn names_in(snapshot: &Value) -> Vec<&str> {
    let group = &snapshot[format!("/groups/{GROUP_1}/webhooks?limit=200&order=name&dir=asc")];
    group["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn webhooks_survive_a_graceful_restart_with_the_same_view() -> anyhow::Result<()> {
    let mut host = TestHost::start().await?;
    populate(&host).await?;
    let before = snapshot(&host).await?;
    assert_eq!(names_in(&before), ["Data pipeline", "second thing", "updated"]);

    host.restart().await?;
    let after = snapshot(&host).await?;
    assert_eq!(after, before);

    // Names stay reserved across the restart.
    let (status, body) = host
        .call(
            Method::POST,
            &format!("/things/{THING_1}/webhooks"),
            ADMIN,
            Some(json!([{"name": "updated", "url": "http://x.example"}])),
        )
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    Ok(())
}

#[tokio::test]
async fn webhooks_survive_a_sigkill_and_a_new_start_with_the_same_view() -> anyhow::Result<()> {
    let mut host = TestHost::start().await?;
    populate(&host).await?;
    let before = snapshot(&host).await?;
    // The last write answered just before the crash must be there too.
    let last = host
        .create(
            THING_2,
            ADMIN,
            json!([{"name": "just before the crash", "url": "http://late.example"}]),
        )
        .await?;
    host.kill();

    host.start_again().await?;
    let (status, view) = host
        .call(
            Method::GET,
            &format!("/webhooks/{}", last[0]["id"].as_str().unwrap()),
            ADMIN,
            None,
        )
        .await?;
    assert_eq!((status, &view), (StatusCode::OK, &last[0]));
    let (status, body) = host
        .call(
            Method::DELETE,
            "/webhooks",
            ADMIN,
            Some(json!({"webhook_ids": [last[0]["id"]]})),
        )
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let after = snapshot(&host).await?;
    assert_eq!(after, before);
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_the_host_with_exit_code_0() -> anyhow::Result<()> {
    let mut host = TestHost::start().await?;
    host.create(THING_1, ADMIN, json!([{"name": "a", "url": "http://a.example"}]))
        .await?;
    assert_eq!(host.stop()?, Some(0), "log:\n{}", host.log());
    let refused = host.request(Method::GET, "/health", "").send().await;
    assert!(refused.is_err(), "the stopped host still answers: {refused:?}");
    Ok(())
}
