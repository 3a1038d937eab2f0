//! The lifecycle transitions driven through mockall mocks of the store, lease, cipher
//! and provider ports: each test states the exact calls and writes a transition makes
//! (created, authorized, refreshed, rotated token kept, transient failure, invalid_grant
//! confirmed by re-read, lapsed, reconnected, deleted with revocation). A call not
//! expected fails the test; so does an expected one that does not happen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use chrono::Duration;
use mockall::predicate::eq;
use secrecy::{ExposeSecret, SecretBox};
use serde_json::json;

use latchkey_app::{CallbackParams, Latchkey, RefreshOutcome};
use latchkey_domain::oauth::State;
use latchkey_domain::sealed::fields;
use latchkey_domain::{
    AuthSession, Connection, ConnectionConfig, ConnectionId, ConnectionName, ConnectionParts,
    ConnectionType, Grant, OAuthSettings, ProjectId, Provider, RefreshSchedule, Sealed, Status,
};
use latchkey_ports::{
    MockAuthSessionStore, MockCipher, MockConnectionStore, MockProviderClient,
    MockRefreshLeaseStore, OAuthError,
};
use support::*;

/// What the mock cipher makes of `plain` sealed as `field`: readable, so a test can
/// say which value was written where.
fn sealed(field: &str, plain: &str) -> Sealed {
    Sealed(format!("{field}|{plain}").into_bytes())
}

/// Expects exactly one seal of `plain` as `field` of connection `id`.
fn expect_seal(
    cipher: &mut MockCipher,
    id: ConnectionId,
    field: &'static str,
    plain: &'static str,
) {
    cipher
        .expect_seal()
        .withf(move |p, ctx| {
            ctx.field == field
                && ctx.record == id.to_string()
                && ctx.project == PROJECT
                && p.expose_secret() == plain.as_bytes()
        })
        .times(1)
        .returning(move |_, ctx| Ok(sealed(ctx.field, plain)));
}

/// Expects exactly one opening of what [`sealed`] made of `plain` as `field`.
fn expect_open(cipher: &mut MockCipher, field: &'static str, plain: &'static str) {
    cipher
        .expect_open()
        .withf(move |s, ctx| ctx.field == field && *s == sealed(field, plain))
        .times(1)
        .returning(move |_, _| {
            Ok(SecretBox::from(
                plain.as_bytes().to_vec().into_boxed_slice(),
            ))
        });
}

fn id() -> ConnectionId {
    ConnectionId::from_random_bytes([9; 16])
}

/// A Google connection (on the deployment's default client) in `status`, at version 7.
fn google(status: Status, grant: Option<Grant>) -> Connection {
    Connection::restore(ConnectionParts {
        id: id(),
        project_id: ProjectId::parse(PROJECT).unwrap(),
        name: ConnectionName::parse("gmail").unwrap(),
        kind: ConnectionType::OAuth(Provider::Google),
        status,
        config: ConnectionConfig::OAuth(OAuthSettings::default()),
        secrets: None,
        oauth2_client_id: None,
        grant,
        authorized_user: None,
        refresh: RefreshSchedule::default(),
        last_error: None,
        created_at: t0() - Duration::days(1),
        updated_at: t0() - Duration::days(1),
        last_used_at: None,
        version: 7,
    })
}

/// Grant `n`: access token `at-n`, refresh token `rt-n` when `refresh`, issued an hour
/// ago and expiring in `expires_in` seconds from now.
fn grant(n: u32, refresh: bool, expires_in: i64) -> Grant {
    Grant {
        access_token: sealed(fields::ACCESS_TOKEN, &format!("at-{n}")),
        refresh_token: refresh.then(|| sealed(fields::REFRESH_TOKEN, &format!("rt-{n}"))),
        token_type: "Bearer".into(),
        scopes: vec!["openid".into()],
        obtained_at: t0() - Duration::hours(1),
        expires_at: Some(t0() + Duration::seconds(expires_in)),
    }
}

/// A due, active Google connection holding grant 1.
fn due() -> Connection {
    let mut c = google(Status::Active, Some(grant(1, true, 60)));
    c.refresh.due_at = Some(t0() - Duration::seconds(1));
    c
}

struct Mocks {
    connections: MockConnectionStore,
    sessions: MockAuthSessionStore,
    leases: MockRefreshLeaseStore,
    cipher: MockCipher,
    provider: MockProviderClient,
}

impl Mocks {
    fn new() -> Self {
        Self {
            connections: MockConnectionStore::new(),
            sessions: MockAuthSessionStore::new(),
            leases: MockRefreshLeaseStore::new(),
            cipher: MockCipher::new(),
            provider: MockProviderClient::new(),
        }
    }

    /// The app over the mocks; clients, keys and activity stay in the fake store.
    fn app(self) -> Latchkey {
        let mut p = parts(Arc::new(self.provider));
        p.services.connections = Arc::new(self.connections);
        p.services.sessions = Arc::new(self.sessions);
        p.services.leases = Arc::new(self.leases);
        p.services.cipher = Arc::new(self.cipher);
        Latchkey::new(p.services, settings())
    }
}

/// The lease owner names this process's worker.
fn ours(owner: &str) -> bool {
    owner.starts_with("test-worker:")
}

#[tokio::test]
async fn created_seals_the_secret_and_inserts_the_connection_with_its_event() {
    let mut m = Mocks::new();
    m.cipher
        .expect_seal()
        .withf(|p, ctx| {
            ctx.field == fields::SECRETS
                && ctx.project == PROJECT
                && String::from_utf8_lossy(p.expose_secret()).contains("k-123")
        })
        .times(1)
        .returning(|_, _| Ok(Sealed(b"sealed-secrets".to_vec())));
    m.connections
        .expect_insert_connection_capped()
        .withf(|c, ev, cap| {
            c.status() == Status::Active
                && c.version == 1
                && c.grant().is_none()
                && c.secrets == Some(Sealed(b"sealed-secrets".to_vec()))
                && ev.connection_id == c.id
                && ev.kind == "created"
                && ev.from.is_none()
                && ev.to == Status::Active
                && *cap == settings().max_connections_per_project
        })
        .times(1)
        .returning(|_, _, _| Ok(()));
    let app = m.app();
    let c = app
        .create_connection(
            &admin(),
            create_input("k", "api_key", json!({"api_key": "k-123"})),
        )
        .await
        .unwrap();
    assert_eq!(c.status(), Status::Active);
}

/// Expects the consent session of state `state-1` for connection [`id`] to be taken.
fn expect_session(m: &mut Mocks) {
    m.sessions
        .expect_take_auth_session()
        .with(eq(State::hash("state-1")))
        .times(1)
        .returning(|hash| {
            Ok(Some(AuthSession {
                state_hash: hash.to_owned(),
                connection_id: id(),
                project_id: ProjectId::parse(PROJECT).unwrap(),
                pkce_verifier: None,
                token_endpoint: "https://oauth2.googleapis.com/token".into(),
                redirect_uri: settings().callback_url,
                issuer: None,
                require_iss: false,
                created_at: t0(),
                expires_at: t0() + Duration::minutes(10),
            }))
        });
}

/// The callback of a consent flow on `before`: exchange, userinfo, the two seals, and
/// one compare-and-set write of the new grant with an `authorized` event from `from`.
async fn authorize_from(before: Connection) {
    let from = before.status();
    let mut m = Mocks::new();
    let read = before.clone();
    // Once to check the callback, once more for the read-modify-write.
    m.connections
        .expect_get_connection()
        .with(eq(id()))
        .times(2)
        .returning(move |_| Ok(Some(read.clone())));
    m.provider
        .expect_exchange_code()
        .withf(|r| {
            r.token_endpoint == "https://oauth2.googleapis.com/token"
                && r.code.expose_secret() == "code-1"
                && r.pkce_verifier.is_none()
        })
        .times(1)
        .returning(|_| Ok(tokens("at-2", Some("rt-2"), Some(3600))));
    m.provider
        .expect_userinfo()
        .withf(|_, token| token.expose_secret() == "at-2")
        .times(1)
        .returning(|_, _| Ok(json!({"email": "a@example.com", "sub": "42"})));
    expect_seal(&mut m.cipher, id(), fields::ACCESS_TOKEN, "at-2");
    expect_seal(&mut m.cipher, id(), fields::REFRESH_TOKEN, "rt-2");
    m.connections
        .expect_update_connection()
        .withf(move |c, events| {
            let g = c.grant().unwrap();
            c.version == 7
                && c.status() == Status::Active
                && g.access_token == sealed(fields::ACCESS_TOKEN, "at-2")
                && g.refresh_token == Some(sealed(fields::REFRESH_TOKEN, "rt-2"))
                && g.expires_at == Some(t0() + Duration::hours(1))
                && c.refresh.due_at.is_some()
                && c.refresh.failures == 0
                && c.last_error.is_none()
                && c.authorized_user.is_some()
                && events.len() == 1
                && events[0].kind == "authorized"
                && events[0].from == Some(from)
                && events[0].to == Status::Active
        })
        .times(1)
        .returning(|_, _| Ok(8));
    expect_session(&mut m);
    let app = m.app();
    let outcome = app
        .complete_authorization(CallbackParams {
            state: Some("state-1".into()),
            code: Some("code-1".to_owned().into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Active);
}

#[tokio::test]
async fn authorized_stores_the_first_grant_in_one_write() {
    authorize_from(google(Status::Incomplete, None)).await;
}

#[tokio::test]
async fn reconnected_replaces_the_expired_grant_in_one_write() {
    let mut expired = google(Status::Expired, Some(grant(1, true, -60)));
    expired.last_error = Some("the provider rejected the refresh token".into());
    authorize_from(expired).await;
}

/// The refresh of [`due`] up to the provider call: `reads` reads of the connection
/// (the first before the claim; 0: the test scripts them), the refresh token opened,
/// the lease claimed.
fn expect_refresh_start(m: &mut Mocks, reads: usize) {
    if reads > 0 {
        m.connections
            .expect_get_connection()
            .with(eq(id()))
            .times(reads)
            .returning(|_| Ok(Some(due())));
    }
    expect_open(&mut m.cipher, fields::REFRESH_TOKEN, "rt-1");
    m.leases
        .expect_claim_refresh()
        .withf(|cid, lease, now| *cid == id() && ours(&lease.owner) && *now == t0())
        .times(1)
        .returning(|_, lease, _| {
            let mut c = due();
            c.refresh.lease = Some(lease.clone());
            Ok(Some(c))
        });
}

/// Scripts the provider's answer to the refresh of [`expect_refresh_start`].
fn answer_refresh(
    m: &mut Mocks,
    answer: impl Fn() -> Result<latchkey_domain::oauth::TokenResponse, OAuthError> + Send + 'static,
) {
    m.provider
        .expect_refresh()
        .withf(|r| {
            r.refresh_token.expose_secret() == "rt-1"
                && r.token_endpoint == "https://oauth2.googleapis.com/token"
        })
        .times(1)
        .returning(move |_| answer());
}

async fn refresh(m: Mocks) -> RefreshOutcome {
    let app = Arc::new(m.app());
    app.refresh_connection(id(), false).await.unwrap()
}

#[tokio::test]
async fn refreshed_saves_the_new_grant_under_the_lease() {
    let mut m = Mocks::new();
    expect_refresh_start(&mut m, 1);
    answer_refresh(&mut m, || Ok(tokens("at-2", Some("rt-2"), Some(3600))));
    expect_seal(&mut m.cipher, id(), fields::ACCESS_TOKEN, "at-2");
    expect_seal(&mut m.cipher, id(), fields::REFRESH_TOKEN, "rt-2");
    m.leases
        .expect_save_refreshed_grant()
        .withf(|cid, owner, version, g, schedule, at| {
            *cid == id()
                && ours(owner)
                && *version == 7
                && g.access_token == sealed(fields::ACCESS_TOKEN, "at-2")
                && g.refresh_token == Some(sealed(fields::REFRESH_TOKEN, "rt-2"))
                && g.obtained_at == t0()
                && schedule.failures == 0
                && schedule.lease.is_none()
                && schedule.due_at == Some(t0() + Duration::minutes(55))
                && *at == t0()
        })
        .times(1)
        .returning(|_, _, _, _, _, _| Ok(()));
    assert_eq!(refresh(m).await, RefreshOutcome::Refreshed);
}

#[tokio::test]
async fn a_refresh_token_the_provider_did_not_resend_is_kept() {
    let mut m = Mocks::new();
    expect_refresh_start(&mut m, 1);
    answer_refresh(&mut m, || Ok(tokens("at-2", None, Some(3600))));
    // Only the access token is sealed: the stored refresh token stays as it was.
    expect_seal(&mut m.cipher, id(), fields::ACCESS_TOKEN, "at-2");
    m.leases
        .expect_save_refreshed_grant()
        .withf(|_, _, _, g, _, _| {
            g.access_token == sealed(fields::ACCESS_TOKEN, "at-2")
                && g.refresh_token == Some(sealed(fields::REFRESH_TOKEN, "rt-1"))
        })
        .times(1)
        .returning(|_, _, _, _, _, _| Ok(()));
    assert_eq!(refresh(m).await, RefreshOutcome::Refreshed);
}

#[tokio::test]
async fn a_transient_failure_gives_the_lease_back_with_a_back_off_and_keeps_the_grant() {
    let mut m = Mocks::new();
    expect_refresh_start(&mut m, 1);
    answer_refresh(&mut m, || {
        Err(OAuthError::Transient {
            reason: "503".into(),
            retry_after: None,
        })
    });
    m.leases
        .expect_release_refresh()
        .withf(|cid, owner, version, schedule, error| {
            *cid == id()
                && ours(owner)
                && *version == 7
                && schedule.failures == 1
                && schedule.lease.is_none()
                // Retried before the token (60 s left) lapses.
                && schedule.due_at.is_some_and(|d| d > t0() && d < t0() + Duration::seconds(60))
                && error.as_deref().is_some_and(|e| e.contains("will retry"))
        })
        .times(1)
        .returning(|_, _, _, _, _| Ok(true));
    assert!(matches!(refresh(m).await, RefreshOutcome::Failed(_)));
}

fn answer_invalid_grant(m: &mut Mocks) {
    answer_refresh(m, || Err(OAuthError::InvalidGrant(Some("revoked".into()))));
}

#[tokio::test]
async fn invalid_grant_expires_the_connection_once_a_re_read_confirms_the_grant() {
    let mut m = Mocks::new();
    answer_invalid_grant(&mut m);
    // Read before the claim, then re-read by the read-modify-write: still the grant
    // that was refused.
    expect_refresh_start(&mut m, 2);
    m.connections
        .expect_update_connection()
        .withf(|c, events| {
            c.version == 7
                && c.status() == Status::Expired
                && c.refresh == RefreshSchedule::default()
                && c.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("invalid_grant): revoked"))
                && events.len() == 1
                && events[0].kind == "refresh_rejected"
                && events[0].from == Some(Status::Active)
                && events[0].to == Status::Expired
        })
        .times(1)
        .returning(|_, _| Ok(8));
    m.leases
        .expect_drop_lease()
        .withf(|cid, owner| *cid == id() && ours(owner))
        .times(1)
        .returning(|_, _| Ok(true));
    assert!(matches!(refresh(m).await, RefreshOutcome::Expired(r) if r.contains("revoked")));
}

#[tokio::test]
async fn invalid_grant_for_a_grant_replaced_meanwhile_writes_nothing() {
    let mut m = Mocks::new();
    answer_invalid_grant(&mut m);
    expect_refresh_start(&mut m, 0);
    let mut reads = 0;
    m.connections
        .expect_get_connection()
        .times(2)
        .returning(move |_| {
            reads += 1;
            // The second read is the re-read: a reconnect stored grant 2 meanwhile.
            Ok(Some(if reads == 1 {
                due()
            } else {
                google(Status::Active, Some(grant(2, true, 3600)))
            }))
        });
    m.leases
        .expect_drop_lease()
        .times(1)
        .returning(|_, _| Ok(true));
    assert_eq!(refresh(m).await, RefreshOutcome::Superseded);
}

#[tokio::test]
async fn lapsed_expires_a_grant_without_refresh_token_under_a_lease() {
    let lapsed = || google(Status::Active, Some(grant(1, false, -1)));
    let mut m = Mocks::new();
    m.leases
        .expect_past_expiry()
        .times(1)
        .returning(|_, _| Ok(vec![id()]));
    m.connections
        .expect_get_connection()
        .times(1)
        .returning(move |_| Ok(Some(lapsed())));
    m.leases
        .expect_claim_refresh()
        .withf(|cid, lease, _| *cid == id() && ours(&lease.owner))
        .times(1)
        .returning(move |_, _, _| Ok(Some(lapsed())));
    m.connections
        .expect_update_connection()
        .withf(|c, events| {
            c.status() == Status::Expired
                && c.version == 7
                && c.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("issued no refresh token"))
                && events.len() == 1
                && events[0].kind == "lapsed"
                && events[0].from == Some(Status::Active)
        })
        .times(1)
        .returning(|_, _| Ok(8));
    m.leases
        .expect_drop_lease()
        .withf(|cid, owner| *cid == id() && ours(owner))
        .times(1)
        .returning(|_, _| Ok(true));
    let app = m.app();
    assert_eq!(app.run_expiry_cycle().await.unwrap(), 1);
}

#[tokio::test]
async fn deleted_takes_the_lease_revokes_the_refresh_token_then_deletes() {
    let mut m = Mocks::new();
    let active = || google(Status::Active, Some(grant(1, true, 3600)));
    // Read before the lease, and again once it is held.
    m.connections
        .expect_get_connection()
        .times(2)
        .returning(move |_| Ok(Some(active())));
    m.leases
        .expect_claim_refresh()
        .withf(|cid, lease, _| *cid == id() && ours(&lease.owner))
        .times(1)
        .returning(move |_, _, _| Ok(Some(active())));
    expect_open(&mut m.cipher, fields::REFRESH_TOKEN, "rt-1");
    m.provider
        .expect_revoke()
        .withf(|r| {
            r.revocation_endpoint == "https://oauth2.googleapis.com/revoke"
                && r.token.expose_secret() == "rt-1"
                && r.token_type_hint == "refresh_token"
        })
        .times(1)
        .returning(|_| Ok(()));
    m.connections
        .expect_delete_connection()
        .with(eq(id()))
        .times(1)
        .returning(|_| Ok(true));
    let app = m.app();
    app.delete_connection(&admin(), id()).await.unwrap();
}
