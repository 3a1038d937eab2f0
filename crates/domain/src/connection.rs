//! The connection aggregate and its lifecycle state machine.
//!
//! ```text
//!   create(api_key|basic|custom) ──► active
//!   create(oauth)                ──► incomplete ──authorized──► active ──refresh_rejected/lapsed──► expired
//!                                                                 ▲                                  │
//!                                                                 └──────────── authorized ◄─────────┘
//! ```

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::ConnectionConfig;
use crate::ids::{ConnectionId, OAuthClientId, ProjectId};
use crate::provider::Provider;
use crate::sealed::Sealed;
use crate::DomainError;

pub mod lifecycle;

pub use lifecycle::{initial_status, transition, ExpiryReason, IssuedTokens, LifecycleEvent};

/// What kind of credential a connection holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionType {
    /// A static API key, handed out as it is.
    ApiKey,
    /// A username and password (HTTP basic authentication).
    Basic,
    /// Named fields of the user's choosing, each secret unless marked otherwise.
    Custom,
    /// An OAuth 2.0 grant from a catalog provider or a generic (`oauth2`) one.
    OAuth(Provider),
}

impl ConnectionType {
    /// Every accepted name, in the order error messages list them.
    pub const ALL: [ConnectionType; 10] = [
        ConnectionType::ApiKey,
        ConnectionType::Basic,
        ConnectionType::Custom,
        ConnectionType::OAuth(Provider::Google),
        ConnectionType::OAuth(Provider::Microsoft),
        ConnectionType::OAuth(Provider::Dropbox),
        ConnectionType::OAuth(Provider::Box),
        ConnectionType::OAuth(Provider::Notion),
        ConnectionType::OAuth(Provider::GitHub),
        ConnectionType::OAuth(Provider::Generic),
    ];

    /// The type's name in the API (`api_key`, `google`, `oauth2`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            ConnectionType::ApiKey => "api_key",
            ConnectionType::Basic => "basic",
            ConnectionType::Custom => "custom",
            ConnectionType::OAuth(p) => p.as_str(),
        }
    }

    /// Whether connections of this type hold an OAuth grant.
    pub fn is_oauth(&self) -> bool {
        matches!(self, ConnectionType::OAuth(_))
    }

    /// The OAuth provider, for an OAuth type.
    pub fn provider(&self) -> Option<Provider> {
        match self {
            ConnectionType::OAuth(p) => Some(*p),
            _ => None,
        }
    }

    /// The comma-separated list of accepted names, for error messages.
    pub fn accepted_names() -> String {
        Self::ALL
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for ConnectionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConnectionType {
    type Err = DomainError;

    /// Accepts our names and, so that clients of the Dynamiq API work unchanged, its
    /// `dynamiq.connections.*` names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = match s {
            "api_key" => ConnectionType::ApiKey,
            "basic" => ConnectionType::Basic,
            "custom" => ConnectionType::Custom,
            "dynamiq.connections.GoogleOAuth2" => ConnectionType::OAuth(Provider::Google),
            "dynamiq.connections.MicrosoftOAuth2" => ConnectionType::OAuth(Provider::Microsoft),
            "dynamiq.connections.DropboxOAuth2" => ConnectionType::OAuth(Provider::Dropbox),
            "dynamiq.connections.BoxOAuth2" => ConnectionType::OAuth(Provider::Box),
            "dynamiq.connections.NotionOAuth2" => ConnectionType::OAuth(Provider::Notion),
            "dynamiq.connections.GitHubOAuth2" => ConnectionType::OAuth(Provider::GitHub),
            "dynamiq.connections.OAuth2" => ConnectionType::OAuth(Provider::Generic),
            other => match other.parse::<Provider>() {
                Ok(p) => ConnectionType::OAuth(p),
                Err(_) => {
                    return Err(DomainError::UnknownType {
                        given: crate::error::echoed(other),
                        accepted: Self::accepted_names(),
                    })
                }
            },
        };
        Ok(t)
    }
}

impl Serialize for ConnectionType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ConnectionType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a connection is in its lifecycle.
///
/// Deliberately exhaustive, unlike the crate's other public enums: whoever hands out
/// credentials must decide for every status, and a wildcard arm would let a new one
/// through unexamined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// An OAuth connection that has never been authorized.
    Incomplete,
    /// Usable: credentials can be handed out.
    Active,
    /// An OAuth grant that can no longer be refreshed; re-authorize to recover.
    Expired,
}

impl Status {
    /// The status's name in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Incomplete => "incomplete",
            Status::Active => "active",
            Status::Expired => "expired",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = DomainError;
    /// `inactive` is accepted as the product docs' word for `expired`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "incomplete" => Ok(Status::Incomplete),
            "active" => Ok(Status::Active),
            "expired" | "inactive" => Ok(Status::Expired),
            other => Err(DomainError::InvalidField {
                field: "status".into(),
                reason: format!(
                    "unknown status {:?}; accepted: incomplete, active, expired (alias inactive)",
                    other.chars().take(32).collect::<String>()
                ),
            }),
        }
    }
}

/// A connection's display name: trimmed, 1 to 200 characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectionName(String);

impl ConnectionName {
    /// The longest name, in characters.
    pub const MAX_CHARS: usize = 200;

    /// Trims `s` and checks it is a valid name.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let t = s.trim();
        let bad = |reason: &str| DomainError::InvalidField {
            field: "name".into(),
            reason: reason.into(),
        };
        if t.is_empty() {
            return Err(bad("must not be empty"));
        }
        if t.chars().count() > Self::MAX_CHARS {
            return Err(bad("must be at most 200 characters"));
        }
        if t.chars().any(char::is_control) {
            return Err(bad("must not contain control characters"));
        }
        Ok(Self(t.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ConnectionName {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ConnectionName> for String {
    fn from(n: ConnectionName) -> String {
        n.0
    }
}

impl fmt::Display for ConnectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The OAuth grant currently held by a connection. Tokens are sealed; the rest is
/// metadata the management API may show.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    /// The sealed access token.
    pub access_token: Sealed,
    /// Absent when the provider issued none; then the grant dies with its access token.
    pub refresh_token: Option<Sealed>,
    /// The token type the provider gave (`Bearer`).
    pub token_type: String,
    /// The scopes the provider granted.
    pub scopes: Vec<String>,
    /// When the token request that produced the current access token was sent.
    pub obtained_at: DateTime<Utc>,
    /// `None` for tokens that do not expire (Notion, GitHub OAuth apps).
    pub expires_at: Option<DateTime<Utc>>,
}

/// Who holds the refresh of a connection right now. A lease, not a lock: it lapses at
/// `until`, so a crashed worker never blocks a grant for long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Who holds the lease (a worker id plus a random part).
    pub owner: String,
    /// When the lease lapses.
    pub until: DateTime<Utc>,
}

/// When the next refresh is due and how the last attempts went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefreshSchedule {
    /// `None`: nothing to refresh (not OAuth, not active, or a token that never expires).
    pub due_at: Option<DateTime<Utc>>,
    /// Consecutive transient failures, for back-off.
    pub failures: u32,
    /// The refresh lease, while a worker holds it.
    pub lease: Option<Lease>,
}

/// The connection aggregate. Its status and grant change only through the lifecycle
/// methods (see [`lifecycle`]), so that every path that changes them applies the same
/// rules; a store rebuilds a stored connection with [`Connection::restore`].
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    /// The connection's id.
    pub id: ConnectionId,
    /// The project the connection belongs to.
    pub project_id: ProjectId,
    /// Its display name, unique in the project.
    pub name: ConnectionName,
    /// What kind of credential it holds.
    pub kind: ConnectionType,
    status: Status,
    /// The non-secret part of the configuration; shown back by the management API.
    pub config: ConnectionConfig,
    /// The secret part (api key, password, secret custom fields, an inline OAuth client
    /// secret), sealed as one JSON object.
    pub secrets: Option<Sealed>,
    /// The registered OAuth client it runs on, if any.
    pub oauth2_client_id: Option<OAuthClientId>,
    grant: Option<Grant>,
    /// The user who authorized the grant, as the provider's userinfo endpoint told it.
    pub authorized_user: Option<serde_json::Value>,
    /// When the next refresh is due, failures so far, and the lease.
    pub refresh: RefreshSchedule,
    /// The last problem seen (a provider error on callback, a refresh failure).
    pub last_error: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When its credentials were last handed out.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Bumped on every write; writes compare-and-set on it.
    pub version: i64,
}

/// Every field of a stored connection, as a store reads it back: the input of
/// [`Connection::restore`] and the output of [`Connection::into_parts`].
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionParts {
    /// See [`Connection`].
    pub id: ConnectionId,
    /// See [`Connection`].
    pub project_id: ProjectId,
    /// See [`Connection`].
    pub name: ConnectionName,
    /// See [`Connection`].
    pub kind: ConnectionType,
    /// Where the connection is in its lifecycle.
    pub status: Status,
    /// See [`Connection`].
    pub config: ConnectionConfig,
    /// See [`Connection`].
    pub secrets: Option<Sealed>,
    /// See [`Connection`].
    pub oauth2_client_id: Option<OAuthClientId>,
    /// The OAuth grant held, if any.
    pub grant: Option<Grant>,
    /// See [`Connection`].
    pub authorized_user: Option<serde_json::Value>,
    /// See [`Connection`].
    pub refresh: RefreshSchedule,
    /// See [`Connection`].
    pub last_error: Option<String>,
    /// See [`Connection`].
    pub created_at: DateTime<Utc>,
    /// See [`Connection`].
    pub updated_at: DateTime<Utc>,
    /// See [`Connection`].
    pub last_used_at: Option<DateTime<Utc>>,
    /// See [`Connection`].
    pub version: i64,
}

/// What a new connection is made of; the rest follows from the rules.
#[derive(Clone, Debug, PartialEq)]
pub struct NewConnection {
    /// The new connection's id.
    pub id: ConnectionId,
    /// The project it belongs to.
    pub project_id: ProjectId,
    /// Its display name.
    pub name: ConnectionName,
    /// What kind of credential it holds.
    pub kind: ConnectionType,
    /// Its validated, non-secret configuration.
    pub config: ConnectionConfig,
    /// Its secrets, already sealed.
    pub secrets: Option<Sealed>,
    /// The registered OAuth client it runs on, if any.
    pub oauth2_client_id: Option<OAuthClientId>,
}

impl Connection {
    /// A new connection in the initial status of its type, at version 1, without a grant.
    pub fn new(n: NewConnection, now: DateTime<Utc>) -> Self {
        Self {
            id: n.id,
            project_id: n.project_id,
            name: n.name,
            kind: n.kind,
            status: initial_status(n.kind),
            config: n.config,
            secrets: n.secrets,
            oauth2_client_id: n.oauth2_client_id,
            grant: None,
            authorized_user: None,
            refresh: RefreshSchedule::default(),
            last_error: None,
            created_at: now,
            updated_at: now,
            last_used_at: None,
            version: 1,
        }
    }

    /// Rebuilds a connection as it was stored. For stores: the parts are trusted to be
    /// what the lifecycle methods once produced.
    pub fn restore(p: ConnectionParts) -> Self {
        Self {
            id: p.id,
            project_id: p.project_id,
            name: p.name,
            kind: p.kind,
            status: p.status,
            config: p.config,
            secrets: p.secrets,
            oauth2_client_id: p.oauth2_client_id,
            grant: p.grant,
            authorized_user: p.authorized_user,
            refresh: p.refresh,
            last_error: p.last_error,
            created_at: p.created_at,
            updated_at: p.updated_at,
            last_used_at: p.last_used_at,
            version: p.version,
        }
    }

    /// Every field, for a store to write or a test to rebuild a variant with
    /// [`Connection::restore`].
    pub fn into_parts(self) -> ConnectionParts {
        ConnectionParts {
            id: self.id,
            project_id: self.project_id,
            name: self.name,
            kind: self.kind,
            status: self.status,
            config: self.config,
            secrets: self.secrets,
            oauth2_client_id: self.oauth2_client_id,
            grant: self.grant,
            authorized_user: self.authorized_user,
            refresh: self.refresh,
            last_error: self.last_error,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_used_at: self.last_used_at,
            version: self.version,
        }
    }

    /// Where the connection is in its lifecycle.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The OAuth grant held, if any.
    pub fn grant(&self) -> Option<&Grant> {
        self.grant.as_ref()
    }

    /// Whether two reads of a connection hold the same grant. Sealed values never repeat
    /// (each seal has its own nonce), so comparing the sealed access tokens tells a grant
    /// from any later one.
    pub fn holds_same_grant(&self, other: &Connection) -> bool {
        self.grant.as_ref().map(|g| &g.access_token)
            == other.grant.as_ref().map(|g| &g.access_token)
    }

    /// Applies a lifecycle event, returning the status change if there was one.
    pub fn apply(
        &mut self,
        event: LifecycleEvent,
        now: DateTime<Utc>,
    ) -> Result<Option<(Status, Status)>, DomainError> {
        let to = transition(self.kind, self.status, event)?;
        let from = self.status;
        self.status = to;
        self.updated_at = now;
        Ok((from != to).then_some((from, to)))
    }

    /// Renaming is always allowed, whatever the status.
    pub fn rename(&mut self, name: ConnectionName, now: DateTime<Utc>) {
        self.name = name;
        self.updated_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_and_aliases() {
        for t in ConnectionType::ALL {
            assert_eq!(t.as_str().parse::<ConnectionType>().unwrap(), t);
        }
        for (alias, ours) in [
            ("dynamiq.connections.GoogleOAuth2", "google"),
            ("dynamiq.connections.MicrosoftOAuth2", "microsoft"),
            ("dynamiq.connections.DropboxOAuth2", "dropbox"),
            ("dynamiq.connections.BoxOAuth2", "box"),
            ("dynamiq.connections.NotionOAuth2", "notion"),
            ("dynamiq.connections.GitHubOAuth2", "github"),
            ("dynamiq.connections.OAuth2", "oauth2"),
        ] {
            assert_eq!(alias.parse::<ConnectionType>().unwrap().as_str(), ours);
        }
        let err = "ftp".parse::<ConnectionType>().unwrap_err().to_string();
        assert!(err.contains("api_key, basic, custom, google"), "{err}");
    }

    #[test]
    fn status_parse_accepts_inactive_alias() {
        assert_eq!("inactive".parse::<Status>().unwrap(), Status::Expired);
        assert!("paused".parse::<Status>().is_err());
    }

    #[test]
    fn names_are_trimmed_and_validated() {
        for (input, ok) in [
            ("Gmail - Support", true),
            ("  padded  ", true),
            ("", false),
            ("   ", false),
            ("tab\there", false),
            (&"n".repeat(200), true),
            (&"n".repeat(201), false),
        ] {
            assert_eq!(ConnectionName::parse(input).is_ok(), ok, "{input:?}");
        }
        assert_eq!(ConnectionName::parse("  x ").unwrap().as_str(), "x");
    }
}
