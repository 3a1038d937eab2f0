//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers'
//! `#[utoipa::path]` annotations and the request and response types. Served at
//! `GET /openapi.json`, printed by `latchkey openapi`, committed as `docs/openapi.json`
//! (a test fails when that copy drifts; `cargo xtask openapi` rewrites it).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Latchkey",
        description = "Holds the credentials (API keys, basic auth, custom fields, OAuth 2.0 grants) that a workflow engine's steps use, and refreshes OAuth tokens. Every error is `{\"error\":{\"code\",\"message\"}}`; each response lists its codes.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        http::system::healthz,
        http::system::metrics,
        http::system::openapi_json,
        http::access_keys::me,
        http::connections::connection_types,
        http::connections::create,
        http::connections::list,
        http::connections::get,
        http::connections::update,
        http::connections::delete,
        http::connections::credentials,
        http::connections::events,
        http::oauth2::authorize,
        http::oauth2::callback,
        http::clients::create,
        http::clients::list,
        http::clients::get,
        http::clients::delete,
        http::access_keys::create,
        http::access_keys::list,
        http::access_keys::delete,
    ),
    modifiers(&BearerAuth, &Links),
    tags(
        (name = "connections", description = "Connections and their credentials"),
        (name = "oauth2", description = "The OAuth 2.0 consent flow"),
        (name = "oauth2-clients", description = "Reusable OAuth client registrations"),
        (name = "access-keys", description = "Project-scoped access keys"),
        (name = "system", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "LATCHKEY_ADMIN_TOKEN, or an access key `lk_<id>_<secret>`",
                    ))
                    .build(),
            ),
        );
    }
}

/// OpenAPI links from each create to the operations on what it created, so clients
/// (and the schema-driven fuzzer's stateful phase) can follow `data.id`.
struct Links;

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let created: &[(&str, &[&str])] = &[
            (
                "/v1/connections",
                &[
                    "getConnection",
                    "updateConnection",
                    "deleteConnection",
                    "getCredentials",
                    "listEvents",
                    "authorize",
                ],
            ),
            (
                "/v1/oauth2-clients",
                &["getOAuthClient", "deleteOAuthClient"],
            ),
            ("/v1/access-keys", &["deleteAccessKey"]),
        ];
        for (path, targets) in created {
            let Some(response) = openapi
                .paths
                .paths
                .get_mut(*path)
                .and_then(|item| item.post.as_mut())
                .and_then(|op| op.responses.responses.get_mut("201"))
            else {
                continue;
            };
            let utoipa::openapi::RefOr::T(response) = response else {
                continue;
            };
            for target in *targets {
                response.links.insert(
                    (*target).to_owned(),
                    utoipa::openapi::RefOr::T(
                        utoipa::openapi::link::LinkBuilder::new()
                            .operation_id(*target)
                            .parameter("id", "$response.body#/data/id")
                            .build(),
                    ),
                );
            }
        }
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // The crate version would change the document on every release; the API's own
    // version is its path prefix.
    doc.info.version = "v1".into();
    doc
}

/// The document as pretty JSON.
pub fn json() -> String {
    let mut value = match serde_json::to_value(document()) {
        Ok(v) => v,
        // Serialising plain data to JSON cannot fail; keep a valid answer regardless.
        Err(e) => return format!("{{\"error\":\"{e}\"}}"),
    };
    fix_link_keys(&mut value, false);
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// utoipa 5 writes a Link object's fields in snake case (`operation_id`); OpenAPI
/// spells them in camel case.
fn fix_link_keys(value: &mut serde_json::Value, in_links: bool) {
    match value {
        serde_json::Value::Object(map) => {
            if in_links {
                for link in map.values_mut() {
                    if let Some(obj) = link.as_object_mut() {
                        for (from, to) in [
                            ("operation_id", "operationId"),
                            ("operation_ref", "operationRef"),
                            ("request_body", "requestBody"),
                        ] {
                            if let Some(v) = obj.remove(from) {
                                obj.insert(to.to_owned(), v);
                            }
                        }
                    }
                }
                return;
            }
            for (key, child) in map.iter_mut() {
                fix_link_keys(child, key == "links");
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                fix_link_keys(item, false);
            }
        }
        _ => {}
    }
}
