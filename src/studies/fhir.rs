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
use crate::interop::fhir::{base_url, fhir_json, operation_outcome, resource_response, FhirCtx, FhirError, BASE};
use crate::pagination::{Cursor, PageRequest, MAX_LIMIT};
use crate::AppState;

const DEFAULT_COUNT: i64 = 50;

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
    page: PageRequest,
    /// Parameters kept, for the `self` and `next` links.
    kept: Vec<(String, String)>,
    /// Names of parameters this server does not support.
    unknown: Vec<String>,
}

/// Turns FHIR search parameters into a study query.
fn parse_search(params: &[(String, String)]) -> Result<ParsedSearch, FhirError> {
    let mut q = StudyQuery::default();
    let mut errors = Vec::new();
    let mut unknown = Vec::new();
    let mut kept = Vec::new();
    let mut count = DEFAULT_COUNT;
    let mut cursor = None;
    for (name, value) in params {
        let mut keep = true;
        match name.as_str() {
            "_id" => {
                for v in value.split(',') {
                    match Uuid::parse_str(v) {
                        Ok(id) => q.ids.push(id),
                        Err(_) => q.ids.push(Uuid::nil()), // an id that cannot exist matches nothing
                    }
                }
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
            "_lastUpdated" => match date_bounds(value) {
                Ok(b) => q.last_updated.extend(b),
                Err(e) => errors.push(format!("_lastUpdated: {e}")),
            },
            "_tag" => {
                for v in value.split(',') {
                    let (system, code) = token(v);
                    q.tags.push((system.filter(|s| !s.is_empty()), code));
                }
            }
            "_count" => match value.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => count = n,
                _ => errors.push(format!("_count: must be an integer from 1 to {MAX_LIMIT}")),
            },
            "_cursor" => {
                keep = false;
                match Cursor::decode(value) {
                    Ok(c) => cursor = Some(c),
                    Err(_) => errors.push("_cursor: is not a cursor this server issued".into()),
                }
            }
            "_format" if value.contains("json") => {}
            _ => {
                keep = false;
                unknown.push(name.clone());
            }
        }
        if keep {
            kept.push((name.clone(), value.clone()));
        }
    }
    if !errors.is_empty() {
        return Err(FhirError::invalid(errors));
    }
    Ok(ParsedSearch { query: q, page: PageRequest { limit: count, after: cursor }, kept, unknown })
}

fn query_string(params: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params.iter()).finish()
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.0.tenant))]
async fn search(
    State(state): State<AppState>,
    ctx: FhirCtx,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, FhirError> {
    let ParsedSearch { query, page, kept, unknown } = parse_search(&params)?;
    let lenient = headers.get("prefer").and_then(|v| v.to_str().ok()).is_some_and(|p| p.contains("handling=lenient"));
    if !unknown.is_empty() && !lenient {
        let supported: Vec<&str> = SEARCH_PARAMS.iter().map(|p| p.0).collect();
        return Err(FhirError::invalid(
            unknown
                .iter()
                .map(|u| format!("unknown search parameter {u:?} for ImagingStudy; supported: {}, _count", supported.join(", ")))
                .collect(),
        ));
    }
    let tenant = ctx.0.tenant;
    let (rows, total) = tokio::try_join!(state.studies.list(tenant, &query, &page), state.studies.count(tenant, &query))?;
    let base = base_url(&headers);
    let more = rows.len() as i64 > page.limit;
    let rows = &rows[..rows.len().min(page.limit as usize)];
    let mut self_params = kept.clone();
    if let Some(after) = page.after {
        self_params.push(("_cursor".into(), after.encode()));
    }
    let mut links = vec![json!({"relation": "self", "url": format!("{base}/ImagingStudy?{}", query_string(&self_params))})];
    if more {
        let mut next = kept.clone();
        next.push(("_cursor".into(), rows.last().expect("a full page has a last row").cursor().encode()));
        links.push(json!({"relation": "next", "url": format!("{base}/ImagingStudy?{}", query_string(&next))}));
    }
    let mut entries: Vec<Value> = rows
        .iter()
        .map(|row| json!({"fullUrl": format!("{base}/ImagingStudy/{}", row.id), "resource": to_fhir(row), "search": {"mode": "match"}}))
        .collect();
    if !unknown.is_empty() {
        let notes: Vec<String> = unknown.iter().map(|u| format!("unknown search parameter {u:?} was ignored")).collect();
        entries.push(json!({"resource": operation_outcome("warning", "not-supported", &notes), "search": {"mode": "outcome"}}));
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": entries,
    });
    Ok(fhir_json(StatusCode::OK, bundle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn identifiers_map_to_uid_or_accession() {
        let q = parse_search(&p(&[("identifier", "urn:dicom:uid|urn:oid:1.2.3")])).unwrap().query;
        assert_eq!(q.study_instance_uid.as_deref(), Some("1.2.3"));
        let q = parse_search(&p(&[("identifier", "ACC-9")])).unwrap().query;
        assert_eq!(q.identifier_any.as_deref(), Some("ACC-9"));
        let q = parse_search(&p(&[("patient", "Patient/P-1"), ("modality", "http://dicom.nema.org/resources/ontology/DCM|CT,MR")])).unwrap().query;
        assert_eq!(q.patient_id.as_deref(), Some("P-1"));
        assert_eq!(q.modalities, vec!["CT", "MR"]);
        assert!(parse_search(&p(&[("modality", "DCM|CT")])).is_err(), "a token's system is the code system URI");
    }

    #[test]
    fn bad_values_and_unknown_parameters_are_reported() {
        let e = parse_search(&p(&[("status", "done"), ("started", "yesterday"), ("_count", "0")])).unwrap_err();
        assert_eq!(e.diagnostics.len(), 3);
        let parsed = parse_search(&p(&[("bodysite", "head"), ("status", "available")])).unwrap();
        assert_eq!(parsed.unknown, vec!["bodysite"]);
        assert_eq!(parsed.kept.len(), 1);
    }
}
