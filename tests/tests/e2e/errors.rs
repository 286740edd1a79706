//! Every error answer of SPEC.md section 2: 400, 401, 403, 404, 405, 409, 413 and 415, each
//! with its JSON body (the harness checks `{"error": "..."}` and the content type on every
//! 4xx), and each leaving the stored webhooks as they were.

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use webhooks_tests::{ADMIN, EDITOR, GROUP_1, LONER, OTHER_ADMIN, RawResponse, THING_1, TestHost, VIEWER, read};

const UNKNOWN_THING: &str = "aaaaaaaa-0000-4000-8000-00000000dead";
const UNKNOWN_GROUP: &str = "33333333-3333-4333-8333-333333333333";
const UNKNOWN_WEBHOOK: &str = "00000000-0000-4000-8000-000000000000";

/// A host with one webhook on `THING_1`; answers the host and the webhook.
async fn host_with_one_webhook() -> anyhow::Result<(TestHost, Value)> {
    let host = TestHost::start().await?;
    let created = host
        .create(
            THING_1,
            ADMIN,
            json!([{"name": "existing", "url": "http://existing.example", "metadata": {"k": "v"}}]),
        )
        .await?;
    Ok((host, created[0].clone()))
}

/// Checks that the one webhook of [`host_with_one_webhook`] is still there, unchanged, alone.
async fn assert_unchanged(host: &TestHost, webhook: &Value) -> anyhow::Result<()> {
    let (status, page) = host
        .call(Method::GET, &format!("/groups/{GROUP_1}/webhooks"), ADMIN, None)
        .await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["webhooks"][0], *webhook);
    Ok(())
}

/// Every endpoint that takes a user token, each with a request that would otherwise succeed
/// for the group's admin.
fn user_endpoints(webhook_id: &str) -> Vec<(Method, String, Option<Value>)> {
    let item = json!({"name": "new", "url": "http://new.example"});
    vec![
        (Method::POST, format!("/things/{THING_1}/webhooks"), Some(json!([item]))),
        (Method::GET, format!("/things/{THING_1}/webhooks"), None),
        (Method::GET, format!("/groups/{GROUP_1}/webhooks"), None),
        (
            Method::POST,
            format!("/things/{THING_1}/webhooks/search"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/groups/{GROUP_1}/webhooks/search"),
            Some(json!({})),
        ),
        (Method::GET, format!("/webhooks/{webhook_id}"), None),
        (Method::PUT, format!("/webhooks/{webhook_id}"), Some(item)),
        (
            Method::DELETE,
            "/webhooks".to_owned(),
            Some(json!({"webhook_ids": [webhook_id]})),
        ),
        (
            Method::PATCH,
            "/webhooks".to_owned(),
            Some(json!({"webhook_ids": [webhook_id]})),
        ),
    ]
}

/// Sends a request with a raw body and content type (either may be absent).
async fn send_raw(
    host: &TestHost,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(StatusCode, Value)> {
    let mut request = host.request(method, path, ADMIN);
    if let Some(content_type) = content_type {
        request = request.header(CONTENT_TYPE, content_type);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    read(request.send().await?).await
}

#[tokio::test]
async fn missing_empty_unknown_or_non_bearer_credentials_are_401_on_every_endpoint() -> anyhow::Result<()> {
    let (host, webhook) = host_with_one_webhook().await?;
    let id = webhook["id"].as_str().unwrap();
    let credentials: [Option<String>; 5] = [
        None,
        Some("Bearer ".to_owned()),
        Some("Bearer no-such-token".to_owned()),
        Some(format!("Basic {ADMIN}")),
        Some(format!("Thing {ADMIN}")),
    ];
    for prefix in ["", "/svcwebhooks"] {
        for (method, path, body) in user_endpoints(id) {
            for credential in &credentials {
                let mut request = host.request(method.clone(), &format!("{prefix}{path}"), "");
                if let Some(credential) = credential {
                    request = request.header(AUTHORIZATION, credential);
                }
                if let Some(body) = &body {
                    request = request.json(body);
                }
                let (status, answer) = read(request.send().await?).await?;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {prefix}{path} with {credential:?}: {answer}"
                );
            }
        }
    }
    assert_unchanged(&host, &webhook).await
}

#[tokio::test]
async fn a_viewer_may_not_create_update_or_remove() -> anyhow::Result<()> {
    let (host, webhook) = host_with_one_webhook().await?;
    let id = webhook["id"].as_str().unwrap();
    let refused = [
        (
            Method::POST,
            format!("/things/{THING_1}/webhooks"),
            json!([{"name": "new", "url": "http://new.example"}]),
        ),
        (
            Method::PUT,
            format!("/webhooks/{id}"),
            json!({"name": "renamed", "url": "http://new.example"}),
        ),
        (Method::DELETE, "/webhooks".to_owned(), json!({"webhook_ids": [id]})),
        (Method::PATCH, "/webhooks".to_owned(), json!({"webhook_ids": [id]})),
    ];
    for (method, path, body) in refused {
        let (status, answer) = host.call(method.clone(), &path, VIEWER, Some(body)).await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
    }
    // What a viewer may do.
    let (status, viewed) = host.call(Method::GET, &format!("/webhooks/{id}"), VIEWER, None).await?;
    assert_eq!((status, &viewed), (StatusCode::OK, &webhook));
    assert_unchanged(&host, &webhook).await
}

#[tokio::test]
async fn a_user_in_no_group_may_not_view() -> anyhow::Result<()> {
    let (host, webhook) = host_with_one_webhook().await?;
    let id = webhook["id"].as_str().unwrap();
    for (method, path, body) in user_endpoints(id) {
        let (status, answer) = host.call(method.clone(), &path, LONER, body).await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
    }
    assert_unchanged(&host, &webhook).await
}

#[tokio::test]
async fn an_admin_of_another_group_is_403_on_this_groups_things_and_webhooks() -> anyhow::Result<()> {
    let (host, webhook) = host_with_one_webhook().await?;
    let id = webhook["id"].as_str().unwrap();
    for (method, path, body) in user_endpoints(id) {
        let (status, answer) = host.call(method.clone(), &path, OTHER_ADMIN, body).await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
    }
    assert_unchanged(&host, &webhook).await
}

#[tokio::test]
async fn unknown_things_groups_and_webhooks_are_404() -> anyhow::Result<()> {
    let (host, webhook) = host_with_one_webhook().await?;
    let item = json!({"name": "new", "url": "http://new.example"});
    let missing = [
        (
            Method::POST,
            format!("/things/{UNKNOWN_THING}/webhooks"),
            Some(json!([item])),
        ),
        (Method::GET, format!("/things/{UNKNOWN_THING}/webhooks"), None),
        (
            Method::POST,
            format!("/things/{UNKNOWN_THING}/webhooks/search"),
            Some(json!({})),
        ),
        (Method::GET, format!("/groups/{UNKNOWN_GROUP}/webhooks"), None),
        (
            Method::POST,
            format!("/groups/{UNKNOWN_GROUP}/webhooks/search"),
            Some(json!({})),
        ),
        (Method::GET, format!("/webhooks/{UNKNOWN_WEBHOOK}"), None),
        (Method::PUT, format!("/webhooks/{UNKNOWN_WEBHOOK}"), Some(item)),
        (Method::GET, "/webhooks/not-even-a-uuid".to_owned(), None),
    ];
    for prefix in ["", "/svcwebhooks"] {
        for (method, path, body) in &missing {
            let (status, answer) = host
                .call(method.clone(), &format!("{prefix}{path}"), ADMIN, body.clone())
                .await?;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {prefix}{path}: {answer}");
        }
    }
    assert_unchanged(&host, &webhook).await
}

#[tokio::test]
async fn unknown_paths_are_404() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    for path in [
        "/",
        "/nope",
        "/things/x/nothing",
        "/things",
        "/webhooks/x/y/z",
        "/svcwebhooks/nope",
        "/svcwebhooks/things/x/nothing",
    ] {
        for method in [Method::GET, Method::POST] {
            let (status, answer) = host.call(method.clone(), path, ADMIN, None).await?;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {answer}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn known_paths_with_a_wrong_method_are_405() -> anyhow::Result<()> {
    let (host, webhook) = host_with_one_webhook().await?;
    let id = webhook["id"].as_str().unwrap();
    let wrong = [
        (Method::PUT, format!("/things/{THING_1}/webhooks")),
        (Method::DELETE, format!("/things/{THING_1}/webhooks")),
        (Method::GET, format!("/things/{THING_1}/webhooks/search")),
        (Method::PUT, format!("/groups/{GROUP_1}/webhooks")),
        (Method::GET, "/webhooks".to_owned()),
        (Method::POST, "/webhooks".to_owned()),
        (Method::POST, format!("/webhooks/{id}")),
        (Method::DELETE, format!("/webhooks/{id}")),
        (Method::DELETE, "/health".to_owned()),
        (Method::POST, "/health".to_owned()),
    ];
    for prefix in ["", "/svcwebhooks"] {
        for (method, path) in &wrong {
            let (status, answer) = host
                .call(
                    method.clone(),
                    &format!("{prefix}{path}"),
                    ADMIN,
                    Some(json!({"webhook_ids": [id]})),
                )
                .await?;
            assert_eq!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {prefix}{path}: {answer}"
            );
        }
    }
    assert_unchanged(&host, &webhook).await
}

#[tokio::test]
async fn a_second_webhook_with_a_name_on_the_same_thing_is_409() -> anyhow::Result<()> {
    let (host, webhook) = host_with_one_webhook().await?;
    let (status, answer) = host
        .call(
            Method::POST,
            &format!("/things/{THING_1}/webhooks"),
            EDITOR,
            Some(json!([{"name": "existing", "url": "http://x.example"}])),
        )
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("existing"),
        "the error names the webhook: {answer}"
    );
    assert_unchanged(&host, &webhook).await
}

/// A create body of exactly `size` bytes: one webhook named `name` whose metadata pads it out.
fn create_body_of(name: &str, size: usize) -> Vec<u8> {
    let webhook =
        |pad: String| json!([{"name": name, "url": "http://big.example", "metadata": {"pad": pad}}]).to_string();
    let bytes = webhook("x".repeat(size - webhook(String::new()).len())).into_bytes();
    assert_eq!(bytes.len(), size);
    bytes
}

const MIB: usize = 1 << 20;

/// How a raw request frames its body.
enum Framing {
    ContentLength,
    Chunked,
}

/// A raw HTTP/1.1 create request for `THING_1` as the admin, for bodies a client library
/// would give up sending once the host answers early.
fn raw_create_request(port: u16, framing: Framing, body: &[u8]) -> Vec<u8> {
    let framing_header = match framing {
        Framing::ContentLength => format!("Content-Length: {}", body.len()),
        Framing::Chunked => "Transfer-Encoding: chunked".to_owned(),
    };
    let mut request = format!(
        "POST /things/{THING_1}/webhooks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\n{framing_header}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    match framing {
        Framing::ContentLength => request.extend_from_slice(body),
        Framing::Chunked => {
            for chunk in body.chunks(64 * 1024) {
                request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                request.extend_from_slice(chunk);
                request.extend_from_slice(b"\r\n");
            }
            request.extend_from_slice(b"0\r\n\r\n");
        }
    }
    request
}

/// Checks a raw answer's status and its JSON error body.
fn assert_error_answer(answer: &RawResponse, status: StatusCode) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.content_type, "application/json", "{answer:?}");
    assert!(
        answer.body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_413() -> anyhow::Result<()> {
    let (host, webhook) = host_with_one_webhook().await?;
    let request = raw_create_request(host.port, Framing::ContentLength, &create_body_of("too big", MIB + 1));
    assert_error_answer(&host.raw_exchange(request).await?, StatusCode::PAYLOAD_TOO_LARGE);
    assert_unchanged(&host, &webhook).await?;

    // Exactly 1 MiB is within the limit, however it is framed.
    for (framing, name) in [
        (Framing::ContentLength, "one MiB"),
        (Framing::Chunked, "one chunked MiB"),
    ] {
        let body = create_body_of(name, MIB);
        let answer = host.raw_exchange(raw_create_request(host.port, framing, &body)).await?;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{}",
            answer.body.to_string().chars().take(300).collect::<String>()
        );
        assert_eq!(answer.body[0]["name"], name);
    }
    Ok(())
}

#[tokio::test]
async fn a_chunked_body_over_one_mebibyte_without_content_length_is_413() -> anyhow::Result<()> {
    let (host, webhook) = host_with_one_webhook().await?;
    for size in [MIB + 1, 2 * MIB] {
        let request = raw_create_request(host.port, Framing::Chunked, &create_body_of("too big", size));
        assert_error_answer(&host.raw_exchange(request).await?, StatusCode::PAYLOAD_TOO_LARGE);
    }
    assert_unchanged(&host, &webhook).await
}

#[tokio::test]
async fn json_bodies_without_a_json_content_type_are_415() -> anyhow::Result<()> {
    let (host, webhook) = host_with_one_webhook().await?;
    let id = webhook["id"].as_str().unwrap();
    let requests = [
        (
            Method::POST,
            format!("/things/{THING_1}/webhooks"),
            json!([{"name": "new", "url": "http://new.example"}]),
        ),
        (
            Method::PUT,
            format!("/webhooks/{id}"),
            json!({"name": "renamed", "url": "http://new.example"}),
        ),
        (Method::DELETE, "/webhooks".to_owned(), json!({"webhook_ids": [id]})),
        (Method::PATCH, "/webhooks".to_owned(), json!({"webhook_ids": [id]})),
    ];
    for (method, path, body) in &requests {
        for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
            let (status, answer) = send_raw(
                &host,
                method.clone(),
                path,
                content_type,
                Some(body.to_string().into_bytes()),
            )
            .await?;
            assert_eq!(
                status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{method} {path} as {content_type:?}: {answer}"
            );
        }
    }
    assert_unchanged(&host, &webhook).await?;

    // A content type that contains application/json is enough.
    let (status, answer) = send_raw(
        &host,
        Method::POST,
        &format!("/things/{THING_1}/webhooks"),
        Some("application/json; charset=utf-8"),
        Some(
            json!([{"name": "new", "url": "http://new.example"}])
                .to_string()
                .into_bytes(),
        ),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    Ok(())
}

#[tokio::test]
async fn a_search_body_needs_a_json_content_type_but_no_body_needs_none() -> anyhow::Result<()> {
    let (host, webhook) = host_with_one_webhook().await?;
    for path in [
        format!("/things/{THING_1}/webhooks/search"),
        format!("/groups/{GROUP_1}/webhooks/search"),
    ] {
        for content_type in [None, Some("text/plain")] {
            let (status, answer) = send_raw(
                &host,
                Method::POST,
                &path,
                content_type,
                Some(br#"{"name": "existing"}"#.to_vec()),
            )
            .await?;
            assert_eq!(
                status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{path} as {content_type:?}: {answer}"
            );
        }
        let defaults = [
            (None, None),
            (Some("application/json"), None),
            (Some("text/plain"), None),
            (Some("application/json"), Some(b"{}".to_vec())),
        ];
        for (content_type, body) in defaults {
            let (status, page) = send_raw(&host, Method::POST, &path, content_type, body.clone()).await?;
            assert_eq!(
                status,
                StatusCode::OK,
                "{path} as {content_type:?} with {body:?}: {page}"
            );
            assert_eq!(page["total"], 1, "{page}");
            assert_eq!(page["limit"], 10, "{page}");
            assert_eq!(page["webhooks"], json!([webhook]));
        }
    }
    Ok(())
}

/// Create bodies that are malformed JSON or the wrong shape, each with what is wrong.
fn bad_create_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let item = |fields: Value| {
        let mut webhook = json!({"name": "n", "url": "http://h.example"});
        for (key, value) in fields.as_object().unwrap() {
            if value.is_null() {
                webhook.as_object_mut().unwrap().remove(key);
            } else {
                webhook[key] = value.clone();
            }
        }
        json!([webhook]).to_string().into_bytes()
    };
    vec![
        ("malformed JSON", b"[{\"name\": \"n\", ".to_vec()),
        ("not JSON at all", b"name=n&url=http://h.example".to_vec()),
        ("empty body", Vec::new()),
        (
            "an object instead of an array",
            br#"{"name": "n", "url": "http://h.example"}"#.to_vec(),
        ),
        (
            "webhooks not an array",
            br#"{"webhooks": {"name": "n", "url": "http://h.example"}}"#.to_vec(),
        ),
        ("a number", b"42".to_vec()),
        ("an empty array", b"[]".to_vec()),
        ("an empty webhooks array", br#"{"webhooks": []}"#.to_vec()),
        ("a webhook that is not an object", br#"["http://h.example"]"#.to_vec()),
        (
            "a valid webhook and one not an object",
            br#"[{"name": "n", "url": "http://h.example"}, 7]"#.to_vec(),
        ),
        ("name missing", item(json!({"name": null}))),
        ("name not a string", item(json!({"name": 5}))),
        ("empty name", item(json!({"name": ""}))),
        ("name over 254 characters", item(json!({"name": "é".repeat(255)}))),
        ("url missing", item(json!({"url": null}))),
        ("url not a string", item(json!({"url": ["http://h.example"]}))),
        ("url ftp://", item(json!({"url": "ftp://h.example/x"}))),
        ("url without a scheme", item(json!({"url": "h.example/x"}))),
        ("relative url", item(json!({"url": "/hook"}))),
        ("url without a host", item(json!({"url": "http:///path"}))),
        ("url with only a scheme", item(json!({"url": "https://"}))),
        (
            "url over 2048 bytes",
            item(json!({"url": format!("http://h.example/{}", "a".repeat(2032))})),
        ),
        ("header name with a space", item(json!({"headers": {"X Api Key": "v"}}))),
        ("empty header name", item(json!({"headers": {"": "v"}}))),
        (
            "header value with CR LF",
            item(json!({"headers": {"X-Api-Key": "v\r\nInjected: 1"}})),
        ),
        ("header value with LF", item(json!({"headers": {"X-Api-Key": "v\nx"}}))),
        (
            "header value with NUL",
            item(json!({"headers": {"X-Api-Key": "v\u{0}"}})),
        ),
        ("header value not a string", item(json!({"headers": {"X-Retries": 3}}))),
        ("headers not an object", item(json!({"headers": ["X-Api-Key: v"]}))),
        ("headers a string", item(json!({"headers": "X-Api-Key: v"}))),
        ("metadata not an object", item(json!({"metadata": [1, 2]}))),
        ("metadata a string", item(json!({"metadata": "{}"}))),
    ]
}

#[tokio::test]
async fn malformed_or_wrongly_shaped_create_bodies_are_400_and_create_nothing() -> anyhow::Result<()> {
    let (host, webhook) = host_with_one_webhook().await?;
    for (what, body) in bad_create_bodies() {
        let (status, answer) = send_raw(
            &host,
            Method::POST,
            &format!("/things/{THING_1}/webhooks"),
            Some("application/json"),
            Some(body),
        )
        .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
    }
    assert_unchanged(&host, &webhook).await
}

#[tokio::test]
async fn the_length_limits_are_inclusive() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let longest_url = format!("http://h.example/{}", "a".repeat(2048 - "http://h.example/".len()));
    assert_eq!(longest_url.len(), 2048);
    let longest_name = "é".repeat(254);
    let created = host
        .create(THING_1, ADMIN, json!([{"name": longest_name, "url": longest_url}]))
        .await?;
    assert_eq!(created[0]["name"], longest_name);
    assert_eq!(created[0]["url"], longest_url);
    Ok(())
}

#[tokio::test]
async fn malformed_or_wrongly_shaped_update_bodies_are_400_and_change_nothing() -> anyhow::Result<()> {
    let (host, webhook) = host_with_one_webhook().await?;
    let path = format!("/webhooks/{}", webhook["id"].as_str().unwrap());
    let bodies: [(&str, &[u8]); 10] = [
        ("malformed JSON", b"{\"name\": "),
        ("an array", br#"[{"name": "n", "url": "http://h.example"}]"#),
        ("name missing", br#"{"url": "http://h.example"}"#),
        ("empty name", br#"{"name": "", "url": "http://h.example"}"#),
        ("url missing", br#"{"name": "n"}"#),
        ("url ftp://", br#"{"name": "n", "url": "ftp://h.example"}"#),
        (
            "header name with a space",
            br#"{"name": "n", "url": "http://h.example", "headers": {"a b": "v"}}"#,
        ),
        (
            "header value with CR LF",
            br#"{"name": "n", "url": "http://h.example", "headers": {"X-A": "v\r\nB: 1"}}"#,
        ),
        (
            "headers not an object",
            br#"{"name": "n", "url": "http://h.example", "headers": 1}"#,
        ),
        (
            "metadata not an object",
            br#"{"name": "n", "url": "http://h.example", "metadata": true}"#,
        ),
    ];
    for (what, body) in bodies {
        let (status, answer) =
            send_raw(&host, Method::PUT, &path, Some("application/json"), Some(body.to_vec())).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
    }
    assert_unchanged(&host, &webhook).await
}

#[tokio::test]
async fn malformed_or_wrongly_shaped_remove_bodies_are_400_and_remove_nothing() -> anyhow::Result<()> {
    let (host, webhook) = host_with_one_webhook().await?;
    let id = webhook["id"].as_str().unwrap();
    let bodies = [
        ("malformed JSON", b"{\"webhook_ids\": [".to_vec()),
        ("an array of ids", json!([id]).to_string().into_bytes()),
        ("another field name", json!({"ids": [id]}).to_string().into_bytes()),
        ("ids not an array", json!({"webhook_ids": id}).to_string().into_bytes()),
        (
            "an id not a string",
            json!({"webhook_ids": [1]}).to_string().into_bytes(),
        ),
        ("an empty list", json!({"webhook_ids": []}).to_string().into_bytes()),
    ];
    for method in [Method::DELETE, Method::PATCH] {
        for (what, body) in &bodies {
            let (status, answer) = send_raw(
                &host,
                method.clone(),
                "/webhooks",
                Some("application/json"),
                Some(body.clone()),
            )
            .await?;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {what}: {answer}");
        }
    }
    assert_unchanged(&host, &webhook).await
}
