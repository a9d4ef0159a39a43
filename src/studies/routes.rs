//! REST routes under `/v1/radiology/imaging-studies` (read side of the study index).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::store::{Bound, StudyQuery, StudyRow};
use crate::auth::{Role, TenantCtx};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::http::{parse_uuid, reject_unknown_params};
use crate::pagination::{Page, PageRequest};
use crate::AppState;

pub const BASE: &str = "/v1/radiology/imaging-studies";

pub fn router() -> Router<AppState> {
    Router::new().route(BASE, get(list)).route(&format!("{BASE}/{{id}}"), get(read))
}

/// A study as REST clients see it; `fhir` is the ImagingStudy resource.
#[derive(Debug, Serialize)]
pub struct StudyView {
    pub id: Uuid,
    pub study_instance_uid: String,
    pub patient_id: Option<String>,
    pub encounter_id: Option<String>,
    pub order_id: Option<Uuid>,
    pub accession_number: Option<String>,
    pub modality: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub status: String,
    pub pacs_endpoint_id: Option<Uuid>,
    pub description: Option<String>,
    pub number_of_series: Option<i32>,
    pub number_of_instances: Option<i32>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub fhir: Value,
}

impl From<StudyRow> for StudyView {
    fn from(r: StudyRow) -> Self {
        let fhir = super::fhir::to_fhir(&r);
        StudyView {
            id: r.id,
            study_instance_uid: r.pacs_study_uid,
            patient_id: r.patient_id,
            encounter_id: r.encounter_id,
            order_id: r.order_id,
            accession_number: r.accession_number,
            modality: r.modality,
            started_at: r.started_at,
            status: r.status,
            pacs_endpoint_id: r.pacs_endpoint_id,
            description: r.description,
            number_of_series: r.number_of_series,
            number_of_instances: r.number_of_instances,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            fhir,
        }
    }
}

const FILTERS: &[&str] = &[
    "patient_id", "accession_number", "study_instance_uid", "modality", "started_from", "started_to", "status",
    "pacs_endpoint_id", "tag", "limit", "cursor",
];

/// Reads the REST filters into the shared study query, naming every bad parameter.
fn study_query(q: &HashMap<String, String>, errors: &mut Vec<FieldError>) -> StudyQuery {
    reject_unknown_params(q.keys(), FILTERS, errors);
    let mut query = StudyQuery {
        patient_id: q.get("patient_id").cloned(),
        accession_number: q.get("accession_number").cloned(),
        study_instance_uid: q.get("study_instance_uid").cloned(),
        ..StudyQuery::default()
    };
    if let Some(v) = q.get("pacs_endpoint_id") {
        match Uuid::parse_str(v) {
            Ok(id) => query.pacs_endpoint_id = Some(id),
            Err(_) => errors.push(FieldError::new("pacs_endpoint_id", "must be a UUID")),
        }
    }
    if let Some(status) = q.get("status") {
        if super::STATUSES.contains(&status.as_str()) {
            query.statuses.push(status.clone());
        } else {
            errors.push(FieldError::new("status", format!("must be one of {}", super::STATUSES.join(", "))));
        }
    }
    if let Some(m) = q.get("modality") {
        query.modalities = m.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
    }
    // Dates or date-times; `started_to` includes the whole of its day (or second).
    for (field, lower) in [("started_from", true), ("started_to", false)] {
        if let Some(v) = q.get(field) {
            match crate::interop::fhir::params::date_range(v) {
                Some((lo, hi)) => query.started.push(if lower { Bound::From(lo) } else { Bound::Before(hi) }),
                None => errors.push(FieldError::new(field, "must be a date (YYYY-MM-DD) or date-time (RFC 3339)")),
            }
        }
    }
    if let Some(tag) = q.get("tag") {
        let (system, code) = crate::interop::fhir::params::token(tag);
        query.tags.push((system.filter(|s| !s.is_empty()), code));
    }
    query
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn list(
    State(state): State<AppState>,
    ctx: TenantCtx,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Page<StudyView>>> {
    ctx.require(Role::Read)?;
    let mut errors = Vec::new();
    let query = study_query(&q, &mut errors);
    let page = PageRequest::parse(q.get("limit").map(String::as_str), q.get("cursor").map(String::as_str), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let rows = state.studies.list(ctx.tenant, &query, &page).await?;
    Ok(Json(Page::from_rows(rows, &page, StudyRow::cursor, StudyView::from)))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn read(State(state): State<AppState>, ctx: TenantCtx, Path(id): Path<String>) -> ApiResult<Json<StudyView>> {
    ctx.require(Role::Read)?;
    let row = state.studies.get(ctx.tenant, parse_uuid(&id)?).await?;
    Ok(Json(row.into()))
}
