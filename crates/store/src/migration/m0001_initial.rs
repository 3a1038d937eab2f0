//! The first schema: every table, its keys and the indexes of the first release.

use sea_orm_migration::prelude::*;

use super::{
    bytes_null, id_column, millis, millis_null, text, text_null, AccessKeys, AuthSessions,
    ConnectionEvents, ConnectionUsages, Connections, Meta, OauthClients,
};

pub(super) struct M0001Initial;

// The name it was released under: the derive used to name it after its file, then
// `migration.rs`. Databases record it, so it must never change.
impl MigrationName for M0001Initial {
    fn name(&self) -> &str {
        "migration"
    }
}

// The trait spells `&SchemaManager` without a lifetime; matching it exactly is required.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for M0001Initial {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let backend = m.get_database_backend();

        m.create_table(
            Table::create()
                .table(OauthClients::Table)
                .if_not_exists()
                .col(text(OauthClients::Id).primary_key())
                .col(text(OauthClients::Name))
                .col(text_null(OauthClients::ProjectId))
                .col(text(OauthClients::Scope))
                .col(text(OauthClients::Kind))
                .col(text(OauthClients::Config))
                .col(bytes_null(OauthClients::ClientSecret))
                .col(millis(OauthClients::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_oauth_clients_scope_name")
                .table(OauthClients::Table)
                .col(OauthClients::Scope)
                .col(OauthClients::Name)
                .unique()
                .if_not_exists()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Connections::Table)
                .if_not_exists()
                .col(id_column(backend, Connections::Id).primary_key())
                .col(text(Connections::ProjectId))
                .col(text(Connections::Name))
                .col(text(Connections::Kind))
                .col(text(Connections::Status))
                .col(text(Connections::Config))
                .col(bytes_null(Connections::Secrets))
                .col(text_null(Connections::Oauth2ClientId))
                .col(bytes_null(Connections::AccessToken))
                .col(bytes_null(Connections::RefreshToken))
                .col(text_null(Connections::TokenType))
                .col(text_null(Connections::Scopes))
                .col(millis_null(Connections::ObtainedAt))
                .col(millis_null(Connections::ExpiresAt))
                .col(text_null(Connections::AuthorizedUser))
                .col(millis_null(Connections::RefreshDueAt))
                .col(
                    ColumnDef::new(Connections::RefreshFailures)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .col(text_null(Connections::LeaseOwner))
                .col(millis_null(Connections::LeaseUntil))
                .col(text_null(Connections::LastError))
                .col(millis(Connections::CreatedAt))
                .col(millis(Connections::UpdatedAt))
                .col(millis_null(Connections::LastUsedAt))
                .col(
                    ColumnDef::new(Connections::Version)
                        .big_integer()
                        .not_null(),
                )
                // A reusable client cannot vanish under a connection using it, even when
                // a delete races an insert.
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_connections_oauth2_client")
                        .from(Connections::Table, Connections::Oauth2ClientId)
                        .to(OauthClients::Table, OauthClients::Id)
                        .on_delete(ForeignKeyAction::Restrict),
                )
                .to_owned(),
        )
        .await?;
        for (name, cols, unique) in [
            (
                "ux_connections_project_name",
                vec![Connections::ProjectId, Connections::Name],
                true,
            ),
            // Listing a project's connections, paged by id.
            (
                "ix_connections_project_id",
                vec![Connections::ProjectId, Connections::Id],
                false,
            ),
            // due_for_refresh: status = 'active' AND refresh_due_at <= now.
            (
                "ix_connections_refresh_due",
                vec![Connections::Status, Connections::RefreshDueAt],
                false,
            ),
            // past_expiry: status = 'active' AND expires_at <= now; leading on status so
            // expired connections keeping an old grant are never scanned.
            (
                "ix_connections_expiry",
                vec![Connections::Status, Connections::ExpiresAt],
                false,
            ),
            // The in-use check when deleting an OAuth client.
            (
                "ix_connections_oauth2_client",
                vec![Connections::Oauth2ClientId],
                false,
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table(Connections::Table).if_not_exists();
            for col in cols {
                index.col(col);
            }
            if unique {
                index.unique();
            }
            m.create_index(index.to_owned()).await?;
        }

        m.create_table(
            Table::create()
                .table(ConnectionEvents::Table)
                .if_not_exists()
                .col(
                    ColumnDef::new(ConnectionEvents::Seq)
                        .big_integer()
                        .not_null()
                        .auto_increment()
                        .primary_key(),
                )
                .col(text(ConnectionEvents::Id).unique_key())
                .col(id_column(backend, ConnectionEvents::ConnectionId))
                .col(millis(ConnectionEvents::At))
                .col(text_null(ConnectionEvents::FromStatus))
                .col(text(ConnectionEvents::ToStatus))
                .col(text(ConnectionEvents::Kind))
                .col(text_null(ConnectionEvents::Reason))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_connection_events_connection")
                        .from(ConnectionEvents::Table, ConnectionEvents::ConnectionId)
                        .to(Connections::Table, Connections::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_connection_events_connection")
                .table(ConnectionEvents::Table)
                .col(ConnectionEvents::ConnectionId)
                .col(ConnectionEvents::At)
                .col(ConnectionEvents::Seq)
                .if_not_exists()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(ConnectionUsages::Table)
                .if_not_exists()
                .col(id_column(backend, ConnectionUsages::ConnectionId))
                .col(text(ConnectionUsages::FlowId))
                .col(millis(ConnectionUsages::FirstUsedAt))
                .col(millis(ConnectionUsages::LastUsedAt))
                .col(
                    ColumnDef::new(ConnectionUsages::UseCount)
                        .big_integer()
                        .not_null(),
                )
                .primary_key(
                    Index::create()
                        .col(ConnectionUsages::ConnectionId)
                        .col(ConnectionUsages::FlowId),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_connection_usages_connection")
                        .from(ConnectionUsages::Table, ConnectionUsages::ConnectionId)
                        .to(Connections::Table, Connections::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(AuthSessions::Table)
                .if_not_exists()
                .col(text(AuthSessions::StateHash).primary_key())
                .col(id_column(backend, AuthSessions::ConnectionId))
                .col(text(AuthSessions::ProjectId))
                .col(bytes_null(AuthSessions::PkceVerifier))
                .col(text(AuthSessions::TokenEndpoint))
                .col(text(AuthSessions::RedirectUri))
                .col(text_null(AuthSessions::Issuer))
                .col(
                    ColumnDef::new(AuthSessions::RequireIss)
                        .boolean()
                        .not_null(),
                )
                .col(millis(AuthSessions::CreatedAt))
                .col(millis(AuthSessions::ExpiresAt))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_auth_sessions_connection")
                        .from(AuthSessions::Table, AuthSessions::ConnectionId)
                        .to(Connections::Table, Connections::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        for (name, col) in [
            ("ix_auth_sessions_expires_at", AuthSessions::ExpiresAt),
            ("ix_auth_sessions_connection", AuthSessions::ConnectionId),
        ] {
            m.create_index(
                Index::create()
                    .name(name)
                    .table(AuthSessions::Table)
                    .col(col)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        }

        m.create_table(
            Table::create()
                .table(AccessKeys::Table)
                .if_not_exists()
                .col(text(AccessKeys::Id).primary_key())
                .col(text(AccessKeys::ProjectId))
                .col(text(AccessKeys::Name))
                .col(text(AccessKeys::Scopes))
                .col(text(AccessKeys::SecretHash))
                .col(millis(AccessKeys::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_access_keys_project")
                .table(AccessKeys::Table)
                .col(AccessKeys::ProjectId)
                .if_not_exists()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Meta::Table)
                .if_not_exists()
                .col(text(Meta::Key).primary_key())
                .col(ColumnDef::new(Meta::Value).blob().not_null())
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Meta::Table.into_iden(),
            AccessKeys::Table.into_iden(),
            AuthSessions::Table.into_iden(),
            ConnectionUsages::Table.into_iden(),
            ConnectionEvents::Table.into_iden(),
            Connections::Table.into_iden(),
            OauthClients::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
