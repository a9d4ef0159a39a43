//! REST routes under `/v1/radiology/orders` (read side of the orders store; orders are
//! written by the RIS over HL7 v2).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::store::{OrderQuery, OrderRow, OrderStudyLink};
use crate::auth::{Role, TenantCtx};
use crate::db::sql::Bound;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::http::{parse_uuid, reject_unknown_params};
use crate::interop::fhir::params::date_range;
use crate::pagination::{Page, PageRequest};
use crate::AppState;

pub const BASE: &str = "/v1/radiology/orders";

pub fn router() -> Router<AppState> {
    Router::new().route(BASE, get(list)).route(&format!("{BASE}/{{id}}"), get(read))
}

/// The imaging study an order led to, once it exists.
#[derive(Debug, Serialize)]
pub struct StudyRef {
    pub id: Uuid,
    pub study_instance_uid: String,
    pub status: String,
}

/// An order as REST clients see it; `fhir` is the ServiceRequest resource.
#[derive(Debug, Serialize)]
pub struct OrderView {
    pub id: Uuid,
    pub placer_number: Option<String>,
    pub filler_number: Option<String>,
    pub accession_number: Option<String>,
    pub patient_id: Option<String>,
    pub status: String,
    /// The last order control applied (ORC-1) and the RIS order status (ORC-5).
    pub order_control: String,
    pub order_status: Option<String>,
    pub requested_procedure_id: Option<String>,
    pub procedure_code: Option<String>,
    pub modality: Option<String>,
    pub priority: Option<String>,
    pub ordering_provider: Option<String>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub study_instance_uid: Option<String>,
    pub study: Option<StudyRef>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub fhir: Value,
}

fn view(r: OrderRow, link: Option<&OrderStudyLink>, fhir: Value) -> OrderView {
    OrderView {
        id: r.id,
        placer_number: r.placer_number,
        filler_number: r.filler_number,
        accession_number: r.accession_number,
        patient_id: r.patient_id,
        status: r.status,
        order_control: r.order_control,
        order_status: r.order_status,
        requested_procedure_id: r.requested_procedure_id,
        procedure_code: r.procedure_code,
        modality: r.modality,
        priority: r.priority,
        ordering_provider: r.ordering_provider,
        scheduled_at: r.scheduled_at,
        study_instance_uid: r.study_uid,
        study: link.map(|l| StudyRef { id: l.study_id, study_instance_uid: l.study_uid.clone(), status: l.study_status.clone() }),
        version: r.version,
        created_at: r.created_at,
        updated_at: r.updated_at,
        fhir,
    }
}

const FILTERS: &[&str] = &[
    "patient_id", "status", "identifier", "accession_number", "study_instance_uid", "modality", "scheduled_from", "scheduled_to", "limit",
    "cursor",
];

fn order_query(q: &HashMap<String, String>, errors: &mut Vec<FieldError>) -> OrderQuery {
    reject_unknown_params(q.keys(), FILTERS, errors);
    let mut query = OrderQuery { patient_id: q.get("patient_id").cloned(), modality: q.get("modality").cloned(), ..OrderQuery::default() };
    if let Some(status) = q.get("status") {
        if super::STATUSES.contains(&status.as_str()) {
            query.statuses.push(status.clone());
        } else {
            errors.push(FieldError::new("status", format!("must be one of {}", super::STATUSES.join(", "))));
        }
    }
    query.identifiers.extend(q.get("identifier").cloned());
    query.accession_numbers.extend(q.get("accession_number").cloned());
    query.study_uids.extend(q.get("study_instance_uid").cloned());
    for (field, lower) in [("scheduled_from", true), ("scheduled_to", false)] {
        if let Some(v) = q.get(field) {
            match date_range(v) {
                Some((lo, hi)) => query.scheduled.push(if lower { Bound::From(lo) } else { Bound::Before(hi) }),
                None => errors.push(FieldError::new(field, "must be a date (YYYY-MM-DD) or date-time (RFC 3339)")),
            }
        }
    }
    query
}

async fn views(state: &AppState, ctx: &TenantCtx, rows: &[OrderRow]) -> ApiResult<HashMap<Uuid, (Option<OrderStudyLink>, Value)>> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let links = state.orders.study_links(ctx.tenant, &ids).await?;
    let fhir = super::fhir::to_fhir_many(state, ctx.tenant, rows).await?;
    Ok(rows.iter().zip(fhir).map(|(r, f)| (r.id, (links.iter().find(|l| l.order_id == r.id).cloned(), f))).collect())
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn list(State(state): State<AppState>, ctx: TenantCtx, Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<Page<OrderView>>> {
    ctx.require(Role::Read)?;
    let mut errors = Vec::new();
    let query = order_query(&q, &mut errors);
    let page = PageRequest::parse(q.get("limit").map(String::as_str), q.get("cursor").map(String::as_str), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let rows = state.orders.list(ctx.tenant, &query, &page).await?;
    let extra = views(&state, &ctx, &rows).await?;
    Ok(Json(Page::from_rows(rows, &page, OrderRow::cursor, |r| {
        let (link, fhir) = extra.get(&r.id).cloned().unwrap_or((None, Value::Null));
        view(r, link.as_ref(), fhir)
    })))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn read(State(state): State<AppState>, ctx: TenantCtx, Path(id): Path<String>) -> ApiResult<Json<OrderView>> {
    ctx.require(Role::Read)?;
    let row = state.orders.get(ctx.tenant, parse_uuid(&id)?).await?;
    let (link, fhir) = views(&state, &ctx, std::slice::from_ref(&row)).await?.remove(&row.id).unwrap_or((None, Value::Null));
    Ok(Json(view(row, link.as_ref(), fhir)))
}
