//! `DomainError`, the one error type of the domain: every variant is a refusal of the
//! caller's input or step, worded without any deployment setting.

use crate::connection::Status;
use crate::provider::Provider;

/// Why a domain rule refused something. Every variant is the caller's fault (bad input
/// or an illegal step), so adapters map them to 4xx answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// An id that does not parse.
    #[error("invalid {what}: {value:?}")]
    InvalidId {
        /// What kind of id (`project id`, `connection id`, ...).
        what: &'static str,
        /// The start of what was given.
        value: String,
    },
    /// A connection type name that is not one of ours.
    #[error("unknown connection type {given:?}; accepted types: {accepted}")]
    UnknownType {
        /// The start of what was given.
        given: String,
        /// The accepted names, comma-separated.
        accepted: String,
    },
    /// A field whose value is refused.
    #[error("{field}: {reason}")]
    InvalidField {
        /// The field's path in the request (`name`, `config.api_key`, ...).
        field: String,
        /// Why it is refused.
        reason: String,
    },
    /// Each field may be valid, but the configuration may not set it: a connection that
    /// runs on a client registration (a registered client, the deployment's app, a
    /// catalog provider) cannot choose where that registration's secret or codes go.
    #[error("{field}: {reason}")]
    InvalidConfig {
        /// The field's path in the request.
        field: String,
        /// Why the connection may not set it.
        reason: String,
    },
    /// A URL names an address the outbound policy refuses (loopback, private, ...). The
    /// deployment may open non-public ranges; the embedding service says how.
    #[error("{field}: {reason}")]
    AddressNotAllowed {
        /// The field's path in the request.
        field: String,
        /// Which address it is and why it is refused.
        reason: String,
    },
    /// A URL uses plain http where https is required. The deployment may allow http to
    /// loopback addresses; the embedding service says how.
    #[error("{field}: must use https (plain http is allowed only for loopback addresses, when the deployment allows it)")]
    InsecureUrl {
        /// The field's path in the request.
        field: String,
    },
    /// A catalog connection on the deployment's own app for `provider` sets a redirect
    /// URI: that app's redirect URI is Latchkey's callback.
    #[error("{field}: without a client_id of its own this connection runs on the deployment's {provider} app, whose redirect URI is Latchkey's callback; give oauth2_config.client_id to use your own app")]
    RedirectOnDeploymentApp {
        /// The redirect URI's path in the request.
        field: String,
        /// The catalog provider whose deployment app it would be.
        provider: Provider,
    },
    /// An OAuth connection of `provider` has no client: none registered, none inline, and
    /// the deployment configured no app of its own for the provider.
    #[error("{field}: no OAuth client configured for this {provider} connection: name one with oauth2_client_id, give oauth2_config.client_id, or configure the deployment's {provider} app")]
    NoOAuthClient {
        /// The field that would name a client (`oauth2_config.client_id`).
        field: String,
        /// The connection's provider.
        provider: Provider,
    },
    /// A lifecycle step that the connection's type and status do not allow.
    #[error("a {kind} connection in status {from} cannot be {}", past_tense(event))]
    IllegalTransition {
        /// The connection's type name.
        kind: &'static str,
        /// Its status.
        from: Status,
        /// The step's name.
        event: &'static str,
    },
    /// A change of an OAuth connection's configuration, which is fixed once created.
    #[error("the configuration of an OAuth connection is locked once created; create a new connection or rename this one")]
    ConfigLocked,
}

fn past_tense(event: &str) -> &str {
    match event {
        "authorized" => "authorized",
        "refreshed" => "refreshed",
        "refresh_rejected" => "marked rejected",
        "lapsed" => "lapsed",
        "secret_replaced" => "given new secrets",
        other => other,
    }
}

impl DomainError {
    /// The request field the error is about, when it is about one.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            DomainError::InvalidField { field, .. }
            | DomainError::InvalidConfig { field, .. }
            | DomainError::AddressNotAllowed { field, .. }
            | DomainError::InsecureUrl { field }
            | DomainError::RedirectOnDeploymentApp { field, .. }
            | DomainError::NoOAuthClient { field, .. } => Some(field),
            DomainError::InvalidId { .. }
            | DomainError::UnknownType { .. }
            | DomainError::IllegalTransition { .. }
            | DomainError::ConfigLocked => None,
        }
    }

    /// The same error about `field`, for a caller that took the value from elsewhere in
    /// its request. Errors about no field are returned as they are.
    pub fn with_field(self, field: impl Into<String>) -> Self {
        let field = field.into();
        match self {
            DomainError::InvalidField { reason, .. } => DomainError::InvalidField { field, reason },
            DomainError::InvalidConfig { reason, .. } => {
                DomainError::InvalidConfig { field, reason }
            }
            DomainError::AddressNotAllowed { reason, .. } => {
                DomainError::AddressNotAllowed { field, reason }
            }
            DomainError::InsecureUrl { .. } => DomainError::InsecureUrl { field },
            DomainError::RedirectOnDeploymentApp { provider, .. } => {
                DomainError::RedirectOnDeploymentApp { field, provider }
            }
            DomainError::NoOAuthClient { provider, .. } => {
                DomainError::NoOAuthClient { field, provider }
            }
            other => other,
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DomainError::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DomainError::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// How much of a refused input an error message echoes, in characters.
pub(crate) const MAX_ECHOED_CHARS: usize = 64;

/// Keeps echoed bad input short in error messages.
pub(crate) fn echoed(s: &str) -> String {
    s.chars().take(MAX_ECHOED_CHARS).collect()
}
