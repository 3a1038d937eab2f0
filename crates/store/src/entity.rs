//! sea-orm entities: one row type per table, in storage form (ids as text, times as
//! unix milliseconds, JSON as text). `convert` maps them to and from the domain.
//!
//! The models derive `Debug` because sea-orm requires it; they hold sealed bytes and
//! must never be logged.

pub mod access_keys;
pub mod auth_sessions;
pub mod connection_events;
pub mod connection_usages;
pub mod connections;
pub mod meta;
pub mod oauth_clients;
