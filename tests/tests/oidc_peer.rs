//! Proves the oidc-provider peer behaves as Latchkey's black-box tests assume, driving it
//! directly over HTTP (no Latchkey involved).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use latchkey_tests::{
    Browser, OidcClient, OidcProvider, OidcProviderOptions, TokenAuthMethod, DENY_LOGIN_HINT,
    TEST_ACCOUNT_EMAIL, TEST_ACCOUNT_ID,
};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

// Never requested: the browser stops before it, as it would before Latchkey's callback.
const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";

const BASIC: &str = "basic-client";
const POST: &str = "post-client";
const PUBLIC: &str = "public-client";

fn clients() -> Vec<OidcClient> {
    vec![
        OidcClient::confidential(
            BASIC,
            "basic-secret",
            TokenAuthMethod::ClientSecretBasic,
            [REDIRECT_URI],
        ),
        OidcClient::confidential(
            POST,
            "post-secret",
            TokenAuthMethod::ClientSecretPost,
            [REDIRECT_URI],
        ),
        OidcClient::public(PUBLIC, [REDIRECT_URI]),
    ]
}

async fn start_peer() -> OidcProvider {
    start_peer_with(OidcProviderOptions::default()).await
}

async fn start_peer_with(mut options: OidcProviderOptions) -> OidcProvider {
    options.clients = clients();
    OidcProvider::start(options).await.expect("peer starts")
}

fn client(id: &str) -> OidcClient {
    clients().into_iter().find(|c| c.client_id == id).unwrap()
}

struct Pkce {
    verifier: String,
    challenge: String,
}

impl Pkce {
    fn new(seed: &str) -> Self {
        // RFC 7636 wants 43-128 characters; uniqueness is all a test needs.
        let verifier = format!("{seed:-<43}-0123456789abcdefghijklmnopqrstuvwxyz");
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Self {
            verifier,
            challenge,
        }
    }
}

fn authorize_url(
    peer: &OidcProvider,
    client_id: &str,
    scope: &str,
    state: &str,
    pkce: Option<&Pkce>,
    extra: &[(&str, &str)],
) -> String {
    let mut url = Url::parse(peer.authorization_endpoint()).unwrap();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", REDIRECT_URI)
            .append_pair("scope", scope)
            .append_pair("state", state);
        if let Some(p) = pkce {
            q.append_pair("code_challenge", &p.challenge)
                .append_pair("code_challenge_method", "S256");
        }
        for (k, v) in extra {
            q.append_pair(k, v);
        }
    }
    url.into()
}

fn query(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// Adds the client's authentication the way its registered method demands.
fn authenticate(
    req: reqwest::RequestBuilder,
    client: &OidcClient,
    form: &mut Vec<(&'static str, String)>,
) -> reqwest::RequestBuilder {
    match client.auth_method {
        TokenAuthMethod::ClientSecretBasic => {
            req.basic_auth(&client.client_id, client.client_secret.as_deref())
        }
        TokenAuthMethod::ClientSecretPost => {
            form.push(("client_id", client.client_id.clone()));
            form.push((
                "client_secret",
                client.client_secret.clone().unwrap_or_default(),
            ));
            req
        }
        TokenAuthMethod::None => {
            form.push(("client_id", client.client_id.clone()));
            req
        }
    }
}

async fn token_request(
    peer: &OidcProvider,
    client: &OidcClient,
    mut form: Vec<(&'static str, String)>,
) -> Result<(StatusCode, Value)> {
    let http = reqwest::Client::new();
    let req = authenticate(http.post(peer.token_endpoint()), client, &mut form);
    let resp = req.form(&form).send().await?;
    let status = resp.status();
    let body = resp.json().await.context("token endpoint body")?;
    Ok((status, body))
}

async fn exchange_code(
    peer: &OidcProvider,
    client: &OidcClient,
    code: &str,
    verifier: Option<&str>,
) -> Result<(StatusCode, Value)> {
    let mut form = vec![
        ("grant_type", "authorization_code".to_owned()),
        ("code", code.to_owned()),
        ("redirect_uri", REDIRECT_URI.to_owned()),
    ];
    if let Some(v) = verifier {
        form.push(("code_verifier", v.to_owned()));
    }
    token_request(peer, client, form).await
}

async fn refresh(
    peer: &OidcProvider,
    client: &OidcClient,
    refresh_token: &str,
) -> Result<(StatusCode, Value)> {
    let form = vec![
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", refresh_token.to_owned()),
    ];
    token_request(peer, client, form).await
}

/// Consent through the browser, then returns the callback URL's query.
async fn authorize(
    peer: &OidcProvider,
    browser: &Browser,
    client_id: &str,
    scope: &str,
    state: &str,
    pkce: Option<&Pkce>,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let start = authorize_url(peer, client_id, scope, state, pkce, extra);
    let callback = browser.follow_until(&start, REDIRECT_URI).await.unwrap();
    query(&callback)
}

/// Authorization code flow with PKCE up to a successful token response.
async fn obtain_tokens(peer: &OidcProvider, client_id: &str, scope: &str) -> Value {
    let browser = Browser::new().unwrap();
    let pkce = Pkce::new(client_id);
    let q = authorize(peer, &browser, client_id, scope, "st", Some(&pkce), &[]).await;
    let (status, body) = exchange_code(peer, &client(client_id), &q["code"], Some(&pkce.verifier))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[tokio::test]
async fn discovery_document_advertises_what_latchkey_uses() {
    let peer = start_peer().await;
    let d = peer.discovery();
    assert_eq!(str_of(d, "issuer"), peer.issuer());
    assert!(peer.issuer().starts_with("http://127.0.0.1:"));
    assert_eq!(d["authorization_response_iss_parameter_supported"], true);
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let methods = d["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap();
    for m in ["client_secret_basic", "client_secret_post", "none"] {
        assert!(methods.iter().any(|v| v == m), "{m} not in {methods:?}");
    }
    let grants = d["grant_types_supported"].as_array().unwrap();
    assert!(grants.iter().any(|v| v == "refresh_token"));
    let scopes = d["scopes_supported"].as_array().unwrap();
    for s in ["openid", "offline_access", "email", "read", "write"] {
        assert!(scopes.iter().any(|v| v == s), "{s} not in {scopes:?}");
    }
    for e in [
        "authorization_endpoint",
        "token_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
        "userinfo_endpoint",
    ] {
        assert!(str_of(d, e).starts_with(peer.issuer()), "{e} = {}", d[e]);
    }
}

/// The whole flow for one client: callback parameters, token response, introspection, userinfo.
async fn full_code_flow(client_id: &str) {
    let peer = start_peer().await;
    let browser = Browser::new().unwrap();
    let pkce = Pkce::new(client_id);
    let q = authorize(
        &peer,
        &browser,
        client_id,
        "openid email read",
        "state-123",
        Some(&pkce),
        &[],
    )
    .await;
    assert_eq!(q["state"], "state-123");
    assert_eq!(q["iss"], peer.issuer(), "RFC 9207 iss");
    assert!(!q.contains_key("error"), "{q:?}");

    let (status, tokens) =
        exchange_code(&peer, &client(client_id), &q["code"], Some(&pkce.verifier))
            .await
            .unwrap();
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(!str_of(&tokens, "refresh_token").is_empty(), "{tokens}");
    assert!(tokens["id_token"].is_string(), "{tokens}");
    let expires_in = tokens["expires_in"].as_u64().unwrap();
    assert!((3590..=3600).contains(&expires_in), "{expires_in}");
    assert_eq!(tokens["scope"], "openid email read");
    let at = str_of(&tokens, "access_token");

    let intro = peer.introspect(at).await.unwrap();
    assert_eq!(intro["active"], true, "{intro}");
    assert_eq!(intro["client_id"], client_id);
    assert_eq!(intro["sub"], TEST_ACCOUNT_ID);
    assert_eq!(intro["iss"], peer.issuer());

    let me: Value = reqwest::Client::new()
        .get(peer.userinfo_endpoint())
        .bearer_auth(at)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["sub"], TEST_ACCOUNT_ID);
    assert_eq!(me["email"], TEST_ACCOUNT_EMAIL);

    // A code is single-use.
    let (status, body) = exchange_code(&peer, &client(client_id), &q["code"], Some(&pkce.verifier))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    let stats = peer.stats().await.unwrap();
    assert_eq!(stats.authorization_code_grants, 1, "{stats:?}");
}

#[tokio::test]
async fn code_flow_with_client_secret_basic() {
    full_code_flow(BASIC).await;
}

#[tokio::test]
async fn code_flow_with_client_secret_post() {
    full_code_flow(POST).await;
}

#[tokio::test]
async fn code_flow_with_public_client() {
    full_code_flow(PUBLIC).await;
}

#[tokio::test]
async fn extra_scopes_are_granted_and_unknown_ones_dropped() {
    let peer = start_peer_with(OidcProviderOptions {
        extra_scopes: vec!["files.read".into()],
        ..Default::default()
    })
    .await;
    let tokens = obtain_tokens(&peer, BASIC, "files.read bogus").await;
    assert_eq!(tokens["scope"], "files.read", "{tokens}");
    let intro = peer
        .introspect(str_of(&tokens, "access_token"))
        .await
        .unwrap();
    assert_eq!(intro["scope"], "files.read", "{intro}");
}

#[tokio::test]
async fn client_must_authenticate_with_its_registered_method() {
    let peer = start_peer().await;
    let browser = Browser::new().unwrap();
    let pkce = Pkce::new("method");
    let q = authorize(&peer, &browser, BASIC, "read", "s", Some(&pkce), &[]).await;
    let as_post = OidcClient {
        auth_method: TokenAuthMethod::ClientSecretPost,
        ..client(BASIC)
    };
    let (status, body) = exchange_code(&peer, &as_post, &q["code"], Some(&pkce.verifier))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "invalid_client");

    // The refusal happened before the code was looked at: the right method still redeems it.
    let (status, body) = exchange_code(&peer, &client(BASIC), &q["code"], Some(&pkce.verifier))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");

    let q = authorize(&peer, &browser, POST, "read", "s", Some(&pkce), &[]).await;
    let as_basic = OidcClient {
        auth_method: TokenAuthMethod::ClientSecretBasic,
        ..client(POST)
    };
    let (status, body) = exchange_code(&peer, &as_basic, &q["code"], Some(&pkce.verifier))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "invalid_client");

    // And a wrong secret is refused as well.
    let wrong_secret = OidcClient {
        client_secret: Some("nope".into()),
        ..client(POST)
    };
    let (status, body) = exchange_code(&peer, &wrong_secret, &q["code"], Some(&pkce.verifier))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "invalid_client");
}

#[tokio::test]
async fn pkce_is_enforced() {
    let peer = start_peer().await;
    let browser = Browser::new().unwrap();

    // A wrong verifier fails the exchange.
    let pkce = Pkce::new("right");
    let q = authorize(&peer, &browser, BASIC, "read", "s1", Some(&pkce), &[]).await;
    let wrong = Pkce::new("wrong");
    let (status, body) = exchange_code(&peer, &client(BASIC), &q["code"], Some(&wrong.verifier))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");

    // So does a missing one when the code was bound to a challenge.
    let q = authorize(&peer, &browser, BASIC, "read", "s2", Some(&pkce), &[]).await;
    let (status, body) = exchange_code(&peer, &client(BASIC), &q["code"], None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A public client cannot even start without a challenge.
    let q = authorize(&peer, &browser, PUBLIC, "read", "s3", None, &[]).await;
    assert_eq!(q["error"], "invalid_request", "{q:?}");
    assert_eq!(q["state"], "s3");

    // A confidential client may go without PKCE (providers with `pkce: false`).
    let q = authorize(&peer, &browser, POST, "read", "s4", None, &[]).await;
    let (status, body) = exchange_code(&peer, &client(POST), &q["code"], None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_grant() {
    let peer = start_peer().await;
    for client_id in [BASIC, PUBLIC] {
        peer.reset_stats().await.unwrap();
        let c = client(client_id);
        let tokens = obtain_tokens(&peer, client_id, "read write").await;
        let rt1 = str_of(&tokens, "refresh_token").to_owned();

        let (status, second) = refresh(&peer, &c, &rt1).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{second}");
        let rt2 = str_of(&second, "refresh_token").to_owned();
        let at2 = str_of(&second, "access_token").to_owned();
        assert_ne!(rt1, rt2, "refresh token rotated");
        assert_ne!(str_of(&tokens, "access_token"), at2);
        assert_eq!(second["scope"], "read write");
        let stats = peer.stats().await.unwrap();
        assert_eq!((stats.refresh_grants, stats.refresh_token_reuses), (1, 0));

        // Presenting the consumed token again is reuse: refused, and the grant dies.
        let (status, body) = refresh(&peer, &c, &rt1).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "invalid_grant");
        let (status, body) = refresh(&peer, &c, &rt2).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(peer.introspect(&at2).await.unwrap()["active"], false);

        let stats = peer.stats().await.unwrap();
        assert_eq!(stats.refresh_token_reuses, 1, "{stats:?}");
        assert_eq!(stats.grant_revocations, 1, "{stats:?}");
        assert_eq!(stats.refresh_grants, 1, "{stats:?}");
    }
}

/// oidc-provider's stock memory store is an LRU of 1000 entries; past it a consumed refresh
/// token would be forgotten and its reuse go undetected. The peer must not forget.
#[tokio::test]
async fn reuse_is_detected_after_many_rotations() {
    let peer = start_peer().await;
    let c = client(BASIC);
    let tokens = obtain_tokens(&peer, BASIC, "read").await;
    let first = str_of(&tokens, "refresh_token").to_owned();
    let mut current = first.clone();
    // Each rotation stores an access token and a refresh token; quick-lru keeps up to twice
    // its maxSize (two generations), so 2 x 1050 entries push the first ones out.
    for _ in 0..1050 {
        let (status, body) = refresh(&peer, &c, &current).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        current = str_of(&body, "refresh_token").to_owned();
    }
    let (status, body) = refresh(&peer, &c, &first).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let stats = peer.stats().await.unwrap();
    assert_eq!(stats.refresh_token_reuses, 1, "{stats:?}");
    let (status, _) = refresh(&peer, &c, &current).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn login_hint_deny_makes_the_user_deny() {
    let peer = start_peer().await;
    let browser = Browser::new().unwrap();
    let pkce = Pkce::new("deny");
    // A first, successful consent leaves a session and a grant in the cookie jar ...
    let q = authorize(&peer, &browser, BASIC, "read", "ok", Some(&pkce), &[]).await;
    assert!(q.contains_key("code"), "{q:?}");
    // ... and the same browser can still be made to deny.
    let q = authorize(
        &peer,
        &browser,
        BASIC,
        "read",
        "no",
        Some(&pkce),
        &[("login_hint", DENY_LOGIN_HINT)],
    )
    .await;
    assert_eq!(q["error"], "access_denied", "{q:?}");
    assert_eq!(q["state"], "no");
    assert_eq!(q["iss"], peer.issuer());
    assert!(!q.contains_key("code"));

    // A fresh browser too.
    let q = authorize(
        &peer,
        &Browser::new().unwrap(),
        PUBLIC,
        "read",
        "no2",
        Some(&pkce),
        &[("login_hint", DENY_LOGIN_HINT)],
    )
    .await;
    assert_eq!(q["error"], "access_denied", "{q:?}");
}

#[tokio::test]
async fn admin_revoke_grant_kills_every_token_of_the_grant() {
    let peer = start_peer().await;
    let tokens = obtain_tokens(&peer, POST, "read").await;
    let at = str_of(&tokens, "access_token");
    let rt = str_of(&tokens, "refresh_token");
    assert_eq!(peer.introspect(at).await.unwrap()["active"], true);
    assert_eq!(peer.introspect(rt).await.unwrap()["active"], true);

    peer.revoke_grant(at).await.unwrap();

    assert_eq!(peer.introspect(at).await.unwrap()["active"], false);
    assert_eq!(peer.introspect(rt).await.unwrap()["active"], false);
    let (status, body) = refresh(&peer, &client(POST), rt).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    // An unknown token is an error, not a silent success.
    assert!(peer.revoke_grant(at).await.is_err());

    let stats = peer.stats().await.unwrap();
    assert_eq!(stats.admin_grant_revocations, 1, "{stats:?}");
    assert_eq!(stats.grant_revocations, 1, "{stats:?}");
    assert_eq!(stats.refresh_token_reuses, 0, "{stats:?}");
}

#[tokio::test]
async fn rfc7009_revoking_the_refresh_token_ends_the_grant() {
    let peer = start_peer().await;
    let c = client(BASIC);
    let tokens = obtain_tokens(&peer, BASIC, "read").await;
    let at = str_of(&tokens, "access_token");
    let rt = str_of(&tokens, "refresh_token");

    let resp = reqwest::Client::new()
        .post(peer.revocation_endpoint())
        .basic_auth(&c.client_id, c.client_secret.as_deref())
        .form(&[("token", rt), ("token_type_hint", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let (status, body) = refresh(&peer, &c, rt).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(peer.introspect(at).await.unwrap()["active"], false);
    assert_eq!(peer.stats().await.unwrap().grant_revocations, 1);
}

#[tokio::test]
async fn short_access_token_ttl_is_honoured() {
    let peer =
        start_peer_with(OidcProviderOptions::default().access_token_ttl(Duration::from_secs(2)))
            .await;
    let tokens = obtain_tokens(&peer, BASIC, "read").await;
    let expires_in = tokens["expires_in"].as_u64().unwrap();
    assert!((1..=2).contains(&expires_in), "{tokens}");
    let at = str_of(&tokens, "access_token");
    assert_eq!(peer.introspect(at).await.unwrap()["active"], true);

    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(peer.introspect(at).await.unwrap()["active"], false);

    // The refresh token outlives it.
    let (status, body) = refresh(&peer, &client(BASIC), str_of(&tokens, "refresh_token"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        (1..=2).contains(&body["expires_in"].as_u64().unwrap()),
        "{body}"
    );
}

#[tokio::test]
async fn dropping_the_harness_kills_the_child() {
    let peer = start_peer().await;
    let pid = peer.pid();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    if cfg!(target_os = "linux") {
        assert!(proc_dir.exists());
    }
    drop(peer);
    // Reaped by Drop, so not even a zombie remains.
    if cfg!(target_os = "linux") {
        assert!(!proc_dir.exists(), "node (pid {pid}) still running");
    }
}
