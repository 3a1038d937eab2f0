//! Group commit of refreshed grants: concurrent `save_refreshed_grant` calls are written
//! together, in one `UPDATE ... FROM (VALUES ...) RETURNING` statement per batch.
//!
//! The background refresh saves a grant per token call; one statement (and, on SQLite,
//! one commit) each made the database the refresh engine's bottleneck. No task is
//! spawned: the first caller to find no batch in flight becomes the leader and writes
//! whatever is queued, and again until the queue is empty, while the others wait for
//! their own row's answer. Each row keeps its compare-and-set (version and lease owner),
//! so the batch changes nothing of what one save means.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};
use tokio::sync::oneshot;

use latchkey_ports::StoreError;

use crate::backend;
use crate::convert::GrantColumns;

/// Rows per statement: 13 parameters each stays far below SQLite's limit of 32,766.
const MAX_BATCH: usize = 500;

/// One refreshed grant to save, as column values.
pub(crate) struct GrantSave {
    pub id: String,
    pub grant: GrantColumns,
    pub refresh_due_at: Option<i64>,
    pub refresh_failures: i64,
    pub updated_at: i64,
    pub next_version: i64,
    pub expected_version: i64,
    pub owner: String,
}

impl GrantSave {
    fn values(self) -> [Value; 13] {
        [
            self.id.into(),
            self.grant.access_token.into(),
            self.grant.refresh_token.into(),
            self.grant.token_type.into(),
            self.grant.scopes.into(),
            self.grant.obtained_at.into(),
            self.grant.expires_at.into(),
            self.refresh_due_at.into(),
            self.refresh_failures.into(),
            self.updated_at.into(),
            self.next_version.into(),
            self.expected_version.into(),
            self.owner.into(),
        ]
    }
}

/// Whether a row was written (`Ok(true)`), lost its compare-and-set (`Ok(false)`), or
/// the statement failed.
type Answer = Result<bool, StoreError>;

#[derive(Default)]
struct Queue {
    waiting: Vec<(GrantSave, oneshot::Sender<Answer>)>,
    writing: bool,
}

/// The queue of saves waiting for the next statement. Shared by the store's clones.
#[derive(Default, Clone)]
pub(crate) struct SaveBatcher {
    queue: Arc<Mutex<Queue>>,
}

/// Hands the leader role back if the leader's future is dropped mid-write, so the next
/// caller takes over the queue.
struct Leading<'a>(&'a SaveBatcher);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.lock().writing = false;
    }
}

impl SaveBatcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue holds plain values: usable after a panic elsewhere.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Saves `row` with whatever else is queued; `Ok(false)` when its version or lease
    /// no longer matched.
    pub(crate) async fn save(&self, db: &DatabaseConnection, row: GrantSave) -> Answer {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut q = self.lock();
            q.waiting.push((row, tx));
            !std::mem::replace(&mut q.writing, true)
        };
        if lead {
            let _leading = Leading(self);
            loop {
                let batch: Vec<_> = {
                    let mut q = self.lock();
                    let n = q.waiting.len().min(MAX_BATCH);
                    q.waiting.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                write(db, batch).await;
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Backend(
                "the batched save was abandoned before it answered".into(),
            ))
        })
    }
}

/// Writes one batch and answers each of its callers.
async fn write(db: &DatabaseConnection, batch: Vec<(GrantSave, oneshot::Sender<Answer>)>) {
    let (rows, senders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let stmt = statement(db.get_database_backend(), rows);
    let written: Result<HashSet<String>, String> = match db.query_all(stmt).await {
        Ok(rows) => rows
            .iter()
            .map(|r| r.try_get_by_index::<String>(0))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string()),
        Err(e) => Err(backend(e).to_string()),
    };
    for (id, tx) in ids.iter().zip(senders) {
        let answer = match &written {
            Ok(set) => Ok(set.contains(id)),
            Err(e) => Err(StoreError::Backend(e.clone())),
        };
        // A caller that stopped waiting needs no answer.
        let _ = tx.send(answer);
    }
}

/// `WITH v(...) AS (VALUES ...) UPDATE connections SET ... FROM v WHERE <id, version and
/// lease owner match> RETURNING id`: every row compared and set on its own.
fn statement(backend: DbBackend, rows: Vec<GrantSave>) -> Statement {
    let postgres = backend == DbBackend::Postgres;
    // PostgreSQL types a VALUES list from its first row: cast its parameters.
    const PG_TYPES: [&str; 13] = [
        "text", "bytea", "bytea", "text", "text", "bigint", "bigint", "bigint", "bigint", "bigint",
        "bigint", "bigint", "text",
    ];
    let mut sql = String::from(
        "WITH v(id, access_token, refresh_token, token_type, scopes, obtained_at, expires_at, \
         refresh_due_at, refresh_failures, updated_at, next_version, expected_version, owner) \
         AS (VALUES ",
    );
    let mut values = Vec::with_capacity(rows.len() * 13);
    for (r, row) in rows.into_iter().enumerate() {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (c, ty) in PG_TYPES.iter().enumerate() {
            if c > 0 {
                sql.push_str(", ");
            }
            if postgres {
                sql.push_str(&format!("${}", values.len() + c + 1));
                if r == 0 {
                    sql.push_str("::");
                    sql.push_str(ty);
                }
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
        values.extend(row.values());
    }
    sql.push_str(
        ") UPDATE connections SET access_token = v.access_token, \
         refresh_token = v.refresh_token, token_type = v.token_type, scopes = v.scopes, \
         obtained_at = v.obtained_at, expires_at = v.expires_at, \
         refresh_due_at = v.refresh_due_at, refresh_failures = v.refresh_failures, \
         updated_at = v.updated_at, version = v.next_version, lease_owner = NULL, \
         lease_until = NULL, last_error = NULL FROM v WHERE connections.id = v.id \
         AND connections.version = v.expected_version AND connections.lease_owner = v.owner \
         RETURNING connections.id",
    );
    Statement::from_sql_and_values(backend, sql, values)
}
