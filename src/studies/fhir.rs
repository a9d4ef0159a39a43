//! ImagingStudy on the FHIR R4 facade: read, vread and search.
//!
//! Search parameters: `_id`, `patient` (PatientID; `Patient/<id>` or `<id>`),
//! `patient:identifier`, `identifier` (Study Instance UID as `urn:dicom:uid|urn:oid:…`
//! or an accession number), `modality`, `started`, `status`, `_tag`, `_lastUpdated`,
//! `_count`; paging with the opaque `_cursor` of the `next` link. Unknown parameters
//! are refused with an OperationOutcome unless the client sends
//! `Prefer: handling=lenient`, in which case they are reported in the Bundle.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::mapping::{DCM_SYSTEM, DICOM_UID_SYSTEM};
use super::store::{StudyQuery, StudyRow};
use crate::auth::TenantId;
use crate::db::StoreError;
use crate::interop::fhir::params::{date_bounds, token};
use crate::interop::fhir::{fhir_json, resource_response, FhirCtx, FhirError, SearchCommon, BASE};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{BASE}/ImagingStudy"), get(search))
        .route(&format!("{BASE}/ImagingStudy/{{id}}"), get(read))
        .route(&format!("{BASE}/ImagingStudy/{{id}}/_history/{{vid}}"), get(vread))
}

/// The search parameters the facade really supports (also the CapabilityStatement).
const SEARCH_PARAMS: &[(&str, &str, &str)] = &[
    ("_id", "token", "Logical id of the study"),
    ("patient", "reference", "The PACS PatientID: Patient/<PatientID> or <PatientID>"),
    ("identifier", "token", "Study Instance UID (urn:dicom:uid|urn:oid:<uid>) or accession number"),
    ("modality", "token", "A modality in the study (DCM code)"),
    ("started", "date", "When the study started; prefixes eq, ge, le, gt, lt"),
    ("status", "token", "registered | available | cancelled | entered-in-error | unknown"),
    ("_tag", "token", "meta.tag, e.g. historical"),
    ("_lastUpdated", "date", "When the study last changed here; prefixes eq, ge, le, gt, lt"),
];

pub fn capability() -> Value {
    json!({
        "type": "ImagingStudy",
        "interaction": [{"code": "read"}, {"code": "vread"}, {"code": "search-type"}],
        "versioning": "versioned",
        "readHistory": true,
        "searchParam": SEARCH_PARAMS.iter().map(|(name, kind, doc)| json!({"name": name, "type": kind, "documentation": doc})).collect::<Vec<_>>()
    })
}

/// The FHIR ImagingStudy of a row: the stored resource with `id`, `meta.versionId`,
/// `meta.lastUpdated` and `status` from the row; rows migrated without a resource
/// get the required elements from their columns.
pub fn to_fhir(row: &StudyRow) -> Value {
    let payload = row.payload.as_ref().map(|j| &j.0);
    render(row, payload, row.version, row.updated_at, &row.status)
}

fn render(row: &StudyRow, payload: Option<&Value>, version: i32, last_updated: chrono::DateTime<chrono::Utc>, status: &str) -> Value {
    let mut r: Map<String, Value> = payload.and_then(Value::as_object).cloned().unwrap_or_default();
    let mut meta: Map<String, Value> = r.get("meta").and_then(Value::as_object).cloned().unwrap_or_default();
    meta.insert("versionId".into(), json!(version.to_string()));
    meta.insert("lastUpdated".into(), json!(last_updated.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)));
    let mut out = Map::new();
    out.insert("resourceType".into(), json!("ImagingStudy"));
    out.insert("id".into(), json!(row.id));
    out.insert("meta".into(), Value::Object(meta));
    r.remove("resourceType");
    r.remove("id");
    r.remove("meta");
    out.extend(r);
    out.insert("status".into(), json!(status));
    if !out.contains_key("identifier") {
        out.insert("identifier".into(), json!([{"system": DICOM_UID_SYSTEM, "value": format!("urn:oid:{}", row.pacs_study_uid)}]));
    }
    if !out.contains_key("subject") {
        let subject = match &row.patient_id {
            Some(pid) => json!({"type": "Patient", "identifier": {"value": pid}}),
            None => json!({"type": "Patient", "display": "unknown patient"}),
        };
        out.insert("subject".into(), subject);
    }
    if !out.contains_key("started") {
        if let Some(s) = row.started_at {
            out.insert("started".into(), json!(s.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)));
        }
    }
    if !out.contains_key("basedOn") {
        if let Some(order) = row.order_id {
            out.insert("basedOn".into(), json!([{"reference": format!("ServiceRequest/{order}"), "type": "ServiceRequest"}]));
        }
    }
    if !out.contains_key("modality") {
        if let Some(m) = &row.modality {
            let codes: Vec<Value> = m.split('\\').filter(|c| !c.is_empty()).map(|c| json!({"system": DCM_SYSTEM, "code": c})).collect();
            out.insert("modality".into(), json!(codes));
        }
    }
    Value::Object(out)
}

async fn load(state: &AppState, tenant: TenantId, id: &str) -> Result<StudyRow, FhirError> {
    let id = Uuid::parse_str(id).map_err(|_| FhirError::not_found(&format!("ImagingStudy/{id}")))?;
    match state.studies.get(tenant, id).await {
        Ok(row) => Ok(row),
        Err(StoreError::NotFound) => Err(FhirError::not_found(&format!("ImagingStudy/{id}"))),
        Err(e) => Err(e.into()),
    }
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.0.tenant))]
async fn read(State(state): State<AppState>, ctx: FhirCtx, Path(id): Path<String>) -> Result<Response, FhirError> {
    let row = load(&state, ctx.0.tenant, &id).await?;
    Ok(resource_response(to_fhir(&row), row.version, row.updated_at))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.0.tenant))]
async fn vread(State(state): State<AppState>, ctx: FhirCtx, Path((id, vid)): Path<(String, String)>) -> Result<Response, FhirError> {
    let row = load(&state, ctx.0.tenant, &id).await?;
    let version: i32 = vid.parse().map_err(|_| FhirError::not_found(&format!("ImagingStudy/{id}/_history/{vid}")))?;
    if version == row.version {
        return Ok(resource_response(to_fhir(&row), row.version, row.updated_at));
    }
    match state.studies.get_version(ctx.0.tenant, row.id, version).await {
        Ok(v) => {
            let resource = render(&row, v.payload.as_ref().map(|j| &j.0), v.version, v.recorded_at, &v.status);
            Ok(resource_response(resource, v.version, v.recorded_at))
        }
        Err(StoreError::NotFound) => Err(FhirError::not_found(&format!("ImagingStudy/{id}/_history/{vid}"))),
        Err(e) => Err(e.into()),
    }
}

/// A FHIR search, parsed.
#[derive(Debug)]
struct ParsedSearch {
    query: StudyQuery,
    common: SearchCommon,
}

/// Turns FHIR search parameters into a study query.
fn parse_search(params: &[(String, String)]) -> ParsedSearch {
    let mut q = StudyQuery::default();
    let common = SearchCommon::parse(params, |name, value, errors| {
        match name {
            "_id" => {
                // an id that cannot exist matches nothing
                q.ids.extend(value.split(',').map(|v| Uuid::parse_str(v).unwrap_or(Uuid::nil())));
            }
            "patient" => q.patient_id = Some(value.strip_prefix("Patient/").unwrap_or(value).to_string()),
            "patient:identifier" => q.patient_id = Some(token(value).1),
            "identifier" => {
                let (system, code) = token(value);
                let uid = code.strip_prefix("urn:oid:").map(str::to_string);
                match (system.as_deref(), uid) {
                    (Some(DICOM_UID_SYSTEM), Some(uid)) | (None, Some(uid)) => q.study_instance_uid = Some(uid),
                    (Some(DICOM_UID_SYSTEM), None) => q.study_instance_uid = Some(code),
                    _ => q.identifier_any = Some(code),
                }
            }
            "modality" => {
                for v in value.split(',') {
                    match token(v) {
                        (Some(system), code) if system.is_empty() || system == DCM_SYSTEM => q.modalities.push(code),
                        (None, code) => q.modalities.push(code),
                        (Some(system), _) => errors.push(format!("modality: system {system:?} is not {DCM_SYSTEM}")),
                    }
                }
            }
            "status" => {
                for v in value.split(',') {
                    if super::STATUSES.contains(&v) {
                        q.statuses.push(v.to_string());
                    } else {
                        errors.push(format!("status: {v:?} is not one of {}", super::STATUSES.join(", ")));
                    }
                }
            }
            "started" => match date_bounds(value) {
                Ok(b) => q.started.extend(b),
                Err(e) => errors.push(format!("started: {e}")),
            },
            _ => return false,
        }
        true
    });
    q.tags = common.tags.clone();
    q.last_updated = common.last_updated.clone();
    ParsedSearch { query: q, common }
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.0.tenant))]
async fn search(
    State(state): State<AppState>,
    ctx: FhirCtx,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, FhirError> {
    let ParsedSearch { query, common } = parse_search(&params);
    let supported: Vec<&str> = SEARCH_PARAMS.iter().map(|p| p.0).collect();
    common.check(&headers, "ImagingStudy", &supported)?;
    let tenant = ctx.0.tenant;
    let page = common.page();
    let (rows, total) = tokio::try_join!(state.studies.list(tenant, &query, &page), state.studies.count(tenant, &query))?;
    let cursors = rows.iter().map(StudyRow::cursor).collect();
    let resources = rows.iter().map(|row| (row.id.to_string(), to_fhir(row))).collect();
    Ok(fhir_json(StatusCode::OK, common.bundle(&headers, "ImagingStudy", total, resources, cursors)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn identifiers_map_to_uid_or_accession() {
        let q = parse_search(&p(&[("identifier", "urn:dicom:uid|urn:oid:1.2.3")])).query;
        assert_eq!(q.study_instance_uid.as_deref(), Some("1.2.3"));
        let q = parse_search(&p(&[("identifier", "ACC-9")])).query;
        assert_eq!(q.identifier_any.as_deref(), Some("ACC-9"));
        let q = parse_search(&p(&[("patient", "Patient/P-1"), ("modality", "http://dicom.nema.org/resources/ontology/DCM|CT,MR")])).query;
        assert_eq!(q.patient_id.as_deref(), Some("P-1"));
        assert_eq!(q.modalities, vec!["CT", "MR"]);
        assert!(!parse_search(&p(&[("modality", "DCM|CT")])).common.errors.is_empty(), "a token's system is the code system URI");
    }

    #[test]
    fn bad_values_and_unknown_parameters_are_reported() {
        let e = parse_search(&p(&[("status", "done"), ("started", "yesterday"), ("_count", "0")])).common;
        assert_eq!(e.errors.len(), 3);
        let parsed = parse_search(&p(&[("bodysite", "head"), ("status", "available")])).common;
        assert_eq!(parsed.unknown, vec!["bodysite"]);
        assert_eq!(parsed.kept.len(), 1);
    }
}
