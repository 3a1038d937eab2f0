//! Indexes for retention and for the bounded listings of events and usages.

use sea_orm_migration::prelude::*;

use super::{ConnectionEvents, ConnectionUsages};

/// Indexes for retention and for the bounded listings of events and usages.
pub(super) struct M0002HistoryIndexes;

// Named by hand, as it was released (the derive names a migration after its file).
impl MigrationName for M0002HistoryIndexes {
    fn name(&self) -> &str {
        "m0002_history_indexes"
    }
}

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for M0002HistoryIndexes {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Retention deletes events by time across every connection.
        m.create_index(
            Index::create()
                .name("ix_connection_events_at")
                .table(ConnectionEvents::Table)
                .col(ConnectionEvents::At)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        // Retention deletes usages by last use across every connection.
        m.create_index(
            Index::create()
                .name("ix_connection_usages_last_used")
                .table(ConnectionUsages::Table)
                .col(ConnectionUsages::LastUsedAt)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        // A connection's most recently used flows, without sorting all of them.
        m.create_index(
            Index::create()
                .name("ix_connection_usages_recent")
                .table(ConnectionUsages::Table)
                .col(ConnectionUsages::ConnectionId)
                .col(ConnectionUsages::LastUsedAt)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table) in [
            (
                "ix_connection_usages_recent",
                ConnectionUsages::Table.into_iden(),
            ),
            (
                "ix_connection_usages_last_used",
                ConnectionUsages::Table.into_iden(),
            ),
            (
                "ix_connection_events_at",
                ConnectionEvents::Table.into_iden(),
            ),
        ] {
            m.drop_index(Index::drop().name(name).table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
