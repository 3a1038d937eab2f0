//! The adapter's outbound policy, error classification, revocation, userinfo and
//! discovery, against a wiremock provider.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::time::Duration;

use latchkey_domain::oauth::ClientCredentials;
use latchkey_domain::provider::TokenAuthMethod;
use latchkey_oauth::{OutboundPolicy, MAX_RESPONSE_BYTES};
use latchkey_ports::{CodeExchange, OAuthError, ProviderClient, RefreshExchange, Revocation};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use common::*;

const CODE: &str = "the-code-xyz";
const VERIFIER: &str = "the-verifier-0123456789-0123456789-0123456789";
const SECRET: &str = "secret";
const REFRESH: &str = "rt-abc";

fn creds(auth_method: TokenAuthMethod) -> ClientCredentials {
    ClientCredentials {
        client_id: "cid".into(),
        client_secret: (auth_method != TokenAuthMethod::None).then(|| SecretString::from(SECRET)),
        auth_method,
    }
}

fn code_exchange(endpoint: String, auth: TokenAuthMethod) -> CodeExchange {
    CodeExchange {
        token_endpoint: endpoint,
        client: creds(auth),
        code: SecretString::from(CODE),
        redirect_uri: REDIRECT_URI.into(),
        pkce_verifier: Some(SecretString::from(VERIFIER)),
    }
}

fn refresh(endpoint: String) -> RefreshExchange {
    RefreshExchange {
        token_endpoint: endpoint,
        client: creds(TokenAuthMethod::ClientSecretPost),
        refresh_token: SecretString::from(REFRESH),
        scopes: None,
    }
}

/// A server whose /token answers `response` to anything.
async fn token_server(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(response)
        .mount(&server)
        .await;
    server
}

/// Exchanges a code and a refresh token at a /token answering `response`; both must fail
/// the same way. Errors never quote the secrets sent.
async fn token_failure(response: ResponseTemplate) -> OAuthError {
    let server = token_server(response).await;
    let c = client();
    let a = c
        .exchange_code(code_exchange(
            format!("{}/token", server.uri()),
            TokenAuthMethod::ClientSecretBasic,
        ))
        .await
        .unwrap_err();
    let b = c
        .refresh(refresh(format!("{}/token", server.uri())))
        .await
        .unwrap_err();
    assert_eq!(a, b);
    for secret in [CODE, VERIFIER, SECRET, REFRESH] {
        assert!(!format!("{a} {a:?}").contains(secret), "{a:?} leaks");
    }
    a
}

fn oauth_error(status: u16, body: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(body)
}

#[tokio::test]
async fn invalid_grant() {
    let e = token_failure(oauth_error(
        400,
        json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
    ))
    .await;
    assert_eq!(
        e,
        OAuthError::InvalidGrant(Some("Token has been expired or revoked.".into()))
    );
}

#[tokio::test]
async fn invalid_client() {
    let e = token_failure(oauth_error(401, json!({"error": "invalid_client"}))).await;
    assert_eq!(
        e,
        OAuthError::InvalidClient {
            error: "invalid_client".into(),
            description: None
        }
    );
}

#[tokio::test]
async fn unauthorized_client() {
    let e = token_failure(oauth_error(
        400,
        json!({"error": "unauthorized_client", "error_description": "AADSTS700016", "error_codes": [700016], "trace_id": "t"}),
    ))
    .await;
    assert_eq!(
        e,
        OAuthError::InvalidClient {
            error: "unauthorized_client".into(),
            description: Some("AADSTS700016".into())
        }
    );
}

#[tokio::test]
async fn other_oauth_error_is_provider() {
    let e = token_failure(oauth_error(
        400,
        json!({"error": "invalid_scope", "error_description": "bad scope"}),
    ))
    .await;
    assert_eq!(
        e,
        OAuthError::Provider {
            error: "invalid_scope".into(),
            description: Some("bad scope".into())
        }
    );
}

#[tokio::test]
async fn echoed_secrets_are_redacted() {
    // Spring-style servers quote the rejected token in the description.
    let server = token_server(oauth_error(
        400,
        json!({"error": "invalid_grant", "error_description": format!("Invalid refresh token: {REFRESH}")}),
    ))
    .await;
    let e = client()
        .refresh(refresh(format!("{}/token", server.uri())))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        OAuthError::InvalidGrant(Some("Invalid refresh token: [redacted]".into()))
    );
}

#[tokio::test]
async fn server_error_is_transient() {
    let e = token_failure(ResponseTemplate::new(500).set_body_string("oops")).await;
    let OAuthError::Transient {
        reason,
        retry_after,
    } = e
    else {
        panic!("{e:?}")
    };
    assert!(reason.contains("500"), "{reason}");
    assert_eq!(retry_after, None);
}

#[tokio::test]
async fn too_many_requests_honours_retry_after() {
    let e = token_failure(ResponseTemplate::new(429).insert_header("Retry-After", "7")).await;
    let OAuthError::Transient { retry_after, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(retry_after, Some(chrono::Duration::seconds(7)));
}

#[tokio::test]
async fn service_unavailable_honours_retry_after_even_with_an_oauth_body() {
    let e = token_failure(
        oauth_error(503, json!({"error": "temporarily_unavailable"}))
            .insert_header("Retry-After", "120"),
    )
    .await;
    let OAuthError::Transient { retry_after, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(retry_after, Some(chrono::Duration::seconds(120)));
}

#[tokio::test]
async fn timeout_is_transient() {
    let server = token_server(
        ResponseTemplate::new(200)
            .set_body_json(json!({"access_token": "a"}))
            .set_delay(Duration::from_secs(3)),
    )
    .await;
    let c = client_with(true, Duration::from_millis(200));
    let e = c
        .exchange_code(code_exchange(
            format!("{}/token", server.uri()),
            TokenAuthMethod::ClientSecretPost,
        ))
        .await
        .unwrap_err();
    let OAuthError::Transient { reason, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(reason.contains("timed out"), "{reason}");
}

#[tokio::test]
async fn connection_refused_is_transient() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = client()
        .refresh(refresh(format!("http://127.0.0.1:{port}/token")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            OAuthError::Transient {
                retry_after: None,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = MockServer::start().await;
    Mock::given(path("/token"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("Location", format!("{}/elsewhere", server.uri())),
        )
        .mount(&server)
        .await;
    Mock::given(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"access_token": "a"})))
        .expect(0)
        .mount(&server)
        .await;
    let e = client()
        .exchange_code(code_exchange(
            format!("{}/token", server.uri()),
            TokenAuthMethod::ClientSecretPost,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OAuthError::Protocol(m) if m.contains("302") && m.contains("redirect")),
        "{e:?}"
    );
    assert_eq!(request_count(&server).await, 1);
}

#[tokio::test]
async fn html_is_a_protocol_error() {
    let html = "<!DOCTYPE html><html><body>Sign in</body></html>";
    for template in [
        ResponseTemplate::new(200).set_body_raw(html, "text/html; charset=utf-8"),
        ResponseTemplate::new(200).set_body_string(html),
        ResponseTemplate::new(404).set_body_raw(html, "text/html"),
        ResponseTemplate::new(401),
    ] {
        let e = token_failure(template).await;
        assert!(matches!(e, OAuthError::Protocol(_)), "{e:?}");
    }
}

#[tokio::test]
async fn missing_access_token_is_a_protocol_error() {
    let e = token_failure(oauth_error(
        200,
        json!({"token_type": "bearer", "expires_in": 3600}),
    ))
    .await;
    assert_eq!(
        e,
        OAuthError::Protocol("the token response has no access_token".into())
    );
    let e = token_failure(oauth_error(
        200,
        json!({"access_token": "a", "expires_in": "never"}),
    ))
    .await;
    assert!(
        matches!(&e, OAuthError::Protocol(m) if m.contains("expires_in")),
        "{e:?}"
    );
}

#[tokio::test]
async fn huge_body_is_a_protocol_error() {
    let mut body = br#"{"access_token":"a","padding":""#.to_vec();
    body.resize(MAX_RESPONSE_BYTES + 10, b'x');
    body.extend_from_slice(br#""}"#);
    let e = token_failure(ResponseTemplate::new(200).set_body_raw(body, "application/json")).await;
    assert!(
        matches!(&e, OAuthError::Protocol(m) if m.contains("larger")),
        "{e:?}"
    );
}

#[tokio::test]
async fn github_style_200_with_error() {
    let e = token_failure(oauth_error(
        200,
        json!({"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired.", "error_uri": "https://docs.github.com"}),
    ))
    .await;
    assert_eq!(
        e,
        OAuthError::InvalidGrant(Some("The code passed is incorrect or expired.".into()))
    );
    let e = token_failure(oauth_error(
        200,
        json!({"error": "incorrect_client_credentials"}),
    ))
    .await;
    assert!(matches!(e, OAuthError::InvalidClient { .. }), "{e:?}");
    let e = token_failure(oauth_error(200, json!({"error": "invalid_grant"}))).await;
    assert_eq!(e, OAuthError::InvalidGrant(None));
}

#[tokio::test]
async fn notion_style_error_body() {
    let e = token_failure(oauth_error(
        400,
        json!({"object": "error", "status": 400, "code": "invalid_grant", "message": "Invalid code.", "request_id": "r"}),
    ))
    .await;
    assert_eq!(e, OAuthError::InvalidGrant(Some("Invalid code.".into())));
}

#[tokio::test]
async fn public_client_sends_client_id_and_no_authorization() {
    let server = token_server(oauth_error(
        200,
        json!({"access_token": "a", "token_type": "Bearer"}),
    ))
    .await;
    let t = client()
        .exchange_code(code_exchange(
            format!("{}/token", server.uri()),
            TokenAuthMethod::None,
        ))
        .await
        .unwrap();
    assert_eq!(t.access_token.expose_secret(), "a");
    assert_form_post(
        &only_request(&server).await,
        "/token",
        None,
        &[
            ("grant_type", "authorization_code"),
            ("code", CODE),
            ("code_verifier", VERIFIER),
            ("redirect_uri", REDIRECT_URI),
            ("client_id", "cid"),
        ],
    );
}

#[tokio::test]
async fn public_method_never_sends_a_secret_it_happens_to_have() {
    let server = token_server(oauth_error(200, json!({"access_token": "a"}))).await;
    let mut req = refresh(format!("{}/token", server.uri()));
    req.client.auth_method = TokenAuthMethod::None;
    client().refresh(req).await.unwrap();
    assert_form_post(
        &only_request(&server).await,
        "/token",
        None,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", REFRESH),
            ("client_id", "cid"),
        ],
    );
}

#[tokio::test]
async fn basic_without_a_secret_is_refused_before_sending() {
    let server = token_server(oauth_error(200, json!({"access_token": "a"}))).await;
    let mut req = refresh(format!("{}/token", server.uri()));
    req.client.auth_method = TokenAuthMethod::ClientSecretBasic;
    req.client.client_secret = None;
    let e = client().refresh(req).await.unwrap_err();
    assert!(matches!(e, OAuthError::InvalidClient { .. }), "{e:?}");
    assert_eq!(request_count(&server).await, 0);
}

#[tokio::test]
async fn http_to_a_remote_host_is_refused_before_sending() {
    let c = client();
    let url = "http://provider.example/token?x=1".to_owned();
    let want = OAuthError::InsecureUrl("http://provider.example/token".into());
    let e = c
        .exchange_code(code_exchange(
            url.clone(),
            TokenAuthMethod::ClientSecretPost,
        ))
        .await
        .unwrap_err();
    assert_eq!(e, want);
    assert_eq!(c.refresh(refresh(url.clone())).await.unwrap_err(), want);
    let e = c
        .revoke(Revocation {
            revocation_endpoint: url.clone(),
            client: creds(TokenAuthMethod::ClientSecretPost),
            token: SecretString::from(REFRESH),
            token_type_hint: "refresh_token",
        })
        .await
        .unwrap_err();
    assert_eq!(e, want);
    let e = c
        .userinfo(url.clone(), SecretString::from("at"))
        .await
        .unwrap_err();
    assert_eq!(e, want);
    let e = c
        .discover("http://provider.example/token".into())
        .await
        .unwrap_err();
    assert_eq!(e, want);
    for bad in [
        "ftp://127.0.0.1/token",
        "not a url",
        "http://10.0.0.1/token",
    ] {
        let e = c.refresh(refresh(bad.into())).await.unwrap_err();
        assert!(matches!(e, OAuthError::InsecureUrl(_)), "{bad}: {e:?}");
    }
}

#[tokio::test]
async fn loopback_http_is_refused_unless_allowed() {
    let server = token_server(oauth_error(200, json!({"access_token": "a"}))).await;
    let strict = latchkey_oauth::HttpProviderClient::new(OutboundPolicy::default()).unwrap();
    for host in [server.uri(), server.uri().replace("127.0.0.1", "localhost")] {
        let e = strict
            .refresh(refresh(format!("{host}/token")))
            .await
            .unwrap_err();
        assert!(matches!(e, OAuthError::InsecureUrl(_)), "{e:?}");
    }
    assert_eq!(request_count(&server).await, 0);
    client()
        .refresh(refresh(format!("{}/token", server.uri())))
        .await
        .unwrap();
}

#[test]
fn default_policy() {
    let p = OutboundPolicy::default();
    assert!(!p.allow_insecure_loopback);
    assert_eq!(p.timeout, Duration::from_secs(15));
    assert_eq!(p.connect_timeout, Duration::from_secs(5));
    assert_eq!(
        p.user_agent,
        concat!("latchkey/", env!("CARGO_PKG_VERSION"))
    );
}

// --- revocation --------------------------------------------------------------------

async fn revoke_at(
    server: &MockServer,
    auth: TokenAuthMethod,
    hint: &'static str,
) -> Result<(), OAuthError> {
    client()
        .revoke(Revocation {
            revocation_endpoint: format!("{}/revoke", server.uri()),
            client: creds(auth),
            token: SecretString::from(REFRESH),
            token_type_hint: hint,
        })
        .await
}

async fn revoke_server(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(response)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn revoke_request_shape() {
    // Basic: the same client authentication as at the token endpoint.
    let server = revoke_server(ResponseTemplate::new(200)).await;
    revoke_at(&server, TokenAuthMethod::ClientSecretBasic, "refresh_token")
        .await
        .unwrap();
    assert_form_post(
        &only_request(&server).await,
        "/revoke",
        Some("Basic Y2lkOnNlY3JldA=="),
        &[("token", REFRESH), ("token_type_hint", "refresh_token")],
    );

    let server = revoke_server(ResponseTemplate::new(200).set_body_json(json!({}))).await;
    revoke_at(&server, TokenAuthMethod::ClientSecretPost, "access_token")
        .await
        .unwrap();
    assert_form_post(
        &only_request(&server).await,
        "/revoke",
        None,
        &[
            ("token", REFRESH),
            ("token_type_hint", "access_token"),
            ("client_id", "cid"),
            ("client_secret", SECRET),
        ],
    );

    let server = revoke_server(ResponseTemplate::new(200)).await;
    revoke_at(&server, TokenAuthMethod::None, "refresh_token")
        .await
        .unwrap();
    assert_form_post(
        &only_request(&server).await,
        "/revoke",
        None,
        &[
            ("token", REFRESH),
            ("token_type_hint", "refresh_token"),
            ("client_id", "cid"),
        ],
    );
}

#[tokio::test]
async fn revoke_errors_are_classified() {
    let server = revoke_server(oauth_error(400, json!({"error": "unsupported_token_type"}))).await;
    let e = revoke_at(&server, TokenAuthMethod::ClientSecretBasic, "refresh_token")
        .await
        .unwrap_err();
    assert_eq!(
        e,
        OAuthError::Provider {
            error: "unsupported_token_type".into(),
            description: None
        }
    );
    let server = revoke_server(oauth_error(401, json!({"error": "invalid_client"}))).await;
    let e = revoke_at(&server, TokenAuthMethod::ClientSecretBasic, "refresh_token")
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::InvalidClient { .. }), "{e:?}");
    let server = revoke_server(ResponseTemplate::new(503).insert_header("Retry-After", "3")).await;
    let e = revoke_at(&server, TokenAuthMethod::ClientSecretBasic, "refresh_token")
        .await
        .unwrap_err();
    assert_eq!(
        e,
        OAuthError::Transient {
            reason: format!(
                "{}/revoke answered HTTP 503 Service Unavailable",
                server.uri()
            ),
            retry_after: Some(chrono::Duration::seconds(3))
        }
    );
    let server = revoke_server(ResponseTemplate::new(404).set_body_string("<html>")).await;
    let e = revoke_at(&server, TokenAuthMethod::ClientSecretBasic, "refresh_token")
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::Protocol(_)), "{e:?}");
}

// --- userinfo ----------------------------------------------------------------------

#[tokio::test]
async fn userinfo_sends_the_bearer_token_and_returns_the_object() {
    let server = MockServer::start().await;
    let profile = json!({"sub": "1234", "email": "a@example.com", "email_verified": true});
    Mock::given(method("GET"))
        .and(path("/userinfo"))
        .respond_with(ResponseTemplate::new(200).set_body_json(&profile))
        .mount(&server)
        .await;
    let v = client()
        .userinfo(
            format!("{}/userinfo", server.uri()),
            SecretString::from("at-1"),
        )
        .await
        .unwrap();
    assert_eq!(v, profile);
    let req = only_request(&server).await;
    assert_eq!(req.method.as_str(), "GET");
    assert_eq!(req.url.path(), "/userinfo");
    assert_eq!(req.url.query(), None);
    assert_eq!(
        header(&req, "authorization").as_deref(),
        Some("Bearer at-1")
    );
    assert_eq!(header(&req, "accept").as_deref(), Some("application/json"));
    assert!(req.body.is_empty());
}

#[tokio::test]
async fn userinfo_failures() {
    let server = MockServer::start().await;
    Mock::given(path("/expired"))
        .respond_with(ResponseTemplate::new(401).insert_header(
            "WWW-Authenticate",
            r#"Bearer realm="x", error="invalid_token", error_description="The access token expired""#,
        ))
        .mount(&server)
        .await;
    Mock::given(path("/array"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([1, 2])))
        .mount(&server)
        .await;
    Mock::given(path("/busy"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "7"))
        .mount(&server)
        .await;
    Mock::given(path("/forbidden"))
        .respond_with(ResponseTemplate::new(403))
        .mount(&server)
        .await;
    let c = client();
    let call = |p: &str| c.userinfo(format!("{}{p}", server.uri()), SecretString::from("at-1"));
    assert_eq!(
        call("/expired").await.unwrap_err(),
        OAuthError::Provider {
            error: "invalid_token".into(),
            description: Some("The access token expired".into())
        }
    );
    assert!(matches!(
        call("/array").await.unwrap_err(),
        OAuthError::Protocol(_)
    ));
    assert!(matches!(
        call("/busy").await.unwrap_err(),
        OAuthError::Transient { retry_after: Some(d), .. } if d == chrono::Duration::seconds(7)
    ));
    assert!(matches!(
        call("/forbidden").await.unwrap_err(),
        OAuthError::Protocol(_)
    ));
}

// --- discovery ---------------------------------------------------------------------

fn document(issuer: &str) -> serde_json::Value {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "authorization_response_iss_parameter_supported": true,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"]
    })
}

#[tokio::test]
async fn discovery_reads_the_openid_configuration() {
    let server = MockServer::start().await;
    let issuer = server.uri();
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(document(&issuer)))
        .mount(&server)
        .await;
    let m = client().discover(issuer.clone()).await.unwrap();
    assert_eq!(m.issuer, issuer);
    assert_eq!(m.authorization_endpoint, format!("{issuer}/authorize"));
    assert_eq!(m.token_endpoint, format!("{issuer}/token"));
    assert_eq!(m.userinfo_endpoint, Some(format!("{issuer}/userinfo")));
    assert_eq!(m.revocation_endpoint, Some(format!("{issuer}/revoke")));
    assert!(m.authorization_response_iss_parameter_supported);
    assert_eq!(
        m.token_endpoint_auth_methods_supported,
        ["client_secret_basic", "private_key_jwt"]
    );
    let req = only_request(&server).await;
    assert_eq!(req.method.as_str(), "GET");
    assert_eq!(header(&req, "accept").as_deref(), Some("application/json"));
    assert_eq!(header(&req, "authorization"), None);
}

#[tokio::test]
async fn discovery_refuses_another_issuer() {
    let server = MockServer::start().await;
    Mock::given(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(document("https://evil.example")))
        .mount(&server)
        .await;
    let e = client().discover(server.uri()).await.unwrap_err();
    assert!(
        matches!(&e, OAuthError::Protocol(m) if m.contains("evil.example")),
        "{e:?}"
    );
    // A trailing slash is another issuer too: the comparison is exact.
    let e = client()
        .discover(format!("{}/", server.uri()))
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::Protocol(_)), "{e:?}");
}

#[tokio::test]
async fn discovery_falls_back_to_rfc8414_with_the_issuer_path() {
    let server = MockServer::start().await;
    let issuer = format!("{}/tenant/v2", server.uri());
    let mut doc = document(&issuer);
    doc.as_object_mut()
        .unwrap()
        .remove("authorization_response_iss_parameter_supported");
    doc.as_object_mut()
        .unwrap()
        .remove("token_endpoint_auth_methods_supported");
    doc.as_object_mut().unwrap().remove("userinfo_endpoint");
    Mock::given(path("/tenant/v2/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    Mock::given(path("/.well-known/oauth-authorization-server/tenant/v2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(doc))
        .mount(&server)
        .await;
    let m = client().discover(issuer.clone()).await.unwrap();
    assert_eq!(m.issuer, issuer);
    assert_eq!(m.userinfo_endpoint, None);
    assert!(!m.authorization_response_iss_parameter_supported);
    // RFC 8414 §2 default.
    assert_eq!(
        m.token_endpoint_auth_methods_supported,
        ["client_secret_basic"]
    );
    let paths: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "/tenant/v2/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server/tenant/v2"
        ]
    );
}

#[tokio::test]
async fn discovery_failures() {
    let server = MockServer::start().await;
    let issuer = server.uri();
    // Nothing mounted: both locations 404.
    let e = client().discover(issuer.clone()).await.unwrap_err();
    assert!(
        matches!(&e, OAuthError::Protocol(m) if m.contains("404")),
        "{e:?}"
    );

    let mut doc = document(&issuer);
    doc["token_endpoint"] = json!("http://idp.example/token");
    Mock::given(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(doc))
        .mount(&server)
        .await;
    let e = client().discover(issuer.clone()).await.unwrap_err();
    assert_eq!(
        e,
        OAuthError::InsecureUrl("http://idp.example/token".into())
    );

    server.reset().await;
    let mut doc = document(&issuer);
    doc.as_object_mut().unwrap().remove("token_endpoint");
    Mock::given(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(doc))
        .mount(&server)
        .await;
    let e = client().discover(issuer.clone()).await.unwrap_err();
    assert!(
        matches!(&e, OAuthError::Protocol(m) if m.contains("token_endpoint")),
        "{e:?}"
    );

    server.reset().await;
    Mock::given(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let e = client().discover(issuer.clone()).await.unwrap_err();
    assert!(matches!(e, OAuthError::Transient { .. }), "{e:?}");
}
