//! `RefreshLeaseStore`: the refresh queue and the lease that makes one refresh per grant.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_domain::{Connection, ConnectionId, Grant, Lease, RefreshSchedule, Status};
use latchkey_ports::{RefreshLeaseStore, StoreError};
use sea_orm::sea_query::{Expr, Query, UpdateStatement};
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement,
};

use crate::convert::{connection_from_row, grant_columns};
use crate::entity::connections;
use crate::save_batch::GrantSave;
use crate::time::to_millis;
use crate::{backend, SeaStore};

use connections::Column as C;

/// No lease, or one that lapsed before `now`.
fn lease_free(now_ms: i64) -> Condition {
    Condition::any()
        .add(C::LeaseUntil.is_null())
        .add(C::LeaseUntil.lt(now_ms))
}

/// The due connections at `now_ms`, earliest deadline first, with the id column only.
fn due_query(now_ms: i64, limit: u32) -> sea_orm::Select<connections::Entity> {
    connections::Entity::find()
        .select_only()
        .column(C::Id)
        .filter(C::Status.eq(Status::Active.as_str()))
        .filter(C::RefreshDueAt.lte(now_ms))
        .filter(lease_free(now_ms))
        // Deadline first: the token that lapses soonest. Every due row has an expiry
        // (a due time is only set for expiring grants); NULLs sort last anyway.
        .order_by_asc(Expr::cust("CASE WHEN expires_at IS NULL THEN 1 ELSE 0 END"))
        .order_by_asc(C::ExpiresAt)
        .order_by_asc(C::RefreshDueAt)
        .order_by_asc(C::Id)
        .limit(u64::from(limit))
}

/// `UPDATE connections SET <lease> WHERE id IN (...) AND status = 'active' AND <lease
/// free> RETURNING *`: claims those of `ids` still free.
///
/// On SQLite the status term is written `+status`, which keeps it out of index
/// selection: SQLite has no statistics here, and for a long `IN` list it prefers the
/// `(status, ...)` indexes, walking every active connection (100,000 of them per cycle)
/// instead of seeking each id. PostgreSQL plans from its statistics and has no unary
/// plus on text.
fn claim_batch_statement<'a>(
    backend: DbBackend,
    ids: impl Iterator<Item = &'a str>,
    lease: &Lease,
    now_ms: i64,
) -> Statement {
    let active = Status::Active.as_str();
    let status = if backend == DbBackend::Sqlite {
        Condition::all().add(Expr::cust_with_values("+\"status\" = ?", [active]))
    } else {
        Condition::all().add(C::Status.eq(active))
    };
    backend.build(&claim_update(
        lease,
        Condition::all()
            .add(C::Id.is_in(ids))
            .add(status)
            .add(lease_free(now_ms)),
    ))
}

/// `UPDATE connections SET lease_owner, lease_until WHERE <rows> RETURNING *`.
fn claim_update(lease: &Lease, rows: Condition) -> UpdateStatement {
    let mut q = Query::update();
    q.table(connections::Entity)
        .value(C::LeaseOwner, lease.owner.as_str())
        .value(C::LeaseUntil, to_millis(lease.until))
        .cond_where(rows)
        .returning_all();
    q
}

fn parse_ids(ids: Vec<String>) -> Result<Vec<ConnectionId>, StoreError> {
    ids.into_iter()
        .map(|id| {
            id.parse().map_err(|_| {
                StoreError::Backend(format!("corrupt row in connections: invalid id {id:?}"))
            })
        })
        .collect()
}

#[async_trait]
impl RefreshLeaseStore for SeaStore {
    async fn due_for_refresh(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ids = due_query(to_millis(now), limit)
            .into_tuple::<String>()
            .all(&self.db)
            .await
            .map_err(backend)?;
        parse_ids(ids)
    }

    async fn past_expiry(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ConnectionId>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = to_millis(now);
        let ids = connections::Entity::find()
            .select_only()
            .column(C::Id)
            .filter(C::Status.eq(Status::Active.as_str()))
            .filter(C::ExpiresAt.lte(now))
            .filter(C::AccessToken.is_not_null())
            .order_by_asc(C::ExpiresAt)
            .order_by_asc(C::Id)
            .limit(u64::from(limit))
            .into_tuple::<String>()
            .all(&self.db)
            .await
            .map_err(backend)?;
        parse_ids(ids)
    }

    async fn claim_refresh(
        &self,
        id: ConnectionId,
        lease: &Lease,
        now: DateTime<Utc>,
    ) -> Result<Option<Connection>, StoreError> {
        let id = id.to_string();
        let now = to_millis(now);
        // The claim is one statement that returns the claimed row (RETURNING: SQLite
        // 3.35+, PostgreSQL): the database serialises competing claimers on the row, so
        // at most one sees a free lease, and no transaction round trips are needed on
        // the refresh path. A free row is tried first, then a lapsed lease, so that
        // taking over a crashed worker's lease is told apart (and counted).
        let claim = |free: Condition| {
            let q = claim_update(
                lease,
                Condition::all()
                    .add(C::Id.eq(id.as_str()))
                    .add(C::Status.eq(Status::Active.as_str()))
                    .add(free),
            );
            let stmt = self.db.get_database_backend().build(&q);
            connections::Entity::find()
                .from_raw_sql(stmt)
                .all(&self.writer)
        };
        let mut rows = claim(Condition::all().add(C::LeaseUntil.is_null()))
            .await
            .map_err(backend)?;
        if rows.is_empty() {
            rows = claim(Condition::all().add(C::LeaseUntil.lt(now)))
                .await
                .map_err(backend)?;
            if rows.is_empty() {
                return Ok(None);
            }
            metrics::counter!("latchkey_lease_takeovers_total").increment(1);
        }
        rows.pop().map(connection_from_row).transpose()
    }

    async fn claim_due_refreshes(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Connection>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = to_millis(now);
        // Two statements per cycle, whatever the batch: the due ids (and which of them
        // hold a lapsed lease, for the takeover count), then one UPDATE ... RETURNING
        // that claims those still free. The UPDATE re-checks every row's lease, so a
        // concurrent claimer (another replica) that got there first keeps its rows.
        let due: Vec<(String, Option<i64>)> = due_query(now, limit)
            .column(C::LeaseUntil)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(backend)?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let stmt = claim_batch_statement(
            self.db.get_database_backend(),
            due.iter().map(|(id, _)| id.as_str()),
            lease,
            now,
        );
        let rows = connections::Entity::find()
            .from_raw_sql(stmt)
            .all(&self.writer)
            .await
            .map_err(backend)?;
        let mut claimed: std::collections::HashMap<String, connections::Model> =
            rows.into_iter().map(|r| (r.id.clone(), r)).collect();
        let mut out = Vec::with_capacity(claimed.len());
        // In the due order (RETURNING has none).
        for (id, lease_until) in due {
            if let Some(row) = claimed.remove(&id) {
                if lease_until.is_some() {
                    metrics::counter!("latchkey_lease_takeovers_total").increment(1);
                }
                out.push(connection_from_row(row)?);
            }
        }
        Ok(out)
    }

    async fn save_refreshed_grant(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        grant: &Grant,
        schedule: &RefreshSchedule,
        updated_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let next_version = expected_version
            .checked_add(1)
            .ok_or_else(|| StoreError::Backend("connection version overflow".into()))?;
        let row = GrantSave {
            id: id.to_string(),
            grant: grant_columns(Some(grant)),
            refresh_due_at: schedule.due_at.map(to_millis),
            refresh_failures: i64::from(schedule.failures),
            updated_at: to_millis(updated_at),
            next_version,
            expected_version,
            owner: owner.to_owned(),
        };
        // Written together with the other saves in flight (see save_batch.rs).
        if self.saves.save(&self.writer, row).await? {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    async fn release_refresh(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        schedule: &RefreshSchedule,
        last_error: Option<String>,
    ) -> Result<bool, StoreError> {
        let row = connections::ActiveModel {
            refresh_due_at: Set(schedule.due_at.map(to_millis)),
            refresh_failures: Set(i64::from(schedule.failures)),
            lease_owner: Set(None),
            lease_until: Set(None),
            last_error: Set(last_error),
            ..Default::default()
        };
        let res = connections::Entity::update_many()
            .set(row)
            .filter(C::Id.eq(id.to_string()))
            .filter(C::LeaseOwner.eq(owner))
            .filter(C::Version.eq(expected_version))
            .exec(&self.writer)
            .await
            .map_err(backend)?;
        Ok(res.rows_affected == 1)
    }

    async fn drop_lease(&self, id: ConnectionId, owner: &str) -> Result<bool, StoreError> {
        let row = connections::ActiveModel {
            lease_owner: Set(None),
            lease_until: Set(None),
            ..Default::default()
        };
        let res = connections::Entity::update_many()
            .set(row)
            .filter(C::Id.eq(id.to_string()))
            .filter(C::LeaseOwner.eq(owner))
            .exec(&self.writer)
            .await
            .map_err(backend)?;
        Ok(res.rows_affected == 1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// SQLite's plan for a cycle's claim: one primary-key seek per id, never a walk of
    /// the `(status, ...)` indexes (which hold every active connection). Without
    /// statistics the plan depends on the statement alone, so an empty database shows it.
    #[tokio::test]
    async fn sqlite_claims_a_batch_by_primary_key() {
        let store = SeaStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let ids: Vec<String> = (0..500)
            .map(|i| format!("0193a0b4-5c6d-7e8f-9a0b-{i:012}"))
            .collect();
        let lease = Lease {
            owner: "worker-1".into(),
            until: DateTime::<Utc>::from_timestamp(1_000, 0).unwrap(),
        };
        for n in [1, 10, 500] {
            let claim = claim_batch_statement(
                DbBackend::Sqlite,
                ids.iter().take(n).map(String::as_str),
                &lease,
                999_000,
            );
            let plan: Vec<String> = store
                .connection()
                .query_all(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    format!("EXPLAIN QUERY PLAN {}", claim.sql),
                    claim.values.map(|v| v.0).unwrap_or_default(),
                ))
                .await
                .unwrap()
                .iter()
                .map(|row| row.try_get::<String>("", "detail").unwrap())
                .collect();
            assert_eq!(
                plan,
                ["SEARCH connections USING INDEX sqlite_autoindex_connections_1 (id=?)"],
                "{n} ids"
            );
        }
    }
}
