//! Operating Latchkey, black-box with the real binary: master-key rotation with online
//! re-encryption (`latchkey keys rewrap`), the start-up key checks, the command line,
//! and `/metrics`. SQLite always; PostgreSQL too when `LATCHKEY_TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

use base64::Engine as _;
use latchkey_tests::server::{
    admin_client, free_port, latchkey_binary, LatchkeyServer, PgDatabase, ServerOptions,
    ADMIN_TOKEN,
};
use latchkey_tests::{Browser, OidcClient, OidcProvider, OidcProviderOptions, TokenAuthMethod};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PROJECT: &str = "proj-ops";
const CALLBACK_PATH: &str = "/v1/connections/oauth2/callback";
const CLIENT: &str = "ops-client";
const CLIENT_SECRET: &str = "ops-client-secret-5a6b7c8d9e";

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fresh `id:base64` master key entry.
fn master_key(id: &str) -> String {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    format!(
        "{id}:{}",
        base64::engine::general_purpose::STANDARD.encode(b)
    )
}

/// Where one test's processes live: a directory, a port, and SQLite or PostgreSQL.
struct Site {
    dir: tempfile::TempDir,
    port: u16,
    pg: Option<PgDatabase>,
}

impl Site {
    fn new(pg: Option<PgDatabase>) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            port: free_port().unwrap(),
            pg,
        }
    }

    fn options(&self, keys: &str) -> ServerOptions {
        let mut o = ServerOptions::new(self.dir.path())
            .env("LATCHKEY_MASTER_KEYS", keys)
            .env("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true");
        o.port = Some(self.port);
        if let Some(pg) = &self.pg {
            o = o.database(pg.url.clone());
        }
        o
    }

    async fn serve(&self, keys: &str) -> LatchkeyServer {
        LatchkeyServer::start(self.options(keys)).await.unwrap()
    }

    /// Runs a command; asserts it succeeded; returns its stdout.
    fn cli_ok(&self, keys: &str, args: &[&str]) -> String {
        let out = self.options(keys).cli(args).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "latchkey {args:?} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        stdout
    }

    /// `keys status --json` as id -> (values, active).
    fn status(&self, keys: &str) -> Vec<(String, u64, bool)> {
        let out = self.cli_ok(keys, &["keys", "status", "--json"]);
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["id"].as_str().unwrap().to_owned(),
                    k["values"].as_u64().unwrap(),
                    k["active"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    fn values_of(&self, keys: &str, id: &str) -> u64 {
        self.status(keys)
            .into_iter()
            .find(|(k, _, _)| k == id)
            .map(|(_, n, _)| n)
            .unwrap_or(0)
    }
}

async fn post(server: &LatchkeyServer, path: &str, body: Value) -> Value {
    let resp = admin_client()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {path} {body}: {status} {v}");
    v["data"].clone()
}

async fn credentials(server: &LatchkeyServer, id: &str) -> Value {
    let resp = admin_client()
        .get(server.url(&format!("/v1/connections/{id}/credentials")))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "credentials of {id}: {v}");
    v["data"].clone()
}

async fn create(server: &LatchkeyServer, name: &str, kind: &str, config: Value) -> String {
    post(
        server,
        "/v1/connections",
        json!({ "name": name, "project_id": PROJECT, "type": kind, "config": config }),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn authorize(server: &LatchkeyServer, id: &str) -> String {
    post(
        server,
        &format!("/v1/connections/{id}/oauth2/authorize"),
        json!({}),
    )
    .await["url"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn callback(server: &LatchkeyServer, browser: &Browser, consent_url: &str) {
    let callback = browser
        .follow_until(consent_url, &server.url(CALLBACK_PATH))
        .await
        .unwrap();
    let resp = browser.open(callback.as_str()).await.unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "callback: {body}");
}

async fn status_of(server: &LatchkeyServer, id: &str) -> String {
    let v: Value = admin_client()
        .get(server.url(&format!("/v1/connections/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"]["status"].as_str().unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------------------

/// Every kind of sealed value under the old key, rewrapped while a server serves, then
/// a server with the new key alone serves all of them.
async fn rotation_of_every_kind_of_value(site: Site) {
    let old = master_key("old");
    let new = master_key("new");
    let server = site.serve(&old).await;
    let peer = OidcProvider::start(OidcProviderOptions {
        clients: vec![OidcClient::confidential(
            CLIENT,
            CLIENT_SECRET,
            TokenAuthMethod::ClientSecretBasic,
            [server.url(CALLBACK_PATH)],
        )
        .with_required_pkce()],
        ..Default::default()
    })
    .await
    .unwrap();
    let browser = Browser::new().unwrap();
    let api_key = format!("sk-{}", random_hex(8));
    let password = format!("pw-{}", random_hex(8));
    let field = format!("tok-{}", random_hex(8));
    let c_api = create(&server, "api", "api_key", json!({ "api_key": api_key })).await;
    let c_basic = create(
        &server,
        "basic",
        "basic",
        json!({ "username": "bot", "password": password }),
    )
    .await;
    let c_custom = create(
        &server,
        "custom",
        "custom",
        json!({ "fields": { "host": { "value": "db", "secret": false }, "token": { "value": field } } }),
    )
    .await;
    // An OAuth grant (access and refresh token, the connection's own client secret).
    let c_oauth = create(
        &server,
        "oauth",
        "oauth2",
        json!({ "scopes": ["openid", "offline_access"], "oauth2_config": {
            "client_id": CLIENT, "client_secret": CLIENT_SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
            "authorization_endpoint": peer.authorization_endpoint(),
            "token_endpoint": peer.token_endpoint(),
        }}),
    )
    .await;
    callback(&server, &browser, &authorize(&server, &c_oauth).await).await;
    assert_eq!(status_of(&server, &c_oauth).await, "active");
    // A registered client's secret, and a pending authorization's PKCE verifier.
    let client = post(
        &server,
        "/v1/oauth2-clients",
        json!({
            "name": "registered", "project_id": PROJECT, "type": "oauth2",
            "client_id": CLIENT, "client_secret": CLIENT_SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
            "authorization_endpoint": peer.authorization_endpoint(),
            "token_endpoint": peer.token_endpoint(),
        }),
    )
    .await;
    let c_pending = post(
        &server,
        "/v1/connections",
        json!({ "name": "pending", "project_id": PROJECT, "type": "oauth2",
                "oauth2_client_id": client["id"], "config": { "scopes": ["openid"] } }),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pending_consent = authorize(&server, &c_pending).await;

    let before: Vec<Value> = {
        let mut v = Vec::new();
        for id in [&c_api, &c_basic, &c_custom, &c_oauth] {
            v.push(credentials(&server, id).await);
        }
        v
    };
    drop(server);

    // Step 1 of the runbook: the new key first, the old one kept.
    let ring = format!("{new},{old}");
    let server = site.serve(&ring).await;
    let status = site.status(&ring);
    let old_values = status.iter().find(|(k, _, _)| k == "old").unwrap().1;
    // api, basic, custom secrets; oauth secrets, access and refresh token; client
    // secret; verifier; the key check.
    assert!(old_values >= 8, "{status:?}");
    assert!(status.contains(&("new".into(), 0, true)), "{status:?}");

    // Step 2: rewrap while the server serves.
    let dry = site.cli_ok(&ring, &["keys", "rewrap", "--dry-run"]);
    assert!(
        dry.contains(&format!("would re-seal {old_values} value")),
        "{dry}"
    );
    assert_eq!(site.values_of(&ring, "old"), old_values, "a dry run wrote");
    let out = site.cli_ok(&ring, &["keys", "rewrap", "--batch-size", "2"]);
    assert!(
        out.contains(&format!("re-sealed {old_values} value")),
        "{out}"
    );
    let status = site.status(&ring);
    assert!(status.contains(&("old".into(), 0, false)), "{status:?}");
    assert_eq!(
        status.iter().find(|(k, _, _)| k == "new").unwrap().1,
        old_values
    );
    // The serving server still opens everything.
    for (id, creds) in [&c_api, &c_basic, &c_custom, &c_oauth].iter().zip(&before) {
        assert_eq!(&credentials(&server, id).await, creds);
    }
    drop(server);

    // Step 3: the old key removed. Everything opens, and the pending authorization
    // completes (its verifier and the registered client's secret open under the new key).
    let server = site.serve(&new).await;
    for (id, creds) in [&c_api, &c_basic, &c_custom, &c_oauth].iter().zip(&before) {
        assert_eq!(&credentials(&server, id).await, creds);
    }
    callback(&server, &browser, &pending_consent).await;
    assert_eq!(status_of(&server, &c_pending).await, "active");
    assert_eq!(credentials(&server, &c_pending).await["type"], "oauth2");
    let status = site.status(&new);
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0].0, "new");
}

#[tokio::test]
async fn rewrap_reseals_every_kind_of_value_and_the_new_key_alone_serves_everything() {
    rotation_of_every_kind_of_value(Site::new(None)).await;
}

#[tokio::test]
async fn rewrap_reseals_every_kind_of_value_on_postgres() {
    let Some(pg) = PgDatabase::create("rewrapkinds").unwrap() else {
        eprintln!("note: LATCHKEY_TEST_POSTGRES_URL is not set; skipped");
        return;
    };
    rotation_of_every_kind_of_value(Site::new(Some(pg))).await;
}

/// A rewrap stopped partway (by `--limit` or by SIGKILL) leaves every value readable,
/// and the next run finishes; a concurrent writer's values are never overwritten.
async fn interrupted_and_concurrent(site: Site) {
    let old = master_key("old");
    let new = master_key("new");
    let server = site.serve(&old).await;
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(
            create(
                &server,
                &format!("c{i}"),
                "api_key",
                json!({ "api_key": format!("v0-{i}") }),
            )
            .await,
        );
    }
    drop(server);
    let ring = format!("{new},{old}");
    let server = site.serve(&ring).await;
    let total = site.values_of(&ring, "old");
    assert_eq!(total, 25, "24 secrets and the key check");

    // Stopped by --limit.
    let out = site.cli_ok(
        &ring,
        &["keys", "rewrap", "--limit", "5", "--batch-size", "2"],
    );
    assert!(out.contains("stopped at --limit"), "{out}");
    assert_eq!(site.values_of(&ring, "old"), total - 5);

    // Killed (SIGKILL) once it reported progress.
    let mut child = std::process::Command::new(latchkey_binary().unwrap());
    child
        .current_dir(site.dir.path())
        .env_clear()
        .env("LATCHKEY_MASTER_KEYS", &ring)
        .env("LATCHKEY_LOG", "info")
        .env("NO_COLOR", "1")
        .args(["keys", "rewrap", "--batch-size", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(pg) = &site.pg {
        child.env("LATCHKEY_DATABASE_URL", &pg.url);
    }
    let mut child = child.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    for line in BufReader::new(stderr).lines() {
        if line.unwrap().contains("rewrap progress") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(credentials(&server, id).await["api_key"], format!("v0-{i}"));
    }

    // A concurrent writer: every connection's secret is replaced while a rewrap runs.
    let rewrap = {
        let opts = site.options(&ring);
        tokio::task::spawn_blocking(move || opts.cli(&["keys", "rewrap", "--batch-size", "1"]))
    };
    for round in 1..=2 {
        for (i, id) in ids.iter().enumerate() {
            let resp = admin_client()
                .patch(server.url(&format!("/v1/connections/{id}")))
                .json(&json!({ "config": { "api_key": format!("v{round}-{i}") } }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }
    }
    let out = rewrap.await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            credentials(&server, id).await["api_key"],
            format!("v2-{i}"),
            "a writer's value was overwritten"
        );
    }
    assert_eq!(site.values_of(&ring, "old"), 0, "{:?}", site.status(&ring));
    drop(server);
    let server = site.serve(&new).await;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(credentials(&server, id).await["api_key"], format!("v2-{i}"));
    }
}

#[tokio::test]
async fn rewrap_resumes_after_interruption_and_never_overwrites_a_concurrent_writer() {
    interrupted_and_concurrent(Site::new(None)).await;
}

#[tokio::test]
async fn rewrap_resumes_and_respects_writers_on_postgres() {
    let Some(pg) = PgDatabase::create("rewrapresume").unwrap() else {
        eprintln!("note: LATCHKEY_TEST_POSTGRES_URL is not set; skipped");
        return;
    };
    interrupted_and_concurrent(Site::new(Some(pg))).await;
}

// ---------------------------------------------------------------------------------------
// Start-up key checks
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn start_up_names_every_key_id_that_seals_data_and_is_missing() {
    let site = Site::new(None);
    let ka = master_key("ka");
    let kb = master_key("kb");
    let server = site.serve(&ka).await;
    let a = create(&server, "a", "api_key", json!({ "api_key": "under-ka" })).await;
    drop(server);
    let server = site.serve(&format!("{kb},{ka}")).await;
    create(&server, "b", "api_key", json!({ "api_key": "under-kb" })).await;
    drop(server);

    for ring in [master_key("kc"), kb.clone(), ka.clone()] {
        let (status, out) = LatchkeyServer::start_expecting_failure(site.options(&ring)).unwrap();
        assert!(!status.success(), "started with {ring:?}");
        let missing: &[&str] = match &ring[..2] {
            "kc" => &["\"ka\"", "\"kb\""],
            "kb" => &["\"ka\""],
            _ => &["\"kb\""],
        };
        for id in missing {
            assert!(out.contains(id), "the refusal does not name {id}: {out}");
        }
    }
    let server = site.serve(&format!("{kb},{ka}")).await;
    assert_eq!(credentials(&server, &a).await["api_key"], "under-ka");
}

#[tokio::test]
async fn postgres_requires_master_keys() {
    let Some(pg) = PgDatabase::create("pgkeys").unwrap() else {
        eprintln!("note: LATCHKEY_TEST_POSTGRES_URL is not set; skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (status, out) = LatchkeyServer::start_expecting_failure(
        ServerOptions::new(dir.path())
            .database(pg.url.clone())
            .env("LATCHKEY_MASTER_KEYS", ""),
    )
    .unwrap();
    assert!(!status.success());
    assert!(
        out.contains("LATCHKEY_MASTER_KEYS is required with PostgreSQL"),
        "{out}"
    );
    assert!(!dir.path().join("data").join("master.key").exists());
}

/// Two replicas with different keys start at once on an empty database: whichever
/// interleaving happens, they never both run.
async fn first_start_race(pg: Option<&PgDatabase>, round: usize) {
    let dir = tempfile::tempdir().unwrap();
    let options = |keys: String| {
        let mut o = ServerOptions::new(dir.path().join(format!("replica-{keys:.2}")))
            .env("LATCHKEY_MASTER_KEYS", keys);
        o = o.database(match pg {
            Some(pg) => pg.url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("shared.db").display()
            ),
        });
        o
    };
    let (a, b) = tokio::join!(
        LatchkeyServer::start(options(master_key("ra"))),
        LatchkeyServer::start(options(master_key("rb")))
    );
    let running = [a.is_ok(), b.is_ok()];
    assert!(
        !(running[0] && running[1]),
        "round {round}: both replicas run with different keys"
    );
    assert!(
        running[0] || running[1],
        "round {round}: neither started: {:?} {:?}",
        a.err(),
        b.err()
    );
}

#[tokio::test]
async fn replicas_racing_a_first_start_never_both_run_with_different_keys() {
    for round in 0..3 {
        first_start_race(None, round).await;
        if let Some(pg) = PgDatabase::create("firstrace").unwrap() {
            first_start_race(Some(&pg), round).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn access_keys_from_the_command_line() {
    let site = Site::new(None);
    let keys = master_key("k1");
    let server = site.serve(&keys).await;
    let out = site.cli_ok(
        &keys,
        &[
            "access-keys",
            "create",
            "--project",
            PROJECT,
            "--scope",
            "connections:read",
            "--scope",
            "metrics:read",
            "--name",
            "scraper",
            "--json",
        ],
    );
    let created: Value = serde_json::from_str(out.trim()).unwrap();
    let token = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["scopes"],
        json!(["connections:read", "metrics:read"])
    );
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(server.url(path)).bearer_auth(&token).send();
    assert_eq!(
        get("/v1/connections").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(get("/metrics").await.unwrap().status(), StatusCode::OK);

    let list = site.cli_ok(&keys, &["access-keys", "list"]);
    assert!(list.contains(&id) && list.contains("scraper"), "{list}");
    assert!(!list.contains(&token), "the list shows the key");

    site.cli_ok(&keys, &["access-keys", "revoke", &id]);
    // The CLI is another process: the server's key cache learns of the revocation
    // through the store's change feed, within a second (docs/OPERATIONS.md).
    let revoked_at = std::time::Instant::now();
    loop {
        let status = get("/v1/connections").await.unwrap().status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            revoked_at.elapsed() < std::time::Duration::from_secs(1),
            "the revoked key still works after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Failures: non-zero, one line naming the reason.
    for (args, says) in [
        (vec!["access-keys", "revoke", id.as_str()], "not found"),
        (
            vec![
                "access-keys",
                "create",
                "--project",
                PROJECT,
                "--scope",
                "everything",
            ],
            "unknown scope",
        ),
        (
            vec!["access-keys", "revoke", "not-an-id"],
            "not an access key id",
        ),
    ] {
        let out = site.options(&keys).cli(&args).unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.trim().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("latchkey: ") && last.contains(says),
            "{args:?}: {stderr}"
        );
    }
    // Every command has --help.
    for args in [
        vec!["--help"],
        vec!["keys", "status", "--help"],
        vec!["keys", "rewrap", "--help"],
        vec!["access-keys", "create", "--help"],
        vec!["openapi", "--help"],
    ] {
        let out = site.options(&keys).cli(&args).unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_need_the_admin_or_metrics_read_and_label_no_ids() {
    let site = Site::new(None);
    let keys = master_key("mk");
    let server = site.serve(&keys).await;
    let secret = format!("sk-{}", random_hex(8));
    let id = create(&server, "m", "api_key", json!({ "api_key": secret })).await;
    credentials(&server, &id).await;
    let http = reqwest::Client::new();
    let scrape = |token: Option<String>| {
        let mut rb = http.get(server.url("/metrics"));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rb.send()
    };
    assert_eq!(
        scrape(None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let key_with = |scope: &'static str| {
        let server = &server;
        async move {
            post(
                server,
                "/v1/access-keys",
                json!({ "project_id": PROJECT, "scopes": [scope] }),
            )
            .await["key"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let reader = key_with("connections:read").await;
    assert_eq!(
        scrape(Some(reader)).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let scraper = key_with("metrics:read").await;
    let resp = scrape(Some(scraper)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let resp = scrape(Some(ADMIN_TOKEN.into())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    for needle in [
        "latchkey_http_requests_total{",
        r#"route="/v1/connections/{id}/credentials""#,
        "latchkey_http_request_duration_seconds_bucket{",
        r#"latchkey_connections{status="active",type="api_key"} 1"#,
        "latchkey_refresh_due 0",
        r#"latchkey_sealed_values{key_id="mk"} 2"#,
        "# TYPE latchkey_lease_takeovers_total counter",
        "# TYPE latchkey_job_last_cycle_timestamp_seconds gauge",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    for leak in [id.as_str(), PROJECT, secret.as_str(), ADMIN_TOKEN] {
        assert!(!text.contains(leak), "the metrics show {leak:?}");
    }
}

#[tokio::test]
async fn metrics_count_refreshes_by_type_and_outcome() {
    let site = Site::new(None);
    let keys = master_key("rk");
    let mut options = site
        .options(&keys)
        .env("LATCHKEY_REFRESH_INTERVAL", "1s")
        .env("LATCHKEY_REFRESH_MARGIN", "2s");
    options.port = Some(site.port);
    let server = LatchkeyServer::start(options).await.unwrap();
    let peer = OidcProvider::start(
        OidcProviderOptions::default()
            .access_token_ttl(std::time::Duration::from_secs(4))
            .client(OidcClient::confidential(
                CLIENT,
                CLIENT_SECRET,
                TokenAuthMethod::ClientSecretBasic,
                [server.url(CALLBACK_PATH)],
            )),
    )
    .await
    .unwrap();
    let browser = Browser::new().unwrap();
    let id = create(
        &server,
        "refreshing",
        "oauth2",
        json!({ "scopes": ["openid", "read"], "oauth2_config": {
            "client_id": CLIENT, "client_secret": CLIENT_SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
            "authorization_endpoint": peer.authorization_endpoint(),
            "token_endpoint": peer.token_endpoint(),
        }}),
    )
    .await;
    callback(&server, &browser, &authorize(&server, &id).await).await;
    // The background job refreshes the 4-second token; wait until it is counted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let text = loop {
        let text = admin_client()
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains(r#"latchkey_refresh_total{provider="oauth2",outcome="refreshed"}"#) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refresh was counted:\n{text}\n{}",
            server.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    for needle in [
        r#"latchkey_refresh_duration_seconds_count{provider="oauth2"}"#,
        r#"latchkey_connections{status="active",type="oauth2"} 1"#,
        "latchkey_job_last_cycle_timestamp_seconds ",
        r#"latchkey_sealed_values{key_id="rk"}"#,
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    assert!(!text.contains(&id), "the metrics show the connection id");
}
