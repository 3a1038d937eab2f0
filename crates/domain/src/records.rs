//! The other records Latchkey keeps: status events, usages, pending authorizations,
//! reusable OAuth clients and access keys.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::connection::{ConnectionName, ConnectionType, Status};
use crate::ids::{AccessKeyId, ConnectionId, EventId, FlowId, OAuthClientId, ProjectId};
use crate::sealed::Sealed;
use crate::DomainError;

/// A status change, kept so a user can see why a connection expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionEvent {
    pub id: EventId,
    pub connection_id: ConnectionId,
    pub at: DateTime<Utc>,
    /// `None` for creation.
    pub from: Option<Status>,
    pub to: Status,
    /// What happened: `created`, `authorized`, `refresh_rejected`, `lapsed`, ...
    pub kind: String,
    /// Human-readable reason, never containing a secret.
    pub reason: Option<String>,
}

/// One flow's use of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub connection_id: ConnectionId,
    pub flow_id: FlowId,
    pub first_used_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub count: i64,
}

/// A consent flow in progress, looked up by the hash of its `state`. Single use.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthSession {
    pub state_hash: String,
    pub connection_id: ConnectionId,
    pub project_id: ProjectId,
    /// The PKCE verifier, sealed; `None` when PKCE is off.
    pub pkce_verifier: Option<Sealed>,
    /// The code is exchanged only here: the endpoint chosen when the URL was made.
    pub token_endpoint: String,
    pub redirect_uri: String,
    /// The issuer to check an `iss` parameter against (RFC 9207).
    pub issuer: Option<String>,
    pub require_iss: bool,
    /// The connection version when the URL was made, for diagnostics.
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A reusable OAuth client registration (an "app" at a provider).
#[derive(Clone, Debug, PartialEq)]
pub struct OAuthClient {
    pub id: OAuthClientId,
    pub name: ConnectionName,
    /// `None`: usable by every project (admin only).
    pub project_id: Option<ProjectId>,
    /// A provider type or `oauth2`.
    pub kind: ConnectionType,
    /// Non-secret settings (`client_id`, endpoints), as [`crate::config::OAuthSettings`] JSON.
    pub config: serde_json::Value,
    pub client_secret: Option<Sealed>,
    pub created_at: DateTime<Utc>,
}

/// What an access key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    ConnectionsRead,
    ConnectionsWrite,
    CredentialsRead,
}

impl Scope {
    pub const ALL: [Scope; 3] = [
        Scope::ConnectionsRead,
        Scope::ConnectionsWrite,
        Scope::CredentialsRead,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::ConnectionsRead => "connections:read",
            Scope::ConnectionsWrite => "connections:write",
            Scope::CredentialsRead => "credentials:read",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| DomainError::InvalidField {
            field: "scopes".into(),
            reason: format!(
                "unknown scope {:?}; accepted: connections:read, connections:write, credentials:read",
                s.chars().take(64).collect::<String>()
            ),
        })
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A project-scoped API key. Only the SHA-256 of its secret half is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessKey {
    pub id: AccessKeyId,
    pub project_id: ProjectId,
    pub name: ConnectionName,
    pub scopes: Vec<Scope>,
    /// Hex SHA-256 of the secret half.
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
}
