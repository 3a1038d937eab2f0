//! # latchkey-store
//!
//! The sea-orm adapter of the store ports ([`ConnectionStore`], [`ActivityStore`],
//! [`RefreshLeaseStore`], [`AuthSessionStore`], [`OAuthClientStore`], [`AccessKeyStore`],
//! [`SealedValueStore`], [`ChangeFeed`]) for SQLite and PostgreSQL.
//!
//! Schema conventions, chosen so one schema works the same on both databases:
//! timestamps are BIGINT unix milliseconds (exact comparisons, index friendly; values
//! are truncated to the millisecond), ids are uuid text, sealed values are binary and
//! JSON values are text.
//!
//! [`ConnectionStore`]: latchkey_ports::ConnectionStore
//! [`ActivityStore`]: latchkey_ports::ActivityStore
//! [`RefreshLeaseStore`]: latchkey_ports::RefreshLeaseStore
//! [`SealedValueStore`]: latchkey_ports::SealedValueStore
//! [`ChangeFeed`]: latchkey_ports::ChangeFeed
//! [`AuthSessionStore`]: latchkey_ports::AuthSessionStore
//! [`OAuthClientStore`]: latchkey_ports::OAuthClientStore
//! [`AccessKeyStore`]: latchkey_ports::AccessKeyStore

mod activity;
mod connections;
mod convert;
mod entity;
mod errors;
mod leases;
mod migration;
mod notify;
mod records;
mod save_batch;
mod sealed;
pub mod time;

pub use notify::{PgChangeFeed, SqliteChangeFeed};
pub use sealed::KEY_CHECK_META;

pub(crate) use errors::{backend, is_foreign_key_violation, write_error};
use std::path::Path;
use std::time::Duration;

use latchkey_ports::StoreError;
use sea_orm::sea_query::OnConflict;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DbBackend, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect, Statement,
    TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use crate::entity::{access_keys, auth_sessions, connections as conn_e, meta, oauth_clients};

/// How long a SQLite writer waits for another writer (this or another process) before
/// failing with SQLITE_BUSY.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections of the SQLite read pool: reads overlap each other and the one writer (WAL).
const SQLITE_READERS: u32 = 4;
/// Rows a SQLite connection's worker thread may send ahead of the reader (sqlx's
/// default is 50). Past it, the worker and the task reading hand off to each other every
/// few rows, each hand-off a futex wake on both threads: a cycle's claim returns up to a
/// few thousand rows. Every query here collects all its rows anyway, so a larger buffer
/// holds nothing that would not be held a moment later.
const SQLITE_ROW_BUFFER: usize = 4096;
const POSTGRES_POOL_SIZE: u32 = 10;
/// Arbitrary constant naming the advisory lock that serialises concurrent migrations
/// (two servers starting at once) on PostgreSQL.
const PG_MIGRATION_LOCK: i64 = 0x4c61_7463_686b_6579; // "Latchkey"

/// The store: one connection pool to SQLite or PostgreSQL. Cheap to clone (the pool is
/// shared).
#[derive(Clone)]
pub struct SeaStore {
    /// Reads (and, on PostgreSQL, everything).
    db: DatabaseConnection,
    /// Writes. On a SQLite file, a pool of its own with one connection: SQLite takes one
    /// writer at a time anyway, and a connection drops its whole page cache whenever
    /// another one wrote, so one writer keeps its cache warm, never sleeps in the busy
    /// handler behind another of our connections, and leaves the readers free. The same
    /// pool as `db` elsewhere.
    writer: DatabaseConnection,
    /// Refreshed grants waiting to be saved together (group commit).
    saves: save_batch::SaveBatcher,
}

/// Names the backend only: the pool's own Debug may show connect options, password
/// included.
impl std::fmt::Debug for SeaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.db.get_database_backend() {
            DbBackend::Postgres => "postgres",
            DbBackend::Sqlite => "sqlite",
            DbBackend::MySql => "mysql",
        };
        f.debug_struct("SeaStore")
            .field("backend", &backend)
            .finish_non_exhaustive()
    }
}

impl SeaStore {
    /// Connects to `sqlite://path?mode=rwc` (or `sqlite::memory:`) or `postgres://...`.
    ///
    /// For SQLite the file's parent directory is created when missing, and the
    /// connections use WAL, foreign keys and a busy timeout so concurrent writers wait.
    pub async fn connect(url: &str) -> Result<SeaStore, StoreError> {
        let db = if url.starts_with("sqlite:") {
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            // An in-memory database exists once per connection: one pool of one keeps it
            // whole, for reads and writes.
            if in_memory {
                return Ok(SeaStore::from_connection(connect_sqlite(url, 1).await?));
            }
            let writer = connect_sqlite(url, 1).await?;
            let readers = connect_sqlite(url, SQLITE_READERS).await?;
            return Ok(SeaStore {
                db: readers,
                writer,
                saves: save_batch::SaveBatcher::default(),
            });
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut opts = ConnectOptions::new(url.to_owned());
            opts.max_connections(POSTGRES_POOL_SIZE)
                .min_connections(0)
                .connect_timeout(Duration::from_secs(10))
                .acquire_timeout(Duration::from_secs(30))
                .sqlx_logging(false);
            Database::connect(opts)
                .await
                .map_err(|e| StoreError::Backend(format!("cannot connect to PostgreSQL: {e}")))?
        } else {
            return Err(StoreError::Backend(
                "unsupported database URL: expected sqlite://... or postgres://...".into(),
            ));
        };
        Ok(SeaStore::from_connection(db))
    }

    /// Wraps an existing sea-orm connection (tests, embedding).
    pub fn from_connection(db: DatabaseConnection) -> SeaStore {
        SeaStore {
            writer: db.clone(),
            db,
            saves: save_batch::SaveBatcher::default(),
        }
    }

    /// The underlying sea-orm connection.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Whether the pool talks to PostgreSQL (otherwise SQLite).
    pub fn is_postgres(&self) -> bool {
        self.db.get_database_backend() == DbBackend::Postgres
    }

    /// Applies pending migrations. Idempotent; safe to run from several processes at
    /// once on PostgreSQL (serialised by an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.db.get_database_backend() {
            DbBackend::Postgres => {
                let txn = self.db.begin().await.map_err(backend)?;
                txn.execute(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_advisory_xact_lock($1)",
                    [PG_MIGRATION_LOCK.into()],
                ))
                .await
                .map_err(migration_error)?;
                migration::Migrator::up(&txn, None)
                    .await
                    .map_err(migration_error)?;
                txn.commit().await.map_err(migration_error)
            }
            _ => {
                // SQLite has no advisory lock, and sea-orm-migration runs SQLite
                // migrations outside a transaction. Every DDL statement is IF NOT EXISTS,
                // so when another process migrates at the same moment and our attempt
                // trips over it (the migration row already written, a busy lock), a
                // retry finds the work done.
                let mut attempt = 0;
                loop {
                    match migration::Migrator::up(&self.writer, None).await {
                        Ok(()) => return Ok(()),
                        Err(e) if attempt >= 4 => return Err(migration_error(e)),
                        Err(e) => {
                            tracing::debug!(error = %e, attempt, "retrying SQLite migration");
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                        }
                    }
                }
            }
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(backend)
    }

    /// Closes the pool. Later calls fail.
    pub async fn close(self) -> Result<(), StoreError> {
        // Closing a pool twice (when `writer` shares it) is harmless.
        self.writer.close().await.map_err(backend)?;
        self.db.close().await.map_err(backend)
    }

    /// Reads a value of the key/value `meta` table.
    pub async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(meta::Entity::find_by_id(key.to_owned())
            .one(&self.db)
            .await
            .map_err(backend)?
            .map(|m| m.value))
    }

    /// Stores `value` under `key` unless the key exists. Returns whether it was stored;
    /// of two concurrent callers exactly one wins.
    pub async fn put_meta_if_absent(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let row = meta::ActiveModel {
            key: Set(key.to_owned()),
            value: Set(value.to_vec()),
        };
        let inserted = meta::Entity::insert(row)
            .on_conflict(
                OnConflict::column(meta::Column::Key)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.writer)
            .await
            .map_err(backend)?;
        Ok(inserted == 1)
    }

    /// How many connections there are per (status, type), for metrics.
    pub async fn connection_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        use conn_e::Column as C;
        conn_e::Entity::find()
            .select_only()
            .column(C::Status)
            .column(C::Kind)
            .column_as(C::Id.count(), "n")
            .group_by(C::Status)
            .group_by(C::Kind)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(backend)
    }

    /// How many active connections are due for a refresh at `now` (leased or not): the
    /// refresh backlog.
    pub async fn refresh_backlog(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError> {
        use conn_e::Column as C;
        conn_e::Entity::find()
            .filter(C::Status.eq("active"))
            .filter(C::RefreshDueAt.lte(time::to_millis(now)))
            .count(&self.db)
            .await
            .map_err(backend)
    }

    /// Whether the database holds no record at all (a fresh install): no connection,
    /// OAuth client, pending authorization or access key. The `meta` table is not
    /// counted.
    pub async fn is_empty_db(&self) -> Result<bool, StoreError> {
        let counts = [
            conn_e::Entity::find().count(&self.db).await,
            oauth_clients::Entity::find().count(&self.db).await,
            auth_sessions::Entity::find().count(&self.db).await,
            access_keys::Entity::find().count(&self.db).await,
        ];
        for n in counts {
            if n.map_err(backend)? > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

async fn connect_sqlite(url: &str, connections: u32) -> Result<DatabaseConnection, StoreError> {
    let parsed: SqliteConnectOptions = url
        .parse()
        .map_err(|e| StoreError::Backend(format!("invalid SQLite URL: {e}")))?;
    let filename = parsed.get_filename().to_path_buf();
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    // A plain `sqlite://path` creates the file like `?mode=rwc`; an explicit mode wins.
    let create = !url.contains("mode=");
    if !in_memory {
        if let Some(dir) = filename.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_dir(dir)?;
        }
    }
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(connections)
        .min_connections(if in_memory { 1 } else { 0 })
        .acquire_timeout(Duration::from_secs(30))
        // A file in this process cannot drop a connection: a ping before every statement
        // would only double the hand-offs to the connection's worker thread.
        .test_before_acquire(false)
        .sqlx_logging(false);
    if in_memory {
        opts.idle_timeout(Duration::MAX).max_lifetime(Duration::MAX);
    }
    opts.map_sqlx_sqlite_opts(move |o| {
        let o = if create { o.create_if_missing(true) } else { o };
        let o = o
            .foreign_keys(true)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Normal)
            .row_buffer_size(SQLITE_ROW_BUFFER);
        if in_memory {
            o
        } else {
            o.journal_mode(SqliteJournalMode::Wal)
        }
    });
    Database::connect(opts)
        .await
        .map_err(|e| StoreError::Backend(format!("cannot open SQLite database: {e}")))
}

/// Creates the database directory readable by its owner only (0700): it holds every
/// sealed secret. An existing directory is left as it is.
fn create_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| {
        StoreError::Backend(format!(
            "cannot create the database directory {}: {e}",
            dir.display()
        ))
    })
}

fn migration_error(e: DbErr) -> StoreError {
    StoreError::Backend(format!("migration failed: {e}"))
}
