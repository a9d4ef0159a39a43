//! The FHIR R4 facade under `/fhir/r4`: CapabilityStatement, read, vread and search,
//! with FHIR's wire conventions (application/fhir+json, ETag/Last-Modified, searchset
//! Bundles with self/next links, OperationOutcome for errors). Resource contexts
//! (studies, …) supply the resource-specific parts.

pub mod params;
pub mod resource;

use axum::extract::FromRequestParts;
use axum::http::header::{CONTENT_TYPE, ETAG, LAST_MODIFIED};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::auth::{HasTokenKeys, Role, TenantCtx};
use crate::error::ApiError;
use crate::AppState;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
pub const BASE: &str = "/fhir/r4";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{BASE}/metadata"), get(metadata))
        .merge(crate::studies::fhir::router())
        .merge(crate::reports::fhir::router())
        .merge(crate::orders::fhir::router())
        .merge(crate::interop::import::routes::router())
}

/// A FHIR answer: JSON with the FHIR media type.
pub fn fhir_json(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// A resource read: adds ETag (weak, the version) and Last-Modified.
pub fn resource_response(resource: Value, version: i32, last_modified: DateTime<Utc>) -> Response {
    let mut response = fhir_json(StatusCode::OK, resource);
    let headers = response.headers_mut();
    headers.insert(ETAG, HeaderValue::from_str(&format!("W/\"{version}\"")).expect("ascii"));
    headers.insert(LAST_MODIFIED, HeaderValue::from_str(&last_modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string()).expect("ascii"));
    response
}

/// A failure as an OperationOutcome.
#[derive(Debug)]
pub struct FhirError {
    pub status: StatusCode,
    pub code: &'static str,
    pub diagnostics: Vec<String>,
}

impl FhirError {
    pub fn new(status: StatusCode, code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self { status, code, diagnostics: vec![diagnostics.into()] }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", format!("{what} is not known"))
    }

    pub fn invalid(diagnostics: Vec<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code: "invalid", diagnostics }
    }
}

pub fn operation_outcome(severity: &str, code: &str, diagnostics: &[String]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": diagnostics.iter().map(|d| json!({"severity": severity, "code": code, "diagnostics": d})).collect::<Vec<_>>()
    })
}

impl From<ApiError> for FhirError {
    fn from(e: ApiError) -> Self {
        let code = match &e {
            ApiError::Unauthorized(_) => "login",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not-found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Validation(_) | ApiError::BadRequest(_) => "invalid",
            ApiError::UnsupportedMediaType(_) => "not-supported",
            ApiError::Unavailable(_) => "transient",
            ApiError::Internal(_) => "exception",
        };
        if let ApiError::Internal(inner) = &e {
            tracing::error!(error.cause_chain = ?inner, "FHIR request failed");
        }
        let diagnostics = match &e {
            ApiError::Validation(errors) => errors.iter().map(|f| format!("{}: {}", f.field, f.message)).collect(),
            other => vec![other.public_detail()],
        };
        FhirError { status: e.status(), code, diagnostics }
    }
}

impl From<crate::db::StoreError> for FhirError {
    fn from(e: crate::db::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let mut response = fhir_json(self.status, operation_outcome("error", self.code, &self.diagnostics));
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer error=\"invalid_token\""));
        }
        response
    }
}

/// The caller of a FHIR interaction, authenticated like `/v1` but answered in FHIR.
pub struct FhirCtx(pub TenantCtx);

impl<S: HasTokenKeys + Send + Sync> FromRequestParts<S> for FhirCtx {
    type Rejection = FhirError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ctx = TenantCtx::from_request_parts(parts, state).await?;
        ctx.require(Role::Read)?;
        Ok(FhirCtx(ctx))
    }
}

/// The absolute base URL clients reached us at, for `fullUrl` and links.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get("x-forwarded-host").or_else(|| headers.get("host")).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    let scheme = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("http");
    format!("{scheme}://{host}{BASE}")
}

async fn metadata(headers: HeaderMap) -> Response {
    fhir_json(StatusCode::OK, capability_statement(&base_url(&headers)))
}

/// What the facade really supports.
pub fn capability_statement(base: &str) -> Value {
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-04",
        "kind": "instance",
        "software": {"name": "Radiology Service", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Radiology Service FHIR R4 facade", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "description": "Bearer JWT (HS256) with tenant_id, sub, roles (radiology.read or radiology.admin) and exp; every resource is tenant-scoped"
            },
            "resource": [crate::studies::fhir::capability(), crate::reports::fhir::capability(), crate::orders::fhir::capability()],
            "operation": [{
                "name": "import",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/import",
                "documentation": "Bulk import of ImagingStudy and DiagnosticReport NDJSON (Prefer: respond-async; status at $import-poll-status/<job>); every imported resource is tagged historical"
            }]
        }]
    })
}

/// The parameters every search shares: `_count`, `_cursor` (the opaque paging token
/// of `next` links), `_tag`, `_lastUpdated`, `_format`; and the bookkeeping of a search
/// (what to repeat in links, what was not understood).
#[derive(Debug, Default)]
pub struct SearchCommon {
    pub count: Option<i64>,
    pub cursor: Option<crate::pagination::Cursor>,
    pub tags: Vec<(Option<String>, String)>,
    pub last_updated: Vec<crate::studies::store::Bound>,
    /// Parameters kept, for the `self` and `next` links.
    pub kept: Vec<(String, String)>,
    /// Names of parameters this server does not support.
    pub unknown: Vec<String>,
    pub errors: Vec<String>,
}

pub const DEFAULT_COUNT: i64 = 50;

impl SearchCommon {
    /// Reads `params`, handing each resource-specific one to `specific`, which returns
    /// false for a name it does not know.
    pub fn parse(params: &[(String, String)], mut specific: impl FnMut(&str, &str, &mut Vec<String>) -> bool) -> Self {
        let mut c = SearchCommon::default();
        for (name, value) in params {
            let mut keep = true;
            match name.as_str() {
                "_count" => match value.parse::<i64>() {
                    Ok(n) if (1..=crate::pagination::MAX_LIMIT).contains(&n) => c.count = Some(n),
                    _ => c.errors.push(format!("_count: must be an integer from 1 to {}", crate::pagination::MAX_LIMIT)),
                },
                "_cursor" => {
                    keep = false;
                    match crate::pagination::Cursor::decode(value) {
                        Ok(cursor) => c.cursor = Some(cursor),
                        Err(_) => c.errors.push("_cursor: is not a cursor this server issued".into()),
                    }
                }
                "_tag" => {
                    for v in value.split(',') {
                        let (system, code) = params::token(v);
                        c.tags.push((system.filter(|s| !s.is_empty()), code));
                    }
                }
                "_lastUpdated" => match params::date_bounds(value) {
                    Ok(b) => c.last_updated.extend(b),
                    Err(e) => c.errors.push(format!("_lastUpdated: {e}")),
                },
                "_format" if value.contains("json") => {}
                _ => {
                    if !specific(name, value, &mut c.errors) {
                        keep = false;
                        c.unknown.push(name.clone());
                    }
                }
            }
            if keep {
                c.kept.push((name.clone(), value.clone()));
            }
        }
        c
    }

    pub fn page(&self) -> crate::pagination::PageRequest {
        crate::pagination::PageRequest { limit: self.count.unwrap_or(DEFAULT_COUNT), after: self.cursor }
    }

    /// Refuses bad values, and unknown parameters unless the client asked for
    /// `Prefer: handling=lenient` (then they are reported in the Bundle).
    pub fn check(&self, headers: &HeaderMap, resource_type: &str, supported: &[&str]) -> Result<(), FhirError> {
        if !self.errors.is_empty() {
            return Err(FhirError::invalid(self.errors.clone()));
        }
        let lenient = headers.get("prefer").and_then(|v| v.to_str().ok()).is_some_and(|p| p.contains("handling=lenient"));
        if !self.unknown.is_empty() && !lenient {
            return Err(FhirError::invalid(
                self.unknown
                    .iter()
                    .map(|u| format!("unknown search parameter {u:?} for {resource_type}; supported: {}, _count", supported.join(", ")))
                    .collect(),
            ));
        }
        Ok(())
    }

    /// The searchset Bundle of one page. `resources` are (id, resource) of at most
    /// `_count + 1` rows (one more than a page means there is a next page), `cursors`
    /// their paging positions.
    pub fn bundle(&self, headers: &HeaderMap, resource_type: &str, total: i64, mut resources: Vec<(String, Value)>, mut cursors: Vec<crate::pagination::Cursor>) -> Value {
        let page = self.page();
        let base = base_url(headers);
        let more = resources.len() as i64 > page.limit;
        resources.truncate(page.limit as usize);
        cursors.truncate(page.limit as usize);
        let query = |params: &[(String, String)]| url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params.iter()).finish();
        let mut self_params = self.kept.clone();
        if let Some(after) = page.after {
            self_params.push(("_cursor".into(), after.encode()));
        }
        let mut links = vec![json!({"relation": "self", "url": format!("{base}/{resource_type}?{}", query(&self_params))})];
        if more {
            let mut next = self.kept.clone();
            next.push(("_cursor".into(), cursors.last().expect("a full page has a last row").encode()));
            links.push(json!({"relation": "next", "url": format!("{base}/{resource_type}?{}", query(&next))}));
        }
        let mut entries: Vec<Value> = resources
            .into_iter()
            .map(|(id, resource)| json!({"fullUrl": format!("{base}/{resource_type}/{id}"), "resource": resource, "search": {"mode": "match"}}))
            .collect();
        if !self.unknown.is_empty() {
            let notes: Vec<String> = self.unknown.iter().map(|u| format!("unknown search parameter {u:?} was ignored")).collect();
            entries.push(json!({"resource": operation_outcome("warning", "not-supported", &notes), "search": {"mode": "outcome"}}));
        }
        json!({"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries})
    }
}
