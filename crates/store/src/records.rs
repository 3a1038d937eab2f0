//! Auth sessions, OAuth clients and access keys.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_domain::{AccessKey, AccessKeyId, AuthSession, OAuthClient, OAuthClientId, ProjectId};
use latchkey_ports::{AccessKeyStore, AuthSessionStore, OAuthClientStore, StoreError};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, FromQueryResult, PaginatorTrait,
    QueryFilter, QueryOrder,
};

use crate::convert::{
    access_key_from_row, access_key_row, auth_session_from_row, auth_session_row,
    oauth_client_from_row, oauth_client_row,
};
use crate::entity::{access_keys, auth_sessions, connections, oauth_clients};
use crate::time::to_millis;
use crate::{backend, is_foreign_key_violation, write_error, SeaStore};

#[async_trait]
impl AuthSessionStore for SeaStore {
    /// `NotFound` if the connection does not exist; `Duplicate("state")` if the state
    /// hash is taken.
    async fn insert_auth_session(&self, session: &AuthSession) -> Result<(), StoreError> {
        auth_sessions::Entity::insert(auth_session_row(session))
            .exec_without_returning(&self.writer)
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

    async fn take_auth_session(&self, state_hash: &str) -> Result<Option<AuthSession>, StoreError> {
        // One DELETE ... RETURNING statement: of concurrent takers only the one whose
        // delete removed the row gets it. Built by hand because sea-orm only uses
        // RETURNING on SQLite behind a feature flag; SQLite has it since 3.35.
        let stmt = Query::delete()
            .from_table(auth_sessions::Entity)
            .and_where(Expr::col(auth_sessions::Column::StateHash).eq(state_hash))
            .returning_all()
            .to_owned();
        let backend_kind = self.db.get_database_backend();
        let row = self
            .writer
            .query_one(backend_kind.build(&stmt))
            .await
            .map_err(backend)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let model = auth_sessions::Model::from_query_result(&row, "").map_err(backend)?;
        auth_session_from_row(model).map(Some)
    }

    async fn purge_auth_sessions(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let res = auth_sessions::Entity::delete_many()
            .filter(auth_sessions::Column::ExpiresAt.lt(to_millis(now)))
            .exec(&self.writer)
            .await
            .map_err(backend)?;
        Ok(res.rows_affected)
    }
}

#[async_trait]
impl OAuthClientStore for SeaStore {
    async fn insert_oauth_client(&self, client: &OAuthClient) -> Result<(), StoreError> {
        oauth_clients::Entity::insert(oauth_client_row(client))
            .exec_without_returning(&self.writer)
            .await
            .map_err(write_error)?;
        Ok(())
    }

    async fn get_oauth_client(&self, id: OAuthClientId) -> Result<Option<OAuthClient>, StoreError> {
        oauth_clients::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
            .map_err(backend)?
            .map(oauth_client_from_row)
            .transpose()
    }

    /// Ordered by name.
    async fn list_oauth_clients(
        &self,
        project: Option<ProjectId>,
    ) -> Result<Vec<OAuthClient>, StoreError> {
        use oauth_clients::Column as O;
        let mut q = oauth_clients::Entity::find();
        if let Some(project) = project {
            q = q.filter(O::Scope.is_in([project.as_str(), oauth_clients::GLOBAL_SCOPE]));
        }
        q.order_by_asc(O::Name)
            .order_by_asc(O::Id)
            .all(&self.db)
            .await
            .map_err(backend)?
            .into_iter()
            .map(oauth_client_from_row)
            .collect()
    }

    async fn delete_oauth_client(&self, id: OAuthClientId) -> Result<bool, StoreError> {
        let id = id.to_string();
        let users = Query::select()
            .expr(Expr::val(1))
            .from(connections::Entity)
            .and_where(Expr::col(connections::Column::Oauth2ClientId).eq(id.as_str()))
            .to_owned();
        // Deletes only when unused, in one statement; the foreign key from connections
        // catches a connection inserted concurrently.
        let res = oauth_clients::Entity::delete_many()
            .filter(oauth_clients::Column::Id.eq(id.as_str()))
            .filter(Condition::all().add(Expr::exists(users).not()))
            .exec(&self.writer)
            .await;
        let in_use = match res {
            Ok(r) if r.rows_affected > 0 => return Ok(true),
            Ok(_) => false,
            Err(e) if is_foreign_key_violation(&e) => true,
            Err(e) => return Err(backend(e)),
        };
        let count = connections::Entity::find()
            .filter(connections::Column::Oauth2ClientId.eq(id.as_str()))
            .count(&self.db)
            .await
            .map_err(backend)?;
        if in_use || count > 0 {
            return Err(in_use_error(count));
        }
        let exists = oauth_clients::Entity::find_by_id(id)
            .count(&self.db)
            .await
            .map_err(backend)?
            > 0;
        if exists {
            // Referenced a moment ago and released since: report it as in use rather
            // than retrying, the caller may try again.
            return Err(in_use_error(count));
        }
        Ok(false)
    }
}

fn in_use_error(count: u64) -> StoreError {
    // At least the one reference that made the delete fail, even if it went since.
    StoreError::InUse {
        references: count.max(1),
    }
}

#[async_trait]
impl AccessKeyStore for SeaStore {
    async fn insert_access_key(&self, key: &AccessKey) -> Result<(), StoreError> {
        access_keys::Entity::insert(access_key_row(key))
            .exec_without_returning(&self.writer)
            .await
            .map_err(write_error)?;
        Ok(())
    }

    async fn get_access_key(&self, id: AccessKeyId) -> Result<Option<AccessKey>, StoreError> {
        access_keys::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
            .map_err(backend)?
            .map(access_key_from_row)
            .transpose()
    }

    /// Oldest first.
    async fn list_access_keys(
        &self,
        project: Option<ProjectId>,
    ) -> Result<Vec<AccessKey>, StoreError> {
        use access_keys::Column as K;
        let mut q = access_keys::Entity::find();
        if let Some(project) = project {
            q = q.filter(K::ProjectId.eq(project.as_str()));
        }
        q.order_by_asc(K::CreatedAt)
            .order_by_asc(K::Id)
            .all(&self.db)
            .await
            .map_err(backend)?
            .into_iter()
            .map(access_key_from_row)
            .collect()
    }

    async fn delete_access_key(&self, id: AccessKeyId) -> Result<bool, StoreError> {
        let res = access_keys::Entity::delete_by_id(id.to_string())
            .exec(&self.writer)
            .await
            .map_err(backend)?;
        Ok(res.rows_affected > 0)
    }
}
