//! `/v1/oauth2-clients`: reusable OAuth client registrations.

use actix_web::{web, HttpResponse};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use latchkey_app::CreateOAuthClient;
use latchkey_domain::OAuthClientId;

use super::auth::Auth;
use super::error::ApiError;
use super::responses::{ClientNotFound, JsonBody, NeedsScope};
use super::{data, required, schema, views, AppState, Redacted, Result};

/// The body of `POST /v1/oauth2-clients`, for the document: the named fields plus the
/// provider settings (`authorization_endpoint`, `token_endpoint`, `issuer`, ...).
#[derive(Debug, serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub(super) struct CreateClientBodyDoc {
    name: String,
    project_id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    client_id: String,
    client_secret: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct CreateClientBody {
    name: Option<String>,
    project_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    client_id: Option<String>,
    #[serde(default)]
    pub(super) client_secret: Redacted<Option<String>>,
    /// The rest (`oauth2_config`): endpoints, but a secret may be misplaced there.
    #[serde(flatten)]
    settings: Map<String, Value>,
}

/// Names the settings without their values.
impl std::fmt::Debug for CreateClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateClientBody")
            .field("name", &self.name)
            .field("project_id", &self.project_id)
            .field("kind", &self.kind)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("settings", &self.settings.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Register a reusable OAuth client (`connections:write`; global ones admin only).
#[utoipa::path(
    post,
    path = "/v1/oauth2-clients",
    tag = "oauth2-clients",
    operation_id = "createOAuthClient",
    request_body = CreateClientBodyDoc,
    responses(
        (status = 201, description = "Registered.", body = schema::OAuthClientData),
        (status = 400, description = "Invalid body, or a config that is refused. Codes: invalid_json, invalid_body, missing_field, invalid_field, invalid_id, unknown_type, invalid_config, address_not_allowed (a URL naming a non-public address).", body = schema::ErrorBody),
        JsonBody,
        NeedsScope,
        (status = 409, description = "A client of that name exists. Codes: name_taken.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn create(
    state: web::Data<AppState>,
    Auth(p): Auth,
    body: web::Json<CreateClientBody>,
) -> Result<HttpResponse> {
    let b = body.into_inner();
    let c = state
        .app
        .create_oauth_client(
            &p,
            CreateOAuthClient {
                name: required(b.name, "name")?,
                project_id: b.project_id,
                kind: required(b.kind, "type")?,
                client_id: required(b.client_id, "client_id")?,
                client_secret: b.client_secret.0.map(SecretString::from),
                settings: b.settings,
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(json!({ "data": views::oauth_client(&c) })))
}

/// The clients the caller may use (`connections:read`).
#[utoipa::path(
    get,
    path = "/v1/oauth2-clients",
    tag = "oauth2-clients",
    operation_id = "listOAuthClients",
    responses(
        (status = 200, description = "Clients.", body = schema::OAuthClientList),
        NeedsScope
    ),
    security(("bearer" = []))
)]
pub(super) async fn list(state: web::Data<AppState>, Auth(p): Auth) -> Result<HttpResponse> {
    let list = state.app.list_oauth_clients(&p).await?;
    Ok(data(list.iter().map(views::oauth_client).collect()))
}

fn client_id(raw: &str) -> Result<OAuthClientId> {
    raw.parse()
        .map_err(|_| ApiError::not_found("oauth2 client"))
}

/// One OAuth client (`connections:read`).
#[utoipa::path(
    get,
    path = "/v1/oauth2-clients/{id}",
    tag = "oauth2-clients",
    operation_id = "getOAuthClient",
    params(("id" = String, Path, description = "OAuth client id")),
    responses(
        (status = 200, description = "The client.", body = schema::OAuthClientData),
        NeedsScope,
        ClientNotFound
    ),
    security(("bearer" = []))
)]
pub(super) async fn get(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let c = state.app.get_oauth_client(&p, client_id(&id)?).await?;
    Ok(data(views::oauth_client(&c)))
}

/// Delete an OAuth client no connection uses (`connections:write`).
#[utoipa::path(
    delete,
    path = "/v1/oauth2-clients/{id}",
    tag = "oauth2-clients",
    operation_id = "deleteOAuthClient",
    params(("id" = String, Path, description = "OAuth client id")),
    responses(
        (status = 204, description = "Deleted."),
        NeedsScope,
        ClientNotFound,
        (status = 409, description = "Connections still use it. Codes: in_use.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    state.app.delete_oauth_client(&p, client_id(&id)?).await?;
    Ok(HttpResponse::NoContent().finish())
}
