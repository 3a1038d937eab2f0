//! The stable error codes of the API: `error.code` of every error answer. Clients branch
//! on them, so a code is never renamed or reused; each is documented in docs/API.md (a
//! test below checks both ways) and listed in the OpenAPI document's `ErrorDetail`.

use serde::Serialize;

/// Declares [`ErrorCode`] with its wire spelling, so that the enum, [`ErrorCode::ALL`]
/// and [`ErrorCode::as_str`] cannot disagree.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])+ $variant:ident = $code:literal,)+) => {
        /// Stable, machine-readable: what went wrong, for a program to branch on.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum ErrorCode {
            $($(#[doc = $doc])+ #[serde(rename = $code)] $variant,)+
        }

        impl ErrorCode {
            /// Every code, in the order of the table in docs/API.md.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The code as sent (`invalid_field`, `not_found`, ...).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)+
                }
            }
        }
    };
}

error_codes! {
    /// The body is not JSON, or not JSON of this request's shape.
    InvalidJson = "invalid_json",
    /// The body could not be read.
    InvalidBody = "invalid_body",
    /// The query string is malformed or has an unknown parameter.
    InvalidQuery = "invalid_query",
    /// A required field is missing.
    MissingField = "missing_field",
    /// A field's value is refused.
    InvalidField = "invalid_field",
    /// An unknown connection type.
    UnknownType = "unknown_type",
    /// A malformed id (project, flow, cursor).
    InvalidId = "invalid_id",
    /// A config field the connection may not set.
    InvalidConfig = "invalid_config",
    /// A URL names a non-public address (400 at create; 502 when found connecting).
    AddressNotAllowed = "address_not_allowed",
    /// No, an unknown or a revoked bearer key.
    Unauthorized = "unauthorized",
    /// A scope is missing, or the action is admin-only.
    Forbidden = "forbidden",
    /// No such route or record, or another project's.
    NotFound = "not_found",
    /// The record changed since the caller read it.
    VersionConflict = "version_conflict",
    /// The name is taken in the project.
    NameTaken = "name_taken",
    /// The config of an OAuth connection cannot change.
    ConfigLocked = "config_locked",
    /// The connection's status does not allow the step.
    IllegalTransition = "illegal_transition",
    /// The connection is not authorized yet.
    ConnectionIncomplete = "connection_incomplete",
    /// The connection's grant is dead.
    ConnectionExpired = "connection_expired",
    /// Connections still use the client.
    InUse = "in_use",
    /// The project holds the most connections allowed.
    LimitReached = "limit_reached",
    /// An OAuth action on a non-OAuth connection.
    NotOAuth = "not_oauth",
    /// The connection's registered client is gone.
    OAuth2ClientMissing = "oauth2_client_missing",
    /// The body is over the size limit.
    PayloadTooLarge = "payload_too_large",
    /// The body is not sent as JSON.
    UnsupportedMediaType = "unsupported_media_type",
    /// The provider failed or refused.
    ProviderError = "provider_error",
    /// The access token lapsed and the provider cannot refresh it yet.
    ProviderUnavailable = "provider_unavailable",
    /// `/healthz`: the database does not answer.
    Unavailable = "unavailable",
    /// `/healthz`: the background job has not finished a cycle.
    JobsStalled = "jobs_stalled",
    /// Our fault; the details are in the server log only.
    InternalError = "internal_error",
}

// By hand: utoipa's derive does not read a `rename` that a macro passes in.
impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "Stable, machine-readable: what went wrong, for a program to branch on.",
            ))
            .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str())))
            .into()
    }
}

impl utoipa::ToSchema for ErrorCode {}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeSet;

    use super::ErrorCode;

    /// The codes of the "Error codes" table of docs/API.md: every `code` in backticks in
    /// its second column.
    fn documented_codes() -> BTreeSet<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/API.md");
        let doc = std::fs::read_to_string(path).expect("docs/API.md");
        let section = doc
            .split("\n## Error codes\n")
            .nth(1)
            .expect("docs/API.md has an \"Error codes\" section");
        let section = section.split("\n## ").next().unwrap_or(section);
        let mut codes = BTreeSet::new();
        for row in section.lines().filter(|l| l.starts_with('|')) {
            let Some(cell) = row.split('|').nth(2) else {
                continue;
            };
            for (i, part) in cell.split('`').enumerate() {
                // The odd parts are inside backticks.
                if i % 2 == 1 {
                    codes.insert(part.to_owned());
                }
            }
        }
        codes
    }

    #[test]
    fn docs_api_md_documents_exactly_the_codes_that_exist() {
        let documented = documented_codes();
        let existing: BTreeSet<String> = ErrorCode::ALL
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        let undocumented: Vec<_> = existing.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "codes missing from the error table of docs/API.md: {undocumented:?}"
        );
        let unknown: Vec<_> = documented.difference(&existing).collect();
        assert!(
            unknown.is_empty(),
            "docs/API.md documents codes that do not exist: {unknown:?}"
        );
    }

    #[test]
    fn a_code_is_sent_as_it_is_spelled() {
        let mut seen = BTreeSet::new();
        for code in ErrorCode::ALL {
            let wire = serde_json::to_value(code).unwrap();
            assert_eq!(wire, code.as_str(), "{code:?}");
            assert_eq!(code.to_string(), code.as_str());
            let s = code.as_str();
            assert!(
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{s} is not snake_case"
            );
            assert!(seen.insert(s), "{s} twice");
        }
    }
}
