//! The other records Latchkey keeps: status events, usages, pending authorizations,
//! reusable OAuth clients and access keys.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::OAuthSettings;
use crate::connection::{ConnectionName, ConnectionType, Status};
use crate::ids::{AccessKeyId, ConnectionId, EventId, FlowId, OAuthClientId, ProjectId};
use crate::sealed::Sealed;
use crate::DomainError;

/// A status change, kept so a user can see why a connection expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionEvent {
    /// The event's id.
    pub id: EventId,
    /// The connection it happened to.
    pub connection_id: ConnectionId,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// `None` for creation.
    pub from: Option<Status>,
    /// The status after it.
    pub to: Status,
    /// What happened: `created`, `authorized`, `refresh_rejected`, `lapsed`, ...
    pub kind: String,
    /// Human-readable reason, never containing a secret.
    pub reason: Option<String>,
}

/// Where a page of a connection's events ends: the time and insertion order of its last
/// event. Events are listed oldest first by (`at`, `seq`), so a cursor stays valid when
/// newer events arrive or older ones are purged. Shown to clients as an opaque string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor {
    /// The event's time, in unix milliseconds (the store's precision).
    pub at_ms: i64,
    /// The store's insertion sequence number of the event.
    pub seq: i64,
}

impl fmt::Display for EventCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.at_ms, self.seq)
    }
}

impl FromStr for EventCursor {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            DomainError::field(
                "cursor",
                "not a cursor of this listing; pass page.next_cursor of the previous page as it is",
            )
        };
        let (at, seq) = s.split_once('.').ok_or_else(bad)?;
        let number = |x: &str| -> Result<i64, DomainError> {
            if x.is_empty() || x.len() > 19 || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            x.parse().map_err(|_| bad())
        };
        Ok(EventCursor {
            at_ms: number(at)?,
            seq: number(seq)?,
        })
    }
}

/// The claims of a provider's userinfo answer that are kept on a connection: a few
/// identifying strings, so a user can tell which account authorized it.
pub const AUTHORIZED_USER_CLAIMS: [&str; 6] =
    ["sub", "id", "email", "name", "preferred_username", "login"];
/// Longest kept claim value, in characters.
pub const AUTHORIZED_USER_MAX_CLAIM: usize = 256;
/// Largest kept userinfo object, in bytes of its JSON.
pub const AUTHORIZED_USER_MAX_BYTES: usize = 1024;

/// Caps and sanitises a userinfo answer before it is stored: only the whitelisted
/// claims, only strings (an integer `sub` or `id`, as GitHub sends, becomes its decimal
/// string), control characters removed, each value truncated, and the whole object kept
/// under [`AUTHORIZED_USER_MAX_BYTES`] (claims are dropped in whitelist order once it
/// would not fit). `None` when nothing is left.
pub fn sanitize_authorized_user(userinfo: &serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    let obj = userinfo.as_object()?;
    let mut kept = serde_json::Map::new();
    let mut size: usize = 2; // the braces
    for claim in AUTHORIZED_USER_CLAIMS {
        let raw = match obj.get(claim) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n))
                if matches!(claim, "sub" | "id") && (n.is_i64() || n.is_u64()) =>
            {
                n.to_string()
            }
            _ => continue,
        };
        let value: String = raw
            .chars()
            .filter(|c| !c.is_control())
            .take(AUTHORIZED_USER_MAX_CLAIM)
            .collect();
        let value = value.trim().to_owned();
        if value.is_empty() {
            continue;
        }
        let entry = serde_json::to_string(&value)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        let added = claim.len() + 3 + entry + usize::from(!kept.is_empty());
        if size.saturating_add(added) > AUTHORIZED_USER_MAX_BYTES {
            continue;
        }
        size += added;
        kept.insert(claim.to_owned(), Value::String(value));
    }
    (!kept.is_empty()).then_some(Value::Object(kept))
}

/// One flow's use of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    /// The connection used.
    pub connection_id: ConnectionId,
    /// The flow that used it.
    pub flow_id: FlowId,
    /// When the flow first used it.
    pub first_used_at: DateTime<Utc>,
    /// When the flow last used it.
    pub last_used_at: DateTime<Utc>,
    /// How many times the flow used it.
    pub count: i64,
}

/// A consent flow in progress, looked up by the hash of its `state`. Single use.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthSession {
    /// The hex SHA-256 of the state: what the callback looks the session up by.
    pub state_hash: String,
    /// The connection being authorized.
    pub connection_id: ConnectionId,
    /// Its project.
    pub project_id: ProjectId,
    /// The PKCE verifier, sealed; `None` when PKCE is off.
    pub pkce_verifier: Option<Sealed>,
    /// The code is exchanged only here: the endpoint chosen when the URL was made.
    pub token_endpoint: String,
    /// Where the provider sends the user back.
    pub redirect_uri: String,
    /// The issuer to check an `iss` parameter against (RFC 9207).
    pub issuer: Option<String>,
    /// Whether the callback must carry an `iss` (RFC 9207).
    pub require_iss: bool,
    /// The connection version when the URL was made, for diagnostics.
    pub created_at: DateTime<Utc>,
    /// When the session lapses unused.
    pub expires_at: DateTime<Utc>,
}

/// A reusable OAuth client registration (an "app" at a provider).
#[derive(Clone, Debug, PartialEq)]
pub struct OAuthClient {
    /// The client's id.
    pub id: OAuthClientId,
    /// Its display name.
    pub name: ConnectionName,
    /// `None`: usable by every project (admin only).
    pub project_id: Option<ProjectId>,
    /// A provider type or `oauth2`.
    pub kind: ConnectionType,
    /// Non-secret settings (`client_id`, endpoints).
    pub config: OAuthSettings,
    /// The client secret, sealed.
    pub client_secret: Option<Sealed>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

/// What an access key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Scope {
    /// Read connections and their history.
    ConnectionsRead,
    /// Create, change and delete connections.
    ConnectionsWrite,
    /// Fetch the usable credentials of connections.
    CredentialsRead,
    /// Read `GET /metrics` (and nothing else): for a Prometheus scraper.
    MetricsRead,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 4] = [
        Scope::ConnectionsRead,
        Scope::ConnectionsWrite,
        Scope::CredentialsRead,
        Scope::MetricsRead,
    ];

    /// The scope's name (`connections:read`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::ConnectionsRead => "connections:read",
            Scope::ConnectionsWrite => "connections:write",
            Scope::CredentialsRead => "credentials:read",
            Scope::MetricsRead => "metrics:read",
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
                "unknown scope {:?}; accepted: connections:read, connections:write, credentials:read, metrics:read",
                crate::error::echoed(s)
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
    /// The key's id (the public half of the key).
    pub id: AccessKeyId,
    /// The project it is limited to; `None` for an admin key.
    pub project_id: ProjectId,
    /// Its display name.
    pub name: ConnectionName,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Hex SHA-256 of the secret half.
    pub secret_hash: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_cursors_round_trip_and_refuse_garbage() {
        let c = EventCursor {
            at_ms: 1_700_000_000_123,
            seq: 42,
        };
        assert_eq!(c.to_string(), "1700000000123.42");
        assert_eq!("1700000000123.42".parse::<EventCursor>(), Ok(c));
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "1",
            "1.2.3",
            "-1.2",
            "1.-2",
            "a.b",
            "1 .2",
            "+1.2",
            "99999999999999999999.1",
            "1.2x",
        ] {
            let err = bad.parse::<EventCursor>().unwrap_err();
            assert!(
                matches!(&err, DomainError::InvalidField { field, .. } if field == "cursor"),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn authorized_user_keeps_only_short_whitelisted_strings() {
        // (userinfo, what is stored)
        let long = "x".repeat(5000);
        let cases = [
            (
                json!({"sub": "42", "email": "ada@example.com"}),
                Some(json!({"sub": "42", "email": "ada@example.com"})),
            ),
            // GitHub: a numeric id and a login; everything else dropped.
            (
                json!({"id": 583231, "login": "octocat", "avatar_url": "https://x", "plan": {"name": "pro"}}),
                Some(json!({"id": "583231", "login": "octocat"})),
            ),
            // Non-string claims, nested objects and unknown claims are not kept.
            (
                json!({"email": {"a": 1}, "name": ["x"], "sub": true, "address": "street", "groups": ["admins"]}),
                None,
            ),
            // Control characters removed, values trimmed and truncated.
            (
                json!({"name": " Ada\u{0}\n\u{1b}[31mLovelace ", "email": long}),
                Some(
                    json!({"name": "Ada[31mLovelace", "email": "x".repeat(AUTHORIZED_USER_MAX_CLAIM)}),
                ),
            ),
            (json!("a string"), None),
            (json!(null), None),
            (json!({"sub": "   "}), None),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize_authorized_user(&input), want, "{input}");
        }
    }

    #[test]
    fn authorized_user_stays_under_the_size_cap() {
        let long = |c: char| c.to_string().repeat(AUTHORIZED_USER_MAX_CLAIM);
        // Multi-byte characters: 256 of them are up to 1 KiB of UTF-8 each.
        let input = json!({
            "sub": long('s'), "id": long('i'), "email": long('e'), "name": long('\u{1F600}'),
            "preferred_username": long('p'), "login": long('l'),
            "huge": "y".repeat(1 << 20),
        });
        let kept = sanitize_authorized_user(&input).unwrap();
        let size = serde_json::to_string(&kept).unwrap().len();
        assert!(size <= AUTHORIZED_USER_MAX_BYTES, "{size}: {kept}");
        assert_eq!(kept["sub"], json!(long('s')));
        assert!(kept.get("huge").is_none());
    }
}
