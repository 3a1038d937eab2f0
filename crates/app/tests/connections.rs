//! Creating, updating and reading connections, handing out their credentials, and who
//! may do which.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use secrecy::ExposeSecret;
use serde_json::{json, Value};

use latchkey_app::{
    AppError, CreateConnection, Credentials, Latchkey, ListFilter, UpdateConnection,
};
use latchkey_domain::sealed::fields;
use latchkey_domain::{
    Connection, ConnectionConfig, ConnectionId, ConnectionName, ConnectionType, DomainError,
    NewConnection, ProjectId, RefreshSchedule, Scope, Status,
};
use latchkey_ports::{
    CipherError, MockCipher, MockConnectionStore, MockProviderClient, StoreError,
};

use support::*;

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn mock_provider() -> Arc<MockProviderClient> {
    // No expectations: any provider call fails the test.
    Arc::new(MockProviderClient::new())
}

// ---------------------------------------------------------------------------------------
// create
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn create_stores_the_secrets_of_each_simple_type_sealed() {
    let h = harness_with(mock_provider());
    let cases = [
        (
            "key",
            "api_key",
            json!({"api_key": "sk-live-123"}),
            "sk-live-123",
        ),
        (
            "basic",
            "basic",
            json!({"username": "ada", "password": "pw-secret-1"}),
            "pw-secret-1",
        ),
        (
            "custom",
            "custom",
            json!({"fields": {
                "host": {"value": "db.local", "secret": false},
                "token": {"value": "tok-secret-9"}
            }}),
            "tok-secret-9",
        ),
    ];
    for (name, kind, config, secret) in cases {
        let returned = h.create(name, kind, config).await;
        let stored = h.store.connection(returned.id);
        assert_eq!(
            stored, returned,
            "{kind}: what is returned is what is stored"
        );
        assert_eq!(stored.status(), Status::Active, "{kind}");
        assert!(
            !stored.config.to_public_json().to_string().contains(secret),
            "{kind}: config holds no secret: {:?}",
            stored.config
        );
        let sealed = stored.secrets.as_ref().expect("secrets are stored");
        assert!(
            !contains(&sealed.0, secret),
            "{kind}: sealed bytes are not plaintext"
        );
        // Sealed in the connection's own place, and it opens there.
        let opened: Value =
            serde_json::from_str(&h.cipher.peek(sealed, &ctx(&stored, fields::SECRETS))).unwrap();
        assert!(opened.to_string().contains(secret), "{kind}: {opened}");
        let events = h.store.events(stored.id);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "created");
        assert_eq!(events[0].from, None);
        assert_eq!(events[0].to, Status::Active);
    }
    // The non-secret custom field stays readable.
    let custom = h.store.connection(
        h.app
            .list_connections(
                &admin(),
                ListFilter {
                    kind: Some("custom"),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .items[0]
            .id,
    );
    assert_eq!(
        custom.config.to_public_json()["fields"]["host"]["value"],
        "db.local"
    );
}

#[tokio::test]
async fn create_oauth_types_start_incomplete_without_grant() {
    let h = harness_with(mock_provider());
    let generic = json!({"oauth2_config": {
        "client_id": "cid",
        "client_secret": "inline-client-secret",
        "authorization_endpoint": "https://idp.example/auth",
        "token_endpoint": "https://idp.example/token"
    }});
    for (name, kind, config) in [
        ("g", "google", json!({})),
        ("n", "dynamiq.connections.NotionOAuth2", Value::Null),
        ("o", "oauth2", generic),
    ] {
        let c = h.create(name, kind, config).await;
        let stored = h.store.connection(c.id);
        assert!(stored.kind.is_oauth());
        assert_eq!(stored.status(), Status::Incomplete, "{kind}");
        assert_eq!(stored.grant(), None);
        assert_eq!(stored.refresh, RefreshSchedule::default());
        assert!(!stored
            .config
            .to_public_json()
            .to_string()
            .contains("inline-client-secret"));
        if let Some(s) = &stored.secrets {
            assert!(!contains(&s.0, "inline-client-secret"));
        }
        assert_eq!(h.store.events(c.id)[0].to, Status::Incomplete);
    }
}

#[tokio::test]
async fn create_with_a_failing_cipher_saves_nothing() {
    let mut p = parts(mock_provider());
    let mut cipher = MockCipher::new();
    cipher
        .expect_seal()
        .times(1)
        .returning(|_, _| Err(CipherError::UnknownKey("k7".into())));
    let mut store = MockConnectionStore::new();
    store.expect_insert_connection_capped().never();
    p.services.cipher = Arc::new(cipher);
    p.services.connections = Arc::new(store);
    let app = Latchkey::new(p.services, settings());

    let err = app
        .create_connection(
            &admin(),
            create_input("k", "api_key", json!({"api_key": "sk-1"})),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, AppError::Internal(_)), "{err:?}");
    assert!(!err.to_string().contains("sk-1"));
}

#[tokio::test]
async fn create_with_a_taken_name_is_name_taken() {
    let h = harness_with(mock_provider());
    h.create("Prod key", "api_key", json!({"api_key": "a"}))
        .await;
    let err = h
        .app
        .create_connection(
            &admin(),
            // Names are trimmed before they are compared.
            create_input(
                "  Prod key ",
                "basic",
                json!({"username": "u", "password": "p"}),
            ),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, AppError::NameTaken("connection")), "{err:?}");

    // The same name in another project is fine.
    let mut other = create_input("Prod key", "api_key", json!({"api_key": "b"}));
    other.project_id = OTHER_PROJECT.into();
    h.app.create_connection(&admin(), other).await.unwrap();
}

#[tokio::test]
async fn create_with_an_unknown_type_lists_the_accepted_ones() {
    let h = harness_with(mock_provider());
    let err = h
        .app
        .create_connection(&admin(), create_input("x", "ftp", json!({})))
        .await
        .unwrap_err();
    match err {
        AppError::Invalid(DomainError::UnknownType { given, accepted }) => {
            assert_eq!(given, "ftp");
            assert_eq!(accepted, ConnectionType::accepted_names());
            assert!(
                accepted.contains("api_key, basic, custom, google"),
                "{accepted}"
            );
        }
        other => panic!("want UnknownType, got {other:?}"),
    }
    assert_eq!(h.store.calls("insert_connection_capped"), 0);
}

#[tokio::test]
async fn a_key_cannot_create_in_another_project() {
    let h = harness_with(mock_provider());
    let mut input = create_input("k", "api_key", json!({"api_key": "a"}));
    input.project_id = OTHER_PROJECT.into();
    let err = h
        .app
        .create_connection(&full_key(PROJECT), input)
        .await
        .unwrap_err();
    assert!(matches!(err, AppError::Forbidden(_)), "{err:?}");
    assert_eq!(h.store.calls("insert_connection_capped"), 0);
}

#[tokio::test]
async fn a_key_sees_another_projects_connections_as_not_found() {
    let h = harness_with(mock_provider());
    let theirs = h
        .app
        .create_connection(
            &admin(),
            CreateConnection {
                project_id: OTHER_PROJECT.into(),
                ..create_input("theirs", "api_key", json!({"api_key": "their-secret"}))
            },
        )
        .await
        .unwrap();
    let mine = full_key(PROJECT);

    let get = h.app.get_connection(&mine, theirs.id).await.unwrap_err();
    assert!(matches!(get, AppError::NotFound("connection")), "{get:?}");
    let update = h
        .app
        .update_connection(
            &mine,
            theirs.id,
            UpdateConnection {
                name: Some("stolen".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(update, AppError::NotFound("connection")),
        "{update:?}"
    );
    let delete = h.app.delete_connection(&mine, theirs.id).await.unwrap_err();
    assert!(
        matches!(delete, AppError::NotFound("connection")),
        "{delete:?}"
    );
    let creds = h
        .app
        .fetch_credentials(&mine, theirs.id, None)
        .await
        .unwrap_err();
    assert!(
        matches!(creds, AppError::NotFound("connection")),
        "{creds:?}"
    );
    let events = h
        .app
        .connection_events(&mine, theirs.id, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(events, AppError::NotFound("connection")),
        "{events:?}"
    );

    // Nothing changed and nothing was handed out.
    assert_eq!(h.store.connection(theirs.id), theirs);
    assert_eq!(h.app.flush_usage().await.unwrap(), 0, "no use to record");
    // Listing another project's connections is empty rather than an error.
    let page = h
        .app
        .list_connections(
            &mine,
            ListFilter {
                project_id: Some(OTHER_PROJECT),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(page.items.is_empty());
}

#[tokio::test]
async fn a_missing_scope_is_forbidden() {
    let h = harness_with(mock_provider());
    let c = h.create("k", "api_key", json!({"api_key": "a"})).await;
    let read_only = key(PROJECT, &[Scope::ConnectionsRead]);
    let no_credentials = key(PROJECT, &[Scope::ConnectionsRead, Scope::ConnectionsWrite]);

    let create = h
        .app
        .create_connection(
            &read_only,
            create_input("k2", "api_key", json!({"api_key": "b"})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(create, AppError::Forbidden(ref m) if m.contains("connections:write")),
        "{create:?}"
    );
    let rename = h
        .app
        .update_connection(
            &read_only,
            c.id,
            UpdateConnection {
                name: Some("x".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(rename, AppError::Forbidden(_)), "{rename:?}");
    let delete = h.app.delete_connection(&read_only, c.id).await.unwrap_err();
    assert!(matches!(delete, AppError::Forbidden(_)), "{delete:?}");
    let creds = h
        .app
        .fetch_credentials(&no_credentials, c.id, None)
        .await
        .unwrap_err();
    assert!(
        matches!(creds, AppError::Forbidden(ref m) if m.contains("credentials:read")),
        "{creds:?}"
    );
    let read = h
        .app
        .get_connection(&key(PROJECT, &[Scope::CredentialsRead]), c.id)
        .await
        .unwrap_err();
    assert!(matches!(read, AppError::Forbidden(_)), "{read:?}");

    // The read-only key can still read.
    h.app.get_connection(&read_only, c.id).await.unwrap();
    assert_eq!(h.store.connection(c.id), c);
}

// ---------------------------------------------------------------------------------------
// update
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn rename_works_for_oauth_connections() {
    let (h, provider) = harness();
    let incomplete = h.create("draft", "google", json!({})).await;
    let active = connected(
        &h,
        &provider,
        "drive",
        "google",
        tokens("at-1", Some("rt-1"), Some(3600)),
    )
    .await;

    for (id, name) in [(incomplete.id, "Renamed draft"), (active, "Renamed drive")] {
        let before = h.store.connection(id);
        let renamed = h
            .app
            .update_connection(
                &full_key(PROJECT),
                id,
                UpdateConnection {
                    name: Some(format!("  {name} ")),
                    version: Some(before.version),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let stored = h.store.connection(id);
        assert_eq!(stored, renamed);
        assert_eq!(stored.name.as_str(), name);
        assert_eq!(stored.version, before.version + 1);
        assert_eq!(stored.status(), before.status());
        assert_eq!(stored.grant(), before.grant(), "a rename keeps the grant");
    }
}

#[tokio::test]
async fn changing_an_oauth_connections_config_is_config_locked() {
    let h = harness_with(mock_provider());
    let c = h.create("g", "google", json!({})).await;
    let err = h
        .app
        .update_connection(
            &admin(),
            c.id,
            UpdateConnection {
                name: Some("new name".into()),
                config: Some(json!({"scopes": ["openid"]})),
                version: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::Invalid(DomainError::ConfigLocked)),
        "{err:?}"
    );
    assert_eq!(
        h.store.connection(c.id),
        c,
        "nothing was written, not even the name"
    );
}

#[tokio::test]
async fn a_stale_client_version_is_a_conflict_naming_the_current_version() {
    let h = harness_with(mock_provider());
    let c = h.create("k", "api_key", json!({"api_key": "a"})).await;
    assert_eq!(c.version, 1);
    h.app
        .update_connection(
            &admin(),
            c.id,
            UpdateConnection {
                name: Some("k2".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let err = h
        .app
        .update_connection(
            &admin(),
            c.id,
            UpdateConnection {
                name: Some("k3".into()),
                version: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::VersionConflict { current: Some(2) }),
        "{err:?}"
    );
    assert_eq!(h.store.connection(c.id).name.as_str(), "k2");
}

fn api_key_connection(version: i64) -> Connection {
    let (Ok(project_id), Ok(name)) = (ProjectId::parse(PROJECT), ConnectionName::parse("k")) else {
        panic!("valid test ids");
    };
    let mut c = Connection::new(
        NewConnection {
            id: ConnectionId::from_random_bytes([1; 16]),
            project_id,
            name,
            kind: ConnectionType::ApiKey,
            config: ConnectionConfig::ApiKey,
            secrets: None,
            oauth2_client_id: None,
        },
        t0(),
    );
    c.version = version;
    c
}

#[tokio::test]
async fn a_store_conflict_with_an_explicit_version_is_reported_not_retried() {
    let mut p = parts(mock_provider());
    let mut store = MockConnectionStore::new();
    let reads = std::sync::atomic::AtomicUsize::new(0);
    // First read: the version the client names; after the conflict: what another writer left.
    store.expect_get_connection().times(2).returning(move |_| {
        let n = reads.fetch_add(1, Ordering::SeqCst);
        Ok(Some(api_key_connection(if n == 0 { 3 } else { 4 })))
    });
    store
        .expect_update_connection()
        .withf(|c, events| c.version == 3 && events.is_empty())
        .times(1)
        .returning(|_, _| Err(StoreError::Conflict));
    p.services.connections = Arc::new(store);
    let app = Latchkey::new(p.services, settings());

    let err = app
        .update_connection(
            &admin(),
            api_key_connection(3).id,
            UpdateConnection {
                name: Some("renamed".into()),
                version: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::VersionConflict { current: Some(4) }),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_update_without_version_retries_a_concurrent_write() {
    let mut p = parts(mock_provider());
    let mut store = MockConnectionStore::new();
    let reads = std::sync::atomic::AtomicUsize::new(0);
    store.expect_get_connection().times(2).returning(move |_| {
        let n = reads.fetch_add(1, Ordering::SeqCst) as i64;
        Ok(Some(api_key_connection(3 + n)))
    });
    let writes = std::sync::atomic::AtomicUsize::new(0);
    store
        .expect_update_connection()
        .times(2)
        .returning(move |c, _| {
            if writes.fetch_add(1, Ordering::SeqCst) == 0 {
                assert_eq!(c.version, 3);
                Err(StoreError::Conflict)
            } else {
                assert_eq!(c.version, 4);
                Ok(5)
            }
        });
    p.services.connections = Arc::new(store);
    let app = Latchkey::new(p.services, settings());
    let c = app
        .update_connection(
            &admin(),
            api_key_connection(3).id,
            UpdateConnection {
                name: Some("renamed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((c.name.as_str(), c.version), ("renamed", 5));
}

#[tokio::test]
async fn replacing_a_simple_config_reseals_the_new_secret() {
    let h = harness_with(mock_provider());
    let c = h
        .create("k", "api_key", json!({"api_key": "old-key"}))
        .await;
    h.app
        .update_connection(
            &admin(),
            c.id,
            UpdateConnection {
                config: Some(json!({"api_key": "new-key"})),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let stored = h.store.connection(c.id);
    assert!(!contains(&stored.secrets.as_ref().unwrap().0, "new-key"));
    match h.app.fetch_credentials(&admin(), c.id, None).await.unwrap() {
        Credentials::ApiKey { api_key } => assert_eq!(api_key.expose_secret(), "new-key"),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.store.connection(c.id).status(), Status::Active);
}

// ---------------------------------------------------------------------------------------
// credentials
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn credentials_of_simple_types_are_the_configured_values() {
    let h = harness_with(mock_provider());
    let k = h.create("k", "api_key", json!({"api_key": "sk-1"})).await;
    let b = h
        .create("b", "basic", json!({"username": "ada", "password": "pw"}))
        .await;
    let c = h
        .create(
            "c",
            "custom",
            json!({"fields": {
                "host": {"value": "db.local", "secret": false},
                "token": {"value": "tok", "secret": true},
                "pin": {"value": "1234"}
            }}),
        )
        .await;
    let reader = key(PROJECT, &[Scope::CredentialsRead]);

    match h.app.fetch_credentials(&reader, k.id, None).await.unwrap() {
        Credentials::ApiKey { api_key } => assert_eq!(api_key.expose_secret(), "sk-1"),
        other => panic!("{other:?}"),
    }
    match h.app.fetch_credentials(&reader, b.id, None).await.unwrap() {
        Credentials::Basic { username, password } => {
            assert_eq!(username, "ada");
            assert_eq!(password.expose_secret(), "pw");
        }
        other => panic!("{other:?}"),
    }
    match h.app.fetch_credentials(&reader, c.id, None).await.unwrap() {
        Credentials::Custom { fields } => {
            let plain: Vec<(String, String)> = fields
                .iter()
                .map(|(k, v)| (k.clone(), v.expose_secret().to_owned()))
                .collect();
            assert_eq!(
                plain,
                [
                    ("host".to_owned(), "db.local".to_owned()),
                    ("pin".to_owned(), "1234".to_owned()),
                    ("token".to_owned(), "tok".to_owned()),
                ]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn credentials_record_the_usage_and_the_flow() {
    let h = harness_with(mock_provider());
    let c = h.create("k", "api_key", json!({"api_key": "sk-1"})).await;
    h.app
        .fetch_credentials(&admin(), c.id, Some("flow-1"))
        .await
        .unwrap();
    h.clock.advance(chrono::Duration::minutes(1));
    h.app
        .fetch_credentials(&admin(), c.id, Some("flow-1"))
        .await
        .unwrap();
    h.clock.advance(chrono::Duration::minutes(1));
    h.app.fetch_credentials(&admin(), c.id, None).await.unwrap();

    // Nothing is written on the fetch path; this process sees the use at once.
    assert_eq!(h.store.calls("record_usage"), 0);
    assert_eq!(h.store.calls("record_usages"), 0);
    assert_eq!(h.store.connection(c.id).last_used_at, None);
    assert!(h.store.usages(c.id).is_empty());
    let details = h.app.get_connection(&admin(), c.id).await.unwrap();
    assert_eq!(
        details.connection.last_used_at,
        Some(t0() + chrono::Duration::minutes(2))
    );
    let check = |used_by: &[latchkey_domain::Usage]| {
        assert_eq!(used_by.len(), 1);
        let u = &used_by[0];
        assert_eq!(u.flow_id.as_str(), "flow-1");
        assert_eq!(u.count, 2);
        assert_eq!(u.first_used_at, t0());
        assert_eq!(u.last_used_at, t0() + chrono::Duration::minutes(1));
    };
    check(&details.used_by);
    let listed = h
        .app
        .list_connections(&admin(), ListFilter::default())
        .await
        .unwrap();
    assert_eq!(
        listed.items[0].last_used_at,
        Some(t0() + chrono::Duration::minutes(2)),
        "a listing shows the pending use too"
    );

    // One flush writes it all in one call, and the view stays the same (not doubled).
    assert_eq!(h.app.flush_usage().await.unwrap(), 1);
    assert_eq!(h.store.calls("record_usages"), 1);
    check(&h.store.usages(c.id));
    check(&h.app.get_connection(&admin(), c.id).await.unwrap().used_by);
    let stored = h.store.connection(c.id);
    assert_eq!(
        stored.last_used_at,
        Some(t0() + chrono::Duration::minutes(2))
    );
    assert_eq!(
        stored.version, c.version,
        "usage is not a change of the connection"
    );

    let bad = h
        .app
        .fetch_credentials(&admin(), c.id, Some("bad flow id"))
        .await
        .unwrap_err();
    assert!(matches!(bad, AppError::Invalid(_)), "{bad:?}");
}

/// The fake's activity, except that writing usage waits at a gate first: a flush held
/// in flight, to be cut off as an aborted task would be.
struct HeldUsageWrites {
    store: Arc<latchkey_ports::fake::FakeStore>,
    gate: Arc<Gate>,
}

#[async_trait::async_trait]
impl latchkey_ports::ActivityStore for HeldUsageWrites {
    async fn record_usage(
        &self,
        id: ConnectionId,
        flow: Option<latchkey_domain::FlowId>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        self.store.record_usage(id, flow, at).await
    }
    async fn record_usages(
        &self,
        last_used: &[(ConnectionId, chrono::DateTime<chrono::Utc>)],
        flows: &[latchkey_domain::Usage],
    ) -> Result<(), StoreError> {
        self.gate.entered.notify_one();
        self.gate.release.notified().await;
        self.store.record_usages(last_used, flows).await
    }
    async fn list_usages(
        &self,
        id: ConnectionId,
        limit: u32,
    ) -> Result<Vec<latchkey_domain::Usage>, StoreError> {
        self.store.list_usages(id, limit).await
    }
    async fn count_usages(&self, id: ConnectionId) -> Result<u64, StoreError> {
        self.store.count_usages(id).await
    }
    async fn list_events(
        &self,
        id: ConnectionId,
        query: &latchkey_ports::EventQuery,
    ) -> Result<latchkey_ports::EventPage, StoreError> {
        self.store.list_events(id, query).await
    }
    async fn purge_events(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        batch: u32,
    ) -> Result<u64, StoreError> {
        self.store.purge_events(before, batch).await
    }
    async fn purge_usages(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        batch: u32,
    ) -> Result<u64, StoreError> {
        self.store.purge_usages(before, batch).await
    }
}

#[tokio::test]
async fn a_flush_cut_off_while_writing_loses_no_usage() {
    let mut p = parts(mock_provider());
    let gate = Arc::new(Gate::default());
    p.services.activity = Arc::new(HeldUsageWrites {
        store: p.store.clone(),
        gate: gate.clone(),
    });
    let h = Harness::from_parts(p, settings());
    let c = h.create("k", "api_key", json!({"api_key": "sk-1"})).await;
    h.app
        .fetch_credentials(&admin(), c.id, Some("flow-1"))
        .await
        .unwrap();

    // A flush in the middle of its write is aborted (as a stopping task is).
    let app = h.app.clone();
    let flush = tokio::spawn(async move { app.flush_usage().await });
    gate.entered.notified().await;
    flush.abort();
    assert!(flush.await.unwrap_err().is_cancelled());
    assert!(h.store.usages(c.id).is_empty(), "nothing was written");

    // More use arrives; the next flush writes both.
    h.clock.advance(chrono::Duration::minutes(1));
    h.app
        .fetch_credentials(&admin(), c.id, Some("flow-1"))
        .await
        .unwrap();
    let app = h.app.clone();
    let flush = tokio::spawn(async move { app.flush_usage().await });
    gate.entered.notified().await;
    gate.release.notify_one();
    assert_eq!(flush.await.unwrap().unwrap(), 1);
    let used = h.store.usages(c.id);
    assert_eq!(used.len(), 1);
    assert_eq!(
        (used[0].count, used[0].first_used_at, used[0].last_used_at),
        (2, t0(), t0() + chrono::Duration::minutes(1))
    );
    assert_eq!(
        h.store.connection(c.id).last_used_at,
        Some(t0() + chrono::Duration::minutes(1))
    );
}

#[tokio::test]
async fn credentials_of_an_incomplete_oauth_connection_are_refused() {
    let h = harness_with(mock_provider());
    let c = h.create("g", "google", json!({})).await;
    let err = h
        .app
        .fetch_credentials(&admin(), c.id, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AppError::State {
                code: latchkey_app::StateCode::ConnectionIncomplete,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(h.app.flush_usage().await.unwrap(), 0, "no use to record");
}

#[tokio::test]
async fn credentials_of_an_expired_oauth_connection_are_refused() {
    let (h, provider) = harness();
    let id = connected(
        &h,
        &provider,
        "g",
        "google",
        tokens("at-1", Some("rt-1"), Some(3600)),
    )
    .await;
    h.store.write_behind_our_back(id, |c| {
        *c = with_status(c.clone(), Status::Expired);
        c.last_error = Some("the provider rejected the refresh token".into());
    });
    let err = h
        .app
        .fetch_credentials(&admin(), id, None)
        .await
        .unwrap_err();
    match err {
        AppError::State { code, message } => {
            assert_eq!(code, latchkey_app::StateCode::ConnectionExpired);
            assert!(message.contains("rejected the refresh token"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(provider.refreshes(), 0);
    assert_eq!(h.app.flush_usage().await.unwrap(), 0, "no use to record");
}

#[tokio::test]
async fn credentials_of_an_active_oauth_connection_are_its_access_token() {
    let (h, provider) = harness();
    let id = connected(
        &h,
        &provider,
        "g",
        "google",
        tokens("at-1", Some("rt-1"), Some(3600)),
    )
    .await;
    let creds = h
        .app
        .fetch_credentials(&admin(), id, Some("f"))
        .await
        .unwrap();
    assert_eq!(access_token(&creds), "at-1");
    match creds {
        Credentials::OAuth {
            token_type,
            expires_at,
            ..
        } => {
            assert_eq!(token_type, "Bearer");
            assert_eq!(expires_at, Some(t0() + chrono::Duration::seconds(3600)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(provider.refreshes(), 0);
}
