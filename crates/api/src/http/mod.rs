//! The HTTP API (actix-web): routes, authentication, views and the error shape.

mod auth;
mod callback;
pub mod error;
mod views;

use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use latchkey_app::{
    CallbackError, CallbackParams, CreateConnection, CreateOAuthClient, Latchkey, UpdateConnection,
};
use latchkey_domain::{AccessKeyId, ConnectionId, OAuthClientId};
use latchkey_store::SeaStore;

use auth::Auth;
use error::ApiError;

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;

/// Shared state of the handlers.
pub struct AppState {
    pub app: Arc<Latchkey>,
    pub store: SeaStore,
    pub admin_token: Option<SecretString>,
    pub ui_origin: Option<String>,
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
    .service(
        web::scope("/v1")
            // Before /connections/{id}, which would otherwise match "oauth2".
            .route(
                "/connections/oauth2/callback",
                web::get().to(oauth_callback),
            )
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

async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    match state.store.ping().await {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ok" })),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            HttpResponse::ServiceUnavailable().json(json!({ "error": { "code": "unavailable", "message": "the database is unreachable" } }))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConnectionBody {
    name: Option<String>,
    project_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    config: Option<Value>,
    oauth2_client_id: Option<String>,
}

fn required<T>(v: Option<T>, field: &str) -> Result<T> {
    v.ok_or_else(|| ApiError::bad_request("missing_field", format!("{field} is required")))
}

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
        config: match b.config {
            Some(c) => c,
            None if kind.contains("OAuth2")
                || kind
                    .parse::<latchkey_domain::ConnectionType>()
                    .is_ok_and(|t| t.is_oauth()) =>
            {
                Value::Object(Map::new())
            }
            None => return Err(ApiError::bad_request("missing_field", "config is required")),
        },
        kind,
        oauth2_client_id: b.oauth2_client_id,
    };
    let c = state.app.create_connection(&p, input).await?;
    Ok(HttpResponse::Created().json(json!({ "data": views::connection(&c, Some(&[])) })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    project_id: Option<String>,
    status: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

async fn list_connections(
    state: web::Data<AppState>,
    Auth(p): Auth,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse> {
    let page = state
        .app
        .list_connections(
            &p,
            q.project_id.as_deref(),
            q.status.as_deref(),
            q.kind.as_deref(),
            q.after.as_deref(),
            q.limit,
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "data": page.items.iter().map(|c| views::connection(c, None)).collect::<Vec<_>>(),
        "page": { "next_cursor": page.next_cursor },
    })))
}

async fn get_connection(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let d = state.app.get_connection(&p, connection_id(&id)?).await?;
    Ok(data(views::details(&d)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    name: Option<String>,
    config: Option<Value>,
    version: Option<i64>,
}

async fn update_connection(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
    body: web::Json<UpdateBody>,
) -> Result<HttpResponse> {
    let b = body.into_inner();
    if b.name.is_none() && b.config.is_none() {
        return Err(ApiError::bad_request(
            "missing_field",
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
                config: b.config,
                version: b.version,
            },
        )
        .await?;
    let d = state.app.get_connection(&p, id).await?;
    Ok(data(views::details(&d)))
}

async fn delete_connection(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    state.app.delete_connection(&p, connection_id(&id)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsQuery {
    flow_id: Option<String>,
}

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

async fn events(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let events = state.app.connection_events(&p, connection_id(&id)?).await?;
    Ok(data(events.iter().map(views::event).collect()))
}

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

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    iss: Option<String>,
}

async fn oauth_callback(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    // Parsed by hand so that a malformed query still gets the callback page.
    let q: CallbackQuery = web::Query::<CallbackQuery>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or(CallbackQuery {
            state: None,
            code: None,
            error: None,
            error_description: None,
            iss: None,
        });
    let params = CallbackParams {
        state: q.state,
        code: q.code.map(SecretString::from),
        error: q.error,
        error_description: q.error_description,
        iss: q.iss,
    };
    let nonce = {
        let mut b = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    };
    let origin = state.ui_origin.as_deref();
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

#[derive(Debug, Deserialize)]
struct CreateClientBody {
    name: Option<String>,
    project_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    #[serde(flatten)]
    settings: Map<String, Value>,
}

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
                client_secret: b.client_secret.map(SecretString::from),
                settings: b.settings,
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(json!({ "data": views::oauth_client(&c) })))
}

async fn list_oauth_clients(state: web::Data<AppState>, Auth(p): Auth) -> Result<HttpResponse> {
    let list = state.app.list_oauth_clients(&p).await?;
    Ok(data(list.iter().map(views::oauth_client).collect()))
}

fn client_id(raw: &str) -> Result<OAuthClientId> {
    raw.parse()
        .map_err(|_| ApiError::not_found("oauth2 client"))
}

async fn get_oauth_client(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let c = state.app.get_oauth_client(&p, client_id(&id)?).await?;
    Ok(data(views::oauth_client(&c)))
}

async fn delete_oauth_client(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    state.app.delete_oauth_client(&p, client_id(&id)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeyBody {
    project_id: Option<String>,
    name: Option<String>,
    scopes: Option<Vec<String>>,
}

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

async fn list_access_keys(state: web::Data<AppState>, Auth(p): Auth) -> Result<HttpResponse> {
    let keys = state.app.list_access_keys(&p).await?;
    Ok(data(keys.iter().map(views::access_key).collect()))
}

async fn delete_access_key(
    state: web::Data<AppState>,
    Auth(p): Auth,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let id: AccessKeyId = id.parse().map_err(|_| ApiError::not_found("access key"))?;
    state.app.delete_access_key(&p, id).await?;
    Ok(HttpResponse::NoContent().finish())
}
