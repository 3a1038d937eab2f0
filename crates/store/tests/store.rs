//! The store contract, run against SQLite always and PostgreSQL when
//! `LATCHKEY_TEST_POSTGRES_URL` is set (each test on its own fresh database).

// Test code: a failed unwrap is a failed test, helpers included.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use latchkey_domain::{RefreshSchedule, Sealed, Status};
use latchkey_ports::{
    AccessKeyStore, ActivityStore, AuthSessionStore, ConnectionQuery, ConnectionStore,
    OAuthClientStore, RefreshLeaseStore, SealedTable, SealedValueStore, StoreError,
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
    empty_until_data,
    concurrent_uses_are_all_counted,
    concurrent_creators_never_pass_the_cap,
    concurrent_claims_have_one_winner,
    concurrent_saves_are_batched_and_each_compared,
    concurrent_claim_batches_share_nothing,
    concurrent_auth_session_takers,
    migrations_are_idempotent,
    concurrent_first_migrations,
    meta_put_if_absent,
    corrupt_rows_are_errors,
    sealed_values_page_by_id_and_replace_by_compare_and_set,
    sealed_header_counts_group_values_by_key_header,
);

/// Runs each case of the shared store contract (`latchkey_ports::contract`, which the
/// in-memory fake of the app's tests runs too) on a fresh SQLite file and, when
/// configured, a fresh PG database.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod contract_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = super::TestDb::sqlite();
                    latchkey_ports::contract::$case(&db.store().await).await;
                }
            )*
        }
        mod contract_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(db) = super::TestDb::postgres(stringify!($case)).await else {
                        return;
                    };
                    latchkey_ports::contract::$case(&db.store().await).await;
                }
            )*
        }

        #[test]
        fn every_contract_case_runs() {
            assert_eq!([$(stringify!($case)),*], latchkey_ports::contract::CASES);
        }
    };
}

contract!(
    usage_upsert,
    round_trip_every_field,
    list_filters_and_paging,
    duplicate_names,
    update_compare_and_set,
    delete_cascades,
    connection_cap_per_project,
    update_leaves_the_lease_alone,
    events_keep_order,
    events_are_paged,
    usages_are_bounded_and_counted,
    retention_purges_old_history_only,
    due_for_refresh_order_limit_and_leases,
    claim_due_refreshes_takes_a_cycles_work,
    past_expiry,
    expired_lease_can_be_reclaimed,
    save_refreshed_grant_rules,
    release_refresh_rules,
    due_for_refresh_puts_the_earliest_deadline_first,
    release_refresh_never_writes_over_a_newer_version,
    drop_lease_clears_only_its_own_lease,
    auth_session_take_is_single_use,
    purge_auth_sessions,
    oauth_clients,
    access_keys,
);

mod cases {
    use super::*;

    /// What `is_empty_db` counts as data (start-up decides on it whether a key ring may be
    /// generated): a sealed client secret, an access key.
    pub async fn empty_until_data(db: &TestDb) {
        let store = db.store().await;
        assert!(store.is_empty_db().await.unwrap());
        store.ping().await.unwrap();
        let client = oauth_client(Some("p1"), "shared app");
        store.insert_oauth_client(&client).await.unwrap();
        assert!(!store.is_empty_db().await.unwrap());

        let other = TestDb::sqlite();
        let keys_only = other.store().await;
        assert!(keys_only.is_empty_db().await.unwrap());
        keys_only
            .insert_access_key(&access_key("p1", "ci", t(1)))
            .await
            .unwrap();
        assert!(!keys_only.is_empty_db().await.unwrap());
    }

    fn sealed(record: &latchkey_ports::SealedRecord, field: &str) -> Option<Sealed> {
        record
            .values
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, v)| v.clone())
    }

    /// The start-up key census: the database groups every sealed value by its header
    /// (`[version][id length][id]`), whatever follows it; a value too short for a header
    /// comes back whole, for the cipher to call malformed.
    pub async fn sealed_header_counts_group_values_by_key_header(db: &TestDb) {
        let store = db.store().await;
        let header = |id: &str| [&[1u8, id.len() as u8][..], id.as_bytes()].concat();
        let mut rows = Vec::new();
        for i in 0..3u8 {
            rows.push([header("k1"), vec![i; 40]].concat());
        }
        for i in 0..2u8 {
            rows.push([header("key-two"), vec![i, 7, 9]].concat());
        }
        rows.push(vec![1]);
        for (i, bytes) in rows.into_iter().enumerate() {
            let mut c = api_key("p1", &format!("c{i}"));
            c.secrets = Some(Sealed(bytes));
            store.insert_connection(&c, &created(&c)).await.unwrap();
        }
        let mut counts = std::collections::BTreeMap::new();
        for (h, n) in store
            .sealed_header_counts(SealedTable::Connections)
            .await
            .unwrap()
        {
            *counts.entry(h.0).or_insert(0) += n;
        }
        let want: std::collections::BTreeMap<Vec<u8>, u64> =
            [(header("k1"), 3), (header("key-two"), 2), (vec![1], 1)].into();
        assert_eq!(counts, want);
        assert!(store
            .sealed_header_counts(SealedTable::OAuthClients)
            .await
            .unwrap()
            .is_empty());
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
            row.grant().unwrap().access_token.clone(),
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

    /// Concurrent uses of one flow, from parallel tasks, are all counted.
    pub async fn concurrent_uses_are_all_counted(db: &TestDb) {
        let store = db.store().await;
        let c = api_key("p1", "busy");
        store.insert_connection(&c, &created(&c)).await.unwrap();
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
        inc = with_status(inc, Status::Incomplete);
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

    /// Saves in flight together are written in one statement (save_batch.rs): each row
    /// still wins or loses its own compare-and-set, and every winner's grant is stored.
    pub async fn concurrent_saves_are_batched_and_each_compared(db: &TestDb) {
        let store = db.store().await;
        let now = t(100);
        let mut conns = Vec::new();
        for i in 0..60 {
            let c = oauth("p1", &format!("c{i}"), Some(10), Some(20));
            store.insert_connection(&c, &created(&c)).await.unwrap();
            let claimed = store
                .claim_refresh(c.id, &lease(&format!("w{i}"), t(130)), now)
                .await
                .unwrap()
                .unwrap();
            conns.push(claimed);
        }
        let mut tasks = Vec::new();
        for (i, c) in conns.iter().enumerate() {
            let store = store.clone();
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut g = c.grant().unwrap().clone();
                g.access_token = Sealed(format!("at-{i}").into_bytes());
                g.refresh_token = (i % 2 == 0).then(|| Sealed(format!("rt-{i}").into_bytes()));
                g.expires_at = Some(t(1000 + i as i64));
                let schedule = RefreshSchedule {
                    due_at: Some(t(900 + i as i64)),
                    failures: 0,
                    lease: None,
                };
                // Every third one presents a stale version, every fifth a foreign owner.
                let version = if i % 3 == 0 { c.version + 7 } else { c.version };
                let owner = if i % 5 == 0 {
                    "stranger".to_owned()
                } else {
                    format!("w{i}")
                };
                let r = store
                    .save_refreshed_grant(c.id, &owner, version, &g, &schedule, t(101))
                    .await;
                (i, c, g, r)
            }));
        }
        for task in tasks {
            let (i, before, g, r) = task.await.unwrap();
            let stored = store.get_connection(before.id).await.unwrap().unwrap();
            if i % 3 == 0 || i % 5 == 0 {
                assert!(matches!(r, Err(StoreError::Conflict)), "{i}: {r:?}");
                assert_eq!(stored, before, "{i}: a lost compare-and-set writes nothing");
            } else {
                r.unwrap();
                assert_eq!(stored.grant(), Some(&g), "{i}");
                assert_eq!(stored.version, before.version + 1, "{i}");
                assert_eq!(stored.refresh.lease, None, "{i}");
                assert_eq!(stored.refresh.due_at, Some(t(900 + i as i64)), "{i}");
                assert_eq!(stored.updated_at, t(101), "{i}");
            }
        }
    }

    /// Two processes claiming a cycle's work at once never both get a connection.
    pub async fn concurrent_claim_batches_share_nothing(db: &TestDb) {
        let s1 = db.store().await;
        let s2 = db.store().await;
        let mut ids = std::collections::HashSet::new();
        for i in 0..80 {
            let c = oauth("p1", &format!("c{i}"), Some(10), Some(20));
            s1.insert_connection(&c, &created(&c)).await.unwrap();
            ids.insert(c.id);
        }
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            tasks.push(tokio::spawn(async move {
                store
                    .claim_due_refreshes(&lease(&format!("b{i}"), t(130)), t(100), 25)
                    .await
                    .unwrap()
            }));
        }
        let mut seen = std::collections::HashSet::new();
        let mut check = |claimed: Vec<latchkey_domain::Connection>| {
            for c in claimed {
                assert!(seen.insert(c.id), "claimed twice: {}", c.id);
            }
        };
        for task in tasks {
            check(task.await.unwrap());
        }
        // Racing claimers read the same due ids, so losers get fewer; what is left is
        // claimed by the next passes, and nothing twice.
        loop {
            let more = s1
                .claim_due_refreshes(&lease("late", t(130)), t(100), 25)
                .await
                .unwrap();
            if more.is_empty() {
                break;
            }
            check(more);
        }
        assert_eq!(seen, ids, "all due work is claimed");
        for id in ids {
            let stored = s2.get_connection(id).await.unwrap().unwrap();
            assert!(stored.refresh.lease.is_some());
        }
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
