//! Schema migrations. Each migration is frozen once released: later changes are new
//! migrations. Identifiers are spelled here, not taken from the entities, so editing an
//! entity never rewrites history. One file per migration; the identifiers and column
//! helpers they share live here.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_history_indexes;

use m0001_initial::M0001Initial;
use m0002_history_indexes::M0002HistoryIndexes;

pub(crate) struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(M0001Initial),
            Box::new(M0002HistoryIndexes),
            Box::new(crate::notify::M0003ChangeNotify),
        ]
    }

    /// Our own name, so the table cannot clash with another sea-orm application
    /// sharing the database.
    fn migration_table_name() -> DynIden {
        Alias::new("latchkey_migrations").into_iden()
    }
}

#[derive(DeriveIden)]
enum OauthClients {
    Table,
    Id,
    Name,
    ProjectId,
    Scope,
    Kind,
    Config,
    ClientSecret,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Connections {
    Table,
    Id,
    ProjectId,
    Name,
    Kind,
    Status,
    Config,
    Secrets,
    Oauth2ClientId,
    AccessToken,
    RefreshToken,
    TokenType,
    Scopes,
    ObtainedAt,
    ExpiresAt,
    AuthorizedUser,
    RefreshDueAt,
    RefreshFailures,
    LeaseOwner,
    LeaseUntil,
    LastError,
    CreatedAt,
    UpdatedAt,
    LastUsedAt,
    Version,
}

#[derive(DeriveIden)]
enum ConnectionEvents {
    Table,
    Seq,
    Id,
    ConnectionId,
    At,
    FromStatus,
    ToStatus,
    Kind,
    Reason,
}

#[derive(DeriveIden)]
enum ConnectionUsages {
    Table,
    ConnectionId,
    FlowId,
    FirstUsedAt,
    LastUsedAt,
    UseCount,
}

#[derive(DeriveIden)]
enum AuthSessions {
    Table,
    StateHash,
    ConnectionId,
    ProjectId,
    PkceVerifier,
    TokenEndpoint,
    RedirectUri,
    Issuer,
    RequireIss,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum AccessKeys {
    Table,
    Id,
    ProjectId,
    Name,
    Scopes,
    SecretHash,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Meta {
    Table,
    Key,
    Value,
}

/// A text id column that sorts bytewise: connection listings page by id, and a
/// locale collation on PostgreSQL could order differently from the cursor comparison.
fn id_column<T: IntoIden>(backend: DbBackend, name: T) -> ColumnDef {
    let mut col = ColumnDef::new(name);
    col.text().not_null();
    if backend == DbBackend::Postgres {
        col.extra("COLLATE \"C\"");
    }
    col
}

fn text<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name).text().not_null().to_owned()
}

fn text_null<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name).text().null().to_owned()
}

fn millis<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name).big_integer().not_null().to_owned()
}

fn millis_null<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name).big_integer().null().to_owned()
}

fn bytes_null<T: IntoIden>(name: T) -> ColumnDef {
    ColumnDef::new(name).blob().null().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Databases record migrations by name: a renamed migration would run again.
    #[test]
    fn migration_names_never_change() {
        let names: Vec<String> = Migrator::migrations()
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        assert_eq!(
            names,
            ["migration", "m0002_history_indexes", "m0003_change_notify"]
        );
    }
}
