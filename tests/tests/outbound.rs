//! Where the real `latchkey` binary sends secrets and connections, black-box: a
//! connection's creator cannot point a registered client's or the deployment's app's
//! secret at an endpoint of their own; addresses inside the network are refused before
//! any connection (at create for literals, at authorize for what discovery returns);
//! bad ranges stop start-up; and without an issuer, an `iss` from another origin than the
//! authorization endpoint is refused before the code is exchanged.
//!
//! Traffic goes only to loopback: a "trap" server on loopback stands for an attacker's
//! endpoint and must receive nothing; private addresses appear only in configurations
//! that must be refused before any connection.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use latchkey_tests::server::{admin_client, LatchkeyServer, ServerOptions};
use latchkey_tests::{
    Browser, OidcClient, OidcProvider, OidcProviderOptions, PeerStats, TokenAuthMethod,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use url::Url;
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

const PROJECT: &str = "proj-outbound";
const CALLBACK_PATH: &str = "/v1/connections/oauth2/callback";
const POST: &str = "post-client";
const POST_SECRET: &str = "post-secret-registered-9f8e7d";
const DEPLOYMENT_SECRET: &str = "deployment-google-secret-1a2b3c";

/// A loopback server that answers anything as a token endpoint would, so that a leaked
/// secret would look like a success; it must never be asked anything.
async fn trap() -> MockServer {
    let trap = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "stolen", "token_type": "Bearer", "expires_in": 3600,
            "issuer": trap.uri(), "authorization_endpoint": format!("{}/auth", trap.uri()),
            "token_endpoint": format!("{}/token", trap.uri()),
        })))
        .mount(&trap)
        .await;
    trap
}

async fn start(env: &[(&str, &str)]) -> (tempfile::TempDir, LatchkeyServer) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path());
    for (k, v) in env {
        options = options.env(k, *v);
    }
    let server = LatchkeyServer::start(options).await.unwrap();
    (dir, server)
}

async fn post(
    http: &reqwest::Client,
    server: &LatchkeyServer,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let resp = http.post(server.url(path)).json(body).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A client authenticating with a project key of `scopes`.
async fn project_key(server: &LatchkeyServer, scopes: &[&str]) -> reqwest::Client {
    let (status, v) = post(
        &admin_client(),
        server,
        "/v1/access-keys",
        &json!({"project_id": PROJECT, "name": "creator", "scopes": scopes}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let key = v["data"]["key"].as_str().unwrap().to_owned();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

fn assert_error(status: StatusCode, v: &Value, want: StatusCode, code: &str, names: &str) {
    assert_eq!(status, want, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(names), "{names} not in {v}");
}

fn query(url: &Url, key: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn with_param(url: &Url, key: &str, value: &str) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != key)
        .collect();
    let mut out = url.clone();
    out.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair(key, value);
    out
}

/// Item 1: a project key with `connections:write` tries every way of making a registered
/// client's secret, or the deployment's Google app's secret, go to the trap. Every one is
/// refused at create; the registered client then runs a real flow, and its secret went
/// only to the real provider.
#[tokio::test]
async fn no_registered_or_deployment_secret_reaches_an_endpoint_the_creator_chose() {
    let trap = trap().await;
    let (_dir, server) = start(&[
        ("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true"),
        ("LATCHKEY_OAUTH_GOOGLE_CLIENT_ID", "deployment-google-app"),
        ("LATCHKEY_OAUTH_GOOGLE_CLIENT_SECRET", DEPLOYMENT_SECRET),
    ])
    .await;
    let callback = server.url(CALLBACK_PATH);
    let peer = OidcProvider::start(OidcProviderOptions {
        clients: vec![OidcClient::confidential(
            POST,
            POST_SECRET,
            TokenAuthMethod::ClientSecretPost,
            [callback.clone()],
        )],
        ..Default::default()
    })
    .await
    .unwrap();
    let admin = admin_client();
    let (status, v) = post(
        &admin,
        &server,
        "/v1/oauth2-clients",
        &json!({
            "name": "shared-app",
            "type": "oauth2",
            "client_id": POST,
            "client_secret": POST_SECRET,
            "token_endpoint_auth_method": "client_secret_post",
            "authorization_endpoint": peer.authorization_endpoint(),
            "token_endpoint": peer.token_endpoint(),
            "userinfo_endpoint": peer.userinfo_endpoint(),
            "revocation_endpoint": peer.revocation_endpoint(),
        }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let client_id = v["data"]["id"].as_str().unwrap().to_owned();

    let creator = project_key(&server, &["connections:read", "connections:write"]).await;
    let t = trap.uri();
    let overrides = [
        ("token_endpoint", json!(format!("{t}/token"))),
        ("authorization_endpoint", json!(format!("{t}/auth"))),
        ("userinfo_endpoint", json!(format!("{t}/userinfo"))),
        ("revocation_endpoint", json!(format!("{t}/revoke"))),
        ("issuer", json!(t)),
        ("token_endpoint_auth_method", json!("client_secret_post")),
        ("redirect_uri", json!(format!("{t}/callback"))),
        ("client_id", json!("creators-own")),
        ("client_secret", json!("creators-own")),
    ];
    for (field, value) in &overrides {
        let (status, v) = post(
            &creator,
            &server,
            "/v1/connections",
            &json!({
                "name": format!("steal-{field}"),
                "project_id": PROJECT,
                "type": "oauth2",
                "oauth2_client_id": client_id,
                "config": {"scopes": ["openid"], "oauth2_config": {*field: value}},
            }),
        )
        .await;
        assert_error(
            status,
            &v,
            StatusCode::BAD_REQUEST,
            "invalid_config",
            &format!("config.oauth2_config.{field}"),
        );
        assert_eq!(
            v["error"]["field"],
            format!("config.oauth2_config.{field}"),
            "{v}"
        );
    }
    // The deployment's Google app: no endpoint, issuer or redirect of the creator's.
    for (field, value) in &overrides[..7] {
        let (status, v) = post(
            &creator,
            &server,
            "/v1/connections",
            &json!({
                "name": format!("google-{field}"),
                "project_id": PROJECT,
                "type": "google",
                "config": {"oauth2_config": {*field: value}},
            }),
        )
        .await;
        assert_error(
            status,
            &v,
            StatusCode::BAD_REQUEST,
            "invalid_config",
            &format!("config.oauth2_config.{field}"),
        );
    }

    // The registered client, used as intended: the real flow, secret to the real provider.
    let (status, v) = post(
        &creator,
        &server,
        "/v1/connections",
        &json!({
            "name": "shared", "project_id": PROJECT, "type": "oauth2",
            "oauth2_client_id": client_id, "config": {"scopes": ["openid", "email"]},
        }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    let (status, v) = post(
        &creator,
        &server,
        &format!("/v1/connections/{id}/oauth2/authorize"),
        &json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let consent = Url::parse(v["data"]["url"].as_str().unwrap()).unwrap();
    assert!(consent.as_str().starts_with(peer.authorization_endpoint()));
    let browser = Browser::new().unwrap();
    let landing = browser
        .follow_until(consent.as_str(), &callback)
        .await
        .unwrap();
    let page = browser.open(landing.as_str()).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let c: Value = admin
        .get(server.url(&format!("/v1/connections/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c["data"]["status"], "active", "{c}");
    let stats = peer.stats().await.unwrap();
    assert_eq!(stats.authorization_code_grants, 1, "{stats:?}");
    assert!(stats.token_errors.is_empty(), "{stats:?}");

    let received = trap.received_requests().await.unwrap();
    assert!(received.is_empty(), "the trap was reached: {received:#?}");
    let logs = server.logs();
    assert!(!logs.contains(POST_SECRET) && !logs.contains(DEPLOYMENT_SECRET));
}

/// Item 3: with loopback not allowed, every literal address inside the network is refused
/// at create with 400 `address_not_allowed`, for connections and registered clients, and
/// nothing is sent anywhere (the trap listens on the loopback port the URLs name).
#[tokio::test]
async fn internal_address_literals_are_refused_at_create() {
    let trap = trap().await;
    let port = trap.address().port();
    let (_dir, server) = start(&[]).await;
    let admin = admin_client();
    let urls = [
        format!("https://127.0.0.1:{port}/token"),
        format!("https://localhost:{port}/token"),
        format!("https://[::1]:{port}/token"),
        format!("https://[::ffff:127.0.0.1]:{port}/token"),
        format!("https://0.0.0.0:{port}/token"),
        "https://10.0.0.1/token".to_owned(),
        "https://172.16.0.1/token".to_owned(),
        "https://192.168.1.1/token".to_owned(),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        "https://[fc00::1]/token".to_owned(),
        "https://[fe80::1]/token".to_owned(),
        "https://100.64.0.1/token".to_owned(),
        "https://[::ffff:10.0.0.1]/token".to_owned(),
    ];
    for (i, url) in urls.iter().enumerate() {
        for field in [
            "token_endpoint",
            "issuer",
            "userinfo_endpoint",
            "revocation_endpoint",
        ] {
            let (status, v) = post(
                &admin,
                &server,
                "/v1/connections",
                &json!({
                    "name": format!("internal-{i}-{field}"),
                    "project_id": PROJECT,
                    "type": "oauth2",
                    "config": {"oauth2_config": {
                        "client_id": "c",
                        "authorization_endpoint": "https://idp.example/auth",
                        "token_endpoint": "https://idp.example/token",
                        field: url,
                    }},
                }),
            )
            .await;
            assert_error(
                status,
                &v,
                StatusCode::BAD_REQUEST,
                "address_not_allowed",
                &format!("config.oauth2_config.{field}"),
            );
        }
        let (status, v) = post(
            &admin,
            &server,
            "/v1/oauth2-clients",
            &json!({
                "name": format!("internal-{i}"), "project_id": PROJECT, "type": "oauth2",
                "client_id": "c", "issuer": url,
            }),
        )
        .await;
        assert_error(
            status,
            &v,
            StatusCode::BAD_REQUEST,
            "address_not_allowed",
            "issuer",
        );
    }
    assert!(trap.received_requests().await.unwrap().is_empty());
}

/// Item 3: a range opened with LATCHKEY_ALLOW_PRIVATE_NETWORKS is accepted, nothing else;
/// a bad range stops start-up with a message naming the variable.
#[tokio::test]
async fn operator_ranges_open_exactly_what_they_name() {
    let (_dir, server) = start(&[("LATCHKEY_ALLOW_PRIVATE_NETWORKS", "127.0.0.0/8")]).await;
    let admin = admin_client();
    let create = |name: &str, token: &str| {
        json!({
            "name": name, "project_id": PROJECT, "type": "oauth2",
            "config": {"oauth2_config": {
                "client_id": "c",
                "authorization_endpoint": "https://idp.example/auth",
                "token_endpoint": token,
            }},
        })
    };
    let (status, v) = post(
        &admin,
        &server,
        "/v1/connections",
        &create("opened", "https://127.0.0.1:9/token"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    for url in ["https://10.0.0.1/token", "https://[::1]:9/token"] {
        let (status, v) = post(&admin, &server, "/v1/connections", &create("closed", url)).await;
        assert_error(
            status,
            &v,
            StatusCode::BAD_REQUEST,
            "address_not_allowed",
            "token_endpoint",
        );
    }
    // Plain http stays loopback-only under LATCHKEY_ALLOW_INSECURE_LOOPBACK.
    let (status, v) = post(
        &admin,
        &server,
        "/v1/connections",
        &create("http", "http://127.0.0.1:9/token"),
    )
    .await;
    assert_error(
        status,
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        "https",
    );

    for bad in ["10.0.0.0/33", "10.0.0.0/8,intranet", "10.1.2.3/8"] {
        let dir = tempfile::tempdir().unwrap();
        let (status, out) = LatchkeyServer::start_expecting_failure(
            ServerOptions::new(dir.path()).env("LATCHKEY_ALLOW_PRIVATE_NETWORKS", bad),
        )
        .unwrap();
        assert!(!status.success(), "{bad}: {out}");
        assert!(
            out.contains("LATCHKEY_ALLOW_PRIVATE_NETWORKS"),
            "{bad}: {out}"
        );
    }
}

/// Item 3: the endpoints a discovery document returns are held to the same policy, and
/// refused before any connection to them.
#[tokio::test]
async fn discovered_internal_endpoints_are_refused_at_authorize() {
    let idp = MockServer::start().await;
    let issuer = idp.uri();
    let (_dir, server) = start(&[("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true")]).await;
    let admin = admin_client();
    for (i, (field, url)) in [
        ("token_endpoint", "https://10.0.0.1/token"),
        ("authorization_endpoint", "https://192.168.0.10/auth"),
        (
            "userinfo_endpoint",
            "https://169.254.169.254/latest/meta-data",
        ),
        ("revocation_endpoint", "https://[fd00::1]/revoke"),
        ("token_endpoint", "https://0.0.0.0/token"),
    ]
    .into_iter()
    .enumerate()
    {
        idp.reset().await;
        let mut doc = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/auth"),
            "token_endpoint": format!("{issuer}/token"),
        });
        doc[field] = json!(url);
        Mock::given(path("/.well-known/openid-configuration"))
            .respond_with(ResponseTemplate::new(200).set_body_json(doc))
            .mount(&idp)
            .await;
        let (status, v) = post(
            &admin,
            &server,
            "/v1/connections",
            &json!({
                "name": format!("disc-{i}"), "project_id": PROJECT, "type": "oauth2",
                "config": {"oauth2_config": {"client_id": "c", "issuer": issuer}},
            }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        let id = v["data"]["id"].as_str().unwrap();
        let (status, v) = post(
            &admin,
            &server,
            &format!("/v1/connections/{id}/oauth2/authorize"),
            &json!({}),
        )
        .await;
        assert_error(
            status,
            &v,
            StatusCode::BAD_GATEWAY,
            "address_not_allowed",
            url.split('/').nth(2).unwrap(),
        );
        // Only the discovery document was fetched.
        let received = idp.received_requests().await.unwrap();
        assert!(
            received
                .iter()
                .all(|r| r.url.path() == "/.well-known/openid-configuration"),
            "{received:#?}"
        );
    }
}

/// Item 6: an oauth2 connection with explicit endpoints and no issuer. The peer sends
/// `iss` (RFC 9207); one from another origin than the authorization endpoint is refused
/// before any token request; the real one works.
#[tokio::test]
async fn without_an_issuer_an_iss_from_another_origin_is_refused_before_any_token_request() {
    let (_dir, server) = start(&[("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true")]).await;
    let callback = server.url(CALLBACK_PATH);
    let peer = OidcProvider::start(OidcProviderOptions {
        clients: vec![OidcClient::confidential(
            POST,
            POST_SECRET,
            TokenAuthMethod::ClientSecretPost,
            [callback.clone()],
        )],
        ..Default::default()
    })
    .await
    .unwrap();
    let admin = admin_client();
    let (status, v) = post(
        &admin,
        &server,
        "/v1/connections",
        &json!({
            "name": "explicit-no-issuer", "project_id": PROJECT, "type": "oauth2",
            "config": {"scopes": ["openid"], "oauth2_config": {
                "client_id": POST, "client_secret": POST_SECRET,
                "token_endpoint_auth_method": "client_secret_post",
                "authorization_endpoint": peer.authorization_endpoint(),
                "token_endpoint": peer.token_endpoint(),
            }},
        }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    let browser = Browser::new().unwrap();
    let consent = || async {
        let (status, v) = post(
            &admin,
            &server,
            &format!("/v1/connections/{id}/oauth2/authorize"),
            &json!({}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        browser
            .follow_until(v["data"]["url"].as_str().unwrap(), &callback)
            .await
            .unwrap()
    };
    let peer_origin = Url::parse(peer.issuer()).unwrap();
    let other_port = format!("http://127.0.0.1:{}", peer_origin.port().unwrap() + 1);
    for evil in [
        "https://evil.example",
        other_port.as_str(),
        "http://localhost:1",
    ] {
        let landing = consent().await;
        assert_eq!(query(&landing, "iss").as_deref(), Some(peer.issuer()));
        let page = browser
            .open(with_param(&landing, "iss", evil).as_str())
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::BAD_REQUEST, "{evil}");
        let body = page.text().await.unwrap();
        assert!(body.contains("unexpected issuer"), "{evil}: {body}");
    }
    assert_eq!(peer.stats().await.unwrap(), PeerStats::default());

    let page = browser.open(consent().await.as_str()).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(peer.stats().await.unwrap().authorization_code_grants, 1);
}
