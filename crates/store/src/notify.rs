//! The [`ChangeFeed`] adapter: tells the in-process caches what another process (or this
//! one) committed.
//!
//! - PostgreSQL: triggers on `connections` and `access_keys` call `pg_notify` with
//!   `c:<id>` / `k:<id>` (delivered at commit, deduplicated within a transaction), so
//!   every writer is covered, whatever code path it took. One listening connection per
//!   process receives them. When it is lost, the feed reports an error (the cache stops
//!   serving), reconnects, LISTENs again and only then reports `Resync`.
//! - SQLite: one process should own the file. If several share it anyway, the store's
//!   writer connection polls `PRAGMA data_version`, which moves when another connection
//!   commits but not for its own commits, and reports `Resync` (drop everything):
//!   another process's changes are seen within one poll interval, and this process's own
//!   writes (which invalidate the cache as they are made) never drop the whole cache.
//!   An in-memory database cannot be shared, so it reports nothing after the first
//!   `Resync`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use latchkey_ports::{Change, ChangeFeed, StoreError};
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::sqlx::sqlite::SqlitePool;
use sea_orm::sqlx::Row as _;
use sea_orm::{ConnectionTrait, DbBackend, DbErr};
use sea_orm_migration::prelude::*;
use tokio::sync::Mutex;

use crate::SeaStore;

/// The NOTIFY channel.
pub(crate) const CHANNEL: &str = "latchkey_changes";
/// How often a SQLite file is checked for other processes' commits.
const SQLITE_POLL: Duration = Duration::from_millis(200);

/// Installs the PostgreSQL triggers that NOTIFY every committed change of a connection
/// or access key. Nothing on SQLite.
pub(crate) struct M0003ChangeNotify;

impl MigrationName for M0003ChangeNotify {
    fn name(&self) -> &str {
        "m0003_change_notify"
    }
}

// The trait spells `&SchemaManager` without a lifetime; matching it exactly is required.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for M0003ChangeNotify {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = m.get_connection();
        db.execute_unprepared(&format!(
            "CREATE OR REPLACE FUNCTION latchkey_notify_change() RETURNS trigger AS $$
             DECLARE changed text;
             BEGIN
               IF TG_OP = 'DELETE' THEN changed := OLD.id; ELSE changed := NEW.id; END IF;
               PERFORM pg_notify('{CHANNEL}', TG_ARGV[0] || ':' || changed);
               RETURN NULL;
             END $$ LANGUAGE plpgsql"
        ))
        .await?;
        for (table, tag) in [("connections", "c"), ("access_keys", "k")] {
            db.execute_unprepared(&format!(
                "DROP TRIGGER IF EXISTS {table}_notify_change ON {table};
                 CREATE TRIGGER {table}_notify_change AFTER INSERT OR UPDATE OR DELETE ON {table}
                 FOR EACH ROW EXECUTE PROCEDURE latchkey_notify_change('{tag}')"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = m.get_connection();
        for table in ["connections", "access_keys"] {
            db.execute_unprepared(&format!(
                "DROP TRIGGER IF EXISTS {table}_notify_change ON {table}"
            ))
            .await?;
        }
        db.execute_unprepared("DROP FUNCTION IF EXISTS latchkey_notify_change()")
            .await?;
        Ok(())
    }
}

/// Parses a NOTIFY payload; anything unexpected asks for a full resync.
fn parse_payload(payload: &str) -> Change {
    let parsed = match payload.split_once(':') {
        Some(("c", id)) => id.parse().ok().map(Change::Connection),
        Some(("k", id)) => id.parse().ok().map(Change::AccessKey),
        _ => None,
    };
    parsed.unwrap_or(Change::Resync)
}

/// LISTEN/NOTIFY on PostgreSQL.
pub struct PgChangeFeed {
    pool: sea_orm::sqlx::PgPool,
    listener: Mutex<Option<PgListener>>,
}

impl std::fmt::Debug for PgChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgChangeFeed")
    }
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn next_change(&self) -> Result<Change, StoreError> {
        let mut guard = self.listener.lock().await;
        let Some(listener) = guard.as_mut() else {
            // Listening first, then Resync: whatever is read after the Resync is covered.
            let mut listener = PgListener::connect_with(&self.pool)
                .await
                .map_err(|e| StoreError::Backend(format!("cannot listen for changes: {e}")))?;
            listener
                .listen(CHANNEL)
                .await
                .map_err(|e| StoreError::Backend(format!("cannot listen for changes: {e}")))?;
            *guard = Some(listener);
            return Ok(Change::Resync);
        };
        // try_recv, not recv: recv would reconnect silently and hide the notifications
        // lost in between.
        match listener.try_recv().await {
            Ok(Some(n)) => Ok(parse_payload(n.payload())),
            Ok(None) => {
                *guard = None;
                Err(StoreError::Backend(
                    "the connection listening for changes was lost".into(),
                ))
            }
            Err(e) => {
                *guard = None;
                Err(StoreError::Backend(format!(
                    "listening for changes failed: {e}"
                )))
            }
        }
    }
}

/// Watches a SQLite file for commits made by other processes.
pub struct SqliteChangeFeed {
    /// The store's writer pool; `None` in memory.
    writer: Option<SqlitePool>,
    /// The next successful poll reports `Resync`: at the start, and after a failure
    /// (the cache stops serving on an error and serves again after a `Resync`).
    must_resync: AtomicBool,
}

impl std::fmt::Debug for SqliteChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteChangeFeed")
    }
}

fn watch_failed(e: sea_orm::sqlx::Error) -> StoreError {
    StoreError::Backend(format!("watching the database failed: {e}"))
}

/// Whether the database changed, as one of the writer's connections sees it, since the
/// last poll that landed on that connection.
///
/// `PRAGMA data_version` moves when another connection commits, never for the
/// connection's own commits, so polled on the writer it ignores this process's writes
/// (the writer is the only connection of ours that writes) and sees every other
/// process's. Its value means something only on the connection that read it, so the
/// last value seen is kept in that connection's own TEMP table: a connection with no
/// value yet (new, or replaced by the pool) reports a change.
async fn poll_writer(pool: &SqlitePool) -> Result<bool, StoreError> {
    let mut conn = pool.acquire().await.map_err(watch_failed)?;
    sea_orm::sqlx::query(
        "CREATE TEMP TABLE IF NOT EXISTS latchkey_change_feed \
         (id INTEGER PRIMARY KEY, seen INTEGER NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .map_err(watch_failed)?;
    let row = sea_orm::sqlx::query(
        "SELECT data_version, (SELECT seen FROM temp.latchkey_change_feed WHERE id = 1) \
         FROM pragma_data_version",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(watch_failed)?;
    let version: i64 = row.try_get(0).map_err(watch_failed)?;
    let seen: Option<i64> = row.try_get(1).map_err(watch_failed)?;
    if seen == Some(version) {
        return Ok(false);
    }
    sea_orm::sqlx::query("INSERT OR REPLACE INTO temp.latchkey_change_feed VALUES (1, ?)")
        .bind(version)
        .execute(&mut *conn)
        .await
        .map_err(watch_failed)?;
    Ok(true)
}

#[async_trait]
impl ChangeFeed for SqliteChangeFeed {
    async fn next_change(&self) -> Result<Change, StoreError> {
        let Some(writer) = &self.writer else {
            // In memory: no other process can write. One Resync, then nothing.
            if !self.must_resync.swap(false, Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            return Ok(Change::Resync);
        };
        loop {
            if !self.must_resync.load(Ordering::SeqCst) {
                tokio::time::sleep(SQLITE_POLL).await;
            }
            let changed = poll_writer(writer).await.inspect_err(|_| {
                self.must_resync.store(true, Ordering::SeqCst);
            })?;
            if self.must_resync.swap(false, Ordering::SeqCst) || changed {
                return Ok(Change::Resync);
            }
        }
    }
}

impl SeaStore {
    /// The change feed of this database, for the caches of this process.
    pub fn change_feed(&self) -> std::sync::Arc<dyn ChangeFeed> {
        match self.db.get_database_backend() {
            DbBackend::Postgres => std::sync::Arc::new(PgChangeFeed {
                pool: self.db.get_postgres_connection_pool().clone(),
                listener: Mutex::new(None),
            }),
            _ => {
                let writer = self.writer.get_sqlite_connection_pool();
                let options = writer.connect_options();
                let file = options.get_filename().to_string_lossy();
                let in_memory = file.is_empty() || file.contains(":memory:");
                std::sync::Arc::new(SqliteChangeFeed {
                    writer: (!in_memory).then(|| writer.clone()),
                    must_resync: AtomicBool::new(true),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_what_changed_and_anything_else_resyncs() {
        let id = "0193a0b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b";
        assert_eq!(
            parse_payload(&format!("c:{id}")),
            Change::Connection(id.parse().unwrap_or_else(|_| unreachable!()))
        );
        assert_eq!(
            parse_payload(&format!("k:{id}")),
            Change::AccessKey(id.parse().unwrap_or_else(|_| unreachable!()))
        );
        for junk in ["", "c:", "x:1", "c:not-a-uuid", "nonsense"] {
            assert_eq!(parse_payload(junk), Change::Resync, "{junk:?}");
        }
    }
}
