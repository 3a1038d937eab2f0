//! The operations about the server itself: health, metrics and the OpenAPI document.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::Auth;
use super::error::{ApiError, ErrorCode};
use super::responses::NeedsScope;
use super::{schema, AppState, Result};

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
pub(super) async fn healthz(state: web::Data<AppState>) -> HttpResponse {
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

/// This document (no auth).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "system",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document.", body = Object))
)]
pub(super) async fn openapi_json() -> HttpResponse {
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
        NeedsScope,
        (status = 500, description = "The database failed. Codes: internal_error.", body = schema::ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(super) async fn metrics(state: web::Data<AppState>, Auth(p): Auth) -> Result<HttpResponse> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use actix_web::http::StatusCode;
    use serde_json::Value;

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
