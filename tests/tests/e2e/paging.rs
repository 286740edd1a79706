//! Pages, ordering and filters of the four list endpoints (SPEC.md section 2, the paging
//! table): `GET /things/{id}/webhooks`, `GET /groups/{id}/webhooks` and their two `search`
//! twins that take the same fields in a JSON body.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use webhooks_tests::{ADMIN, GROUP_1, GROUP_2, OTHER_ADMIN, THING_1, THING_2, THING_3, TestHost, VIEWER};

/// One of the four endpoints that answer a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lister {
    ThingList,
    GroupList,
    ThingSearch,
    GroupSearch,
}

use Lister::{GroupList, GroupSearch, ThingList, ThingSearch};

const LISTERS: [Lister; 4] = [ThingList, GroupList, ThingSearch, GroupSearch];
const QUERY_LISTERS: [Lister; 2] = [ThingList, GroupList];
const SEARCHES: [Lister; 2] = [ThingSearch, GroupSearch];

impl Lister {
    fn is_search(self) -> bool {
        matches!(self, ThingSearch | GroupSearch)
    }

    /// The endpoint's path for a thing and its group.
    fn path(self, thing: &str, group: &str) -> String {
        match self {
            ThingList => format!("/things/{thing}/webhooks"),
            GroupList => format!("/groups/{group}/webhooks"),
            ThingSearch => format!("/things/{thing}/webhooks/search"),
            GroupSearch => format!("/groups/{group}/webhooks/search"),
        }
    }

    /// Asks for a page of `THING_1` (or `GROUP_1`) as the group's viewer, with these fields in
    /// the URL query (strings as they are, anything else as JSON text) or in the search body.
    async fn page(self, host: &TestHost, fields: &[(&str, Value)]) -> anyhow::Result<(StatusCode, Value)> {
        self.page_of(host, THING_1, GROUP_1, VIEWER, fields).await
    }

    async fn page_of(
        self,
        host: &TestHost,
        thing: &str,
        group: &str,
        token: &str,
        fields: &[(&str, Value)],
    ) -> anyhow::Result<(StatusCode, Value)> {
        let path = self.path(thing, group);
        if self.is_search() {
            let body: serde_json::Map<String, Value> = fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            return host.call(Method::POST, &path, token, Some(Value::Object(body))).await;
        }
        let mut url = reqwest::Url::parse(&host.url(&path))?;
        if !fields.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in fields {
                match value {
                    Value::String(text) => pairs.append_pair(key, text),
                    other => pairs.append_pair(key, &other.to_string()),
                };
            }
        }
        let path_and_query = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        host.call(Method::GET, &path_and_query, token, None).await
    }

    /// Asks for a page that must succeed; answers it.
    async fn ok_page(self, host: &TestHost, fields: &[(&str, Value)]) -> anyhow::Result<Value> {
        let (status, page) = self.page(host, fields).await?;
        assert_eq!(status, StatusCode::OK, "{self:?} {fields:?}: {page}");
        Ok(page)
    }
}

fn names(page: &Value) -> Vec<String> {
    page["webhooks"]
        .as_array()
        .expect("a page lists webhooks")
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_owned())
        .collect()
}

fn ids(page: &Value) -> Vec<String> {
    page["webhooks"]
        .as_array()
        .expect("a page lists webhooks")
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_owned())
        .collect()
}

fn ids_of(webhooks: &[Value]) -> Vec<String> {
    webhooks.iter().map(|w| w["id"].as_str().unwrap().to_owned()).collect()
}

/// Creates `count` webhooks named `hook-00`, `hook-01`, ... on `THING_1`; answers them.
async fn create_numbered(host: &TestHost, count: usize) -> anyhow::Result<Vec<Value>> {
    let items: Vec<Value> = (0..count)
        .map(|i| json!({"name": format!("hook-{i:02}"), "url": format!("http://h{i}.example/")}))
        .collect();
    host.create(THING_1, ADMIN, Value::Array(items)).await
}

#[tokio::test]
async fn defaults_are_offset_0_limit_10_order_id_dir_desc() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let created = create_numbered(&host, 12).await?;
    let mut expected = ids_of(&created);
    expected.sort();
    expected.reverse();
    expected.truncate(10);
    for lister in LISTERS {
        let page = lister.ok_page(&host, &[]).await?;
        assert_eq!(page["total"], 12, "{lister:?}: {page}");
        assert_eq!(page["offset"], 0, "{lister:?}");
        assert_eq!(page["limit"], 10, "{lister:?}");
        assert_eq!(page["order"], "id", "{lister:?}");
        assert_eq!(page["dir"], "desc", "{lister:?}");
        assert_eq!(ids(&page), expected, "{lister:?}: the ten largest ids, largest first");
    }
    Ok(())
}

#[tokio::test]
async fn the_echoed_fields_are_the_requested_ones() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    create_numbered(&host, 5).await?;
    for lister in LISTERS {
        let page = lister
            .ok_page(
                &host,
                &[
                    ("offset", json!(1)),
                    ("limit", json!(2)),
                    ("order", json!("name")),
                    ("dir", json!("asc")),
                ],
            )
            .await?;
        assert_eq!(
            (
                &page["total"],
                &page["offset"],
                &page["limit"],
                &page["order"],
                &page["dir"]
            ),
            (&json!(5), &json!(1), &json!(2), &json!("name"), &json!("asc")),
            "{lister:?}: {page}"
        );
        assert_eq!(names(&page), ["hook-01", "hook-02"], "{lister:?}");
    }
    Ok(())
}

#[tokio::test]
async fn total_counts_every_match_not_only_the_page() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    create_numbered(&host, 15).await?;
    host.create(
        THING_1,
        ADMIN,
        json!([{"name": "other", "url": "http://other.example"}]),
    )
    .await?;
    for lister in LISTERS {
        let page = lister.ok_page(&host, &[("limit", json!(3))]).await?;
        assert_eq!(
            (page["total"].as_u64(), names(&page).len()),
            (Some(16), 3),
            "{lister:?}: {page}"
        );
        // hook-10 to hook-14 match.
        let page = lister
            .ok_page(&host, &[("limit", json!(4)), ("name", json!("hook-1"))])
            .await?;
        assert_eq!(
            (page["total"].as_u64(), names(&page).len()),
            (Some(5), 4),
            "{lister:?}: {page}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_offset_beyond_the_total_gives_an_empty_page_with_the_total() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    create_numbered(&host, 4).await?;
    for lister in LISTERS {
        for offset in [4, 5, 1000] {
            let page = lister.ok_page(&host, &[("offset", json!(offset))]).await?;
            assert_eq!(page["total"], 4, "{lister:?}: {page}");
            assert_eq!(page["offset"], offset, "{lister:?}: {page}");
            assert_eq!(page["webhooks"], json!([]), "{lister:?}: {page}");
        }
        let page = lister.ok_page(&host, &[("offset", json!(3))]).await?;
        assert_eq!(names(&page).len(), 1, "{lister:?}: the last one");
    }
    Ok(())
}

#[tokio::test]
async fn a_limit_of_200_is_accepted_and_fills_the_page() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let created = create_numbered(&host, 203).await?;
    assert_eq!(created.len(), 203);
    for lister in LISTERS {
        let page = lister.ok_page(&host, &[("limit", json!(200))]).await?;
        assert_eq!(page["limit"], 200, "{lister:?}");
        assert_eq!(page["total"], 203, "{lister:?}");
        assert_eq!(ids(&page).len(), 200, "{lister:?}");
        let page = lister.ok_page(&host, &[("limit", json!(1))]).await?;
        assert_eq!(ids(&page).len(), 1, "{lister:?}");
    }
    Ok(())
}

/// A paging field that must be refused: its value in a URL query and in a search body (`None`
/// where that form is not refused or cannot be written).
struct Refused {
    field: &'static str,
    in_query: Option<String>,
    in_body: Option<Value>,
}

fn refused(field: &'static str, in_query: Option<&str>, in_body: Option<Value>) -> Refused {
    Refused {
        field,
        in_query: in_query.map(str::to_owned),
        in_body,
    }
}

#[tokio::test]
async fn out_of_range_or_malformed_paging_fields_are_400() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    create_numbered(&host, 3).await?;
    let long_name = "n".repeat(255);
    let cases = [
        refused("offset", Some("-1"), Some(json!(-1))),
        refused("offset", Some("x"), Some(json!("x"))),
        refused("offset", Some("1.5"), Some(json!(1.5))),
        refused("limit", Some("0"), None),
        refused("limit", Some("-1"), Some(json!(-1))),
        refused("limit", Some("201"), Some(json!(201))),
        refused("limit", Some("x"), Some(json!("x"))),
        refused("order", Some("url"), Some(json!("url"))),
        refused("order", Some("created"), Some(json!(1))),
        refused("dir", Some("up"), Some(json!("up"))),
        refused("dir", Some("ascending"), Some(json!(true))),
        refused("name", Some(&long_name), Some(json!(long_name))),
        refused("metadata", Some("[1]"), Some(json!([1]))),
        refused("metadata", Some("3"), Some(json!(3))),
        refused("metadata", Some("\"text\""), Some(json!("{\"a\": 1}"))),
        refused("metadata", Some("{not json"), None),
        refused("metadata", Some("x"), None),
    ];
    for lister in LISTERS {
        for case in &cases {
            let value = if lister.is_search() {
                case.in_body.clone()
            } else {
                case.in_query.clone().map(Value::String)
            };
            let Some(value) = value else { continue };
            let (status, answer) = lister.page(&host, &[(case.field, value.clone())]).await?;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{lister:?} {}={value}: {answer}",
                case.field
            );
        }
    }
    // A name filter of exactly 254 characters is fine.
    for lister in LISTERS {
        let page = lister.ok_page(&host, &[("name", json!("é".repeat(254)))]).await?;
        assert_eq!(page["total"], 0, "{lister:?}");
    }
    Ok(())
}

#[tokio::test]
async fn in_a_search_body_a_limit_of_0_or_none_means_10() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    create_numbered(&host, 12).await?;
    for lister in SEARCHES {
        for fields in [vec![("limit", json!(0))], vec![], vec![("offset", json!(0))]] {
            let page = lister.ok_page(&host, &fields).await?;
            assert_eq!(page["limit"], 10, "{lister:?} {fields:?}: {page}");
            assert_eq!(ids(&page).len(), 10, "{lister:?} {fields:?}");
            assert_eq!(page["total"], 12, "{lister:?} {fields:?}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_repeated_query_parameter_is_400() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    create_numbered(&host, 3).await?;
    for lister in QUERY_LISTERS {
        let path = lister.path(THING_1, GROUP_1);
        for query in [
            "limit=1&limit=2",
            "limit=1&limit=1",
            "name=a&name=b",
            "offset=0&dir=asc&offset=1",
            "order=id&order=name",
        ] {
            let (status, answer) = host.call(Method::GET, &format!("{path}?{query}"), VIEWER, None).await?;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}?{query}: {answer}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn order_by_name_is_case_insensitive_in_both_directions() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let created = host
        .create(
            THING_1,
            ADMIN,
            json!([
                {"name": "charlie", "url": "http://h.example"},
                {"name": "Delta", "url": "http://h.example"},
                {"name": "alpha", "url": "http://h.example"},
                {"name": "Echo", "url": "http://h.example"},
                {"name": "BRAVO", "url": "http://h.example"}
            ]),
        )
        .await?;
    assert_eq!(created.len(), 5);
    let ascending = ["alpha", "BRAVO", "charlie", "Delta", "Echo"];
    let mut descending = ascending;
    descending.reverse();
    for lister in LISTERS {
        let page = lister
            .ok_page(&host, &[("order", json!("name")), ("dir", json!("asc"))])
            .await?;
        assert_eq!(names(&page), ascending, "{lister:?}");
        let page = lister
            .ok_page(&host, &[("order", json!("name")), ("dir", json!("desc"))])
            .await?;
        assert_eq!(names(&page), descending, "{lister:?}");
        let page = lister.ok_page(&host, &[("order", json!("name"))]).await?;
        assert_eq!(names(&page), descending, "{lister:?}: desc is the default direction");
    }
    Ok(())
}

#[tokio::test]
async fn order_by_id_sorts_ids_in_both_directions() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let created = create_numbered(&host, 8).await?;
    let mut ascending = ids_of(&created);
    ascending.sort();
    let mut descending = ascending.clone();
    descending.reverse();
    for lister in LISTERS {
        let page = lister
            .ok_page(&host, &[("order", json!("id")), ("dir", json!("asc"))])
            .await?;
        assert_eq!(ids(&page), ascending, "{lister:?}");
        let page = lister
            .ok_page(&host, &[("order", json!("id")), ("dir", json!("desc"))])
            .await?;
        assert_eq!(ids(&page), descending, "{lister:?}");
        let page = lister.ok_page(&host, &[("dir", json!("asc"))]).await?;
        assert_eq!(ids(&page), ascending, "{lister:?}: id is the default order");
    }
    Ok(())
}

#[tokio::test]
async fn name_and_url_filters_are_case_insensitive_substrings() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    host.create(
        THING_1,
        ADMIN,
        json!([
            {"name": "Data Pipeline", "url": "https://Ingest.Example.com/mainflux"},
            {"name": "pipeline-backup", "url": "http://backup.example.org/in"},
            {"name": "Alerts", "url": "https://alerts.EXAMPLE.com/hook"}
        ]),
    )
    .await?;
    let cases = [
        ("name", "PIPELINE", vec!["Data Pipeline", "pipeline-backup"]),
        ("name", "a pi", vec!["Data Pipeline"]),
        ("name", "alerts", vec!["Alerts"]),
        ("name", "absent", vec![]),
        ("url", "INGEST.example", vec!["Data Pipeline"]),
        ("url", "example.COM", vec!["Alerts", "Data Pipeline"]),
        ("url", "https://", vec!["Alerts", "Data Pipeline"]),
        ("url", "ftp", vec![]),
    ];
    for lister in LISTERS {
        for (field, value, expected) in &cases {
            let page = lister
                .ok_page(
                    &host,
                    &[(*field, json!(value)), ("order", json!("name")), ("dir", json!("asc"))],
                )
                .await?;
            assert_eq!(&names(&page), expected, "{lister:?} {field}={value}");
            assert_eq!(page["total"], expected.len(), "{lister:?} {field}={value}");
        }
        let page = lister
            .ok_page(&host, &[("name", json!("pipe")), ("url", json!("BACKUP"))])
            .await?;
        assert_eq!(names(&page), ["pipeline-backup"], "{lister:?}: both filters apply");
    }
    Ok(())
}

#[tokio::test]
async fn metadata_filter_matches_by_containment() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    host.create(
        THING_1,
        ADMIN,
        json!([
            {"name": "nested", "url": "http://h.example", "metadata": {"a": {"b": 1, "c": 2}, "d": 3}},
            {"name": "other value", "url": "http://h.example", "metadata": {"a": {"b": 2}, "d": 3}},
            {"name": "flat", "url": "http://h.example", "metadata": {"d": 3, "tags": ["x", "y"]}},
            {"name": "none", "url": "http://h.example"}
        ]),
    )
    .await?;
    let cases = [
        (json!({"a": {"b": 1}}), vec!["nested"]),
        (json!({"a": {"b": 1, "c": 2}, "d": 3}), vec!["nested"]),
        (json!({"a": {"b": 2}}), vec!["other value"]),
        (json!({"a": {"b": 3}}), vec![]),
        (json!({"a": {"b": "1"}}), vec![]),
        (json!({"d": 3}), vec!["flat", "nested", "other value"]),
        (json!({"tags": ["x", "y"]}), vec!["flat"]),
        (json!({"missing": 1}), vec![]),
        (json!({}), vec!["flat", "nested", "none", "other value"]),
    ];
    for lister in LISTERS {
        for (metadata, expected) in &cases {
            let page = lister
                .ok_page(
                    &host,
                    &[
                        ("metadata", metadata.clone()),
                        ("order", json!("name")),
                        ("dir", json!("asc")),
                    ],
                )
                .await?;
            assert_eq!(&names(&page), expected, "{lister:?} metadata={metadata}");
            assert_eq!(page["total"], expected.len(), "{lister:?} metadata={metadata}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn group_lists_include_every_thing_of_the_group_and_no_other_group() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    host.create(
        THING_1,
        ADMIN,
        json!([{"name": "one-a", "url": "http://h.example"}, {"name": "one-b", "url": "http://h.example"}]),
    )
    .await?;
    host.create(THING_2, ADMIN, json!([{"name": "two-a", "url": "http://h.example"}]))
        .await?;
    host.create(
        THING_3,
        OTHER_ADMIN,
        json!([{"name": "three-a", "url": "http://h.example"}]),
    )
    .await?;
    let by_name = [("order", json!("name")), ("dir", json!("asc"))];
    for lister in [GroupList, GroupSearch] {
        let (status, page) = lister.page_of(&host, THING_1, GROUP_1, VIEWER, &by_name).await?;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(names(&page), ["one-a", "one-b", "two-a"], "{lister:?}");
        for webhook in page["webhooks"].as_array().unwrap() {
            assert_eq!(webhook["group_id"], GROUP_1);
        }
        let (status, page) = lister.page_of(&host, THING_3, GROUP_2, OTHER_ADMIN, &by_name).await?;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(names(&page), ["three-a"], "{lister:?}");
    }
    for lister in [ThingList, ThingSearch] {
        let (status, page) = lister.page_of(&host, THING_2, GROUP_1, VIEWER, &by_name).await?;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(names(&page), ["two-a"], "{lister:?}: a thing lists only its own");
        let (_, page) = lister.page_of(&host, THING_1, GROUP_1, VIEWER, &by_name).await?;
        assert_eq!(names(&page), ["one-a", "one-b"], "{lister:?}");
    }
    Ok(())
}

#[tokio::test]
async fn paging_through_every_page_yields_every_webhook_once() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    let created = create_numbered(&host, 25).await?;
    let expected: BTreeSet<String> = ids_of(&created).into_iter().collect();
    for lister in LISTERS {
        for order in ["id", "name"] {
            for dir in ["asc", "desc"] {
                let mut seen = Vec::new();
                let mut sizes = Vec::new();
                for offset in [0, 10, 20] {
                    let page = lister
                        .ok_page(
                            &host,
                            &[
                                ("offset", json!(offset)),
                                ("limit", json!(10)),
                                ("order", json!(order)),
                                ("dir", json!(dir)),
                            ],
                        )
                        .await?;
                    assert_eq!(page["total"], 25, "{lister:?} {order} {dir}");
                    sizes.push(ids(&page).len());
                    seen.extend(ids(&page));
                }
                assert_eq!(sizes, [10, 10, 5], "{lister:?} {order} {dir}");
                let unique: BTreeSet<String> = seen.iter().cloned().collect();
                assert_eq!(unique.len(), 25, "{lister:?} {order} {dir}: no webhook twice");
                assert_eq!(unique, expected, "{lister:?} {order} {dir}: every webhook");
            }
        }
    }
    Ok(())
}

/// The group lists of a name filter, sorted by name, through the URL query and the search body.
async fn group_names_matching(host: &TestHost, name: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let mut answers = Vec::new();
    for lister in [GroupList, GroupSearch] {
        let fields = [("name", json!(name)), ("order", json!("name")), ("dir", json!("asc"))];
        let page = lister.ok_page(host, &fields).await?;
        assert_eq!(page["total"], names(&page).len(), "{lister:?} name={name}: {page}");
        answers.push(names(&page));
    }
    Ok(answers)
}

#[tokio::test]
async fn a_group_name_filter_follows_creates_renames_and_removals() -> anyhow::Result<()> {
    let host = TestHost::start().await?;
    // The host's first upkeep call, made at start, marks a fresh store's name-search index
    // complete; from then on a group's name filter reads the index, not the whole group.
    webhooks_tests::eventually(std::time::Duration::from_secs(10), || async {
        let metrics = host.request(Method::GET, "/metrics", "").send().await?.text().await?;
        anyhow::ensure!(
            metrics.contains(r#"webhooks_plugin_call_duration_seconds_count{export="events.maintain"}"#),
            "no upkeep call yet"
        );
        Ok(())
    })
    .await?;
    let one = host
        .create(
            THING_1,
            ADMIN,
            json!([
                {"name": "Pump Ünïcode Sensor", "url": "http://h.example"},
                {"name": "pump-backup", "url": "http://h.example"}
            ]),
        )
        .await?;
    host.create(
        THING_2,
        ADMIN,
        json!([{"name": "Valve sensor", "url": "http://h.example"}, {"name": "PUMP two", "url": "http://h.example"}]),
    )
    .await?;
    host.create(
        THING_3,
        OTHER_ADMIN,
        json!([{"name": "pump elsewhere", "url": "http://h.example"}]),
    )
    .await?;
    let both = |names: &[&str]| -> Vec<Vec<String>> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        vec![names.clone(), names]
    };
    assert_eq!(
        group_names_matching(&host, "PUMP").await?,
        both(&["PUMP two", "Pump Ünïcode Sensor", "pump-backup"])
    );
    assert_eq!(
        group_names_matching(&host, "ÜNÏ").await?,
        both(&["Pump Ünïcode Sensor"])
    );
    assert_eq!(
        group_names_matching(&host, "sensor").await?,
        both(&["Pump Ünïcode Sensor", "Valve sensor"])
    );

    let backup = one[1]["id"].as_str().unwrap();
    let (status, _) = host
        .call(
            Method::PUT,
            &format!("/webhooks/{backup}"),
            ADMIN,
            Some(json!({"name": "Valve-Backup", "url": "http://h.example"})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        group_names_matching(&host, "pump").await?,
        both(&["PUMP two", "Pump Ünïcode Sensor"])
    );
    assert_eq!(group_names_matching(&host, "-backup").await?, both(&["Valve-Backup"]));
    assert_eq!(
        group_names_matching(&host, "valve").await?,
        both(&["Valve sensor", "Valve-Backup"])
    );

    let sensor = one[0]["id"].as_str().unwrap();
    let (status, _) = host
        .call(
            Method::PATCH,
            "/webhooks",
            ADMIN,
            Some(json!({"webhook_ids": [sensor]})),
        )
        .await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(group_names_matching(&host, "pump").await?, both(&["PUMP two"]));
    assert_eq!(group_names_matching(&host, "sensor").await?, both(&["Valve sensor"]));
    assert_eq!(group_names_matching(&host, "ünïcode").await?, both(&[]));
    Ok(())
}
