//! The smaller records: pending consent flows, OAuth client registrations, access keys.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use latchkey_domain::{AccessKey, AccessKeyId, AuthSession, OAuthClient, OAuthClientId, ProjectId};

#[cfg(feature = "mocks")]
use mockall::automock;

use super::StoreError;

/// Pending consent flows, keyed by the hash of their `state`.
#[cfg_attr(feature = "mocks", automock)]
#[async_trait]
pub trait AuthSessionStore: Send + Sync {
    async fn insert_auth_session(&self, session: &AuthSession) -> Result<(), StoreError>;

    /// Removes and returns the session in one step, so a state is usable once even
    /// under concurrent callbacks.
    async fn take_auth_session(&self, state_hash: &str) -> Result<Option<AuthSession>, StoreError>;

    /// Deletes sessions that expired before `now`; returns how many.
    async fn purge_auth_sessions(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// Reusable OAuth client registrations.
#[cfg_attr(feature = "mocks", automock)]
#[async_trait]
pub trait OAuthClientStore: Send + Sync {
    /// `Duplicate(Name)` on a name clash within the same project (or among globals).
    async fn insert_oauth_client(&self, client: &OAuthClient) -> Result<(), StoreError>;
    async fn get_oauth_client(&self, id: OAuthClientId) -> Result<Option<OAuthClient>, StoreError>;
    /// The clients a project may use (its own and the global ones); all with `None`.
    async fn list_oauth_clients(
        &self,
        project: Option<ProjectId>,
    ) -> Result<Vec<OAuthClient>, StoreError>;
    /// `InUse` while connections refer to it; `false` if there was none.
    async fn delete_oauth_client(&self, id: OAuthClientId) -> Result<bool, StoreError>;
}

/// Access keys (hashes only).
#[cfg_attr(feature = "mocks", automock)]
#[async_trait]
pub trait AccessKeyStore: Send + Sync {
    async fn insert_access_key(&self, key: &AccessKey) -> Result<(), StoreError>;
    async fn get_access_key(&self, id: AccessKeyId) -> Result<Option<AccessKey>, StoreError>;
    async fn list_access_keys(
        &self,
        project: Option<ProjectId>,
    ) -> Result<Vec<AccessKey>, StoreError>;
    async fn delete_access_key(&self, id: AccessKeyId) -> Result<bool, StoreError>;
}
