//! `/v1/connections`: create, list, read, update and delete connections, their
//! credentials and their events; and the catalog of connection types.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};

use latchkey_app::{CreateConnection, ListFilter, UpdateConnection};
use latchkey_domain::ConnectionId;

use super::auth::Auth;
use super::error::{ApiError, ErrorCode};
use super::responses::{ConnectionNotFound, InvalidBody, JsonBody, NeedsScope};
use super::{data, required, schema, views, AppState, Redacted, Result};

pub(super) fn connection_id(raw: &str) -> Result<ConnectionId> {
    raw.parse().map_err(|_| ApiError::not_found("connection"))
}

/// The accepted connection types with what a form needs to offer them: a label, whether
/// it is OAuth, the catalog's default and always-added scopes, and whether the deployment
/// has its own app for the provider (so a connection may leave `client_id` out).
#[utoipa::path(
    get,
    path = "/v1/connection-types",
    tag = "connections",
    operation_id = "listConnectionTypes",
    responses(
        (status = 200, description = "Every accepted connection type.", body = schema::ConnectionTypeList),
        NeedsScope
    ),
    security(("bearer" = []))
)]
pub(super) async fn connection_types(
    state: web::Data<AppState>,
    Auth(p): Auth,
) -> Result<HttpResponse> {
    p.require(latchkey_domain::Scope::ConnectionsRead)
        .map_err(ApiError::from)?;
    let defaults = &state.app.settings().default_clients;
    Ok(data(
        latchkey_domain::ConnectionType::ALL
            .iter()
            .map(|t| views::connection_type(*t, defaults))
            .collect(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Stripe prod", "project_id": "proj-1", "type": "api_key", "config": {"api_key": "sk_live_123"}}))]
pub(super) struct CreateConnectionBody {
    /// Unique within the project.
    #[schema(required = true, value_type = String, min_length = 1, max_length = 200)]
    name: Option<String>,
    #[schema(required = true, value_type = String, pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    project_id: Option<String>,
    /// `api_key`, `basic`, `custom`, `google`, `microsoft`, `dropbox`, `box`, `notion`,
    /// `github`, `oauth2`, or a Dynamiq alias such as `dynamiq.connections.OAuth2`.
    #[serde(rename = "type")]
    #[schema(required = true, value_type = String)]
    kind: Option<String>,
    /// Holds the secrets (API key, password, client secret). Per type: `api_key`,
    /// `username`/`password`, `fields`, or the OAuth settings.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub(super) config: Redacted<Option<Value>>,
    oauth2_client_id: Option<String>,
}

/// Create a connection (`connections:write`). OAuth types start `incomplete`.
#[utoipa::path(
    post,
    path = "/v1/connections",
    tag = "connections",
    operation_id = "createConnection",
    request_body = CreateConnectionBody,
    responses(
        (status = 201, description = "Created.", body = schema::ConnectionData),
        (status = 400, description = "Invalid body, or a config that is refused. Codes: invalid_json, invalid_body, missing_field, invalid_field, invalid_id, unknown_type, invalid_config (a field the connection may not set on a registered client, the deployment's app or a catalog provider), address_not_allowed (a URL naming a non-public address).", body = schema::ErrorBody),
        JsonBody,
        NeedsScope,
        (status = 409, description = "The project already has a connection of that name, or holds the most connections allowed. Codes: name_taken, limit_reached.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn create(
    state: web::Data<AppState>,
    Auth(p): Auth,
    body: web::Json<CreateConnectionBody>,
) -> Result<HttpResponse> {
    let b = body.into_inner();
    let kind = required(b.kind, "type")?;
    let input = CreateConnection {
        name: required(b.name, "name")?,
        project_id: required(b.project_id, "project_id")?,
        config: match b.config.0 {
            Some(c) => c,
            None if kind.contains("OAuth2")
                || kind
                    .parse::<latchkey_domain::ConnectionType>()
                    .is_ok_and(|t| t.is_oauth()) =>
            {
                Value::Object(Map::new())
            }
            None => {
                return Err(
                    ApiError::bad_request(ErrorCode::MissingField, "config is required")
                        .with_field("config"),
                )
            }
        },
        kind,
        oauth2_client_id: b.oauth2_client_id,
    };
    let c = state.app.create_connection(&p, input).await?;
    Ok(HttpResponse::Created().json(json!({ "data": views::connection(&c, Some((&[], 0))) })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    project_id: Option<String>,
    status: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Only connections whose name contains this text (ASCII letters without case, `%`
    /// and `_` literal, at most 200 characters).
    #[param(max_length = 200)]
    q: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

/// List connections (`connections:read`), paged by id.
#[utoipa::path(
    get,
    path = "/v1/connections",
    tag = "connections",
    operation_id = "listConnections",
    params(ListQuery),
    responses(
        (status = 200, description = "A page.", body = schema::ConnectionPage),
        (status = 400, description = "A malformed query or filter. Codes: invalid_query, invalid_field, invalid_id, unknown_type.", body = schema::ErrorBody),
        NeedsScope
    ),
    security(("bearer" = []))
)]
pub(super) async fn list(
    state: web::Data<AppState>,
    Auth(p): Auth,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse> {
    let page = state
        .app
        .list_connections(
            &p,
            ListFilter {
                project_id: q.project_id.as_deref(),
                status: q.status.as_deref(),
                kind: q.kind.as_deref(),
                name_contains: q.q.as_deref(),
                after: q.after.as_deref(),
                limit: q.limit,
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "data": page.items.iter().map(|c| views::connection(c, None)).collect::<Vec<_>>(),
        "page": { "next_cursor": page.next_cursor },
    })))
}

/// One connection with its users (`connections:read`).
#[utoipa::path(
    get,
    path = "/v1/connections/{id}",
    tag = "connections",
    operation_id = "getConnection",
    params(("id" = String, Path, description = "Connection id")),
    responses(
        (status = 200, description = "The connection.", body = schema::ConnectionData),
        NeedsScope,
        ConnectionNotFound
    ),
    security(("bearer" = []))
)]
pub(super) async fn get(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let d = state.app.get_connection(&p, connection_id(&id)?).await?;
    Ok(data(views::details(&d)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateBody {
    name: Option<String>,
    /// Holds the new secrets.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub(super) config: Redacted<Option<Value>>,
    version: Option<i64>,
}

/// Rename and/or replace the config (`connections:write`); optional compare-and-set on `version`.
#[utoipa::path(
    patch,
    path = "/v1/connections/{id}",
    tag = "connections",
    operation_id = "updateConnection",
    params(("id" = String, Path, description = "Connection id")),
    request_body = UpdateBody,
    responses(
        (status = 200, description = "The updated connection.", body = schema::ConnectionData),
        InvalidBody,
        JsonBody,
        NeedsScope,
        ConnectionNotFound,
        (status = 409, description = "A concurrent change, a name clash, or a config that cannot change now. Codes: version_conflict, name_taken, config_locked.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn update(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
    body: web::Json<UpdateBody>,
) -> Result<HttpResponse> {
    let b = body.into_inner();
    if b.name.is_none() && b.config.0.is_none() {
        return Err(ApiError::bad_request(
            ErrorCode::MissingField,
            "give name and/or config to change",
        ));
    }
    let id = connection_id(&id)?;
    state
        .app
        .update_connection(
            &p,
            id,
            UpdateConnection {
                name: b.name,
                config: b.config.0,
                version: b.version,
            },
        )
        .await?;
    let d = state.app.get_connection(&p, id).await?;
    Ok(data(views::details(&d)))
}

/// Delete a connection and revoke its grant (`connections:write`).
#[utoipa::path(
    delete,
    path = "/v1/connections/{id}",
    tag = "connections",
    operation_id = "deleteConnection",
    params(("id" = String, Path, description = "Connection id")),
    responses(
        (status = 204, description = "Deleted."),
        NeedsScope,
        ConnectionNotFound
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    state.app.delete_connection(&p, connection_id(&id)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct CredentialsQuery {
    flow_id: Option<String>,
}

/// The secrets, for a workflow execution (`credentials:read`). `Cache-Control: no-store`.
#[utoipa::path(
    get,
    path = "/v1/connections/{id}/credentials",
    tag = "connections",
    operation_id = "getCredentials",
    params(("id" = String, Path, description = "Connection id"), CredentialsQuery),
    responses(
        (status = 200, description = "The credentials.", body = schema::CredentialsData),
        (status = 400, description = "A malformed query string. Codes: invalid_query.", body = schema::ErrorBody),
        NeedsScope,
        ConnectionNotFound,
        (status = 409, description = "The connection cannot hand out credentials now. Codes: connection_incomplete, connection_expired.", body = schema::ErrorBody),
        (status = 502, description = "A due refresh failed at the provider. Codes: provider_error, address_not_allowed (the provider's name resolved to a non-public address).", body = schema::ErrorBody),
        (status = 503, description = "The access token has lapsed and the provider keeps failing (network, 5xx, 429); retry after the `Retry-After` seconds. The grant is kept. Codes: provider_unavailable.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn credentials(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
    q: web::Query<CredentialsQuery>,
) -> Result<HttpResponse> {
    let id = connection_id(&id)?;
    let creds = state
        .app
        .fetch_credentials(&p, id, q.flow_id.as_deref())
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(json!({ "data": views::credentials(&creds) })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    cursor: Option<String>,
    /// The connection list's name for the cursor, accepted here too.
    after: Option<String>,
    limit: Option<u32>,
}

/// Status history of a connection (`connections:read`).
#[utoipa::path(
    get,
    path = "/v1/connections/{id}/events",
    tag = "connections",
    operation_id = "listEvents",
    params(("id" = String, Path, description = "Connection id"), EventsQuery),
    responses(
        (status = 200, description = "A page of events, oldest first.", body = schema::EventPage),
        (status = 400, description = "A malformed query or cursor. Codes: invalid_query, invalid_field.", body = schema::ErrorBody),
        NeedsScope,
        ConnectionNotFound
    ),
    security(("bearer" = []))
)]
pub(super) async fn events(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
    q: web::Query<EventsQuery>,
) -> Result<HttpResponse> {
    let q = q.into_inner();
    let cursor = match (q.cursor, q.after) {
        (Some(c), Some(a)) if c != a => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidQuery,
                "give the page cursor once, as cursor (or after)",
            ))
        }
        (c, a) => c.or(a),
    };
    let page = state
        .app
        .connection_events(&p, connection_id(&id)?, cursor.as_deref(), q.limit)
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "data": page.events.iter().map(views::event).collect::<Vec<_>>(),
        "page": { "next_cursor": page.next_cursor.map(|c| c.to_string()) },
    })))
}
