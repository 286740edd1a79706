//! Creating, viewing, updating and removing webhooks (SPEC.md section 2), all or nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use webhooks_tests::flows::is_uuid;
use webhooks_tests::{ADMIN, EDITOR, GROUP_1, GROUP_2, OTHER_ADMIN, THING_1, THING_2, THING_3, TestHost, VIEWER};

/// Whether `text` is a UUID of version 4 (random), RFC 9562 variant, in its canonical form.
fn is_uuid_v4(text: &str) -> bool {
    let bytes = text.as_bytes();
    is_uuid(text) && text == text.to_ascii_lowercase() && bytes[14] == b'4' && b"89ab".contains(&bytes[19])
}

fn id_of(webhook: &Value) -> String {
    webhook["id"].as_str().expect("a webhook has a string id").to_owned()
}

/// Every webhook of a thing, as the admin sees it, sorted by name.
async fn names_of_thing(host: &TestHost, thing: &str) -> anyhow::Result<Vec<String>> {
    let (status, page) = host
        .call(
            Method::GET,
            &format!("/things/{thing}/webhooks?limit=200&order=name&dir=asc"),
            ADMIN,
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    let names: Vec<String> = page["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(page["total"], names.len(), "{page}");
    Ok(names)
}

async fn view(host: &TestHost, id: &str) -> anyhow::Result<(StatusCode, Value)> {
    host.call(Method::GET, &format!("/webhooks/{id}"), ADMIN, None).await
}

#[tokio::test]
async fn create_answers_201_with_the_created_webhooks_in_input_order() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let (status, body) = host
        .call(
            Method::POST,
            &format!("/things/{THING_1}/webhooks"),
            EDITOR,
            Some(json!([
                {
                    "name": "Data pipeline",
                    "url": "https://ingest.example.com/mainflux",
                    "headers": {"X-Api-Key": "secret", "x-lower-case": "v", "X-MiXeD-CaSe": "a b\tc"},
                    "metadata": {"site": "plant-a", "nested": {"level": 2, "list": [1, "two"]}}
                },
                {
                    "name": "ignores assigned fields",
                    "url": "http://receiver.example:8080/hook?x=1",
                    "id": "c3d4e5f6-a7b8-4012-8def-123456789012",
                    "thing_id": THING_3,
                    "group_id": GROUP_2
                },
                {"name": "another", "url": "https://b.example", "headers": {}, "metadata": {}}
            ])),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let created = body.as_array().expect("an array of webhooks");
    let names: Vec<&str> = created.iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Data pipeline", "ignores assigned fields", "another"]);

    for webhook in created {
        assert!(
            is_uuid_v4(webhook["id"].as_str().unwrap()),
            "id is not a UUID v4: {webhook}"
        );
        assert_eq!(webhook["thing_id"], THING_1, "{webhook}");
        assert_eq!(webhook["group_id"], GROUP_1, "{webhook}");
    }
    let ids: std::collections::BTreeSet<String> = created.iter().map(id_of).collect();
    assert_eq!(ids.len(), 3, "ids are distinct");
    assert_ne!(created[1]["id"], "c3d4e5f6-a7b8-4012-8def-123456789012");

    assert_eq!(
        created[0],
        json!({
            "id": created[0]["id"],
            "thing_id": THING_1,
            "group_id": GROUP_1,
            "name": "Data pipeline",
            "url": "https://ingest.example.com/mainflux",
            "headers": {"X-Api-Key": "secret", "x-lower-case": "v", "X-MiXeD-CaSe": "a b\tc"},
            "metadata": {"site": "plant-a", "nested": {"level": 2, "list": [1, "two"]}}
        })
    );
    for empty in &created[1..] {
        assert!(empty.get("headers").is_none(), "empty headers are omitted: {empty}");
        assert!(empty.get("metadata").is_none(), "empty metadata is omitted: {empty}");
    }
    assert_eq!(created[1]["url"], "http://receiver.example:8080/hook?x=1");
    Ok(())
}

#[tokio::test]
async fn create_accepts_an_object_with_a_webhooks_array() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let created = host
        .create(
            THING_1,
            ADMIN,
            json!({"webhooks": [{"name": "first", "url": "http://a.example"}, {"name": "second", "url": "http://b.example"}]}),
        )
        .await?;
    let names: Vec<&str> = created.iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["first", "second"]);
    assert_eq!(names_of_thing(&host, THING_1).await?, ["first", "second"]);
    Ok(())
}

#[tokio::test]
async fn view_answers_the_webhook_as_created() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let created = host
        .create(
            THING_2,
            EDITOR,
            json!([{"name": "viewed", "url": "https://v.example/p", "headers": {"Authorization": "Basic eA=="}, "metadata": {"k": [1]}}]),
        )
        .await?;
    let id = id_of(&created[0]);
    for token in [ADMIN, EDITOR, VIEWER] {
        let (status, body) = host.call(Method::GET, &format!("/webhooks/{id}"), token, None).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, created[0]);
    }
    assert_eq!(created[0]["thing_id"], THING_2);
    assert_eq!(created[0]["headers"], json!({"Authorization": "Basic eA=="}));
    Ok(())
}

#[tokio::test]
async fn update_replaces_name_url_headers_and_metadata() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let created = host
        .create(
            THING_1,
            EDITOR,
            json!([{"name": "before", "url": "http://before.example", "headers": {"X-Old": "1"}, "metadata": {"old": true}}]),
        )
        .await?;
    let id = id_of(&created[0]);

    let response = host
        .request(Method::PUT, &format!("/webhooks/{id}"), EDITOR)
        .json(&json!({
            "name": "after",
            "url": "https://after.example/v2",
            "headers": {"X-New-Header": "2"},
            "metadata": {"new": {"deep": 1}},
            "id": "ffffffff-ffff-4fff-8fff-ffffffffffff",
            "thing_id": THING_3
        }))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await?.is_empty(), "PUT answers an empty body");

    let (status, body) = view(&host, &id).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "id": id,
            "thing_id": THING_1,
            "group_id": GROUP_1,
            "name": "after",
            "url": "https://after.example/v2",
            "headers": {"X-New-Header": "2"},
            "metadata": {"new": {"deep": 1}}
        })
    );

    // A replacement without headers and metadata clears them.
    let (status, body) = host
        .call(
            Method::PUT,
            &format!("/webhooks/{id}"),
            ADMIN,
            Some(json!({"name": "after", "url": "http://bare.example"})),
        )
        .await?;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));
    let (_, body) = view(&host, &id).await?;
    assert_eq!(
        body,
        json!({"id": id, "thing_id": THING_1, "group_id": GROUP_1, "name": "after", "url": "http://bare.example"})
    );
    Ok(())
}

#[tokio::test]
async fn renaming_frees_the_old_name() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let created = host
        .create(
            THING_1,
            EDITOR,
            json!([{"name": "old name", "url": "http://h.example"}]),
        )
        .await?;
    let id = id_of(&created[0]);
    let (status, _) = host
        .call(
            Method::PUT,
            &format!("/webhooks/{id}"),
            EDITOR,
            Some(json!({"name": "new name", "url": "http://h.example"})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    let again = host
        .create(
            THING_1,
            EDITOR,
            json!([{"name": "old name", "url": "http://h.example"}]),
        )
        .await?;
    assert_eq!(again[0]["name"], "old name");
    assert_eq!(names_of_thing(&host, THING_1).await?, ["new name", "old name"]);
    Ok(())
}

#[tokio::test]
async fn renaming_to_a_name_taken_on_the_same_thing_is_409_and_changes_nothing() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let created = host
        .create(
            THING_1,
            EDITOR,
            json!([{"name": "taken", "url": "http://a.example"}, {"name": "mine", "url": "http://b.example"}]),
        )
        .await?;
    let id = id_of(&created[1]);
    let (status, body) = host
        .call(
            Method::PUT,
            &format!("/webhooks/{id}"),
            EDITOR,
            Some(json!({"name": "taken", "url": "http://c.example"})),
        )
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(view(&host, &id).await?.1, created[1]);
    // Keeping its own name is no conflict.
    let (status, _) = host
        .call(
            Method::PUT,
            &format!("/webhooks/{id}"),
            EDITOR,
            Some(json!({"name": "mine", "url": "http://c.example"})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view(&host, &id).await?.1["url"], "http://c.example");
    Ok(())
}

#[tokio::test]
async fn delete_removes_the_listed_webhooks_with_204() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let created = host
        .create(
            THING_1,
            EDITOR,
            json!([{"name": "a", "url": "http://a.example"}, {"name": "b", "url": "http://b.example"}, {"name": "c", "url": "http://c.example"}]),
        )
        .await?;
    let other = host
        .create(THING_2, EDITOR, json!([{"name": "d", "url": "http://d.example"}]))
        .await?;
    let response = host
        .request(Method::DELETE, "/webhooks", EDITOR)
        .json(&json!({"webhook_ids": [id_of(&created[0]), id_of(&other[0])]}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.bytes().await?.is_empty());
    assert_eq!(names_of_thing(&host, THING_1).await?, ["b", "c"]);
    assert_eq!(names_of_thing(&host, THING_2).await?, Vec::<String>::new());
    let (status, body) = view(&host, &id_of(&created[0])).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // The removed names are free again.
    host.create(THING_1, EDITOR, json!([{"name": "a", "url": "http://a.example"}]))
        .await?;
    Ok(())
}

#[tokio::test]
async fn patch_removes_the_listed_webhooks_with_204() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let created = host
        .create(
            THING_1,
            ADMIN,
            json!([{"name": "a", "url": "http://a.example"}, {"name": "b", "url": "http://b.example"}]),
        )
        .await?;
    let (status, body) = host
        .call(
            Method::PATCH,
            "/webhooks",
            ADMIN,
            Some(json!({"webhook_ids": [id_of(&created[1])]})),
        )
        .await?;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(names_of_thing(&host, THING_1).await?, ["a"]);
    Ok(())
}

#[tokio::test]
async fn the_seed_curl_flows_work_under_the_gateway_prefix() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    // Create.
    let (status, created) = host
        .call(
            Method::POST,
            &format!("/svcwebhooks/things/{THING_1}/webhooks"),
            ADMIN,
            Some(json!([{"name": "Data pipeline", "url": "https://ingest.example.com/mainflux", "headers": {"X-Api-Key": "k"}}])),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let webhook = created[0].clone();
    assert_eq!(webhook["name"], "Data pipeline");
    assert_eq!(webhook["group_id"], GROUP_1);
    assert_eq!(webhook["headers"], json!({"X-Api-Key": "k"}));
    let id = id_of(&webhook);

    // List by thing and by group.
    for path in [
        format!("/svcwebhooks/things/{THING_1}/webhooks"),
        format!("/svcwebhooks/groups/{GROUP_1}/webhooks"),
    ] {
        let (status, page) = host.call(Method::GET, &path, ADMIN, None).await?;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        assert_eq!(page["total"], 1, "{path}: {page}");
        assert_eq!(page["webhooks"], json!([webhook]), "{path}");
    }
    for path in [
        format!("/svcwebhooks/things/{THING_1}/webhooks/search"),
        format!("/svcwebhooks/groups/{GROUP_1}/webhooks/search"),
    ] {
        let (status, page) = host
            .call(Method::POST, &path, ADMIN, Some(json!({"name": "pipeline"})))
            .await?;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        assert_eq!(page["webhooks"], json!([webhook]), "{path}");
    }

    // View.
    let (status, viewed) = host
        .call(Method::GET, &format!("/svcwebhooks/webhooks/{id}"), ADMIN, None)
        .await?;
    assert_eq!((status, &viewed), (StatusCode::OK, &webhook));

    // Update.
    let (status, body) = host
        .call(
            Method::PUT,
            &format!("/svcwebhooks/webhooks/{id}"),
            ADMIN,
            Some(json!({"name": "Data pipeline", "url": "https://ingest.example.com/mainflux-v2", "headers": {"X-Api-Key": "k"}})),
        )
        .await?;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));
    let (_, viewed) = host
        .call(Method::GET, &format!("/svcwebhooks/webhooks/{id}"), ADMIN, None)
        .await?;
    assert_eq!(viewed["url"], "https://ingest.example.com/mainflux-v2");

    // Remove, with DELETE and with PATCH.
    let second = host
        .create(THING_1, ADMIN, json!([{"name": "second", "url": "http://s.example"}]))
        .await?;
    let (status, body) = host
        .call(
            Method::DELETE,
            "/svcwebhooks/webhooks",
            ADMIN,
            Some(json!({"webhook_ids": [id]})),
        )
        .await?;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, body) = host
        .call(
            Method::PATCH,
            "/svcwebhooks/webhooks",
            ADMIN,
            Some(json!({"webhook_ids": [id_of(&second[0])]})),
        )
        .await?;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, body) = host
        .call(Method::GET, &format!("/svcwebhooks/webhooks/{id}"), ADMIN, None)
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(names_of_thing(&host, THING_1).await?, Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn one_invalid_item_creates_none() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let (status, body) = host
        .call(
            Method::POST,
            &format!("/things/{THING_1}/webhooks"),
            EDITOR,
            Some(json!([{"name": "valid", "url": "http://a.example"}, {"name": "invalid", "url": "ftp://a.example"}])),
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(names_of_thing(&host, THING_1).await?, Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn one_taken_name_creates_none() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    host.create(THING_1, EDITOR, json!([{"name": "taken", "url": "http://a.example"}]))
        .await?;
    let (status, body) = host
        .call(
            Method::POST,
            &format!("/things/{THING_1}/webhooks"),
            EDITOR,
            Some(json!([{"name": "fresh", "url": "http://a.example"}, {"name": "taken", "url": "http://b.example"}])),
        )
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(names_of_thing(&host, THING_1).await?, ["taken"]);
    Ok(())
}

#[tokio::test]
async fn two_same_names_in_one_request_conflict_and_create_none() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let (status, body) = host
        .call(
            Method::POST,
            &format!("/things/{THING_1}/webhooks"),
            EDITOR,
            Some(json!([{"name": "twice", "url": "http://a.example"}, {"name": "twice", "url": "http://b.example"}])),
        )
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(names_of_thing(&host, THING_1).await?, Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn the_same_name_on_another_thing_is_fine() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let first = host
        .create(THING_1, ADMIN, json!([{"name": "shared", "url": "http://a.example"}]))
        .await?;
    let second = host
        .create(THING_2, ADMIN, json!([{"name": "shared", "url": "http://a.example"}]))
        .await?;
    let third = host
        .create(
            THING_3,
            OTHER_ADMIN,
            json!([{"name": "shared", "url": "http://a.example"}]),
        )
        .await?;
    assert_ne!(first[0]["id"], second[0]["id"]);
    assert_eq!(third[0]["group_id"], GROUP_2);
    for thing in [THING_1, THING_2] {
        assert_eq!(names_of_thing(&host, thing).await?, ["shared"]);
    }
    Ok(())
}

#[tokio::test]
async fn removal_with_one_unknown_id_is_404_and_removes_nothing() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let created = host
        .create(
            THING_1,
            EDITOR,
            json!([{"name": "a", "url": "http://a.example"}, {"name": "b", "url": "http://b.example"}]),
        )
        .await?;
    let unknown = "00000000-0000-4000-8000-000000000000";
    for method in [Method::DELETE, Method::PATCH] {
        let (status, body) = host
            .call(
                method,
                "/webhooks",
                EDITOR,
                Some(json!({"webhook_ids": [id_of(&created[0]), unknown, id_of(&created[1])]})),
            )
            .await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    assert_eq!(names_of_thing(&host, THING_1).await?, ["a", "b"]);
    Ok(())
}

#[tokio::test]
async fn removal_with_one_id_the_user_may_not_edit_is_403_and_removes_nothing() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let mine = host
        .create(
            THING_3,
            OTHER_ADMIN,
            json!([{"name": "mine", "url": "http://a.example"}]),
        )
        .await?;
    let theirs = host
        .create(THING_1, ADMIN, json!([{"name": "theirs", "url": "http://b.example"}]))
        .await?;
    for method in [Method::DELETE, Method::PATCH] {
        let (status, body) = host
            .call(
                method,
                "/webhooks",
                OTHER_ADMIN,
                Some(json!({"webhook_ids": [id_of(&mine[0]), id_of(&theirs[0])]})),
            )
            .await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let (status, still) = host
        .call(
            Method::GET,
            &format!("/webhooks/{}", id_of(&mine[0])),
            OTHER_ADMIN,
            None,
        )
        .await?;
    assert_eq!((status, &still), (StatusCode::OK, &mine[0]));
    assert_eq!(names_of_thing(&host, THING_1).await?, ["theirs"]);

    // A viewer may see but not remove.
    let (status, body) = host
        .call(
            Method::DELETE,
            "/webhooks",
            VIEWER,
            Some(json!({"webhook_ids": [id_of(&theirs[0])]})),
        )
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(names_of_thing(&host, THING_1).await?, ["theirs"]);
    Ok(())
}

#[tokio::test]
async fn removal_of_an_empty_list_is_400() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    host.create(THING_1, EDITOR, json!([{"name": "kept", "url": "http://a.example"}]))
        .await?;
    for method in [Method::DELETE, Method::PATCH] {
        let (status, body) = host
            .call(method, "/webhooks", EDITOR, Some(json!({"webhook_ids": []})))
            .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    assert_eq!(names_of_thing(&host, THING_1).await?, ["kept"]);
    Ok(())
}

/// Header names a delivery cannot carry (hop-by-hop names `wasi:http` refuses) or that the
/// service sets itself are refused at create and update with 400 naming the header, whatever
/// their case; nothing is created or changed.
#[tokio::test]
async fn headers_a_delivery_cannot_carry_are_refused_at_create_and_update_naming_the_header() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let kept = host
        .create(
            THING_1,
            EDITOR,
            json!([{"name": "kept", "url": "http://a.example", "headers": {"X-Api-Key": "k"}}]),
        )
        .await?;
    let id = id_of(&kept[0]);
    let refused = [
        "Connection",
        "transfer-encoding",
        "Host",
        "Upgrade",
        "Keep-Alive",
        "TE",
        "Proxy-Authorization",
        "proxy-connection",
        "HTTP2-Settings",
        "webhook-id",
        "Webhook-Timestamp",
        "webhook-signature",
        "Content-Length",
    ];
    for name in refused {
        let headers = json!({ name: "value" });
        let (status, body) = host
            .call(
                Method::POST,
                &format!("/things/{THING_1}/webhooks"),
                EDITOR,
                Some(json!([{"name": "refused", "url": "http://a.example", "headers": headers}])),
            )
            .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "create with {name}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(name),
            "create with {name}: {message:?} does not name it"
        );

        let (status, body) = host
            .call(
                Method::PUT,
                &format!("/webhooks/{id}"),
                EDITOR,
                Some(json!({"name": "kept", "url": "http://a.example", "headers": headers})),
            )
            .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "update with {name}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(name),
            "update with {name}: {message:?} does not name it"
        );
    }
    assert_eq!(names_of_thing(&host, THING_1).await?, ["kept"]);
    let (status, webhook) = view(&host, &id).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(webhook["headers"], json!({"X-Api-Key": "k"}));

    // A Content-Type of its own is what a webhook may set (SPEC.md section 3).
    host.create(
        THING_1,
        EDITOR,
        json!([{"name": "typed", "url": "http://a.example", "headers": {"Content-Type": "text/plain"}}]),
    )
    .await?;
    Ok(())
}
