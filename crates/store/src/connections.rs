//! `ConnectionStore`: the connection rows (insert, read, list, compare-and-set, delete).

use async_trait::async_trait;
use latchkey_domain::{Connection, ConnectionEvent, ConnectionId};
use latchkey_ports::{ConnectionQuery, ConnectionStore, StoreError};
use sea_orm::sea_query::{Expr, Func, LikeExpr};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement, TransactionTrait,
};

use crate::convert::{connection_from_row, connection_row, event_row};
use crate::entity::{auth_sessions, connection_events, connection_usages, connections};
use crate::{backend, is_foreign_key_violation, write_error, SeaStore};

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
    if is_foreign_key_violation(&e) {
        return StoreError::Backend(
            "the connection refers to an OAuth client that does not exist".into(),
        );
    }
    write_error(e)
}

pub(crate) async fn insert_events<Db: ConnectionTrait>(
    db: &Db,
    events: &[ConnectionEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    connection_events::Entity::insert_many(events.iter().map(event_row))
        .exec_without_returning(db)
        .await
        .map_err(|e| {
            if is_foreign_key_violation(&e) {
                StoreError::NotFound
            } else {
                write_error(e)
            }
        })?;
    Ok(())
}

#[async_trait]
impl ConnectionStore for SeaStore {
    async fn insert_connection(
        &self,
        connection: &Connection,
        event: &ConnectionEvent,
    ) -> Result<(), StoreError> {
        let txn = self.writer.begin().await.map_err(backend)?;
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
        let txn = self.writer.begin().await.map_err(backend)?;
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
        events: &[ConnectionEvent],
    ) -> Result<i64, StoreError> {
        let id = connection.id.to_string();
        let expected_version = connection.version;
        let written = expected_version + 1;
        let mut row = connection_row(connection);
        row.version = Set(written);
        // The id selects the row; it is not rewritten. The lease belongs to the
        // claim/save/release methods: a rename must not clobber a refresh in flight.
        row.id = NotSet;
        row.lease_owner = NotSet;
        row.lease_until = NotSet;
        // Write first, then read if needed: on SQLite a transaction that reads before
        // writing can fail with SQLITE_BUSY instead of waiting for the write lock.
        let txn = self.writer.begin().await.map_err(backend)?;
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
        txn.commit().await.map_err(backend)?;
        Ok(written)
    }

    async fn delete_connection(&self, id: ConnectionId) -> Result<bool, StoreError> {
        let id = id.to_string();
        // Explicit deletes rather than trusting ON DELETE CASCADE alone: SQLite only
        // cascades when the foreign_keys pragma is on for that connection.
        let txn = self.writer.begin().await.map_err(backend)?;
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
}
