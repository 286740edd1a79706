//! `GET /openapi.json`: the OpenAPI 3 description of every endpoint, kept true by the test
//! below, which compares it with the route table the router is built from.

use axum::http::header;
use axum::response::IntoResponse;

use super::routes::Routes;

/// The description, as served.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The routes of this area.
pub fn routes() -> Routes {
    Routes::new().get("/openapi.json", openapi)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::OPENAPI;

    /// (method, path) in OpenAPI's syntax, where every parameter is `{name}`.
    fn described() -> BTreeSet<(String, String)> {
        let spec: serde_json::Value = serde_json::from_str(OPENAPI).expect("the description is JSON");
        assert_eq!(spec["openapi"], "3.0.3");
        let mut operations = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
                if item.get(method).is_some() {
                    operations.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        operations
    }

    #[test]
    fn the_description_covers_exactly_the_routes() {
        let routed: BTreeSet<(String, String)> = crate::api::routes()
            .served()
            .iter()
            // axum's catch-all `{*rest}` is an ordinary `{rest}` to OpenAPI.
            .map(|(method, path)| (method.to_string(), path.replace("{*", "{")))
            .collect();
        let described = described();
        let undocumented: Vec<_> = routed.difference(&described).collect();
        let unrouted: Vec<_> = described.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.json: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "openapi.json describes what is not routed: {unrouted:?}"
        );
    }

    #[test]
    fn every_operation_documents_its_errors_and_references_resolve() {
        let spec: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut references = Vec::new();
        collect_refs(&spec, &mut references);
        for reference in references {
            let pointer = reference.trim_start_matches('#');
            assert!(spec.pointer(pointer).is_some(), "{reference} does not resolve");
        }
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                assert!(
                    operation["operationId"].is_string(),
                    "{method} {path} has no operationId"
                );
                assert!(operation["responses"].is_object(), "{method} {path} has no responses");
            }
        }
    }

    fn collect_refs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", serde_json::Value::String(target)) => out.push(target.clone()),
                        _ => collect_refs(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| collect_refs(item, out)),
            _ => {}
        }
    }
}
