//! The [`ChangeFeed`] adapter: tells the in-process caches what another process (or this
//! one) committed.
//!
//! - PostgreSQL: triggers on `connections` and `access_keys` call `pg_notify` with
//!   `c:<id>` / `k:<id>` (delivered at commit, deduplicated within a transaction), so
//!   every writer is covered, whatever code path it took. One listening connection per
//!   process receives them. When it is lost, the feed reports an error (the cache stops
//!   serving), reconnects, LISTENs again and only then reports `Resync`.
//! - SQLite: one process should own the file. If several share it anyway, a dedicated
//!   connection polls `PRAGMA data_version`, which moves when any other connection
//!   commits, and reports `Resync` (drop everything): changes are seen within one poll
//!   interval. An in-memory database cannot be shared, so it reports nothing after the
//!   first `Resync`.

use std::time::Duration;

use async_trait::async_trait;
use latchkey_ports::{Change, ChangeFeed, StoreError};
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::sqlx::sqlite::SqliteConnection;
use sea_orm::sqlx::{Connection as _, Row as _};
use sea_orm::{ConnectionTrait, DbBackend, DbErr};
use sea_orm_migration::prelude::*;
use tokio::sync::Mutex;

use crate::SeaStore;

/// The NOTIFY channel.
pub(crate) const CHANNEL: &str = "latchkey_changes";
/// How often a shared SQLite file is checked for other processes' commits.
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

/// Watches a SQLite file for commits of other connections.
pub struct SqliteChangeFeed {
    options: Option<sea_orm::sqlx::sqlite::SqliteConnectOptions>,
    /// The watching connection and the last `data_version` it saw.
    state: Mutex<Option<(SqliteConnection, i64)>>,
    announced: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SqliteChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteChangeFeed")
    }
}

async fn data_version(conn: &mut SqliteConnection) -> Result<i64, StoreError> {
    let row = sea_orm::sqlx::query("PRAGMA data_version")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| StoreError::Backend(format!("watching the database failed: {e}")))?;
    row.try_get::<i64, _>(0)
        .map_err(|e| StoreError::Backend(format!("watching the database failed: {e}")))
}

#[async_trait]
impl ChangeFeed for SqliteChangeFeed {
    async fn next_change(&self) -> Result<Change, StoreError> {
        let Some(options) = &self.options else {
            // In memory: no other process can write. One Resync, then nothing.
            if self
                .announced
                .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                std::future::pending::<()>().await;
            }
            return Ok(Change::Resync);
        };
        let mut state = self.state.lock().await;
        let Some((conn, seen)) = state.as_mut() else {
            let mut conn = SqliteConnection::connect_with(options)
                .await
                .map_err(|e| StoreError::Backend(format!("cannot watch the database: {e}")))?;
            let version = data_version(&mut conn).await?;
            *state = Some((conn, version));
            return Ok(Change::Resync);
        };
        loop {
            tokio::time::sleep(SQLITE_POLL).await;
            match data_version(conn).await {
                Ok(v) if v != *seen => {
                    *seen = v;
                    return Ok(Change::Resync);
                }
                Ok(_) => {}
                Err(e) => {
                    *state = None;
                    return Err(e);
                }
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
                let options = self.db.get_sqlite_connection_pool().connect_options();
                let file = options.get_filename().to_string_lossy().into_owned();
                let in_memory = file.is_empty() || file.contains(":memory:");
                std::sync::Arc::new(SqliteChangeFeed {
                    options: (!in_memory).then(|| (*options).clone()),
                    state: Mutex::new(None),
                    announced: Default::default(),
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
