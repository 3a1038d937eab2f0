//! The store's side of the credentials hot path: the batched usage write and the change
//! feed that keeps other processes' caches true. Each case runs on SQLite and, when
//! LATCHKEY_TEST_POSTGRES_URL is set, on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use latchkey_domain::{FlowId, Usage};
use latchkey_ports::{AccessKeyStore, ActivityStore, Change, ChangeFeed, ConnectionStore};
use sea_orm::ConnectionTrait;

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::TestDb::sqlite();
                    super::cases::$case(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    batched_usage_adds_up_and_skips_deleted_connections,
    the_feed_reports_another_pools_writes,
);

fn usage(c: &latchkey_domain::Connection, flow: &str, first: i64, last: i64, n: i64) -> Usage {
    Usage {
        connection_id: c.id,
        flow_id: FlowId::parse(flow).unwrap(),
        first_used_at: t(first),
        last_used_at: t(last),
        count: n,
    }
}

/// Waits for the next change, failing instead of hanging when none comes.
async fn next(feed: &dyn ChangeFeed) -> Change {
    tokio::time::timeout(Duration::from_secs(20), feed.next_change())
        .await
        .expect("the feed reported nothing within 20 s")
        .expect("the feed failed")
}

mod cases {
    use super::*;

    pub async fn batched_usage_adds_up_and_skips_deleted_connections(db: &TestDb) {
        let store = db.store().await;
        let a = api_key("p1", "a");
        let b = api_key("p1", "b");
        let gone = api_key("p1", "gone");
        // More connections than one statement takes, so the batch is split.
        let many: Vec<_> = (0..620).map(|i| api_key("p2", &format!("m{i}"))).collect();
        for c in [&a, &b, &gone].into_iter().chain(&many) {
            store.insert_connection(c, &created(c)).await.unwrap();
        }
        store
            .record_usage(a.id, Some(FlowId::parse("f1").unwrap()), t(10))
            .await
            .unwrap();
        assert!(store.delete_connection(gone.id).await.unwrap());

        let mut last_used = vec![(a.id, t(30)), (b.id, t(5)), (gone.id, t(40))];
        last_used.extend(
            many.iter()
                .enumerate()
                .map(|(i, c)| (c.id, t(100 + i as i64))),
        );
        let mut flows = vec![
            usage(&a, "f1", 2, 30, 3),
            usage(&a, "f2", 20, 25, 2),
            usage(&gone, "f1", 40, 40, 1),
        ];
        flows.extend(many.iter().map(|c| usage(c, "bulk", 7, 8, 4)));
        store.record_usages(&last_used, &flows).await.unwrap();

        let got_a = store.get_connection(a.id).await.unwrap().unwrap();
        assert_eq!(got_a.last_used_at, Some(t(30)));
        assert_eq!(got_a.version, a.version, "usage is not a change");
        let usages = store.list_usages(a.id, 100).await.unwrap();
        let f1 = usages.iter().find(|u| u.flow_id.as_str() == "f1").unwrap();
        // Added to the row written before, first use widened back to 2.
        assert_eq!(
            (f1.count, f1.first_used_at, f1.last_used_at),
            (4, t(2), t(30))
        );
        let f2 = usages.iter().find(|u| u.flow_id.as_str() == "f2").unwrap();
        assert_eq!(
            (f2.count, f2.first_used_at, f2.last_used_at),
            (2, t(20), t(25))
        );
        assert_eq!(
            store
                .get_connection(b.id)
                .await
                .unwrap()
                .unwrap()
                .last_used_at,
            Some(t(5))
        );
        assert!(store.list_usages(b.id, 100).await.unwrap().is_empty());
        assert!(store.get_connection(gone.id).await.unwrap().is_none());
        for (i, c) in many.iter().enumerate() {
            let got = store.get_connection(c.id).await.unwrap().unwrap();
            assert_eq!(got.last_used_at, Some(t(100 + i as i64)));
            let u = store.list_usages(c.id, 100).await.unwrap();
            assert_eq!(u.len(), 1);
            assert_eq!(u[0].count, 4);
        }

        // An older batch never moves last_used_at back.
        store
            .record_usages(&[(a.id, t(3))], &[usage(&a, "f2", 21, 22, 1)])
            .await
            .unwrap();
        assert_eq!(
            store
                .get_connection(a.id)
                .await
                .unwrap()
                .unwrap()
                .last_used_at,
            Some(t(30))
        );
        let f2 = store
            .list_usages(a.id, 100)
            .await
            .unwrap()
            .into_iter()
            .find(|u| u.flow_id.as_str() == "f2")
            .unwrap();
        assert_eq!(
            (f2.count, f2.first_used_at, f2.last_used_at),
            (3, t(20), t(25))
        );
        store.record_usages(&[], &[]).await.unwrap();
    }

    /// Two pools on one database stand for two processes.
    pub async fn the_feed_reports_another_pools_writes(db: &TestDb) {
        let writer = db.store().await;
        let reader = db.store().await;
        let feed = reader.change_feed();
        assert_eq!(next(&*feed).await, Change::Resync, "listening first");

        let c = api_key("p1", "watched");
        writer.insert_connection(&c, &created(&c)).await.unwrap();
        let key = access_key("p1", "k", t(1));
        writer.insert_access_key(&key).await.unwrap();
        let mut renamed = c.clone();
        renamed.name = name("renamed");
        writer.update_connection(&renamed, &[]).await.unwrap();
        writer.delete_access_key(key.id).await.unwrap();
        writer.delete_connection(c.id).await.unwrap();

        if writer.is_postgres() {
            // Each committed change names its record, in commit order.
            let mut seen = Vec::new();
            while seen.len() < 5 {
                seen.push(next(&*feed).await);
            }
            assert_eq!(
                seen,
                vec![
                    Change::Connection(c.id),
                    Change::AccessKey(key.id),
                    Change::Connection(c.id),
                    Change::AccessKey(key.id),
                    Change::Connection(c.id),
                ]
            );

            // The listening connection is killed: the feed says so, then listens again
            // and asks for a resync, and changes flow again.
            reader
                .connection()
                .execute_unprepared(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND query LIKE 'LISTEN%'",
                )
                .await
                .unwrap();
            let lost = tokio::time::timeout(Duration::from_secs(20), feed.next_change())
                .await
                .expect("the loss was not reported");
            assert!(lost.is_err(), "{lost:?}");
            assert_eq!(next(&*feed).await, Change::Resync);
            let d = api_key("p1", "after");
            writer.insert_connection(&d, &created(&d)).await.unwrap();
            assert_eq!(next(&*feed).await, Change::Connection(d.id));
        } else {
            // SQLite tells only that another connection committed.
            assert_eq!(next(&*feed).await, Change::Resync);
            let d = api_key("p1", "after");
            writer.insert_connection(&d, &created(&d)).await.unwrap();
            assert_eq!(next(&*feed).await, Change::Resync);

            // The feed's own store writing (this process: its cache invalidates those
            // records as it writes them) drops nothing for five polls...
            let own = api_key("p1", "own");
            reader
                .insert_connection(&own, &created(&own))
                .await
                .unwrap();
            reader.delete_connection(own.id).await.unwrap();
            let quiet = tokio::time::timeout(Duration::from_secs(1), feed.next_change()).await;
            assert!(quiet.is_err(), "own writes reported: {quiet:?}");
            // ...while another process's write still is.
            writer.delete_connection(d.id).await.unwrap();
            assert_eq!(next(&*feed).await, Change::Resync);
        }
    }
}
