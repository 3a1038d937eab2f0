//! Request shapes for every catalog provider: the consent URL the domain builds, and the
//! code exchange and refresh requests this adapter sends, against a mock of the
//! provider's endpoints at their catalog paths.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use chrono::Duration;
use latchkey_domain::config::OAuthSettings;
use latchkey_domain::oauth::{
    authorization_url, resolve, Pkce, ResolveInput, ResolvedProvider, State, TokenResponse,
};
use latchkey_domain::provider::{Provider, TokenAuthMethod};
use latchkey_ports::{CodeExchange, ProviderClient, RefreshExchange};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use common::*;

const CLIENT_ID: &str = "latchkey client";
const CLIENT_SECRET: &str = "p@ss:w/rd+=";
/// base64("latchkey+client:p%40ss%3Aw%2Frd%2B%3D"), computed with Python's quote_plus.
const BASIC: &str = "Basic bGF0Y2hrZXkrY2xpZW50OnAlNDBzcyUzQXclMkZyZCUyQiUzRA==";
const CODE: &str = "auth-code/123";
const REFRESH_TOKEN: &str = "refresh-token-1";

/// The effective settings of `provider` as the domain resolves them, with the endpoints'
/// host swapped for the mock server (catalog paths kept).
fn resolved(provider: Provider, tenant: Option<&str>, server: &MockServer) -> ResolvedProvider {
    let settings = OAuthSettings {
        client_id: Some(CLIENT_ID.to_owned()),
        tenant: tenant.map(str::to_owned),
        ..OAuthSettings::default()
    };
    let mut r = resolve(ResolveInput {
        provider,
        settings: &settings,
        registered_client: None,
        inline_secret: Some(SecretString::from(CLIENT_SECRET)),
        discovered: None,
        default_redirect_uri: REDIRECT_URI,
    })
    .unwrap();
    let spec = provider.spec().unwrap();
    assert!(r.authorization_endpoint.starts_with("https://"));
    assert_eq!(r.client.auth_method, spec.token_auth);
    r.authorization_endpoint = rebase(&r.authorization_endpoint, server);
    r.token_endpoint = rebase(&r.token_endpoint, server);
    r.revocation_endpoint = r.revocation_endpoint.map(|u| rebase(&u, server));
    r.userinfo_endpoint = r.userinfo_endpoint.map(|u| rebase(&u, server));
    r
}

struct Case {
    provider: Provider,
    tenant: Option<&'static str>,
    authorize_path: &'static str,
    token_path: &'static str,
    /// Expected consent URL query, besides the response_type, client_id, redirect_uri,
    /// state and PKCE parameters every flow has.
    consent: &'static [(&'static str, &'static str)],
    pkce: bool,
    basic: bool,
    code_response: Value,
    code_expect: Expect,
    refresh_response: Value,
    refresh_expect: Expect,
}

struct Expect {
    access_token: &'static str,
    refresh_token: Option<&'static str>,
    token_type: &'static str,
    expires_in: Option<i64>,
    scopes: Option<&'static [&'static str]>,
}

fn check(t: &TokenResponse, e: &Expect) {
    assert_eq!(t.access_token.expose_secret(), e.access_token);
    assert_eq!(
        t.refresh_token
            .as_ref()
            .map(|s| s.expose_secret().to_owned()),
        e.refresh_token.map(str::to_owned)
    );
    assert_eq!(t.token_type, e.token_type);
    assert_eq!(t.expires_in, e.expires_in.map(Duration::seconds));
    assert_eq!(
        t.scopes,
        e.scopes
            .map(|s| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    );
}

async fn run(case: Case) {
    let server = MockServer::start().await;
    let r = resolved(case.provider, case.tenant, &server);

    // (1) The consent URL: exact query, catalog path.
    assert_eq!(r.pkce, case.pkce);
    let state = State::from_random([7; 32]);
    let pkce = r.pkce.then(|| Pkce::from_random([9; 32]));
    let url = authorization_url(&r, &state, pkce.as_ref()).unwrap();
    assert_eq!(url.path(), case.authorize_path);
    let mut expected = vec![
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT_URI),
        ("state", state.value.expose_secret()),
    ];
    if let Some(p) = &pkce {
        expected.push(("code_challenge", p.challenge.as_str()));
        expected.push(("code_challenge_method", "S256"));
    }
    expected.extend_from_slice(case.consent);
    let mut query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    query.sort();
    assert_eq!(query, pairs(&expected), "{} consent URL", case.provider);

    // (2) The code exchange.
    Mock::given(method("POST"))
        .and(path(case.token_path))
        .respond_with(ResponseTemplate::new(200).set_body_json(&case.code_response))
        .mount(&server)
        .await;
    let client = client();
    let token = client
        .exchange_code(CodeExchange {
            token_endpoint: r.token_endpoint.clone(),
            client: r.client.clone(),
            code: SecretString::from(CODE),
            redirect_uri: r.redirect_uri.clone(),
            pkce_verifier: pkce.as_ref().map(|p| p.verifier.clone()),
        })
        .await
        .unwrap();
    check(&token, &case.code_expect);
    let req = only_request(&server).await;
    let mut fields = vec![
        ("grant_type", "authorization_code"),
        ("code", CODE),
        ("redirect_uri", REDIRECT_URI),
    ];
    if let Some(p) = &pkce {
        fields.push(("code_verifier", p.verifier.expose_secret()));
    }
    let auth = if case.basic {
        Some(BASIC)
    } else {
        fields.push(("client_id", CLIENT_ID));
        fields.push(("client_secret", CLIENT_SECRET));
        None
    };
    assert_form_post(&req, case.token_path, auth, &fields);

    // (3) The refresh.
    server.reset().await;
    Mock::given(method("POST"))
        .and(path(case.token_path))
        .respond_with(ResponseTemplate::new(200).set_body_json(&case.refresh_response))
        .mount(&server)
        .await;
    let token = client
        .refresh(RefreshExchange {
            token_endpoint: r.token_endpoint.clone(),
            client: r.client.clone(),
            refresh_token: SecretString::from(REFRESH_TOKEN),
            scopes: None,
        })
        .await
        .unwrap();
    check(&token, &case.refresh_expect);
    let req = only_request(&server).await;
    let mut fields = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", REFRESH_TOKEN),
    ];
    if !case.basic {
        fields.push(("client_id", CLIENT_ID));
        fields.push(("client_secret", CLIENT_SECRET));
    }
    assert_form_post(&req, case.token_path, auth, &fields);
}

#[tokio::test]
async fn google() {
    run(Case {
        provider: Provider::Google,
        tenant: None,
        authorize_path: "/o/oauth2/v2/auth",
        token_path: "/token",
        consent: &[
            (
                "scope",
                "https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile https://www.googleapis.com/auth/drive.readonly",
            ),
            ("access_type", "offline"),
            ("prompt", "consent"),
        ],
        pkce: true,
        basic: false,
        code_response: json!({
            "access_token": "ya29.a0",
            "expires_in": 3599,
            "refresh_token": "1//0g-refresh",
            "scope": "https://www.googleapis.com/auth/drive.readonly openid",
            "token_type": "Bearer",
            "id_token": "eyJhbGciOiJSUzI1NiJ9.e30.sig"
        }),
        code_expect: Expect {
            access_token: "ya29.a0",
            refresh_token: Some("1//0g-refresh"),
            token_type: "Bearer",
            expires_in: Some(3599),
            scopes: Some(&["https://www.googleapis.com/auth/drive.readonly", "openid"]),
        },
        // Google does not send a new refresh token on refresh.
        refresh_response: json!({
            "access_token": "ya29.a1",
            "expires_in": 3599,
            "scope": "https://www.googleapis.com/auth/drive.readonly",
            "token_type": "Bearer"
        }),
        refresh_expect: Expect {
            access_token: "ya29.a1",
            refresh_token: None,
            token_type: "Bearer",
            expires_in: Some(3599),
            scopes: Some(&["https://www.googleapis.com/auth/drive.readonly"]),
        },
    })
    .await;
}

fn microsoft(tenant: Option<&'static str>, prefix: &'static str) -> Case {
    // Leaked to get 'static paths for the table; a test, not a leak that matters.
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    Case {
        provider: Provider::Microsoft,
        tenant,
        authorize_path: leak(format!("/{prefix}/oauth2/v2.0/authorize")),
        token_path: leak(format!("/{prefix}/oauth2/v2.0/token")),
        consent: &[(
            "scope",
            "User.Read Files.Read.All Sites.Read.All offline_access",
        )],
        pkce: true,
        basic: false,
        code_response: json!({
            "token_type": "Bearer",
            "scope": "User.Read Files.Read.All Sites.Read.All",
            "expires_in": 4493,
            "ext_expires_in": 4493,
            "access_token": "eyJ0eXAi.ms",
            "refresh_token": "M.R3_BAY.1"
        }),
        code_expect: Expect {
            access_token: "eyJ0eXAi.ms",
            refresh_token: Some("M.R3_BAY.1"),
            token_type: "Bearer",
            expires_in: Some(4493),
            scopes: Some(&["User.Read", "Files.Read.All", "Sites.Read.All"]),
        },
        // Microsoft rotates refresh tokens.
        refresh_response: json!({
            "token_type": "Bearer",
            "scope": "User.Read",
            "expires_in": "3600",
            "access_token": "eyJ0eXAi.ms2",
            "refresh_token": "M.R3_BAY.2"
        }),
        refresh_expect: Expect {
            access_token: "eyJ0eXAi.ms2",
            refresh_token: Some("M.R3_BAY.2"),
            token_type: "Bearer",
            expires_in: Some(3600),
            scopes: Some(&["User.Read"]),
        },
    }
}

#[tokio::test]
async fn microsoft_common_tenant_by_default() {
    run(microsoft(None, "common")).await;
}

#[tokio::test]
async fn microsoft_named_tenant() {
    run(microsoft(
        Some("contoso.onmicrosoft.com"),
        "contoso.onmicrosoft.com",
    ))
    .await;
}

#[tokio::test]
async fn dropbox() {
    run(Case {
        provider: Provider::Dropbox,
        tenant: None,
        authorize_path: "/oauth2/authorize",
        token_path: "/oauth2/token",
        consent: &[
            (
                "scope",
                "account_info.read files.metadata.read files.content.read",
            ),
            ("token_access_type", "offline"),
        ],
        pkce: true,
        basic: true,
        code_response: json!({
            "access_token": "sl.BAbc",
            "expires_in": 14400,
            "token_type": "bearer",
            "scope": "account_info.read files.content.read files.metadata.read",
            "refresh_token": "dbx-refresh",
            "account_id": "dbid:AAH4f99",
            "uid": "12345"
        }),
        code_expect: Expect {
            access_token: "sl.BAbc",
            refresh_token: Some("dbx-refresh"),
            token_type: "bearer",
            expires_in: Some(14400),
            scopes: Some(&[
                "account_info.read",
                "files.content.read",
                "files.metadata.read",
            ]),
        },
        refresh_response: json!({
            "access_token": "sl.BAbd",
            "expires_in": 14400,
            "token_type": "bearer"
        }),
        refresh_expect: Expect {
            access_token: "sl.BAbd",
            refresh_token: None,
            token_type: "bearer",
            expires_in: Some(14400),
            scopes: None,
        },
    })
    .await;
}

#[tokio::test]
async fn box_returns_the_rotated_refresh_token() {
    run(Case {
        provider: Provider::Box,
        tenant: None,
        authorize_path: "/api/oauth2/authorize",
        token_path: "/oauth2/token",
        consent: &[("scope", "root_readwrite")],
        pkce: false,
        basic: false,
        code_response: json!({
            "access_token": "box-at-1",
            "expires_in": 3600,
            "restricted_to": [],
            "refresh_token": "box-rt-1",
            "token_type": "bearer"
        }),
        code_expect: Expect {
            access_token: "box-at-1",
            refresh_token: Some("box-rt-1"),
            token_type: "bearer",
            expires_in: Some(3600),
            scopes: None,
        },
        refresh_response: json!({
            "access_token": "box-at-2",
            "expires_in": 4169,
            "restricted_to": [],
            "refresh_token": "box-rt-2",
            "token_type": "bearer"
        }),
        refresh_expect: Expect {
            access_token: "box-at-2",
            refresh_token: Some("box-rt-2"),
            token_type: "bearer",
            expires_in: Some(4169),
            scopes: None,
        },
    })
    .await;
}

#[tokio::test]
async fn notion_uses_basic_and_tokens_do_not_expire() {
    run(Case {
        provider: Provider::Notion,
        tenant: None,
        authorize_path: "/v1/oauth/authorize",
        token_path: "/v1/oauth/token",
        consent: &[("owner", "user")],
        pkce: false,
        basic: true,
        code_response: json!({
            "access_token": "secret_notion",
            "token_type": "bearer",
            "refresh_token": "nrt-1",
            "bot_id": "b1",
            "workspace_name": "Acme",
            "workspace_icon": null,
            "workspace_id": "w1",
            "owner": {"type": "user", "user": {"object": "user", "id": "u1"}},
            "duplicated_template_id": null,
            "request_id": "r1"
        }),
        code_expect: Expect {
            access_token: "secret_notion",
            refresh_token: Some("nrt-1"),
            token_type: "bearer",
            expires_in: None,
            scopes: None,
        },
        refresh_response: json!({
            "access_token": "secret_notion_2",
            "token_type": "bearer",
            "refresh_token": "nrt-2",
            "bot_id": "b1",
            "workspace_id": "w1"
        }),
        refresh_expect: Expect {
            access_token: "secret_notion_2",
            refresh_token: Some("nrt-2"),
            token_type: "bearer",
            expires_in: None,
            scopes: None,
        },
    })
    .await;
}

#[tokio::test]
async fn github_comma_scopes_and_no_expiry() {
    run(Case {
        provider: Provider::GitHub,
        tenant: None,
        authorize_path: "/login/oauth/authorize",
        token_path: "/login/oauth/access_token",
        consent: &[],
        pkce: true,
        basic: false,
        code_response: json!({
            "access_token": "gho_16C7e42F292c6912E7710c838347Ae178B4a",
            "scope": "repo,gist",
            "token_type": "bearer"
        }),
        code_expect: Expect {
            access_token: "gho_16C7e42F292c6912E7710c838347Ae178B4a",
            refresh_token: None,
            token_type: "bearer",
            expires_in: None,
            scopes: Some(&["repo", "gist"]),
        },
        // A GitHub App with expiring user tokens.
        refresh_response: json!({
            "access_token": "ghu_2",
            "expires_in": 28800,
            "refresh_token": "ghr_2",
            "refresh_token_expires_in": 15811200,
            "scope": "",
            "token_type": "bearer"
        }),
        refresh_expect: Expect {
            access_token: "ghu_2",
            refresh_token: Some("ghr_2"),
            token_type: "bearer",
            expires_in: Some(28800),
            scopes: Some(&[]),
        },
    })
    .await;
}

#[tokio::test]
async fn every_catalog_provider_is_covered() {
    // The cases above name each catalog provider; this fails when one is added.
    let covered = [
        Provider::Google,
        Provider::Microsoft,
        Provider::Dropbox,
        Provider::Box,
        Provider::Notion,
        Provider::GitHub,
    ];
    assert_eq!(Provider::CATALOG, covered);
    for p in Provider::CATALOG {
        let auth = p.spec().unwrap().token_auth;
        assert_ne!(auth, TokenAuthMethod::None, "{p}");
    }
}

#[tokio::test]
async fn refresh_with_explicit_scopes_sends_them() {
    let server = MockServer::start().await;
    let r = resolved(Provider::Google, None, &server);
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "a", "expires_in": 10})),
        )
        .mount(&server)
        .await;
    client()
        .refresh(RefreshExchange {
            token_endpoint: r.token_endpoint.clone(),
            client: r.client.clone(),
            refresh_token: SecretString::from(REFRESH_TOKEN),
            scopes: Some(vec!["openid".into(), "email".into()]),
        })
        .await
        .unwrap();
    let req = only_request(&server).await;
    assert_form_post(
        &req,
        "/token",
        None,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", REFRESH_TOKEN),
            ("scope", "openid email"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ],
    );
}
