//! The OAuth 2.0 provider client: token, refresh, revocation, userinfo, discovery.

use async_trait::async_trait;
use chrono::Duration;
use secrecy::SecretString;

use latchkey_domain::oauth::{ClientCredentials, DiscoveredMetadata, TokenResponse};

#[cfg(feature = "mocks")]
use mockall::automock;

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
