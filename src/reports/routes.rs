//! REST routes under `/v1/radiology/reports` (read side of the reports store).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::store::{ReportQuery, ReportRow, StudyMatch};
use crate::auth::{Role, TenantCtx};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::http::{bool_param, parse_uuid, reject_unknown_params};
use crate::interop::fhir::params::{date_range, token};
use crate::pagination::{Page, PageRequest};
use crate::studies::store::Bound;
use crate::AppState;

pub const BASE: &str = "/v1/radiology/reports";

pub fn router() -> Router<AppState> {
    Router::new().route(BASE, get(list)).route(&format!("{BASE}/{{id}}"), get(read))
}

/// A report as REST clients see it; `fhir` is the DiagnosticReport resource.
#[derive(Debug, Serialize)]
pub struct ReportView {
    pub id: Uuid,
    /// `identifier:<system>|<value>` or `id:<source id>`: what makes a re-import update it.
    pub business_key: String,
    pub patient_id: Option<String>,
    pub status: String,
    pub effective_at: Option<DateTime<Utc>>,
    pub issued: Option<DateTime<Utc>>,
    pub critical: bool,
    pub order_id: Option<Uuid>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub fhir: Value,
}

fn view(r: ReportRow, fhir: Value) -> ReportView {
    ReportView {
        id: r.id,
        business_key: r.business_key,
        patient_id: r.patient_id,
        status: r.status,
        effective_at: r.effective_at,
        issued: r.issued,
        critical: r.critical,
        order_id: r.order_id,
        version: r.version,
        created_at: r.created_at,
        updated_at: r.updated_at,
        fhir,
    }
}

const FILTERS: &[&str] = &[
    "patient_id", "identifier", "status", "category", "code", "date_from", "date_to", "based_on", "imaging_study", "tag",
    "critical", "limit", "cursor",
];

/// Reads the REST filters into the shared report query, naming every bad parameter.
/// `imaging_study` takes one of our study ids or a Study Instance UID.
fn report_query(q: &HashMap<String, String>, errors: &mut Vec<FieldError>) -> (ReportQuery, Vec<Uuid>) {
    reject_unknown_params(q.keys(), FILTERS, errors);
    let mut query = ReportQuery { patient_id: q.get("patient_id").cloned(), ..ReportQuery::default() };
    let mut study_ids = Vec::new();
    if let Some(status) = q.get("status") {
        if super::STATUSES.contains(&status.as_str()) {
            query.statuses.push(status.clone());
        } else {
            errors.push(FieldError::new("status", format!("must be one of {}", super::STATUSES.join(", "))));
        }
    }
    for (field, param) in [("identifier", "identifier"), ("category", "category"), ("code", "code")] {
        if let Some(v) = q.get(field) {
            query.tokens.push((param, vec![token(v)]));
        }
    }
    if let Some(v) = q.get("based_on") {
        query.tokens.push(("based-on", vec![(None, v.clone())]));
    }
    if let Some(v) = q.get("imaging_study") {
        let mut m = StudyMatch::default();
        match Uuid::parse_str(v) {
            Ok(id) => {
                study_ids.push(id);
                m.ref_ids.push(id.to_string());
            }
            Err(_) => m.uids.push(v.strip_prefix("urn:oid:").unwrap_or(v).to_string()),
        }
        query.imaging_study = Some(m);
    }
    for (field, lower) in [("date_from", true), ("date_to", false)] {
        if let Some(v) = q.get(field) {
            match date_range(v) {
                Some((lo, hi)) => query.effective.push(if lower { Bound::From(lo) } else { Bound::Before(hi) }),
                None => errors.push(FieldError::new(field, "must be a date (YYYY-MM-DD) or date-time (RFC 3339)")),
            }
        }
    }
    if let Some(tag) = q.get("tag") {
        let (system, code) = token(tag);
        query.tags.push((system.filter(|s| !s.is_empty()), code));
    }
    query.critical = bool_param(q.get("critical"), "critical", errors);
    (query, study_ids)
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn list(State(state): State<AppState>, ctx: TenantCtx, Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<Page<ReportView>>> {
    ctx.require(Role::Read)?;
    let mut errors = Vec::new();
    let (mut query, study_ids) = report_query(&q, &mut errors);
    let page = PageRequest::parse(q.get("limit").map(String::as_str), q.get("cursor").map(String::as_str), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    super::fhir::add_study_uids(&state, ctx.tenant, &mut query, &study_ids).await?;
    let rows = state.reports.list(ctx.tenant, &query, &page).await?;
    let fhir: HashMap<Uuid, Value> = rows.iter().map(|r| r.id).zip(super::fhir::to_fhir_many(&state, ctx.tenant, &rows).await?).collect();
    Ok(Json(Page::from_rows(rows, &page, ReportRow::cursor, |r| {
        let resource = fhir.get(&r.id).cloned().unwrap_or(Value::Null);
        view(r, resource)
    })))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn read(State(state): State<AppState>, ctx: TenantCtx, Path(id): Path<String>) -> ApiResult<Json<ReportView>> {
    ctx.require(Role::Read)?;
    let row = state.reports.get(ctx.tenant, parse_uuid(&id)?).await?;
    let fhir = super::fhir::to_fhir_many(&state, ctx.tenant, std::slice::from_ref(&row)).await?.remove(0);
    Ok(Json(view(row, fhir)))
}
