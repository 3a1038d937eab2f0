use crate::connection::Status;

/// Why a domain rule refused something. Every variant is the caller's fault (bad input
/// or an illegal step), so adapters map them to 4xx answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("invalid {what}: {value:?}")]
    InvalidId { what: &'static str, value: String },
    #[error("unknown connection type {given:?}; accepted types: {accepted}")]
    UnknownType { given: String, accepted: String },
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
    /// Each field may be valid, but the configuration may not set it: a connection that
    /// runs on a client registration (a registered client, the deployment's app, a
    /// catalog provider) cannot choose where that registration's secret or codes go.
    #[error("{field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    /// A URL names an address the outbound policy refuses (loopback, private, ...).
    #[error("{field}: {reason}")]
    AddressNotAllowed { field: String, reason: String },
    #[error("a {kind} connection in status {from} cannot be {}", past_tense(event))]
    IllegalTransition {
        kind: &'static str,
        from: Status,
        event: &'static str,
    },
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
