//! `AppError`, the one error type of the use cases: a domain refusal, a missing or
//! forbidden record, a lost race, or a failure of a port, each kept apart so that the API
//! can map it to its own status and code.

use latchkey_domain::DomainError;
use latchkey_ports::{CipherError, OAuthError, StoreError};

/// Why a use case failed. The API maps each variant to a status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad input or an illegal step, per the domain rules.
    #[error(transparent)]
    Invalid(#[from] DomainError),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller's key lacks a scope, or the action is admin-only.
    #[error("{0}")]
    Forbidden(String),
    /// The record changed since the caller read it. `current` is the version now stored,
    /// when the use case read it; a compare-and-set refused by the store does not say.
    #[error(
        "the connection was changed concurrently{}; re-read it and retry",
        current.map(|v| format!(" (version {v} is current)")).unwrap_or_default()
    )]
    VersionConflict { current: Option<i64> },
    #[error("a {0} with this name already exists in the project")]
    NameTaken(&'static str),
    #[error("{0}")]
    InUse(String),
    /// A quota is used up (the connections of a project).
    #[error("{0}")]
    LimitReached(String),
    /// The action does not fit the connection's type or status.
    #[error("{message}")]
    State { code: StateCode, message: String },
    /// The access token lapsed and the provider has not let it be refreshed yet (network
    /// errors, 5xx, 429): the grant lives on and recovers by itself. Retry after
    /// `retry_after_secs`.
    #[error("{message}")]
    ProviderUnavailable {
        message: String,
        retry_after_secs: u64,
    },
    /// The provider failed or refused; the message is safe to show.
    #[error("{0}")]
    Provider(#[from] OAuthError),
    /// Something on our side failed (database, cipher). Logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a connection cannot serve an action in its present type or status
/// ([`AppError::State`]); the API answers each with its own stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateCode {
    /// An OAuth connection not authorized yet.
    ConnectionIncomplete,
    /// A connection whose grant is dead: authorize it again.
    ConnectionExpired,
    /// An OAuth action on a connection of another type.
    NotOAuth,
    /// The connection's registered OAuth client was deleted.
    OAuthClientMissing,
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => AppError::NotFound("record"),
            StoreError::Duplicate(key) => AppError::NameTaken(key.as_str()),
            StoreError::InUse { references } => AppError::InUse(format!(
                "the record is used by {references} other record(s)"
            )),
            StoreError::LimitReached { limit } => AppError::LimitReached(format!(
                "the project already has {limit} connections, the most it may have; delete one first"
            )),
            StoreError::Conflict => AppError::VersionConflict { current: None },
            StoreError::Backend(m) => AppError::Internal(format!("store: {m}")),
        }
    }
}

impl From<CipherError> for AppError {
    fn from(e: CipherError) -> Self {
        AppError::Internal(format!("cipher: {e}"))
    }
}

/// What a connection shows for a failure on our side.
pub const INTERNAL_ERROR_MESSAGE: &str = "an internal error occurred; see the server log";

impl AppError {
    /// A message fit to store on a connection (`last_error`, event reasons), which any
    /// key holder of the project can read: the error's own text when it is the caller's
    /// or the provider's business; one fixed sentence for failures on our side (database,
    /// cipher), whose details stay in the server log.
    pub fn public_message(&self) -> String {
        match self {
            AppError::Internal(_) => INTERNAL_ERROR_MESSAGE.into(),
            AppError::VersionConflict { .. } => "the connection was changed concurrently".into(),
            other => other.to_string(),
        }
    }
}

/// Why an OAuth callback was refused. Shown on the callback page.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error(
        "the authorization link is unknown or was already used; start the authorization again"
    )]
    UnknownState,
    #[error("the authorization link expired; start the authorization again")]
    ExpiredState,
    #[error("the callback is missing the {0} parameter")]
    MissingParameter(&'static str),
    #[error("the callback came from an unexpected issuer; the authorization was refused")]
    IssuerMismatch,
    #[error("the connection no longer exists")]
    ConnectionGone,
    #[error("the provider refused the authorization: {0}")]
    Denied(String),
    #[error("the provider did not issue tokens: {0}")]
    Exchange(OAuthError),
    #[error("internal error")]
    Internal(String),
}

impl From<AppError> for CallbackError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::NotFound(_) => CallbackError::ConnectionGone,
            AppError::Provider(p) => CallbackError::Exchange(p),
            other => CallbackError::Internal(other.to_string()),
        }
    }
}
