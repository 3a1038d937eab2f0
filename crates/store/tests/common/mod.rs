//! Test databases: a fresh SQLite file per test, and (when `LATCHKEY_TEST_POSTGRES_URL`
//! is set) a fresh PostgreSQL database per test, dropped afterwards.

#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

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

// The contract's fixtures, shared so both suites build records alike.
pub use latchkey_ports::contract::fixtures::*;
