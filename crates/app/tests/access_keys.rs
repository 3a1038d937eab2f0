//! Access keys: issued by the admin, stored as a hash, authenticated by their token.

mod support;

use std::sync::Arc;

use secrecy::ExposeSecret;
use serde_json::json;

use latchkey_app::{AppError, Principal};
use latchkey_domain::{hash_key_secret, AccessKeyId, Scope};
use latchkey_ports::MockProviderClient;

use support::*;

fn scopes(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

fn app() -> Harness {
    harness_with(Arc::new(MockProviderClient::new()))
}

#[tokio::test]
async fn only_the_admin_creates_access_keys() {
    let h = app();
    for caller in [full_key(PROJECT), key(PROJECT, &[])] {
        let err = h
            .app
            .create_access_key(&caller, PROJECT, "ci", &scopes(&["credentials:read"]))
            .await
            .unwrap_err();
        assert!(matches!(err, AppError::Forbidden(_)), "{err:?}");
    }
    assert_eq!(h.store.calls("insert_access_key"), 0);
    let list = h
        .app
        .list_access_keys(&full_key(PROJECT))
        .await
        .unwrap_err();
    assert!(matches!(list, AppError::Forbidden(_)), "{list:?}");
}

#[tokio::test]
async fn an_issued_token_authenticates_as_its_key() {
    let h = app();
    let issued = h
        .app
        .create_access_key(
            &admin(),
            PROJECT,
            "ci",
            &scopes(&["credentials:read", "connections:read", "credentials:read"]),
        )
        .await
        .unwrap();
    let token = issued.token.expose_secret().to_owned();
    assert!(token.starts_with("lk_"), "{token}");
    assert_eq!(
        issued.key.scopes,
        [Scope::ConnectionsRead, Scope::CredentialsRead]
    );

    let principal = h.app.authenticate_key(&token).await.unwrap();
    assert_eq!(
        principal,
        Some(Principal::Key {
            id: issued.key.id,
            project: issued.key.project_id.clone(),
            scopes: vec![Scope::ConnectionsRead, Scope::CredentialsRead],
        })
    );

    // It works for its project's credentials, and only within its scopes.
    let principal = principal.unwrap();
    let c = h.create("k", "api_key", json!({"api_key": "sk-1"})).await;
    h.app
        .fetch_credentials(&principal, c.id, None)
        .await
        .unwrap();
    let write = h.app.delete_connection(&principal, c.id).await.unwrap_err();
    assert!(matches!(write, AppError::Forbidden(_)), "{write:?}");
}

#[tokio::test]
async fn a_wrong_secret_or_unknown_id_does_not_authenticate() {
    let h = app();
    let issued = h
        .app
        .create_access_key(&admin(), PROJECT, "ci", &scopes(&["credentials:read"]))
        .await
        .unwrap();
    let token = issued.token.expose_secret().to_owned();
    // `lk_` + 32 hex digits + `_` + secret (which may itself contain `_`).
    let (prefix, secret) = token.split_at(3 + 32 + 1);

    let wrong_secret = format!("{prefix}{}", "A".repeat(secret.len()));
    let unknown_id = format!(
        "lk_{}_{secret}",
        AccessKeyId::from_random_bytes([0xEE; 16])
            .as_uuid()
            .simple()
    );
    let mut tampered = token.clone();
    tampered.push('x');
    for bad in [
        wrong_secret.as_str(),
        unknown_id.as_str(),
        tampered.as_str(),
        "",
        "lk_",
        "lk_not-a-uuid_secret",
        &token[3..],
        "Bearer whatever",
    ] {
        assert_eq!(h.app.authenticate_key(bad).await.unwrap(), None, "{bad:?}");
    }
    // The genuine token still works after all those attempts.
    assert!(h.app.authenticate_key(&token).await.unwrap().is_some());
}

#[tokio::test]
async fn the_store_keeps_only_a_hash_of_the_secret() {
    let h = app();
    let issued = h
        .app
        .create_access_key(&admin(), PROJECT, "ci", &scopes(&["connections:write"]))
        .await
        .unwrap();
    let token = issued.token.expose_secret().to_owned();
    let secret = &token[3 + 32 + 1..];
    let stored = h.store.access_keys();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0], issued.key);
    assert_eq!(stored[0].secret_hash, hash_key_secret(secret));
    assert_ne!(stored[0].secret_hash, secret);
    let dump = format!("{:?}", stored[0]);
    assert!(!dump.contains(secret) && !dump.contains(&token), "{dump}");
}

#[tokio::test]
async fn bad_key_requests_are_invalid_and_a_deleted_key_stops_working() {
    let h = app();
    for bad in [scopes(&[]), scopes(&["everything"])] {
        let err = h
            .app
            .create_access_key(&admin(), PROJECT, "ci", &bad)
            .await
            .unwrap_err();
        assert!(matches!(err, AppError::Invalid(_)), "{err:?}");
    }
    let err = h
        .app
        .create_access_key(
            &admin(),
            "bad project",
            "ci",
            &scopes(&["connections:read"]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, AppError::Invalid(_)), "{err:?}");

    let issued = h
        .app
        .create_access_key(&admin(), PROJECT, "ci", &scopes(&["connections:read"]))
        .await
        .unwrap();
    assert_eq!(h.app.list_access_keys(&admin()).await.unwrap().len(), 1);
    h.app
        .delete_access_key(&admin(), issued.key.id)
        .await
        .unwrap();
    assert_eq!(
        h.app
            .authenticate_key(issued.token.expose_secret())
            .await
            .unwrap(),
        None
    );
    let again = h
        .app
        .delete_access_key(&admin(), issued.key.id)
        .await
        .unwrap_err();
    assert!(matches!(again, AppError::NotFound(_)), "{again:?}");
}
