//! The change feed: what the database saw committed, for the in-process caches.

use async_trait::async_trait;

use latchkey_domain::{AccessKeyId, ConnectionId};

#[cfg(feature = "mocks")]
use mockall::automock;

use super::StoreError;

/// A change the store saw committed, by this process or another one sharing the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Connection(ConnectionId),
    AccessKey(AccessKeyId),
    /// The feed is listening (again) and may have missed changes: forget everything read
    /// before.
    Resync,
}

/// Tells the in-process caches what changed in the database. PostgreSQL implements it
/// with LISTEN/NOTIFY; SQLite by watching the file's commit counter.
#[cfg_attr(feature = "mocks", automock)]
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// Waits for the next change. The first successful call (and the first after an
    /// error) returns `Resync` once the feed is listening. `Err` means the feed is down
    /// and changes are being missed until a later call returns `Resync`.
    async fn next_change(&self) -> Result<Change, StoreError>;
}
