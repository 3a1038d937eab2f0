//! `docs/openapi.json` is the generated document, byte for byte. Regenerate it with
//! `cargo xtask openapi` (or `LATCHKEY_UPDATE_OPENAPI=1 cargo test -p latchkey-api --test openapi`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn committed_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = format!("{}\n", latchkey_api::openapi::json());
    let path = committed_path();
    if std::env::var_os("LATCHKEY_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the document the code generates: run `cargo xtask openapi` and commit the result"
    );
}

#[test]
fn the_document_covers_the_contract() {
    let doc: serde_json::Value = serde_json::from_str(&latchkey_api::openapi::json()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(
        error["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    // Creates link to the operations on what they created.
    let link =
        &doc["paths"]["/v1/connections"]["post"]["responses"]["201"]["links"]["getCredentials"];
    assert_eq!(link["operationId"], "getCredentials", "{link}");
    assert_eq!(link["parameters"]["id"], "$response.body#/data/id");
    // Every route the server registers, with its methods (the management page's static
    // files under `/` and `/ui/` are not API).
    let expected: &[(&str, &[&str])] = &[
        ("/healthz", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
        ("/v1/me", &["get"]),
        ("/v1/connection-types", &["get"]),
        ("/v1/connections", &["get", "post"]),
        ("/v1/connections/{id}", &["delete", "get", "patch"]),
        ("/v1/connections/{id}/credentials", &["get"]),
        ("/v1/connections/{id}/events", &["get"]),
        ("/v1/connections/{id}/oauth2/authorize", &["post"]),
        ("/v1/connections/oauth2/callback", &["get"]),
        ("/v1/oauth2-clients", &["get", "post"]),
        ("/v1/oauth2-clients/{id}", &["delete", "get"]),
        ("/v1/access-keys", &["get", "post"]),
        ("/v1/access-keys/{id}", &["delete"]),
    ];
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), expected.len(), "{:?}", paths.keys());
    for (path, methods) in expected {
        let item = paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is missing"));
        let mut found: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        found.sort();
        assert_eq!(&found, methods, "{path}");
        for m in *methods {
            let op = &item[*m];
            let public = matches!(
                *path,
                "/healthz" | "/openapi.json" | "/v1/connections/oauth2/callback"
            );
            assert_eq!(op.get("security").is_none(), public, "{m} {path}: security");
            if !public {
                let unauthorized = &op["responses"]["401"];
                assert!(
                    unauthorized["description"]
                        .as_str()
                        .unwrap()
                        .contains("unauthorized"),
                    "{m} {path}"
                );
                assert_eq!(
                    unauthorized["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{m} {path}"
                );
            }
        }
    }
}

/// Every code a response's description lists ("... Codes: a, b (why), c.") is one the API
/// has: the `ErrorCode` enum of the document, which is the code's own list.
#[test]
fn the_codes_each_response_lists_exist() {
    let doc: serde_json::Value = serde_json::from_str(&latchkey_api::openapi::json()).unwrap();
    let known: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode is an enum")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let mut listed = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                let description = response["description"].as_str().unwrap_or_default();
                let Some((_, codes)) = description.split_once("Codes: ") else {
                    continue;
                };
                // Drop the parenthesised explanations, which hold commas of their own.
                let mut depth = 0;
                let bare: String = codes
                    .chars()
                    .filter(|c| {
                        match c {
                            '(' => depth += 1,
                            ')' => depth -= 1,
                            _ => return depth == 0,
                        }
                        false
                    })
                    .collect();
                for code in bare.trim().trim_end_matches('.').split(',') {
                    let code = code.trim();
                    assert!(
                        known.contains(&code),
                        "{method} {path} {status} lists {code:?}, which is not an ErrorCode"
                    );
                    listed += 1;
                }
            }
        }
    }
    assert!(listed > 50, "only {listed} codes found: the parsing is off");
}
