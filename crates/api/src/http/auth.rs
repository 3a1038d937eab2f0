//! Bearer authentication: the admin token or a project-scoped access key.
//!
//! [`require_auth`] authenticates every `/v1` request (the OAuth callback excepted)
//! before any extractor of the handler reads the path, query or body: a caller who is
//! not authenticated learns nothing from how a malformed request would be refused.

use std::future::{ready, Future};
use std::pin::Pin;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use secrecy::ExposeSecret;

use latchkey_app::Principal;

use super::error::ApiError;
use super::AppState;

/// The authenticated caller of a request.
#[derive(Debug)]
pub struct Auth(pub Principal);

/// Middleware: authenticates the request, then hands it on with its [`Principal`] in
/// the request extensions; answers 401 without calling the handler otherwise.
pub async fn require_auth<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    match authenticate(req.request()).await {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.call(req)
                .await
                .map(ServiceResponse::map_into_left_body)
        }
        Err(e) => Ok(req.error_response(e).map_into_right_body()),
    }
}

impl FromRequest for Auth {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        // Set by `require_auth`; a route outside it authenticates here.
        if let Some(p) = req.extensions().get::<Principal>() {
            return Box::pin(ready(Ok(Auth(p.clone()))));
        }
        let req = req.clone();
        Box::pin(async move { authenticate(&req).await.map(Auth) })
    }
}

async fn authenticate(req: &HttpRequest) -> Result<Principal, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::unauthorized("server not ready"))?;
    let token = match req.headers().get(header::AUTHORIZATION).map(|h| h.to_str()) {
        None => {
            return Err(ApiError::unauthorized(
                "send Authorization: Bearer <access key>",
            ))
        }
        Some(Err(_)) => {
            return Err(ApiError::unauthorized(
                "the Authorization header is not valid text",
            ))
        }
        Some(Ok(h)) => match h.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
                t.trim().to_owned()
            }
            _ => {
                return Err(ApiError::unauthorized(
                    "use the Bearer scheme: Authorization: Bearer <access key>",
                ))
            }
        },
    };
    if let Some(admin) = &state.admin_token {
        if latchkey_app::constant_time_eq(token.as_bytes(), admin.expose_secret().as_bytes()) {
            return Ok(Principal::Admin);
        }
    }
    match state
        .app
        .authenticate_key(&token)
        .await
        .map_err(ApiError::from)?
    {
        Some(p) => Ok(p),
        None => Err(ApiError::unauthorized("unknown or revoked access key")),
    }
}
