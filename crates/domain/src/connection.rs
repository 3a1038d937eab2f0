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

/// What kind of credential a connection holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionType {
    ApiKey,
    Basic,
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

    pub fn as_str(&self) -> &'static str {
        match self {
            ConnectionType::ApiKey => "api_key",
            ConnectionType::Basic => "basic",
            ConnectionType::Custom => "custom",
            ConnectionType::OAuth(p) => p.as_str(),
        }
    }

    pub fn is_oauth(&self) -> bool {
        matches!(self, ConnectionType::OAuth(_))
    }

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
                        given: other.chars().take(64).collect(),
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

/// Something that happens to a connection and may change its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// The consent flow completed and a new grant was stored.
    Authorized,
    /// The provider issued fresh tokens for the current grant.
    Refreshed,
    /// The provider refused the refresh token (`invalid_grant`): the grant is dead.
    RefreshRejected,
    /// The access token passed its expiry and could not be refreshed.
    Lapsed,
    /// The secret fields of a non-OAuth connection were replaced.
    SecretReplaced,
}

impl LifecycleEvent {
    pub fn as_str(&self) -> &'static str {
        match self {
            LifecycleEvent::Authorized => "authorized",
            LifecycleEvent::Refreshed => "refreshed",
            LifecycleEvent::RefreshRejected => "refresh_rejected",
            LifecycleEvent::Lapsed => "lapsed",
            LifecycleEvent::SecretReplaced => "secret_replaced",
        }
    }
}

/// The state machine: the status after `event`, or why the event is illegal.
pub fn transition(
    kind: ConnectionType,
    from: Status,
    event: LifecycleEvent,
) -> Result<Status, DomainError> {
    use LifecycleEvent as E;
    use Status as S;
    let illegal = || DomainError::IllegalTransition {
        from,
        event: event.as_str(),
        kind: kind.as_str(),
    };
    match (kind.is_oauth(), from, event) {
        (true, _, E::Authorized) => Ok(S::Active),
        (true, S::Active, E::Refreshed) => Ok(S::Active),
        (true, S::Active, E::RefreshRejected | E::Lapsed) => Ok(S::Expired),
        (false, S::Active, E::SecretReplaced) => Ok(S::Active),
        _ => Err(illegal()),
    }
}

/// The status a new connection of `kind` starts in.
pub fn initial_status(kind: ConnectionType) -> Status {
    if kind.is_oauth() {
        Status::Incomplete
    } else {
        Status::Active
    }
}

/// A connection's display name: trimmed, 1 to 200 characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectionName(String);

impl ConnectionName {
    pub const MAX_CHARS: usize = 200;

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
    pub access_token: Sealed,
    /// Absent when the provider issued none; then the grant dies with its access token.
    pub refresh_token: Option<Sealed>,
    pub token_type: String,
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
    pub owner: String,
    pub until: DateTime<Utc>,
}

/// When the next refresh is due and how the last attempts went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefreshSchedule {
    /// `None`: nothing to refresh (not OAuth, not active, or a token that never expires).
    pub due_at: Option<DateTime<Utc>>,
    /// Consecutive transient failures, for back-off.
    pub failures: u32,
    pub lease: Option<Lease>,
}

/// The connection aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    pub id: ConnectionId,
    pub project_id: ProjectId,
    pub name: ConnectionName,
    pub kind: ConnectionType,
    pub status: Status,
    /// The non-secret part of the configuration; shown back by the management API.
    pub config: ConnectionConfig,
    /// The secret part (api key, password, secret custom fields, an inline OAuth client
    /// secret), sealed as one JSON object.
    pub secrets: Option<Sealed>,
    pub oauth2_client_id: Option<OAuthClientId>,
    pub grant: Option<Grant>,
    /// The user who authorized the grant, as the provider's userinfo endpoint told it.
    pub authorized_user: Option<serde_json::Value>,
    pub refresh: RefreshSchedule,
    /// The last problem seen (a provider error on callback, a refresh failure).
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Bumped on every write; writes compare-and-set on it.
    pub version: i64,
}

impl Connection {
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
    use LifecycleEvent as E;
    use Status as S;

    #[test]
    fn transition_table() {
        let oauth = ConnectionType::OAuth(Provider::Google);
        let key = ConnectionType::ApiKey;
        let table: &[(ConnectionType, Status, LifecycleEvent, Option<Status>)] = &[
            (oauth, S::Incomplete, E::Authorized, Some(S::Active)),
            (oauth, S::Active, E::Authorized, Some(S::Active)),
            (oauth, S::Expired, E::Authorized, Some(S::Active)),
            (oauth, S::Active, E::Refreshed, Some(S::Active)),
            (oauth, S::Incomplete, E::Refreshed, None),
            (oauth, S::Expired, E::Refreshed, None),
            (oauth, S::Active, E::RefreshRejected, Some(S::Expired)),
            (oauth, S::Active, E::Lapsed, Some(S::Expired)),
            (oauth, S::Incomplete, E::Lapsed, None),
            (oauth, S::Expired, E::Lapsed, None),
            (oauth, S::Expired, E::RefreshRejected, None),
            (oauth, S::Active, E::SecretReplaced, None),
            (key, S::Active, E::SecretReplaced, Some(S::Active)),
            (key, S::Active, E::Authorized, None),
            (key, S::Active, E::Refreshed, None),
            (key, S::Active, E::Lapsed, None),
            (ConnectionType::Basic, S::Active, E::RefreshRejected, None),
        ];
        for &(kind, from, event, want) in table {
            let got = transition(kind, from, event).ok();
            assert_eq!(got, want, "{kind} {from} --{event:?}-->");
        }
    }

    #[test]
    fn illegal_transition_error_names_everything() {
        let err = transition(ConnectionType::Custom, S::Active, E::Refreshed).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a custom connection in status active cannot be refreshed"
        );
    }

    #[test]
    fn initial_status_depends_on_type() {
        for t in ConnectionType::ALL {
            let want = if t.is_oauth() {
                S::Incomplete
            } else {
                S::Active
            };
            assert_eq!(initial_status(t), want, "{t}");
        }
    }

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
        assert_eq!("inactive".parse::<Status>().unwrap(), S::Expired);
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
