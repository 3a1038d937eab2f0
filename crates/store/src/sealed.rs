//! `SealedValueStore`: every sealed column, read in pages keyed by id and replaced by
//! compare-and-set, for key rotation and per-key counts.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use latchkey_domain::sealed::fields;
use latchkey_domain::Sealed;
use latchkey_ports::{SealedRecord, SealedTable, SealedValueStore, StoreError};
use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement,
};

use crate::entity::{auth_sessions, connections, meta, oauth_clients};
use crate::time::to_millis;
use crate::{backend, SeaStore};

/// The one `meta` row that is sealed: the start-up key check.
pub const KEY_CHECK_META: &str = "key_check";

/// How much of a value `headers_only` keeps: the header is at most 34 bytes.
const HEADER_BYTES: i32 = 64;

/// A column's value, or on PostgreSQL only its first bytes (less to send over the
/// network). SQLite reads the file in-process, and a `substr` expression column there
/// loses its blob type on the way through the driver, so it reads whole values.
fn value_expr(
    col: impl sea_orm::sea_query::IntoColumnRef,
    headers_only: bool,
    postgres: bool,
) -> SimpleExpr {
    if headers_only && postgres {
        Expr::cust_with_exprs(
            format!("substr($1, 1, {HEADER_BYTES})"),
            [Expr::col(col).into()],
        )
    } else {
        Expr::col(col).into()
    }
}

fn values(pairs: [(&str, Option<Vec<u8>>); 3]) -> Vec<(String, Sealed)> {
    pairs
        .into_iter()
        .filter_map(|(f, v)| v.map(|v| (f.to_owned(), Sealed(v))))
        .collect()
}

type ConnRow = (
    String,
    String,
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

impl SeaStore {
    async fn sealed_connections(
        &self,
        after: Option<String>,
        only: Option<&str>,
        limit: u32,
        headers_only: bool,
    ) -> Result<Vec<SealedRecord>, StoreError> {
        use connections::Column as C;
        let mut q = connections::Entity::find()
            .select_only()
            .column(C::Id)
            .column(C::ProjectId)
            .column(C::Version)
            .expr_as(
                value_expr(C::Secrets, headers_only, self.is_postgres()),
                "secrets",
            )
            .expr_as(
                value_expr(C::AccessToken, headers_only, self.is_postgres()),
                "access_token",
            )
            .expr_as(
                value_expr(C::RefreshToken, headers_only, self.is_postgres()),
                "refresh_token",
            )
            .filter(
                Condition::any()
                    .add(C::Secrets.is_not_null())
                    .add(C::AccessToken.is_not_null())
                    .add(C::RefreshToken.is_not_null()),
            );
        if let Some(after) = after {
            q = q.filter(C::Id.gt(after));
        }
        if let Some(id) = only {
            q = q.filter(C::Id.eq(id));
        }
        let rows: Vec<ConnRow> = q
            .order_by_asc(C::Id)
            .limit(u64::from(limit))
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(id, project, version, s, a, r)| SealedRecord {
                table: SealedTable::Connections,
                id,
                project_id: Some(project),
                version: Some(version),
                values: values([
                    (fields::SECRETS, s),
                    (fields::ACCESS_TOKEN, a),
                    (fields::REFRESH_TOKEN, r),
                ]),
            })
            .collect())
    }

    async fn sealed_clients(
        &self,
        after: Option<String>,
        only: Option<&str>,
        limit: u32,
        headers_only: bool,
    ) -> Result<Vec<SealedRecord>, StoreError> {
        use oauth_clients::Column as O;
        let mut q = oauth_clients::Entity::find()
            .select_only()
            .column(O::Id)
            .column(O::ProjectId)
            .expr_as(
                value_expr(O::ClientSecret, headers_only, self.is_postgres()),
                "client_secret",
            )
            .filter(O::ClientSecret.is_not_null());
        if let Some(after) = after {
            q = q.filter(O::Id.gt(after));
        }
        if let Some(id) = only {
            q = q.filter(O::Id.eq(id));
        }
        let rows: Vec<(String, Option<String>, Option<Vec<u8>>)> = q
            .order_by_asc(O::Id)
            .limit(u64::from(limit))
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(id, project, secret)| SealedRecord {
                table: SealedTable::OAuthClients,
                id,
                project_id: project,
                version: None,
                values: values([(fields::CLIENT_SECRET, secret), ("", None), ("", None)]),
            })
            .collect())
    }

    async fn sealed_sessions(
        &self,
        after: Option<String>,
        only: Option<&str>,
        limit: u32,
        headers_only: bool,
    ) -> Result<Vec<SealedRecord>, StoreError> {
        use auth_sessions::Column as S;
        let mut q = auth_sessions::Entity::find()
            .select_only()
            .column(S::StateHash)
            .column(S::ProjectId)
            .expr_as(
                value_expr(S::PkceVerifier, headers_only, self.is_postgres()),
                "pkce_verifier",
            )
            .filter(S::PkceVerifier.is_not_null());
        if let Some(after) = after {
            q = q.filter(S::StateHash.gt(after));
        }
        if let Some(id) = only {
            q = q.filter(S::StateHash.eq(id));
        }
        let rows: Vec<(String, String, Option<Vec<u8>>)> = q
            .order_by_asc(S::StateHash)
            .limit(u64::from(limit))
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(id, project, verifier)| SealedRecord {
                table: SealedTable::AuthSessions,
                id,
                project_id: Some(project),
                version: None,
                values: values([(fields::PKCE_VERIFIER, verifier), ("", None), ("", None)]),
            })
            .collect())
    }

    async fn sealed_meta(&self, after: Option<String>) -> Result<Vec<SealedRecord>, StoreError> {
        if after.is_some_and(|a| a.as_str() >= KEY_CHECK_META) {
            return Ok(Vec::new());
        }
        Ok(self
            .get_meta(KEY_CHECK_META)
            .await?
            .map(|v| SealedRecord {
                table: SealedTable::Meta,
                id: KEY_CHECK_META.into(),
                project_id: None,
                version: None,
                values: vec![(KEY_CHECK_META.into(), Sealed(v))],
            })
            .into_iter()
            .collect())
    }
}

/// The sealed columns of each table, for counting values per header.
fn sealed_columns(table: SealedTable) -> (&'static str, &'static [&'static str]) {
    match table {
        SealedTable::Connections => ("connections", &["secrets", "access_token", "refresh_token"]),
        SealedTable::OAuthClients => ("oauth_clients", &["client_secret"]),
        SealedTable::AuthSessions => ("auth_sessions", &["pkce_verifier"]),
        SealedTable::Meta => ("meta", &[]),
    }
}

/// One query per column: the values' headers (`[version][id length][id]`: the first
/// 2 + byte-2 bytes) and their counts, grouped by the database, so that only a handful
/// of rows leave it. Hex text on the way out: a computed blob loses its type in the
/// SQLite driver. A value too short for a header is returned whole; the cipher then
/// calls it malformed.
fn header_counts_sql(table: &str, col: &str, postgres: bool) -> String {
    let header = if postgres {
        format!("encode(CASE WHEN length({col}) >= 2 THEN substring({col} from 1 for 2 + get_byte({col}, 1)) ELSE {col} END, 'hex')")
    } else {
        format!("hex(CASE WHEN length({col}) >= 2 THEN substr({col}, 1, 2 + unicode(substr({col}, 2, 1))) ELSE {col} END)")
    };
    format!(
        "SELECT h, COUNT(*) AS n FROM (SELECT {header} AS h FROM {table} WHERE {col} IS NOT NULL) AS headers GROUP BY h"
    )
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16);
    let b = text.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks(2)
        .map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8))
        .collect()
}

#[async_trait]
impl SealedValueStore for SeaStore {
    async fn sealed_records(
        &self,
        table: SealedTable,
        after: Option<String>,
        limit: u32,
        headers_only: bool,
    ) -> Result<Vec<SealedRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        match table {
            SealedTable::Connections => {
                self.sealed_connections(after, None, limit, headers_only)
                    .await
            }
            SealedTable::OAuthClients => {
                self.sealed_clients(after, None, limit, headers_only).await
            }
            SealedTable::AuthSessions => {
                self.sealed_sessions(after, None, limit, headers_only).await
            }
            SealedTable::Meta => self.sealed_meta(after).await,
        }
    }

    async fn sealed_header_counts(
        &self,
        table: SealedTable,
    ) -> Result<Vec<(Sealed, u64)>, StoreError> {
        if table == SealedTable::Meta {
            return Ok(self
                .sealed_meta(None)
                .await?
                .into_iter()
                .flat_map(|r| r.values.into_iter().map(|(_, v)| (v, 1)))
                .collect());
        }
        let (name, columns) = sealed_columns(table);
        let db_backend = self.db.get_database_backend();
        let mut out = Vec::new();
        for col in columns {
            let sql = header_counts_sql(name, col, self.is_postgres());
            let rows = self
                .db
                .query_all(Statement::from_string(db_backend, sql))
                .await
                .map_err(backend)?;
            for row in rows {
                let header: Option<String> = row.try_get("", "h").map_err(backend)?;
                let n: i64 = row.try_get("", "n").map_err(backend)?;
                // A header that is no hex (it always is) counts as unreadable: empty.
                let bytes = header.as_deref().and_then(from_hex).unwrap_or_default();
                out.push((Sealed(bytes), u64::try_from(n).unwrap_or(0)));
            }
        }
        Ok(out)
    }

    async fn sealed_record(
        &self,
        table: SealedTable,
        id: &str,
    ) -> Result<Option<SealedRecord>, StoreError> {
        let rows = match table {
            SealedTable::Connections => self.sealed_connections(None, Some(id), 1, false).await?,
            SealedTable::OAuthClients => self.sealed_clients(None, Some(id), 1, false).await?,
            SealedTable::AuthSessions => self.sealed_sessions(None, Some(id), 1, false).await?,
            SealedTable::Meta if id == KEY_CHECK_META => self.sealed_meta(None).await?,
            SealedTable::Meta => Vec::new(),
        };
        Ok(rows.into_iter().next())
    }

    async fn replace_sealed(
        &self,
        record: &SealedRecord,
        values: &[(String, Sealed)],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        if values.is_empty() {
            return Ok(true);
        }
        let unknown = |f: &str| {
            StoreError::Backend(format!(
                "no sealed field {f:?} in {}",
                record.table.as_str()
            ))
        };
        let affected = match record.table {
            SealedTable::Connections => {
                use connections::Column as C;
                let version = record.version.ok_or_else(|| {
                    StoreError::Backend("a connection record without version".into())
                })?;
                let now = to_millis(now);
                let mut q = connections::Entity::update_many();
                for (field, value) in values {
                    let col = match field.as_str() {
                        fields::SECRETS => C::Secrets,
                        fields::ACCESS_TOKEN => C::AccessToken,
                        fields::REFRESH_TOKEN => C::RefreshToken,
                        other => return Err(unknown(other)),
                    };
                    q = q.col_expr(col, Expr::value(value.0.clone()));
                }
                // The version bump makes a writer that read before us retry on the new
                // row instead of writing the old-key values back; a live lease means a
                // refresh is about to replace the tokens, so wait for it instead.
                q.col_expr(C::Version, Expr::col(C::Version).add(1))
                    .filter(C::Id.eq(record.id.as_str()))
                    .filter(C::Version.eq(version))
                    .filter(
                        Condition::any()
                            .add(C::LeaseUntil.is_null())
                            .add(C::LeaseUntil.lt(now)),
                    )
                    .exec(&self.writer)
                    .await
                    .map_err(backend)?
                    .rows_affected
            }
            SealedTable::OAuthClients | SealedTable::AuthSessions | SealedTable::Meta => {
                let [(field, value)] = values else {
                    return Err(unknown("(several)"));
                };
                let old = record
                    .values
                    .iter()
                    .find(|(f, _)| f == field)
                    .map(|(_, v)| v.0.clone())
                    .ok_or_else(|| unknown(field))?;
                let new = Expr::value(value.0.clone());
                match (record.table, field.as_str()) {
                    (SealedTable::OAuthClients, fields::CLIENT_SECRET) => {
                        use oauth_clients::Column as O;
                        oauth_clients::Entity::update_many()
                            .col_expr(O::ClientSecret, new)
                            .filter(O::Id.eq(record.id.as_str()))
                            .filter(O::ClientSecret.eq(old))
                            .exec(&self.writer)
                            .await
                    }
                    (SealedTable::AuthSessions, fields::PKCE_VERIFIER) => {
                        use auth_sessions::Column as S;
                        auth_sessions::Entity::update_many()
                            .col_expr(S::PkceVerifier, new)
                            .filter(S::StateHash.eq(record.id.as_str()))
                            .filter(S::PkceVerifier.eq(old))
                            .exec(&self.writer)
                            .await
                    }
                    (SealedTable::Meta, KEY_CHECK_META) => {
                        use meta::Column as M;
                        meta::Entity::update_many()
                            .col_expr(M::Value, new)
                            .filter(M::Key.eq(KEY_CHECK_META))
                            .filter(M::Value.eq(old))
                            .exec(&self.writer)
                            .await
                    }
                    (_, other) => return Err(unknown(other)),
                }
                .map_err(backend)?
                .rows_affected
            }
        };
        Ok(affected == 1)
    }
}
