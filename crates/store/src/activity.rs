//! `ActivityStore`: connection events and per-flow usages, and their retention.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_domain::{ConnectionEvent, ConnectionId, EventCursor, FlowId, Usage};
use latchkey_ports::{ActivityStore, EventPage, EventQuery, StoreError};
use sea_orm::sea_query::{Alias, Expr, OnConflict, Query};
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};

use crate::convert::{event_from_row, usage_from_row};
use crate::entity::{connection_events, connection_usages, connections};
use crate::time::to_millis;
use crate::{backend, SeaStore};

use connections::Column as C;

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
impl ActivityStore for SeaStore {
    /// `NotFound` if the connection does not exist.
    async fn record_usage(
        &self,
        id: ConnectionId,
        flow: Option<FlowId>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        let at = to_millis(at);
        let txn = self.writer.begin().await.map_err(backend)?;
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
        let txn = self.writer.begin().await.map_err(backend)?;
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
            .exec(&self.writer)
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
            .exec(&self.writer)
            .await
            .map_err(backend)?;
        Ok(res.rows_affected)
    }
}
