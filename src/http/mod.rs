//! The HTTP server: shared state, the router of every context, operational endpoints
//! (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`), and request plumbing.

pub mod metrics;
pub mod openapi;

use std::future::Future;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::error::{ApiError, FieldError};
use crate::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .merge(crate::pacs::routes::router())
        .merge(crate::studies::routes::router())
        .merge(crate::studies::sync::routes::router())
        .merge(crate::reports::routes::router())
        .merge(crate::orders::routes::router())
        .merge(crate::interop::hl7::routes::router())
        .merge(crate::interop::fhir::router())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Serves until `shutdown` completes, then drains in-flight requests.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let app = router(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.db.check_ready().await {
        Ok(()) => Json(json!({"status": "ready", "database": state.db.backend()})).into_response(),
        Err(e) => {
            tracing::warn!(error.cause_chain = ?e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not ready", "reason": e.to_string()}))).into_response()
        }
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(&state.db);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn openapi_json() -> Json<Value> {
    Json(openapi::document())
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Records every request by route template (never the raw path: it may hold PHI).
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state.metrics.observe_http(method.as_str(), &route, status, elapsed);
    if route != "/metrics" && route != "/healthz" {
        tracing::info!(method = %method, route = %route, status, latency_ms = elapsed.as_millis() as u64, "request");
    }
    response
}

/// A JSON object request body. Rejections are problem+json: 415 without a JSON
/// content type, 400 for malformed JSON or a body that is not an object.
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if media != "application/json" && !media.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType("send Content-Type: application/json".into()));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(JsonObject(map)),
            Ok(_) => Err(ApiError::BadRequest("the body must be a JSON object".into())),
            Err(e) => Err(ApiError::BadRequest(format!("the body is not valid JSON: {e}"))),
        }
    }
}

/// A resource id from the path; a malformed id cannot name a row, so it is a 404.
pub fn parse_uuid(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::NotFound)
}

/// A `true`/`false` query parameter; anything else is reported as a field error.
pub fn bool_param(value: Option<&String>, name: &str, errors: &mut Vec<FieldError>) -> Option<bool> {
    match value.map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            errors.push(FieldError::new(name, "must be true or false"));
            None
        }
    }
}

/// Reports unknown query parameters by name.
pub fn reject_unknown_params<'a>(keys: impl Iterator<Item = &'a String>, allowed: &[&str], errors: &mut Vec<FieldError>) {
    for key in keys {
        if !allowed.contains(&key.as_str()) {
            errors.push(FieldError::new(key.as_str(), format!("unknown query parameter; allowed: {}", allowed.join(", "))));
        }
    }
}
