//! The fake's pending authorizations, OAuth clients and access keys.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use latchkey_domain::{AccessKey, AccessKeyId, AuthSession, OAuthClient, OAuthClientId, ProjectId};

use crate::{AccessKeyStore, AuthSessionStore, OAuthClientStore, StoreError, UniqueKey};

use super::FakeStore;

#[async_trait]
impl AuthSessionStore for FakeStore {
    async fn insert_auth_session(&self, session: &AuthSession) -> Result<(), StoreError> {
        self.enter("insert_auth_session")?;
        let mut t = self.tables();
        if t.sessions.contains_key(&session.state_hash) {
            return Err(StoreError::Duplicate(UniqueKey::State));
        }
        // The real store's foreign key: a session belongs to an existing connection.
        if !t.connections.contains_key(&session.connection_id) {
            return Err(StoreError::NotFound);
        }
        t.sessions
            .insert(session.state_hash.clone(), session.clone());
        Ok(())
    }

    async fn take_auth_session(&self, state_hash: &str) -> Result<Option<AuthSession>, StoreError> {
        self.enter("take_auth_session")?;
        Ok(self.tables().sessions.remove(state_hash))
    }

    async fn purge_auth_sessions(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.enter("purge_auth_sessions")?;
        let mut t = self.tables();
        let before = t.sessions.len();
        t.sessions.retain(|_, s| s.expires_at >= now);
        Ok((before - t.sessions.len()) as u64)
    }
}

#[async_trait]
impl OAuthClientStore for FakeStore {
    async fn insert_oauth_client(&self, client: &OAuthClient) -> Result<(), StoreError> {
        self.enter("insert_oauth_client")?;
        let mut t = self.tables();
        if t.clients
            .values()
            .any(|c| c.project_id == client.project_id && c.name == client.name)
        {
            return Err(StoreError::Duplicate(UniqueKey::Name));
        }
        t.clients.insert(client.id, client.clone());
        Ok(())
    }

    async fn get_oauth_client(&self, id: OAuthClientId) -> Result<Option<OAuthClient>, StoreError> {
        self.enter("get_oauth_client")?;
        Ok(self.tables().clients.get(&id).cloned())
    }

    async fn list_oauth_clients(
        &self,
        project: Option<ProjectId>,
    ) -> Result<Vec<OAuthClient>, StoreError> {
        self.enter("list_oauth_clients")?;
        let t = self.tables();
        Ok(t.clients
            .values()
            .filter(|c| match &project {
                None => true,
                Some(p) => c.project_id.as_ref().is_none_or(|cp| cp == p),
            })
            .cloned()
            .collect())
    }

    async fn delete_oauth_client(&self, id: OAuthClientId) -> Result<bool, StoreError> {
        self.enter("delete_oauth_client")?;
        let mut t = self.tables();
        let references = t
            .connections
            .values()
            .filter(|c| c.oauth2_client_id == Some(id))
            .count() as u64;
        if references > 0 {
            return Err(StoreError::InUse { references });
        }
        Ok(t.clients.remove(&id).is_some())
    }
}

#[async_trait]
impl AccessKeyStore for FakeStore {
    async fn insert_access_key(&self, key: &AccessKey) -> Result<(), StoreError> {
        self.enter("insert_access_key")?;
        let mut t = self.tables();
        if t.keys.contains_key(&key.id) {
            return Err(StoreError::Duplicate(UniqueKey::Id));
        }
        t.keys.insert(key.id, key.clone());
        Ok(())
    }

    async fn get_access_key(&self, id: AccessKeyId) -> Result<Option<AccessKey>, StoreError> {
        self.enter("get_access_key")?;
        Ok(self.tables().keys.get(&id).cloned())
    }

    async fn list_access_keys(
        &self,
        project: Option<ProjectId>,
    ) -> Result<Vec<AccessKey>, StoreError> {
        self.enter("list_access_keys")?;
        let t = self.tables();
        let mut keys: Vec<AccessKey> = t
            .keys
            .values()
            .filter(|k| project.as_ref().is_none_or(|p| *p == k.project_id))
            .cloned()
            .collect();
        // Oldest first, then by id, as the real store lists them.
        keys.sort_by_key(|k| (k.created_at, k.id));
        Ok(keys)
    }

    async fn delete_access_key(&self, id: AccessKeyId) -> Result<bool, StoreError> {
        self.enter("delete_access_key")?;
        Ok(self.tables().keys.remove(&id).is_some())
    }
}
