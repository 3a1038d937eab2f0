//! Records to store, built the same way for every implementation under test.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use latchkey_domain::{
    AccessKey, AccessKeyId, AuthSession, Connection, ConnectionConfig, ConnectionEvent,
    ConnectionId, ConnectionName, ConnectionParts, ConnectionType, EventId, FlowId, Grant, Lease,
    OAuthClient, OAuthClientId, OAuthSettings, ProjectId, Provider, RefreshSchedule, Scope, Sealed,
    Status,
};

use crate::{ActivityStore, EventQuery};

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A process-unique number with random high bits, so ids of one run never repeat and
/// runs differ.
fn unique() -> u64 {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(n);
    (h.finish() & 0xffff_ffff_0000_0000) | n
}

pub fn flow(f: &str) -> FlowId {
    FlowId::parse(f).unwrap()
}

/// Every event of a connection (one big page).
pub async fn all_events<S: ActivityStore + ?Sized>(
    store: &S,
    id: ConnectionId,
) -> Vec<ConnectionEvent> {
    let page = store
        .list_events(
            id,
            &EventQuery {
                after: None,
                limit: 1000,
            },
        )
        .await
        .unwrap();
    assert!(page.next_cursor.is_none());
    page.events
}

/// A fixed instant `s` seconds after a base time (millisecond precision: what the
/// store keeps).
pub fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
}

pub fn t_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
}

fn bytes() -> [u8; 16] {
    let a = unique().to_be_bytes();
    let b = unique().to_be_bytes();
    let mut out = [0; 16];
    out[..8].copy_from_slice(&a);
    out[8..].copy_from_slice(&b);
    out
}

pub fn new_id() -> ConnectionId {
    ConnectionId::from_random_bytes(bytes())
}

pub fn project(p: &str) -> ProjectId {
    ProjectId::parse(p).unwrap()
}

pub fn name(n: &str) -> ConnectionName {
    ConnectionName::parse(n).unwrap()
}

pub fn google() -> ConnectionType {
    ConnectionType::OAuth(Provider::Google)
}

pub fn grant(obtained: DateTime<Utc>, expires: Option<DateTime<Utc>>) -> Grant {
    Grant {
        access_token: Sealed(vec![0, 1, 2, 255, 254, 0]),
        refresh_token: Some(Sealed(vec![9; 48])),
        token_type: "Bearer".into(),
        scopes: vec!["openid".into(), "email".into(), "https://x/y z".into()],
        obtained_at: obtained,
        expires_at: expires,
    }
}

/// A minimal API-key connection.
pub fn api_key(project_id: &str, n: &str) -> Connection {
    Connection::restore(ConnectionParts {
        id: new_id(),
        project_id: project(project_id),
        name: name(n),
        kind: ConnectionType::ApiKey,
        status: Status::Active,
        config: ConnectionConfig::ApiKey,
        secrets: Some(Sealed(b"sealed-api-key".to_vec())),
        oauth2_client_id: None,
        grant: None,
        authorized_user: None,
        refresh: RefreshSchedule::default(),
        last_error: None,
        created_at: t(0),
        updated_at: t(0),
        last_used_at: None,
        version: 1,
    })
}

/// An active OAuth connection with a grant expiring at `expires` and due at `due`.
pub fn oauth(project_id: &str, n: &str, due: Option<i64>, expires: Option<i64>) -> Connection {
    Connection::restore(ConnectionParts {
        kind: google(),
        status: Status::Active,
        config: ConnectionConfig::OAuth(OAuthSettings {
            client_id: Some("abc".into()),
            scopes: Some(vec!["openid".into()]),
            ..OAuthSettings::default()
        }),
        secrets: None,
        grant: Some(grant(t(0), expires.map(t))),
        authorized_user: Some(serde_json::json!({"email": "a@example.com", "sub": 42})),
        refresh: RefreshSchedule {
            due_at: due.map(t),
            failures: 0,
            lease: None,
        },
        ..api_key(project_id, n).into_parts()
    })
}

/// `c` as a store would hold it in `status` (a test shortcut past the lifecycle).
pub fn with_status(c: Connection, status: Status) -> Connection {
    Connection::restore(ConnectionParts {
        status,
        ..c.into_parts()
    })
}

/// `c` holding `grant` (a test shortcut past the lifecycle).
pub fn with_grant(c: Connection, grant: Option<Grant>) -> Connection {
    Connection::restore(ConnectionParts {
        grant,
        ..c.into_parts()
    })
}

pub fn created(c: &Connection) -> ConnectionEvent {
    event(c, None, c.status(), "created", c.created_at)
}

pub fn event(
    c: &Connection,
    from: Option<Status>,
    to: Status,
    kind: &str,
    at: DateTime<Utc>,
) -> ConnectionEvent {
    ConnectionEvent {
        id: EventId::from_random_bytes(bytes()),
        connection_id: c.id,
        at,
        from,
        to,
        kind: kind.into(),
        reason: Some(format!("because {kind}")),
    }
}

pub fn lease(owner: &str, until: DateTime<Utc>) -> Lease {
    Lease {
        owner: owner.into(),
        until,
    }
}

pub fn session(c: &Connection, state_hash: &str, expires: DateTime<Utc>) -> AuthSession {
    AuthSession {
        state_hash: state_hash.into(),
        connection_id: c.id,
        project_id: c.project_id.clone(),
        pkce_verifier: Some(Sealed(vec![7, 0, 7])),
        token_endpoint: "https://oauth2.example.com/token".into(),
        redirect_uri: "https://latchkey.example.com/callback".into(),
        issuer: Some("https://accounts.example.com".into()),
        require_iss: true,
        created_at: t(1),
        expires_at: expires,
    }
}

pub fn oauth_client(project_id: Option<&str>, n: &str) -> OAuthClient {
    OAuthClient {
        id: OAuthClientId::from_random_bytes(bytes()),
        name: name(n),
        project_id: project_id.map(project),
        kind: ConnectionType::OAuth(Provider::Generic),
        config: OAuthSettings {
            client_id: Some("cid".into()),
            token_endpoint: Some("https://t/".into()),
            ..OAuthSettings::default()
        },
        client_secret: Some(Sealed(vec![1, 2, 3, 4])),
        created_at: t_ms(1_234),
    }
}

pub fn access_key(project_id: &str, n: &str, created_at: DateTime<Utc>) -> AccessKey {
    AccessKey {
        id: AccessKeyId::from_random_bytes(bytes()),
        project_id: project(project_id),
        name: name(n),
        scopes: vec![Scope::ConnectionsRead, Scope::CredentialsRead],
        secret_hash: "ab".repeat(32),
        created_at,
    }
}

/// A configuration a user edit could leave on an OAuth connection.
pub fn user_edit() -> ConnectionConfig {
    ConnectionConfig::OAuth(OAuthSettings {
        scopes: Some(vec!["edited".into()]),
        ..OAuthSettings::default()
    })
}
