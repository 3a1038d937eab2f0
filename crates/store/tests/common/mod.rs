//! Test databases: a fresh SQLite file per test, and (when `LATCHKEY_TEST_POSTGRES_URL`
//! is set) a fresh PostgreSQL database per test, dropped afterwards.

#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use latchkey_domain::{
    AccessKey, AccessKeyId, AuthSession, Connection, ConnectionConfig, ConnectionEvent,
    ConnectionId, ConnectionName, ConnectionType, EventId, Grant, Lease, OAuthClient,
    OAuthClientId, OAuthSettings, ProjectId, Provider, RefreshSchedule, Scope, Sealed, Status,
};
use latchkey_store::SeaStore;
use sea_orm::{ConnectionTrait, Database};

pub const PG_ENV: &str = "LATCHKEY_TEST_POSTGRES_URL";

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A process-unique number with random high bits (RandomState is seeded per process),
/// so databases of concurrent test runs do not collide.
pub fn unique() -> u64 {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(n);
    h.write_u32(std::process::id());
    (h.finish() & 0xffff_ffff_0000_0000) | n
}

pub enum TestDb {
    Sqlite {
        url: String,
        _dir: tempfile::TempDir,
    },
    Postgres {
        url: String,
        admin_url: String,
        name: String,
    },
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        // A subdirectory that does not exist yet: connect must create it.
        let path = dir.path().join("nested").join("latchkey.db");
        TestDb::Sqlite {
            url: format!("sqlite://{}?mode=rwc", path.display()),
            _dir: dir,
        }
    }

    /// `None` (after saying so) when no PostgreSQL server is configured.
    pub async fn postgres(test: &str) -> Option<TestDb> {
        let Ok(admin_url) = std::env::var(PG_ENV) else {
            eprintln!("skipped postgres::{test}: {PG_ENV} is not set");
            return None;
        };
        let name = format!("lk_test_{:x}", unique());
        let admin = Database::connect(admin_url.as_str()).await.unwrap();
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        admin.close().await.unwrap();
        let url = replace_db_name(&admin_url, &name);
        Some(TestDb::Postgres {
            url,
            admin_url,
            name,
        })
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } => url,
        }
    }

    /// A new pool on the database, migrated. Two pools stand for two server processes.
    pub async fn store(&self) -> SeaStore {
        let store = SeaStore::connect(self.url()).await.unwrap();
        store.migrate().await.unwrap();
        store
    }
}

impl Drop for TestDb {
    /// Drops the PostgreSQL database even when the test failed. Runs on its own thread
    /// and runtime because Drop cannot await.
    fn drop(&mut self) {
        if let TestDb::Postgres {
            admin_url, name, ..
        } = self
        {
            let admin_url = admin_url.clone();
            let name = name.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(admin) = Database::connect(admin_url.as_str()).await {
                        let _ = admin
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .await;
                        let _ = admin.close().await;
                    }
                });
            })
            .join();
        }
    }
}

/// The same server URL with another database name (keeps user, host and query).
fn replace_db_name(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

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
    Connection {
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
    }
}

/// An active OAuth connection with a grant expiring at `expires` and due at `due`.
pub fn oauth(project_id: &str, n: &str, due: Option<i64>, expires: Option<i64>) -> Connection {
    Connection {
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
        ..api_key(project_id, n)
    }
}

pub fn created(c: &Connection) -> ConnectionEvent {
    event(c, None, c.status, "created", c.created_at)
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
