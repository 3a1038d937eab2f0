//! Every sealed value wherever it is stored, for master-key rotation and census.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use latchkey_domain::Sealed;

use super::StoreError;

/// A table whose rows hold sealed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SealedTable {
    /// `secrets`, `access_token`, `refresh_token`.
    Connections,
    /// `client_secret`.
    OAuthClients,
    /// `pkce_verifier` of pending authorizations.
    AuthSessions,
    /// The start-up key check (the canary).
    Meta,
}

impl SealedTable {
    pub const ALL: [SealedTable; 4] = [
        SealedTable::Connections,
        SealedTable::OAuthClients,
        SealedTable::AuthSessions,
        SealedTable::Meta,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            SealedTable::Connections => "connections",
            SealedTable::OAuthClients => "oauth2 clients",
            SealedTable::AuthSessions => "pending authorizations",
            SealedTable::Meta => "key check",
        }
    }
}

/// The sealed values of one row, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRecord {
    pub table: SealedTable,
    /// The row's key: connection id, client id, state hash, or meta key.
    pub id: String,
    /// The project the values are bound to; `None` for global clients and the key check.
    pub project_id: Option<String>,
    /// Connections only: the version the values were read at.
    pub version: Option<i64>,
    /// (field as in its `SealContext`, value) for every non-null sealed column.
    pub values: Vec<(String, Sealed)>,
}

/// Reads and replaces sealed values wherever they are stored, for key rotation
/// (`latchkey keys rewrap`) and for counting values per key id.
#[async_trait]
pub trait SealedValueStore: Send + Sync {
    /// Rows of `table` holding at least one sealed value, ordered by `id`, with an id
    /// after `after`; at most `limit`. With `headers_only`, each value is cut to its
    /// first 64 bytes, enough to name its key.
    async fn sealed_records(
        &self,
        table: SealedTable,
        after: Option<String>,
        limit: u32,
        headers_only: bool,
    ) -> Result<Vec<SealedRecord>, StoreError>;

    /// Every sealed value of `table`, grouped by its header (`[version][id length][id]`,
    /// from which the cipher names its key): (header, how many values carry it). A store
    /// that can group in its query overrides this, so that counting values per key (at
    /// every start-up) does not carry every row out of the database; this default pages
    /// through [`sealed_records`](Self::sealed_records) and answers one entry per value.
    async fn sealed_header_counts(
        &self,
        table: SealedTable,
    ) -> Result<Vec<(Sealed, u64)>, StoreError> {
        const PAGE: u32 = 1_000;
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.sealed_records(table, after, PAGE, true).await?;
            out.extend(
                page.iter()
                    .flat_map(|r| r.values.iter().map(|(_, v)| (v.clone(), 1))),
            );
            match page.last() {
                Some(last) if page.len() as u32 == PAGE => after = Some(last.id.clone()),
                _ => return Ok(out),
            }
        }
    }

    /// One row, as [`sealed_records`](Self::sealed_records) reads it in full.
    async fn sealed_record(
        &self,
        table: SealedTable,
        id: &str,
    ) -> Result<Option<SealedRecord>, StoreError>;

    /// Writes `values` (a subset of the row's fields) over `record` if the row is
    /// unchanged since it was read: a compare-and-set on the version for connections
    /// (which is bumped, and which also requires no live refresh lease at `now`), on
    /// the old bytes elsewhere. `false` when the race was lost.
    async fn replace_sealed(
        &self,
        record: &SealedRecord,
        values: &[(String, Sealed)],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}
