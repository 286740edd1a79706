//! Paging, ordering and filtering of webhook lists, from a URL query or a search body.

use serde_json::{Map, Value};

use crate::error::{Result, invalid};
use crate::webhooks::record::{MAX_NAME_CHARS, Webhook};

/// The page size when none is given.
pub const DEFAULT_LIMIT: u64 = 10;
/// The largest page size.
pub const MAX_LIMIT: u64 = 200;

/// The field a page is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By webhook id.
    Id,
    /// By name, compared case-insensitively, then by id.
    Name,
}

/// The direction of the sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

/// A validated request for one page of webhooks.
#[derive(Debug, Clone, PartialEq)]
pub struct PageQuery {
    /// Matches skipped before the page starts.
    pub offset: u64,
    /// Most webhooks on the page.
    pub limit: u64,
    /// Sort field.
    pub order: Order,
    /// Sort direction.
    pub dir: Dir,
    /// Case-insensitive substring of the name, lowercased.
    pub name: Option<String>,
    /// Case-insensitive substring of the URL, lowercased.
    pub url: Option<String>,
    /// JSON object the webhook's metadata must contain.
    pub metadata: Option<Map<String, Value>>,
}

impl Default for PageQuery {
    fn default() -> Self {
        PageQuery {
            offset: 0,
            limit: DEFAULT_LIMIT,
            order: Order::Id,
            dir: Dir::Desc,
            name: None,
            url: None,
            metadata: None,
        }
    }
}

impl PageQuery {
    /// Reads the query parameters of a list request. Unknown parameters are ignored, an empty
    /// value counts as absent, and a repeated parameter is refused.
    pub fn from_query(params: &[(String, String)]) -> Result<Self> {
        let mut query = PageQuery::default();
        let mut seen: Vec<&str> = Vec::new();
        for (key, value) in params {
            if seen.contains(&key.as_str()) {
                return Err(invalid(format!("query parameter {key} is given more than once")));
            }
            seen.push(key);
            if value.is_empty() {
                continue;
            }
            match key.as_str() {
                "offset" => query.offset = parse_offset(value)?,
                "limit" => query.limit = parse_limit(value)?,
                "order" => query.order = parse_order(value)?,
                "dir" => query.dir = parse_dir(value)?,
                "name" => query.name = Some(parse_name(value)?),
                "url" => query.url = Some(value.to_lowercase()),
                "metadata" => {
                    let metadata = serde_json::from_str::<Value>(value)
                        .map_err(|_| invalid("metadata must be a URL-encoded JSON object"))?;
                    query.metadata = Some(parse_metadata(metadata)?);
                }
                _ => {}
            }
        }
        Ok(query)
    }

    /// Reads the JSON body of a search request; an empty body means every default, and a
    /// `limit` of 0 means the default page size.
    pub fn from_body(body: &[u8]) -> Result<Self> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(PageQuery::default());
        }
        let value: Value =
            serde_json::from_slice(body).map_err(|e| invalid(format!("request body is not valid JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(invalid("search body must be a JSON object"));
        };
        let mut query = PageQuery::default();
        for (key, value) in fields {
            if value.is_null() {
                continue;
            }
            match key.as_str() {
                "offset" => {
                    query.offset = value
                        .as_u64()
                        .ok_or_else(|| invalid("offset must be a non-negative integer"))?
                }
                "limit" => match value.as_u64() {
                    Some(0) => {}
                    Some(limit) if limit <= MAX_LIMIT => query.limit = limit,
                    _ => return Err(limit_error()),
                },
                "order" => query.order = parse_order(as_str(&key, &value)?)?,
                "dir" => query.dir = parse_dir(as_str(&key, &value)?)?,
                "name" => query.name = Some(parse_name(as_str(&key, &value)?)?),
                "url" => query.url = Some(as_str(&key, &value)?.to_lowercase()),
                "metadata" => query.metadata = Some(parse_metadata(value)?),
                _ => {}
            }
        }
        Ok(query)
    }

    /// Whether a webhook passes every filter of the query.
    pub fn matches(&self, webhook: &Webhook) -> bool {
        if let Some(name) = &self.name
            && !webhook.name.to_lowercase().contains(name.as_str())
        {
            return false;
        }
        if let Some(url) = &self.url
            && !webhook.url.to_lowercase().contains(url.as_str())
        {
            return false;
        }
        if let Some(metadata) = &self.metadata
            && !object_contains(&webhook.metadata, metadata)
        {
            return false;
        }
        true
    }

    /// Sorts every match and cuts the requested page out of them, as the JSON page.
    pub fn page(&self, mut matches: Vec<Webhook>) -> Value {
        let total = matches.len();
        match self.order {
            Order::Id => matches.sort_by(|a, b| a.id.cmp(&b.id)),
            Order::Name => {
                let mut keyed: Vec<(String, Webhook)> =
                    matches.into_iter().map(|w| (w.name.to_lowercase(), w)).collect();
                keyed.sort_by(|(a_name, a), (b_name, b)| a_name.cmp(b_name).then_with(|| a.id.cmp(&b.id)));
                matches = keyed.into_iter().map(|(_, w)| w).collect();
            }
        }
        if self.dir == Dir::Desc {
            matches.reverse();
        }
        let webhooks: Vec<Value> = matches
            .iter()
            .skip(usize::try_from(self.offset).unwrap_or(usize::MAX))
            .take(self.limit as usize)
            .map(Webhook::view)
            .collect();
        serde_json::json!({
            "total": total,
            "offset": self.offset,
            "limit": self.limit,
            "order": match self.order { Order::Id => "id", Order::Name => "name" },
            "dir": match self.dir { Dir::Asc => "asc", Dir::Desc => "desc" },
            "webhooks": webhooks,
        })
    }
}

/// Reads an `offset` query parameter: an integer, 0 or more.
pub fn parse_offset(value: &str) -> Result<u64> {
    value
        .parse::<u64>()
        .map_err(|_| invalid("offset must be a non-negative integer"))
}

/// Reads a `limit` query parameter: an integer from 1 to [`MAX_LIMIT`].
pub fn parse_limit(value: &str) -> Result<u64> {
    let limit = value.parse::<i64>().map_err(|_| limit_error())?;
    if !(1..=MAX_LIMIT as i64).contains(&limit) {
        return Err(limit_error());
    }
    Ok(limit as u64)
}

/// Refuses a query that names a parameter twice.
pub fn refuse_repeats(params: &[(String, String)]) -> Result<()> {
    for (i, (key, _)) in params.iter().enumerate() {
        if params[..i].iter().any(|(earlier, _)| earlier == key) {
            return Err(invalid(format!("query parameter {key} is given more than once")));
        }
    }
    Ok(())
}

fn limit_error() -> crate::Error {
    invalid(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
}

fn as_str<'a>(key: &str, value: &'a Value) -> Result<&'a str> {
    value.as_str().ok_or_else(|| invalid(format!("{key} must be a string")))
}

fn parse_order(value: &str) -> Result<Order> {
    match value {
        "id" => Ok(Order::Id),
        "name" => Ok(Order::Name),
        _ => Err(invalid("order must be id or name")),
    }
}

fn parse_dir(value: &str) -> Result<Dir> {
    match value {
        "asc" => Ok(Dir::Asc),
        "desc" => Ok(Dir::Desc),
        _ => Err(invalid("dir must be asc or desc")),
    }
}

fn parse_name(value: &str) -> Result<String> {
    if value.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(format!(
            "name filter must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    Ok(value.to_lowercase())
}

fn parse_metadata(value: Value) -> Result<Map<String, Value>> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(invalid("metadata filter must be a JSON object")),
    }
}

/// Whether `haystack` holds every key of `needle` with an equal value, nested objects
/// compared the same way.
pub fn object_contains(haystack: &Map<String, Value>, needle: &Map<String, Value>) -> bool {
    needle.iter().all(|(key, wanted)| match (haystack.get(key), wanted) {
        (Some(Value::Object(have)), Value::Object(want)) => object_contains(have, want),
        (Some(have), want) => have == want,
        (None, _) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::testing::params;
    use serde_json::json;

    fn q(pairs: &[(&str, &str)]) -> Result<PageQuery> {
        PageQuery::from_query(&params(pairs))
    }

    fn is_invalid<T: std::fmt::Debug>(result: Result<T>) -> bool {
        matches!(result, Err(Error::Invalid(_)))
    }

    fn webhook(id: &str, name: &str, url: &str, metadata: Value) -> Webhook {
        Webhook {
            v: 1,
            id: id.into(),
            thing_id: "t".into(),
            group_id: "g".into(),
            name: name.into(),
            url: url.into(),
            headers: Map::new(),
            metadata: metadata.as_object().cloned().unwrap_or_default(),
            secret: None,
            disabled: false,
            disabled_reason: None,
            transform: None,
        }
    }

    #[test]
    fn query_defaults() {
        assert_eq!(q(&[]).unwrap(), PageQuery::default());
        assert_eq!(q(&[("limit", ""), ("other", "x")]).unwrap(), PageQuery::default());
    }

    #[test]
    fn query_bounds() {
        assert_eq!(q(&[("offset", "5"), ("limit", "200")]).unwrap().limit, 200);
        for bad in [
            ("offset", "-1"),
            ("offset", "x"),
            ("limit", "0"),
            ("limit", "-3"),
            ("limit", "201"),
            ("limit", "ten"),
            ("limit", "1.5"),
        ] {
            assert!(is_invalid(q(&[bad])), "{bad:?} accepted");
        }
        for bad in [
            ("order", "url"),
            ("dir", "up"),
            ("metadata", "[1]"),
            ("metadata", "{"),
            ("metadata", "3"),
        ] {
            assert!(is_invalid(q(&[bad])), "{bad:?} accepted");
        }
        assert!(is_invalid(q(&[("name", &"n".repeat(255))])));
        assert!(is_invalid(q(&[("limit", "1"), ("limit", "2")])));
    }

    #[test]
    fn body_rules() {
        assert_eq!(PageQuery::from_body(b"").unwrap(), PageQuery::default());
        assert_eq!(PageQuery::from_body(b"{}").unwrap(), PageQuery::default());
        assert_eq!(PageQuery::from_body(br#"{"limit":0}"#).unwrap().limit, DEFAULT_LIMIT);
        let query = PageQuery::from_body(
            br#"{"offset":2,"limit":5,"order":"name","dir":"asc","name":"AB","metadata":{"k":1}}"#,
        )
        .unwrap();
        assert_eq!(
            (query.offset, query.limit, query.order, query.dir),
            (2, 5, Order::Name, Dir::Asc)
        );
        assert_eq!(query.name.as_deref(), Some("ab"));
        for bad in [
            &br#"{"limit":201}"#[..],
            br#"{"limit":-1}"#,
            br#"{"offset":-1}"#,
            br#"{"offset":1.5}"#,
            br#"{"order":1}"#,
            br#"{"metadata":"x"}"#,
            b"[]",
            b"{",
            b"null",
        ] {
            assert!(
                is_invalid(PageQuery::from_body(bad)),
                "{} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn filters_match_case_insensitively_and_metadata_by_containment() {
        let w = webhook(
            "1",
            "Data Pipeline",
            "https://Ingest.example.com",
            json!({"site": {"a": 1, "b": 2}, "x": [1]}),
        );
        let yes = |pairs: &[(&str, &str)]| q(pairs).unwrap().matches(&w);
        assert!(yes(&[("name", "pipe")]));
        assert!(yes(&[("url", "INGEST")]));
        assert!(yes(&[("metadata", r#"{"site":{"a":1}}"#)]));
        assert!(yes(&[("metadata", r#"{"x":[1]}"#)]));
        assert!(!yes(&[("name", "other")]));
        assert!(!yes(&[("metadata", r#"{"site":{"a":2}}"#)]));
        assert!(!yes(&[("metadata", r#"{"missing":null}"#)]));
    }

    #[test]
    fn pages_sort_and_count_every_match() {
        let all = vec![
            webhook("a", "charlie", "http://h", json!({})),
            webhook("b", "Alpha", "http://h", json!({})),
            webhook("c", "bravo", "http://h", json!({})),
        ];
        let page = q(&[("limit", "2")]).unwrap().page(all.clone());
        assert_eq!(page["total"], 3);
        let ids: Vec<_> = page["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].clone())
            .collect();
        assert_eq!(ids, [json!("c"), json!("b")]);
        let page = q(&[("order", "name"), ("dir", "asc"), ("offset", "1")])
            .unwrap()
            .page(all.clone());
        let names: Vec<_> = page["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].clone())
            .collect();
        assert_eq!(names, [json!("bravo"), json!("charlie")]);
        assert_eq!(page["order"], "name");
        let page = q(&[("offset", "10")]).unwrap().page(all);
        assert_eq!(page["total"], 3);
        assert!(page["webhooks"].as_array().unwrap().is_empty());
    }
}
