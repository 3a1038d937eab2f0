//! The JSON error of the API: `{"error": {"code": "...", "message": "...", "field": "..."}}`,
//! and how each use-case error maps to a status and an [`ErrorCode`].

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use latchkey_app::{AppError, StateCode};
use latchkey_domain::DomainError;
use latchkey_ports::OAuthError;

pub use super::code::ErrorCode;

/// An API error: a status, a stable code, and a message safe to show.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// The request field the error is about (`name`, `config.api_key`, ...), so that a
    /// form can show the message next to that field.
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (503 `provider_unavailable`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("{what} not found"),
        )
    }

    /// 500 `internal_error`: the details are logged by the caller, never shown.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalError,
            "internal error; see the server log",
        )
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let Some(secs) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        res.insert_header((header::CACHE_CONTROL, "no-store"));
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(field) = &self.field {
            error["field"] = json!(field);
        }
        res.json(json!({ "error": error }))
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        use ErrorCode as C;
        use StatusCode as S;
        match e {
            AppError::Invalid(d) => {
                let (status, code) = match &d {
                    DomainError::ConfigLocked => (S::CONFLICT, C::ConfigLocked),
                    DomainError::IllegalTransition { .. } => (S::CONFLICT, C::IllegalTransition),
                    DomainError::UnknownType { .. } => (S::BAD_REQUEST, C::UnknownType),
                    DomainError::InvalidId { .. } => (S::BAD_REQUEST, C::InvalidId),
                    DomainError::InvalidField { .. } => (S::BAD_REQUEST, C::InvalidField),
                    DomainError::InvalidConfig { .. } => (S::BAD_REQUEST, C::InvalidConfig),
                    DomainError::AddressNotAllowed { .. } => (S::BAD_REQUEST, C::AddressNotAllowed),
                };
                let field = match &d {
                    DomainError::InvalidField { field, .. }
                    | DomainError::InvalidConfig { field, .. }
                    | DomainError::AddressNotAllowed { field, .. } => Some(field.clone()),
                    _ => None,
                };
                ApiError {
                    field,
                    ..ApiError::new(status, code, d.to_string())
                }
            }
            AppError::NotFound(what) => ApiError::not_found(what),
            AppError::Forbidden(m) => ApiError::new(S::FORBIDDEN, C::Forbidden, m),
            e @ AppError::VersionConflict { .. } => {
                ApiError::new(S::CONFLICT, C::VersionConflict, e.to_string())
            }
            e @ AppError::NameTaken(_) => {
                ApiError::new(S::CONFLICT, C::NameTaken, e.to_string()).with_field("name")
            }
            AppError::InUse(m) => ApiError::new(S::CONFLICT, C::InUse, m),
            AppError::LimitReached(m) => ApiError::new(S::CONFLICT, C::LimitReached, m),
            AppError::State { code, message } => {
                let code = match code {
                    StateCode::ConnectionIncomplete => C::ConnectionIncomplete,
                    StateCode::ConnectionExpired => C::ConnectionExpired,
                    StateCode::NotOAuth => C::NotOAuth,
                    StateCode::OAuthClientMissing => C::OAuth2ClientMissing,
                };
                ApiError::new(S::CONFLICT, code, message)
            }
            // Found only when connecting (a name resolving inside, a discovered endpoint):
            // the provider's setup is at fault, not the request.
            AppError::Provider(p @ OAuthError::AddressNotAllowed(_)) => {
                ApiError::new(S::BAD_GATEWAY, C::AddressNotAllowed, p.to_string())
            }
            AppError::Provider(p) => ApiError::new(S::BAD_GATEWAY, C::ProviderError, p.to_string()),
            AppError::ProviderUnavailable {
                message,
                retry_after_secs,
            } => ApiError {
                retry_after: Some(retry_after_secs.max(1)),
                ..ApiError::new(S::SERVICE_UNAVAILABLE, C::ProviderUnavailable, message)
            },
            AppError::Internal(m) => {
                // Details go to the log only; the caller gets a stable, bland answer.
                tracing::error!(error = %m, "internal error");
                ApiError::internal()
            }
        }
    }
}

/// Answers for malformed request bodies, queries and paths, in our error shape.
pub mod extractors {
    use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
    use actix_web::http::StatusCode;
    use actix_web::HttpRequest;

    use super::{ApiError, ErrorCode};

    pub fn json(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
        let e = match &err {
            JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::PayloadTooLarge,
                    "the request body is larger than 64 KiB",
                )
            }
            JsonPayloadError::ContentType => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "send the body as Content-Type: application/json",
            ),
            JsonPayloadError::Deserialize(d) => ApiError::bad_request(
                ErrorCode::InvalidJson,
                format!("the body is not valid JSON for this request: {d}"),
            ),
            other => ApiError::bad_request(
                ErrorCode::InvalidBody,
                format!("could not read the body: {other}"),
            ),
        };
        e.into()
    }

    pub fn query(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
        ApiError::bad_request(
            ErrorCode::InvalidQuery,
            format!("invalid query string: {err}"),
        )
        .into()
    }

    pub fn path(_err: PathError, _req: &HttpRequest) -> actix_web::Error {
        ApiError::not_found("resource").into()
    }
}
