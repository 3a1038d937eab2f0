//! The HTTP API (actix-web): routes, authentication, views and the error shape.

mod auth;
mod callback;
mod code;
pub mod error;
pub mod schema;
mod ui;
mod views;

use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};

use latchkey_app::{
    CallbackError, CallbackParams, CreateConnection, CreateOAuthClient, Latchkey, ListFilter,
    UpdateConnection,
};
use latchkey_domain::{AccessKeyId, ConnectionId, OAuthClientId};
use latchkey_store::SeaStore;

use auth::Auth;
use error::{ApiError, ErrorCode};

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;

/// Shared state of the handlers.
pub struct AppState {
    pub app: Arc<Latchkey>,
    pub store: SeaStore,
    pub admin_token: Option<SecretString>,
    /// Where the callback page posts its result (never `*`).
    pub ui_origin: String,
    /// The key ring, for the per-key gauge.
    pub ring: Arc<latchkey_cipher::KeyRing>,
    pub gauges: crate::telemetry::Gauges,
    /// The background job's pulse, when this process runs the jobs.
    pub jobs: Option<Arc<crate::jobs::JobHealth>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppState { .. }")
    }
}

type Result<T> = std::result::Result<T, ApiError>;

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY)
            .error_handler(error::extractors::json),
    )
    .app_data(web::QueryConfig::default().error_handler(error::extractors::query))
    .app_data(web::PathConfig::default().error_handler(error::extractors::path))
    .app_data(web::PayloadConfig::default().limit(MAX_BODY))
    .route("/healthz", web::get().to(healthz))
    .route("/metrics", web::get().to(metrics))
    .route("/openapi.json", web::get().to(openapi_json))
    // The management page: static files, no credentials (it signs in with a key itself).
    .configure(ui::configure)
    // The provider's redirect carries no credentials: outside the authenticated scope,
    // and before it, so /v1/connections/{id} does not match "oauth2".
    .route(
        "/v1/connections/oauth2/callback",
        web::get().to(oauth_callback),
    )
    .service(
        web::scope("/v1")
            // Authentication first, before any extractor reads the request.
            .wrap(actix_web::middleware::from_fn(auth::require_auth))
            .route("/me", web::get().to(me))
            .route("/connection-types", web::get().to(connection_types))
            .route("/connections", web::post().to(create_connection))
            .route("/connections", web::get().to(list_connections))
            .route("/connections/{id}", web::get().to(get_connection))
            .route("/connections/{id}", web::patch().to(update_connection))
            .route("/connections/{id}", web::delete().to(delete_connection))
            .route("/connections/{id}/credentials", web::get().to(credentials))
            .route("/connections/{id}/events", web::get().to(events))
            .route(
                "/connections/{id}/oauth2/authorize",
                web::post().to(authorize),
            )
            .route("/oauth2-clients", web::post().to(create_oauth_client))
            .route("/oauth2-clients", web::get().to(list_oauth_clients))
            .route("/oauth2-clients/{id}", web::get().to(get_oauth_client))
            .route(
                "/oauth2-clients/{id}",
                web::delete().to(delete_oauth_client),
            )
            .route("/access-keys", web::post().to(create_access_key))
            .route("/access-keys", web::get().to(list_access_keys))
            .route("/access-keys/{id}", web::delete().to(delete_access_key)),
    )
    .default_service(web::to(not_found));
}

async fn not_found() -> Result<HttpResponse> {
    Err(ApiError::not_found("route"))
}

fn data(v: Value) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "data": v }))
}

fn connection_id(raw: &str) -> Result<ConnectionId> {
    raw.parse().map_err(|_| ApiError::not_found("connection"))
}

/// Liveness and database reachability (no auth).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    operation_id = "healthz",
    responses(
        (status = 200, description = "Serving.", body = schema::Health),
        (status = 503, description = "The database is unreachable, or (in a process that runs the jobs) the background job has not finished a cycle for three intervals plus a lease. Codes: unavailable, jobs_stalled.", body = schema::ErrorBody)
    )
)]
async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let db = state.store.ping().await;
    if let Err(e) = &db {
        tracing::warn!(error = %e, "health check: database unreachable");
    }
    health_answer(
        db.is_ok(),
        state.jobs.as_deref().and_then(|j| j.stalled_for()),
    )
}

/// `/healthz`: 200 when the database answers and (in a process that runs the jobs) the
/// job loop finished a cycle recently; 503 with a stable code otherwise.
fn health_answer(db_ok: bool, jobs_stalled_for: Option<std::time::Duration>) -> HttpResponse {
    let unavailable = |code: ErrorCode, message: String| {
        HttpResponse::ServiceUnavailable()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(json!({ "error": { "code": code, "message": message } }))
    };
    if !db_ok {
        return unavailable(ErrorCode::Unavailable, "the database is unreachable".into());
    }
    if let Some(since) = jobs_stalled_for {
        tracing::error!(
            seconds = since.as_secs(),
            "health check: the background job has not finished a cycle"
        );
        return unavailable(
            ErrorCode::JobsStalled,
            format!(
                "the background refresh job has not finished a cycle for {} s",
                since.as_secs()
            ),
        );
    }
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Middleware (for `wrap_fn`): a handler that panics answers 500 with the JSON error,
/// instead of the connection being dropped. The panic is logged; its text is not shown.
pub fn catch_panics<S, B>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> futures::future::LocalBoxFuture<
    'static,
    std::result::Result<actix_web::dev::ServiceResponse, actix_web::Error>,
>
where
    S: actix_web::dev::Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    S::Future: 'static,
    B: actix_web::body::MessageBody + 'static,
{
    use futures::FutureExt;
    // No clone of the request is kept: routing needs it unshared. An `Err` is answered
    // by actix with the error's own response.
    let path = req.path().to_owned();
    let answer_500 = move |panic: Box<dyn std::any::Any + Send>| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(%path, panic = %message, "request handler panicked");
        Err(ApiError::internal().into())
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| srv.call(req))) {
        Ok(fut) => async move {
            match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
                Ok(res) => res.map(|r| r.map_into_boxed_body()),
                Err(panic) => answer_500(panic),
            }
        }
        .boxed_local(),
        Err(panic) => futures::future::ready(answer_500(panic)).boxed_local(),
    }
}

/// A request body's field that may hold secrets: `Debug` shows only whether it was given.
struct Redacted<T>(T);

impl<T> std::fmt::Debug for Redacted<Option<T>> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some([REDACTED])"
        } else {
            "None"
        })
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Redacted<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        T::deserialize(d).map(Redacted)
    }
}

impl<T> Default for Redacted<Option<T>> {
    fn default() -> Self {
        Redacted(None)
    }
}

/// This document (no auth).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "system",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document.", body = Object))
)]
async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(crate::openapi::json())
}

/// Prometheus metrics (text format); admin token or a key with `metrics:read`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4.", body = String, content_type = "text/plain"),
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody),
        (status = 500, description = "The database failed. Codes: internal_error.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn metrics(state: web::Data<AppState>, Auth(p): Auth) -> Result<HttpResponse> {
    p.require(latchkey_domain::Scope::MetricsRead)
        .map_err(ApiError::from)?;
    let text = state
        .gauges
        .render(&state.store, &state.ring)
        .await
        .map_err(|e| ApiError::from(latchkey_app::AppError::Internal(format!("metrics: {e:#}"))))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(text))
}

/// Who the bearer is, so that a page holding only a key can learn its project and scopes.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "access-keys",
    operation_id = "me",
    responses(
        (status = 200, description = "The caller: the admin, or an access key with its project and scopes.", body = schema::MeData),
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn me(Auth(p): Auth) -> HttpResponse {
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
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn connection_types(state: web::Data<AppState>, Auth(p): Auth) -> Result<HttpResponse> {
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
struct CreateConnectionBody {
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
    config: Redacted<Option<Value>>,
    oauth2_client_id: Option<String>,
}

fn required<T>(v: Option<T>, field: &str) -> Result<T> {
    v.ok_or_else(|| {
        ApiError::bad_request(ErrorCode::MissingField, format!("{field} is required"))
            .with_field(field)
    })
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
        (status = 413, description = "Body over 64 KiB. Codes: payload_too_large.", body = schema::ErrorBody),
        (status = 415, description = "Body not sent as application/json. Codes: unsupported_media_type.", body = schema::ErrorBody),
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody),
        (status = 409, description = "The project already has a connection of that name, or holds the most connections allowed. Codes: name_taken, limit_reached.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn create_connection(
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
struct ListQuery {
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
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn list_connections(
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
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody),
        (status = 404, description = "No such connection (or not visible to this key). Codes: not_found.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn get_connection(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let d = state.app.get_connection(&p, connection_id(&id)?).await?;
    Ok(data(views::details(&d)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    name: Option<String>,
    /// Holds the new secrets.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    config: Redacted<Option<Value>>,
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
        (status = 400, description = "Invalid body. Codes: invalid_json, invalid_body, missing_field, invalid_field, invalid_id, unknown_type.", body = schema::ErrorBody),
        (status = 413, description = "Body over 64 KiB. Codes: payload_too_large.", body = schema::ErrorBody),
        (status = 415, description = "Body not sent as application/json. Codes: unsupported_media_type.", body = schema::ErrorBody),
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody),
        (status = 404, description = "No such connection (or not visible to this key). Codes: not_found.", body = schema::ErrorBody),
        (status = 409, description = "A concurrent change, a name clash, or a config that cannot change now. Codes: version_conflict, name_taken, config_locked.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn update_connection(
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
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody),
        (status = 404, description = "No such connection (or not visible to this key). Codes: not_found.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn delete_connection(
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
struct CredentialsQuery {
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
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody),
        (status = 404, description = "No such connection (or not visible to this key). Codes: not_found.", body = schema::ErrorBody),
        (status = 409, description = "The connection cannot hand out credentials now. Codes: connection_incomplete, connection_expired.", body = schema::ErrorBody),
        (status = 502, description = "A due refresh failed at the provider. Codes: provider_error, address_not_allowed (the provider's name resolved to a non-public address).", body = schema::ErrorBody),
        (status = 503, description = "The access token has lapsed and the provider keeps failing (network, 5xx, 429); retry after the `Retry-After` seconds. The grant is kept. Codes: provider_unavailable.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn credentials(
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
struct EventsQuery {
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
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody),
        (status = 404, description = "No such connection (or not visible to this key). Codes: not_found.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn events(
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

/// Start the consent flow (`connections:write`): a URL to send the user to.
#[utoipa::path(
    post,
    path = "/v1/connections/{id}/oauth2/authorize",
    tag = "oauth2",
    operation_id = "authorize",
    params(("id" = String, Path, description = "Connection id")),
    responses(
        (status = 200, description = "The consent URL.", body = schema::AuthorizationData),
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody),
        (status = 404, description = "No such connection (or not visible to this key). Codes: not_found.", body = schema::ErrorBody),
        (status = 409, description = "The connection cannot be authorized. Codes: not_oauth, oauth2_client_missing, illegal_transition.", body = schema::ErrorBody),
        (status = 400, description = "The OAuth settings are incomplete or refused. Codes: invalid_field, invalid_config.", body = schema::ErrorBody),
        (status = 502, description = "Discovery at the issuer failed. Codes: provider_error, address_not_allowed (the issuer resolved to, or its document named, a non-public address).", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn authorize(
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
struct CallbackParamsDoc {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    iss: Option<String>,
}

/// The body of `POST /v1/oauth2-clients`, for the document: the named fields plus the
/// provider settings (`authorization_endpoint`, `token_endpoint`, `issuer`, ...).
#[derive(Debug, serde::Serialize, ToSchema)]
#[allow(dead_code)]
struct CreateClientBodyDoc {
    name: String,
    project_id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    client_id: String,
    client_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    /// Single use, but a credential until the callback ends.
    #[serde(default)]
    state: Redacted<Option<String>>,
    #[serde(default)]
    code: Redacted<Option<String>>,
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
async fn oauth_callback(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
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
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
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

#[derive(Deserialize)]
struct CreateClientBody {
    name: Option<String>,
    project_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Redacted<Option<String>>,
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
        (status = 413, description = "Body over 64 KiB. Codes: payload_too_large.", body = schema::ErrorBody),
        (status = 415, description = "Body not sent as application/json. Codes: unsupported_media_type.", body = schema::ErrorBody),
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody),
        (status = 409, description = "A client of that name exists. Codes: name_taken.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn create_oauth_client(
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
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn list_oauth_clients(state: web::Data<AppState>, Auth(p): Auth) -> Result<HttpResponse> {
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
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody),
        (status = 404, description = "No such oauth2 client (or not visible to this key). Codes: not_found.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn get_oauth_client(
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
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody),
        (status = 404, description = "No such oauth2 client (or not visible to this key). Codes: not_found.", body = schema::ErrorBody),
        (status = 409, description = "Connections still use it. Codes: in_use.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn delete_oauth_client(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    state.app.delete_oauth_client(&p, client_id(&id)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"project_id": "proj-1", "name": "engine", "scopes": ["connections:read", "credentials:read"]}))]
struct CreateKeyBody {
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
        (status = 400, description = "Invalid body. Codes: invalid_json, invalid_body, missing_field, invalid_field, invalid_id, unknown_type.", body = schema::ErrorBody),
        (status = 413, description = "Body over 64 KiB. Codes: payload_too_large.", body = schema::ErrorBody),
        (status = 415, description = "Body not sent as application/json. Codes: unsupported_media_type.", body = schema::ErrorBody),
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn create_access_key(
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
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn list_access_keys(state: web::Data<AppState>, Auth(p): Auth) -> Result<HttpResponse> {
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
        (status = 401, description = "No, an unknown or a revoked bearer token. Codes: unauthorized.", body = schema::ErrorBody),
        (status = 403, description = "The key lacks the scope, or the operation is admin-only. Codes: forbidden.", body = schema::ErrorBody),
        (status = 404, description = "No such access key (or not visible to this key). Codes: not_found.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
async fn delete_access_key(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let id: AccessKeyId = id.parse().map_err(|_| ApiError::not_found("access key"))?;
    state.app.delete_access_key(&p, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every request body or query that carries a secret, a code or a state, with its
    /// secrets: what `{:?}` prints of it must contain none of them.
    #[test]
    fn request_structs_do_not_print_their_secrets() {
        let secrets = [
            "sk-live-SECRET1",
            "pw-SECRET2",
            "cs-SECRET3",
            "code-SECRET4",
            "state-SECRET5",
            "nested-SECRET6",
        ];
        let create: CreateConnectionBody = serde_json::from_value(json!({
            "name": "n", "project_id": "p", "type": "api_key",
            "config": {"api_key": "sk-live-SECRET1", "oauth2_config": {"client_secret": "cs-SECRET3"}},
        }))
        .unwrap();
        let update: UpdateBody =
            serde_json::from_value(json!({"config": {"username": "u", "password": "pw-SECRET2"}}))
                .unwrap();
        let client: CreateClientBody = serde_json::from_value(json!({
            "name": "c", "type": "oauth2", "client_id": "cid", "client_secret": "cs-SECRET3",
            "oauth2_config": {"token_endpoint": "https://t", "client_secret": "nested-SECRET6"},
        }))
        .unwrap();
        let callback: CallbackQuery = web::Query::<CallbackQuery>::from_query(
            "state=state-SECRET5&code=code-SECRET4&iss=https%3A%2F%2Fi",
        )
        .unwrap()
        .into_inner();
        let printed = [
            format!("{create:?}"),
            format!("{update:?}"),
            format!("{client:?}"),
            format!("{callback:?}"),
        ];
        for p in &printed {
            for s in secrets {
                assert!(!p.contains(s), "{s} printed: {p}");
            }
        }
        // What is not secret still shows, so the output stays useful.
        assert!(printed[0].contains("api_key") && printed[0].contains("Some([REDACTED])"));
        assert!(printed[2].contains("cid") && printed[2].contains("oauth2_config"));
        assert!(printed[3].contains("https://i"));
        // And the values still arrive where they are used.
        assert_eq!(create.config.0.unwrap()["api_key"], "sk-live-SECRET1");
        assert_eq!(callback.code.0.as_deref(), Some("code-SECRET4"));
        assert_eq!(client.client_secret.0.as_deref(), Some("cs-SECRET3"));
        let none: UpdateBody = serde_json::from_value(json!({"name": "x"})).unwrap();
        assert!(none.config.0.is_none());
        assert!(format!("{none:?}").contains("config: None"));
    }
}

#[cfg(test)]
mod panic_and_health_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use actix_web::dev::Service;
    use actix_web::{test, App};

    async fn panics() -> HttpResponse {
        panic!("a handler bug")
    }

    async fn fine() -> HttpResponse {
        HttpResponse::Ok().body("fine")
    }

    #[actix_web::test]
    async fn a_panicking_handler_answers_500_json_and_the_server_goes_on() {
        let app = test::init_service(
            App::new()
                .wrap_fn(catch_panics)
                .route("/boom", web::get().to(panics))
                .route("/fine", web::get().to(fine)),
        )
        .await;
        let err = app
            .call(test::TestRequest::get().uri("/boom").to_request())
            .await
            .err()
            .unwrap();
        // What actix answers for the error.
        let res = err.error_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = actix_web::body::to_bytes(res.into_body()).await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "internal_error");
        assert!(!body.to_string().contains("handler bug"), "{body}");
        let res = app
            .call(test::TestRequest::get().uri("/fine").to_request())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[actix_web::test]
    async fn health_is_503_with_a_stable_code_when_the_jobs_stall() {
        let ok = health_answer(true, None);
        assert_eq!(ok.status(), StatusCode::OK);
        let stalled = health_answer(true, Some(std::time::Duration::from_secs(200)));
        assert_eq!(stalled.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = actix_web::body::to_bytes(stalled.into_body())
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "jobs_stalled", "{body}");
        let db_down = health_answer(false, None);
        let body = actix_web::body::to_bytes(db_down.into_body())
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
    }
}
