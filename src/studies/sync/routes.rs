//! Sync control: `POST /v1/radiology/pacs-endpoints/{id}/sync` (run now; `?full=true`
//! re-backfills; `?interval_seconds=N` sets the endpoint's poll interval) and `GET …/sync` (state, watermark, last run, counts, last error).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::store::SyncStateRow;
use crate::auth::{Role, TenantCtx};
use crate::db::StoreError;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::http::{bool_param, parse_uuid, reject_unknown_params};
use crate::pacs::EndpointRow;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/radiology/pacs-endpoints/{id}/sync", get(status).post(run_now))
}

fn view(endpoint: &EndpointRow, row: Option<&SyncStateRow>) -> Value {
    let now = crate::db::now();
    let Some(row) = row else {
        return json!({
            "endpoint_id": endpoint.id,
            "state": if endpoint.active { "pending" } else { "inactive" },
            "phase": "backfill", "watermark": null, "next_run_at": null, "last_run": null, "last_error": null,
            "consecutive_failures": 0, "counts": {"seen": 0, "created": 0, "updated": 0, "failed": 0}, "progress": null,
        });
    };
    let leased = row.lease_until.is_some_and(|until| until > now);
    let state = if !endpoint.active {
        "inactive"
    } else if row.status == "degraded" {
        "degraded"
    } else if leased {
        "running"
    } else if row.progress.is_some() {
        "interrupted" // resumes from its checkpoint at the next claim
    } else {
        "idle"
    };
    let phase = row
        .progress
        .as_ref()
        .and_then(|p| p.0.get("phase").cloned())
        .unwrap_or_else(|| json!(if row.watermark.is_some() { "incremental" } else { "backfill" }));
    json!({
        "endpoint_id": endpoint.id,
        "state": state,
        "phase": phase,
        "watermark": row.watermark,
        "next_run_at": row.next_run_at,
        "interval_seconds": row.interval_seconds,
        "full_requested": row.full_requested,
        "consecutive_failures": row.consecutive_failures,
        "last_error": row.last_error,
        "last_run": row.last_run.as_ref().map(|j| &j.0),
        "counts": {"seen": row.total_seen, "created": row.total_created, "updated": row.total_updated, "failed": row.total_failed},
        "progress": row.progress.as_ref().map(|j| &j.0),
    })
}

async fn load(state: &AppState, ctx: &TenantCtx, id: &str) -> ApiResult<(EndpointRow, Option<SyncStateRow>)> {
    let endpoint = state.pacs.get(ctx.tenant, parse_uuid(id)?).await?;
    let row = match state.sync.store().get(ctx.tenant, endpoint.id).await {
        Ok(row) => Some(row),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    Ok((endpoint, row))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn status(State(state): State<AppState>, ctx: TenantCtx, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    ctx.require(Role::Read)?;
    let (endpoint, row) = load(&state, &ctx, &id).await?;
    Ok(Json(view(&endpoint, row.as_ref())))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn run_now(
    State(state): State<AppState>,
    ctx: TenantCtx,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    ctx.require(Role::Admin)?;
    let mut errors = Vec::new();
    let full = bool_param(q.get("full"), "full", &mut errors).unwrap_or(false);
    let interval = match q.get("interval_seconds").map(|v| v.parse::<i32>()) {
        None => None,
        Some(Ok(n)) if (10..=86_400).contains(&n) => Some(n),
        Some(_) => {
            errors.push(FieldError::new("interval_seconds", "must be an integer from 10 to 86400"));
            None
        }
    };
    reject_unknown_params(q.keys(), &["full", "interval_seconds"], &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let endpoint = state.pacs.get(ctx.tenant, parse_uuid(&id)?).await?;
    if !endpoint.active {
        return Err(ApiError::Conflict("the endpoint is inactive; activate it to sync".into()));
    }
    let default_interval = state.sync.settings().interval.as_secs() as i32;
    state.sync.store().request_run(ctx.tenant, endpoint.id, crate::db::now(), full, interval, default_interval).await?;
    tracing::info!(tenant_id = %ctx.tenant, endpoint_id = %endpoint.id, full, "sync requested");
    let (endpoint, row) = load(&state, &ctx, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(view(&endpoint, row.as_ref()))))
}
