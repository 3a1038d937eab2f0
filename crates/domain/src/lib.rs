#![doc = include_str!("../README.md")]
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
