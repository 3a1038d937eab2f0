//! # latchkey-ports
//!
//! The traits the core (`latchkey-app`) needs from the outside world. Adapters
//! implement them; the `mocks` feature exports mockall mocks for the app's tests.
//! Traits only: no logic lives here.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use secrecy::{SecretBox, SecretString};

use latchkey_domain::oauth::{ClientCredentials, DiscoveredMetadata, TokenResponse};
use latchkey_domain::{
    AccessKey, AccessKeyId, AuthSession, Connection, ConnectionEvent, ConnectionId, ConnectionType,
    EventCursor, FlowId, Grant, Lease, OAuthClient, OAuthClientId, ProjectId, RefreshSchedule,
    SealContext, Sealed, Status, Usage,
};

#[cfg(feature = "mocks")]
use mockall::automock;

// ---------------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------------

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

/// Filter and page of a connection listing. Pages are keyed by id (`after`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionQuery {
    /// `None`: every project (admin).
    pub project_id: Option<ProjectId>,
    pub status: Option<Status>,
    pub kind: Option<ConnectionType>,
    /// Only connections whose name contains this text (ASCII letters compared without
    /// case; `%` and `_` are literal).
    pub name_contains: Option<String>,
    /// Return connections whose id sorts after this one.
    pub after: Option<ConnectionId>,
    pub limit: u32,
}

/// A page of a connection's events, oldest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Return events after this one (`EventPage::next_cursor` of the previous page).
    pub after: Option<EventCursor>,
    /// At most this many; at least 1.
    pub limit: u32,
}

/// One page of events, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<ConnectionEvent>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<EventCursor>,
}

/// Persistence of connections and their events, usages and refresh claims.
///
/// Every write of a connection compares-and-sets on `version`: the caller passes the
/// version it read and the connection to write with `version` already incremented.
#[cfg_attr(feature = "mocks", automock)]
#[async_trait]
pub trait ConnectionStore: Send + Sync {
    /// Inserts a new connection with its creation event. `Duplicate("name")` if the
    /// project already has a connection of that name.
    async fn insert_connection(
        &self,
        connection: &Connection,
        event: &ConnectionEvent,
    ) -> Result<(), StoreError>;

    /// Like `insert_connection`, but only while the connection's project holds fewer than
    /// `max_in_project` connections; `LimitReached` otherwise. The count and the insert
    /// are serialised per project (a per-project advisory lock on PostgreSQL, the single
    /// writer on SQLite), so concurrent creators never pass the cap.
    async fn insert_connection_capped(
        &self,
        connection: &Connection,
        event: &ConnectionEvent,
        max_in_project: u64,
    ) -> Result<(), StoreError>;

    async fn get_connection(&self, id: ConnectionId) -> Result<Option<Connection>, StoreError>;

    /// Ordered by id.
    async fn list_connections(
        &self,
        query: &ConnectionQuery,
    ) -> Result<Vec<Connection>, StoreError>;

    /// Writes every column of `connection` except the refresh lease (`lease_owner`,
    /// `lease_until`: only the claim/save/release methods touch those, so a rename never
    /// clobbers a refresh in flight) if the stored version is `expected_version`, with
    /// `events` in the same transaction. `Conflict` otherwise; `NotFound` if gone;
    /// `Duplicate("name")` on a name clash.
    async fn update_connection(
        &self,
        connection: &Connection,
        expected_version: i64,
        events: &[ConnectionEvent],
    ) -> Result<(), StoreError>;

    /// Deletes the connection and everything hanging off it (events, usages, pending
    /// authorizations). `false` if there was none.
    async fn delete_connection(&self, id: ConnectionId) -> Result<bool, StoreError>;

    /// Notes that credentials were handed out at `at`, by `flow` when named. Does not
    /// bump the version: usage is not a change of the connection.
    async fn record_usage(
        &self,
        id: ConnectionId,
        flow: Option<FlowId>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Writes usage gathered in memory since the last flush, in one transaction: moves
    /// each connection's `last_used_at` forward to the given time (never back), and
    /// upserts each (connection, flow) row, adding `count` and widening
    /// `first_used_at`/`last_used_at`. Entries of connections that no longer exist are
    /// dropped. Does not bump any version.
    async fn record_usages(
        &self,
        last_used: &[(ConnectionId, DateTime<Utc>)],
        flows: &[Usage],
    ) -> Result<(), StoreError>;

    /// The `limit` most recently used flows, most recent use first (ties by flow id).
    async fn list_usages(&self, id: ConnectionId, limit: u32) -> Result<Vec<Usage>, StoreError>;

    /// How many distinct flows used the connection (within the retention period).
    async fn count_usages(&self, id: ConnectionId) -> Result<u64, StoreError>;

    /// One page of the connection's events, oldest first (by time, then insertion).
    async fn list_events(
        &self,
        id: ConnectionId,
        query: &EventQuery,
    ) -> Result<EventPage, StoreError>;

    /// Retention: deletes up to `batch` events (oldest first) that happened before
    /// `before`, by a range over an index on the event time. Returns how many went;
    /// fewer than `batch` means none older is left. Callers repeat it to purge more, so
    /// no statement holds locks for long.
    async fn purge_events(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, StoreError>;

    /// Retention: deletes up to `batch` usages (flows) last used before `before`, like
    /// `purge_events`.
    async fn purge_usages(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, StoreError>;

    /// Active connections whose refresh is due at `now` and not leased by a live worker,
    /// earliest deadline first: by the access token's expiry, then by due time, then id.
    /// Served by an index on the due time.
    async fn due_for_refresh(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ConnectionId>, StoreError>;

    /// Active connections holding a grant whose access token expired at or before `now`.
    async fn past_expiry(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ConnectionId>, StoreError>;

    /// Claims the refresh of an active connection in one short statement: succeeds only
    /// if no live lease exists (none, or one whose deadline is before `now`). Returns
    /// the connection as claimed (lease set, version unchanged), or `None` if it is
    /// leased by another worker, not active, or gone.
    async fn claim_refresh(
        &self,
        id: ConnectionId,
        lease: &Lease,
        now: DateTime<Utc>,
    ) -> Result<Option<Connection>, StoreError>;

    /// Saves a refreshed grant: only if the version is still `expected_version` and the
    /// lease is still held by `owner`. Touches only the grant, schedule, last_error,
    /// updated_at and version columns; clears the lease. `Conflict` otherwise.
    async fn save_refreshed_grant(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        grant: &Grant,
        schedule: &RefreshSchedule,
        updated_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Gives a lease back without new tokens (after a failed attempt): sets the schedule
    /// (next due time, failure count) and `last_error`, clears the lease, only if `owner`
    /// still holds it AND the version is still `expected_version` (so a failed refresh
    /// never writes its error and back-off over a newer authorization). Returns whether
    /// it did. Does not bump the version.
    async fn release_refresh(
        &self,
        id: ConnectionId,
        owner: &str,
        expected_version: i64,
        schedule: &RefreshSchedule,
        last_error: Option<String>,
    ) -> Result<bool, StoreError>;

    /// Clears the lease if `owner` holds it, touching nothing else. Returns whether it did.
    async fn drop_lease(&self, id: ConnectionId, owner: &str) -> Result<bool, StoreError>;
}

/// Pending consent flows, keyed by the hash of their `state`.
#[cfg_attr(feature = "mocks", automock)]
#[async_trait]
pub trait AuthSessionStore: Send + Sync {
    async fn insert_auth_session(&self, session: &AuthSession) -> Result<(), StoreError>;

    /// Removes and returns the session in one step, so a state is usable once even
    /// under concurrent callbacks.
    async fn take_auth_session(&self, state_hash: &str) -> Result<Option<AuthSession>, StoreError>;

    /// Deletes sessions that expired before `now`; returns how many.
    async fn purge_auth_sessions(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// Reusable OAuth client registrations.
#[cfg_attr(feature = "mocks", automock)]
#[async_trait]
pub trait OAuthClientStore: Send + Sync {
    /// `Duplicate("name")` on a name clash within the same project (or among globals).
    async fn insert_oauth_client(&self, client: &OAuthClient) -> Result<(), StoreError>;
    async fn get_oauth_client(&self, id: OAuthClientId) -> Result<Option<OAuthClient>, StoreError>;
    /// The clients a project may use (its own and the global ones); all with `None`.
    async fn list_oauth_clients(
        &self,
        project: Option<ProjectId>,
    ) -> Result<Vec<OAuthClient>, StoreError>;
    /// `InUse` while connections refer to it; `false` if there was none.
    async fn delete_oauth_client(&self, id: OAuthClientId) -> Result<bool, StoreError>;
}

/// Access keys (hashes only).
#[cfg_attr(feature = "mocks", automock)]
#[async_trait]
pub trait AccessKeyStore: Send + Sync {
    async fn insert_access_key(&self, key: &AccessKey) -> Result<(), StoreError>;
    async fn get_access_key(&self, id: AccessKeyId) -> Result<Option<AccessKey>, StoreError>;
    async fn list_access_keys(
        &self,
        project: Option<ProjectId>,
    ) -> Result<Vec<AccessKey>, StoreError>;
    async fn delete_access_key(&self, id: AccessKeyId) -> Result<bool, StoreError>;
}

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

/// A change the store saw committed, by this process or another one sharing the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Connection(ConnectionId),
    AccessKey(AccessKeyId),
    /// The feed is listening (again) and may have missed changes: forget everything read
    /// before.
    Resync,
}

/// Tells the in-process caches what changed in the database. PostgreSQL implements it
/// with LISTEN/NOTIFY; SQLite by watching the file's commit counter.
#[cfg_attr(feature = "mocks", automock)]
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// Waits for the next change. The first successful call (and the first after an
    /// error) returns `Resync` once the feed is listening. `Err` means the feed is down
    /// and changes are being missed until a later call returns `Resync`.
    async fn next_change(&self) -> Result<Change, StoreError>;
}

// ---------------------------------------------------------------------------------------
// Cipher
// ---------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CipherError {
    /// The value names a key the ring does not hold.
    #[error("sealed with unknown key id {0:?}")]
    UnknownKey(String),
    /// Wrong key, tampered bytes, or a value moved to another place.
    #[error("sealed value failed authentication")]
    Authentication,
    #[error("sealed value is malformed: {0}")]
    Malformed(&'static str),
    #[error("unsupported sealed format version {0}")]
    UnsupportedVersion(u8),
}

/// Authenticated encryption of secrets, bound to where they are stored.
#[cfg_attr(feature = "mocks", automock)]
pub trait Cipher: Send + Sync {
    fn seal(
        &self,
        plaintext: &SecretBox<[u8]>,
        context: &SealContext,
    ) -> Result<Sealed, CipherError>;
    fn open(&self, sealed: &Sealed, context: &SealContext) -> Result<SecretBox<[u8]>, CipherError>;
    /// The id of the key that sealed `sealed`, read from its header (nothing is
    /// decrypted; works on a value cut to its first 64 bytes).
    fn sealed_key_id(&self, sealed: &Sealed) -> Result<String, CipherError>;
    /// The ids of the ring, the sealing key first.
    fn ring_key_ids(&self) -> Vec<String>;
}

// ---------------------------------------------------------------------------------------
// OAuth provider client
// ---------------------------------------------------------------------------------------

/// How a provider call failed, classified for the refresh rules.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OAuthError {
    /// `invalid_grant`: the code or refresh token is revoked, expired or already used.
    #[error("the provider rejected the grant (invalid_grant){}", describe(.0))]
    InvalidGrant(Option<String>),
    /// `invalid_client` / `unauthorized_client`: our client registration is wrong.
    #[error("the provider rejected the client ({error}){}", describe(.description))]
    InvalidClient {
        error: String,
        description: Option<String>,
    },
    /// Any other OAuth error code the provider returned.
    #[error("the provider answered {error}{}", describe(.description))]
    Provider {
        error: String,
        description: Option<String>,
    },
    /// Network error, timeout, 5xx or 429: worth retrying later.
    #[error("transient provider failure: {reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The provider answered something that is not OAuth 2.0 (garbage, a redirect, HTML).
    #[error("the provider's answer is not valid OAuth 2.0: {0}")]
    Protocol(String),
    /// The URL is not allowed by the outbound policy (https required).
    #[error("refused to call {0}: https is required")]
    InsecureUrl(String),
    /// The address behind a URL is not allowed by the outbound policy (loopback, private,
    /// link-local, ...): refused before any connection to it.
    #[error("refused to connect to {0}")]
    AddressNotAllowed(String),
}

fn describe(d: &Option<String>) -> String {
    d.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
}

/// The token request of the authorization code grant.
#[derive(Debug, Clone)]
pub struct CodeExchange {
    pub token_endpoint: String,
    pub client: ClientCredentials,
    pub code: SecretString,
    pub redirect_uri: String,
    pub pkce_verifier: Option<SecretString>,
}

/// The token request of the refresh token grant.
#[derive(Debug, Clone)]
pub struct RefreshExchange {
    pub token_endpoint: String,
    pub client: ClientCredentials,
    pub refresh_token: SecretString,
    /// Requested scopes; `None` keeps the grant's (the usual case).
    pub scopes: Option<Vec<String>>,
}

/// An RFC 7009 revocation request.
#[derive(Debug, Clone)]
pub struct Revocation {
    pub revocation_endpoint: String,
    pub client: ClientCredentials,
    pub token: SecretString,
    /// `refresh_token` or `access_token`.
    pub token_type_hint: &'static str,
}

/// Talks to OAuth 2.0 providers.
#[cfg_attr(feature = "mocks", automock)]
#[async_trait]
pub trait ProviderClient: Send + Sync {
    async fn exchange_code(&self, request: CodeExchange) -> Result<TokenResponse, OAuthError>;
    async fn refresh(&self, request: RefreshExchange) -> Result<TokenResponse, OAuthError>;
    async fn revoke(&self, request: Revocation) -> Result<(), OAuthError>;
    /// GETs the userinfo endpoint with the access token; returns the JSON object.
    async fn userinfo(
        &self,
        endpoint: String,
        access_token: SecretString,
    ) -> Result<serde_json::Value, OAuthError>;
    /// Fetches the issuer's RFC 8414 / OpenID discovery document and checks its issuer.
    async fn discover(&self, issuer: String) -> Result<DiscoveredMetadata, OAuthError>;
}

// ---------------------------------------------------------------------------------------
// Clock and entropy
// ---------------------------------------------------------------------------------------

/// The current time. The only way the core learns it.
#[cfg_attr(feature = "mocks", automock)]
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// Random bytes for ids, states, verifiers and jitter.
#[cfg_attr(feature = "mocks", automock)]
pub trait Entropy: Send + Sync {
    fn fill(&self, buf: &mut [u8]);
}
