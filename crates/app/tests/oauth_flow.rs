//! The consent flow: the consent URL and its session, and every way a callback is
//! accepted or refused. The provider is a mockall mock, so every provider call is an
//! expectation: a refused callback must make none.

mod support;

use std::sync::Arc;

use chrono::Duration;
use mockall::Sequence;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use latchkey_app::{CallbackError, CallbackParams};
use latchkey_domain::oauth::{Pkce, State, STATE_TTL};
use latchkey_domain::sealed::fields;
use latchkey_domain::{SealContext, Status};
use latchkey_ports::{MockProviderClient, OAuthError};

use support::*;

const GOOGLE_TOKEN: &str = "https://oauth2.googleapis.com/token";
const GOOGLE_USERINFO: &str = "https://openidconnect.googleapis.com/v1/userinfo";
const CALLBACK: &str = "https://latchkey.example/v1/connections/oauth2/callback";

/// A provider that must not be called at all.
fn untouchable() -> MockProviderClient {
    let mut m = MockProviderClient::new();
    m.expect_exchange_code().never();
    m.expect_userinfo().never();
    m.expect_refresh().never();
    m.expect_discover().never();
    m.expect_revoke().never();
    m
}

/// Expects one successful code exchange answering `access`/`refresh`, and its userinfo.
fn expect_exchange(
    m: &mut MockProviderClient,
    seq: &mut Sequence,
    access: &'static str,
    refresh: &'static str,
) {
    m.expect_exchange_code()
        .times(1)
        .in_sequence(seq)
        .returning(move |_| Ok(tokens(access, Some(refresh), Some(3600))));
    m.expect_userinfo()
        .times(1)
        .in_sequence(seq)
        .returning(|_, _| Ok(json!({"email": "ada@example.com"})));
}

fn callback(state: &str) -> CallbackParams {
    CallbackParams {
        state: Some(state.into()),
        code: Some(SecretString::from("the-code")),
        ..Default::default()
    }
}

async fn refused(h: &Harness, params: CallbackParams) -> CallbackError {
    match h.app.complete_authorization(params).await {
        Ok(o) => panic!("the callback was accepted: {o:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------
// start
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn start_authorization_makes_a_google_consent_url_and_a_hashed_session() {
    let h = harness_with(Arc::new(untouchable()));
    let c = h.create("drive", "google", json!({})).await;
    let url = h.app.start_authorization(&admin(), c.id).await.unwrap();

    assert_eq!(url.host_str(), Some("accounts.google.com"));
    let q = |k| query(&url, k);
    assert_eq!(q("response_type").as_deref(), Some("code"));
    assert_eq!(q("client_id").as_deref(), Some("google-client"));
    assert_eq!(q("redirect_uri").as_deref(), Some(CALLBACK));
    assert_eq!(q("code_challenge_method").as_deref(), Some("S256"));
    // Google's quirks from the catalog: without them no refresh token comes back.
    assert_eq!(q("access_type").as_deref(), Some("offline"));
    assert_eq!(q("prompt").as_deref(), Some("consent"));
    assert!(q("scope").unwrap().contains("drive.readonly"));
    let state = q("state").unwrap();
    let challenge = q("code_challenge").unwrap();
    assert_eq!(state.len(), 43, "256 bits of state");

    let sessions = h.store.sessions();
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    assert_eq!(s.state_hash, State::hash(&state));
    assert!(
        !format!("{s:?}").contains(&state),
        "the state itself is not stored"
    );
    assert_eq!(s.connection_id, c.id);
    assert_eq!(s.token_endpoint, GOOGLE_TOKEN);
    assert_eq!(s.redirect_uri, CALLBACK);
    assert_eq!(s.issuer.as_deref(), Some("https://accounts.google.com"));
    assert_eq!(s.expires_at, t0() + STATE_TTL);
    // The verifier is sealed to this session, and it is the one behind the challenge.
    let sealed = s.pkce_verifier.as_ref().expect("PKCE is on for Google");
    let verifier = h.cipher.peek(
        sealed,
        &SealContext::new(PROJECT, &s.state_hash, fields::PKCE_VERIFIER),
    );
    assert_eq!(Pkce::challenge_of(&verifier), challenge);
    assert!(!sealed
        .0
        .windows(verifier.len())
        .any(|w| w == verifier.as_bytes()));

    // A second start makes another, independent session.
    let again = h.start(c.id).await;
    assert_ne!(again, state);
    assert_eq!(h.store.sessions().len(), 2);
}

#[tokio::test]
async fn start_authorization_follows_each_providers_catalog_entry() {
    let h = harness_with(Arc::new(untouchable()));
    // Box does not do PKCE.
    let b = h.create("box", "box", json!({})).await;
    let url = h.app.start_authorization(&admin(), b.id).await.unwrap();
    assert_eq!(query(&url, "code_challenge"), None);
    assert!(h.store.sessions()[0].pkce_verifier.is_none());
    // Microsoft always asks for offline_access, and fills in the tenant.
    let m = h
        .create(
            "ms",
            "microsoft",
            json!({"scopes": ["User.Read"], "oauth2_config": {"client_id": "c", "client_secret": "s", "tenant": "contoso"}}),
        )
        .await;
    let url = h.app.start_authorization(&admin(), m.id).await.unwrap();
    assert_eq!(
        query(&url, "scope").as_deref(),
        Some("User.Read offline_access")
    );
    assert!(url.path().starts_with("/contoso/"), "{url}");
}

#[tokio::test]
async fn start_authorization_of_a_simple_connection_is_refused() {
    let h = harness_with(Arc::new(untouchable()));
    let c = h.create("k", "api_key", json!({"api_key": "a"})).await;
    let err = h.app.start_authorization(&admin(), c.id).await.unwrap_err();
    assert!(
        matches!(
            err,
            latchkey_app::AppError::State {
                code: latchkey_app::StateCode::NotOAuth,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(h.store.sessions().is_empty());
}

// ---------------------------------------------------------------------------------------
// callback refusals: no provider call
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_or_missing_state_is_refused_without_calling_the_provider() {
    let h = harness_with(Arc::new(untouchable()));
    let c = h.create("g", "google", json!({})).await;
    let _real = h.start(c.id).await;
    let err = refused(&h, callback("made-up-state")).await;
    assert!(matches!(err, CallbackError::UnknownState), "{err:?}");
    let err = refused(&h, CallbackParams::default()).await;
    assert!(
        matches!(err, CallbackError::MissingParameter("state")),
        "{err:?}"
    );
    assert_eq!(h.store.connection(c.id), c);
}

#[tokio::test]
async fn a_replayed_state_is_refused_without_a_second_exchange() {
    let mut m = MockProviderClient::new();
    let mut seq = Sequence::new();
    expect_exchange(&mut m, &mut seq, "at-1", "rt-1");
    m.expect_refresh().never();
    let h = harness_with(Arc::new(m));
    let c = h.create("g", "google", json!({})).await;
    let state = h.start(c.id).await;

    h.app
        .complete_authorization(callback(&state))
        .await
        .unwrap();
    let after_first = h.store.connection(c.id);
    let err = refused(&h, callback(&state)).await;
    assert!(matches!(err, CallbackError::UnknownState), "{err:?}");
    assert_eq!(h.store.connection(c.id), after_first);
}

#[tokio::test]
async fn an_expired_state_is_refused_without_calling_the_provider() {
    let h = harness_with(Arc::new(untouchable()));
    let c = h.create("g", "google", json!({})).await;
    let state = h.start(c.id).await;
    h.clock.advance(Duration::minutes(11));
    let err = refused(&h, callback(&state)).await;
    assert!(matches!(err, CallbackError::ExpiredState), "{err:?}");
    // Refused and used up: it does not work a second time either.
    let err = refused(&h, callback(&state)).await;
    assert!(matches!(err, CallbackError::UnknownState), "{err:?}");
    assert_eq!(h.store.connection(c.id).status(), Status::Incomplete);
}

#[tokio::test]
async fn a_wrong_issuer_is_refused_before_any_provider_call() {
    let h = harness_with(Arc::new(untouchable()));
    let c = h.create("g", "google", json!({})).await;
    let state = h.start(c.id).await;
    let err = refused(
        &h,
        CallbackParams {
            iss: Some("https://evil.example".into()),
            ..callback(&state)
        },
    )
    .await;
    assert!(matches!(err, CallbackError::IssuerMismatch), "{err:?}");
    assert_eq!(h.store.connection(c.id), c);
}

#[tokio::test]
async fn access_denied_keeps_the_status_and_records_the_error() {
    let h = harness_with(Arc::new(untouchable()));
    let c = h.create("g", "google", json!({})).await;
    let state = h.start(c.id).await;
    let err = refused(
        &h,
        CallbackParams {
            state: Some(state),
            code: None,
            error: Some("access_denied".into()),
            error_description: Some("The user said no".into()),
            iss: None,
        },
    )
    .await;
    match err {
        CallbackError::Denied(m) => assert_eq!(m, "access_denied: The user said no"),
        other => panic!("{other:?}"),
    }
    let stored = h.store.connection(c.id);
    assert_eq!(stored.status(), Status::Incomplete);
    assert_eq!(stored.grant(), None);
    assert!(
        stored
            .last_error
            .as_deref()
            .unwrap()
            .contains("access_denied"),
        "{:?}",
        stored.last_error
    );
}

// ---------------------------------------------------------------------------------------
// callback success
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_successful_callback_stores_the_grant_sealed_and_activates() {
    let mut m = MockProviderClient::new();
    m.expect_refresh().never();
    let h_clock = std::sync::Arc::new(std::sync::Mutex::new(None::<FakeClock>));
    let clock_for_mock = h_clock.clone();
    let challenge = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let challenge_for_mock = challenge.clone();
    m.expect_exchange_code()
        .times(1)
        .withf(move |r| {
            r.token_endpoint == GOOGLE_TOKEN
                && r.code.expose_secret() == "the-code"
                && r.redirect_uri == CALLBACK
                && r.client.client_id == "google-client"
                && r.pkce_verifier.as_ref().is_some_and(|v| {
                    Pkce::challenge_of(v.expose_secret()) == *challenge_for_mock.lock().unwrap()
                })
        })
        .returning(move |_| {
            // The provider takes 30 s to answer: the expiry must count from the request.
            if let Some(c) = clock_for_mock.lock().unwrap().as_ref() {
                c.advance(Duration::seconds(30));
            }
            Ok(tokens("at-1", Some("rt-1"), Some(3600)))
        });
    m.expect_userinfo()
        .times(1)
        .withf(|endpoint, token| endpoint == GOOGLE_USERINFO && token.expose_secret() == "at-1")
        .returning(|_, _| Ok(json!({"email": "ada@example.com", "sub": "42"})));
    let h = harness_with(Arc::new(m));
    *h_clock.lock().unwrap() = Some(h.clock.clone());

    let c = h.create("drive", "google", json!({})).await;
    let url = h.app.start_authorization(&admin(), c.id).await.unwrap();
    *challenge.lock().unwrap() = query(&url, "code_challenge").unwrap();
    let outcome = h
        .app
        .complete_authorization(CallbackParams {
            iss: Some("https://accounts.google.com".into()),
            ..callback(&query(&url, "state").unwrap())
        })
        .await
        .unwrap();
    assert_eq!(outcome.connection_id, c.id);
    assert_eq!(outcome.status, Status::Active);
    assert_eq!(outcome.name, "drive");

    let stored = h.store.connection(c.id);
    assert_eq!(stored.status(), Status::Active);
    let g = stored.grant().unwrap();
    for (sealed, plain) in [
        (&g.access_token, "at-1"),
        (g.refresh_token.as_ref().unwrap(), "rt-1"),
    ] {
        assert!(!sealed.0.windows(plain.len()).any(|w| w == plain.as_bytes()));
    }
    assert_eq!(h.stored_tokens(c.id), ("at-1".into(), Some("rt-1".into())));
    assert_eq!(g.obtained_at, t0());
    assert_eq!(g.expires_at, Some(t0() + Duration::seconds(3600)));
    assert!(g.scopes.iter().any(|s| s.ends_with("drive.readonly")));
    assert_eq!(
        stored.refresh.due_at,
        Some(t0() + Duration::seconds(3600) - Duration::minutes(5))
    );
    assert_eq!(
        stored.authorized_user,
        Some(json!({"email": "ada@example.com", "sub": "42"}))
    );
    assert_eq!(stored.last_error, None);
    let events = h.store.events(c.id);
    let last = events.last().unwrap();
    assert_eq!(last.kind, "authorized");
    assert_eq!(
        (last.from, last.to),
        (Some(Status::Incomplete), Status::Active)
    );
    assert!(h.store.sessions().is_empty(), "the session is used up");
}

#[tokio::test]
async fn reauthorizing_an_expired_connection_reactivates_it_in_place() {
    let mut m = MockProviderClient::new();
    let mut seq = Sequence::new();
    expect_exchange(&mut m, &mut seq, "at-1", "rt-1");
    expect_exchange(&mut m, &mut seq, "at-2", "rt-2");
    m.expect_refresh().never();
    let h = harness_with(Arc::new(m));
    let c = h.create("drive", "google", json!({})).await;
    let state = h.start(c.id).await;
    h.app
        .complete_authorization(callback(&state))
        .await
        .unwrap();
    h.app
        .fetch_credentials(&admin(), c.id, Some("flow-7"))
        .await
        .unwrap();
    h.store.write_behind_our_back(c.id, |c| {
        *c = with_status(c.clone(), Status::Expired);
        c.last_error = Some("refresh token revoked".into());
    });

    let state = h.start(c.id).await;
    let outcome = h
        .app
        .complete_authorization(callback(&state))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Active);
    let stored = h.store.connection(c.id);
    assert_eq!((stored.id, stored.name.as_str()), (c.id, "drive"));
    assert_eq!(stored.status(), Status::Active);
    assert_eq!(stored.last_error, None);
    assert_eq!(h.stored_tokens(c.id), ("at-2".into(), Some("rt-2".into())));
    let usages = h.app.get_connection(&admin(), c.id).await.unwrap().used_by;
    assert_eq!(usages.len(), 1);
    assert_eq!(usages[0].flow_id.as_str(), "flow-7");
    let last = h.store.events(c.id).pop().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.from),
        ("authorized", Some(Status::Expired))
    );
}

#[tokio::test]
async fn a_failed_reauthorization_leaves_the_old_grant_in_place() {
    let mut m = MockProviderClient::new();
    let mut seq = Sequence::new();
    expect_exchange(&mut m, &mut seq, "at-1", "rt-1");
    m.expect_exchange_code()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Err(OAuthError::InvalidGrant(Some("code already used".into()))));
    m.expect_refresh().never();
    let h = harness_with(Arc::new(m));
    let c = h.create("drive", "google", json!({})).await;
    let state = h.start(c.id).await;
    h.app
        .complete_authorization(callback(&state))
        .await
        .unwrap();
    let before = h.store.connection(c.id);

    // A provider that refuses the code...
    let state = h.start(c.id).await;
    let err = refused(&h, callback(&state)).await;
    assert!(
        matches!(err, CallbackError::Exchange(OAuthError::InvalidGrant(_))),
        "{err:?}"
    );
    // ...and a user who cancels the consent screen.
    let state = h.start(c.id).await;
    let err = refused(
        &h,
        CallbackParams {
            state: Some(state),
            error: Some("access_denied".into()),
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(err, CallbackError::Denied(_)), "{err:?}");

    let after = h.store.connection(c.id);
    assert_eq!(after.status(), Status::Active);
    assert_eq!(after.grant(), before.grant());
    assert_eq!(h.stored_tokens(c.id), ("at-1".into(), Some("rt-1".into())));
    assert!(after
        .last_error
        .as_deref()
        .unwrap()
        .contains("access_denied"));
    let app_view = h.app.fetch_credentials(&admin(), c.id, None).await.unwrap();
    assert_eq!(access_token(&app_view), "at-1");
}

#[tokio::test]
async fn a_callback_for_a_deleted_connection_says_so() {
    let h = harness_with(Arc::new(untouchable()));
    let c = h.create("g", "google", json!({})).await;
    let state = h.start(c.id).await;
    // Deleting removes the pending session too; a stale link is then unknown.
    h.app.delete_connection(&admin(), c.id).await.unwrap();
    let err = refused(&h, callback(&state)).await;
    assert!(matches!(err, CallbackError::UnknownState), "{err:?}");
}
