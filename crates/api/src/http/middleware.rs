//! Middleware of every request: a handler's panic becomes a 500 answer, and each request
//! is logged and measured by its route template.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use futures::future::LocalBoxFuture;
use futures::FutureExt;

use super::error::ApiError;

/// Middleware (for `wrap_fn`): logs each request's method, path, status and time, and
/// counts it under its route template. Only the path is logged: query strings carry OAuth
/// codes and states. The template, never the path, labels the metric: ids stay out of
/// labels.
pub fn log_request<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> LocalBoxFuture<'static, Result<ServiceResponse<B>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    let method = req.method().clone();
    let path = req.path().to_owned();
    let started = Instant::now();
    let fut = srv.call(req);
    async move {
        let res = fut.await;
        let status = res.as_ref().map(|r| r.status().as_u16()).unwrap_or(500);
        let took = started.elapsed();
        tracing::info!(%method, %path, status, ms = took.as_millis() as u64, "request");
        let route = res
            .as_ref()
            .ok()
            .and_then(|r| r.request().match_pattern())
            .unwrap_or_else(|| "unmatched".into());
        crate::telemetry::http_request(&route, method.as_str(), status, took);
        res
    }
    .boxed_local()
}

/// Middleware (for `wrap_fn`): a handler that panics answers 500 with the JSON error,
/// instead of the connection being dropped. The panic is logged; its text is not shown.
pub fn catch_panics<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> LocalBoxFuture<'static, Result<ServiceResponse, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use actix_web::http::StatusCode;
    use actix_web::{test, web, App, HttpResponse};
    use serde_json::Value;

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
}
