//! The store contract: what every implementation of the store ports must do, as async
//! functions over any store. The sea-orm store runs them on SQLite and PostgreSQL
//! (`crates/store/tests/store.rs`), the in-memory fake of the app's tests runs them too
//! (`crates/app/tests/fakes.rs`), so the fake cannot drift from the real thing.
//!
//! Each case takes a fresh, empty store. No I/O here: the store under test does it.
//! [`CASES`] lists every case by name: each harness makes one test per case and checks
//! its list against this one, so a case left out is caught.

// Checks, not product code: a failed unwrap is a failed check.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod activity;
mod connections;
pub mod fixtures;
mod leases;
mod records;

pub use activity::*;
pub use connections::*;
pub use leases::*;
pub use records::*;

use crate::{
    AccessKeyStore, ActivityStore, AuthSessionStore, ConnectionStore, OAuthClientStore,
    RefreshLeaseStore,
};

/// The store ports the contract exercises (all but the sealed-value port, which only a
/// database-backed store has).
pub trait ContractStore:
    ConnectionStore
    + ActivityStore
    + RefreshLeaseStore
    + AuthSessionStore
    + OAuthClientStore
    + AccessKeyStore
{
}

impl<T> ContractStore for T where
    T: ConnectionStore
        + ActivityStore
        + RefreshLeaseStore
        + AuthSessionStore
        + OAuthClientStore
        + AccessKeyStore
        + ?Sized
{
}

/// Every case of the contract, by name.
pub const CASES: [&str; 25] = [
    "usage_upsert",
    "round_trip_every_field",
    "list_filters_and_paging",
    "duplicate_names",
    "update_compare_and_set",
    "delete_cascades",
    "connection_cap_per_project",
    "update_leaves_the_lease_alone",
    "events_keep_order",
    "events_are_paged",
    "usages_are_bounded_and_counted",
    "retention_purges_old_history_only",
    "due_for_refresh_order_limit_and_leases",
    "claim_due_refreshes_takes_a_cycles_work",
    "past_expiry",
    "expired_lease_can_be_reclaimed",
    "save_refreshed_grant_rules",
    "release_refresh_rules",
    "due_for_refresh_puts_the_earliest_deadline_first",
    "release_refresh_never_writes_over_a_newer_version",
    "drop_lease_clears_only_its_own_lease",
    "auth_session_take_is_single_use",
    "purge_auth_sessions",
    "oauth_clients",
    "access_keys",
];
