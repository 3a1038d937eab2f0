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

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row changed since it was read (compare-and-set on the version or lease failed).
    #[error("the record was changed concurrently")]
    Conflict,
    /// A uniqueness rule was violated (for example a connection name within a project).
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    /// The record is referenced and cannot be deleted.
    #[error("{0}")]
    InUse(String),
    #[error("record not found")]
    NotFound,
    /// The project already holds the most connections it may (`insert_connection_capped`).
    #[error("the project already has {limit} connections, the most it may have")]
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
