//! Two `latchkey` processes on one database, each serving connections and access keys
//! from its in-process cache: what one process changes, the other serves within
//! [`STALENESS_BOUND`] — a rename, a secret replacement, a refresh, a revoked access key
//! and a delete.
//!
//! On PostgreSQL (`LATCHKEY_TEST_POSTGRES_URL`) the caches follow LISTEN/NOTIFY. SQLite
//! is meant to be owned by one process; two sharing a file still see each other's
//! changes through the commit counter the store polls, and that runs here too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use latchkey_tests::server::{admin_client, LatchkeyServer, PgDatabase, ServerOptions};
use latchkey_tests::Browser;
use serde_json::{json, Value};
use url::Url;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// How long another process may serve what was true before a change.
const STALENESS_BOUND: Duration = Duration::from_secs(1);
const PROJECT: &str = "p-replicas";

/// Polls `check` until it yields, failing once `STALENESS_BOUND` has passed since `since`
/// (the moment the change was acknowledged by the other process).
async fn served_within<F, Fut>(what: &str, since: Instant, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    loop {
        let ok = check().await.unwrap();
        let took = since.elapsed();
        if ok {
            eprintln!("{what}: served by the other process after {took:?}");
            return took;
        }
        assert!(
            took <= STALENESS_BOUND,
            "{what}: still stale {took:?} after the change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn grant_type(req: &Request) -> String {
    url::form_urlencoded::parse(&req.body)
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A token endpoint on loopback: the code gives `at-code` (10 s), each refresh `at-<n>`
/// (an hour).
async fn token_endpoint() -> MockServer {
    let server = MockServer::start().await;
    let refreshed = std::sync::atomic::AtomicUsize::new(0);
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(move |req: &Request| {
            if grant_type(req) == "authorization_code" {
                ResponseTemplate::new(200).set_body_json(json!({
                    "access_token": "at-code", "token_type": "Bearer",
                    "expires_in": 10, "refresh_token": "rt-code",
                }))
            } else {
                let n = refreshed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                ResponseTemplate::new(200).set_body_json(json!({
                    "access_token": format!("at-{n}"), "token_type": "Bearer",
                    "expires_in": 3600, "refresh_token": format!("rt-{n}"),
                }))
            }
        })
        .mount(&server)
        .await;
    server
}

struct Client {
    http: reqwest::Client,
}

impl Client {
    async fn call(
        &self,
        req: reqwest::RequestBuilder,
        bearer: Option<&str>,
    ) -> Result<(u16, Value)> {
        let req = match bearer {
            Some(b) => req.bearer_auth(b),
            None => req,
        };
        let r = req.send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn get(&self, s: &LatchkeyServer, p: &str, key: Option<&str>) -> Result<(u16, Value)> {
        self.call(self.http.get(s.url(p)), key).await
    }

    async fn credentials(&self, s: &LatchkeyServer, id: &str, key: &str) -> Result<(u16, Value)> {
        self.get(s, &format!("/v1/connections/{id}/credentials"), Some(key))
            .await
    }

    async fn ok(&self, req: reqwest::RequestBuilder) -> Value {
        let (status, body) = self.call(req, None).await.unwrap();
        assert!((200..300).contains(&status), "{status} {body}");
        body
    }
}

async fn two_processes_serve_each_others_changes(pg: Option<PgDatabase>) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_endpoint().await;
    let options = |run_jobs: bool, margin: &str| {
        let mut o = ServerOptions::new(dir.path())
            .env("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true")
            .env("LATCHKEY_REFRESH_INTERVAL", "1s")
            .env("LATCHKEY_REFRESH_MARGIN", margin)
            .env("LATCHKEY_RUN_JOBS", run_jobs.to_string());
        if let Some(pg) = &pg {
            o = o.database(pg.url.clone());
        }
        o
    };
    // The first process creates the schema and the master key the second one reads. Only
    // it refreshes, early (an hour of margin: at half the token's life); the second one
    // would refresh only 1 s before expiry, so a refreshed token it serves came from the
    // first.
    let a = LatchkeyServer::start(options(true, "1h")).await.unwrap();
    let b = LatchkeyServer::start(options(false, "1s")).await.unwrap();
    let c = Client {
        http: admin_client(),
    };
    let plain = Client {
        http: reqwest::Client::new(),
    };

    let key = c
        .ok(c.http.post(a.url("/v1/access-keys")).json(&json!({
            "project_id": PROJECT, "name": "engine",
            "scopes": ["connections:read", "credentials:read"],
        })))
        .await;
    let key = key["data"]["key"].as_str().unwrap().to_owned();
    let id = c
        .ok(c.http.post(a.url("/v1/connections")).json(&json!({
            "project_id": PROJECT, "name": "stripe", "type": "api_key",
            "config": {"api_key": "sk-1"},
        })))
        .await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // B reads it: its cache now holds the connection and the key.
    let (status, body) = plain.credentials(&b, &id, &key).await.unwrap();
    assert_eq!((status, &body["data"]["api_key"]), (200, &json!("sk-1")));
    let (_, d) = plain
        .get(&b, &format!("/v1/connections/{id}"), Some(&key))
        .await
        .unwrap();
    assert_eq!(d["data"]["name"], "stripe");

    // A rename through A.
    c.ok(c
        .http
        .patch(a.url(&format!("/v1/connections/{id}")))
        .json(&json!({"name": "stripe-prod"})))
        .await;
    let since = Instant::now();
    served_within("rename", since, || async {
        let (_, d) = plain
            .get(&b, &format!("/v1/connections/{id}"), Some(&key))
            .await?;
        Ok(d["data"]["name"] == "stripe-prod")
    })
    .await;

    // A secret replacement through A.
    c.ok(c
        .http
        .patch(a.url(&format!("/v1/connections/{id}")))
        .json(&json!({"config": {"api_key": "sk-2"}})))
        .await;
    let since = Instant::now();
    served_within("secret replacement", since, || async {
        let (status, body) = plain.credentials(&b, &id, &key).await?;
        if status != 200 {
            bail!("{status} {body}");
        }
        Ok(body["data"]["api_key"] == "sk-2")
    })
    .await;

    // A refresh by A's background job of a grant B has cached.
    let oauth = c
        .ok(c.http.post(a.url("/v1/connections")).json(&json!({
            "project_id": PROJECT, "name": "oauth", "type": "oauth2",
            "config": {"scopes": ["read"], "oauth2_config": {
                "client_id": "cid", "client_secret": "secret",
                "authorization_endpoint": format!("{}/authorize", tokens.uri()),
                "token_endpoint": format!("{}/token", tokens.uri()),
                "token_endpoint_auth_method": "client_secret_post",
            }},
        })))
        .await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let consent = c
        .ok(c
            .http
            .post(a.url(&format!("/v1/connections/{oauth}/oauth2/authorize"))))
        .await;
    let consent = Url::parse(consent["data"]["url"].as_str().unwrap()).unwrap();
    let q: BTreeMap<String, String> = consent.query_pairs().into_owned().collect();
    let mut callback = Url::parse(&q["redirect_uri"]).unwrap();
    callback
        .query_pairs_mut()
        .append_pair("code", "the-code")
        .append_pair("state", &q["state"]);
    let page = Browser::new()
        .unwrap()
        .open(callback.as_str())
        .await
        .unwrap();
    assert!(page.status().is_success(), "{}", page.status());
    let (status, body) = plain.credentials(&b, &oauth, &key).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["access_token"], "at-code");
    // A refreshes 5 s after the grant was obtained (half of its 10 s).
    let mut refreshed_at = None;
    while refreshed_at.is_none() {
        let (_, body) = plain.credentials(&a, &oauth, &key).await.unwrap();
        if body["data"]["access_token"] == "at-1" {
            refreshed_at = Some(Instant::now());
        } else {
            assert_eq!(body["data"]["access_token"], "at-code", "{body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    served_within("refresh", refreshed_at.unwrap(), || async {
        let (status, body) = plain.credentials(&b, &oauth, &key).await?;
        if status != 200 {
            bail!("{status} {body}");
        }
        Ok(body["data"]["access_token"] == "at-1")
    })
    .await;
    let refreshes = tokens
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| grant_type(r) == "refresh_token")
        .count();
    assert_eq!(refreshes, 1, "only A refreshed");

    // A key revoked through A.
    let keys = c.ok(c.http.get(a.url("/v1/access-keys"))).await;
    let key_id = keys["data"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = plain.credentials(&b, &id, &key).await.unwrap();
    assert_eq!(status, 200);
    c.ok(c.http.delete(a.url(&format!("/v1/access-keys/{key_id}"))))
        .await;
    let since = Instant::now();
    served_within("revoked access key", since, || async {
        let (status, _) = plain.credentials(&b, &id, &key).await?;
        Ok(status == 401)
    })
    .await;

    // A delete through A.
    let (status, _) = c
        .call(
            c.http
                .get(b.url(&format!("/v1/connections/{id}/credentials"))),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    c.ok(c.http.delete(a.url(&format!("/v1/connections/{id}"))))
        .await;
    let since = Instant::now();
    served_within("delete", since, || async {
        let (status, _) = c
            .call(
                c.http
                    .get(b.url(&format!("/v1/connections/{id}/credentials"))),
                None,
            )
            .await?;
        Ok(status == 404)
    })
    .await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_serve_each_others_changes_within_a_second() {
    let Some(pg) = PgDatabase::create("replicas").unwrap() else {
        eprintln!("skipped: LATCHKEY_TEST_POSTGRES_URL is not set");
        return;
    };
    two_processes_serve_each_others_changes(Some(pg)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_sqlite_file_serve_each_others_changes_within_a_second() {
    two_processes_serve_each_others_changes(None).await;
}
