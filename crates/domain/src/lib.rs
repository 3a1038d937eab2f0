//! # latchkey-domain
//!
//! The rules of Latchkey, as pure values: the connection aggregate and its lifecycle,
//! configuration validation per connection type, the OAuth provider catalog, consent
//! URLs with state and PKCE, and the refresh policy. No I/O: time comes in as `now`,
//! randomness as bytes, so another service can embed these rules as they are.
//!
//! ```
//! use chrono::{DateTime, Utc};
//! use latchkey_domain::{initial_status, transition, ConnectionType, LifecycleEvent, Status};
//!
//! let google: ConnectionType = "dynamiq.connections.GoogleOAuth2".parse().unwrap();
//! assert_eq!(google.as_str(), "google");
//!
//! // An OAuth connection starts incomplete and becomes active once authorized...
//! let s = initial_status(google);
//! assert_eq!(s, Status::Incomplete);
//! let s = transition(google, s, LifecycleEvent::Authorized).unwrap();
//! assert_eq!(s, Status::Active);
//! // ...expires when the provider rejects its refresh token...
//! let s = transition(google, s, LifecycleEvent::RefreshRejected).unwrap();
//! assert_eq!(s, Status::Expired);
//! // ...cannot be refreshed while expired...
//! assert!(transition(google, s, LifecycleEvent::Refreshed).is_err());
//! // ...and comes back when authorized again.
//! assert_eq!(transition(google, s, LifecycleEvent::Authorized).unwrap(), Status::Active);
//!
//! // API-key connections are usable from the start.
//! assert_eq!(initial_status("api_key".parse().unwrap()), Status::Active);
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod connection;
mod error;
pub mod hex;
pub mod ids;
pub mod net;
pub mod oauth;
pub mod provider;
pub mod records;
pub mod refresh;
pub mod sealed;

pub use config::{
    parse_config, ConnectionConfig, CustomField, CustomFields, OAuthSettings, ParsedConfig,
    SecretFields, UrlPolicy,
};
pub use connection::{
    initial_status, transition, Connection, ConnectionName, ConnectionParts, ConnectionType,
    ExpiryReason, Grant, IssuedTokens, Lease, LifecycleEvent, NewConnection, RefreshSchedule,
    Status,
};
pub use error::DomainError;
pub use ids::{AccessKeyId, ConnectionId, EventId, FlowId, OAuthClientId, ProjectId};
pub use net::{AddressClass, AddressRules, IpNet};
pub use provider::{Provider, ProviderSpec, TokenAuthMethod};
pub use records::{
    sanitize_authorized_user, AccessKey, AuthSession, ConnectionEvent, EventCursor, OAuthClient,
    Scope, Usage,
};
pub use refresh::{RefreshFailure, RefreshPolicy};
pub use sealed::{SealContext, Sealed};

/// Hex SHA-256 of an access key's secret half: what the store keeps instead of the key.
pub fn hash_key_secret(secret: &str) -> String {
    oauth::State::hash(secret)
}
