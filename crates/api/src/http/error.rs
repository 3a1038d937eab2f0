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

/// The message of a domain refusal, naming the setting of this deployment that would
/// change it: the domain knows no environment variable, the server does.
fn with_deployment_advice(d: &DomainError) -> String {
    match d {
        DomainError::InsecureUrl { field } => format!(
            "{field}: must use https (plain http is allowed only for loopback addresses when LATCHKEY_ALLOW_INSECURE_LOOPBACK=true)"
        ),
        DomainError::AddressNotAllowed { .. } => format!(
            "{d} (an operator can open a range with LATCHKEY_ALLOW_PRIVATE_NETWORKS)"
        ),
        DomainError::RedirectOnDeploymentApp { field, provider } => {
            let up = provider.as_str().to_uppercase();
            format!("{field}: without a client_id of its own this connection runs on the deployment's app (LATCHKEY_OAUTH_{up}_CLIENT_ID), whose redirect URI is Latchkey's callback; give oauth2_config.client_id to use your own app")
        }
        DomainError::NoOAuthClient { field, provider } => {
            let up = provider.as_str().to_uppercase();
            format!("{field}: no OAuth client configured for this {provider} connection: name one with oauth2_client_id, give oauth2_config.client_id, or set LATCHKEY_OAUTH_{up}_CLIENT_ID and LATCHKEY_OAUTH_{up}_CLIENT_SECRET")
        }
        other => other.to_string(),
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
                    DomainError::InvalidConfig { .. }
                    | DomainError::RedirectOnDeploymentApp { .. } => {
                        (S::BAD_REQUEST, C::InvalidConfig)
                    }
                    DomainError::AddressNotAllowed { .. } => (S::BAD_REQUEST, C::AddressNotAllowed),
                    // InvalidField, InsecureUrl, NoOAuthClient, and any later refusal of input.
                    _ => (S::BAD_REQUEST, C::InvalidField),
                };
                ApiError {
                    field: d.field_name().map(str::to_owned),
                    ..ApiError::new(status, code, with_deployment_advice(&d))
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

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_domain::{Provider, Status};

    fn mapped(e: AppError) -> (u16, ErrorCode, Option<String>, String) {
        let a = ApiError::from(e);
        (a.status.as_u16(), a.code, a.field, a.message)
    }

    /// Each use-case error answers with its status, code and (for one field) `field`.
    #[test]
    fn every_app_error_maps_to_its_status_and_code() {
        use ErrorCode as C;
        let field = |f: &str| Some(f.to_owned());
        let cases: Vec<(AppError, u16, ErrorCode, Option<String>)> = vec![
            (
                DomainError::InvalidField {
                    field: "name".into(),
                    reason: "r".into(),
                }
                .into(),
                400,
                C::InvalidField,
                field("name"),
            ),
            (
                DomainError::InvalidConfig {
                    field: "config.oauth2_config.issuer".into(),
                    reason: "r".into(),
                }
                .into(),
                400,
                C::InvalidConfig,
                field("config.oauth2_config.issuer"),
            ),
            (
                DomainError::AddressNotAllowed {
                    field: "config.oauth2_config.token_endpoint".into(),
                    reason: "r".into(),
                }
                .into(),
                400,
                C::AddressNotAllowed,
                field("config.oauth2_config.token_endpoint"),
            ),
            (
                DomainError::InvalidId {
                    what: "project id",
                    value: "x y".into(),
                }
                .into(),
                400,
                C::InvalidId,
                None,
            ),
            (
                DomainError::UnknownType {
                    given: "ftp".into(),
                    accepted: "api_key".into(),
                }
                .into(),
                400,
                C::UnknownType,
                None,
            ),
            (DomainError::ConfigLocked.into(), 409, C::ConfigLocked, None),
            (
                DomainError::IllegalTransition {
                    kind: "api_key",
                    from: Status::Active,
                    event: "refreshed",
                }
                .into(),
                409,
                C::IllegalTransition,
                None,
            ),
            (AppError::NotFound("connection"), 404, C::NotFound, None),
            (AppError::Forbidden("no".into()), 403, C::Forbidden, None),
            (
                AppError::VersionConflict { current: Some(3) },
                409,
                C::VersionConflict,
                None,
            ),
            (
                AppError::NameTaken("connection"),
                409,
                C::NameTaken,
                field("name"),
            ),
            (AppError::InUse("used".into()), 409, C::InUse, None),
            (
                AppError::LimitReached("full".into()),
                409,
                C::LimitReached,
                None,
            ),
            (
                AppError::State {
                    code: StateCode::ConnectionIncomplete,
                    message: "m".into(),
                },
                409,
                C::ConnectionIncomplete,
                None,
            ),
            (
                AppError::State {
                    code: StateCode::ConnectionExpired,
                    message: "m".into(),
                },
                409,
                C::ConnectionExpired,
                None,
            ),
            (
                AppError::State {
                    code: StateCode::NotOAuth,
                    message: "m".into(),
                },
                409,
                C::NotOAuth,
                None,
            ),
            (
                AppError::State {
                    code: StateCode::OAuthClientMissing,
                    message: "m".into(),
                },
                409,
                C::OAuth2ClientMissing,
                None,
            ),
            (
                OAuthError::Protocol("garbage".into()).into(),
                502,
                C::ProviderError,
                None,
            ),
            (
                AppError::ProviderUnavailable {
                    message: "m".into(),
                    retry_after_secs: 0,
                },
                503,
                C::ProviderUnavailable,
                None,
            ),
            (
                AppError::Internal("db: secret detail".into()),
                500,
                C::InternalError,
                None,
            ),
        ];
        for (e, status, code, want_field) in cases {
            let shown = format!("{e:?}");
            let (s, c, f, message) = mapped(e);
            assert_eq!((s, c, f), (status, code, want_field), "{shown}");
            assert!(!message.is_empty(), "{shown}");
            assert!(!message.contains("secret detail"), "{shown}: {message}");
        }
    }

    #[test]
    fn a_version_conflict_names_the_version_only_when_known() {
        let (.., known) = mapped(AppError::VersionConflict { current: Some(7) });
        assert!(known.contains("version 7 is current"), "{known}");
        let (.., unknown) = mapped(AppError::VersionConflict { current: None });
        assert!(!unknown.contains("version"), "{unknown}");
        assert!(unknown.contains("re-read it and retry"), "{unknown}");
        let retry = ApiError::from(AppError::ProviderUnavailable {
            message: "m".into(),
            retry_after_secs: 0,
        });
        assert_eq!(retry.retry_after, Some(1), "Retry-After is at least 1 s");
    }

    fn advised(d: DomainError) -> ApiError {
        ApiError::from(AppError::Invalid(d))
    }

    #[test]
    fn domain_refusals_get_this_deployments_advice() {
        let e = advised(DomainError::InsecureUrl {
            field: "config.oauth2_config.issuer".into(),
        });
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidField, Some("config.oauth2_config.issuer"))
        );
        assert!(
            e.message
                .ends_with("when LATCHKEY_ALLOW_INSECURE_LOOPBACK=true)"),
            "{}",
            e.message
        );

        let e = advised(DomainError::AddressNotAllowed {
            field: "f".into(),
            reason: "10.0.0.1 is a private address; Latchkey connects only to public addresses"
                .into(),
        });
        assert_eq!(e.code, ErrorCode::AddressNotAllowed);
        assert_eq!(e.message, "f: 10.0.0.1 is a private address; Latchkey connects only to public addresses (an operator can open a range with LATCHKEY_ALLOW_PRIVATE_NETWORKS)");

        let e = advised(DomainError::RedirectOnDeploymentApp {
            field: "config.oauth2_config.redirect_uri".into(),
            provider: Provider::Google,
        });
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(
            e.message.contains("(LATCHKEY_OAUTH_GOOGLE_CLIENT_ID)"),
            "{}",
            e.message
        );

        let e = advised(DomainError::NoOAuthClient {
            field: "oauth2_config.client_id".into(),
            provider: Provider::Box,
        });
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidField, Some("oauth2_config.client_id"))
        );
        assert!(
            e.message
                .contains("set LATCHKEY_OAUTH_BOX_CLIENT_ID and LATCHKEY_OAUTH_BOX_CLIENT_SECRET"),
            "{}",
            e.message
        );
    }
}
