//! The store ports: one narrow trait per concern, so a use case asks only for what it
//! touches and a mock expects only what matters. [`Store`] bundles them for wiring.

mod activity;
mod connections;
mod feed;
mod leases;
mod records;
mod sealed;

pub use activity::*;
pub use connections::*;
pub use feed::*;
pub use leases::*;
pub use records::*;
pub use sealed::*;

/// Which uniqueness rule a write broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UniqueKey {
    /// A record's own id (a reused id).
    Id,
    /// A name within its scope (a connection within its project, an OAuth client within
    /// its project or among the globals).
    Name,
    /// The state (hash) of a pending authorization.
    State,
    /// The id of a connection event.
    EventId,
}

impl UniqueKey {
    /// The key as a short technical word, for logs and error mapping.
    pub fn as_str(&self) -> &'static str {
        match self {
            UniqueKey::Id => "id",
            UniqueKey::Name => "name",
            UniqueKey::State => "state",
            UniqueKey::EventId => "event id",
        }
    }
}

/// Why the store refused or failed. Variants carry facts, not sentences: the app words
/// what a user reads.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row changed since it was read (compare-and-set on the version or lease failed).
    #[error("compare-and-set conflict")]
    Conflict,
    /// A uniqueness rule was violated, recognised by the database's constraint.
    #[error("duplicate {}", .0.as_str())]
    Duplicate(UniqueKey),
    /// The record is referenced by `references` others and cannot be deleted.
    #[error("in use by {references} reference(s)")]
    InUse { references: u64 },
    #[error("record not found")]
    NotFound,
    /// The project already holds the most connections it may (`insert_connection_capped`).
    #[error("connection limit {limit} reached")]
    LimitReached { limit: u64 },
    /// The database failed or could not be reached. The message is for logs only.
    #[error("database error: {0}")]
    Backend(String),
}

/// Every store port, for wiring one adapter into all of them. It has no methods of its
/// own; anything implementing the parts is a `Store`.
pub trait Store:
    ConnectionStore
    + ActivityStore
    + RefreshLeaseStore
    + AuthSessionStore
    + OAuthClientStore
    + AccessKeyStore
    + SealedValueStore
{
}

impl<T> Store for T where
    T: ConnectionStore
        + ActivityStore
        + RefreshLeaseStore
        + AuthSessionStore
        + OAuthClientStore
        + AccessKeyStore
        + SealedValueStore
        + ?Sized
{
}
