//! The HTTP layer in process: the app the server runs (`http::app`, the same routes,
//! middleware and state, on SQLite in a temporary directory), called through
//! `actix_web::test` without a socket. Here lives what needs no second process: the
//! table of malformed requests (status, code and message, never a 500) and
//! authentication coming first. The black-box suite (`tests/tests/foundation.rs`) keeps
//! what crosses the process: start-up, restarts, the data files, several servers.

// Test helpers: panicking is how they fail a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::{HeaderMap, AUTHORIZATION, WWW_AUTHENTICATE};
use actix_web::http::{Method, StatusCode};
use actix_web::{test, web};
use serde_json::{json, Value};

use latchkey_api::http::{self, AppState};
use latchkey_api::Config;

const ADMIN_TOKEN: &str = "admin-token-for-the-in-process-tests";

/// The server's state on a fresh SQLite database in `dir`, with a generated master key,
/// the admin token above and no background jobs.
async fn state(dir: &Path) -> web::Data<AppState> {
    let vars: HashMap<String, String> = [
        ("LATCHKEY_DATA_DIR", dir.to_str().unwrap()),
        ("LATCHKEY_ADMIN_TOKEN", ADMIN_TOKEN),
        ("LATCHKEY_RUN_JOBS", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = Config::from_vars(&vars).unwrap();
    latchkey_api::app_state(&config).await.unwrap()
}

fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// One HTTP answer, read whole.
#[derive(Debug)]
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {}", self.status, self.text))
    }

    fn data(&self) -> Value {
        self.json()["data"].clone()
    }

    fn id(&self) -> String {
        self.data()["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no data.id in {}", self.text))
            .to_owned()
    }

    #[track_caller]
    fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts an error of our shape: `{"error": {"code", "message"}}`.
    #[track_caller]
    fn expect_error(self, status: u16, code: &str) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "unexpected code in {}", self.text);
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "no message in {}",
            self.text
        );
        assert!(v.get("data").is_none(), "an error with data: {}", self.text);
        self
    }
}

/// A caller of the in-process app with one bearer token (or none).
struct Api<'a, S> {
    app: &'a S,
    token: Option<String>,
}

impl<'a, S, B> Api<'a, S>
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    fn admin(app: &'a S) -> Self {
        Self::with_token(app, Some(ADMIN_TOKEN))
    }

    fn with_token(app: &'a S, token: Option<&str>) -> Self {
        Self {
            app,
            token: token.map(str::to_owned),
        }
    }

    /// Sends `headers` and `body` as given (no Content-Type unless among `headers`).
    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let mut req = test::TestRequest::default().method(method).uri(path);
        if let Some(t) = &self.token {
            req = req.insert_header((AUTHORIZATION, format!("Bearer {t}")));
        }
        for (name, value) in headers {
            req = req.insert_header((*name, *value));
        }
        if !body.is_empty() {
            req = req.set_payload(body.to_owned());
        }
        // An `Err` is what a middleware returned; actix answers it with its response.
        let (status, headers, bytes) = match self.app.call(req.to_request()).await {
            Ok(res) => {
                let (status, headers) = (res.status(), res.headers().clone());
                let bytes = actix_web::body::to_bytes(res.into_body())
                    .await
                    .map_err(|_| "reading the body")
                    .unwrap();
                (status, headers, bytes)
            }
            Err(e) => {
                let res = e.error_response();
                let (status, headers) = (res.status(), res.headers().clone());
                let bytes = actix_web::body::to_bytes(res.into_body()).await.unwrap();
                (status, headers, bytes)
            }
        };
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        // Never a 500, whatever we send.
        assert!(
            !status.is_server_error(),
            "the server answered {status}: {text}"
        );
        Resp {
            status,
            headers,
            text,
        }
    }

    async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, &[], "").await
    }

    async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, &[], "").await
    }

    async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            &body.to_string(),
        )
        .await
    }

    /// A raw body with a given content type (`None`: no Content-Type header).
    async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> Resp {
        match content_type {
            Some(ct) => self.send(method, path, &[("content-type", ct)], body).await,
            None => self.send(method, path, &[], body).await,
        }
    }

    async fn create(&self, project: &str, name: &str, kind: &str, config: Value) -> Resp {
        self.post(
            "/v1/connections",
            &json!({"project_id": project, "name": name, "type": kind, "config": config}),
        )
        .await
    }

    async fn create_key(&self, project: &str, scopes: &[&str]) -> (String, String) {
        let r = self
            .post(
                "/v1/access-keys",
                &json!({"project_id": project, "name": format!("key {}", random_hex(3)), "scopes": scopes}),
            )
            .await
            .expect(201);
        let d = r.data();
        let token = d["key"].as_str().expect("key shown once").to_owned();
        (d["id"].as_str().unwrap().to_owned(), token)
    }
}

// ---------------------------------------------------------------------------------------
// Bad input: status and code, never a 500
// ---------------------------------------------------------------------------------------

/// (method, path, content type, body, expected status, expected code)
type BadRequest<'a> = (Method, String, Option<&'a str>, String, u16, &'a str);

#[actix_web::test]
async fn malformed_requests_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = test::init_service(http::app(state(dir.path()).await)).await;
    let api = Api::admin(&server);
    let id = api
        .create(
            "perr",
            "existing",
            "api_key",
            json!({"api_key": "k-0000000000"}),
        )
        .await
        .expect(201)
        .id();
    let unknown = "3f1d1c4e-6a51-4d7e-9a36-1b9c2b7d0e11";
    let conn = |kind: &str, config: Value| json!({"project_id": "perr", "name": format!("n-{}", random_hex(3)), "type": kind, "config": config});
    let json_ct = Some("application/json");

    // (method, path, content type, body, status, code)
    let big = format!(
        "{{\"project_id\":\"perr\",\"name\":\"big\",\"type\":\"api_key\",\"config\":{{\"api_key\":\"{}\"}}}}",
        "x".repeat(70 * 1024)
    );
    let just_under = format!(
        "{{\"project_id\":\"perr\",\"name\":\"big\",\"type\":\"api_key\",\"config\":{{\"api_key\":\"{}\"}}}}",
        "x".repeat(60 * 1024)
    );
    let s = |v: Value| v.to_string();
    let table: Vec<BadRequest<'_>> = vec![
        // Not JSON, or JSON of the wrong shape.
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            "{\"name\": ".into(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            "".into(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            "[]".into(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            "null".into(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(
                json!({"name": 5, "project_id": "perr", "type": "api_key", "config": {"api_key": "k"}}),
            ),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(
                json!({"name": "n", "project_id": "perr", "type": "api_key", "config": {"api_key": "k"}, "surprise": 1}),
            ),
            400,
            "invalid_json",
        ),
        // Unknown type.
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("ftp", json!({"api_key": "k"}))),
            400,
            "unknown_type",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("", json!({"api_key": "k"}))),
            400,
            "unknown_type",
        ),
        // Missing fields.
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(json!({"name": "n", "project_id": "perr", "config": {"api_key": "k"}})),
            400,
            "missing_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(json!({"project_id": "perr", "type": "api_key", "config": {"api_key": "k"}})),
            400,
            "missing_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(json!({"name": "n", "type": "api_key", "config": {"api_key": "k"}})),
            400,
            "missing_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(json!({"name": "n", "project_id": "perr", "type": "api_key"})),
            400,
            "missing_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(json!({})),
            400,
            "missing_field",
        ),
        // Empty or invalid fields.
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(
                json!({"name": "", "project_id": "perr", "type": "api_key", "config": {"api_key": "k"}}),
            ),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(
                json!({"name": "   ", "project_id": "perr", "type": "api_key", "config": {"api_key": "k"}}),
            ),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(
                json!({"name": "a\u{7}b", "project_id": "perr", "type": "api_key", "config": {"api_key": "k"}}),
            ),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(
                json!({"name": "x".repeat(201), "project_id": "perr", "type": "api_key", "config": {"api_key": "k"}}),
            ),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(
                json!({"name": "n", "project_id": "", "type": "api_key", "config": {"api_key": "k"}}),
            ),
            400,
            "invalid_id",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(
                json!({"name": "n", "project_id": "has space", "type": "api_key", "config": {"api_key": "k"}}),
            ),
            400,
            "invalid_id",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("api_key", json!({}))),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("api_key", json!({"api_key": ""}))),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("api_key", json!({"api_key": "  "}))),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("api_key", json!({"api_key": 42}))),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("api_key", json!({"api_key": "k", "other": "v"}))),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("api_key", json!("k"))),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("api_key", Value::Null)),
            400,
            "missing_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("basic", json!({"username": "u"}))),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("basic", json!({"password": "p"}))),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("basic", json!({"username": "", "password": "p"}))),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("custom", json!({}))),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("custom", json!({"fields": {}}))),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn(
                "custom",
                json!({"fields": {"bad name": {"value": "v"}}}),
            )),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("custom", json!({"fields": {"f": "v"}}))),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("custom", json!({"fields": {"f": {"secret": true}}}))),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn("custom", json!({"fields": {"f": {"value": ""}}}))),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn(
                "custom",
                json!({"fields": {"f": {"value": "v", "secret": "yes"}}}),
            )),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(conn(
                "custom",
                json!({"fields": {"f": {"value": "v", "hint": 1}}}),
            )),
            400,
            "invalid_field",
        ),
        // A name taken in the project.
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            s(
                json!({"name": "existing", "project_id": "perr", "type": "basic", "config": {"username": "u", "password": "p"}}),
            ),
            409,
            "name_taken",
        ),
        // Size and media type.
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            big,
            413,
            "payload_too_large",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            json_ct,
            just_under,
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            Some("text/plain"),
            s(conn("api_key", json!({"api_key": "k"}))),
            415,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            Some("application/x-www-form-urlencoded"),
            "name=n".into(),
            415,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/v1/connections".into(),
            None,
            s(conn("api_key", json!({"api_key": "k"}))),
            415,
            "unsupported_media_type",
        ),
        (
            Method::PATCH,
            format!("/v1/connections/{id}"),
            Some("text/plain"),
            s(json!({"name": "n"})),
            415,
            "unsupported_media_type",
        ),
        // Unknown routes and ids.
        (
            Method::GET,
            "/v1/nope".into(),
            None,
            "".into(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/nope".into(),
            None,
            "".into(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/connections/not-a-uuid".into(),
            None,
            "".into(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/connections/not-a-uuid/credentials".into(),
            None,
            "".into(),
            404,
            "not_found",
        ),
        (
            Method::PATCH,
            "/v1/connections/not-a-uuid".into(),
            json_ct,
            s(json!({"name": "n"})),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/v1/connections/not-a-uuid".into(),
            None,
            "".into(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            format!("/v1/connections/{unknown}"),
            None,
            "".into(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            format!("/v1/connections/{unknown}/credentials"),
            None,
            "".into(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            format!("/v1/connections/{unknown}/events"),
            None,
            "".into(),
            404,
            "not_found",
        ),
        (
            Method::PATCH,
            format!("/v1/connections/{unknown}"),
            json_ct,
            s(json!({"name": "n"})),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            format!("/v1/connections/{unknown}"),
            None,
            "".into(),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            format!("/v1/access-keys/{unknown}"),
            None,
            "".into(),
            404,
            "not_found",
        ),
        (
            Method::DELETE,
            "/v1/access-keys/not-a-uuid".into(),
            None,
            "".into(),
            404,
            "not_found",
        ),
        // PATCH bodies.
        (
            Method::PATCH,
            format!("/v1/connections/{id}"),
            json_ct,
            s(json!({})),
            400,
            "missing_field",
        ),
        (
            Method::PATCH,
            format!("/v1/connections/{id}"),
            json_ct,
            "{".into(),
            400,
            "invalid_json",
        ),
        (
            Method::PATCH,
            format!("/v1/connections/{id}"),
            json_ct,
            s(json!({"name": "n", "version": "one"})),
            400,
            "invalid_json",
        ),
        (
            Method::PATCH,
            format!("/v1/connections/{id}"),
            json_ct,
            s(json!({"name": "n", "project_id": "other"})),
            400,
            "invalid_json",
        ),
        (
            Method::PATCH,
            format!("/v1/connections/{id}"),
            json_ct,
            s(json!({"name": ""})),
            400,
            "invalid_field",
        ),
        (
            Method::PATCH,
            format!("/v1/connections/{id}"),
            json_ct,
            s(json!({"config": {"api_key": ""}})),
            400,
            "invalid_field",
        ),
        (
            Method::PATCH,
            format!("/v1/connections/{id}"),
            json_ct,
            s(json!({"config": {"username": "u", "password": "p"}})),
            400,
            "invalid_field",
        ),
        (
            Method::PATCH,
            format!("/v1/connections/{id}"),
            json_ct,
            s(json!({"name": "n", "version": 99})),
            409,
            "version_conflict",
        ),
        // Queries.
        (
            Method::GET,
            "/v1/connections?limit=0".into(),
            None,
            "".into(),
            400,
            "invalid_field",
        ),
        (
            Method::GET,
            "/v1/connections?limit=201".into(),
            None,
            "".into(),
            400,
            "invalid_field",
        ),
        (
            Method::GET,
            "/v1/connections?limit=-1".into(),
            None,
            "".into(),
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/connections?limit=many".into(),
            None,
            "".into(),
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/connections?colour=red".into(),
            None,
            "".into(),
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/v1/connections?status=sleepy".into(),
            None,
            "".into(),
            400,
            "invalid_field",
        ),
        (
            Method::GET,
            "/v1/connections?type=ftp".into(),
            None,
            "".into(),
            400,
            "unknown_type",
        ),
        (
            Method::GET,
            "/v1/connections?after=not-a-uuid".into(),
            None,
            "".into(),
            400,
            "invalid_id",
        ),
        (
            Method::GET,
            "/v1/connections?project_id=has%20space".into(),
            None,
            "".into(),
            400,
            "invalid_id",
        ),
        (
            Method::GET,
            format!("/v1/connections/{id}/credentials?flow_id=bad%20flow"),
            None,
            "".into(),
            400,
            "invalid_id",
        ),
        (
            Method::GET,
            format!("/v1/connections/{id}/credentials?flow=x"),
            None,
            "".into(),
            400,
            "invalid_query",
        ),
        // Access keys.
        (
            Method::POST,
            "/v1/access-keys".into(),
            json_ct,
            s(json!({"project_id": "perr", "scopes": ["root"]})),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/access-keys".into(),
            json_ct,
            s(json!({"project_id": "perr", "scopes": []})),
            400,
            "invalid_field",
        ),
        (
            Method::POST,
            "/v1/access-keys".into(),
            json_ct,
            s(json!({"project_id": "perr"})),
            400,
            "missing_field",
        ),
        (
            Method::POST,
            "/v1/access-keys".into(),
            json_ct,
            s(json!({"scopes": ["connections:read"]})),
            400,
            "missing_field",
        ),
        (
            Method::POST,
            "/v1/access-keys".into(),
            json_ct,
            s(json!({"project_id": "bad id!", "scopes": ["connections:read"]})),
            400,
            "invalid_id",
        ),
        (
            Method::POST,
            "/v1/access-keys".into(),
            json_ct,
            s(json!({"project_id": "perr", "scopes": "connections:read"})),
            400,
            "invalid_json",
        ),
    ];
    let mut failures = Vec::new();
    for (m, path, ct, body, status, code) in &table {
        let r = api.raw(m.clone(), path, *ct, body).await;
        let got_code = serde_json::from_str::<Value>(&r.text)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
        let message_ok = serde_json::from_str::<Value>(&r.text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(|m| !m.is_empty()))
            .unwrap_or(false);
        if r.status.as_u16() != *status || got_code.as_deref() != Some(*code) || !message_ok {
            let shown: String = body.chars().take(80).collect();
            failures.push(format!(
                "{m} {path} [{ct:?}] {shown}: want {status} {code}, got {} {}",
                r.status.as_u16(),
                r.text.chars().take(300).collect::<String>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} malformed requests were answered wrongly:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );

    // Authentication comes first: without a valid key, every one of these /v1 requests
    // is 401, whatever else is wrong with it. Keys of the right form make the server
    // look them up (a revoked key, a wrong secret), which used to let a bad body answer
    // 415 or 400 first.
    let (revoked_id, revoked) = api.create_key("perr", &["connections:write"]).await;
    api.delete(&format!("/v1/access-keys/{revoked_id}"))
        .await
        .expect(204);
    let (_, live) = api.create_key("perr", &["connections:write"]).await;
    let wrong_secret = format!("{}{}", &live[..live.len() - 4], "0000");
    let mut unauthenticated = Vec::new();
    for token in [Some(revoked.as_str()), Some(wrong_secret.as_str()), None] {
        let anon = Api::with_token(&server, token);
        for (m, path, ct, body, _, _) in table.iter().filter(|r| r.1.starts_with("/v1/")) {
            let r = anon.raw(m.clone(), path, *ct, body).await;
            let code = serde_json::from_str::<Value>(&r.text)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
            if r.status.as_u16() != 401 || code.as_deref() != Some("unauthorized") {
                unauthenticated.push(format!(
                    "{m} {path} [{ct:?}] with {}: want 401 unauthorized, got {} {}",
                    if token.is_some() {
                        "a bad key"
                    } else {
                        "no key"
                    },
                    r.status.as_u16(),
                    r.text.chars().take(200).collect::<String>()
                ));
            }
        }
    }
    assert!(
        unauthenticated.is_empty(),
        "{} unauthenticated requests were not refused first:\n{}",
        unauthenticated.len(),
        unauthenticated.join("\n")
    );

    // The unknown type message lists the accepted types.
    let r = api
        .create("perr", "t", "ftp", json!({"api_key": "k"}))
        .await
        .expect_error(400, "unknown_type");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    for t in ["api_key", "basic", "custom"] {
        assert!(msg.contains(t), "the message does not list {t}: {msg}");
    }
    // A missing field is named.
    let r = api
        .post(
            "/v1/connections",
            &json!({"name": "n", "project_id": "perr", "config": {}}),
        )
        .await
        .expect_error(400, "missing_field");
    assert!(r.text.contains("type"), "{}", r.text);
    let r = api
        .create("perr", "n", "basic", json!({"username": "u"}))
        .await
        .expect_error(400, "invalid_field");
    assert!(r.text.contains("password"), "{}", r.text);

    // None of it changed the one connection there is.
    let d = api
        .get(&format!("/v1/connections/{id}"))
        .await
        .expect(200)
        .data();
    assert_eq!(d["name"], "existing");
    assert_eq!(d["version"], 1);
    let all = api
        .get("/v1/connections?project_id=perr")
        .await
        .expect(200)
        .data();
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
}

// ---------------------------------------------------------------------------------------
// Authentication: every kind of bad credential is 401, with WWW-Authenticate
// ---------------------------------------------------------------------------------------

#[actix_web::test]
async fn bad_credentials_of_every_kind_are_refused_with_401() {
    let dir = tempfile::tempdir().unwrap();
    let server = test::init_service(http::app(state(dir.path()).await)).await;
    let admin = Api::admin(&server);
    const ALL: [&str; 3] = ["connections:read", "connections:write", "credentials:read"];
    let (_, a_token) = admin.create_key("pa", &ALL).await;
    let (_, b_token) = admin.create_key("pb", &ALL).await;
    let a_conn = Api::with_token(&server, Some(&a_token))
        .create(
            "pa",
            "a1",
            "api_key",
            json!({"api_key": "SECRET-a1-0000000000"}),
        )
        .await
        .expect(201)
        .id();
    let creds = format!("/v1/connections/{a_conn}/credentials");

    // 401: no token, a bad one, another scheme.
    let forged = format!("lk_{}_{}", "0".repeat(32), "A".repeat(43));
    let tampered = format!(
        "{}{}",
        &a_token[..a_token.len() - 1],
        if a_token.ends_with('A') { 'B' } else { 'A' }
    );
    let wrong_id = {
        // Another key's id with this key's secret.
        let (_, rest) = a_token.split_once('_').unwrap();
        let (_, secret) = rest.split_once('_').unwrap();
        let (_, b_rest) = b_token.split_once('_').unwrap();
        let (b_id, _) = b_rest.split_once('_').unwrap();
        format!("lk_{b_id}_{secret}")
    };
    let anon = Api::with_token(&server, None);
    for header in [
        None,
        Some("Bearer".to_owned()),
        Some("Bearer    ".to_owned()),
        Some("Bearer wrong-token".to_owned()),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(ADMIN_TOKEN.to_owned()),
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some(format!("Bearer {forged}")),
        Some(format!("Bearer {tampered}")),
        Some(format!("Bearer {wrong_id}")),
    ] {
        let headers: Vec<(&str, &str)> = header
            .as_deref()
            .map(|h| ("authorization", h))
            .into_iter()
            .collect();
        let r = anon
            .send(Method::GET, "/v1/connections", &headers, "")
            .await
            .expect_error(401, "unauthorized");
        assert!(
            r.headers.get(WWW_AUTHENTICATE).is_some(),
            "{header:?}: no WWW-Authenticate"
        );
        // The same for a connection and its credentials.
        anon.send(Method::GET, &creds, &headers, "")
            .await
            .expect_error(401, "unauthorized");
    }
    // The keys themselves work.
    Api::with_token(&server, Some(&a_token))
        .get(&creds)
        .await
        .expect(200);
}

// ---------------------------------------------------------------------------------------
// Scopes: each allows its operations only; only the admin manages access keys
// ---------------------------------------------------------------------------------------

#[actix_web::test]
async fn each_scope_allows_only_its_operations() {
    let dir = tempfile::tempdir().unwrap();
    let server = test::init_service(http::app(state(dir.path()).await)).await;
    let admin = Api::admin(&server);
    const ALL: [&str; 3] = ["connections:read", "connections:write", "credentials:read"];
    let (a_id, a_token) = admin.create_key("pa", &ALL).await;
    let (_, read_token) = admin.create_key("pa", &["connections:read"]).await;
    let (_, write_token) = admin.create_key("pa", &["connections:write"]).await;
    let (_, creds_token) = admin.create_key("pa", &["credentials:read"]).await;
    let a = Api::with_token(&server, Some(&a_token));
    let a_conn = a
        .create(
            "pa",
            "a1",
            "api_key",
            json!({"api_key": "SECRET-a1-0000000000"}),
        )
        .await
        .expect(201)
        .id();

    // Scopes: (token, method, path, body, expected status)
    let rd = Api::with_token(&server, Some(&read_token));
    let wr = Api::with_token(&server, Some(&write_token));
    let cr = Api::with_token(&server, Some(&creds_token));
    let conn = format!("/v1/connections/{a_conn}");
    let creds = format!("/v1/connections/{a_conn}/credentials");
    let new_conn = json!({"project_id": "pa", "name": "by write key", "type": "api_key", "config": {"api_key": "k-12345"}});
    let table: Vec<(&Api<'_, _>, Method, String, Option<Value>, u16)> = vec![
        (&rd, Method::GET, conn.clone(), None, 200),
        (&rd, Method::GET, "/v1/connections".into(), None, 200),
        (&rd, Method::GET, creds.clone(), None, 403),
        (
            &rd,
            Method::POST,
            "/v1/connections".into(),
            Some(new_conn.clone()),
            403,
        ),
        (
            &rd,
            Method::PATCH,
            conn.clone(),
            Some(json!({"name": "x"})),
            403,
        ),
        (&rd, Method::DELETE, conn.clone(), None, 403),
        (&wr, Method::GET, conn.clone(), None, 403),
        (&wr, Method::GET, creds.clone(), None, 403),
        (
            &wr,
            Method::POST,
            "/v1/connections".into(),
            Some(new_conn.clone()),
            201,
        ),
        (&cr, Method::GET, creds.clone(), None, 200),
        (&cr, Method::GET, conn.clone(), None, 403),
        (&cr, Method::GET, "/v1/connections".into(), None, 403),
        // Only the admin manages access keys.
        (
            &a,
            Method::POST,
            "/v1/access-keys".into(),
            Some(json!({"project_id": "pa", "scopes": ALL})),
            403,
        ),
        (&a, Method::GET, "/v1/access-keys".into(), None, 403),
        (
            &a,
            Method::DELETE,
            format!("/v1/access-keys/{a_id}"),
            None,
            403,
        ),
    ];
    for (who, m, path, body, want) in table {
        let r = match &body {
            Some(b) => {
                who.send(
                    m.clone(),
                    &path,
                    &[("content-type", "application/json")],
                    &b.to_string(),
                )
                .await
            }
            None => who.send(m.clone(), &path, &[], "").await,
        };
        if want == 403 {
            r.expect_error(403, "forbidden");
        } else {
            assert_eq!(r.status.as_u16(), want, "{m} {path}: {}", r.text);
        }
    }
}
