//! The store contract: what every implementation of the store ports must do, as async
//! functions over any store. The sea-orm store runs them on SQLite and PostgreSQL
//! (`crates/store/tests/store.rs`), the in-memory fake of the app's tests runs them too
//! (`crates/app/tests/fakes.rs`), so the fake cannot drift from the real thing.
//!
//! Each case takes a fresh, empty store. No I/O here: the store under test does it.
//! [`CASES`] lists every case by name; [`run`] runs one by name, so a harness can make
//! one test per case and a test of the list catches a case left out.

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
pub const CASES: [&str; 24] = [
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

/// Runs the case named `case` against `store` (a fresh one). Panics on an unknown name.
pub async fn run<S: ContractStore + ?Sized>(case: &str, store: &S) {
    match case {
        "list_filters_and_paging" => list_filters_and_paging(store).await,
        "duplicate_names" => duplicate_names(store).await,
        "update_compare_and_set" => update_compare_and_set(store).await,
        "delete_cascades" => delete_cascades(store).await,
        "connection_cap_per_project" => connection_cap_per_project(store).await,
        "update_leaves_the_lease_alone" => update_leaves_the_lease_alone(store).await,
        "events_keep_order" => events_keep_order(store).await,
        "events_are_paged" => events_are_paged(store).await,
        "usages_are_bounded_and_counted" => usages_are_bounded_and_counted(store).await,
        "retention_purges_old_history_only" => retention_purges_old_history_only(store).await,
        "due_for_refresh_order_limit_and_leases" => {
            due_for_refresh_order_limit_and_leases(store).await
        }
        "past_expiry" => past_expiry(store).await,
        "expired_lease_can_be_reclaimed" => expired_lease_can_be_reclaimed(store).await,
        "save_refreshed_grant_rules" => save_refreshed_grant_rules(store).await,
        "release_refresh_rules" => release_refresh_rules(store).await,
        "due_for_refresh_puts_the_earliest_deadline_first" => {
            due_for_refresh_puts_the_earliest_deadline_first(store).await
        }
        "release_refresh_never_writes_over_a_newer_version" => {
            release_refresh_never_writes_over_a_newer_version(store).await
        }
        "drop_lease_clears_only_its_own_lease" => drop_lease_clears_only_its_own_lease(store).await,
        "auth_session_take_is_single_use" => auth_session_take_is_single_use(store).await,
        "purge_auth_sessions" => purge_auth_sessions(store).await,
        "oauth_clients" => oauth_clients(store).await,
        "round_trip_every_field" => round_trip_every_field(store).await,
        "access_keys" => access_keys(store).await,
        "usage_upsert" => usage_upsert(store).await,
        other => panic!("no contract case {other:?}"),
    }
}
