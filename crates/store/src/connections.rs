//! `ConnectionStore`: connections, their events and usages, and refresh leases.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_domain::{
    Connection, ConnectionEvent, ConnectionId, EventCursor, FlowId, Grant, Lease, RefreshSchedule,
    Status, Usage,
};
use latchkey_ports::{ConnectionQuery, ConnectionStore, EventPage, EventQuery, StoreError};
use sea_orm::sea_query::{Alias, Expr, Func, LikeExpr, OnConflict, Query};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
};

use crate::convert::{
    connection_from_row, connection_row, event_from_row, event_row, grant_columns, usage_from_row,
};
use crate::entity::{auth_sessions, connection_events, connection_usages, connections};
use crate::time::to_millis;
use crate::{backend, SeaStore};

use connections::Column as C;

/// First key of the advisory lock that serialises connection creation per project on
/// PostgreSQL (the second key is the project id's hash). Arbitrary; "Lk" + "cap".
const PG_PROJECT_CAP_LOCK: i32 = 0x4c6b_6361;

/// `%text%` for LIKE over a lowercased column, with the wildcards in `text` escaped so that
/// a search for `50%` finds only names containing `50%`. SQLite's `lower()` folds ASCII
/// only, so the pattern folds ASCII only too: both databases then agree.
fn like_contains(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c.to_ascii_lowercase());
    }
    p.push('%');
    p
}

/// Errors of writing a connection row: name clashes and unknown OAuth clients get
/// their own meaning.
fn connection_write_error(e: DbErr) -> StoreError {
    match e.sql_err() {
        Some(sea_orm::SqlErr::UniqueConstraintViolation(msg)) => {
            // The primary key can only clash on a reused id; everything else is the
            // (project_id, name) index.
            if msg.contains("name") {
                StoreError::Duplicate("name")
            } else {
                StoreError::Duplicate("id")
            }
        }
        Some(sea_orm::SqlErr::ForeignKeyConstraintViolation(_)) => StoreError::Backend(
            "the connection refers to an OAuth client that does not exist".into(),
        ),
        _ => backend(e),
    }
}

/// No lease, or one that lapsed before `now`.
fn lease_free(now_ms: i64) -> Condition {
    Condition::any()
        .add(C::LeaseUntil.is_null())
        .add(C::LeaseUntil.lt(now_ms))
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

async fn insert_events<Db: ConnectionTrait>(
    db: &Db,
    events: &[ConnectionEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    connection_events::Entity::insert_many(events.iter().map(event_row))
        .exec_without_returning(db)
        .await
        .map_err(|e| match e.sql_err() {
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => {
                StoreError::Duplicate("event id")
            }
            Some(sea_orm::SqlErr::ForeignKeyConstraintViolation(_)) => StoreError::NotFound,
            _ => backend(e),
        })?;
    Ok(())
}

/// Rows per statement of a usage flush: well under SQLite's and PostgreSQL's limits on
/// bound parameters.
const USAGE_CHUNK: usize = 500;

/// One UPDATE for many connections: `last_used_at` moves forward to the time given for
/// its id (a CASE on the id), never back.
async fn update_last_used<Db: ConnectionTrait>(
    db: &Db,
    entries: &[(ConnectionId, DateTime<Utc>)],
) -> Result<(), StoreError> {
    let Some(((first_id, first_at), rest)) = entries.split_first() else {
        return Ok(());
    };
    let mut proposed = Expr::case(C::Id.eq(first_id.to_string()), to_millis(*first_at));
    for (id, at) in rest {
        proposed = proposed.case(C::Id.eq(id.to_string()), to_millis(*at));
    }
    let proposed: sea_orm::sea_query::SimpleExpr =
        proposed.finally(Expr::col(C::LastUsedAt)).into();
    let later = Expr::case(
        Condition::any()
            .add(C::LastUsedAt.is_null())
            .add(Expr::col(C::LastUsedAt).lt(proposed.clone())),
        proposed,
    )
    .finally(Expr::col(C::LastUsedAt));
    connections::Entity::update_many()
        .col_expr(C::LastUsedAt, later.into())
        .filter(C::Id.is_in(entries.iter().map(|(id, _)| id.to_string())))
        .exec(db)
        .await
        .map_err(backend)?;
    Ok(())
}

/// One multi-row upsert of (connection, flow) usage rows, adding counts.
async fn upsert_usages<Db: ConnectionTrait>(db: &Db, rows: &[&Usage]) -> Result<(), StoreError> {
    use connection_usages::Column as U;
    if rows.is_empty() {
        return Ok(());
    }
    let existing = |c: U| Expr::col((connection_usages::Entity, c));
    let proposed = |c: U| Expr::col((Alias::new("excluded"), c));
    connection_usages::Entity::insert_many(rows.iter().map(|u| connection_usages::ActiveModel {
        connection_id: Set(u.connection_id.to_string()),
        flow_id: Set(u.flow_id.as_str().to_owned()),
        first_used_at: Set(to_millis(u.first_used_at)),
        last_used_at: Set(to_millis(u.last_used_at)),
        use_count: Set(u.count),
    }))
    .on_conflict(
        OnConflict::columns([U::ConnectionId, U::FlowId])
            .value(
                U::UseCount,
                existing(U::UseCount).add(proposed(U::UseCount)),
            )
            .value(
                U::FirstUsedAt,
                Expr::case(
                    proposed(U::FirstUsedAt).lt(existing(U::FirstUsedAt)),
                    proposed(U::FirstUsedAt),
                )
                .finally(existing(U::FirstUsedAt)),
            )
            .value(
                U::LastUsedAt,
                Expr::case(
                    proposed(U::LastUsedAt).gt(existing(U::LastUsedAt)),
                    proposed(U::LastUsedAt),
                )
                .finally(existing(U::LastUsedAt)),
            )
            .to_owned(),
    )
    .exec_without_returning(db)
    .await
    .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl ConnectionStore for SeaStore {
    async fn insert_connection(
        &self,
        connection: &Connection,
        event: &ConnectionEvent,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await.map_err(backend)?;
        connections::Entity::insert(connection_row(connection))
            .exec_without_returning(&txn)
            .await
            .map_err(connection_write_error)?;
        insert_events(&txn, std::slice::from_ref(event)).await?;
        txn.commit().await.map_err(backend)
    }

    async fn insert_connection_capped(
        &self,
        connection: &Connection,
        event: &ConnectionEvent,
        max_in_project: u64,
    ) -> Result<(), StoreError> {
        let project = connection.project_id.as_str();
        let txn = self.db.begin().await.map_err(backend)?;
        if txn.get_database_backend() == DbBackend::Postgres {
            // Serialises creators of the same project until commit: the count below then
            // sees every connection committed before ours, so the cap is exact. Other
            // projects hash to other keys (a collision only makes two projects wait on
            // each other, never passes a cap).
            txn.execute(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                [PG_PROJECT_CAP_LOCK.into(), project.into()],
            ))
            .await
            .map_err(backend)?;
        }
        // On SQLite the insert comes first: it takes the database's single write lock,
        // which other writers wait for until this transaction ends, so the count that
        // follows is exact there too.
        connections::Entity::insert(connection_row(connection))
            .exec_without_returning(&txn)
            .await
            .map_err(connection_write_error)?;
        let count = connections::Entity::find()
            .filter(C::ProjectId.eq(project))
            .count(&txn)
            .await
            .map_err(backend)?;
        if count > max_in_project {
            txn.rollback().await.map_err(backend)?;
            return Err(StoreError::LimitReached {
                limit: max_in_project,
            });
        }
        insert_events(&txn, std::slice::from_ref(event)).await?;
        txn.commit().await.map_err(backend)
    }

    async fn get_connection(&self, id: ConnectionId) -> Result<Option<Connection>, StoreError> {
        connections::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
            .map_err(backend)?
            .map(connection_from_row)
            .transpose()
    }

    /// A `limit` of 0 means no limit.
    async fn list_connections(
        &self,
        query: &ConnectionQuery,
    ) -> Result<Vec<Connection>, StoreError> {
        let mut q = connections::Entity::find();
        if let Some(project) = &query.project_id {
            q = q.filter(C::ProjectId.eq(project.as_str()));
        }
        if let Some(status) = query.status {
            q = q.filter(C::Status.eq(status.as_str()));
        }
        if let Some(kind) = query.kind {
            q = q.filter(C::Kind.eq(kind.as_str()));
        }
        if let Some(text) = query.name_contains.as_deref().filter(|t| !t.is_empty()) {
            q = q.filter(
                Expr::expr(Func::lower(Expr::col(C::Name)))
                    .like(LikeExpr::new(like_contains(text)).escape('\\')),
            );
        }
        if let Some(after) = query.after {
            q = q.filter(C::Id.gt(after.to_string()));
        }
        q = q.order_by_asc(C::Id);
        if query.limit > 0 {
            q = q.limit(u64::from(query.limit));
        }
        q.all(&self.db)
            .await
            .map_err(backend)?
            .into_iter()
            .map(connection_from_row)
            .collect()
    }

    async fn update_connection(
        &self,
        connection: &Connection,
        expected_version: i64,
        events: &[ConnectionEvent],
    ) -> Result<(), StoreError> {
        let id = connection.id.to_string();
        let mut row = connection_row(connection);
        // The id selects the row; it is not rewritten. The lease belongs to the
        // claim/save/release methods: a rename must not clobber a refresh in flight.
        row.id = NotSet;
        row.lease_owner = NotSet;
        row.lease_until = NotSet;
        // Write first, then read if needed: on SQLite a transaction that reads before
        // writing can fail with SQLITE_BUSY instead of waiting for the write lock.
        let txn = self.db.begin().await.map_err(backend)?;
        let res = connections::Entity::update_many()
            .set(row)
            .filter(C::Id.eq(id.as_str()))
            .filter(C::Version.eq(expected_version))
            .exec(&txn)
            .await
            .map_err(connection_write_error)?;
        if res.rows_affected == 0 {
            let exists = connections::Entity::find_by_id(id)
                .select_only()
                .column(C::Id)
                .into_tuple::<String>()
                .one(&txn)
                .await
                .map_err(backend)?
                .is_some();
            return Err(if exists {
                StoreError::Conflict
            } else {
                StoreError::NotFound
            });
        }
        insert_events(&txn, events).await?;
        txn.commit().await.map_err(backend)
    }

    async fn delete_connection(&self, id: ConnectionId) -> Result<bool, StoreError> {
        let id = id.to_string();
        // Explicit deletes rather than trusting ON DELETE CASCADE alone: SQLite only
        // cascades when the foreign_keys pragma is on for that connection.
        let txn = self.db.begin().await.map_err(backend)?;
        connection_events::Entity::delete_many()
            .filter(connection_events::Column::ConnectionId.eq(id.as_str()))
            .exec(&txn)
            .await
            .map_err(backend)?;
        connection_usages::Entity::delete_many()
            .filter(connection_usages::Column::ConnectionId.eq(id.as_str()))
            .exec(&txn)
            .await
            .map_err(backend)?;
        auth_sessions::Entity::delete_many()
            .filter(auth_sessions::Column::ConnectionId.eq(id.as_str()))
            .exec(&txn)
            .await
            .map_err(backend)?;
        let res = connections::Entity::delete_by_id(id)
            .exec(&txn)
            .await
            .map_err(backend)?;
        txn.commit().await.map_err(backend)?;
        Ok(res.rows_affected > 0)
    }

    /// `NotFound` if the connection does not exist.
    async fn record_usage(
        &self,
        id: ConnectionId,
        flow: Option<FlowId>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        let at = to_millis(at);
        let txn = self.db.begin().await.map_err(backend)?;
        // Keeps the latest use when calls arrive out of order; the version is untouched.
        let later = Expr::case(
            Condition::any()
                .add(C::LastUsedAt.is_null())
                .add(C::LastUsedAt.lt(at)),
            at,
        )
        .finally(Expr::col(C::LastUsedAt));
        let res = connections::Entity::update_many()
            .col_expr(C::LastUsedAt, later.into())
            .filter(C::Id.eq(id.as_str()))
            .exec(&txn)
            .await
            .map_err(backend)?;
        if res.rows_affected == 0 {
            return Err(StoreError::NotFound);
        }
        if let Some(flow) = flow {
            use connection_usages::Column as U;
            let existing = |c: U| Expr::col((connection_usages::Entity, c));
            let proposed = |c: U| Expr::col((Alias::new("excluded"), c));
            let row = connection_usages::ActiveModel {
                connection_id: Set(id),
                flow_id: Set(flow.as_str().to_owned()),
                first_used_at: Set(at),
                last_used_at: Set(at),
                use_count: Set(1),
            };
            connection_usages::Entity::insert(row)
                .on_conflict(
                    OnConflict::columns([U::ConnectionId, U::FlowId])
                        .value(U::UseCount, existing(U::UseCount).add(1))
                        .value(
                            U::FirstUsedAt,
                            Expr::case(
                                proposed(U::FirstUsedAt).lt(existing(U::FirstUsedAt)),
                                proposed(U::FirstUsedAt),
                            )
                            .finally(existing(U::FirstUsedAt)),
                        )
                        .value(
                            U::LastUsedAt,
                            Expr::case(
                                proposed(U::LastUsedAt).gt(existing(U::LastUsedAt)),
                                proposed(U::LastUsedAt),
                            )
                            .finally(existing(U::LastUsedAt)),
                        )
                        .to_owned(),
                )
                .exec_without_returning(&txn)
                .await
                .map_err(backend)?;
        }
        txn.commit().await.map_err(backend)
    }

    async fn record_usages(
        &self,
        last_used: &[(ConnectionId, DateTime<Utc>)],
        flows: &[Usage],
    ) -> Result<(), StoreError> {
        if last_used.is_empty() && flows.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin().await.map_err(backend)?;
        for chunk in last_used.chunks(USAGE_CHUNK) {
            update_last_used(&txn, chunk).await?;
        }
        // Usage rows of connections deleted since their use would break the foreign key.
        let mut wanted: Vec<String> = flows.iter().map(|u| u.connection_id.to_string()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut existing = std::collections::HashSet::new();
        for chunk in wanted.chunks(USAGE_CHUNK) {
            let ids: Vec<String> = connections::Entity::find()
                .select_only()
                .column(C::Id)
                .filter(C::Id.is_in(chunk.iter().map(String::as_str)))
                .into_tuple()
                .all(&txn)
                .await
                .map_err(backend)?;
            existing.extend(ids);
        }
        let rows: Vec<&Usage> = flows
            .iter()
            .filter(|u| existing.contains(&u.connection_id.to_string()))
            .collect();
        for chunk in rows.chunks(USAGE_CHUNK) {
            upsert_usages(&txn, chunk).await?;
        }
        txn.commit().await.map_err(backend)
    }

    /// Served by the index on (connection_id, last_used_at).
    async fn list_usages(&self, id: ConnectionId, limit: u32) -> Result<Vec<Usage>, StoreError> {
        use connection_usages::Column as U;
        if limit == 0 {
            return Ok(Vec::new());
        }
        connection_usages::Entity::find()
            .filter(U::ConnectionId.eq(id.to_string()))
            .order_by_desc(U::LastUsedAt)
            .order_by_asc(U::FlowId)
            .limit(u64::from(limit))
            .all(&self.db)
            .await
            .map_err(backend)?
            .into_iter()
            .map(usage_from_row)
            .collect()
    }

    async fn count_usages(&self, id: ConnectionId) -> Result<u64, StoreError> {
        use connection_usages::Column as U;
        connection_usages::Entity::find()
            .filter(U::ConnectionId.eq(id.to_string()))
            .count(&self.db)
            .await
            .map_err(backend)
    }

    /// A keyset page over the index on (connection_id, at, seq).
    async fn list_events(
        &self,
        id: ConnectionId,
        query: &EventQuery,
    ) -> Result<EventPage, StoreError> {
        use connection_events::Column as E;
        let limit = query.limit.max(1);
        let mut q = connection_events::Entity::find().filter(E::ConnectionId.eq(id.to_string()));
        if let Some(after) = query.after {
            q = q.filter(
                Condition::any().add(E::At.gt(after.at_ms)).add(
                    Condition::all()
                        .add(E::At.eq(after.at_ms))
                        .add(E::Seq.gt(after.seq)),
                ),
            );
        }
        let mut rows = q
            .order_by_asc(E::At)
            .order_by_asc(E::Seq)
            .limit(u64::from(limit) + 1)
            .all(&self.db)
            .await
            .map_err(backend)?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if more {
            rows.last().map(|r| EventCursor {
                at_ms: r.at,
                seq: r.seq,
            })
        } else {
            None
        };
        let events = rows
            .into_iter()
            .map(event_from_row)
            .collect::<Result<Vec<ConnectionEvent>, StoreError>>()?;
        Ok(EventPage {
            events,
            next_cursor,
        })
    }

    /// `DELETE ... WHERE seq IN (SELECT seq ... WHERE at < ? ORDER BY at LIMIT n)`: the
    /// inner range runs over the index on `at`, and the batch bounds the statement.
    async fn purge_events(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, StoreError> {
        use connection_events::Column as E;
        if batch == 0 {
            return Ok(0);
        }
        let oldest = Query::select()
            .column(E::Seq)
            .from(connection_events::Entity)
            .and_where(Expr::col(E::At).lt(to_millis(before)))
            .order_by(E::At, sea_orm::Order::Asc)
            .limit(u64::from(batch))
            .to_owned();
        let res = connection_events::Entity::delete_many()
            .filter(E::Seq.in_subquery(oldest))
            .exec(&self.db)
            .await
            .map_err(backend)?;
        Ok(res.rows_affected)
    }

    /// Like `purge_events`, over the index on `last_used_at`; rows are picked by their
    /// (connection_id, flow_id) key.
    async fn purge_usages(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, StoreError> {
        use connection_usages::Column as U;
        if batch == 0 {
            return Ok(0);
        }
        let oldest = Query::select()
            .columns([U::ConnectionId, U::FlowId])
            .from(connection_usages::Entity)
            .and_where(Expr::col(U::LastUsedAt).lt(to_millis(before)))
            .order_by(U::LastUsedAt, sea_orm::Order::Asc)
            .limit(u64::from(batch))
            .to_owned();
        let res = connection_usages::Entity::delete_many()
            .filter(
                Expr::tuple([
                    Expr::col(U::ConnectionId).into(),
                    Expr::col(U::FlowId).into(),
                ])
                .in_subquery(oldest),
            )
            .exec(&self.db)
            .await
            .map_err(backend)?;
        Ok(res.rows_affected)
    }

    async fn due_for_refresh(
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
            .filter(C::RefreshDueAt.lte(now))
            .filter(lease_free(now))
            // Deadline first: the token that lapses soonest. Every due row has an expiry
            // (a due time is only set for expiring grants); NULLs sort last anyway.
            .order_by_asc(Expr::cust("CASE WHEN expires_at IS NULL THEN 1 ELSE 0 END"))
            .order_by_asc(C::ExpiresAt)
            .order_by_asc(C::RefreshDueAt)
            .order_by_asc(C::Id)
            .limit(u64::from(limit))
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
        let txn = self.db.begin().await.map_err(backend)?;
        // The claim itself is one statement; the database serialises competing
        // claimers on the row, so at most one sees a free lease. A free row is tried
        // first, then a lapsed lease, so that taking over a crashed worker's lease is
        // told apart (and counted).
        let claim = |free: Condition| {
            connections::Entity::update_many()
                .col_expr(C::LeaseOwner, Expr::value(lease.owner.as_str()))
                .col_expr(C::LeaseUntil, Expr::value(to_millis(lease.until)))
                .filter(C::Id.eq(id.as_str()))
                .filter(C::Status.eq(Status::Active.as_str()))
                .filter(free)
                .exec(&txn)
        };
        let res = claim(Condition::all().add(C::LeaseUntil.is_null()))
            .await
            .map_err(backend)?;
        if res.rows_affected != 1 {
            let res = claim(Condition::all().add(C::LeaseUntil.lt(now)))
                .await
                .map_err(backend)?;
            if res.rows_affected != 1 {
                return Ok(None);
            }
            metrics::counter!("latchkey_lease_takeovers_total").increment(1);
        }
        let row = connections::Entity::find_by_id(id)
            .one(&txn)
            .await
            .map_err(backend)?;
        txn.commit().await.map_err(backend)?;
        row.map(connection_from_row).transpose()
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
        let g = grant_columns(Some(grant));
        let next_version = expected_version
            .checked_add(1)
            .ok_or_else(|| StoreError::Backend("connection version overflow".into()))?;
        let row = connections::ActiveModel {
            access_token: Set(g.access_token),
            refresh_token: Set(g.refresh_token),
            token_type: Set(g.token_type),
            scopes: Set(g.scopes),
            obtained_at: Set(g.obtained_at),
            expires_at: Set(g.expires_at),
            refresh_due_at: Set(schedule.due_at.map(to_millis)),
            refresh_failures: Set(i64::from(schedule.failures)),
            lease_owner: Set(None),
            lease_until: Set(None),
            last_error: Set(None),
            updated_at: Set(to_millis(updated_at)),
            version: Set(next_version),
            ..Default::default()
        };
        let res = connections::Entity::update_many()
            .set(row)
            .filter(C::Id.eq(id.to_string()))
            .filter(C::Version.eq(expected_version))
            .filter(C::LeaseOwner.eq(owner))
            .exec(&self.db)
            .await
            .map_err(backend)?;
        if res.rows_affected == 1 {
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
            .exec(&self.db)
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
            .exec(&self.db)
            .await
            .map_err(backend)?;
        Ok(res.rows_affected == 1)
    }
}
