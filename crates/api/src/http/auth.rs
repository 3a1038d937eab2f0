//! Bearer authentication: the admin token or a project-scoped access key.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use secrecy::ExposeSecret;

use latchkey_app::Principal;

use super::error::ApiError;
use super::AppState;

/// The authenticated caller of a request.
#[derive(Debug)]
pub struct Auth(pub Principal);

impl FromRequest for Auth {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|h| h.to_str().map(str::to_owned));
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::unauthorized("server not ready"))?;
            let token = match header {
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
                    Some((scheme, t))
                        if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() =>
                    {
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
                if latchkey_app::constant_time_eq(
                    token.as_bytes(),
                    admin.expose_secret().as_bytes(),
                ) {
                    return Ok(Auth(Principal::Admin));
                }
            }
            match state
                .app
                .authenticate_key(&token)
                .await
                .map_err(ApiError::from)?
            {
                Some(p) => Ok(Auth(p)),
                None => Err(ApiError::unauthorized("unknown or revoked access key")),
            }
        })
    }
}
