//! REST routes under `/v1/radiology/pacs-endpoints`.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::collections::HashMap;
use uuid::Uuid;

use super::service::EndpointView;
use super::store::EndpointFilter;
use crate::auth::{Role, TenantCtx};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::http::{bool_param, parse_uuid, JsonObject};
use crate::pagination::PageRequest;
use crate::AppState;

pub const BASE: &str = "/v1/radiology/pacs-endpoints";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(BASE, get(list).post(create))
        .route(&format!("{BASE}/{{id}}"), get(read).patch(patch).delete(delete))
        .route(&format!("{BASE}/{{id}}/test"), get(test))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn create(State(state): State<AppState>, ctx: TenantCtx, JsonObject(body): JsonObject) -> ApiResult<Response> {
    ctx.require(Role::Admin)?;
    let row = state.pacs.create(ctx.tenant, &body).await?;
    let location = format!("{BASE}/{}", row.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(EndpointView::from(row))).into_response())
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn list(State(state): State<AppState>, ctx: TenantCtx, Query(q): Query<HashMap<String, String>>) -> ApiResult<Response> {
    ctx.require(Role::Read)?;
    let mut errors = Vec::new();
    for key in q.keys() {
        if !["facility_id", "node_id", "active", "limit", "cursor"].contains(&key.as_str()) {
            errors.push(FieldError::new(key.as_str(), "unknown query parameter; allowed: facility_id, node_id, active, limit, cursor"));
        }
    }
    let facility_id = q.get("facility_id").and_then(|v| match Uuid::parse_str(v) {
        Ok(u) => Some(u),
        Err(_) => {
            errors.push(FieldError::new("facility_id", "must be a UUID"));
            None
        }
    });
    let active = bool_param(q.get("active"), "active", &mut errors);
    let page = PageRequest::parse(q.get("limit").map(String::as_str), q.get("cursor").map(String::as_str), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let filter = EndpointFilter { facility_id, node_id: q.get("node_id").cloned(), active };
    Ok(Json(state.pacs.list(ctx.tenant, &filter, &page).await?).into_response())
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn read(State(state): State<AppState>, ctx: TenantCtx, Path(id): Path<String>) -> ApiResult<Json<EndpointView>> {
    ctx.require(Role::Read)?;
    let row = state.pacs.get(ctx.tenant, parse_uuid(&id)?).await?;
    Ok(Json(row.into()))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn patch(
    State(state): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<EndpointView>> {
    ctx.require(Role::Admin)?;
    let id = parse_uuid(&id)?;
    let before = state.pacs.get(ctx.tenant, id).await?;
    let row = state.pacs.patch(ctx.tenant, id, &body).await?;
    // Another PACS behind the endpoint: its history must be backfilled, not polled from the old watermark.
    if row.qido_url != before.qido_url && row.active {
        let default_interval = state.sync.settings().interval.as_secs() as i32;
        state.sync.store().request_run(ctx.tenant, id, crate::db::now(), true, None, default_interval).await?;
        tracing::info!(tenant_id = %ctx.tenant, endpoint_id = %id, "qido_url changed; full re-backfill requested");
    }
    Ok(Json(row.into()))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn delete(
    State(state): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    ctx.require(Role::Admin)?;
    let mut errors = Vec::new();
    let purge = bool_param(q.get("purge"), "purge", &mut errors).unwrap_or(false);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    state.pacs.delete(ctx.tenant, parse_uuid(&id)?, purge).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn test(
    State(state): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    // Testing reaches out to the PACS and records the result: an administrator's act.
    ctx.require(Role::Admin)?;
    let patient_id = q.get("patient_id").map(|p| p.trim()).filter(|p| !p.is_empty());
    let report = state.pacs.test(ctx.tenant, parse_uuid(&id)?, patient_id).await?;
    Ok(Json(report).into_response())
}
