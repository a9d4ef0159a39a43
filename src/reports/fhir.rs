//! DiagnosticReport on the FHIR R4 facade: read, vread and search.
//!
//! Search parameters: `_id`, `patient` (`Patient/<id>` or `<id>`), `identifier`,
//! `status`, `category`, `code` (tokens `system|code`, `|code` or `code`), `date`
//! (effective[x]; prefixes eq, ge, le, gt, lt), `based-on` (`ServiceRequest/<id>`),
//! `imaging-study` (custom: `ImagingStudy/<id>`, or `imaging-study:identifier` with a
//! Study Instance UID), `_tag`, `_lastUpdated`, `_count`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::store::{ReportQuery, ReportRow, StudyLink, StudyMatch};
use crate::auth::TenantId;
use crate::db::StoreError;
use crate::interop::fhir::params::{date_bounds, token};
use crate::interop::fhir::resource::parse_reference;
use crate::interop::fhir::{fhir_json, resource_response, FhirCtx, FhirError, SearchCommon, BASE};
use crate::studies::mapping::DICOM_UID_SYSTEM;
use crate::AppState;

/// Where the custom `imaging-study` search parameter is defined.
pub const IMAGING_STUDY_PARAM: &str = "urn:radiology-service:fhir:SearchParameter/DiagnosticReport-imaging-study";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{BASE}/DiagnosticReport"), get(search))
        .route(&format!("{BASE}/DiagnosticReport/{{id}}"), get(read))
        .route(&format!("{BASE}/DiagnosticReport/{{id}}/_history/{{vid}}"), get(vread))
}

const SEARCH_PARAMS: &[(&str, &str, &str)] = &[
    ("_id", "token", "Logical id of the report"),
    ("patient", "reference", "The subject: Patient/<id> or <id>"),
    ("identifier", "token", "A business identifier of the report (system|value)"),
    ("status", "token", "registered | partial | preliminary | final | amended | corrected | appended | cancelled | entered-in-error | unknown"),
    ("category", "token", "Service category, e.g. http://loinc.org|LP29684-5 (Radiology)"),
    ("code", "token", "The report's code, e.g. a LOINC code"),
    ("date", "date", "effective[x]; prefixes eq, ge, le, gt, lt"),
    ("based-on", "reference", "The order: ServiceRequest/<id>"),
    ("imaging-study", "reference", "Custom: a study the report is about, ImagingStudy/<id>; imaging-study:identifier=urn:dicom:uid|urn:oid:<Study Instance UID>"),
    ("_tag", "token", "meta.tag, e.g. historical"),
    ("_lastUpdated", "date", "When the report last changed here; prefixes eq, ge, le, gt, lt"),
];

pub fn capability() -> Value {
    json!({
        "type": "DiagnosticReport",
        "interaction": [{"code": "read"}, {"code": "vread"}, {"code": "search-type"}],
        "versioning": "versioned",
        "readHistory": true,
        "searchParam": SEARCH_PARAMS.iter().map(|(name, kind, doc)| {
            let mut p = json!({"name": name, "type": kind, "documentation": doc});
            if *name == "imaging-study" {
                p["definition"] = json!(IMAGING_STUDY_PARAM);
            }
            p
        }).collect::<Vec<_>>()
    })
}

/// The DiagnosticReport of a row: the stored resource with `id`, `meta.versionId`,
/// `meta.lastUpdated`, `status`, and `imagingStudy` references pointing at our studies
/// wherever they exist now.
pub fn render(row: &ReportRow, payload: &Value, version: i32, last_updated: chrono::DateTime<chrono::Utc>, status: &str, links: &[&StudyLink]) -> Value {
    let mut r: Map<String, Value> = payload.as_object().cloned().unwrap_or_default();
    let mut meta: Map<String, Value> = r.get("meta").and_then(Value::as_object).cloned().unwrap_or_default();
    meta.insert("versionId".into(), json!(version.to_string()));
    meta.insert("lastUpdated".into(), json!(last_updated.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)));
    let mut out = Map::new();
    out.insert("resourceType".into(), json!("DiagnosticReport"));
    out.insert("id".into(), json!(row.id));
    out.insert("meta".into(), Value::Object(meta));
    r.remove("resourceType");
    r.remove("id");
    r.remove("meta");
    out.extend(r);
    out.insert("status".into(), json!(status));
    if let Some(Value::Array(studies)) = out.get_mut("imagingStudy") {
        for s in studies.iter_mut() {
            resolve_study_reference(s, links);
        }
    }
    Value::Object(out)
}

/// Points one `imagingStudy` reference at our study when it exists, keeping (or
/// adding) the Study Instance UID as its identifier.
fn resolve_study_reference(reference: &mut Value, links: &[&StudyLink]) {
    let ref_id = reference.get("reference").and_then(Value::as_str).and_then(parse_reference).and_then(|(_, id)| id);
    let uid = reference
        .pointer("/identifier/value")
        .and_then(Value::as_str)
        .filter(|_| reference.pointer("/identifier/system").and_then(Value::as_str) == Some(DICOM_UID_SYSTEM))
        .map(|v| v.strip_prefix("urn:oid:").unwrap_or(v).to_string());
    let link = links.iter().find(|l| {
        (ref_id.is_some() && l.ref_id == ref_id) || (l.ref_id.is_none() && uid.is_some() && l.study_uid == uid)
    });
    let Some(link) = link else { return };
    let (Some(study_id), Some(obj)) = (link.study_id, reference.as_object_mut()) else { return };
    obj.insert("reference".into(), json!(format!("ImagingStudy/{study_id}")));
    if let Some(uid) = &link.study_uid {
        obj.entry("identifier").or_insert_with(|| json!({"system": DICOM_UID_SYSTEM, "value": format!("urn:oid:{uid}")}));
    }
}

/// Renders rows as FHIR, resolving their study links in one query.
pub async fn to_fhir_many(state: &AppState, tenant: TenantId, rows: &[ReportRow]) -> Result<Vec<Value>, StoreError> {
    let links = state.reports.study_links(tenant, rows).await?;
    let mut by_report: HashMap<Uuid, Vec<&StudyLink>> = HashMap::new();
    for l in &links {
        by_report.entry(l.report_id).or_default().push(l);
    }
    Ok(rows
        .iter()
        .map(|row| render(row, &row.payload.0, row.version, row.updated_at, &row.status, by_report.get(&row.id).map(Vec::as_slice).unwrap_or(&[])))
        .collect())
}

async fn load(state: &AppState, tenant: TenantId, id: &str) -> Result<ReportRow, FhirError> {
    let id = Uuid::parse_str(id).map_err(|_| FhirError::not_found(&format!("DiagnosticReport/{id}")))?;
    match state.reports.get(tenant, id).await {
        Ok(row) => Ok(row),
        Err(StoreError::NotFound) => Err(FhirError::not_found(&format!("DiagnosticReport/{id}"))),
        Err(e) => Err(e.into()),
    }
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.0.tenant))]
async fn read(State(state): State<AppState>, ctx: FhirCtx, Path(id): Path<String>) -> Result<Response, FhirError> {
    let row = load(&state, ctx.0.tenant, &id).await?;
    let resource = to_fhir_many(&state, ctx.0.tenant, std::slice::from_ref(&row)).await?.remove(0);
    Ok(resource_response(resource, row.version, row.updated_at))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.0.tenant))]
async fn vread(State(state): State<AppState>, ctx: FhirCtx, Path((id, vid)): Path<(String, String)>) -> Result<Response, FhirError> {
    let row = load(&state, ctx.0.tenant, &id).await?;
    let gone = || FhirError::not_found(&format!("DiagnosticReport/{id}/_history/{vid}"));
    let version: i32 = vid.parse().map_err(|_| gone())?;
    let v = match state.reports.get_version(ctx.0.tenant, row.id, version).await {
        Ok(v) => v,
        Err(StoreError::NotFound) => return Err(gone()),
        Err(e) => return Err(e.into()),
    };
    let links = state.reports.study_links(ctx.0.tenant, std::slice::from_ref(&row)).await?;
    let links: Vec<&StudyLink> = links.iter().collect();
    let resource = render(&row, &v.payload.0, v.version, v.recorded_at, &v.status, &links);
    Ok(resource_response(resource, v.version, v.recorded_at))
}

/// Token alternatives of a comma-separated value.
fn tokens(value: &str) -> Vec<(Option<String>, String)> {
    value.split(',').map(token).collect()
}

/// Turns FHIR search parameters into a report query. `imaging-study` values naming one
/// of our studies by id are resolved to its UID by the caller (`study_ids`).
fn parse_search(params: &[(String, String)]) -> (ReportQuery, SearchCommon, Vec<Uuid>) {
    let mut q = ReportQuery::default();
    let mut study_ids = Vec::new();
    let common = SearchCommon::parse(params, |name, value, errors| {
        match name {
            "_id" => q.ids.extend(value.split(',').map(|v| Uuid::parse_str(v).unwrap_or(Uuid::nil()))),
            "patient" | "subject" => q.patient_id = Some(value.strip_prefix("Patient/").unwrap_or(value).to_string()),
            "patient:identifier" => q.patient_id = Some(token(value).1),
            "identifier" => q.tokens.push(("identifier", tokens(value))),
            "category" => q.tokens.push(("category", tokens(value))),
            "code" => q.tokens.push(("code", tokens(value))),
            "based-on" => q.tokens.push(("based-on", value.split(',').map(|v| (None, v.to_string())).collect())),
            "status" => {
                for v in value.split(',') {
                    if super::STATUSES.contains(&v) {
                        q.statuses.push(v.to_string());
                    } else {
                        errors.push(format!("status: {v:?} is not one of {}", super::STATUSES.join(", ")));
                    }
                }
            }
            "date" => match date_bounds(value) {
                Ok(b) => q.effective.extend(b),
                Err(e) => errors.push(format!("date: {e}")),
            },
            "imaging-study" => {
                let m = q.imaging_study.get_or_insert_with(StudyMatch::default);
                for v in value.split(',') {
                    let id = v.strip_prefix("ImagingStudy/").unwrap_or(v).to_string();
                    if let Ok(uuid) = Uuid::parse_str(&id) {
                        study_ids.push(uuid);
                    }
                    m.ref_ids.push(id);
                }
            }
            "imaging-study:identifier" => {
                let m = q.imaging_study.get_or_insert_with(StudyMatch::default);
                for v in value.split(',') {
                    let (_, code) = token(v);
                    m.uids.push(code.strip_prefix("urn:oid:").unwrap_or(&code).to_string());
                }
            }
            _ => return false,
        }
        true
    });
    q.tags = common.tags.clone();
    q.last_updated = common.last_updated.clone();
    (q, common, study_ids)
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.0.tenant))]
async fn search(
    State(state): State<AppState>,
    ctx: FhirCtx,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, FhirError> {
    let (mut query, common, study_ids) = parse_search(&params);
    let mut supported: Vec<&str> = SEARCH_PARAMS.iter().map(|p| p.0).collect();
    supported.push("imaging-study:identifier");
    common.check(&headers, "DiagnosticReport", &supported)?;
    let tenant = ctx.0.tenant;
    add_study_uids(&state, tenant, &mut query, &study_ids).await?;
    let page = common.page();
    let (rows, total) = tokio::try_join!(state.reports.list(tenant, &query, &page), state.reports.count(tenant, &query))?;
    let resources = to_fhir_many(&state, tenant, &rows).await?;
    let cursors = rows.iter().map(ReportRow::cursor).collect();
    let resources = rows.iter().map(|r| r.id.to_string()).zip(resources).collect();
    Ok(fhir_json(StatusCode::OK, common.bundle(&headers, "DiagnosticReport", total, resources, cursors)))
}

/// A search by one of our study ids also matches reports that name that study by UID
/// or by its id in the source it was imported from.
pub async fn add_study_uids(state: &AppState, tenant: TenantId, query: &mut ReportQuery, study_ids: &[Uuid]) -> Result<(), StoreError> {
    for id in study_ids {
        match state.studies.get(tenant, *id).await {
            Ok(study) => {
                if let Some(m) = query.imaging_study.as_mut() {
                    m.uids.push(study.pacs_study_uid);
                }
            }
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
