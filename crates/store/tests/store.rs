//! The store contract, run against SQLite always and PostgreSQL when
//! `LATCHKEY_TEST_POSTGRES_URL` is set (each test on its own fresh database).

// Test code: a failed unwrap is a failed test, helpers included.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::*;
use latchkey_domain::{
    AccessKeyId, ConnectionConfig, ConnectionEvent, ConnectionId, ConnectionType, EventCursor,
    FlowId, OAuthClientId, OAuthSettings, Provider, RefreshSchedule, Sealed, Status,
};
use latchkey_ports::{
    AccessKeyStore, ActivityStore, AuthSessionStore, ConnectionQuery, ConnectionStore, EventQuery,
    OAuthClientStore, RefreshLeaseStore, SealedTable, SealedValueStore, StoreError, UniqueKey,
};
use latchkey_store::SeaStore;
use sea_orm::ConnectionTrait;

/// Runs each case on a fresh SQLite file and, when configured, a fresh PG database.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = super::TestDb::sqlite();
                    super::cases::$case(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(db) = super::TestDb::postgres(stringify!($case)).await else {
                        return;
                    };
                    super::cases::$case(&db).await;
                }
            )*
        }
    };
}

suite!(
    round_trip_every_field,
    list_filters_and_paging,
    duplicate_names,
    update_compare_and_set,
    delete_cascades,
    usage_upsert,
    events_keep_order,
    events_are_paged,
    usages_are_bounded_and_counted,
    retention_purges_old_history_only,
    connection_cap_per_project,
    concurrent_creators_never_pass_the_cap,
    due_for_refresh_order_limit_and_leases,
    past_expiry,
    concurrent_claims_have_one_winner,
    expired_lease_can_be_reclaimed,
    save_refreshed_grant_rules,
    release_refresh_rules,
    due_for_refresh_puts_the_earliest_deadline_first,
    release_refresh_never_writes_over_a_newer_version,
    drop_lease_clears_only_its_own_lease,
    update_leaves_the_lease_alone,
    auth_session_take_is_single_use,
    concurrent_auth_session_takers,
    purge_auth_sessions,
    oauth_clients,
    access_keys,
    migrations_are_idempotent,
    concurrent_first_migrations,
    meta_put_if_absent,
    corrupt_rows_are_errors,
    sealed_values_page_by_id_and_replace_by_compare_and_set,
);

fn flow(f: &str) -> FlowId {
    FlowId::parse(f).unwrap()
}

/// Every event of a connection (one big page).
async fn all_events(store: &SeaStore, id: ConnectionId) -> Vec<ConnectionEvent> {
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

mod cases {
    use super::*;

    fn sealed(record: &latchkey_ports::SealedRecord, field: &str) -> Option<Sealed> {
        record
            .values
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, v)| v.clone())
    }

    /// Every sealed column is paged by id, and a replacement wins only over the row as
    /// read: a stale version, a live refresh lease or changed bytes make it lose.
    pub async fn sealed_values_page_by_id_and_replace_by_compare_and_set(db: &TestDb) {
        let store = db.store().await;
        let mut ids = Vec::new();
        for i in 0..5 {
            let c = oauth("p1", &format!("c{i}"), Some(100), Some(200));
            store.insert_connection(&c, &created(&c)).await.unwrap();
            ids.push(c.id.to_string());
        }
        let plain = api_key("p1", "plain");
        store
            .insert_connection(&plain, &created(&plain))
            .await
            .unwrap();
        ids.push(plain.id.to_string());
        ids.sort();

        // Pages keyed by id: no row twice, none skipped.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .sealed_records(SealedTable::Connections, after.clone(), 2, false)
                .await
                .unwrap();
            seen.extend(page.iter().map(|r| r.id.clone()));
            match page.last() {
                Some(last) if page.len() == 2 => after = Some(last.id.clone()),
                _ => break,
            }
        }
        assert_eq!(seen, ids);
        let headers = store
            .sealed_records(SealedTable::Connections, None, 10, true)
            .await
            .unwrap();
        assert_eq!(headers.len(), 6);
        for r in &headers {
            for (_, v) in &r.values {
                assert!(!v.0.is_empty() && v.0.len() <= 64, "{r:?}");
            }
        }

        // A replacement at the version read wins and bumps the version.
        let id = plain.id;
        let read = store
            .sealed_record(SealedTable::Connections, &id.to_string())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.version, Some(1));
        assert_eq!(sealed(&read, "secrets"), plain.secrets.clone());
        let resealed = vec![("secrets".to_owned(), Sealed(b"resealed".to_vec()))];
        assert!(store
            .replace_sealed(&read, &resealed, t(100))
            .await
            .unwrap());
        let after_write = store.get_connection(id).await.unwrap().unwrap();
        assert_eq!(after_write.secrets, Some(Sealed(b"resealed".to_vec())));
        assert_eq!(after_write.version, 2);
        // The same (now stale) read loses: a concurrent writer is never overwritten.
        let again = vec![("secrets".to_owned(), Sealed(b"second".to_vec()))];
        assert!(!store.replace_sealed(&read, &again, t(100)).await.unwrap());
        assert_eq!(
            store.get_connection(id).await.unwrap().unwrap().secrets,
            Some(Sealed(b"resealed".to_vec()))
        );

        // A live refresh lease makes it lose too; once the lease lapsed it wins.
        let leased = oauth("p1", "leased", Some(100), Some(200));
        store
            .insert_connection(&leased, &created(&leased))
            .await
            .unwrap();
        store
            .claim_refresh(leased.id, &lease("worker", t(130)), t(100))
            .await
            .unwrap()
            .unwrap();
        let read = store
            .sealed_record(SealedTable::Connections, &leased.id.to_string())
            .await
            .unwrap()
            .unwrap();
        let tokens = vec![("access_token".to_owned(), Sealed(b"new-access".to_vec()))];
        assert!(!store.replace_sealed(&read, &tokens, t(120)).await.unwrap());
        assert!(store.replace_sealed(&read, &tokens, t(131)).await.unwrap());
        let row = store.get_connection(leased.id).await.unwrap().unwrap();
        assert_eq!(
            row.grant.unwrap().access_token,
            Sealed(b"new-access".to_vec())
        );
        // Untouched fields stay.
        assert_eq!(row.secrets, leased.secrets);

        // Other tables compare the old bytes.
        let client = oauth_client(Some("p1"), "Acme");
        store.insert_oauth_client(&client).await.unwrap();
        let read = store
            .sealed_record(SealedTable::OAuthClients, &client.id.to_string())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.project_id.as_deref(), Some("p1"));
        let new_secret = vec![("client_secret".to_owned(), Sealed(b"cs2".to_vec()))];
        assert!(store
            .replace_sealed(&read, &new_secret, t(1))
            .await
            .unwrap());
        assert!(!store
            .replace_sealed(&read, &new_secret, t(1))
            .await
            .unwrap());
        assert_eq!(
            store
                .get_oauth_client(client.id)
                .await
                .unwrap()
                .unwrap()
                .client_secret,
            Some(Sealed(b"cs2".to_vec()))
        );

        store
            .put_meta_if_absent("key_check", b"canary-1")
            .await
            .unwrap();
        let meta = store
            .sealed_records(SealedTable::Meta, None, 10, false)
            .await
            .unwrap();
        assert_eq!(meta.len(), 1);
        let canary = vec![("key_check".to_owned(), Sealed(b"canary-2".to_vec()))];
        assert!(store.replace_sealed(&meta[0], &canary, t(1)).await.unwrap());
        assert!(!store.replace_sealed(&meta[0], &canary, t(1)).await.unwrap());
        assert_eq!(
            store.get_meta("key_check").await.unwrap(),
            Some(b"canary-2".to_vec())
        );
    }

    pub async fn round_trip_every_field(db: &TestDb) {
        let store = db.store().await;
        assert!(store.is_empty_db().await.unwrap());
        store.ping().await.unwrap();

        let client = oauth_client(Some("p1"), "shared app");
        store.insert_oauth_client(&client).await.unwrap();
        // A sealed client secret is data: the database is no longer empty.
        assert!(!store.is_empty_db().await.unwrap());

        let mut full = oauth("p1", "Gmail - Support ü", Some(100), Some(3600));
        full.oauth2_client_id = Some(client.id);
        full.secrets = Some(Sealed((0..=255).collect()));
        full.refresh.failures = 3;
        full.refresh.lease = Some(lease("worker-1", t_ms(5_123)));
        full.last_error = Some("provider said: slow down".into());
        full.created_at = t_ms(-1_001);
        full.updated_at = t_ms(7_777);
        full.last_used_at = Some(t_ms(8_888));
        full.version = 7;
        full.config = ConnectionConfig::OAuth(OAuthSettings {
            scopes: Some(vec!["openid".into(), "ü".into()]),
            client_id: Some("client ✓".into()),
            issuer: Some("https://idp.example".into()),
            token_endpoint_auth_method: Some(latchkey_domain::TokenAuthMethod::ClientSecretPost),
            extra_authorization_params: [("prompt".to_owned(), "consent".to_owned())].into(),
            pkce: Some(false),
            tenant: Some("contoso.example".into()),
            ..OAuthSettings::default()
        });
        store
            .insert_connection(&full, &created(&full))
            .await
            .unwrap();
        assert_eq!(store.get_connection(full.id).await.unwrap().unwrap(), full);

        // A grant without refresh token nor expiry, and no optional fields at all.
        let mut bare = oauth("p1", "bare", None, None);
        bare.grant = Some(latchkey_domain::Grant {
            refresh_token: None,
            scopes: vec![],
            ..grant(t(5), None)
        });
        bare.authorized_user = None;
        store
            .insert_connection(&bare, &created(&bare))
            .await
            .unwrap();
        assert_eq!(store.get_connection(bare.id).await.unwrap().unwrap(), bare);

        let mut incomplete = api_key("p1", "incomplete");
        incomplete.kind = ConnectionType::OAuth(Provider::Generic);
        incomplete.config = ConnectionConfig::OAuth(OAuthSettings::default());
        incomplete.status = Status::Incomplete;
        incomplete.secrets = None;
        store
            .insert_connection(&incomplete, &created(&incomplete))
            .await
            .unwrap();
        assert_eq!(
            store.get_connection(incomplete.id).await.unwrap().unwrap(),
            incomplete
        );

        assert!(store.get_connection(new_id()).await.unwrap().is_none());
        let mut all = store
            .list_connections(&ConnectionQuery::default())
            .await
            .unwrap();
        let mut want = vec![full, bare, incomplete];
        all.sort_by_key(|c| c.id);
        want.sort_by_key(|c| c.id);
        assert_eq!(all, want);
        assert!(!store.is_empty_db().await.unwrap());
    }

    pub async fn list_filters_and_paging(db: &TestDb) {
        let store = db.store().await;
        let mut expired = oauth("p1", "expired", None, Some(10));
        expired.status = Status::Expired;
        let rows = vec![
            api_key("p1", "k1"),
            api_key("p1", "k2"),
            oauth("p1", "o1", None, None),
            expired,
            api_key("p2", "k1"),
            oauth("p2", "o1", None, None),
            api_key("p3", "k"),
        ];
        for c in &rows {
            store.insert_connection(c, &created(c)).await.unwrap();
        }
        let ids = |q: ConnectionQuery| {
            let store = store.clone();
            async move {
                store
                    .list_connections(&q)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|c| c.id)
                    .collect::<Vec<_>>()
            }
        };
        let want = |f: &dyn Fn(&latchkey_domain::Connection) -> bool| {
            let mut v: Vec<_> = rows.iter().filter(|c| f(c)).map(|c| c.id).collect();
            v.sort();
            v
        };

        assert_eq!(ids(ConnectionQuery::default()).await, want(&|_| true));
        let p1 = Some(project("p1"));
        assert_eq!(
            ids(ConnectionQuery {
                project_id: p1.clone(),
                ..Default::default()
            })
            .await,
            want(&|c| c.project_id.as_str() == "p1")
        );
        assert_eq!(
            ids(ConnectionQuery {
                project_id: p1.clone(),
                status: Some(Status::Active),
                ..Default::default()
            })
            .await,
            want(&|c| c.project_id.as_str() == "p1" && c.status == Status::Active)
        );
        assert_eq!(
            ids(ConnectionQuery {
                status: Some(Status::Expired),
                ..Default::default()
            })
            .await,
            want(&|c| c.status == Status::Expired)
        );
        assert_eq!(
            ids(ConnectionQuery {
                kind: Some(google()),
                ..Default::default()
            })
            .await,
            want(&|c| c.kind == google())
        );
        assert_eq!(
            ids(ConnectionQuery {
                project_id: Some(project("p2")),
                kind: Some(ConnectionType::ApiKey),
                ..Default::default()
            })
            .await,
            want(&|c| c.project_id.as_str() == "p2" && c.kind == ConnectionType::ApiKey)
        );
        assert!(ids(ConnectionQuery {
            project_id: Some(project("nobody")),
            ..Default::default()
        })
        .await
        .is_empty());

        // Name search: a substring, ASCII case folded, wildcards taken literally.
        let odd = [
            api_key("p1", "Sales 50% off"),
            api_key("p1", "Sales 50x off"),
            api_key("p1", "a_b"),
        ];
        for c in &odd {
            store.insert_connection(c, &created(c)).await.unwrap();
        }
        let named = |text: &str| ConnectionQuery {
            project_id: p1.clone(),
            name_contains: Some(text.to_owned()),
            ..Default::default()
        };
        let mut sales = vec![odd[0].id, odd[1].id];
        sales.sort();
        assert_eq!(ids(named("sALES 50")).await, sales);
        assert_eq!(ids(named("50%")).await, vec![odd[0].id]);
        assert_eq!(ids(named("a_b")).await, vec![odd[2].id]);
        assert!(ids(named("a%b")).await.is_empty());
        let mut ks = rows
            .iter()
            .filter(|c| {
                c.project_id.as_str() == "p1" && c.name.as_str().to_ascii_lowercase().contains('k')
            })
            .map(|c| c.id)
            .collect::<Vec<_>>();
        ks.sort();
        assert_eq!(ids(named("K")).await, ks);
        for c in &odd {
            store.delete_connection(c.id).await.unwrap();
        }

        // Paging by id cursor visits every row once, in id order.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = ids(ConnectionQuery {
                after,
                limit: 2,
                ..Default::default()
            })
            .await;
            assert!(page.len() <= 2);
            if page.is_empty() {
                break;
            }
            after = page.last().copied();
            seen.extend(page);
        }
        assert_eq!(seen, want(&|_| true));

        // Paging combined with a filter.
        let first = ids(ConnectionQuery {
            project_id: p1.clone(),
            limit: 1,
            ..Default::default()
        })
        .await;
        let rest = ids(ConnectionQuery {
            project_id: p1,
            after: first.first().copied(),
            limit: 10,
            ..Default::default()
        })
        .await;
        let mut both = first;
        both.extend(rest);
        assert_eq!(both, want(&|c| c.project_id.as_str() == "p1"));
    }

    pub async fn duplicate_names(db: &TestDb) {
        let store = db.store().await;
        let a = api_key("p1", "same");
        store.insert_connection(&a, &created(&a)).await.unwrap();
        let b = api_key("p1", "same");
        let err = store.insert_connection(&b, &created(&b)).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Duplicate(UniqueKey::Name)),
            "{err:?}"
        );
        // Nothing of the refused insert remains, not even its event.
        assert!(store.get_connection(b.id).await.unwrap().is_none());
        assert!(all_events(&store, b.id).await.is_empty());

        // A reused id is told apart from a name clash (by the constraint broken).
        let mut again = a.clone();
        again.name = name("another");
        let err = store
            .insert_connection(&again, &created(&again))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Duplicate(UniqueKey::Id)),
            "{err:?}"
        );

        // Same name in another project is fine.
        let c = api_key("p2", "same");
        store.insert_connection(&c, &created(&c)).await.unwrap();

        // Renaming onto a taken name is refused too.
        let d = api_key("p1", "other");
        store.insert_connection(&d, &created(&d)).await.unwrap();
        let mut renamed = d.clone();
        renamed.name = name("same");
        let err = store.update_connection(&renamed, &[]).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Duplicate(UniqueKey::Name)),
            "{err:?}"
        );
        assert_eq!(store.get_connection(d.id).await.unwrap().unwrap(), d);
    }

    pub async fn update_compare_and_set(db: &TestDb) {
        let store = db.store().await;
        let c = oauth("p1", "conn", Some(100), Some(200));
        store.insert_connection(&c, &created(&c)).await.unwrap();

        let mut next = c.clone();
        next.status = Status::Expired;
        next.name = name("renamed");
        next.grant = None;
        next.refresh = RefreshSchedule::default();
        next.last_error = Some("invalid_grant".into());
        next.config = ConnectionConfig::OAuth(OAuthSettings {
            client_id: Some("changed".into()),
            ..OAuthSettings::default()
        });
        next.secrets = Some(Sealed(vec![42]));
        next.updated_at = t(50);
        let ev = event(
            &c,
            Some(Status::Active),
            Status::Expired,
            "refresh_rejected",
            t(50),
        );
        let written = store
            .update_connection(&next, std::slice::from_ref(&ev))
            .await
            .unwrap();
        assert_eq!(written, 2, "the store bumps the version");
        next.version = written;
        assert_eq!(store.get_connection(c.id).await.unwrap().unwrap(), next);
        assert_eq!(all_events(&store, c.id).await.len(), 2);

        // Stale version: Conflict, and neither the row nor the events change.
        let mut stale = c.clone();
        stale.name = name("lost update");
        let ev2 = event(&c, None, Status::Active, "should_not_exist", t(60));
        let err = store
            .update_connection(&stale, std::slice::from_ref(&ev2))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict), "{err:?}");
        assert_eq!(store.get_connection(c.id).await.unwrap().unwrap(), next);
        assert_eq!(all_events(&store, c.id).await.len(), 2);

        // Missing id: NotFound.
        let ghost = api_key("p1", "ghost");
        let err = store.update_connection(&ghost, &[]).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound), "{err:?}");

        // Several events in one update, and a second update on the new version.
        let mut third = next.clone();
        third.status = Status::Active;
        let evs = [
            event(
                &c,
                Some(Status::Expired),
                Status::Active,
                "authorized",
                t(70),
            ),
            event(&c, Some(Status::Active), Status::Active, "note", t(70)),
        ];
        assert_eq!(store.update_connection(&third, &evs).await.unwrap(), 3);
        let events = all_events(&store, c.id).await;
        assert_eq!(events.len(), 4);
        assert_eq!(events[2..], evs[..]);
    }

    pub async fn delete_cascades(db: &TestDb) {
        let store = db.store().await;
        let c = oauth("p1", "doomed", Some(10), Some(20));
        let keep = oauth("p1", "kept", Some(10), Some(20));
        for x in [&c, &keep] {
            store.insert_connection(x, &created(x)).await.unwrap();
            store
                .record_usage(x.id, Some(flow("f1")), t(5))
                .await
                .unwrap();
        }
        store
            .insert_auth_session(&session(&c, "hash-doomed", t(1000)))
            .await
            .unwrap();
        store
            .insert_auth_session(&session(&keep, "hash-kept", t(1000)))
            .await
            .unwrap();

        assert!(store.delete_connection(c.id).await.unwrap());
        assert!(store.get_connection(c.id).await.unwrap().is_none());
        assert!(all_events(&store, c.id).await.is_empty());
        assert!(store.list_usages(c.id, 1000).await.unwrap().is_empty());
        assert!(store
            .take_auth_session("hash-doomed")
            .await
            .unwrap()
            .is_none());
        assert!(!store.delete_connection(c.id).await.unwrap());

        // The neighbour is untouched.
        assert!(store.get_connection(keep.id).await.unwrap().is_some());
        assert_eq!(all_events(&store, keep.id).await.len(), 1);
        assert_eq!(store.list_usages(keep.id, 1000).await.unwrap().len(), 1);
        assert!(store
            .take_auth_session("hash-kept")
            .await
            .unwrap()
            .is_some());

        // The name is free again.
        let again = oauth("p1", "doomed", None, None);
        store
            .insert_connection(&again, &created(&again))
            .await
            .unwrap();
    }

    pub async fn usage_upsert(db: &TestDb) {
        let store = db.store().await;
        let c = api_key("p1", "used");
        store.insert_connection(&c, &created(&c)).await.unwrap();

        store
            .record_usage(c.id, Some(flow("a")), t(10))
            .await
            .unwrap();
        store
            .record_usage(c.id, Some(flow("a")), t(30))
            .await
            .unwrap();
        // Out of order: an older use does not move last_used_at back.
        store
            .record_usage(c.id, Some(flow("a")), t(20))
            .await
            .unwrap();
        store
            .record_usage(c.id, Some(flow("b")), t(25))
            .await
            .unwrap();
        store.record_usage(c.id, None, t(40)).await.unwrap();

        let got = store.get_connection(c.id).await.unwrap().unwrap();
        assert_eq!(got.last_used_at, Some(t(40)));
        assert_eq!(got.version, c.version, "usage must not bump the version");
        store.record_usage(c.id, None, t(35)).await.unwrap();
        assert_eq!(
            store
                .get_connection(c.id)
                .await
                .unwrap()
                .unwrap()
                .last_used_at,
            Some(t(40))
        );

        let usages = store.list_usages(c.id, 1000).await.unwrap();
        assert_eq!(usages.len(), 2);
        // Most recent first.
        assert_eq!(usages[0].flow_id, flow("a"));
        assert_eq!(usages[0].count, 3);
        assert_eq!(usages[0].first_used_at, t(10));
        assert_eq!(usages[0].last_used_at, t(30));
        assert_eq!(usages[0].connection_id, c.id);
        assert_eq!(usages[1].flow_id, flow("b"));
        assert_eq!(usages[1].count, 1);
        assert_eq!(usages[1].first_used_at, t(25));
        assert_eq!(usages[1].last_used_at, t(25));

        // An earlier first use moves first_used_at back.
        store
            .record_usage(c.id, Some(flow("b")), t(1))
            .await
            .unwrap();
        let b = store.list_usages(c.id, 1000).await.unwrap().pop().unwrap();
        assert_eq!((b.first_used_at, b.last_used_at, b.count), (t(1), t(25), 2));

        // A version-guarded update still succeeds after usages.
        let mut next = c.clone();
        next.last_used_at = Some(t(40));
        store.update_connection(&next, &[]).await.unwrap();

        let err = store
            .record_usage(new_id(), Some(flow("a")), t(1))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound), "{err:?}");

        // Concurrent uses are all counted.
        let mut tasks = Vec::new();
        for i in 0..20 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.record_usage(c.id, Some(flow("busy")), t(100 + i)).await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let busy = store.list_usages(c.id, 1000).await.unwrap().remove(0);
        assert_eq!(busy.flow_id, flow("busy"));
        assert_eq!(
            (busy.count, busy.first_used_at, busy.last_used_at),
            (20, t(100), t(119))
        );
    }

    pub async fn events_keep_order(db: &TestDb) {
        let store = db.store().await;
        let c = oauth("p1", "evented", None, None);
        let first = created(&c);
        store.insert_connection(&c, &first).await.unwrap();
        assert_eq!(all_events(&store, c.id).await, vec![first.clone()]);
        let mut want = vec![first];
        for (version, batch) in (c.version..).zip(0..4) {
            // Several events in the same millisecond keep their insertion order.
            let evs: Vec<_> = (0..3)
                .map(|i| {
                    event(
                        &c,
                        Some(Status::Active),
                        Status::Active,
                        &format!("e{batch}-{i}"),
                        t(10 + batch),
                    )
                })
                .collect();
            let mut next = c.clone();
            next.version = version;
            store.update_connection(&next, &evs).await.unwrap();
            want.extend(evs);
        }
        assert_eq!(all_events(&store, c.id).await, want);
        assert!(all_events(&store, new_id()).await.is_empty());
    }

    pub async fn events_are_paged(db: &TestDb) {
        let store = db.store().await;
        let c = oauth("p1", "paged", None, None);
        let first = created(&c);
        store.insert_connection(&c, &first).await.unwrap();
        let other = oauth("p1", "neighbour", None, None);
        store
            .insert_connection(&other, &created(&other))
            .await
            .unwrap();
        // 11 more events: several in one millisecond, and one written later but dated
        // earlier than its predecessors (clocks of two replicas).
        let mut want = vec![first];
        let times = [5, 5, 5, 6, 7, 7, 9, 9, 9, 10, 8];
        for (version, (i, at)) in (c.version..).zip(times.into_iter().enumerate()) {
            let ev = event(&c, None, Status::Active, &format!("e{i}"), t(at));
            let mut next = c.clone();
            next.version = version;
            store
                .update_connection(&next, std::slice::from_ref(&ev))
                .await
                .unwrap();
            want.push(ev);
        }
        want.sort_by_key(|e| e.at); // stable: same-time events keep insertion order
        for limit in [1, 3, 4, 12, 13] {
            let mut got = Vec::new();
            let mut after = None;
            let mut pages = 0;
            loop {
                let page = store
                    .list_events(c.id, &EventQuery { after, limit })
                    .await
                    .unwrap();
                pages += 1;
                assert!(page.events.len() <= limit as usize);
                got.extend(page.events);
                match page.next_cursor {
                    // A cursor survives its text form.
                    Some(cur) => after = Some(cur.to_string().parse::<EventCursor>().unwrap()),
                    None => break,
                }
                assert!(pages < 20, "paging does not end");
            }
            assert_eq!(got, want, "limit {limit}");
            assert_eq!(
                pages,
                want.len().div_ceil(limit as usize).max(1),
                "limit {limit}"
            );
        }
        // A cursor past the end gives an empty last page.
        let page = store
            .list_events(
                c.id,
                &EventQuery {
                    after: Some(EventCursor {
                        at_ms: i64::MAX,
                        seq: 0,
                    }),
                    limit: 5,
                },
            )
            .await
            .unwrap();
        assert!(page.events.is_empty() && page.next_cursor.is_none());
    }

    pub async fn usages_are_bounded_and_counted(db: &TestDb) {
        let store = db.store().await;
        let c = api_key("p1", "popular");
        store.insert_connection(&c, &created(&c)).await.unwrap();
        let quiet = api_key("p1", "quiet");
        store
            .insert_connection(&quiet, &created(&quiet))
            .await
            .unwrap();
        assert_eq!(store.count_usages(quiet.id).await.unwrap(), 0);
        for i in 0..30 {
            store
                .record_usage(c.id, Some(flow(&format!("f{i:02}"))), t(i))
                .await
                .unwrap();
        }
        // A second use of an old flow makes it the most recent.
        store
            .record_usage(c.id, Some(flow("f03")), t(100))
            .await
            .unwrap();
        assert_eq!(store.count_usages(c.id).await.unwrap(), 30);
        let top = store.list_usages(c.id, 5).await.unwrap();
        let names: Vec<_> = top.iter().map(|u| u.flow_id.as_str().to_owned()).collect();
        assert_eq!(names, ["f03", "f29", "f28", "f27", "f26"]);
        assert_eq!(top[0].count, 2);
        assert!(store.list_usages(c.id, 0).await.unwrap().is_empty());
        assert_eq!(store.list_usages(c.id, 1000).await.unwrap().len(), 30);
        assert!(store.list_usages(quiet.id, 5).await.unwrap().is_empty());
    }

    pub async fn retention_purges_old_history_only(db: &TestDb) {
        let store = db.store().await;
        let a = oauth("p1", "a", None, None);
        let b = api_key("p2", "b");
        let mut want_events = Vec::new();
        for c in [&a, &b] {
            // Created at t(0); then events at t(10) .. t(14) and usages at the same times.
            store.insert_connection(c, &created(c)).await.unwrap();
            for (version, i) in (c.version..).zip(0..5) {
                let ev = event(c, None, c.status, &format!("k{i}"), t(10 + i));
                let mut next = (*c).clone();
                next.version = version;
                store
                    .update_connection(&next, std::slice::from_ref(&ev))
                    .await
                    .unwrap();
                if 10 + i >= 13 {
                    want_events.push(ev);
                }
                store
                    .record_usage(c.id, Some(flow(&format!("u{i}"))), t(10 + i))
                    .await
                    .unwrap();
            }
        }
        // Purge what happened before t(13), in batches of 3.
        let mut events_gone = 0;
        let mut rounds = 0;
        loop {
            let n = store.purge_events(t(13), 3).await.unwrap();
            assert!(n <= 3);
            events_gone += n;
            rounds += 1;
            if n < 3 {
                break;
            }
        }
        // Per connection: created + k0..k2.
        assert_eq!(events_gone, 8);
        assert_eq!(rounds, 3);
        let mut usages_gone = 0;
        loop {
            let n = store.purge_usages(t(13), 3).await.unwrap();
            assert!(n <= 3);
            usages_gone += n;
            if n < 3 {
                break;
            }
        }
        assert_eq!(usages_gone, 6);
        let mut left = all_events(&store, a.id).await;
        left.extend(all_events(&store, b.id).await);
        assert_eq!(left, want_events);
        for c in [&a, &b] {
            let flows: Vec<_> = store
                .list_usages(c.id, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|u| u.flow_id.as_str().to_owned())
                .collect();
            assert_eq!(flows, ["u4", "u3"]);
            assert_eq!(store.count_usages(c.id).await.unwrap(), 2);
            // The connections themselves stay.
            assert!(store.get_connection(c.id).await.unwrap().is_some());
        }
        // Nothing older is left: a second purge deletes nothing.
        assert_eq!(store.purge_events(t(13), 100).await.unwrap(), 0);
        assert_eq!(store.purge_usages(t(13), 100).await.unwrap(), 0);
        assert_eq!(store.purge_events(t(13), 0).await.unwrap(), 0);
    }

    pub async fn connection_cap_per_project(db: &TestDb) {
        let store = db.store().await;
        for i in 0..3 {
            let c = api_key("capped", &format!("c{i}"));
            store
                .insert_connection_capped(&c, &created(&c), 3)
                .await
                .unwrap();
        }
        let over = api_key("capped", "c3");
        let err = store
            .insert_connection_capped(&over, &created(&over), 3)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::LimitReached { limit: 3 }),
            "{err:?}"
        );
        // Nothing of the refused connection was written, its event included.
        assert!(store.get_connection(over.id).await.unwrap().is_none());
        assert!(all_events(&store, over.id).await.is_empty());
        // Another project is not affected; a name clash is still a clash.
        let elsewhere = api_key("other", "c0");
        store
            .insert_connection_capped(&elsewhere, &created(&elsewhere), 3)
            .await
            .unwrap();
        let clash = api_key("other", "c0");
        let err = store
            .insert_connection_capped(&clash, &created(&clash), 3)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Duplicate(UniqueKey::Name)),
            "{err:?}"
        );
        // A delete makes room.
        let first = store
            .list_connections(&ConnectionQuery {
                project_id: Some(project("capped")),
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .remove(0);
        assert!(store.delete_connection(first.id).await.unwrap());
        store
            .insert_connection_capped(&over, &created(&over), 3)
            .await
            .unwrap();
    }

    pub async fn concurrent_creators_never_pass_the_cap(db: &TestDb) {
        let store = db.store().await;
        let cap = 5;
        let mut tasks = Vec::new();
        for i in 0..16 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let c = api_key("race", &format!("r{i}"));
                s.insert_connection_capped(&c, &created(&c), cap).await
            }));
        }
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(()) => ok += 1,
                Err(StoreError::LimitReached { limit }) => assert_eq!(limit, cap),
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(ok, cap);
        let stored = store
            .list_connections(&ConnectionQuery {
                project_id: Some(project("race")),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(stored.len() as u64, cap);
    }

    pub async fn due_for_refresh_order_limit_and_leases(db: &TestDb) {
        let store = db.store().await;
        let now = t(1000);
        let due_late = oauth("p1", "due-late", Some(900), Some(2000));
        let due_early = oauth("p1", "due-early", Some(100), Some(2000));
        let due_now = oauth("p2", "due-now", Some(1000), Some(2000));
        let not_yet = oauth("p1", "not-yet", Some(1001), Some(2000));
        let never = oauth("p1", "never", None, None);
        let mut expired = oauth("p1", "expired", Some(50), Some(60));
        expired.status = Status::Expired;
        let mut leased = oauth("p1", "leased", Some(10), Some(2000));
        leased.refresh.lease = Some(lease("w", t(1001)));
        let mut lease_lapsed = oauth("p1", "lease-lapsed", Some(500), Some(2000));
        lease_lapsed.refresh.lease = Some(lease("w", t(999)));
        // A lease ending exactly now is still live ("deadline before now" frees it).
        let mut lease_at_now = oauth("p1", "lease-at-now", Some(20), Some(2000));
        lease_at_now.refresh.lease = Some(lease("w", now));
        for c in [
            &due_late,
            &due_early,
            &due_now,
            &not_yet,
            &never,
            &expired,
            &leased,
            &lease_lapsed,
            &lease_at_now,
        ] {
            store.insert_connection(c, &created(c)).await.unwrap();
        }
        let all = store.due_for_refresh(now, 100).await.unwrap();
        assert_eq!(
            all,
            vec![due_early.id, lease_lapsed.id, due_late.id, due_now.id]
        );
        assert_eq!(
            store.due_for_refresh(now, 2).await.unwrap(),
            vec![due_early.id, lease_lapsed.id]
        );
        assert!(store.due_for_refresh(now, 0).await.unwrap().is_empty());
        assert!(store.due_for_refresh(t(0), 100).await.unwrap().is_empty());
        // Once claimed, a connection is no longer offered.
        store
            .claim_refresh(due_early.id, &lease("me", t(1030)), now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store.due_for_refresh(now, 100).await.unwrap(),
            vec![lease_lapsed.id, due_late.id, due_now.id]
        );
    }

    pub async fn past_expiry(db: &TestDb) {
        let store = db.store().await;
        let now = t(1000);
        let a = oauth("p1", "a", Some(1), Some(999));
        let b = oauth("p1", "b", Some(1), Some(1000));
        let c = oauth("p1", "c", Some(1), Some(500));
        let future = oauth("p1", "future", Some(1), Some(1001));
        let no_expiry = oauth("p1", "no-expiry", None, None);
        let mut expired = oauth("p1", "expired", Some(1), Some(10));
        expired.status = Status::Expired;
        let no_grant = api_key("p1", "key");
        for x in [&a, &b, &c, &future, &no_expiry, &expired, &no_grant] {
            store.insert_connection(x, &created(x)).await.unwrap();
        }
        assert_eq!(
            store.past_expiry(now, 10).await.unwrap(),
            vec![c.id, a.id, b.id]
        );
        assert_eq!(store.past_expiry(now, 1).await.unwrap(), vec![c.id]);
        assert!(store.past_expiry(t(0), 10).await.unwrap().is_empty());
    }

    pub async fn concurrent_claims_have_one_winner(db: &TestDb) {
        // Two pools on one database: two server processes.
        let s1 = db.store().await;
        let s2 = db.store().await;
        let c = oauth("p1", "contended", Some(10), Some(20));
        s1.insert_connection(&c, &created(&c)).await.unwrap();
        let now = t(100);

        let mut tasks = Vec::new();
        for i in 0..20 {
            let store: SeaStore = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            let id = c.id;
            tasks.push(tokio::spawn(async move {
                let l = lease(&format!("worker-{i}"), t(130));
                store.claim_refresh(id, &l, now).await
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            if let Some(claimed) = task.await.unwrap().unwrap() {
                winners.push(claimed);
            }
        }
        assert_eq!(winners.len(), 1, "exactly one claimer wins");
        let won = winners.remove(0);
        let owner = won.refresh.lease.clone().unwrap().owner;
        assert!(owner.starts_with("worker-"));
        assert_eq!(won.refresh.lease, Some(lease(&owner, t(130))));
        assert_eq!(won.version, c.version, "claiming does not bump the version");
        let mut want = c.clone();
        want.refresh.lease = won.refresh.lease.clone();
        assert_eq!(won, want);
        assert_eq!(s2.get_connection(c.id).await.unwrap().unwrap(), want);

        // While the lease lives nobody else gets it.
        assert!(s2
            .claim_refresh(c.id, &lease("late", t(200)), t(129))
            .await
            .unwrap()
            .is_none());

        // Not active, or gone: None.
        let mut inc = api_key("p1", "incomplete");
        inc.kind = google();
        inc.status = Status::Incomplete;
        s1.insert_connection(&inc, &created(&inc)).await.unwrap();
        assert!(s1
            .claim_refresh(inc.id, &lease("w", t(200)), now)
            .await
            .unwrap()
            .is_none());
        assert!(s1
            .claim_refresh(new_id(), &lease("w", t(200)), now)
            .await
            .unwrap()
            .is_none());
    }

    pub async fn expired_lease_can_be_reclaimed(db: &TestDb) {
        let store = db.store().await;
        let c = oauth("p1", "crashy", Some(10), Some(20));
        store.insert_connection(&c, &created(&c)).await.unwrap();
        let first = store
            .claim_refresh(c.id, &lease("crashed", t(130)), t(100))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.refresh.lease, Some(lease("crashed", t(130))));
        // At the deadline it is still held...
        assert!(store
            .claim_refresh(c.id, &lease("next", t(160)), t(130))
            .await
            .unwrap()
            .is_none());
        // ...a millisecond later it lapsed.
        let second = store
            .claim_refresh(c.id, &lease("next", t(160)), t_ms(130_001))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.refresh.lease, Some(lease("next", t(160))));
        // The crashed worker can no longer save.
        let err = store
            .save_refreshed_grant(
                c.id,
                "crashed",
                c.version,
                &grant(t(131), Some(t(4000))),
                &RefreshSchedule::default(),
                t(131),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict), "{err:?}");
    }

    pub async fn save_refreshed_grant_rules(db: &TestDb) {
        let store = db.store().await;
        let mut c = oauth("p1", "refreshable", Some(10), Some(20));
        c.last_error = Some("previous transient failure".into());
        c.refresh.failures = 2;
        c.last_used_at = Some(t(9));
        store.insert_connection(&c, &created(&c)).await.unwrap();
        store
            .claim_refresh(c.id, &lease("owner", t(130)), t(100))
            .await
            .unwrap()
            .unwrap();

        let new_grant = latchkey_domain::Grant {
            access_token: Sealed(vec![0xAA; 33]),
            refresh_token: Some(Sealed(vec![0xBB; 40])),
            token_type: "bearer".into(),
            scopes: vec!["openid".into()],
            obtained_at: t_ms(100_250),
            expires_at: Some(t(3700)),
        };
        let schedule = RefreshSchedule {
            due_at: Some(t(3400)),
            failures: 0,
            // Ignored: saving always clears the lease.
            lease: Some(lease("owner", t(130))),
        };

        // Wrong owner or stale version: Conflict, nothing written.
        for (owner, version) in [("intruder", c.version), ("owner", c.version - 1)] {
            let err = store
                .save_refreshed_grant(c.id, owner, version, &new_grant, &schedule, t(101))
                .await
                .unwrap_err();
            assert!(
                matches!(err, StoreError::Conflict),
                "{owner} {version}: {err:?}"
            );
        }
        let err = store
            .save_refreshed_grant(new_id(), "owner", 1, &new_grant, &schedule, t(101))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict), "{err:?}");

        // A concurrent user edit (rename, other config) is not overwritten: it bumps the
        // version, so the save must fail; here we rename through the store under the
        // lease and then save with the new version.
        let mut renamed = store.get_connection(c.id).await.unwrap().unwrap();
        renamed.name = name("renamed by user");
        renamed.config = user_edit();
        renamed.version = c.version;
        renamed.version = store.update_connection(&renamed, &[]).await.unwrap();
        let err = store
            .save_refreshed_grant(c.id, "owner", c.version, &new_grant, &schedule, t(101))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict), "{err:?}");

        store
            .save_refreshed_grant(
                c.id,
                "owner",
                renamed.version,
                &new_grant,
                &schedule,
                t(102),
            )
            .await
            .unwrap();
        let got = store.get_connection(c.id).await.unwrap().unwrap();
        let mut want = renamed.clone();
        want.grant = Some(new_grant.clone());
        want.refresh = RefreshSchedule {
            due_at: Some(t(3400)),
            failures: 0,
            lease: None,
        };
        want.last_error = None;
        want.updated_at = t(102);
        want.version = renamed.version + 1;
        assert_eq!(got, want);
        // Name, config, status, secrets and usage untouched.
        assert_eq!(got.name, name("renamed by user"));
        assert_eq!(got.config, user_edit());
        assert_eq!(got.status, Status::Active);
        assert_eq!(got.last_used_at, Some(t(9)));

        // The lease is gone: saving again, even with the right version, fails.
        let err = store
            .save_refreshed_grant(c.id, "owner", want.version, &new_grant, &schedule, t(103))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict), "{err:?}");
    }

    /// A rename written from a read taken before a claim must not wipe the lease: the
    /// refresher would lose its save and a second worker could reuse the refresh token.
    pub async fn update_leaves_the_lease_alone(db: &TestDb) {
        let store = db.store().await;
        let c = oauth("p1", "renamed-mid-refresh", Some(10), Some(2000));
        store.insert_connection(&c, &created(&c)).await.unwrap();
        let stale_read = store.get_connection(c.id).await.unwrap().unwrap();
        store
            .claim_refresh(c.id, &lease("w1", t(130)), t(100))
            .await
            .unwrap()
            .unwrap();
        let mut renamed = stale_read.clone();
        renamed.name = latchkey_domain::ConnectionName::parse("new name").unwrap();
        store.update_connection(&renamed, &[]).await.unwrap();
        let got = store.get_connection(c.id).await.unwrap().unwrap();
        assert_eq!(got.name.as_str(), "new name");
        assert_eq!(
            got.refresh.lease.as_ref().map(|l| l.owner.as_str()),
            Some("w1")
        );
        // Another worker still cannot claim it while the lease lives.
        assert!(store
            .claim_refresh(c.id, &lease("w2", t(130)), t(101))
            .await
            .unwrap()
            .is_none());
    }

    pub async fn release_refresh_rules(db: &TestDb) {
        let store = db.store().await;
        let c = oauth("p1", "flaky", Some(10), Some(2000));
        store.insert_connection(&c, &created(&c)).await.unwrap();
        let schedule = RefreshSchedule {
            due_at: Some(t(160)),
            failures: 4,
            lease: None,
        };
        // Nobody holds it: nothing to release.
        assert!(!store
            .release_refresh(c.id, "w1", c.version, &schedule, Some("x".into()))
            .await
            .unwrap());
        store
            .claim_refresh(c.id, &lease("w1", t(130)), t(100))
            .await
            .unwrap()
            .unwrap();
        assert!(!store
            .release_refresh(c.id, "w2", c.version, &schedule, Some("x".into()))
            .await
            .unwrap());
        assert!(store
            .release_refresh(
                c.id,
                "w1",
                c.version,
                &schedule,
                Some("timeout talking to provider".into())
            )
            .await
            .unwrap());
        let got = store.get_connection(c.id).await.unwrap().unwrap();
        let mut want = c.clone();
        want.refresh = schedule.clone();
        want.last_error = Some("timeout talking to provider".into());
        assert_eq!(got, want, "version, grant and the rest unchanged");
        // Released: claimable again right away, and due only at the new time.
        assert!(store.due_for_refresh(t(159), 10).await.unwrap().is_empty());
        assert_eq!(store.due_for_refresh(t(160), 10).await.unwrap(), vec![c.id]);
        assert!(store
            .claim_refresh(c.id, &lease("w2", t(200)), t(101))
            .await
            .unwrap()
            .is_some());
        // Releasing with no error clears last_error.
        assert!(store
            .release_refresh(c.id, "w2", c.version, &RefreshSchedule::default(), None)
            .await
            .unwrap());
        let got = store.get_connection(c.id).await.unwrap().unwrap();
        assert_eq!(got.last_error, None);
        assert_eq!(got.refresh, RefreshSchedule::default());
        assert!(!store
            .release_refresh(new_id(), "w2", 1, &schedule, None)
            .await
            .unwrap());
    }

    pub async fn due_for_refresh_puts_the_earliest_deadline_first(db: &TestDb) {
        let store = db.store().await;
        let now = t(1000);
        // Due long ago but its token lives on: after the one that lapses soonest.
        let long_lived = oauth("p1", "long-lived", Some(10), Some(5000));
        let lapses_first = oauth("p2", "lapses-first", Some(990), Some(1004));
        let lapses_next = oauth("p1", "lapses-next", Some(500), Some(1010));
        // Same deadline: the earlier due time first.
        let tie_late = oauth("p1", "tie-late", Some(800), Some(1010));
        for c in [&long_lived, &lapses_first, &lapses_next, &tie_late] {
            store.insert_connection(c, &created(c)).await.unwrap();
        }
        assert_eq!(
            store.due_for_refresh(now, 100).await.unwrap(),
            vec![lapses_first.id, lapses_next.id, tie_late.id, long_lived.id]
        );
        assert_eq!(
            store.due_for_refresh(now, 1).await.unwrap(),
            vec![lapses_first.id]
        );
    }

    pub async fn release_refresh_never_writes_over_a_newer_version(db: &TestDb) {
        let store = db.store().await;
        let c = oauth("p1", "reconnected", Some(10), Some(2000));
        store.insert_connection(&c, &created(&c)).await.unwrap();
        store
            .claim_refresh(c.id, &lease("w1", t(130)), t(100))
            .await
            .unwrap()
            .unwrap();
        // A reconnect writes a new grant meanwhile (the lease columns are left alone).
        let mut newer = c.clone();
        newer.grant = Some(grant(t(110), Some(t(3700))));
        newer.refresh = RefreshSchedule {
            due_at: Some(t(3400)),
            failures: 0,
            lease: None,
        };
        newer.last_error = None;
        newer.version = c.version;
        newer.version = store.update_connection(&newer, &[]).await.unwrap();
        let failed = RefreshSchedule {
            due_at: Some(t(160)),
            failures: 5,
            lease: None,
        };
        assert!(!store
            .release_refresh(c.id, "w1", c.version, &failed, Some("timeout".into()))
            .await
            .unwrap());
        let got = store.get_connection(c.id).await.unwrap().unwrap();
        assert_eq!(got.refresh.due_at, Some(t(3400)));
        assert_eq!(got.refresh.failures, 0);
        assert_eq!(got.last_error, None);
        assert_eq!(got.refresh.lease, Some(lease("w1", t(130))), "still held");
        // At the current version the same release applies.
        assert!(store
            .release_refresh(c.id, "w1", newer.version, &failed, Some("timeout".into()))
            .await
            .unwrap());
        let got = store.get_connection(c.id).await.unwrap().unwrap();
        assert_eq!((got.refresh.failures, got.refresh.lease), (5, None));
    }

    pub async fn drop_lease_clears_only_its_own_lease(db: &TestDb) {
        let store = db.store().await;
        let mut c = oauth("p1", "held", Some(10), Some(2000));
        c.refresh.failures = 2;
        c.last_error = Some("earlier".into());
        store.insert_connection(&c, &created(&c)).await.unwrap();
        assert!(!store.drop_lease(c.id, "w1").await.unwrap());
        store
            .claim_refresh(c.id, &lease("w1", t(130)), t(100))
            .await
            .unwrap()
            .unwrap();
        assert!(!store.drop_lease(c.id, "w2").await.unwrap());
        assert_eq!(
            store
                .get_connection(c.id)
                .await
                .unwrap()
                .unwrap()
                .refresh
                .lease,
            Some(lease("w1", t(130)))
        );
        assert!(store.drop_lease(c.id, "w1").await.unwrap());
        assert_eq!(store.get_connection(c.id).await.unwrap().unwrap(), c);
        assert!(!store.drop_lease(new_id(), "w1").await.unwrap());
    }

    pub async fn auth_session_take_is_single_use(db: &TestDb) {
        let store = db.store().await;
        let c = oauth("p1", "authorizing", None, None);
        store.insert_connection(&c, &created(&c)).await.unwrap();
        let s = session(&c, "3f1a-hash", t(600));
        store.insert_auth_session(&s).await.unwrap();
        let mut plain = session(&c, "no-pkce", t(600));
        plain.pkce_verifier = None;
        plain.issuer = None;
        plain.require_iss = false;
        store.insert_auth_session(&plain).await.unwrap();

        let err = store.insert_auth_session(&s).await.unwrap_err();
        assert!(matches!(err, StoreError::Duplicate(_)), "{err:?}");
        let mut orphan = session(&c, "orphan", t(600));
        orphan.connection_id = new_id();
        let err = store.insert_auth_session(&orphan).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound), "{err:?}");

        assert_eq!(store.take_auth_session("3f1a-hash").await.unwrap(), Some(s));
        assert_eq!(store.take_auth_session("3f1a-hash").await.unwrap(), None);
        assert_eq!(
            store.take_auth_session("no-pkce").await.unwrap(),
            Some(plain)
        );
        assert_eq!(store.take_auth_session("unknown").await.unwrap(), None);
    }

    pub async fn concurrent_auth_session_takers(db: &TestDb) {
        let s1 = db.store().await;
        let s2 = db.store().await;
        let c = oauth("p1", "callback-race", None, None);
        s1.insert_connection(&c, &created(&c)).await.unwrap();
        for round in 0..3 {
            let hash = format!("race-{round}");
            s1.insert_auth_session(&session(&c, &hash, t(600)))
                .await
                .unwrap();
            let mut tasks = Vec::new();
            for i in 0..20 {
                let store = if i % 2 == 0 { s1.clone() } else { s2.clone() };
                let hash = hash.clone();
                tasks.push(tokio::spawn(
                    async move { store.take_auth_session(&hash).await },
                ));
            }
            let mut taken = 0;
            for task in tasks {
                if task.await.unwrap().unwrap().is_some() {
                    taken += 1;
                }
            }
            assert_eq!(taken, 1, "round {round}");
        }
    }

    pub async fn purge_auth_sessions(db: &TestDb) {
        let store = db.store().await;
        let c = oauth("p1", "purging", None, None);
        store.insert_connection(&c, &created(&c)).await.unwrap();
        for (hash, exp) in [("old1", 10), ("old2", 99), ("edge", 100), ("new", 500)] {
            store
                .insert_auth_session(&session(&c, hash, t(exp)))
                .await
                .unwrap();
        }
        assert_eq!(store.purge_auth_sessions(t(100)).await.unwrap(), 2);
        assert_eq!(store.purge_auth_sessions(t(100)).await.unwrap(), 0);
        assert!(store.take_auth_session("old1").await.unwrap().is_none());
        assert!(store.take_auth_session("edge").await.unwrap().is_some());
        assert_eq!(store.purge_auth_sessions(t(1000)).await.unwrap(), 1);
    }

    pub async fn oauth_clients(db: &TestDb) {
        let store = db.store().await;
        let global = oauth_client(None, "Acme");
        let mut global_plain = oauth_client(None, "Beta");
        global_plain.client_secret = None;
        let p1 = oauth_client(Some("p1"), "Acme");
        let p2 = oauth_client(Some("p2"), "Zeta");
        for c in [&global, &global_plain, &p1, &p2] {
            store.insert_oauth_client(c).await.unwrap();
        }
        for dup in [oauth_client(None, "Acme"), oauth_client(Some("p1"), "Acme")] {
            let err = store.insert_oauth_client(&dup).await.unwrap_err();
            assert!(
                matches!(err, StoreError::Duplicate(UniqueKey::Name)),
                "{err:?}"
            );
        }
        store
            .insert_oauth_client(&oauth_client(Some("p2"), "Acme"))
            .await
            .unwrap();

        assert_eq!(
            store.get_oauth_client(global.id).await.unwrap(),
            Some(global.clone())
        );
        assert_eq!(
            store.get_oauth_client(global_plain.id).await.unwrap(),
            Some(global_plain.clone())
        );
        assert_eq!(
            store
                .get_oauth_client(OAuthClientId::from_random_bytes([3; 16]))
                .await
                .unwrap(),
            None
        );

        let ids = |v: Vec<latchkey_domain::OAuthClient>| {
            v.into_iter().map(|c| c.id).collect::<HashSet<_>>()
        };
        let for_p1 = store.list_oauth_clients(Some(project("p1"))).await.unwrap();
        assert_eq!(
            ids(for_p1),
            HashSet::from([global.id, global_plain.id, p1.id])
        );
        let for_other = store
            .list_oauth_clients(Some(project("other")))
            .await
            .unwrap();
        assert_eq!(ids(for_other), HashSet::from([global.id, global_plain.id]));
        assert_eq!(store.list_oauth_clients(None).await.unwrap().len(), 5);

        // In use: refused while a connection refers to it.
        let mut conn = oauth("p1", "via client", None, None);
        conn.oauth2_client_id = Some(p1.id);
        store
            .insert_connection(&conn, &created(&conn))
            .await
            .unwrap();
        let err = store.delete_oauth_client(p1.id).await.unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
        assert!(store.get_oauth_client(p1.id).await.unwrap().is_some());

        // Moving the connection off the client frees it.
        let mut moved = conn.clone();
        moved.oauth2_client_id = Some(global.id);
        store.update_connection(&moved, &[]).await.unwrap();
        assert!(store.delete_oauth_client(p1.id).await.unwrap());
        assert!(!store.delete_oauth_client(p1.id).await.unwrap());
        let err = store.delete_oauth_client(global.id).await.unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
        assert!(store.delete_connection(conn.id).await.unwrap());
        assert!(store.delete_oauth_client(global.id).await.unwrap());

        // A connection cannot point at a client that does not exist.
        let mut dangling = oauth("p1", "dangling", None, None);
        dangling.oauth2_client_id = Some(p1.id);
        let err = store
            .insert_connection(&dangling, &created(&dangling))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    }

    pub async fn access_keys(db: &TestDb) {
        let store = db.store().await;
        assert!(store.is_empty_db().await.unwrap());
        let a = access_key("p1", "ci", t(1));
        let mut b = access_key("p1", "deploy", t(2));
        b.scopes = vec![];
        let c = access_key("p2", "ci", t(0));
        for k in [&a, &b, &c] {
            store.insert_access_key(k).await.unwrap();
        }
        let err = store.insert_access_key(&a).await.unwrap_err();
        assert!(matches!(err, StoreError::Duplicate(_)), "{err:?}");
        assert_eq!(store.get_access_key(a.id).await.unwrap(), Some(a.clone()));
        assert_eq!(store.get_access_key(b.id).await.unwrap(), Some(b.clone()));
        assert_eq!(
            store
                .get_access_key(AccessKeyId::from_random_bytes([1; 16]))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store.list_access_keys(Some(project("p1"))).await.unwrap(),
            vec![a.clone(), b.clone()]
        );
        assert_eq!(
            store.list_access_keys(None).await.unwrap(),
            vec![c.clone(), a.clone(), b.clone()]
        );
        assert!(!store.is_empty_db().await.unwrap());
        assert!(store.delete_access_key(a.id).await.unwrap());
        assert!(!store.delete_access_key(a.id).await.unwrap());
        assert_eq!(
            store.list_access_keys(Some(project("p1"))).await.unwrap(),
            vec![b]
        );
    }

    pub async fn migrations_are_idempotent(db: &TestDb) {
        let store = db.store().await;
        let c = api_key("p1", "survivor");
        store.insert_connection(&c, &created(&c)).await.unwrap();
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        // Concurrent migrations from two processes.
        let other = SeaStore::connect(db.url()).await.unwrap();
        let (r1, r2) = tokio::join!(store.migrate(), other.migrate());
        r1.unwrap();
        r2.unwrap();
        assert_eq!(store.get_connection(c.id).await.unwrap(), Some(c));
    }

    pub async fn concurrent_first_migrations(db: &TestDb) {
        // Two processes starting on an empty database at once.
        let a = SeaStore::connect(db.url()).await.unwrap();
        let b = SeaStore::connect(db.url()).await.unwrap();
        let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
        ra.unwrap();
        rb.unwrap();
        assert!(a.is_empty_db().await.unwrap());
        let c = api_key("p1", "after race");
        b.insert_connection(&c, &created(&c)).await.unwrap();
        assert_eq!(a.get_connection(c.id).await.unwrap(), Some(c));
    }

    pub async fn meta_put_if_absent(db: &TestDb) {
        let store = db.store().await;
        assert_eq!(store.get_meta("canary").await.unwrap(), None);
        assert!(store
            .put_meta_if_absent("canary", &[0, 1, 2, 255])
            .await
            .unwrap());
        assert!(!store.put_meta_if_absent("canary", b"other").await.unwrap());
        assert_eq!(
            store.get_meta("canary").await.unwrap(),
            Some(vec![0, 1, 2, 255])
        );
        assert!(store.put_meta_if_absent("empty", &[]).await.unwrap());
        assert_eq!(store.get_meta("empty").await.unwrap(), Some(vec![]));

        // Racing writers: one wins.
        let other = db.store().await;
        let mut tasks = Vec::new();
        for i in 0..10u8 {
            let s = if i % 2 == 0 {
                store.clone()
            } else {
                other.clone()
            };
            tasks.push(tokio::spawn(async move {
                s.put_meta_if_absent("race", &[i]).await
            }));
        }
        let mut wins = 0;
        for task in tasks {
            if task.await.unwrap().unwrap() {
                wins += 1;
            }
        }
        assert_eq!(wins, 1);
    }

    pub async fn corrupt_rows_are_errors(db: &TestDb) {
        let store = db.store().await;
        let c = oauth("p1", "corrupt", Some(1), Some(2));
        store.insert_connection(&c, &created(&c)).await.unwrap();
        let id = c.id.to_string();
        for (sql, column) in [
            ("UPDATE connections SET status = 'paused'", "status"),
            ("UPDATE connections SET kind = 'ftp'", "kind"),
            ("UPDATE connections SET config = '{not json'", "config"),
            ("UPDATE connections SET token_type = NULL", "token_type"),
            (
                "UPDATE connections SET refresh_failures = -1",
                "refresh_failures",
            ),
            (
                "UPDATE connections SET created_at = 9223372036854775807",
                "out of range",
            ),
        ] {
            // Reset, then break one column.
            store.delete_connection(c.id).await.unwrap();
            store.insert_connection(&c, &created(&c)).await.unwrap();
            store
                .connection()
                .execute_unprepared(&format!("{sql} WHERE id = '{id}'"))
                .await
                .unwrap();
            let err = store.get_connection(c.id).await.unwrap_err();
            match err {
                StoreError::Backend(msg) => assert!(msg.contains(column), "{msg}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Connection handling (SQLite only: needs no server)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn sqlite_connect_creates_directory_and_uses_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a").join("b").join("store.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = SeaStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    assert!(path.exists());
    let row = store
        .connection()
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "PRAGMA journal_mode",
        ))
        .await
        .unwrap()
        .unwrap();
    let mode: String = row.try_get_by_index(0).unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    let row = store
        .connection()
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "PRAGMA foreign_keys",
        ))
        .await
        .unwrap()
        .unwrap();
    let fk: i64 = row.try_get_by_index(0).unwrap();
    assert_eq!(fk, 1);
    let row = store
        .connection()
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "PRAGMA busy_timeout",
        ))
        .await
        .unwrap()
        .unwrap();
    let busy: i64 = row.try_get_by_index(0).unwrap();
    assert!(busy >= 5_000, "{busy}");
    assert!(!store.is_postgres());
    store.close().await.unwrap();

    // Reopening an existing file keeps the data and migrating again is a no-op.
    let store = SeaStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    assert!(store.is_empty_db().await.unwrap());
}

#[tokio::test]
async fn sqlite_in_memory_works() {
    let store = SeaStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let c = api_key("p1", "mem");
    store.insert_connection(&c, &created(&c)).await.unwrap();
    assert_eq!(store.get_connection(c.id).await.unwrap(), Some(c));
}

#[tokio::test]
async fn bad_urls_are_backend_errors() {
    for url in ["mysql://localhost/x", "", "nonsense"] {
        let err = SeaStore::connect(url).await.unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{url}: {err:?}");
    }
}

#[tokio::test]
async fn postgres_store_reports_backend() {
    let Some(db) = TestDb::postgres("postgres_store_reports_backend").await else {
        return;
    };
    let store = db.store().await;
    assert!(store.is_postgres());
    store.ping().await.unwrap();
    assert_eq!(
        format!("{store:?}"),
        "SeaStore { backend: \"postgres\", .. }"
    );
}

#[tokio::test]
async fn sqlite_url_without_mode_creates_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("plain.db");
    let store = SeaStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    assert!(path.exists());
    assert_eq!(format!("{store:?}"), "SeaStore { backend: \"sqlite\", .. }");
    // An explicit read-only mode does not create anything.
    let missing = dir.path().join("missing.db");
    let err = SeaStore::connect(&format!("sqlite://{}?mode=ro", missing.display()))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
}

/// A configuration a user edit could leave on an OAuth connection.
fn user_edit() -> ConnectionConfig {
    ConnectionConfig::OAuth(OAuthSettings {
        scopes: Some(vec!["edited".into()]),
        ..OAuthSettings::default()
    })
}
