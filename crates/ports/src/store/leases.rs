//! Refresh scheduling and the refresh lease: finding due work, claiming it, and saving
//! or giving back what a refresh produced.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use latchkey_domain::{Connection, ConnectionId, Grant, Lease, RefreshSchedule};

#[cfg(feature = "mocks")]
use mockall::automock;

use super::StoreError;

/// The refresh queue and its leases. Only these methods touch the lease columns.
#[cfg_attr(feature = "mocks", automock)]
#[async_trait]
pub trait RefreshLeaseStore: Send + Sync {
    /// Active connections whose refresh is due at `now` and not leased by a live worker,
    /// earliest deadline first: by the access token's expiry, then by due time, then id.
    /// Served by an index on the due time.
    async fn due_for_refresh(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ConnectionId>, StoreError>;

    /// Active connections holding a grant whose access token expired at or before `now`.
    async fn past_expiry(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ConnectionId>, StoreError>;

    /// Claims the refresh of an active connection in one short statement: succeeds only
    /// if no live lease exists (none, or one whose deadline is before `now`). Returns
    /// the connection as claimed (lease set, version unchanged), or `None` if it is
    /// leased by another worker, not active, or gone.
    async fn claim_refresh(
        &self,
        id: ConnectionId,
        lease: &Lease,
        now: DateTime<Utc>,
    ) -> Result<Option<Connection>, StoreError>;

    /// Claims up to `limit` due connections at once under one `lease`: the ones, and in
    /// the order, that [`RefreshLeaseStore::due_for_refresh`] would return at `now`.
    /// Atomic per connection like [`RefreshLeaseStore::claim_refresh`] (a live lease is
    /// never taken, and two concurrent claimers never both get one connection); the
    /// background refresh uses it to claim a cycle's work in one statement instead of a
    /// read and a claim per connection. Returns the connections as claimed.
    async fn claim_due_refreshes(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Connection>, StoreError>;

    /// Saves a refreshed grant: only if the version is still `expected_version` and the
    /// lease is still held by `owner`. Touches only the grant, schedule, last_error,
    /// updated_at and version columns; clears the lease. `Conflict` otherwise.
    async fn save_refreshed_grant(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        grant: &Grant,
        schedule: &RefreshSchedule,
        updated_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Gives a lease back without new tokens (after a failed attempt): sets the schedule
    /// (next due time, failure count) and `last_error`, clears the lease, only if `owner`
    /// still holds it AND the version is still `expected_version` (so a failed refresh
    /// never writes its error and back-off over a newer authorization). Returns whether
    /// it did. Does not bump the version.
    async fn release_refresh(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        schedule: &RefreshSchedule,
        last_error: Option<String>,
    ) -> Result<bool, StoreError>;

    /// Clears the lease if `owner` holds it, touching nothing else. Returns whether it did.
    async fn drop_lease(&self, id: ConnectionId, owner: &str) -> Result<bool, StoreError>;
}
