//! ServiceRequest on the FHIR R4 facade: the resource an order state renders to, and
//! read, vread and search.
//!
//! Search parameters: `_id`, `patient` (`Patient/<id>` or `<id>`), `identifier` (placer,
//! filler or accession number; `system|value` or `value`), `status`, `code` (the
//! procedure code), `occurrence` (scheduled time; prefixes eq, ge, le, gt, lt), `_tag`,
//! `_lastUpdated`, `_count`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::store::{OrderQuery, OrderRow};
use super::{Code, OrderState};
use crate::auth::TenantId;
use crate::db::StoreError;
use crate::interop::fhir::params::{date_bounds, token};
use crate::interop::fhir::{fhir_json, resource_response, FhirCtx, FhirError, SearchCommon, BASE};
use crate::studies::mapping::{DCM_SYSTEM, DICOM_UID_SYSTEM, V2_0203};
use crate::AppState;

/// Where identifiers of this service's HL7 v2 numbers live: `<base>:<namespace>`.
pub const ORDER_NUMBER_SYSTEM: &str = "urn:radiology-service:hl7:order-number";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{BASE}/ServiceRequest"), get(search))
        .route(&format!("{BASE}/ServiceRequest/{{id}}"), get(read))
        .route(&format!("{BASE}/ServiceRequest/{{id}}/_history/{{vid}}"), get(vread))
}

const SEARCH_PARAMS: &[(&str, &str, &str)] = &[
    ("_id", "token", "Logical id of the order"),
    ("patient", "reference", "The subject: Patient/<id> or <id>"),
    ("identifier", "token", "Placer (PLAC), filler (FILL) or accession (ACSN) number"),
    ("status", "token", "draft | active | on-hold | revoked | completed | entered-in-error | unknown"),
    ("code", "token", "The requested procedure code"),
    ("occurrence", "date", "When the procedure is scheduled; prefixes eq, ge, le, gt, lt"),
    ("_tag", "token", "meta.tag"),
    ("_lastUpdated", "date", "When the order last changed here; prefixes eq, ge, le, gt, lt"),
];

pub fn capability() -> Value {
    json!({
        "type": "ServiceRequest",
        "interaction": [{"code": "read"}, {"code": "vread"}, {"code": "search-type"}],
        "versioning": "versioned",
        "readHistory": true,
        "searchParam": SEARCH_PARAMS.iter().map(|(name, kind, doc)| json!({"name": name, "type": kind, "documentation": doc})).collect::<Vec<_>>()
    })
}

/// An HL7 v2 coding-system name (table 0396) as a FHIR system URI.
pub fn coding_system(name: &str) -> String {
    match name.to_ascii_uppercase().as_str() {
        "LN" => "http://loinc.org".into(),
        "C4" | "CPT" | "CPT4" => "http://www.ama-assn.org/go/cpt".into(),
        "SCT" | "SNM" | "SNOMED" => "http://snomed.info/sct".into(),
        "DCM" => DCM_SYSTEM.into(),
        "I10" | "ICD10" => "http://hl7.org/fhir/sid/icd-10".into(),
        "RADLEX" | "RID" => "http://radlex.org".into(),
        _ => format!("urn:radiology-service:hl7:coding-system:{name}"),
    }
}

pub fn codeable(c: &Code) -> Value {
    let mut coding = Map::new();
    if let Some(s) = &c.system {
        coding.insert("system".into(), json!(coding_system(s)));
    }
    coding.insert("code".into(), json!(c.code));
    if let Some(d) = &c.display {
        coding.insert("display".into(), json!(d));
    }
    let mut cc = json!({"coding": [coding]});
    if let Some(d) = &c.display {
        cc["text"] = json!(d);
    }
    cc
}

/// An order number as a FHIR identifier: `kind` is its v2-0203 type (PLAC, FILL); the
/// system carries the HL7 namespace.
pub fn number(kind: &str, value: &str, namespace: Option<&str>) -> Value {
    let system = match namespace {
        Some(ns) => format!("{ORDER_NUMBER_SYSTEM}:{}", ns.replace(|c: char| c.is_whitespace(), "_")),
        None => ORDER_NUMBER_SYSTEM.to_string(),
    };
    json!({"type": {"coding": [{"system": V2_0203, "code": kind}]}, "system": system, "value": value})
}

/// The subject of a resource made from HL7: `Patient/<PID-3>` when the identifier is a
/// FHIR id, else a logical reference by identifier (an MRN may hold `_`, `/`, spaces…).
pub fn patient_reference(id: Option<&str>, name: Option<&str>) -> Value {
    let mut subject = Map::new();
    match id {
        Some(id) if crate::interop::fhir::resource::is_id(id) => {
            subject.insert("reference".into(), json!(format!("Patient/{id}")));
        }
        Some(id) => {
            subject.insert("type".into(), json!("Patient"));
            subject.insert("identifier".into(), json!({"value": id}));
        }
        None => {}
    }
    match name {
        Some(n) => subject.insert("display".into(), json!(n)),
        None if id.is_none() => subject.insert("display".into(), json!("unknown patient")),
        None => None,
    };
    Value::Object(subject)
}

/// The ServiceRequest an order state renders to (without `id` and `meta`).
pub fn service_request(state: &OrderState) -> Value {
    let s = &state.fields;
    let mut r = Map::new();
    r.insert("resourceType".into(), json!("ServiceRequest"));
    let mut identifiers = Vec::new();
    if let Some(p) = &s.placer_number {
        identifiers.push(number("PLAC", p, s.placer_namespace.as_deref()));
    }
    if let Some(f) = &s.filler_number {
        identifiers.push(number("FILL", f, s.filler_namespace.as_deref()));
    }
    if let Some(a) = &s.accession_number {
        identifiers.push(json!({"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "value": a}));
    }
    if let Some(uid) = &s.study_uid {
        identifiers.push(json!({"system": DICOM_UID_SYSTEM, "value": format!("urn:oid:{uid}")}));
    }
    if !identifiers.is_empty() {
        r.insert("identifier".into(), Value::Array(identifiers));
    }
    r.insert("status".into(), json!(state.status));
    r.insert("intent".into(), json!("order"));
    r.insert("category".into(), json!([{"coding": [{"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"}]}]));
    if let Some(p) = &s.priority {
        r.insert("priority".into(), json!(p));
    }
    if let Some(c) = &s.procedure {
        r.insert("code".into(), codeable(c));
    }
    if let Some(m) = &s.modality {
        r.insert("orderDetail".into(), json!([{"coding": [{"system": DCM_SYSTEM, "code": m}]}]));
    }
    r.insert("subject".into(), patient_reference(s.patient_id.as_deref(), s.patient_name.as_deref()));
    if let Some(t) = s.scheduled_at {
        r.insert("occurrenceDateTime".into(), json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    }
    if let Some(t) = s.authored_at {
        r.insert("authoredOn".into(), json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    }
    if let Some(p) = &s.ordering_provider {
        let mut requester = Map::new();
        if let Some(id) = &p.id {
            requester.insert("identifier".into(), json!({"value": id}));
        }
        if let Some(n) = &p.name {
            requester.insert("display".into(), json!(n));
        }
        r.insert("requester".into(), Value::Object(requester));
    }
    if let Some(reason) = &s.reason {
        r.insert("reasonCode".into(), json!([codeable(reason)]));
    }
    let mut notes = Vec::new();
    if let Some(info) = &s.clinical_info {
        notes.push(json!({"text": format!("Clinical information: {info}")}));
    }
    if let Some(id) = &s.requested_procedure_id {
        notes.push(json!({"text": format!("Requested procedure ID: {id}")}));
    }
    if !notes.is_empty() {
        r.insert("note".into(), Value::Array(notes));
    }
    Value::Object(r)
}

/// The stored resource with `id`, `meta.versionId` and `meta.lastUpdated`, and
/// `supportingInfo` naming the imaging study once it exists.
pub fn render(id: Uuid, payload: &Value, version: i32, last_updated: chrono::DateTime<chrono::Utc>, study: Option<Uuid>) -> Value {
    let mut r: Map<String, Value> = payload.as_object().cloned().unwrap_or_default();
    let mut out = Map::new();
    out.insert("resourceType".into(), json!("ServiceRequest"));
    out.insert("id".into(), json!(id));
    out.insert(
        "meta".into(),
        json!({"versionId": version.to_string(), "lastUpdated": last_updated.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)}),
    );
    r.remove("resourceType");
    r.remove("id");
    r.remove("meta");
    out.extend(r);
    if let Some(study) = study {
        out.insert("supportingInfo".into(), json!([{"reference": format!("ImagingStudy/{study}"), "type": "ImagingStudy"}]));
    }
    Value::Object(out)
}

/// Renders rows, resolving their imaging studies in one query.
pub async fn to_fhir_many(state: &AppState, tenant: TenantId, rows: &[OrderRow]) -> Result<Vec<Value>, StoreError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let links = state.orders.study_links(tenant, &ids).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let study = links.iter().find(|l| l.order_id == row.id).map(|l| l.study_id);
            render(row.id, &row.service_request(), row.version, row.updated_at, study)
        })
        .collect())
}

async fn load(state: &AppState, tenant: TenantId, id: &str) -> Result<OrderRow, FhirError> {
    let id = Uuid::parse_str(id).map_err(|_| FhirError::not_found(&format!("ServiceRequest/{id}")))?;
    match state.orders.get(tenant, id).await {
        Ok(row) => Ok(row),
        Err(StoreError::NotFound) => Err(FhirError::not_found(&format!("ServiceRequest/{id}"))),
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
    let gone = || FhirError::not_found(&format!("ServiceRequest/{id}/_history/{vid}"));
    let version: i32 = vid.parse().map_err(|_| gone())?;
    let v = match state.orders.get_version(ctx.0.tenant, row.id, version).await {
        Ok(v) => v,
        Err(StoreError::NotFound) => return Err(gone()),
        Err(e) => return Err(e.into()),
    };
    let links = state.orders.study_links(ctx.0.tenant, &[row.id]).await?;
    let resource = render(row.id, &v.payload.0, v.version, v.recorded_at, links.first().map(|l| l.study_id));
    Ok(resource_response(resource, v.version, v.recorded_at))
}

fn parse_search(params: &[(String, String)]) -> (OrderQuery, SearchCommon) {
    let mut q = OrderQuery::default();
    let common = SearchCommon::parse(params, |name, value, errors| {
        match name {
            "_id" => q.ids.extend(value.split(',').map(|v| Uuid::parse_str(v).unwrap_or(Uuid::nil()))),
            "patient" | "subject" => q.patient_id = Some(value.strip_prefix("Patient/").unwrap_or(value).to_string()),
            "identifier" => q.identifiers.extend(value.split(',').map(|v| {
                let (system, code) = token(v);
                if system.as_deref() == Some(DICOM_UID_SYSTEM) {
                    q.study_uids.push(code.strip_prefix("urn:oid:").unwrap_or(&code).to_string());
                }
                code
            })),
            "code" => q.codes.extend(value.split(',').map(|v| token(v).1)),
            "status" => {
                for v in value.split(',') {
                    if super::STATUSES.contains(&v) {
                        q.statuses.push(v.to_string());
                    } else {
                        errors.push(format!("status: {v:?} is not one of {}", super::STATUSES.join(", ")));
                    }
                }
            }
            "occurrence" => match date_bounds(value) {
                Ok(b) => q.scheduled.extend(b),
                Err(e) => errors.push(format!("occurrence: {e}")),
            },
            _ => return false,
        }
        true
    });
    // A Study Instance UID is searched by its own column, not as an order number.
    if !q.study_uids.is_empty() {
        q.identifiers.retain(|i| !i.starts_with("urn:oid:"));
    }
    q.tags = common.tags.clone();
    q.last_updated = common.last_updated.clone();
    (q, common)
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.0.tenant))]
async fn search(
    State(state): State<AppState>,
    ctx: FhirCtx,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, FhirError> {
    let (query, common) = parse_search(&params);
    let supported: Vec<&str> = SEARCH_PARAMS.iter().map(|p| p.0).collect();
    common.check(&headers, "ServiceRequest", &supported)?;
    let tenant = ctx.0.tenant;
    let page = common.page();
    let (rows, total) = tokio::try_join!(state.orders.list(tenant, &query, &page), state.orders.count(tenant, &query))?;
    let resources = to_fhir_many(&state, tenant, &rows).await?;
    let cursors = rows.iter().map(OrderRow::cursor).collect();
    let resources = rows.iter().map(|r| r.id.to_string()).zip(resources).collect();
    Ok(fhir_json(StatusCode::OK, common.bundle(&headers, "ServiceRequest", total, resources, cursors)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_request_carries_the_order_numbers_and_the_study() {
        let s = OrderState {
            status: "active".into(),
            order_control: "NW".into(),
            fields: crate::orders::OrderFields {
                placer_number: Some("PL-1".into()),
                placer_namespace: Some("RIS".into()),
                accession_number: Some("ACC-1".into()),
                patient_id: Some("MRN1".into()),
                study_uid: Some("1.2.3".into()),
                procedure: Some(Code { code: "71020".into(), display: Some("CHEST".into()), system: Some("C4".into()) }),
                priority: Some("stat".into()),
                ..Default::default()
            },
        };
        let r = service_request(&s);
        assert_eq!(r["intent"], "order");
        assert_eq!(r["identifier"][0]["type"]["coding"][0]["code"], "PLAC");
        assert_eq!(r["identifier"][0]["system"], "urn:radiology-service:hl7:order-number:RIS");
        assert_eq!(r["identifier"][1]["value"], "ACC-1");
        assert_eq!(r["identifier"][2]["value"], "urn:oid:1.2.3");
        assert_eq!(r["code"]["coding"][0]["system"], "http://www.ama-assn.org/go/cpt");
        assert_eq!(r["subject"]["reference"], "Patient/MRN1");
    }
}
