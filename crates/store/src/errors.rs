//! From database errors to [`StoreError`]: a uniqueness violation is recognised by the
//! constraint it broke (its name on PostgreSQL, its columns on SQLite, which names no
//! constraint), never by the wording of the database's message.

use latchkey_ports::{StoreError, UniqueKey};
use sea_orm::sqlx;
use sea_orm::{DbErr, RuntimeErr, SqlErr};

/// Every uniqueness rule of the schema: the PostgreSQL constraint (or unique index)
/// name, the columns SQLite reports for it, and what it means.
const UNIQUE_RULES: [(&str, &str, UniqueKey); 8] = [
    ("connections_pkey", "connections.id", UniqueKey::Id),
    (
        "ux_connections_project_name",
        "connections.project_id, connections.name",
        UniqueKey::Name,
    ),
    (
        "connection_events_id_key",
        "connection_events.id",
        UniqueKey::EventId,
    ),
    ("oauth_clients_pkey", "oauth_clients.id", UniqueKey::Id),
    (
        "ux_oauth_clients_scope_name",
        "oauth_clients.scope, oauth_clients.name",
        UniqueKey::Name,
    ),
    (
        "auth_sessions_pkey",
        "auth_sessions.state_hash",
        UniqueKey::State,
    ),
    ("access_keys_pkey", "access_keys.id", UniqueKey::Id),
    ("meta_pkey", "meta.key", UniqueKey::Id),
];

/// Any database failure that has no better meaning. Database messages carry no bound
/// values, so no secret ends up in them.
pub(crate) fn backend(e: DbErr) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The uniqueness rule `e` broke, if it is a uniqueness violation of a known rule.
pub(crate) fn unique_violation(e: &DbErr) -> Option<UniqueKey> {
    if !matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
        return None;
    }
    let (DbErr::Exec(RuntimeErr::SqlxError(sqlx::Error::Database(db)))
    | DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::Database(db)))) = e
    else {
        return None;
    };
    match db.constraint() {
        Some(name) => rule_by_constraint(name),
        // SQLite: "UNIQUE constraint failed: <table>.<column>, ...", the one place it
        // says which index it is.
        None => db
            .message()
            .split_once("constraint failed: ")
            .and_then(|(_, columns)| rule_by_columns(columns.trim())),
    }
}

fn rule_by_constraint(name: &str) -> Option<UniqueKey> {
    UNIQUE_RULES
        .iter()
        .find(|(constraint, _, _)| *constraint == name)
        .map(|(_, _, key)| *key)
}

fn rule_by_columns(columns: &str) -> Option<UniqueKey> {
    UNIQUE_RULES
        .iter()
        .find(|(_, cols, _)| *cols == columns)
        .map(|(_, _, key)| *key)
}

/// A known uniqueness violation as `Duplicate`, anything else as `Backend`.
pub(crate) fn write_error(e: DbErr) -> StoreError {
    match unique_violation(&e) {
        Some(key) => StoreError::Duplicate(key),
        None => backend(e),
    }
}

pub(crate) fn is_foreign_key_violation(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::ForeignKeyConstraintViolation(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_is_found_by_name_and_by_columns() {
        for (name, columns, key) in UNIQUE_RULES {
            assert_eq!(rule_by_constraint(name), Some(key), "{name}");
            assert_eq!(rule_by_columns(columns), Some(key), "{columns}");
        }
        assert_eq!(rule_by_constraint("ix_connections_project_id"), None);
        assert_eq!(rule_by_columns("connections.name"), None);
    }
}
