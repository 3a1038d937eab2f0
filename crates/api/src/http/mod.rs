//! The HTTP API (actix-web): the routes and the app that serves them, with the shared
//! state of the handlers. Each resource's handlers live in their own module; `auth`
//! authenticates, `error` and `code` shape errors, `responses` names the error answers
//! shared by the OpenAPI annotations, `views` and `schema` shape successful answers.

pub(crate) mod access_keys;
mod auth;
mod callback;
pub(crate) mod clients;
mod code;
pub(crate) mod connections;
pub mod error;
mod middleware;
pub(crate) mod oauth2;
mod responses;
pub mod schema;
pub(crate) mod system;
mod ui;
mod views;

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{web, App, HttpResponse};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Value};

use latchkey_app::Latchkey;
use latchkey_store::SeaStore;

use error::{ApiError, ErrorCode};

pub use middleware::catch_panics;

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

/// The application the server runs, with its state: every route, the panic catcher and
/// the request log. `HttpServer` builds one per worker; the in-process tests serve the
/// same one with `actix_web::test::init_service`.
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .wrap_fn(middleware::catch_panics)
        .wrap_fn(middleware::log_request)
        .configure(configure)
}

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
    .route("/healthz", web::get().to(system::healthz))
    .route("/metrics", web::get().to(system::metrics))
    .route("/openapi.json", web::get().to(system::openapi_json))
    // The management page: static files, no credentials (it signs in with a key itself).
    .configure(ui::configure)
    // The provider's redirect carries no credentials: outside the authenticated scope,
    // and before it, so /v1/connections/{id} does not match "oauth2".
    .route(
        "/v1/connections/oauth2/callback",
        web::get().to(oauth2::callback),
    )
    .service(
        web::scope("/v1")
            // Authentication first, before any extractor reads the request.
            .wrap(actix_web::middleware::from_fn(auth::require_auth))
            .route("/me", web::get().to(access_keys::me))
            .route(
                "/connection-types",
                web::get().to(connections::connection_types),
            )
            .route("/connections", web::post().to(connections::create))
            .route("/connections", web::get().to(connections::list))
            .route("/connections/{id}", web::get().to(connections::get))
            .route("/connections/{id}", web::patch().to(connections::update))
            .route("/connections/{id}", web::delete().to(connections::delete))
            .route(
                "/connections/{id}/credentials",
                web::get().to(connections::credentials),
            )
            .route(
                "/connections/{id}/events",
                web::get().to(connections::events),
            )
            .route(
                "/connections/{id}/oauth2/authorize",
                web::post().to(oauth2::authorize),
            )
            .route("/oauth2-clients", web::post().to(clients::create))
            .route("/oauth2-clients", web::get().to(clients::list))
            .route("/oauth2-clients/{id}", web::get().to(clients::get))
            .route("/oauth2-clients/{id}", web::delete().to(clients::delete))
            .route("/access-keys", web::post().to(access_keys::create))
            .route("/access-keys", web::get().to(access_keys::list))
            .route("/access-keys/{id}", web::delete().to(access_keys::delete)),
    )
    .default_service(web::to(not_found));
}

async fn not_found() -> Result<HttpResponse> {
    Err(ApiError::not_found("route"))
}

fn data(v: Value) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "data": v }))
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

fn required<T>(v: Option<T>, field: &str) -> Result<T> {
    v.ok_or_else(|| {
        ApiError::bad_request(ErrorCode::MissingField, format!("{field} is required"))
            .with_field(field)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::clients::CreateClientBody;
    use super::connections::{CreateConnectionBody, UpdateBody};
    use super::oauth2::CallbackQuery;
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
