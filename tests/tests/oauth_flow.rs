//! The OAuth 2.0 consent flow end to end: the real `latchkey` binary against a real
//! authorization server (npm `oidc-provider`, see `tests/oidc-provider`), with a cookie-jar
//! browser walking the consent and stopping right before Latchkey's callback, so each test
//! decides what reaches the callback (the real redirect, a replay, a forged or tampered one).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use latchkey_tests::server::{admin_client, LatchkeyServer, ServerOptions, ADMIN_TOKEN};
use latchkey_tests::{
    Browser, OidcClient, OidcProvider, OidcProviderOptions, PeerStats, TokenAuthMethod,
    DENY_LOGIN_HINT, TEST_ACCOUNT_EMAIL, TEST_ACCOUNT_ID,
};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use url::Url;

const PROJECT: &str = "proj-oauth";
const CALLBACK_PATH: &str = "/v1/connections/oauth2/callback";

const BASIC: &str = "basic-client";
const BASIC_SECRET: &str = "basic-secret-0f1e2d3c4b5a";
const POST: &str = "post-client";
const POST_SECRET: &str = "post-secret-a5b4c3d2e1f0";
const PUBLIC: &str = "public-client";
/// Confidential, but the provider demands PKCE of it.
const PKCE_CONFIDENTIAL: &str = "pkce-confidential-client";
const PKCE_CONFIDENTIAL_SECRET: &str = "pkce-secret-77aa88bb99cc";

const SCOPES: [&str; 3] = ["openid", "email", "read"];

/// How a generic connection learns the provider's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoints {
    /// authorization_endpoint, token_endpoint, userinfo_endpoint in the config.
    Explicit,
    /// Only `issuer`: the rest from the discovery document.
    Discovery,
}

/// One Latchkey server and one provider that knows Latchkey's callback URL.
struct Env {
    _dir: tempfile::TempDir,
    server: LatchkeyServer,
    peer: OidcProvider,
    http: reqwest::Client,
    browser: Browser,
    callback: String,
}

impl Env {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// The server starts first (on a port of its own choosing, so no port race), then the
    /// provider, with every client registered for the server's callback URL.
    async fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut options =
            ServerOptions::new(dir.path()).env("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true");
        for (k, v) in env {
            options = options.env(k, *v);
        }
        let server = LatchkeyServer::start(options).await.unwrap();
        let callback = server.url(CALLBACK_PATH);
        let redirect = [callback.clone()];
        let peer = OidcProvider::start(OidcProviderOptions {
            clients: vec![
                OidcClient::confidential(
                    BASIC,
                    BASIC_SECRET,
                    TokenAuthMethod::ClientSecretBasic,
                    redirect.clone(),
                ),
                OidcClient::confidential(
                    POST,
                    POST_SECRET,
                    TokenAuthMethod::ClientSecretPost,
                    redirect.clone(),
                ),
                OidcClient::public(PUBLIC, redirect.clone()),
                OidcClient::confidential(
                    PKCE_CONFIDENTIAL,
                    PKCE_CONFIDENTIAL_SECRET,
                    TokenAuthMethod::ClientSecretBasic,
                    redirect.clone(),
                )
                .with_required_pkce(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
        Self {
            _dir: dir,
            server,
            peer,
            http: admin_client(),
            browser: Browser::new().unwrap(),
            callback,
        }
    }

    fn db_dir(&self) -> PathBuf {
        self.server.options.work_dir.join("data")
    }

    /// `config.oauth2_config` for one of the peer's clients.
    fn oauth2_config(&self, client: &str, endpoints: Endpoints) -> Value {
        let mut oc = json!({ "client_id": client, "redirect_uri": self.callback });
        match client {
            BASIC => {
                oc["client_secret"] = json!(BASIC_SECRET);
                oc["token_endpoint_auth_method"] = json!("client_secret_basic");
            }
            POST => {
                oc["client_secret"] = json!(POST_SECRET);
                oc["token_endpoint_auth_method"] = json!("client_secret_post");
            }
            PKCE_CONFIDENTIAL => {
                oc["client_secret"] = json!(PKCE_CONFIDENTIAL_SECRET);
                oc["token_endpoint_auth_method"] = json!("client_secret_basic");
            }
            PUBLIC => oc["token_endpoint_auth_method"] = json!("none"),
            other => panic!("no such client {other}"),
        }
        match endpoints {
            Endpoints::Explicit => {
                oc["authorization_endpoint"] = json!(self.peer.authorization_endpoint());
                oc["token_endpoint"] = json!(self.peer.token_endpoint());
                oc["userinfo_endpoint"] = json!(self.peer.userinfo_endpoint());
            }
            Endpoints::Discovery => oc["issuer"] = json!(self.peer.issuer()),
        }
        oc
    }

    /// Creates a generic connection (201 expected) and returns its view.
    async fn create_generic(&self, name: &str, oauth2_config: Value) -> Value {
        self.create(json!({
            "name": name,
            "project_id": PROJECT,
            "type": "dynamiq.connections.OAuth2",
            "config": { "scopes": SCOPES, "oauth2_config": oauth2_config },
        }))
        .await
    }

    async fn create(&self, body: Value) -> Value {
        let (status, v) = self.post("/v1/connections", &body).await;
        assert_eq!(status, StatusCode::CREATED, "create {body}: {v}");
        assert_eq!(v["data"]["status"], "incomplete", "{v}");
        v["data"].clone()
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.server.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get_json(&self, path: &str) -> Value {
        let resp = self.http.get(self.server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
        resp.json().await.unwrap()
    }

    async fn connection(&self, id: &str) -> Value {
        self.get_json(&format!("/v1/connections/{id}")).await["data"].clone()
    }

    async fn access_token(&self, id: &str) -> String {
        let resp = self
            .http
            .get(
                self.server
                    .url(&format!("/v1/connections/{id}/credentials")),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "credentials of {id}");
        let v: Value = resp.json().await.unwrap();
        v["data"]["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {v}"))
            .to_owned()
    }

    /// POST .../oauth2/authorize, without a body, as the reference doc's curl does.
    async fn authorize_raw(&self, id: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(
                self.server
                    .url(&format!("/v1/connections/{id}/oauth2/authorize")),
            )
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The consent URL for a connection.
    async fn authorize(&self, id: &str) -> Url {
        let (status, v) = self.authorize_raw(id).await;
        assert_eq!(status, StatusCode::OK, "authorize {id}: {v}");
        Url::parse(v["data"]["url"].as_str().unwrap()).unwrap()
    }

    /// Walks the consent at the provider; returns the redirect to Latchkey's callback,
    /// not yet requested.
    async fn consent(&self, consent_url: &Url) -> Url {
        self.browser
            .follow_until(consent_url.as_str(), &self.callback)
            .await
            .unwrap()
    }

    async fn open_callback(&self, url: &Url) -> Page {
        let resp = self.browser.open(url.as_str()).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    /// Authorize, consent and callback: the page the user sees.
    async fn run_flow(&self, id: &str) -> (Page, Url) {
        let consent = self.authorize(id).await;
        let callback = self.consent(&consent).await;
        (self.open_callback(&callback).await, callback)
    }

    async fn stats(&self) -> PeerStats {
        self.peer.stats().await.unwrap()
    }
}

#[derive(Debug)]
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn assert_ok(&self) {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        assert!(self.body.contains("Connection authorized"), "{}", self.body);
    }

    fn assert_refused(&self, status: StatusCode, says: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(self.body.contains("Authorization failed"), "{}", self.body);
        assert!(
            self.body.contains(says),
            "page should say {says:?}: {}",
            self.body
        );
    }
}

fn query(url: &Url, key: &str) -> String {
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("{key} missing in {url}"))
}

/// `url` with `key` replaced by `value` (or removed when `None`).
fn with_param(url: &Url, key: &str, value: Option<&str>) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != key)
        .collect();
    let mut out = url.clone();
    {
        let mut q = out.query_pairs_mut();
        q.clear();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        if let Some(v) = value {
            q.append_pair(key, v);
        }
    }
    out
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// The whole flow for one client and one way of finding the endpoints.
async fn flow_reaches_active(client: &str, endpoints: Endpoints) {
    let env = Env::start().await;
    let created = env
        .create_generic(
            &format!("{client}-{endpoints:?}").to_lowercase(),
            env.oauth2_config(client, endpoints),
        )
        .await;
    let id = id_of(&created);

    let consent = env.authorize(&id).await;
    assert!(
        consent
            .as_str()
            .starts_with(env.peer.authorization_endpoint()),
        "{consent}"
    );
    assert_eq!(query(&consent, "client_id"), client);
    assert_eq!(query(&consent, "redirect_uri"), env.callback);
    assert_eq!(query(&consent, "scope"), SCOPES.join(" "));
    assert_eq!(query(&consent, "code_challenge_method"), "S256");

    let callback = env.consent(&consent).await;
    assert_eq!(query(&callback, "iss"), env.peer.issuer());
    let page = env.open_callback(&callback).await;
    page.assert_ok();

    let c = env.connection(&id).await;
    assert_eq!(c["status"], "active", "{c}");
    assert_eq!(c["last_error"], Value::Null, "{c}");
    assert_eq!(c["oauth2"]["authorized_user"]["email"], TEST_ACCOUNT_EMAIL);
    assert_eq!(c["oauth2"]["authorized_user"]["sub"], TEST_ACCOUNT_ID);
    assert_eq!(c["oauth2"]["has_refresh_token"], true, "{c}");
    assert_eq!(c["oauth2"]["scopes"], json!(SCOPES), "{c}");
    assert!(c["oauth2"]["expires_at"].is_string(), "{c}");

    let at = env.access_token(&id).await;
    let intro = env.peer.introspect(&at).await.unwrap();
    assert_eq!(intro["active"], true, "{intro}");
    assert_eq!(intro["client_id"], client, "{intro}");
    assert_eq!(intro["sub"], TEST_ACCOUNT_ID, "{intro}");

    let stats = env.stats().await;
    assert_eq!(stats.authorization_code_grants, 1, "{stats:?}");
    assert!(stats.token_errors.is_empty(), "{stats:?}");
}

#[tokio::test]
async fn basic_client_with_explicit_endpoints_becomes_active() {
    flow_reaches_active(BASIC, Endpoints::Explicit).await;
}

#[tokio::test]
async fn basic_client_with_discovery_becomes_active() {
    flow_reaches_active(BASIC, Endpoints::Discovery).await;
}

#[tokio::test]
async fn post_client_with_explicit_endpoints_becomes_active() {
    flow_reaches_active(POST, Endpoints::Explicit).await;
}

#[tokio::test]
async fn post_client_with_discovery_becomes_active() {
    flow_reaches_active(POST, Endpoints::Discovery).await;
}

/// The provider requires PKCE of a public client and checks the verifier at the token
/// endpoint: reaching `active` proves Latchkey sent the verifier matching its challenge.
#[tokio::test]
async fn public_client_with_explicit_endpoints_becomes_active() {
    flow_reaches_active(PUBLIC, Endpoints::Explicit).await;
}

#[tokio::test]
async fn public_client_with_discovery_becomes_active() {
    flow_reaches_active(PUBLIC, Endpoints::Discovery).await;
}

/// With `pkce: false` the consent URL carries no challenge, and a provider that requires
/// PKCE refuses the request: the connection stays incomplete with the provider's reason.
#[tokio::test]
async fn disabling_pkce_fails_where_the_provider_requires_it() {
    let env = Env::start().await;
    for client in [PUBLIC, PKCE_CONFIDENTIAL] {
        let mut oc = env.oauth2_config(client, Endpoints::Explicit);
        oc["pkce"] = json!(false);
        let id = id_of(&env.create_generic(&format!("{client}-nopkce"), oc).await);
        let consent = env.authorize(&id).await;
        assert!(
            !consent
                .query_pairs()
                .any(|(k, _)| k == "code_challenge" || k == "code_verifier"),
            "{consent}"
        );
        let callback = env.consent(&consent).await;
        assert_eq!(query(&callback, "error"), "invalid_request", "{callback}");
        let page = env.open_callback(&callback).await;
        page.assert_refused(StatusCode::BAD_REQUEST, "invalid_request");
        assert!(page.body.contains("PKCE"), "{}", page.body);

        let c = env.connection(&id).await;
        assert_eq!(c["status"], "incomplete", "{c}");
        let err = c["last_error"].as_str().unwrap_or_default();
        assert!(err.contains("invalid_request"), "{c}");
        assert_eq!(c["oauth2"]["obtained_at"], Value::Null, "{c}");
    }
    // And the same confidential client with PKCE on goes through.
    let id = id_of(
        &env.create_generic(
            "pkce-on",
            env.oauth2_config(PKCE_CONFIDENTIAL, Endpoints::Discovery),
        )
        .await,
    );
    env.run_flow(&id).await.0.assert_ok();
    let stats = env.stats().await;
    assert_eq!(stats.authorization_code_grants, 1, "{stats:?}");
    assert!(stats.token_errors.is_empty(), "{stats:?}");
}

#[tokio::test]
async fn user_who_denies_leaves_the_connection_incomplete_with_the_reason() {
    let env = Env::start().await;
    let mut oc = env.oauth2_config(BASIC, Endpoints::Discovery);
    oc["extra_authorization_params"] = json!({ "login_hint": DENY_LOGIN_HINT });
    let id = id_of(&env.create_generic("denied", oc).await);

    let consent = env.authorize(&id).await;
    assert_eq!(query(&consent, "login_hint"), DENY_LOGIN_HINT);
    let callback = env.consent(&consent).await;
    assert_eq!(query(&callback, "error"), "access_denied");
    let page = env.open_callback(&callback).await;
    page.assert_refused(StatusCode::BAD_REQUEST, "access_denied");
    assert!(page.body.contains("refused"), "{}", page.body);

    let c = env.connection(&id).await;
    assert_eq!(c["status"], "incomplete", "{c}");
    let err = c["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("access_denied"), "{c}");
    assert_eq!(c["oauth2"]["authorized_user"], Value::Null, "{c}");
    let creds = env
        .http
        .get(env.server.url(&format!("/v1/connections/{id}/credentials")))
        .send()
        .await
        .unwrap();
    assert!(creds.status().is_client_error(), "{}", creds.status());

    let stats = env.stats().await;
    assert_eq!(stats.authorization_code_grants, 0, "{stats:?}");
    assert!(stats.token_errors.is_empty(), "{stats:?}");
}

/// A state Latchkey never issued (or none at all) is refused before the provider is called,
/// and does not consume the real authorization, which still completes afterwards.
#[tokio::test]
async fn forged_or_missing_state_is_refused_without_calling_the_provider() {
    let env = Env::start().await;
    let id = id_of(
        &env.create_generic("forged", env.oauth2_config(BASIC, Endpoints::Explicit))
            .await,
    );
    let consent = env.authorize(&id).await;
    let callback = env.consent(&consent).await;

    let forged = with_param(
        &callback,
        "state",
        Some("Zm9yZ2VkLXN0YXRlLXRoYXQtbGF0Y2hrZXktbmV2ZXItaXNzdWVk"),
    );
    env.open_callback(&forged)
        .await
        .assert_refused(StatusCode::BAD_REQUEST, "unknown or was already used");
    let missing = with_param(&callback, "state", None);
    env.open_callback(&missing)
        .await
        .assert_refused(StatusCode::BAD_REQUEST, "state");
    let empty = with_param(&callback, "state", Some(""));
    env.open_callback(&empty)
        .await
        .assert_refused(StatusCode::BAD_REQUEST, "state");
    let stats = env.stats().await;
    assert_eq!(stats, PeerStats::default(), "no token request: {stats:?}");
    assert_eq!(env.connection(&id).await["status"], "incomplete");

    env.open_callback(&callback).await.assert_ok();
    assert_eq!(env.connection(&id).await["status"], "active");
    assert_eq!(env.stats().await.authorization_code_grants, 1);
}

#[tokio::test]
async fn replayed_callback_is_refused_without_a_second_token_request() {
    let env = Env::start().await;
    let id = id_of(
        &env.create_generic("replay", env.oauth2_config(POST, Endpoints::Discovery))
            .await,
    );
    let (page, callback) = env.run_flow(&id).await;
    page.assert_ok();
    let token = env.access_token(&id).await;
    let before = env.stats().await;
    assert_eq!(before.authorization_code_grants, 1, "{before:?}");

    let again = env.open_callback(&callback).await;
    again.assert_refused(StatusCode::BAD_REQUEST, "unknown or was already used");

    let after = env.stats().await;
    assert_eq!(after, before, "the replay reached the token endpoint");
    let c = env.connection(&id).await;
    assert_eq!(c["status"], "active", "{c}");
    assert_eq!(c["last_error"], Value::Null, "{c}");
    assert_eq!(env.access_token(&id).await, token);
}

/// STATE_TTL is ten minutes and not configurable: the test ages the stored session
/// instead, by moving its `expires_at` (unix ms) into the past in the SQLite file.
#[tokio::test]
async fn expired_state_is_refused_without_calling_the_provider() {
    let env = Env::start().await;
    let id = id_of(
        &env.create_generic("expired", env.oauth2_config(BASIC, Endpoints::Discovery))
            .await,
    );
    let consent = env.authorize(&id).await;
    let callback = env.consent(&consent).await;

    let changed = sqlite(
        &env.db_dir().join("latchkey.db"),
        "UPDATE auth_sessions SET expires_at = created_at - 1; SELECT changes();",
    );
    assert_eq!(changed.trim(), "1", "exactly the one pending session");

    env.open_callback(&callback)
        .await
        .assert_refused(StatusCode::BAD_REQUEST, "expired");
    let stats = env.stats().await;
    assert_eq!(stats, PeerStats::default(), "no token request: {stats:?}");
    let c = env.connection(&id).await;
    assert_eq!(c["status"], "incomplete", "{c}");
    // The expired session was consumed: trying again is an unknown state.
    env.open_callback(&callback)
        .await
        .assert_refused(StatusCode::BAD_REQUEST, "unknown or was already used");
    assert_eq!(
        sqlite(
            &env.db_dir().join("latchkey.db"),
            "SELECT count(*) FROM auth_sessions;"
        )
        .trim(),
        "0"
    );
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 10000")
        .arg(db)
        .arg(sql)
        .output()
        .expect("running sqlite3 (is it installed?)");
    assert!(
        out.status.success(),
        "sqlite3 {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// RFC 9207: an `iss` naming another issuer, or none where discovery promised one, is a
/// mix-up: refused before the code is sent anywhere.
#[tokio::test]
async fn wrong_or_missing_iss_is_refused_before_any_token_request() {
    let env = Env::start().await;
    let discovery = id_of(
        &env.create_generic("iss-disc", env.oauth2_config(BASIC, Endpoints::Discovery))
            .await,
    );
    // Explicit endpoints plus the issuer identifier: checked just the same.
    let mut oc = env.oauth2_config(POST, Endpoints::Explicit);
    oc["issuer"] = json!(env.peer.issuer());
    let explicit = id_of(&env.create_generic("iss-explicit", oc).await);

    let evil = "http://127.0.0.1:1/evil-issuer";
    for id in [&discovery, &explicit] {
        let callback = env.consent(&env.authorize(id).await).await;
        let tampered = with_param(&callback, "iss", Some(evil));
        env.open_callback(&tampered)
            .await
            .assert_refused(StatusCode::BAD_REQUEST, "unexpected issuer");
        // A trailing slash is another issuer identifier (RFC 9207 compares exactly).
        let callback = env.consent(&env.authorize(id).await).await;
        let slashed = with_param(&callback, "iss", Some(&format!("{}/", env.peer.issuer())));
        env.open_callback(&slashed)
            .await
            .assert_refused(StatusCode::BAD_REQUEST, "unexpected issuer");
    }
    // The provider advertises authorization_response_iss_parameter_supported: no iss at all
    // is refused too.
    let callback = env.consent(&env.authorize(&discovery).await).await;
    let stripped = with_param(&callback, "iss", None);
    env.open_callback(&stripped)
        .await
        .assert_refused(StatusCode::BAD_REQUEST, "iss");

    let stats = env.stats().await;
    assert_eq!(stats.authorization_code_grants, 0, "{stats:?}");
    assert_eq!(stats, PeerStats::default(), "{stats:?}");
    for id in [&discovery, &explicit] {
        assert_eq!(env.connection(id).await["status"], "incomplete");
    }

    // The untouched redirect still works.
    env.run_flow(&discovery).await.0.assert_ok();
    assert_eq!(env.stats().await.authorization_code_grants, 1);
}

/// A code the provider refuses (here: tampered) is a provider error: the status stays what
/// it was and last_error says why; the stored grant is untouched.
#[tokio::test]
async fn provider_error_at_the_token_endpoint_keeps_the_status() {
    let env = Env::start().await;
    let id = id_of(
        &env.create_generic("exchange", env.oauth2_config(BASIC, Endpoints::Explicit))
            .await,
    );
    // From incomplete.
    let callback = env.consent(&env.authorize(&id).await).await;
    let bad = with_param(&callback, "code", Some("not-a-code-the-provider-issued"));
    let page = env.open_callback(&bad).await;
    page.assert_refused(StatusCode::BAD_GATEWAY, "invalid_grant");
    let c = env.connection(&id).await;
    assert_eq!(c["status"], "incomplete", "{c}");
    assert!(
        c["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid_grant"),
        "{c}"
    );

    // From active.
    env.run_flow(&id).await.0.assert_ok();
    let token = env.access_token(&id).await;
    let callback = env.consent(&env.authorize(&id).await).await;
    let bad = with_param(&callback, "code", Some("another-made-up-code"));
    env.open_callback(&bad)
        .await
        .assert_refused(StatusCode::BAD_GATEWAY, "invalid_grant");
    let c = env.connection(&id).await;
    assert_eq!(c["status"], "active", "{c}");
    assert!(
        c["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid_grant"),
        "{c}"
    );
    assert_eq!(env.access_token(&id).await, token);
    assert_eq!(env.peer.introspect(&token).await.unwrap()["active"], true);

    // A wrong client secret: invalid_client, same treatment.
    let mut oc = env.oauth2_config(BASIC, Endpoints::Explicit);
    oc["client_secret"] = json!("not-the-secret");
    let wrong = id_of(&env.create_generic("wrong-secret", oc).await);
    let (page, _) = env.run_flow(&wrong).await;
    page.assert_refused(StatusCode::BAD_GATEWAY, "invalid_client");
    let c = env.connection(&wrong).await;
    assert_eq!(c["status"], "incomplete", "{c}");
    assert!(
        c["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid_client"),
        "{c}"
    );
}

#[tokio::test]
async fn reauthorizing_an_active_connection_swaps_in_a_new_grant() {
    let env = Env::start().await;
    let id = id_of(
        &env.create_generic("reauth", env.oauth2_config(BASIC, Endpoints::Discovery))
            .await,
    );
    env.run_flow(&id).await.0.assert_ok();
    let first = env.access_token(&id).await;
    let before = env.connection(&id).await;

    // Config is locked once created; a rename is allowed.
    let resp = env
        .http
        .patch(env.server.url(&format!("/v1/connections/{id}")))
        .json(&json!({ "config": { "scopes": ["openid"] } }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "config_locked", "{v}");
    let resp = env
        .http
        .patch(env.server.url(&format!("/v1/connections/{id}")))
        .json(&json!({ "name": "reauth-renamed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let (page, _) = env.run_flow(&id).await;
    page.assert_ok();
    assert!(page.body.contains("reauth-renamed"), "{}", page.body);
    let second = env.access_token(&id).await;
    assert_ne!(first, second, "re-authorization kept the old access token");
    let after = env.connection(&id).await;
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["name"], "reauth-renamed");
    assert_eq!(after["status"], "active");
    assert_eq!(after["config"], before["config"]);
    assert_eq!(
        after["oauth2"]["authorized_user"]["email"],
        TEST_ACCOUNT_EMAIL
    );
    assert!(
        after["version"].as_i64().unwrap() > before["version"].as_i64().unwrap(),
        "{after}"
    );
    let intro = env.peer.introspect(&second).await.unwrap();
    assert_eq!(intro["active"], true, "{intro}");
    assert_eq!(env.stats().await.authorization_code_grants, 2);

    let events = env.get_json(&format!("/v1/connections/{id}/events")).await;
    let authorized = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "authorized")
        .count();
    assert_eq!(authorized, 2, "{events}");
    let list = env
        .get_json(&format!("/v1/connections?project_id={PROJECT}"))
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn reusable_oauth2_client_drives_the_flow_and_cannot_be_deleted_while_used() {
    let env = Env::start().await;
    let (status, v) = env
        .post(
            "/v1/oauth2-clients",
            &json!({
                "name": "shared-post-app",
                "project_id": PROJECT,
                "type": "dynamiq.connections.OAuth2",
                "client_id": POST,
                "client_secret": POST_SECRET,
                "token_endpoint_auth_method": "client_secret_post",
                "authorization_endpoint": env.peer.authorization_endpoint(),
                "token_endpoint": env.peer.token_endpoint(),
                "userinfo_endpoint": env.peer.userinfo_endpoint(),
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let client = v["data"].clone();
    assert_eq!(client["has_client_secret"], true, "{client}");
    assert!(!v.to_string().contains(POST_SECRET), "{v}");
    let client_id = id_of(&client);

    let mut ids = Vec::new();
    for name in ["via-client-1", "via-client-2"] {
        let c = env
            .create(json!({
                "name": name,
                "project_id": PROJECT,
                "type": "dynamiq.connections.OAuth2",
                "oauth2_client_id": client_id,
                "config": { "scopes": SCOPES },
            }))
            .await;
        assert_eq!(c["oauth2_client_id"], client_id.as_str(), "{c}");
        ids.push(id_of(&c));
    }
    for id in &ids {
        let consent = env.authorize(id).await;
        assert_eq!(query(&consent, "client_id"), POST);
        let page = env.open_callback(&env.consent(&consent).await).await;
        page.assert_ok();
        let c = env.connection(id).await;
        assert_eq!(c["status"], "active", "{c}");
        assert_eq!(c["oauth2"]["authorized_user"]["email"], TEST_ACCOUNT_EMAIL);
        let intro = env
            .peer
            .introspect(&env.access_token(id).await)
            .await
            .unwrap();
        assert_eq!(intro["active"], true, "{intro}");
        assert_eq!(intro["client_id"], POST, "{intro}");
    }
    let stats = env.stats().await;
    assert_eq!(stats.authorization_code_grants, 2, "{stats:?}");
    assert!(stats.token_errors.is_empty(), "{stats:?}");

    let delete = |id: String| {
        let http = env.http.clone();
        let url = env.server.url(&format!("/v1/oauth2-clients/{id}"));
        async move { http.delete(url).send().await.unwrap() }
    };
    let resp = delete(client_id.clone()).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "in_use", "{v}");
    for id in &ids {
        let resp = env
            .http
            .delete(env.server.url(&format!("/v1/connections/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let resp = delete(client_id.clone()).await;
        let expected = if id == ids.last().unwrap() {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::CONFLICT
        };
        assert_eq!(resp.status(), expected);
    }
    assert_eq!(delete(client_id).await.status(), StatusCode::NOT_FOUND);
}

/// No provider is involved: the catalog providers' endpoints are the real ones, so only the
/// consent URL is checked for the deployment-wide default client.
#[tokio::test]
async fn authorize_without_any_client_says_how_to_configure_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = LatchkeyServer::start(
        ServerOptions::new(dir.path())
            .env("LATCHKEY_OAUTH_DROPBOX_CLIENT_ID", "dropbox-default-app")
            .env(
                "LATCHKEY_OAUTH_DROPBOX_CLIENT_SECRET",
                "dropbox-default-secret",
            ),
    )
    .await
    .unwrap();
    let http = admin_client();
    let create = |kind: &'static str, name: &'static str| {
        let http = http.clone();
        let url = server.url("/v1/connections");
        async move {
            let resp = http
                .post(url)
                .json(&json!({ "name": name, "project_id": PROJECT, "type": kind }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::CREATED);
            let v: Value = resp.json().await.unwrap();
            id_of(&v["data"])
        }
    };
    let authorize = |id: String| {
        let http = http.clone();
        let url = server.url(&format!("/v1/connections/{id}/oauth2/authorize"));
        async move {
            let resp = http.post(url).send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };

    let boxed = create("dynamiq.connections.BoxOAuth2", "box-no-client").await;
    let (status, v) = authorize(boxed).await;
    assert!(status.is_client_error(), "{status} {v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("LATCHKEY_OAUTH_BOX_CLIENT_ID"), "{v}");
    assert!(msg.contains("LATCHKEY_OAUTH_BOX_CLIENT_SECRET"), "{v}");
    assert!(msg.contains("oauth2_client_id"), "{v}");

    let dropbox = create("dynamiq.connections.DropboxOAuth2", "dropbox-default").await;
    let (status, v) = authorize(dropbox).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let url = Url::parse(v["data"]["url"].as_str().unwrap()).unwrap();
    assert_eq!(url.host_str(), Some("www.dropbox.com"));
    assert_eq!(query(&url, "client_id"), "dropbox-default-app");
    assert_eq!(query(&url, "token_access_type"), "offline");
    assert_eq!(query(&url, "redirect_uri"), server.url(CALLBACK_PATH));
    assert!(!v.to_string().contains("dropbox-default-secret"));
}

/// The reference doc's curl: a raw JSON body with Content-Type, an authorize POST without
/// any body, `{"data": {"url": ...}}`, then polling GET until active.
#[tokio::test]
async fn reference_doc_api_shapes_work() {
    let env = Env::start().await;
    let body = json!({
        "name": "generic-shared",
        "project_id": PROJECT,
        "type": "dynamiq.connections.OAuth2",
        "config": {
            "scopes": ["openid", "email"],
            "oauth2_config": {
                "client_id": BASIC,
                "client_secret": BASIC_SECRET,
                "authorization_endpoint": env.peer.authorization_endpoint(),
                "token_endpoint": env.peer.token_endpoint(),
                "redirect_uri": env.callback,
                "userinfo_endpoint": env.peer.userinfo_endpoint(),
            }
        }
    })
    .to_string();
    let raw = reqwest::Client::new();
    let resp = raw
        .post(env.server.url("/v1/connections"))
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let connection: Value = resp.json::<Value>().await.unwrap()["data"].clone();
    assert_eq!(connection["status"], "incomplete");
    let id = id_of(&connection);

    // curl -X POST .../oauth2/authorize -H "Authorization: Bearer ..." (no body at all)
    let resp = raw
        .post(
            env.server
                .url(&format!("/v1/connections/{id}/oauth2/authorize")),
        )
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let authorize: Value = resp.json::<Value>().await.unwrap()["data"].clone();
    assert_eq!(
        authorize.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["url"]
    );
    let url = Url::parse(authorize["url"].as_str().unwrap()).unwrap();

    // "Open this URL and grant access": the browser follows the provider to the callback.
    let landing = env.consent(&url).await;
    let page = env.open_callback(&landing).await;
    page.assert_ok();

    // "Poll GET /v1/connections/{connection_id} until status is active."
    let deadline = Instant::now() + Duration::from_secs(10);
    let c = loop {
        let c = env.connection(&id).await;
        if c["status"] == "active" {
            break c;
        }
        assert!(Instant::now() < deadline, "never became active: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(c["oauth2"]["authorized_user"]["email"], TEST_ACCOUNT_EMAIL);
    assert_eq!(c["oauth2"]["scopes"], json!(["openid", "email"]));
}

/// Tokens, the code and the state never show up in management answers, in the server's
/// log (debug level for the app crate), or in plaintext in the database files.
#[tokio::test]
async fn no_token_code_or_state_leaks() {
    let env = Env::start().await;
    let mut ids = Vec::new();
    let mut secrets: Vec<(String, String)> = vec![
        ("client secret".into(), BASIC_SECRET.into()),
        ("client secret".into(), POST_SECRET.into()),
    ];
    let mut management = Vec::new();
    for (name, client, endpoints) in [
        ("leak-basic", BASIC, Endpoints::Explicit),
        ("leak-post", POST, Endpoints::Discovery),
        ("leak-public", PUBLIC, Endpoints::Discovery),
    ] {
        let created = env
            .create_generic(name, env.oauth2_config(client, endpoints))
            .await;
        management.push(created.to_string());
        let id = id_of(&created);
        let consent = env.authorize(&id).await;
        let callback = env.consent(&consent).await;
        secrets.push(("state".into(), query(&consent, "state")));
        secrets.push(("code".into(), query(&callback, "code")));
        let page = env.open_callback(&callback).await;
        page.assert_ok();
        management.push(page.body.clone());
        // A replay and a tampered iss put the same code and state through the refusal paths.
        env.open_callback(&callback)
            .await
            .assert_refused(StatusCode::BAD_REQUEST, "already used");
        secrets.push(("access token".into(), env.access_token(&id).await));
        ids.push(id);
    }
    // One denial and one failed exchange, for the error paths' logging.
    let mut oc = env.oauth2_config(POST, Endpoints::Explicit);
    oc["extra_authorization_params"] = json!({ "login_hint": DENY_LOGIN_HINT });
    let denied = id_of(&env.create_generic("leak-denied", oc).await);
    let consent = env.authorize(&denied).await;
    secrets.push(("state".into(), query(&consent, "state")));
    env.open_callback(&env.consent(&consent).await)
        .await
        .assert_refused(StatusCode::BAD_REQUEST, "access_denied");
    let consent = env.authorize(&ids[0]).await;
    let callback = env.consent(&consent).await;
    secrets.push(("state".into(), query(&consent, "state")));
    secrets.push(("code".into(), query(&callback, "code")));
    let tampered = with_param(&callback, "iss", Some("http://127.0.0.1:1/evil"));
    env.open_callback(&tampered).await;
    ids.push(denied);

    for id in &ids {
        management.push(env.connection(id).await.to_string());
        management.push(
            env.get_json(&format!("/v1/connections/{id}/events"))
                .await
                .to_string(),
        );
    }
    management.push(env.get_json("/v1/connections").await.to_string());
    management.push(
        env.get_json(&format!("/v1/connections?project_id={PROJECT}&type=oauth2"))
            .await
            .to_string(),
    );

    let logs = env.server.logs();
    assert!(logs.contains("connection authorized"), "log level: {logs}");
    let db = db_files(&env.db_dir());
    assert!(!db.is_empty());
    for (what, value) in &secrets {
        assert!(value.len() >= 16, "{what} too short to search for: {value}");
        for m in &management {
            assert!(!m.contains(value.as_str()), "{what} in a response: {m}");
        }
        assert!(!logs.contains(value.as_str()), "{what} in the server log");
        for (path, bytes) in &db {
            assert!(
                !contains(bytes, value.as_bytes()),
                "{what} in plaintext in {}",
                path.display()
            );
        }
    }
}

/// Every file of the SQLite database (main file, WAL, shared memory).
fn db_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("latchkey.db"))
        })
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn assert_page_headers(page: &Page) {
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    assert!(page.header("cache-control").contains("no-store"));
    assert!(page.header("content-type").starts_with("text/html"));
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert!(page
        .header("content-security-policy")
        .contains("frame-ancestors 'none'"));
}

#[tokio::test]
async fn callback_page_posts_only_to_the_configured_ui_origin() {
    let origin = "https://ui.example.test";
    let env = Env::start_with(&[("LATCHKEY_UI_ORIGIN", "https://ui.example.test/app/")]).await;
    let id = id_of(
        &env.create_generic("ui-origin", env.oauth2_config(BASIC, Endpoints::Explicit))
            .await,
    );
    let (ok, callback) = env.run_flow(&id).await;
    ok.assert_ok();
    let refused = env.open_callback(&callback).await;
    refused.assert_refused(StatusCode::BAD_REQUEST, "already used");
    for page in [&ok, &refused] {
        assert_page_headers(page);
        assert!(
            page.body
                .contains(&format!("window.opener.postMessage(m,\"{origin}\")")),
            "{}",
            page.body
        );
        assert!(page.body.contains("latchkey:oauth2"), "{}", page.body);
        assert!(!page.body.contains("\"*\""), "{}", page.body);
        assert!(!page.body.contains("'*'"), "{}", page.body);
        assert!(!page.body.contains("/app/"), "{}", page.body);
    }
    assert!(ok.body.contains("\"status\":\"success\""), "{}", ok.body);
    assert!(ok.body.contains(&id), "{}", ok.body);
    assert!(
        refused.body.contains("\"status\":\"error\""),
        "{}",
        refused.body
    );
}

/// Without `LATCHKEY_UI_ORIGIN` the opener is the management page the binary serves
/// itself, at the origin of `LATCHKEY_PUBLIC_URL` (issue 8): the page posts there, and
/// nowhere else.
#[tokio::test]
async fn callback_page_without_ui_origin_posts_to_the_public_url_origin() {
    let env = Env::start().await;
    let origin = env.server.base_url.clone();
    let id = id_of(
        &env.create_generic("no-ui-origin", env.oauth2_config(POST, Endpoints::Explicit))
            .await,
    );
    let (ok, callback) = env.run_flow(&id).await;
    ok.assert_ok();
    let refused = env.open_callback(&callback).await;
    for page in [&ok, &refused] {
        assert_page_headers(page);
        assert!(
            page.body
                .contains(&format!("window.opener.postMessage(m,\"{origin}\")")),
            "{}",
            page.body
        );
        assert_eq!(
            page.body.matches("postMessage(").count(),
            1,
            "{}",
            page.body
        );
        assert!(!page.body.contains("\"*\""), "{}", page.body);
        assert!(!page.body.contains("'*'"), "{}", page.body);
    }
}
