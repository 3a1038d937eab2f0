//! The error responses many operations share, for their `#[utoipa::path]` lists: named
//! once here instead of repeated per handler. Each description ends with the codes it
//! can carry, spelled by [`ErrorCode`].

use std::collections::BTreeMap;

use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::IntoResponses;

use super::error::ErrorCode;

/// A response with the `ErrorBody` schema, as a `(status = .., body = schema::ErrorBody)`
/// tuple writes it.
fn error(description: &str, codes: &[ErrorCode]) -> RefOr<Response> {
    let codes: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
    ResponseBuilder::new()
        .description(format!("{description} Codes: {}.", codes.join(", ")))
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

fn map<const N: usize>(entries: [(&str, RefOr<Response>); N]) -> BTreeMap<String, RefOr<Response>> {
    entries
        .into_iter()
        .map(|(status, r)| (status.to_owned(), r))
        .collect()
}

fn unauthorized() -> RefOr<Response> {
    error(
        "No, an unknown or a revoked bearer token.",
        &[ErrorCode::Unauthorized],
    )
}

/// 401: every authenticated operation.
pub(crate) struct Unauthorized;

impl IntoResponses for Unauthorized {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        map([("401", unauthorized())])
    }
}

/// 401 and 403: an operation that needs a scope (or the admin).
pub(crate) struct NeedsScope;

impl IntoResponses for NeedsScope {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        map([
            ("401", unauthorized()),
            (
                "403",
                error(
                    "The key lacks the scope, or the operation is admin-only.",
                    &[ErrorCode::Forbidden],
                ),
            ),
        ])
    }
}

/// 413 and 415: an operation with a JSON body.
pub(crate) struct JsonBody;

impl IntoResponses for JsonBody {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        map([
            (
                "413",
                error("Body over 64 KiB.", &[ErrorCode::PayloadTooLarge]),
            ),
            (
                "415",
                error(
                    "Body not sent as application/json.",
                    &[ErrorCode::UnsupportedMediaType],
                ),
            ),
        ])
    }
}

/// 400 for a body that is malformed or fails validation.
pub(crate) struct InvalidBody;

impl IntoResponses for InvalidBody {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        use ErrorCode as C;
        map([(
            "400",
            error(
                "Invalid body.",
                &[
                    C::InvalidJson,
                    C::InvalidBody,
                    C::MissingField,
                    C::InvalidField,
                    C::InvalidId,
                    C::UnknownType,
                ],
            ),
        )])
    }
}

/// 404 for an operation on one record of a kind, named in the description.
macro_rules! not_found {
    ($name:ident, $what:literal) => {
        #[doc = concat!("404: no such ", $what, ".")]
        pub(crate) struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                map([(
                    "404",
                    error(
                        concat!("No such ", $what, " (or not visible to this key)."),
                        &[ErrorCode::NotFound],
                    ),
                )])
            }
        }
    };
}

not_found!(ConnectionNotFound, "connection");
not_found!(ClientNotFound, "oauth2 client");
not_found!(AccessKeyNotFound, "access key");
