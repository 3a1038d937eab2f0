//! The connection records themselves: create, read, list, compare-and-set, delete.

use async_trait::async_trait;

use latchkey_domain::{
    Connection, ConnectionEvent, ConnectionId, ConnectionType, ProjectId, Status,
};

#[cfg(feature = "mocks")]
use mockall::automock;

use super::StoreError;

/// Filter and page of a connection listing. Pages are keyed by id (`after`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionQuery {
    /// `None`: every project (admin).
    pub project_id: Option<ProjectId>,
    pub status: Option<Status>,
    pub kind: Option<ConnectionType>,
    /// Only connections whose name contains this text (ASCII letters compared without
    /// case; `%` and `_` are literal).
    pub name_contains: Option<String>,
    /// Return connections whose id sorts after this one.
    pub after: Option<ConnectionId>,
    pub limit: u32,
}

/// Persistence of connections.
///
/// Every write of a connection compares-and-sets on `version`: the caller passes the
/// connection as it read it (its `version` is the one expected) and the store writes the
/// next version, so no caller counts versions.
#[cfg_attr(feature = "mocks", automock)]
#[async_trait]
pub trait ConnectionStore: Send + Sync {
    /// Inserts a new connection with its creation event. `Duplicate(Name)` if the
    /// project already has a connection of that name.
    async fn insert_connection(
        &self,
        connection: &Connection,
        event: &ConnectionEvent,
    ) -> Result<(), StoreError>;

    /// Like `insert_connection`, but only while the connection's project holds fewer than
    /// `max_in_project` connections; `LimitReached` otherwise. The count and the insert
    /// are serialised per project (a per-project advisory lock on PostgreSQL, the single
    /// writer on SQLite), so concurrent creators never pass the cap.
    async fn insert_connection_capped(
        &self,
        connection: &Connection,
        event: &ConnectionEvent,
        max_in_project: u64,
    ) -> Result<(), StoreError>;

    async fn get_connection(&self, id: ConnectionId) -> Result<Option<Connection>, StoreError>;

    /// Ordered by id.
    async fn list_connections(
        &self,
        query: &ConnectionQuery,
    ) -> Result<Vec<Connection>, StoreError>;

    /// Writes every column of `connection` except the refresh lease (`lease_owner`,
    /// `lease_until`: only the [`RefreshLeaseStore`](super::RefreshLeaseStore) touches
    /// those, so a rename never clobbers a refresh in flight) if the stored version is
    /// still `connection.version`, with `events` in the same transaction, and bumps the
    /// stored version. Returns the version written. `Conflict` otherwise; `NotFound` if
    /// gone; `Duplicate(Name)` on a name clash.
    async fn update_connection(
        &self,
        connection: &Connection,
        events: &[ConnectionEvent],
    ) -> Result<i64, StoreError>;

    /// Deletes the connection and everything hanging off it (events, usages, pending
    /// authorizations). `false` if there was none.
    async fn delete_connection(&self, id: ConnectionId) -> Result<bool, StoreError>;
}
