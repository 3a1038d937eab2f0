//! The OAuth consent flow: the consent URL of a connection, and the provider's redirect
//! back (the callback page).

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use latchkey_app::{CallbackError, CallbackParams};

use super::auth::Auth;
use super::connections::connection_id;
use super::responses::{ConnectionNotFound, NeedsScope};
use super::{callback, schema, AppState, Redacted, Result};

/// Start the consent flow (`connections:write`): a URL to send the user to.
#[utoipa::path(
    post,
    path = "/v1/connections/{id}/oauth2/authorize",
    tag = "oauth2",
    operation_id = "authorize",
    params(("id" = String, Path, description = "Connection id")),
    responses(
        (status = 200, description = "The consent URL.", body = schema::AuthorizationData),
        NeedsScope,
        ConnectionNotFound,
        (status = 409, description = "The connection cannot be authorized. Codes: not_oauth, oauth2_client_missing, illegal_transition.", body = schema::ErrorBody),
        (status = 400, description = "The OAuth settings are incomplete or refused. Codes: invalid_field, invalid_config.", body = schema::ErrorBody),
        (status = 502, description = "Discovery at the issuer failed. Codes: provider_error, address_not_allowed (the issuer resolved to, or its document named, a non-public address).", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn authorize(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let url = state
        .app
        .start_authorization(&p, connection_id(&id)?)
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "data": { "url": url.as_str() } })))
}

/// The callback's query, for the document (parsed by hand in the handler).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct CallbackParamsDoc {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    iss: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct CallbackQuery {
    /// Single use, but a credential until the callback ends.
    #[serde(default)]
    state: Redacted<Option<String>>,
    #[serde(default)]
    pub(super) code: Redacted<Option<String>>,
    error: Option<String>,
    error_description: Option<String>,
    iss: Option<String>,
}

/// The provider's redirect back (no auth): an HTML page that says how it went.
#[utoipa::path(
    get,
    path = "/v1/connections/oauth2/callback",
    tag = "oauth2",
    operation_id = "oauthCallback",
    params(CallbackParamsDoc),
    responses(
        (status = 200, description = "Authorized.", body = String, content_type = "text/html"),
        (status = 400, description = "Refused (unknown, replayed or expired state, wrong iss, the user denied).", body = String, content_type = "text/html"),
        (status = 502, description = "The provider did not issue tokens.", body = String, content_type = "text/html")
    )
)]
pub(super) async fn callback(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    // Parsed by hand so that a malformed query still gets the callback page.
    let q: CallbackQuery = web::Query::<CallbackQuery>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or(CallbackQuery {
            state: Redacted(None),
            code: Redacted(None),
            error: None,
            error_description: None,
            iss: None,
        });
    let params = CallbackParams {
        state: q.state.0,
        code: q.code.0.map(SecretString::from),
        error: q.error,
        error_description: q.error_description,
        iss: q.iss,
    };
    let nonce = {
        let mut b = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        latchkey_domain::hex::lower(&b)
    };
    let origin = state.ui_origin.as_str();
    match state.app.complete_authorization(params).await {
        Ok(outcome) => callback::render(callback::CallbackPage {
            status: StatusCode::OK,
            ok: true,
            title: "Connection authorized",
            message: &format!(
                "The connection \u{201c}{}\u{201d} is now {}.",
                outcome.name, outcome.status
            ),
            connection_id: Some(outcome.connection_id.to_string()),
            target_origin: origin,
            nonce: &nonce,
        }),
        Err(e) => {
            let status = match &e {
                CallbackError::Exchange(_) => StatusCode::BAD_GATEWAY,
                CallbackError::Internal(m) => {
                    tracing::error!(error = %m, "callback failed");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                _ => StatusCode::BAD_REQUEST,
            };
            tracing::info!(reason = %e, "authorization callback refused");
            callback::render(callback::CallbackPage {
                status,
                ok: false,
                title: "Authorization failed",
                message: &e.to_string(),
                connection_id: None,
                target_origin: origin,
                nonce: &nonce,
            })
        }
    }
}
