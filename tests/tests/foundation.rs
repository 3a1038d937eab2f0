//! "Foundation": the project-scoped credential store for `api_key`, `basic` and `custom`
//! connections, proven through HTTP against the real `latchkey` binary.
//!
//! - secrets never leave through the management views, only through `/credentials`;
//!   they are not in the SQLite file (nor its WAL), nor in the server log;
//! - data survives a restart; master keys: generated key file, wrong / missing key
//!   refuses start-up and touches nothing, rotation;
//! - access keys, scopes and project isolation;
//! - (the table of malformed requests, and every kind of bad credential, are checked in
//!   process: crates/api/tests/requests.rs);
//! - PATCH (rename, replace secret, compare-and-set), DELETE, paging and filters;
//! - the core scenario again on PostgreSQL when `LATCHKEY_TEST_POSTGRES_URL` is set.

// Test helpers: panicking is how they fail a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use latchkey_tests::server::{LatchkeyServer, PgDatabase, ServerOptions, ADMIN_TOKEN};
use reqwest::header::{HeaderMap, CACHE_CONTROL, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fresh `id:base64` master key entry and its base64 material.
fn master_key(id: &str) -> (String, String) {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    let material = base64::engine::general_purpose::STANDARD.encode(b);
    (format!("{id}:{material}"), material)
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

    #[track_caller]
    fn assert_free_of(&self, secrets: &[String], what: &str) {
        for s in secrets {
            assert!(
                !self.text.contains(s.as_str()),
                "{what}: the response contains the secret {s:?}: {}",
                self.text
            );
        }
    }
}

/// A caller of one server with one bearer token (or none).
#[derive(Debug, Clone)]
struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    fn admin(server: &LatchkeyServer) -> Self {
        Self::with_token(server, Some(ADMIN_TOKEN))
    }

    fn with_token(server: &LatchkeyServer, token: Option<&str>) -> Self {
        Self {
            base: server.base_url.clone(),
            token: token.map(str::to_owned),
            http: reqwest::Client::new(),
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = rb.send().await.expect("request failed");
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.expect("reading the body");
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
        self.send(self.request(Method::GET, path)).await
    }

    async fn delete(&self, path: &str) -> Resp {
        self.send(self.request(Method::DELETE, path)).await
    }

    async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    async fn patch(&self, path: &str, body: &Value) -> Resp {
        self.send(self.request(Method::PATCH, path).json(body))
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
        let mut rb = self.request(method, path).body(body.to_owned());
        if let Some(ct) = content_type {
            rb = rb.header(CONTENT_TYPE, ct);
        }
        self.send(rb).await
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

/// Each file of the SQLite database (main file, WAL, shared memory) that exists.
fn sqlite_files(work_dir: &Path) -> Vec<PathBuf> {
    ["latchkey.db", "latchkey.db-wal", "latchkey.db-shm"]
        .iter()
        .map(|f| work_dir.join("data").join(f))
        .filter(|p| p.exists())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Asserts no secret is in any file of the SQLite database, and (as a control that the
/// scan sees the data at all) that every `present` value is.
#[track_caller]
fn assert_db_free_of(work_dir: &Path, secrets: &[String], present: &[String]) {
    let files = sqlite_files(work_dir);
    assert!(
        files.iter().any(|f| f.ends_with("latchkey.db")),
        "no SQLite file under {}",
        work_dir.display()
    );
    let mut all = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for s in secrets {
            assert!(
                !contains(&bytes, s.as_bytes()),
                "{} contains the secret {s:?}",
                f.display()
            );
        }
        all.extend_from_slice(&bytes);
    }
    for p in present {
        assert!(
            contains(&all, p.as_bytes()),
            "control: the public value {p:?} is in no database file, so the scan sees nothing"
        );
    }
}

/// The bytes of the database files, to prove a refused start-up touched nothing.
fn snapshot(work_dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    ["latchkey.db", "latchkey.db-wal"]
        .iter()
        .map(|f| work_dir.join("data").join(f))
        .filter(|p| p.exists())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

#[track_caller]
fn assert_untouched(before: &[(PathBuf, Vec<u8>)], work_dir: &Path, what: &str) {
    let after = snapshot(work_dir);
    let names = |s: &[(PathBuf, Vec<u8>)]| s.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(before),
        names(&after),
        "{what}: the set of database files changed"
    );
    for ((p, a), (_, b)) in before.iter().zip(&after) {
        assert!(
            a == b,
            "{what}: {} changed ({} -> {} bytes)",
            p.display(),
            a.len(),
            b.len()
        );
    }
}

/// A connection of each type, with its secrets, the public values shown back, and the
/// credentials it must yield.
struct Case {
    kind: &'static str,
    name: String,
    config: Value,
    secrets: Vec<String>,
    public: Vec<String>,
    credentials: Value,
    /// `config` as the management API shows it.
    shown_config: Value,
}

fn cases(tag: &str) -> Vec<Case> {
    let api_key = format!("SECRET-apikey-{}", random_hex(12));
    let username = format!("user-{}", random_hex(6));
    let password = format!("SECRET-password-{}", random_hex(12));
    let token = format!("SECRET-token-{}", random_hex(12));
    let implicit = format!("SECRET-implicit-{}", random_hex(12));
    let region = format!("region-{}", random_hex(6));
    vec![
        Case {
            kind: "api_key",
            name: format!("{tag} api key"),
            config: json!({"api_key": api_key}),
            secrets: vec![api_key.clone()],
            public: vec![],
            credentials: json!({"type": "api_key", "api_key": api_key}),
            shown_config: json!({}),
        },
        Case {
            kind: "basic",
            name: format!("{tag} basic"),
            config: json!({"username": username, "password": password}),
            secrets: vec![password.clone()],
            public: vec![username.clone()],
            credentials: json!({"type": "basic", "username": username, "password": password}),
            shown_config: json!({"username": username}),
        },
        Case {
            kind: "custom",
            name: format!("{tag} custom"),
            config: json!({"fields": {
                "token": {"value": token, "secret": true},
                "region": {"value": region, "secret": false},
                // No flag: secret by default.
                "implicit": {"value": implicit},
            }}),
            secrets: vec![token.clone(), implicit.clone()],
            public: vec![region.clone()],
            credentials: json!({"type": "custom", "fields": {"token": token, "region": region, "implicit": implicit}}),
            shown_config: json!({"fields": {
                "token": {"secret": true},
                "region": {"value": region, "secret": false},
                "implicit": {"secret": true},
            }}),
        },
    ]
}

/// Polls `f` until it returns `Some`, or fails after `secs` seconds.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The core scenario, shared by SQLite and PostgreSQL
// ---------------------------------------------------------------------------------------

/// What the core scenario left behind, for the backend-specific checks.
struct Outcome {
    secrets: Vec<String>,
    public: Vec<String>,
    ids: Vec<String>,
    project: String,
}

/// Creates a connection of each type and checks what every management view shows and
/// hides, the credentials, flow usage, PATCH and DELETE.
async fn core_scenario(server: &LatchkeyServer) -> Outcome {
    let api = Api::admin(server);
    let project = format!("proj-{}", random_hex(4));
    let cases = cases("core");
    let all_secrets: Vec<String> = cases.iter().flat_map(|c| c.secrets.clone()).collect();
    let mut ids = Vec::new();

    for c in &cases {
        let r = api
            .create(&project, &c.name, c.kind, c.config.clone())
            .await
            .expect(201);
        r.assert_free_of(&all_secrets, "POST /v1/connections");
        let d = r.data();
        assert_eq!(d["type"], c.kind);
        assert_eq!(d["name"], c.name.as_str());
        assert_eq!(d["project_id"], project.as_str());
        assert_eq!(d["status"], "active");
        assert_eq!(d["version"], 1);
        assert_eq!(d["used_by"], json!([]));
        assert_eq!(d["last_used_at"], Value::Null);
        assert_eq!(d["config"], c.shown_config, "{}", c.kind);
        ids.push(r.id());
    }

    // GET and the listing show the public part only.
    for (c, id) in cases.iter().zip(&ids) {
        let r = api.get(&format!("/v1/connections/{id}")).await.expect(200);
        r.assert_free_of(&all_secrets, "GET /v1/connections/{id}");
        let d = r.data();
        assert_eq!(d["id"], id.as_str());
        assert_eq!(d["config"], c.shown_config, "{}", c.kind);
        for p in &c.public {
            assert!(r.text.contains(p.as_str()), "{p} is not shown back");
        }
        let ev = api
            .get(&format!("/v1/connections/{id}/events"))
            .await
            .expect(200);
        ev.assert_free_of(&all_secrets, "GET /v1/connections/{id}/events");
    }
    let list = api
        .get(&format!("/v1/connections?project_id={project}"))
        .await
        .expect(200);
    list.assert_free_of(&all_secrets, "GET /v1/connections");
    let listed: BTreeSet<String> = list
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(list.json()["page"]["next_cursor"], Value::Null);
    for item in list.data().as_array().unwrap() {
        assert!(item.get("used_by").is_none() || item["used_by"].is_array());
    }

    // The credentials carry the secrets, uncached.
    for (c, id) in cases.iter().zip(&ids) {
        let r = api
            .get(&format!("/v1/connections/{id}/credentials"))
            .await
            .expect(200);
        assert_eq!(r.data(), c.credentials, "{}", c.kind);
        assert_eq!(
            r.headers.get(CACHE_CONTROL).and_then(|v| v.to_str().ok()),
            Some("no-store"),
            "credentials must not be cached"
        );
    }

    // Flow usage: two flows, one of them twice.
    let id = &ids[0];
    let before_use = api.get(&format!("/v1/connections/{id}")).await.data();
    for flow in ["flow-a", "flow-b", "flow-a"] {
        api.get(&format!("/v1/connections/{id}/credentials?flow_id={flow}"))
            .await
            .expect(200);
    }
    let d = api.get(&format!("/v1/connections/{id}")).await.data();
    assert!(d["last_used_at"].is_string(), "last_used_at not set: {d}");
    let mut used: Vec<(String, i64)> = d["used_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            assert!(u["first_used_at"].is_string() && u["last_used_at"].is_string());
            (
                u["flow_id"].as_str().unwrap().to_owned(),
                u["uses"].as_i64().unwrap(),
            )
        })
        .collect();
    used.sort();
    assert_eq!(
        used,
        vec![("flow-a".to_owned(), 2), ("flow-b".to_owned(), 1)]
    );
    // Use is not a change: the version stays.
    assert_eq!(d["version"], before_use["version"]);

    // PATCH: rename, then replace the secret with compare-and-set.
    let basic = &ids[1];
    let new_password = format!("SECRET-newpassword-{}", random_hex(12));
    let r = api
        .patch(
            &format!("/v1/connections/{basic}"),
            &json!({"name": "core basic renamed"}),
        )
        .await
        .expect(200);
    assert_eq!(r.data()["name"], "core basic renamed");
    assert_eq!(r.data()["version"], 2);
    let new_user = format!("user2-{}", random_hex(6));
    let r = api
        .patch(
            &format!("/v1/connections/{basic}"),
            &json!({"config": {"username": new_user, "password": new_password}, "version": 2}),
        )
        .await
        .expect(200);
    let mut secrets = all_secrets.clone();
    secrets.push(new_password.clone());
    r.assert_free_of(&secrets, "PATCH /v1/connections/{id}");
    assert_eq!(r.data()["version"], 3);
    assert_eq!(r.data()["config"]["username"], new_user.as_str());
    api.patch(
        &format!("/v1/connections/{basic}"),
        &json!({"name": "stale", "version": 2}),
    )
    .await
    .expect_error(409, "version_conflict");
    let creds = api
        .get(&format!("/v1/connections/{basic}/credentials"))
        .await
        .expect(200)
        .data();
    assert_eq!(
        creds,
        json!({"type": "basic", "username": new_user, "password": new_password})
    );
    assert_eq!(
        api.get(&format!("/v1/connections/{basic}")).await.data()["name"],
        "core basic renamed"
    );

    // DELETE, then it is gone everywhere.
    let doomed = api
        .create(
            &project,
            "core doomed",
            "api_key",
            json!({"api_key": "SECRET-doomed-0123456789"}),
        )
        .await
        .expect(201)
        .id();
    secrets.push("SECRET-doomed-0123456789".into());
    let r = api
        .delete(&format!("/v1/connections/{doomed}"))
        .await
        .expect(204);
    assert!(r.text.is_empty());
    api.get(&format!("/v1/connections/{doomed}"))
        .await
        .expect_error(404, "not_found");
    api.get(&format!("/v1/connections/{doomed}/credentials"))
        .await
        .expect_error(404, "not_found");

    // What the database holds now (the basic connection's username was replaced).
    let mut public: Vec<String> = cases
        .iter()
        .filter(|c| c.kind != "basic")
        .flat_map(|c| c.public.clone())
        .collect();
    public.push(new_user);
    public.extend(cases.iter().map(|c| c.name.clone()));
    Outcome {
        secrets,
        public,
        ids,
        project,
    }
}

/// Everything a project's listing, GETs and credentials show, for before/after checks.
async fn observable_state(api: &Api, o: &Outcome) -> Value {
    let list = api
        .get(&format!("/v1/connections?project_id={}", o.project))
        .await
        .expect(200)
        .json();
    let mut gets = Vec::new();
    for id in &o.ids {
        gets.push(
            api.get(&format!("/v1/connections/{id}"))
                .await
                .expect(200)
                .data(),
        );
    }
    json!({"list": list, "gets": gets})
}

async fn credentials_of(api: &Api, o: &Outcome) -> Vec<Value> {
    let mut out = Vec::new();
    for id in &o.ids {
        out.push(
            api.get(&format!("/v1/connections/{id}/credentials"))
                .await
                .expect(200)
                .data(),
        );
    }
    out
}

// ---------------------------------------------------------------------------------------
// SQLite: views, file scan, restart
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn secrets_stay_out_of_views_and_the_sqlite_file_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = LatchkeyServer::start(ServerOptions::new(dir.path()))
        .await
        .unwrap();
    let o = core_scenario(&server).await;

    // While running: main file and WAL hold no secret, but do hold the public values.
    assert_db_free_of(dir.path(), &o.secrets, &o.public);

    let api = Api::admin(&server);
    // Credentials first: reading them records use, which the views show.
    let creds = credentials_of(&api, &o).await;
    let state = observable_state(&api, &o).await;
    assert_eq!(state["list"]["data"].as_array().unwrap().len(), 3);

    let server = server.restart().await.unwrap();
    let api = Api::admin(&server);
    assert_eq!(
        observable_state(&api, &o).await,
        state,
        "a restart changed what the API shows"
    );
    assert_eq!(credentials_of(&api, &o).await, creds);
    assert_db_free_of(dir.path(), &o.secrets, &o.public);

    // Killed without any shutdown: the data is still there.
    let mut server = server;
    server.kill9();
    let server = LatchkeyServer::start(ServerOptions::new(dir.path()))
        .await
        .unwrap();
    let api = Api::admin(&server);
    assert_eq!(credentials_of(&api, &o).await, creds);
    drop(server);
    assert_db_free_of(dir.path(), &o.secrets, &o.public);

    // The same with `strings`, as an operator would look.
    let db = dir.path().join("data").join("latchkey.db");
    let out = std::process::Command::new("strings")
        .arg("-a")
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for s in &o.secrets {
        assert!(!text.contains(s.as_str()), "strings finds {s:?}");
    }
}

#[tokio::test]
async fn the_server_log_holds_no_secret_and_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, material) = master_key("logk1");
    let server =
        LatchkeyServer::start(ServerOptions::new(dir.path()).env("LATCHKEY_MASTER_KEYS", keys))
            .await
            .unwrap();
    let o = core_scenario(&server).await;
    let api = Api::admin(&server);
    let (_, token) = api
        .create_key(
            &o.project,
            &["connections:read", "connections:write", "credentials:read"],
        )
        .await;
    let key_api = Api::with_token(&server, Some(&token));
    credentials_of(&key_api, &o).await;
    // Bad input carrying a secret: refused, and not logged either.
    let stray = format!("SECRET-stray-{}", random_hex(8));
    api.create(
        &o.project,
        "stray",
        "api_key",
        json!({"api_key": stray, "extra": stray}),
    )
    .await
    .expect_error(400, "invalid_field");
    api.raw(
        Method::POST,
        "/v1/connections",
        Some("application/json"),
        &format!("{{\"name\": \"{stray}\", \"config\": "),
    )
    .await
    .expect_error(400, "invalid_json");
    // A failed request with a wrong token.
    let wrong = format!("{token}x");
    Api::with_token(&server, Some(&wrong))
        .get("/v1/connections")
        .await
        .expect_error(401, "unauthorized");

    // The log has the requests (so it is the right file) ...
    let logs = eventually(10, "the request log lines", || {
        let logs = server.logs();
        async move { logs.contains("/v1/connections").then_some(logs) }
    })
    .await;
    // ... and none of the secrets.
    let secret_part = token.splitn(3, '_').nth(2).unwrap().to_owned();
    let mut forbidden = o.secrets.clone();
    forbidden.extend([
        stray,
        token.clone(),
        secret_part,
        ADMIN_TOKEN.to_owned(),
        material,
    ]);
    for s in &forbidden {
        assert!(!logs.contains(s.as_str()), "the server log contains {s:?}");
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_core_scenario_on_postgres() {
    let Some(pg) = PgDatabase::create("foundation").unwrap() else {
        eprintln!("note: LATCHKEY_TEST_POSTGRES_URL is not set; skipping the PostgreSQL run of the core scenario");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = LatchkeyServer::start(ServerOptions::new(dir.path()).database(pg.url.clone()))
        .await
        .unwrap();
    let o = core_scenario(&server).await;
    // No SQLite file was made beside it.
    assert!(!dir.path().join("data").join("latchkey.db").exists());

    let api = Api::admin(&server);
    let creds = credentials_of(&api, &o).await;
    let state = observable_state(&api, &o).await;
    let server = server.restart().await.unwrap();
    let api = Api::admin(&server);
    assert_eq!(observable_state(&api, &o).await, state);
    assert_eq!(credentials_of(&api, &o).await, creds);

    // A dump of the whole database holds no secret, but the public values.
    let out = std::process::Command::new("pg_dump")
        .arg("--data-only")
        .arg(&pg.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    for s in &o.secrets {
        assert!(
            !dump.contains(s.as_str()),
            "the PostgreSQL dump holds {s:?}"
        );
    }
    for p in &o.public {
        assert!(dump.contains(p.as_str()), "control: {p:?} not in the dump");
    }
    drop(server);
}

// ---------------------------------------------------------------------------------------
// Master keys
// ---------------------------------------------------------------------------------------

/// Creates one api_key connection and returns (id, secret).
async fn seed(server: &LatchkeyServer, project: &str, name: &str) -> (String, String) {
    let secret = format!("SECRET-seed-{}", random_hex(10));
    let id = Api::admin(server)
        .create(project, name, "api_key", json!({"api_key": secret}))
        .await
        .expect(201)
        .id();
    (id, secret)
}

async fn api_key_of(server: &LatchkeyServer, id: &str) -> String {
    Api::admin(server)
        .get(&format!("/v1/connections/{id}/credentials"))
        .await
        .expect(200)
        .data()["api_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_generated_key_file_is_private_and_used_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = LatchkeyServer::start(ServerOptions::new(dir.path()))
        .await
        .unwrap();
    let key_file = dir.path().join("data").join("master.key");
    assert!(key_file.exists(), "no key file was generated");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the key file has mode {mode:o}");
    }
    let content = std::fs::read_to_string(&key_file).unwrap();
    let (id, material) = content.trim().split_once(':').expect("id:base64");
    assert!(!id.is_empty());
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(material)
            .unwrap()
            .len(),
        32
    );
    assert!(
        server.logs().contains("master.key"),
        "the start-up log does not say where the key went"
    );
    assert!(
        !server.logs().contains(material),
        "the log shows the key material"
    );
    let (cid, secret) = seed(&server, "pk", "generated").await;

    let server = server.restart().await.unwrap();
    assert_eq!(api_key_of(&server, &cid).await, secret);
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        content,
        "the key file was rewritten"
    );

    // The key file is gone, the data is not: refuse, and make no new key.
    drop(server);
    std::fs::remove_file(&key_file).unwrap();
    let before = snapshot(dir.path());
    let (status, out) =
        LatchkeyServer::start_expecting_failure(ServerOptions::new(dir.path())).unwrap();
    assert!(!status.success(), "started without its key: {out}");
    assert!(
        out.contains("no master key is configured") && out.contains("LATCHKEY_MASTER_KEYS"),
        "the message does not name the problem: {out}"
    );
    assert!(
        !key_file.exists(),
        "a new key file was generated over existing data"
    );
    assert_untouched(&before, dir.path(), "refused start without a key");

    // With the key given in the environment it reads the data again.
    let server = LatchkeyServer::start(
        ServerOptions::new(dir.path()).env("LATCHKEY_MASTER_KEYS", content.trim()),
    )
    .await
    .unwrap();
    assert_eq!(api_key_of(&server, &cid).await, secret);
}

#[tokio::test]
async fn a_wrong_or_invalid_master_key_refuses_start_up_and_touches_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let (good, good_material) = master_key("k1");
    let opts = |keys: &str| ServerOptions::new(dir.path()).env("LATCHKEY_MASTER_KEYS", keys);
    let server = LatchkeyServer::start(opts(&good)).await.unwrap();
    let (cid, secret) = seed(&server, "pw", "sealed with k1").await;
    drop(server); // SIGKILL: whatever is in the WAL stays there.

    let (same_id_wrong, wrong_material) = master_key("k1");
    let (other_id, other_material) = master_key("k2");
    let short = format!(
        "k1:{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 16])
    );
    // (LATCHKEY_MASTER_KEYS, words the message must contain)
    let table: Vec<(String, Vec<&str>)> = vec![
        (same_id_wrong, vec!["k1", "wrong"]),
        (other_id, vec!["\"k1\"", "k2", "LATCHKEY_MASTER_KEYS"]),
        (
            "k1:not*base64".into(),
            vec!["LATCHKEY_MASTER_KEYS", "base64"],
        ),
        (short, vec!["LATCHKEY_MASTER_KEYS", "32"]),
        ("no-separator".into(), vec!["LATCHKEY_MASTER_KEYS"]),
    ];
    for (keys, words) in &table {
        let before = snapshot(dir.path());
        assert!(!before.is_empty());
        let (status, out) = LatchkeyServer::start_expecting_failure(opts(keys)).unwrap();
        assert!(!status.success(), "{keys}: started: {out}");
        for w in words {
            assert!(out.contains(w), "{keys}: the message lacks {w:?}: {out}");
        }
        for m in [&good_material, &wrong_material, &other_material] {
            assert!(!out.contains(m.as_str()), "the output shows key material");
        }
        assert_untouched(&before, dir.path(), keys);
    }

    // The right key still opens everything.
    let server = LatchkeyServer::start(opts(&good)).await.unwrap();
    assert_eq!(api_key_of(&server, &cid).await, secret);
}

#[tokio::test]
async fn master_keys_rotate_by_prepending_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let (old, _) = master_key("old");
    let (new, _) = master_key("new");
    let opts = |keys: String| ServerOptions::new(dir.path()).env("LATCHKEY_MASTER_KEYS", keys);

    let server = LatchkeyServer::start(opts(old.clone())).await.unwrap();
    let (c1, s1) = seed(&server, "rot", "sealed with old").await;
    drop(server);

    let ring = format!("{new},{old}");
    let server = LatchkeyServer::start(opts(ring.clone())).await.unwrap();
    assert_eq!(
        api_key_of(&server, &c1).await,
        s1,
        "old data after rotation"
    );
    let (c2, s2) = seed(&server, "rot", "sealed with new").await;
    assert_eq!(api_key_of(&server, &c2).await, s2);
    // Replacing a secret re-seals it with the new key; still readable.
    let s1b = format!("SECRET-rotated-{}", random_hex(8));
    Api::admin(&server)
        .patch(
            &format!("/v1/connections/{c1}"),
            &json!({"config": {"api_key": s1b}}),
        )
        .await
        .expect(200);

    let server = server.restart().await.unwrap();
    assert_eq!(api_key_of(&server, &c1).await, s1b);
    assert_eq!(api_key_of(&server, &c2).await, s2);
    drop(server);

    // Dropping the old key while data sealed with it remains is refused, naming it.
    let before = snapshot(dir.path());
    let (status, out) = LatchkeyServer::start_expecting_failure(opts(new.clone())).unwrap();
    assert!(!status.success(), "started without the old key: {out}");
    assert!(
        out.contains("\"old\""),
        "the message does not name the key id: {out}"
    );
    assert_untouched(&before, dir.path(), "refused start without the old key");
}

// ---------------------------------------------------------------------------------------
// Access keys, scopes, project isolation
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn access_keys_are_project_scoped_and_scoped() {
    let dir = tempfile::tempdir().unwrap();
    let server = LatchkeyServer::start(ServerOptions::new(dir.path()))
        .await
        .unwrap();
    let admin = Api::admin(&server);
    const ALL: [&str; 3] = ["connections:read", "connections:write", "credentials:read"];

    // Creating a key: shown once, not cacheable, hash never shown.
    let r = admin
        .post(
            "/v1/access-keys",
            &json!({"project_id": "pa", "name": "key a", "scopes": ALL}),
        )
        .await
        .expect(201);
    assert_eq!(
        r.headers.get(CACHE_CONTROL).and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let d = r.data();
    let a_id = d["id"].as_str().unwrap().to_owned();
    let a_token = d["key"].as_str().unwrap().to_owned();
    assert!(a_token.starts_with("lk_"), "{a_token}");
    assert_eq!(d["project_id"], "pa");
    let mut scopes: Vec<&str> = d["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    scopes.sort_unstable();
    assert_eq!(scopes, ALL);
    assert!(!r.text.contains("hash"), "{}", r.text);

    let (_, b_token) = admin.create_key("pb", &ALL).await;
    let (_, read_token) = admin.create_key("pa", &["connections:read"]).await;
    let (_, write_token) = admin.create_key("pa", &["connections:write"]).await;
    let (_, creds_token) = admin.create_key("pa", &["credentials:read"]).await;
    let tokens =
        [&a_token, &b_token, &read_token, &write_token, &creds_token].map(|t| t.to_string());

    let listing = admin.get("/v1/access-keys").await.expect(200);
    assert_eq!(listing.data().as_array().unwrap().len(), 5);
    listing.assert_free_of(&tokens, "GET /v1/access-keys");
    for t in &tokens {
        // `lk_<key id>_<secret>`: the id has no `_`, the secret may (base64url).
        let secret = t.splitn(3, '_').nth(2).unwrap().to_owned();
        assert!(secret.len() >= 20, "the secret part of {t:?} is too short");
        listing.assert_free_of(&[secret], "GET /v1/access-keys");
    }

    let a = Api::with_token(&server, Some(&a_token));
    let b = Api::with_token(&server, Some(&b_token));

    // Each key works in its own project.
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
    let b_conn = b
        .create(
            "pb",
            "b1",
            "api_key",
            json!({"api_key": "SECRET-b1-0000000000"}),
        )
        .await
        .expect(201)
        .id();
    assert_eq!(
        a.get(&format!("/v1/connections/{a_conn}/credentials"))
            .await
            .expect(200)
            .data()["api_key"],
        "SECRET-a1-0000000000"
    );

    // Project A's key: project B's connection does not exist for it.
    let b_paths = [
        (Method::GET, format!("/v1/connections/{b_conn}")),
        (Method::GET, format!("/v1/connections/{b_conn}/credentials")),
        (Method::GET, format!("/v1/connections/{b_conn}/events")),
        (Method::DELETE, format!("/v1/connections/{b_conn}")),
    ];
    for (m, p) in &b_paths {
        let r = a
            .send(a.request(m.clone(), p))
            .await
            .expect_error(404, "not_found");
        r.assert_free_of(&["SECRET-b1-0000000000".into(), "b1".into()], p);
    }
    a.patch(
        &format!("/v1/connections/{b_conn}"),
        &json!({"name": "stolen"}),
    )
    .await
    .expect_error(404, "not_found");
    a.create("pb", "intruder", "api_key", json!({"api_key": "x-123"}))
        .await
        .expect_error(403, "forbidden");
    // ... and it is untouched.
    let still = admin
        .get(&format!("/v1/connections/{b_conn}"))
        .await
        .expect(200);
    assert_eq!(still.data()["name"], "b1");

    // Listings are filtered to the key's project, whatever is asked.
    let ids_of = |r: &Resp| -> Vec<String> {
        r.data()
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids_of(&a.get("/v1/connections").await.expect(200)),
        [a_conn.as_str()]
    );
    assert_eq!(
        ids_of(&b.get("/v1/connections").await.expect(200)),
        [b_conn.as_str()]
    );
    assert!(ids_of(&a.get("/v1/connections?project_id=pb").await.expect(200)).is_empty());
    assert_eq!(
        ids_of(&a.get("/v1/connections?project_id=pa").await.expect(200)),
        [a_conn.as_str()]
    );
    let mut both = ids_of(&admin.get("/v1/connections").await.expect(200));
    both.sort();
    let mut want = vec![a_conn.clone(), b_conn.clone()];
    want.sort();
    assert_eq!(both, want, "the admin sees every project");

    // What each scope allows is checked in process (crates/api/tests/requests.rs).
    let conn = format!("/v1/connections/{a_conn}");
    let creds = format!("/v1/connections/{a_conn}/credentials");
    Api::with_token(&server, Some(&read_token))
        .get(&creds)
        .await
        .expect_error(403, "forbidden");

    // Every kind of bad credential (no token, a bad one, another scheme, a forged or
    // tampered key) is refused with 401 in crates/api/tests/requests.rs.
    Api::with_token(&server, Some("wrong-token"))
        .get(&creds)
        .await
        .expect_error(401, "unauthorized");

    // Keys survive a restart; they are stored as a hash only.
    let server = server.restart().await.unwrap();
    let a = Api::with_token(&server, Some(&a_token));
    a.get(&conn).await.expect(200);
    let secrets: Vec<String> = tokens
        .iter()
        .map(|t| t.splitn(3, '_').nth(2).unwrap().to_owned())
        .collect();
    assert_db_free_of(dir.path(), &secrets, &["key a".to_owned()]);

    // A deleted key stops working at once.
    let admin = Api::admin(&server);
    admin
        .delete(&format!("/v1/access-keys/{a_id}"))
        .await
        .expect(204);
    a.get(&conn).await.expect_error(401, "unauthorized");
    admin
        .delete(&format!("/v1/access-keys/{a_id}"))
        .await
        .expect_error(404, "not_found");
}

// ---------------------------------------------------------------------------------------
// PATCH and DELETE
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn patch_renames_replaces_secrets_and_checks_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let server = LatchkeyServer::start(ServerOptions::new(dir.path()))
        .await
        .unwrap();
    let api = Api::admin(&server);
    let s1 = format!("SECRET-one-{}", random_hex(8));
    let s2 = format!("SECRET-two-{}", random_hex(8));
    let id = api
        .create("ppatch", "svc", "api_key", json!({"api_key": s1}))
        .await
        .expect(201)
        .id();
    let path = format!("/v1/connections/{id}");
    let creds = format!("/v1/connections/{id}/credentials");
    let secrets = [s1.clone(), s2.clone()];

    // Rename only: the secret stays.
    let r = api
        .patch(&path, &json!({"name": "svc renamed"}))
        .await
        .expect(200);
    assert_eq!(r.data()["name"], "svc renamed");
    assert_eq!(r.data()["version"], 2);
    assert_eq!(api.get(&creds).await.data()["api_key"], s1.as_str());

    // Replace the secret, naming the version read.
    let r = api
        .patch(&path, &json!({"config": {"api_key": s2}, "version": 2}))
        .await
        .expect(200);
    r.assert_free_of(&secrets, "PATCH");
    assert_eq!(r.data()["version"], 3);
    assert_eq!(r.data()["name"], "svc renamed");
    assert_eq!(api.get(&creds).await.data()["api_key"], s2.as_str());
    let events = api.get(&format!("{path}/events")).await.expect(200);
    events.assert_free_of(&secrets, "events");
    assert!(
        events
            .data()
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "secret_replaced"),
        "{}",
        events.text
    );

    // A stale version: refused, nothing changes.
    let r = api
        .patch(
            &path,
            &json!({"name": "lost update", "config": {"api_key": "SECRET-lost-000"}, "version": 2}),
        )
        .await
        .expect_error(409, "version_conflict");
    assert!(
        r.text.contains('3'),
        "the conflict does not say the current version: {}",
        r.text
    );
    let d = api.get(&path).await.data();
    assert_eq!(d["name"], "svc renamed");
    assert_eq!(d["version"], 3);
    assert_eq!(api.get(&creds).await.data()["api_key"], s2.as_str());

    // Two writers that read version 3: the first wins, the second is told.
    let (body_a, body_b) = (
        json!({"name": "writer a", "version": 3}),
        json!({"name": "writer b", "version": 3}),
    );
    let a = api.patch(&path, &body_a);
    let b = api.patch(&path, &body_b);
    let (a, b) = tokio::join!(a, b);
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "a: {} b: {}", a.text, b.text);
    assert_eq!(api.get(&path).await.data()["version"], 4);

    // An invalid replacement leaves the old secret.
    api.patch(&path, &json!({"config": {"api_key": ""}}))
        .await
        .expect_error(400, "invalid_field");
    assert_eq!(api.get(&creds).await.data()["api_key"], s2.as_str());

    // Renaming onto a taken name.
    api.create(
        "ppatch",
        "other",
        "api_key",
        json!({"api_key": "k-other-0"}),
    )
    .await
    .expect(201);
    api.patch(&path, &json!({"name": "other"}))
        .await
        .expect_error(409, "name_taken");

    // Custom: a secret field made public is shown back; a public one made secret is not.
    let hidden = format!("SECRET-hidden-{}", random_hex(8));
    let cid = api
        .create(
            "ppatch",
            "custom",
            "custom",
            json!({"fields": {"a": {"value": "visible-a", "secret": false}, "b": {"value": "SECRET-b-000"}}}),
        )
        .await
        .expect(201)
        .id();
    let r = api
        .patch(
            &format!("/v1/connections/{cid}"),
            &json!({"config": {"fields": {"a": {"value": hidden, "secret": true}, "b": {"value": "now-public-b", "secret": false}}}}),
        )
        .await
        .expect(200);
    r.assert_free_of(std::slice::from_ref(&hidden), "PATCH custom");
    assert_eq!(
        r.data()["config"],
        json!({"fields": {"a": {"secret": true}, "b": {"value": "now-public-b", "secret": false}}})
    );
    assert_eq!(
        api.get(&format!("/v1/connections/{cid}/credentials"))
            .await
            .data()["fields"],
        json!({"a": hidden, "b": "now-public-b"})
    );

    let mut all = secrets.to_vec();
    all.push(hidden);
    assert_db_free_of(dir.path(), &all, &["svc renamed".to_owned()]);
}

#[tokio::test]
async fn delete_makes_a_connection_unknown_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let server = LatchkeyServer::start(ServerOptions::new(dir.path()))
        .await
        .unwrap();
    let api = Api::admin(&server);
    let keep = api
        .create("pdel", "keep", "api_key", json!({"api_key": "k-keep-0"}))
        .await
        .expect(201)
        .id();
    for c in cases("del") {
        let id = api
            .create("pdel", &c.name, c.kind, c.config.clone())
            .await
            .expect(201)
            .id();
        api.get(&format!("/v1/connections/{id}/credentials?flow_id=f1"))
            .await
            .expect(200);
        let path = format!("/v1/connections/{id}");
        let r = api.delete(&path).await.expect(204);
        assert!(r.text.is_empty(), "{}", r.text);
        api.get(&path).await.expect_error(404, "not_found");
        api.get(&format!("{path}/credentials"))
            .await
            .expect_error(404, "not_found");
        api.get(&format!("{path}/events"))
            .await
            .expect_error(404, "not_found");
        api.patch(&path, &json!({"name": "again"}))
            .await
            .expect_error(404, "not_found");
        api.delete(&path).await.expect_error(404, "not_found");
        let list = api.get("/v1/connections?project_id=pdel").await.expect(200);
        assert!(!list.text.contains(id.as_str()));
        // The name is free again.
        api.create("pdel", &c.name, c.kind, c.config.clone())
            .await
            .expect(201);
    }
    api.get(&format!("/v1/connections/{keep}"))
        .await
        .expect(200);
    let server = server.restart().await.unwrap();
    let api = Api::admin(&server);
    let list = api.get("/v1/connections?project_id=pdel").await.expect(200);
    assert_eq!(list.data().as_array().unwrap().len(), 4);
}

// ---------------------------------------------------------------------------------------
// Paging and filters
// ---------------------------------------------------------------------------------------

async fn page_through(api: &Api, query: &str, limit: u32) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = format!("/v1/connections?{query}&limit={limit}");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let r = api.get(&url).await.expect(200);
        pages += 1;
        let items = r.data();
        let items = items.as_array().unwrap();
        assert!(items.len() <= limit as usize);
        ids.extend(items.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        match r.json()["page"]["next_cursor"].as_str() {
            Some(c) => {
                assert!(!items.is_empty(), "a cursor after an empty page");
                after = Some(c.to_owned());
            }
            None => return (ids, pages),
        }
        assert!(pages < 50, "paging does not end");
    }
}

#[tokio::test]
async fn listing_pages_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let server = LatchkeyServer::start(ServerOptions::new(dir.path()))
        .await
        .unwrap();
    let api = Api::admin(&server);
    let project = "ppage";
    let mut made = Vec::new();
    for (i, (kind, config)) in [
        ("api_key", json!({"api_key": "k-1-000"})),
        ("basic", json!({"username": "u", "password": "p-2-000"})),
        ("api_key", json!({"api_key": "k-3-000"})),
        ("custom", json!({"fields": {"x": {"value": "v-4-000"}}})),
        ("api_key", json!({"api_key": "k-5-000"})),
    ]
    .into_iter()
    .enumerate()
    {
        made.push(
            api.create(project, &format!("c{i}"), kind, config)
                .await
                .expect(201)
                .id(),
        );
    }
    // Noise in another project.
    api.create("pother", "noise", "api_key", json!({"api_key": "k-noise"}))
        .await
        .expect(201);

    let (ids, pages) = page_through(&api, &format!("project_id={project}"), 2).await;
    assert_eq!(pages, 3, "5 connections in pages of 2");
    let unique: BTreeSet<_> = ids.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a connection listed twice: {ids:?}"
    );
    assert_eq!(unique, made.iter().cloned().collect::<BTreeSet<_>>());
    // Exactly a page's worth: no empty trailing page.
    let (ids4, pages4) = page_through(&api, &format!("project_id={project}"), 5).await;
    assert_eq!((ids4.len(), pages4), (5, 1));
    let (all, _) = page_through(&api, "", 2).await;
    assert_eq!(
        all.len(),
        6,
        "the admin without project_id sees every project"
    );

    // An OAuth connection is incomplete until authorized.
    let oauth = api
        .create(
            project,
            "g",
            "google",
            json!({"oauth2_config": {"client_id": "cid", "client_secret": "SECRET-gcs-000"}}),
        )
        .await
        .expect(201);
    oauth.assert_free_of(&["SECRET-gcs-000".into()], "OAuth create");
    assert_eq!(oauth.data()["status"], "incomplete");
    let oauth = oauth.id();

    // (query, expected ids)
    let pick =
        |idx: &[usize]| -> BTreeSet<String> { idx.iter().map(|i| made[*i].clone()).collect() };
    let only_oauth: BTreeSet<String> = [oauth.clone()].into();
    let table: Vec<(&str, BTreeSet<String>)> = vec![
        ("type=api_key", pick(&[0, 2, 4])),
        ("type=basic", pick(&[1])),
        ("type=custom", pick(&[3])),
        ("type=google", only_oauth.clone()),
        ("type=dynamiq.connections.GoogleOAuth2", only_oauth.clone()),
        ("status=active", pick(&[0, 1, 2, 3, 4])),
        ("status=incomplete", only_oauth.clone()),
        ("status=expired", BTreeSet::new()),
        ("status=inactive", BTreeSet::new()),
        ("status=active&type=api_key", pick(&[0, 2, 4])),
        ("status=incomplete&type=api_key", BTreeSet::new()),
        ("type=basic&status=inactive", BTreeSet::new()),
    ];
    for (q, want) in table {
        for limit in [1, 2, 50] {
            let (ids, _) = page_through(&api, &format!("project_id={project}&{q}"), limit).await;
            let got: BTreeSet<String> = ids.iter().cloned().collect();
            assert_eq!(got.len(), ids.len(), "{q}: duplicates");
            assert_eq!(got, want, "{q} (limit {limit})");
        }
    }
    // Every listed item has the status and type it was filtered by.
    let r = api
        .get(&format!(
            "/v1/connections?project_id={project}&status=inactive"
        ))
        .await
        .expect(200);
    assert_eq!(r.data(), json!([]));
    assert_eq!(r.json()["page"]["next_cursor"], Value::Null);
    let r = api
        .get(&format!(
            "/v1/connections?project_id={project}&type=api_key"
        ))
        .await
        .expect(200);
    for c in r.data().as_array().unwrap() {
        assert_eq!(c["type"], "api_key");
        assert_eq!(c["status"], "active");
    }

    // A project key pages through its own project only.
    let (_, token) = api.create_key("pother", &["connections:read"]).await;
    let key = Api::with_token(&server, Some(&token));
    let (ids, _) = page_through(&key, "", 1).await;
    assert_eq!(ids.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Concurrency: parallel use is counted exactly, parallel writes never fail
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn parallel_reads_and_creates_are_all_answered_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = LatchkeyServer::start(ServerOptions::new(dir.path()))
        .await
        .unwrap();
    let api = Api::admin(&server);
    let id = api
        .create(
            "ppar",
            "shared",
            "api_key",
            json!({"api_key": "k-shared-0"}),
        )
        .await
        .expect(201)
        .id();
    let creds = format!("/v1/connections/{id}/credentials?flow_id=flow-par");
    let reads = (0..30).map(|_| api.get(&creds));
    for r in futures_join_all(reads).await {
        assert_eq!(r.expect(200).data()["api_key"], "k-shared-0");
    }
    let bodies: Vec<Value> = (0..20)
        .map(|i| json!({"project_id": "ppar", "name": format!("par {i}"), "type": "api_key", "config": {"api_key": format!("k-par-{i}")}}))
        .collect();
    let creates = bodies.iter().map(|b| api.post("/v1/connections", b));
    for r in futures_join_all(creates).await {
        r.expect(201);
    }
    let d = api
        .get(&format!("/v1/connections/{id}"))
        .await
        .expect(200)
        .data();
    assert_eq!(d["used_by"][0]["flow_id"], "flow-par");
    assert_eq!(d["used_by"][0]["uses"], 30, "every use is counted: {d}");
    let (ids, _) = page_through(&api, "project_id=ppar", 200).await;
    assert_eq!(ids.len(), 21);
}

/// Runs the futures concurrently on this task (no extra dependency).
async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let set: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    let mut set: Vec<Option<_>> = set.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, out) in set.iter_mut().zip(out.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

// ---------------------------------------------------------------------------------------
// Limits and leaks: the connection cap, paged events, bounded used_by, retention, the
// process environment, the key file's and data directory's permissions
// ---------------------------------------------------------------------------------------

/// Every event of a connection, page by page; also checks the page shape.
async fn all_events(api: &Api, id: &str, limit: u32, cursor_param: &str) -> (Vec<Value>, usize) {
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/v1/connections/{id}/events?limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&{cursor_param}={c}"));
        }
        let page = api.get(&path).await.expect(200).json();
        pages += 1;
        let data = page["data"].as_array().unwrap().clone();
        assert!(data.len() <= limit as usize, "{page}");
        events.extend(data);
        match &page["page"]["next_cursor"] {
            Value::Null => return (events, pages),
            Value::String(c) => cursor = Some(c.clone()),
            other => panic!("next_cursor is {other}"),
        }
        assert!(pages < 50, "paging does not end");
    }
}

#[tokio::test]
async fn connection_cap_paged_events_and_bounded_used_by() {
    let dir = tempfile::tempdir().unwrap();
    let server = LatchkeyServer::start(
        ServerOptions::new(dir.path()).env("LATCHKEY_MAX_CONNECTIONS_PER_PROJECT", "3"),
    )
    .await
    .unwrap();
    let api = Api::admin(&server);

    // The cap: three connections in a project, the fourth is refused with nothing saved.
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            api.create("lim", &format!("c{i}"), "api_key", json!({"api_key": "k"}))
                .await
                .expect(201)
                .id(),
        );
    }
    let r = api
        .create("lim", "c3", "api_key", json!({"api_key": "k"}))
        .await
        .expect_error(409, "limit_reached");
    assert!(r.text.contains('3'), "{}", r.text);
    let listed = api.get("/v1/connections?project_id=lim").await.expect(200);
    assert_eq!(listed.data().as_array().unwrap().len(), 3);
    api.create("lim-other", "c0", "api_key", json!({"api_key": "k"}))
        .await
        .expect(201);
    api.delete(&format!("/v1/connections/{}", ids.pop().unwrap()))
        .await
        .expect(204);
    api.create("lim", "c3", "api_key", json!({"api_key": "k"}))
        .await
        .expect(201);

    // Events: 6 of them, paged oldest first, with `cursor` or its synonym `after`.
    let id = ids[0].clone();
    for i in 1..=5 {
        api.patch(
            &format!("/v1/connections/{id}"),
            &json!({"config": {"api_key": format!("k{i}")}}),
        )
        .await
        .expect(200);
    }
    let (whole, pages) = all_events(&api, &id, 200, "cursor").await;
    assert_eq!(pages, 1);
    let kinds: Vec<&str> = whole.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["created"]
            .into_iter()
            .chain(["secret_replaced"; 5])
            .collect::<Vec<_>>()
    );
    for param in ["cursor", "after"] {
        let (paged, pages) = all_events(&api, &id, 4, param).await;
        assert_eq!((paged.clone(), pages), (whole.clone(), 2), "{param}");
        let (paged, pages) = all_events(&api, &id, 1, param).await;
        assert_eq!((paged, pages), (whole.clone(), 6), "{param}");
    }
    let default = api
        .get(&format!("/v1/connections/{id}/events"))
        .await
        .expect(200)
        .json();
    assert_eq!(default["data"].as_array().unwrap().len(), 6);
    assert_eq!(default["page"], json!({"next_cursor": null}));
    let base = format!("/v1/connections/{id}/events");
    for (query, code) in [
        ("?limit=0", "invalid_field"),
        ("?limit=201", "invalid_field"),
        ("?limit=x", "invalid_query"),
        ("?cursor=not-a-cursor", "invalid_field"),
        ("?after=1.2.3", "invalid_field"),
        ("?cursor=1.2&after=3.4", "invalid_query"),
        ("?colour=red", "invalid_query"),
    ] {
        api.get(&format!("{base}{query}"))
            .await
            .expect_error(400, code);
    }

    // used_by: the 100 most recent flows, and how many there are in all.
    let flows = 105;
    for i in 0..flows {
        api.get(&format!(
            "/v1/connections/{id}/credentials?flow_id=flow-{i:03}"
        ))
        .await
        .expect(200);
    }
    api.get(&format!(
        "/v1/connections/{id}/credentials?flow_id=flow-000"
    ))
    .await
    .expect(200);
    let d = api
        .get(&format!("/v1/connections/{id}"))
        .await
        .expect(200)
        .data();
    assert_eq!(d["used_by_total"], flows);
    let used_by = d["used_by"].as_array().unwrap();
    assert_eq!(used_by.len(), 100);
    assert_eq!(used_by[0]["flow_id"], "flow-000", "{}", used_by[0]);
    assert_eq!(used_by[0]["uses"], 2);
    let mut keys: Vec<&str> = used_by[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["first_used_at", "flow_id", "last_used_at", "uses"]);
    // A new connection shows an empty list and a zero total.
    let fresh = api
        .get(&format!("/v1/connections/{}", ids[1]))
        .await
        .expect(200)
        .data();
    assert_eq!(
        (fresh["used_by"].clone(), fresh["used_by_total"].clone()),
        (json!([]), json!(0))
    );
}

#[tokio::test]
async fn the_background_job_purges_events_and_usages_past_retention() {
    let dir = tempfile::tempdir().unwrap();
    let server = LatchkeyServer::start(
        ServerOptions::new(dir.path())
            .env("LATCHKEY_EVENT_RETENTION", "1s")
            .env("LATCHKEY_REFRESH_INTERVAL", "200ms"),
    )
    .await
    .unwrap();
    let api = Api::admin(&server);
    let id = api
        .create("ret", "kept", "api_key", json!({"api_key": "k"}))
        .await
        .expect(201)
        .id();
    api.get(&format!("/v1/connections/{id}/credentials?flow_id=nightly"))
        .await
        .expect(200);
    eventually(30, "events and usages older than 1 s to be purged", || {
        let api = api.clone();
        let id = id.clone();
        async move {
            let events = api
                .get(&format!("/v1/connections/{id}/events"))
                .await
                .expect(200)
                .data();
            let d = api
                .get(&format!("/v1/connections/{id}"))
                .await
                .expect(200)
                .data();
            (events == json!([]) && d["used_by_total"] == 0 && d["used_by"] == json!([]))
                .then_some(())
        }
    })
    .await;
    // The connection itself stays usable.
    assert_eq!(api_key_of(&server, &id).await, "k");
    assert!(
        server.logs().contains("retention purged"),
        "{}",
        server.logs()
    );
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn secrets_are_wiped_from_the_process_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, material) = master_key("envk");
    let client_secret = format!("gcs-{}", random_hex(12));
    let db = format!("sqlite://{}/env.db?mode=rwc", dir.path().display());
    let server = LatchkeyServer::start(
        ServerOptions::new(dir.path())
            .env("LATCHKEY_MASTER_KEYS", &keys)
            .env("LATCHKEY_OAUTH_GOOGLE_CLIENT_ID", "google-client-id")
            .env("LATCHKEY_OAUTH_GOOGLE_CLIENT_SECRET", &client_secret)
            .database(&db),
    )
    .await
    .unwrap();
    let pid = server.pid().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    for secret in [
        material.as_str(),
        ADMIN_TOKEN,
        client_secret.as_str(),
        db.as_str(),
    ] {
        assert!(
            !contains(&environ, secret.as_bytes()),
            "/proc/{pid}/environ still holds {secret:?}"
        );
    }
    for name in [
        "LATCHKEY_MASTER_KEYS=",
        "LATCHKEY_ADMIN_TOKEN=",
        "LATCHKEY_OAUTH_GOOGLE_CLIENT_SECRET=",
        "LATCHKEY_DATABASE_URL=",
    ] {
        assert!(!contains(&environ, name.as_bytes()), "{name} is still set");
    }
    // Control: this is the server's environment, and what is not secret stays.
    assert!(contains(
        &environ,
        format!("LATCHKEY_LISTEN=127.0.0.1:{}", server.port).as_bytes()
    ));
    assert!(contains(
        &environ,
        b"LATCHKEY_OAUTH_GOOGLE_CLIENT_ID=google-client-id"
    ));
    // And the server still has what it read: the admin token and the master key work.
    let (cid, secret) = seed(&server, "envp", "sealed").await;
    assert_eq!(api_key_of(&server, &cid).await, secret);
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_is_private_and_a_shared_key_file_refuses_start_up() {
    use std::os::unix::fs::PermissionsExt;
    let mode_of = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let server = LatchkeyServer::start(ServerOptions::new(dir.path()))
        .await
        .unwrap();
    let data = dir.path().join("data");
    assert_eq!(mode_of(&data), 0o700, "the data directory");
    let key_file = data.join("master.key");
    assert_eq!(mode_of(&key_file), 0o600, "the key file");
    let (cid, secret) = seed(&server, "perm", "sealed").await;
    drop(server);

    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(mode)).unwrap();
        let before = snapshot(dir.path());
        let (status, out) =
            LatchkeyServer::start_expecting_failure(ServerOptions::new(dir.path())).unwrap();
        assert!(
            !status.success(),
            "{mode:o}: started with a shared key file: {out}"
        );
        for w in [
            "master.key",
            &format!("{mode:o}"),
            "chmod 600",
            "LATCHKEY_ALLOW_INSECURE_KEY_FILE",
        ] {
            assert!(out.contains(w), "{mode:o}: the message lacks {w:?}: {out}");
        }
        assert_untouched(&before, dir.path(), "refused a shared key file");
    }

    // The override starts it, with a warning.
    let server = LatchkeyServer::start(
        ServerOptions::new(dir.path()).env("LATCHKEY_ALLOW_INSECURE_KEY_FILE", "true"),
    )
    .await
    .unwrap();
    assert_eq!(api_key_of(&server, &cid).await, secret);
    assert!(
        server.logs().contains("accessible to group or others"),
        "no warning: {}",
        server.logs()
    );
    drop(server);

    // Fixed permissions: starts without the override.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = LatchkeyServer::start(ServerOptions::new(dir.path()))
        .await
        .unwrap();
    assert_eq!(api_key_of(&server, &cid).await, secret);
}
