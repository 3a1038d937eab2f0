//! Where Latchkey sends a client's secret and codes: a connection cannot point a
//! registered client's or the deployment's app's secret at an endpoint of its choosing,
//! address literals inside the network are refused at create, and an `iss` from another
//! server is refused on the callback when no issuer is known. The provider is a mockall
//! mock: every call it gets is an expectation, so a refusal must make none.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::sync::{Arc, Mutex};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};

use latchkey_app::{AppError, CallbackError, CallbackParams, CreateOAuthClient, Latchkey};
use latchkey_domain::{ConnectionConfig, DomainError, OAuthClientId, Scope};
use latchkey_ports::MockProviderClient;

use support::*;

const IDP: &str = "https://idp.example";
const ATTACKER: &str = "https://attacker.example";
const REG_SECRET: &str = "registered-client-secret";

fn untouchable() -> MockProviderClient {
    let mut m = MockProviderClient::new();
    m.expect_exchange_code().never();
    m.expect_userinfo().never();
    m.expect_refresh().never();
    m.expect_discover().never();
    m.expect_revoke().never();
    m
}

/// An admin-registered client for every project, with its endpoints and secret.
async fn register_client(app: &Latchkey) -> OAuthClientId {
    let settings: Map<String, Value> = json!({
        "authorization_endpoint": format!("{IDP}/authorize"),
        "token_endpoint": format!("{IDP}/token"),
        "revocation_endpoint": format!("{IDP}/revoke"),
        "token_endpoint_auth_method": "client_secret_post",
    })
    .as_object()
    .unwrap()
    .clone();
    app.create_oauth_client(
        &admin(),
        CreateOAuthClient {
            name: "shared".into(),
            project_id: None,
            kind: "oauth2".into(),
            client_id: "registered-client".into(),
            client_secret: Some(SecretString::from(REG_SECRET)),
            settings,
        },
    )
    .await
    .unwrap()
    .id
}

fn writer() -> latchkey_app::Principal {
    key(PROJECT, &[Scope::ConnectionsWrite, Scope::ConnectionsRead])
}

fn invalid_config_field(err: &AppError) -> String {
    match err {
        // Both map to invalid_config (the second is worded by the API with the setting).
        AppError::Invalid(DomainError::InvalidConfig { field, .. })
        | AppError::Invalid(DomainError::RedirectOnDeploymentApp { field, .. }) => field.clone(),
        other => panic!("not invalid_config: {other:?}"),
    }
}

#[tokio::test]
async fn a_connection_naming_a_registered_client_cannot_set_where_its_secret_goes() {
    let h = harness_with(Arc::new(untouchable()));
    let client = register_client(&h.app).await;
    let overrides = [
        ("token_endpoint", json!(format!("{ATTACKER}/token"))),
        ("authorization_endpoint", json!(format!("{ATTACKER}/auth"))),
        ("userinfo_endpoint", json!(format!("{ATTACKER}/me"))),
        ("revocation_endpoint", json!(format!("{ATTACKER}/revoke"))),
        ("issuer", json!(ATTACKER)),
        ("token_endpoint_auth_method", json!("client_secret_post")),
        ("redirect_uri", json!(format!("{ATTACKER}/cb"))),
        ("client_id", json!("mine")),
        ("client_secret", json!("mine")),
    ];
    for (field, value) in overrides {
        for inside in [false, true] {
            let mut config = json!({"scopes": ["openid"], "oauth2_config": {field: value}});
            let mut input = create_input(&format!("via-{field}"), "oauth2", config.clone());
            if inside {
                config["oauth2_client_id"] = json!(client.to_string());
                input.config = config;
            } else {
                input.oauth2_client_id = Some(client.to_string());
            }
            let err = h.app.create_connection(&writer(), input).await.unwrap_err();
            assert_eq!(
                invalid_config_field(&err),
                format!("config.oauth2_config.{field}")
            );
        }
    }
    assert_eq!(h.store.calls("insert_connection"), 0);
}

#[tokio::test]
async fn a_catalog_connection_cannot_redirect_the_deployments_app() {
    let h = harness_with(Arc::new(untouchable()));
    for (kind, field, value) in [
        ("google", "token_endpoint", format!("{ATTACKER}/token")),
        ("google", "issuer", ATTACKER.to_owned()),
        ("google", "redirect_uri", format!("{ATTACKER}/cb")),
        (
            "notion",
            "revocation_endpoint",
            format!("{ATTACKER}/revoke"),
        ),
        (
            "box",
            "token_endpoint_auth_method",
            "client_secret_post".into(),
        ),
        ("box", "redirect_uri", format!("{ATTACKER}/cb")),
    ] {
        let err = h
            .app
            .create_connection(
                &writer(),
                create_input(kind, kind, json!({"oauth2_config": {field: value}})),
            )
            .await
            .unwrap_err();
        assert_eq!(
            invalid_config_field(&err),
            format!("config.oauth2_config.{field}"),
            "{kind}"
        );
    }
    assert_eq!(h.store.calls("insert_connection"), 0);
}

/// The secret goes to the registered client's token endpoint, and a stored connection
/// that carries its own endpoints (written before create refused them) sends nothing.
#[tokio::test]
async fn the_registered_secret_goes_only_to_the_registered_endpoint() {
    let sent = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let mut m = MockProviderClient::new();
    let record = sent.clone();
    m.expect_exchange_code().returning(move |r| {
        record.lock().unwrap().push((
            r.token_endpoint.clone(),
            r.client
                .client_secret
                .as_ref()
                .map(|s| s.expose_secret().to_owned())
                .unwrap_or_default(),
        ));
        Ok(tokens("at-1", Some("rt-1"), Some(3600)))
    });
    m.expect_userinfo().never();
    m.expect_refresh().never();
    m.expect_revoke().never();
    m.expect_discover().never();
    let h = harness_with(Arc::new(m));
    let client = register_client(&h.app).await;
    let mut input = create_input("shared-conn", "oauth2", json!({"scopes": ["openid"]}));
    input.oauth2_client_id = Some(client.to_string());
    let c = h.app.create_connection(&writer(), input).await.unwrap();
    let state = h.start(c.id).await;
    h.callback(&state).await.unwrap();
    assert_eq!(
        *sent.lock().unwrap(),
        [(format!("{IDP}/token"), REG_SECRET.to_owned())]
    );

    // A row from before the rule: its own endpoints beside the registered client.
    for field in [
        "token_endpoint",
        "revocation_endpoint",
        "redirect_uri",
        "issuer",
    ] {
        h.store.write_behind_our_back(c.id, |c| {
            let mut stored = c.config.to_public_json();
            stored["oauth2_config"] = json!({ field: format!("{ATTACKER}/x") });
            c.config = ConnectionConfig::from_public_json(c.kind, &stored).unwrap();
        });
        let err = h.app.start_authorization(&admin(), c.id).await.unwrap_err();
        assert_eq!(invalid_config_field(&err), format!("oauth2_config.{field}"));
        // A forced refresh does not reach the provider either.
        let _ = h.app.refresh_connection(c.id, true).await;
    }
    // Deleting revokes nothing at the attacker's endpoint, and still deletes.
    h.app.delete_connection(&admin(), c.id).await.unwrap();
    assert_eq!(sent.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn address_literals_inside_the_network_are_refused_at_create() {
    let h = harness_with(Arc::new(untouchable()));
    for url in [
        "https://127.0.0.1/token",
        "https://localhost/token",
        "https://[::1]/token",
        "https://10.1.2.3/token",
        "https://172.16.0.1/token",
        "https://192.168.0.1/token",
        "https://169.254.169.254/token",
        "https://[fc00::1]/token",
        "https://[::ffff:10.0.0.1]/token",
        "https://100.64.0.1/token",
        "https://0.0.0.0/token",
    ] {
        for field in [
            "token_endpoint",
            "issuer",
            "userinfo_endpoint",
            "revocation_endpoint",
        ] {
            let err = h
                .app
                .create_connection(
                    &writer(),
                    create_input(
                        "internal",
                        "oauth2",
                        json!({"oauth2_config": {
                            "client_id": "c",
                            "authorization_endpoint": format!("{IDP}/auth"),
                            "token_endpoint": format!("{IDP}/token"),
                            field: url,
                        }}),
                    ),
                )
                .await
                .unwrap_err();
            assert!(
                matches!(&err, AppError::Invalid(DomainError::AddressNotAllowed { field: f, .. }) if f == &format!("config.oauth2_config.{field}")),
                "{url} as {field}: {err:?}"
            );
        }
        // A registered client is held to the same rule.
        let mut settings = Map::new();
        settings.insert("issuer".into(), json!(url));
        let err = h
            .app
            .create_oauth_client(
                &admin(),
                CreateOAuthClient {
                    name: "internal".into(),
                    project_id: Some(PROJECT.into()),
                    kind: "oauth2".into(),
                    client_id: "c".into(),
                    client_secret: None,
                    settings,
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AppError::Invalid(DomainError::AddressNotAllowed { field, .. }) if field == "issuer"),
            "{url}: {err:?}"
        );
    }
    assert_eq!(h.store.calls("insert_connection"), 0);
    assert_eq!(h.store.calls("insert_oauth_client"), 0);
}

#[tokio::test]
async fn an_operator_range_opens_only_that_range() {
    let p = parts(Arc::new(untouchable()));
    let mut s = settings();
    s.url_policy.private_networks = latchkey_domain::net::parse_networks("10.0.0.0/8").unwrap();
    let app = Latchkey::new(p.services, s);
    let create = |name: &str, url: &str| {
        create_input(
            name,
            "oauth2",
            json!({"oauth2_config": {"client_id": "c", "authorization_endpoint": format!("{IDP}/auth"), "token_endpoint": url}}),
        )
    };
    app.create_connection(&writer(), create("ten", "https://10.9.8.7/token"))
        .await
        .unwrap();
    let err = app
        .create_connection(&writer(), create("other", "https://192.168.0.1/token"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AppError::Invalid(DomainError::AddressNotAllowed { .. })
        ),
        "{err:?}"
    );
}

/// RFC 9207 without an issuer: explicit endpoints only. An `iss` from another origin than
/// the authorization endpoint is refused before the code goes anywhere.
#[tokio::test]
async fn without_an_issuer_an_iss_from_another_origin_is_refused_before_the_exchange() {
    let mut m = MockProviderClient::new();
    let exchanged = Arc::new(Mutex::new(0usize));
    let count = exchanged.clone();
    m.expect_exchange_code().returning(move |_| {
        *count.lock().unwrap() += 1;
        Ok(tokens("at", Some("rt"), Some(3600)))
    });
    m.expect_userinfo().never();
    m.expect_refresh().never();
    m.expect_discover().never();
    m.expect_revoke().never();
    let h = harness_with(Arc::new(m));
    let c = h
        .create(
            "explicit",
            "oauth2",
            json!({"oauth2_config": {
                "client_id": "c",
                "client_secret": "s",
                "authorization_endpoint": format!("{IDP}/oauth/authorize"),
                "token_endpoint": format!("{IDP}/oauth/token"),
            }}),
        )
        .await;
    let with_iss = |state: String, iss: Option<&str>| CallbackParams {
        state: Some(state),
        code: Some(SecretString::from("the-code")),
        iss: iss.map(str::to_owned),
        ..Default::default()
    };
    for evil in [
        ATTACKER,
        "https://idp.example:8443",
        "http://idp.example",
        "https://idp.example.attacker.example",
        "not a url",
    ] {
        let state = h.start(c.id).await;
        let err = h
            .app
            .complete_authorization(with_iss(state, Some(evil)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, CallbackError::IssuerMismatch),
            "{evil}: {err:?}"
        );
    }
    assert_eq!(*exchanged.lock().unwrap(), 0, "no token request");
    assert_eq!(
        h.store.connection(c.id).status(),
        latchkey_domain::Status::Incomplete
    );

    // The authorization endpoint's own origin, or no iss at all, is accepted.
    for iss in [Some(IDP), Some("https://idp.example/oauth"), None] {
        let state = h.start(c.id).await;
        h.app
            .complete_authorization(with_iss(state, iss))
            .await
            .unwrap();
    }
    assert_eq!(*exchanged.lock().unwrap(), 3);
}
