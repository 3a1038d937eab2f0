//! `cargo xtask bench`: the background refresh and expiry scans cost what is *due*, not
//! what is stored. Times `due_for_refresh` and `past_expiry` over a small and a 10x larger
//! table (10x, or LATCHKEY_BENCH_SCAN_ROWS) with the same number of due rows, and fails if
//! the larger one is more than 3x slower (a full scan would grow with the table). Runs on SQLite, and on PostgreSQL too when
//! LATCHKEY_TEST_POSTGRES_URL is set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{created, oauth, t, TestDb};
use latchkey_ports::{ConnectionStore, RefreshLeaseStore};
use sea_orm::ConnectionTrait;

const DUE: usize = 50;
const SMALL: usize = 2_000;
/// The larger table; `LATCHKEY_BENCH_SCAN_ROWS` overrides it (`cargo xtask bench` sets
/// the 100,000 connections of the target).
fn large() -> usize {
    std::env::var("LATCHKEY_BENCH_SCAN_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > SMALL)
        .unwrap_or(20_000)
}
const RUNS: usize = 40;

struct Figures {
    due_median: Duration,
    expiry_median: Duration,
}

async fn measure(db: &TestDb, total: usize) -> Figures {
    let store = db.store().await;
    for i in 0..total {
        // Due rows at 1..=DUE s, the rest far in the future; all expire far in the future.
        let due = if i < DUE {
            1 + i as i64
        } else {
            10_000_000 + i as i64
        };
        let c = oauth(
            "bench",
            &format!("c{i}"),
            Some(due * 1000),
            Some(20_000_000_000),
        );
        store.insert_connection(&c, &created(&c)).await.unwrap();
    }
    if store.is_postgres() {
        store
            .connection()
            .execute_unprepared("ANALYZE")
            .await
            .unwrap();
    }
    let now = t(100_000);
    let mut due_times = Vec::with_capacity(RUNS);
    let mut expiry_times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let due = store.due_for_refresh(now, 500).await.unwrap();
        due_times.push(started.elapsed());
        assert_eq!(due.len(), DUE);
        let started = Instant::now();
        let lapsed = store.past_expiry(now, 500).await.unwrap();
        expiry_times.push(started.elapsed());
        assert!(lapsed.is_empty());
    }
    due_times.sort();
    expiry_times.sort();
    Figures {
        due_median: due_times[RUNS / 2],
        expiry_median: expiry_times[RUNS / 2],
    }
}

async fn run(label: &str, small_db: TestDb, large_db: TestDb) -> bool {
    let small = measure(&small_db, SMALL).await;
    let rows = large();
    let large = measure(&large_db, rows).await;
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64().max(1e-9);
    let due_ratio = ratio(small.due_median, large.due_median);
    let expiry_ratio = ratio(small.expiry_median, large.expiry_median);
    println!(
        "{label}: due_for_refresh median {:?} ({SMALL} rows) vs {:?} ({rows} rows), ratio {due_ratio:.2}; \
         past_expiry median {:?} vs {:?}, ratio {expiry_ratio:.2}",
        small.due_median, large.due_median, small.expiry_median, large.expiry_median
    );
    let ok = due_ratio < 3.0 && expiry_ratio < 3.0;
    if !ok {
        println!("{label}: FAILED: the scans grow with the table, not with the due rows");
    }
    ok
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = rt.block_on(async {
        let mut ok = run("sqlite", TestDb::sqlite(), TestDb::sqlite()).await;
        if let (Some(a), Some(b)) = (
            TestDb::postgres("bench_small").await,
            TestDb::postgres("bench_large").await,
        ) {
            ok &= run("postgres", a, b).await;
        }
        ok
    });
    if ok {
        println!("refresh_scan: ok");
    } else {
        std::process::exit(1);
    }
}
