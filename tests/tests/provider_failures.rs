//! A hostile or failing token endpoint, driven through the public API of the real binary
//! (issue 7, items 2, 4 and 8): scripted loopback token endpoints (wiremock) answer huge
//! lifetimes, hang, or fail and recover.
//!
//! With `LATCHKEY_TEST_POSTGRES_URL` the server uses a PostgreSQL database of its own;
//! otherwise SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use latchkey_tests::server::{free_port, LatchkeyServer, PgDatabase, ServerOptions, ADMIN_TOKEN};
use latchkey_tests::Browser;
use serde_json::{json, Value};
use url::Url;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const PROJECT: &str = "p-provider-failures";
const HUGE: u64 = 10_000_000_000_000;

fn grant_type(req: &Request) -> String {
    url::form_urlencoded::parse(&req.body)
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn token(access: String, refresh: String, expires_in: u64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "refresh_token": refresh,
        "scope": "read",
    }))
}

async fn refreshes_at(mock: &MockServer, at: &str) -> usize {
    mock.received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == at && grant_type(r) == "refresh_token")
        .count()
}

fn server_options(dir: &std::path::Path, db: Option<&PgDatabase>) -> ServerOptions {
    let mut o = ServerOptions::new(dir)
        .env("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true")
        .env("LATCHKEY_REFRESH_INTERVAL", "1s")
        .env("LATCHKEY_REFRESH_MARGIN", "2s")
        .env("LATCHKEY_REFRESH_LEASE", "1s")
        .env("LATCHKEY_HTTP_TIMEOUT", "6s");
    o.port = Some(free_port().unwrap());
    if let Some(db) = db {
        o = o.database(db.url.clone());
    }
    o
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: &str) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
        );
        Self {
            http: reqwest::Client::builder()
                .default_headers(headers)
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap(),
            base: base.to_owned(),
        }
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, reqwest::header::HeaderMap, Value)> {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, headers, body))
    }

    async fn connection(&self, id: &str) -> Result<Value> {
        let (status, _, body) = self
            .send(self.http.get(format!("{}/v1/connections/{id}", self.base)))
            .await?;
        if status != 200 {
            bail!("GET connection answered {status}: {body}");
        }
        Ok(body["data"].clone())
    }

    async fn credentials(&self, id: &str) -> Result<(u16, reqwest::header::HeaderMap, Value)> {
        self.send(
            self.http
                .get(format!("{}/v1/connections/{id}/credentials", self.base)),
        )
        .await
    }

    /// Creates an `oauth2` connection at `token_url` and authorizes it (the consent at
    /// the mock is skipped: the callback gets a code directly). Returns the id and the
    /// callback's HTTP status.
    async fn connect(
        &self,
        name: &str,
        mock: &MockServer,
        token_path: &str,
    ) -> Result<(String, u16)> {
        let (status, _, body) = self
            .send(
                self.http
                    .post(format!("{}/v1/connections", self.base))
                    .json(&json!({
                        "name": name,
                        "project_id": PROJECT,
                        "type": "oauth2",
                        "config": {
                            "scopes": ["read"],
                            "oauth2_config": {
                                "client_id": "mock-client",
                                "client_secret": "mock-secret",
                                "authorization_endpoint": format!("{}/authorize", mock.uri()),
                                "token_endpoint": format!("{}{token_path}", mock.uri()),
                                "token_endpoint_auth_method": "client_secret_post",
                            },
                        },
                    })),
            )
            .await?;
        if status != 201 {
            bail!("creating {name} answered {status}: {body}");
        }
        let id = body["data"]["id"].as_str().context("id")?.to_owned();
        let (status, _, body) = self
            .send(self.http.post(format!(
                "{}/v1/connections/{id}/oauth2/authorize",
                self.base
            )))
            .await?;
        if status != 200 {
            bail!("authorize answered {status}: {body}");
        }
        let url = Url::parse(body["data"]["url"].as_str().context("url")?)?;
        let q: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
        let mut callback = Url::parse(&q["redirect_uri"])?;
        callback
            .query_pairs_mut()
            .append_pair("code", &format!("code-{name}"))
            .append_pair("state", &q["state"]);
        let resp = Browser::new()?
            .open(callback.as_str())
            .await
            .with_context(|| format!("the callback of {name} got no HTTP answer"))?;
        Ok((id, resp.status().as_u16()))
    }
}

async fn poll<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let end = Instant::now() + deadline;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > end {
            bail!(
                "{what}: not reached within {deadline:?}{}",
                last_err
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn year_of(rfc3339: &str) -> i64 {
    rfc3339[..4].parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// 2. A huge expires_in neither drops the callback nor stops the jobs
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_huge_expires_in_neither_drops_the_callback_nor_stops_the_jobs() {
    let mock = MockServer::start().await;
    // A code exchange answered with a lifetime of 317,000 years.
    Mock::given(method("POST"))
        .and(path("/token-huge"))
        .respond_with(|_: &Request| token("huge-access".into(), "huge-refresh".into(), HUGE))
        .mount(&mock)
        .await;
    // Short-lived at the exchange; the refresh answers the huge lifetime.
    Mock::given(method("POST"))
        .and(path("/token-huge-refresh"))
        .respond_with(|req: &Request| {
            let lifetime = if grant_type(req) == "refresh_token" {
                HUGE
            } else {
                3
            };
            token("hr-access".into(), "hr-refresh".into(), lifetime)
        })
        .mount(&mock)
        .await;
    let issued = Arc::new(AtomicUsize::new(0));
    Mock::given(method("POST"))
        .and(path("/token-short"))
        .respond_with(move |_: &Request| {
            let n = issued.fetch_add(1, Ordering::SeqCst);
            token(format!("short-{n}"), format!("short-refresh-{n}"), 3)
        })
        .mount(&mock)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let pg = PgDatabase::create("providerhuge").unwrap();
    let server = LatchkeyServer::start(server_options(dir.path(), pg.as_ref()))
        .await
        .unwrap();
    let api = Api::new(&server.base_url);

    let (huge, status) = api.connect("huge", &mock, "/token-huge").await.unwrap();
    assert_eq!(status, 200, "the callback answered");
    let c = api.connection(&huge).await.unwrap();
    assert_eq!(c["status"], "active", "{c}");
    let expires = c["oauth2"]["expires_at"].as_str().unwrap().to_owned();
    let this_year = year_of(c["created_at"].as_str().unwrap());
    assert!(
        (this_year + 9..=this_year + 10).contains(&year_of(&expires)),
        "clamped to 10 years: {expires}"
    );

    let (huge_refresh, status) = api
        .connect("huge-refresh", &mock, "/token-huge-refresh")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (short, status) = api.connect("short", &mock, "/token-short").await.unwrap();
    assert_eq!(status, 200);

    // The job refreshes the short-lived grant into the huge lifetime (which clamps)...
    poll("the huge refresh", Duration::from_secs(30), || async {
        let c = api.connection(&huge_refresh).await?;
        let e = c["oauth2"]["expires_at"]
            .as_str()
            .unwrap_or("0000")
            .to_owned();
        Ok((year_of(&e) >= this_year + 9).then_some(()))
    })
    .await
    .unwrap();
    // ...and goes on refreshing the others afterwards.
    let before = refreshes_at(&mock, "/token-short").await;
    poll(
        "three more refreshes after the huge one",
        Duration::from_secs(30),
        || async { Ok((refreshes_at(&mock, "/token-short").await >= before + 3).then_some(())) },
    )
    .await
    .unwrap();
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    for id in [&huge, &huge_refresh, &short] {
        let (status, _, body) = api.credentials(id).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert!(!server.logs().contains("panicked at"), "{}", server.logs());
    drop(server);
    drop(pg);
}

// ---------------------------------------------------------------------------------------
// 4. A hanging host cannot starve another host's refresh
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_hanging_token_endpoint_does_not_starve_another_host() {
    // Two hosts (two loopback ports). The slow one answers code exchanges but lets every
    // refresh hang past the HTTP timeout.
    let slow = MockServer::start().await;
    let slow_issued = Arc::new(AtomicUsize::new(0));
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(move |req: &Request| {
            let n = slow_issued.fetch_add(1, Ordering::SeqCst);
            let t = token(format!("slow-{n}"), format!("slow-refresh-{n}"), 4);
            if grant_type(req) == "refresh_token" {
                t.set_delay(Duration::from_secs(60))
            } else {
                t
            }
        })
        .mount(&slow)
        .await;
    let fast = MockServer::start().await;
    let fast_issued = Arc::new(AtomicUsize::new(0));
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(move |_: &Request| {
            let n = fast_issued.fetch_add(1, Ordering::SeqCst);
            token(format!("fast-{n}"), format!("fast-refresh-{n}"), 4)
        })
        .mount(&fast)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let pg = PgDatabase::create("providerhang").unwrap();
    let server = LatchkeyServer::start(
        server_options(dir.path(), pg.as_ref())
            // The old default: 8 refreshes at once, now with at most 4 per host.
            .env("LATCHKEY_REFRESH_CONCURRENCY", "8")
            .env("LATCHKEY_REFRESH_CONCURRENCY_PER_HOST", "4"),
    )
    .await
    .unwrap();
    let api = Api::new(&server.base_url);

    for i in 0..24 {
        let (_, status) = api
            .connect(&format!("slow-{i}"), &slow, "/token")
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    let (fast_id, status) = api.connect("fast", &fast, "/token").await.unwrap();
    assert_eq!(status, 200);

    // No credentials call (it would refresh on demand): only the background job counts.
    // The fast host's 4 s grant is due every 2 s; while every slow refresh hangs for the
    // whole HTTP timeout, it is still refreshed before each token lapses.
    let started = Instant::now();
    poll(
        "five background refreshes at the other host",
        Duration::from_secs(40),
        || async { Ok((refreshes_at(&fast, "/token").await >= 5).then_some(())) },
    )
    .await
    .unwrap();
    let hanging = refreshes_at(&slow, "/token").await;
    assert!(hanging >= 4, "the slow host's refreshes ran: {hanging}");
    let c = api.connection(&fast_id).await.unwrap();
    assert_eq!(c["status"], "active", "{c}");
    assert!(c["last_error"].is_null(), "{c}");
    eprintln!(
        "five refreshes at the fast host in {:?} while {hanging} refreshes hung at the slow one",
        started.elapsed()
    );
    drop(server);
    drop(pg);
}

// ---------------------------------------------------------------------------------------
// 8. A failing provider never costs a re-consent
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_failing_provider_never_costs_a_reconsent_and_the_connection_recovers() {
    let mock = MockServer::start().await;
    let failing = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicUsize::new(0));
    let f = failing.clone();
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(move |req: &Request| {
            let n = issued.fetch_add(1, Ordering::SeqCst);
            if grant_type(req) == "refresh_token" && f.load(Ordering::SeqCst) {
                return ResponseTemplate::new(503).set_body_string("upstream down");
            }
            let lifetime = if grant_type(req) == "refresh_token" {
                3600
            } else {
                3
            };
            token(format!("access-{n}"), format!("refresh-{n}"), lifetime)
        })
        .mount(&mock)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let pg = PgDatabase::create("providerdown").unwrap();
    let server = LatchkeyServer::start(server_options(dir.path(), pg.as_ref()))
        .await
        .unwrap();
    let api = Api::new(&server.base_url);

    failing.store(true, Ordering::SeqCst);
    let (id, status) = api.connect("flaky", &mock, "/token").await.unwrap();
    assert_eq!(status, 200);
    let c = api.connection(&id).await.unwrap();
    let expires_at = c["oauth2"]["expires_at"].as_str().unwrap().to_owned();

    // The 3 s token lapses while every refresh fails.
    let (status, headers, body) = poll(
        "credentials answer provider_unavailable",
        Duration::from_secs(30),
        || async {
            let r = api.credentials(&id).await?;
            Ok((r.0 != 200).then_some(r))
        },
    )
    .await
    .unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "provider_unavailable", "{body}");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    // Several expiry cycles (one a second) after the lapse: still active, never expired.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = api.connection(&id).await.unwrap();
    assert_eq!(c["status"], "active", "{c}");
    assert_eq!(c["oauth2"]["expires_at"], expires_at.as_str(), "{c}");
    assert!(refreshes_at(&mock, "/token").await >= 2);

    // The provider recovers: so does the connection, without anyone re-consenting.
    failing.store(false, Ordering::SeqCst);
    let creds = poll("credentials recover", Duration::from_secs(90), || async {
        let (status, _, body) = api.credentials(&id).await?;
        Ok((status == 200).then_some(body))
    })
    .await
    .unwrap();
    assert!(creds["data"]["access_token"]
        .as_str()
        .unwrap()
        .starts_with("access-"));
    let c = api.connection(&id).await.unwrap();
    assert_eq!(c["status"], "active", "{c}");
    assert!(c["last_error"].is_null(), "{c}");
    drop(server);
    drop(pg);
}

// ---------------------------------------------------------------------------------------
// A refresh, once started, is never cut off: a rotated refresh token survives a
// graceful stop
// ---------------------------------------------------------------------------------------

/// A token endpoint that rotates strictly, as many providers do: each refresh token works
/// once, and the old one is dead as soon as the new one is issued. The first refresh
/// answers after `slow` (the rotation has happened by then). Counts what it rejects.
async fn rotating_provider(mock: &MockServer, at: &str, slow: Duration) -> Arc<AtomicUsize> {
    let rejected = Arc::new(AtomicUsize::new(0));
    let r = rejected.clone();
    let state = std::sync::Mutex::new((0usize, "rot-refresh-0".to_owned()));
    Mock::given(method("POST"))
        .and(path(at.to_owned()))
        .respond_with(move |req: &Request| {
            let mut s = state.lock().unwrap();
            if grant_type(req) != "refresh_token" {
                return token("rot-access-0".into(), s.1.clone(), 3);
            }
            let presented = url::form_urlencoded::parse(&req.body)
                .find(|(k, _)| k == "refresh_token")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            if presented != s.1 {
                r.fetch_add(1, Ordering::SeqCst);
                return ResponseTemplate::new(400).set_body_json(json!({
                    "error": "invalid_grant",
                    "error_description": "refresh token already used",
                }));
            }
            s.0 += 1;
            s.1 = format!("rot-refresh-{}", s.0);
            // The slow answer still brings 4 s of lifetime (it is counted from the
            // request), so it is not due again the moment it arrives.
            if s.0 == 1 {
                token(
                    format!("rot-access-{}", s.0),
                    s.1.clone(),
                    4 + slow.as_secs(),
                )
                .set_delay(slow)
            } else {
                token(format!("rot-access-{}", s.0), s.1.clone(), 3)
            }
        })
        .mount(mock)
        .await;
    rejected
}

#[tokio::test]
async fn a_graceful_stop_mid_refresh_keeps_the_rotated_grant() {
    let mock = MockServer::start().await;
    let rejected = rotating_provider(&mock, "/token-rotating", Duration::from_secs(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let pg = PgDatabase::create("providerstop").unwrap();
    let options = |dir: &std::path::Path| {
        server_options(dir, pg.as_ref()).env("LATCHKEY_REFRESH_LEASE", "20s")
    };
    let mut server = LatchkeyServer::start(options(dir.path())).await.unwrap();
    let api = Api::new(&server.base_url);
    let (id, status) = api
        .connect("rotating", &mock, "/token-rotating")
        .await
        .unwrap();
    assert_eq!(status, 200);

    // The background refresh is at the provider, which has rotated the token and takes
    // 3 s to answer: stop the server now (SIGTERM).
    poll(
        "the first refresh reached the provider",
        Duration::from_secs(30),
        || async { Ok((refreshes_at(&mock, "/token-rotating").await >= 1).then_some(())) },
    )
    .await
    .unwrap();
    let stopping = Instant::now();
    server.stop();
    let stopped_in = stopping.elapsed();
    let logs = server.logs();
    assert!(
        logs.contains("waiting for the refreshes in flight"),
        "{logs}"
    );
    assert!(
        stopped_in < Duration::from_secs(12),
        "stopped by itself, not killed: {stopped_in:?}"
    );

    // Restarted, it refreshes with the rotated token it saved on the way out.
    let server = LatchkeyServer::start(options(dir.path())).await.unwrap();
    let api = Api::new(&server.base_url);
    poll(
        "two more refreshes after the restart",
        Duration::from_secs(30),
        || async { Ok((refreshes_at(&mock, "/token-rotating").await >= 3).then_some(())) },
    )
    .await
    .unwrap();
    assert_eq!(
        rejected.load(Ordering::SeqCst),
        0,
        "a dead refresh token was presented"
    );
    let c = api.connection(&id).await.unwrap();
    assert_eq!(c["status"], "active", "{c}");
    assert!(c["last_error"].is_null(), "{c}");
    let (status, _, body) = api.credentials(&id).await.unwrap();
    assert_eq!(status, 200, "{body}");
    drop(server);
    drop(pg);
}
