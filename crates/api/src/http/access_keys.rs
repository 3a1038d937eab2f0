//! `/v1/access-keys` and `/v1/me`: project-scoped access keys and who the bearer is.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use latchkey_domain::AccessKeyId;

use super::auth::Auth;
use super::error::ApiError;
use super::responses::{AccessKeyNotFound, InvalidBody, JsonBody, NeedsScope, Unauthorized};
use super::{data, required, schema, views, AppState, Result};

/// Who the bearer is, so that a page holding only a key can learn its project and scopes.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "access-keys",
    operation_id = "me",
    responses(
        (status = 200, description = "The caller: the admin, or an access key with its project and scopes.", body = schema::MeData),
        Unauthorized
    ),
    security(("bearer" = []))
)]
pub(super) async fn me(Auth(p): Auth) -> HttpResponse {
    data(match &p {
        latchkey_app::Principal::Admin => json!({
            "kind": "admin",
            "project_id": null,
            "scopes": latchkey_domain::Scope::ALL,
        }),
        latchkey_app::Principal::Key {
            id,
            project,
            scopes,
        } => json!({
            "kind": "access_key",
            "id": id,
            "project_id": project,
            "scopes": scopes,
        }),
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"project_id": "proj-1", "name": "engine", "scopes": ["connections:read", "credentials:read"]}))]
pub(super) struct CreateKeyBody {
    #[schema(required = true, value_type = String, pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    project_id: Option<String>,
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    /// `connections:read`, `connections:write`, `credentials:read`, `metrics:read`.
    #[schema(required = true, value_type = Vec<String>, min_items = 1)]
    scopes: Option<Vec<String>>,
}

/// Create a project-scoped access key (admin only). The key is shown once.
#[utoipa::path(
    post,
    path = "/v1/access-keys",
    tag = "access-keys",
    operation_id = "createAccessKey",
    request_body = CreateKeyBody,
    responses(
        (status = 201, description = "Created.", body = schema::CreatedAccessKeyData),
        InvalidBody,
        JsonBody,
        NeedsScope
    ),
    security(("bearer" = []))
)]
pub(super) async fn create(
    state: web::Data<AppState>,
    Auth(p): Auth,
    body: web::Json<CreateKeyBody>,
) -> Result<HttpResponse> {
    p.require_admin().map_err(ApiError::from)?;
    let b = body.into_inner();
    let project = required(b.project_id, "project_id")?;
    let name = b.name.unwrap_or_else(|| format!("key for {project}"));
    let issued = state
        .app
        .create_access_key(&p, &project, &name, &required(b.scopes, "scopes")?)
        .await?;
    let mut v = views::access_key(&issued.key);
    // Shown once: only the hash is kept.
    v["key"] = Value::String(issued.token.expose_secret().to_owned());
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "data": v })))
}

/// Access keys (the admin sees all, a key its project's).
#[utoipa::path(
    get,
    path = "/v1/access-keys",
    tag = "access-keys",
    operation_id = "listAccessKeys",
    responses(
        (status = 200, description = "Keys, never the secrets.", body = schema::AccessKeyList),
        NeedsScope
    ),
    security(("bearer" = []))
)]
pub(super) async fn list(state: web::Data<AppState>, Auth(p): Auth) -> Result<HttpResponse> {
    let keys = state.app.list_access_keys(&p).await?;
    Ok(data(keys.iter().map(views::access_key).collect()))
}

/// Revoke an access key (admin only).
#[utoipa::path(
    delete,
    path = "/v1/access-keys/{id}",
    tag = "access-keys",
    operation_id = "deleteAccessKey",
    params(("id" = String, Path, description = "Access key id")),
    responses(
        (status = 204, description = "Revoked."),
        NeedsScope,
        AccessKeyNotFound
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let id: AccessKeyId = id.parse().map_err(|_| ApiError::not_found("access key"))?;
    state.app.delete_access_key(&p, id).await?;
    Ok(HttpResponse::NoContent().finish())
}
