//! What happened to connections and who used them: events and usages, with retention.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use latchkey_domain::{ConnectionEvent, ConnectionId, EventCursor, FlowId, Usage};

#[cfg(feature = "mocks")]
use mockall::automock;

use super::StoreError;

/// A page of a connection's events, oldest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Return events after this one (`EventPage::next_cursor` of the previous page).
    pub after: Option<EventCursor>,
    /// At most this many; at least 1.
    pub limit: u32,
}

/// One page of events, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<ConnectionEvent>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<EventCursor>,
}

/// Events and usages of connections. None of these writes bumps a connection's
/// version: history and use are not changes of the connection.
#[cfg_attr(feature = "mocks", automock)]
#[async_trait]
pub trait ActivityStore: Send + Sync {
    /// Notes that credentials were handed out at `at`, by `flow` when named.
    async fn record_usage(
        &self,
        id: ConnectionId,
        flow: Option<FlowId>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Writes usage gathered in memory since the last flush, in one transaction: moves
    /// each connection's `last_used_at` forward to the given time (never back), and
    /// upserts each (connection, flow) row, adding `count` and widening
    /// `first_used_at`/`last_used_at`. Entries of connections that no longer exist are
    /// dropped.
    async fn record_usages(
        &self,
        last_used: &[(ConnectionId, DateTime<Utc>)],
        flows: &[Usage],
    ) -> Result<(), StoreError>;

    /// The `limit` most recently used flows, most recent use first (ties by flow id).
    async fn list_usages(&self, id: ConnectionId, limit: u32) -> Result<Vec<Usage>, StoreError>;

    /// How many distinct flows used the connection (within the retention period).
    async fn count_usages(&self, id: ConnectionId) -> Result<u64, StoreError>;

    /// One page of the connection's events, oldest first (by time, then insertion).
    async fn list_events(
        &self,
        id: ConnectionId,
        query: &EventQuery,
    ) -> Result<EventPage, StoreError>;

    /// Retention: deletes up to `batch` events (oldest first) that happened before
    /// `before`, by a range over an index on the event time. Returns how many went;
    /// fewer than `batch` means none older is left. Callers repeat it to purge more, so
    /// no statement holds locks for long.
    async fn purge_events(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, StoreError>;

    /// Retention: deletes up to `batch` usages (flows) last used before `before`, like
    /// `purge_events`.
    async fn purge_usages(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, StoreError>;
}
