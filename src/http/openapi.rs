//! The OpenAPI 3.1 description of every `/v1` route. Written by hand; the API test
//! suite calls every operation listed here, so a documented route that does not exist
//! (or an undocumented change of method) fails the build's tests.

use serde_json::{json, Value};

fn problem_responses(extra: &[(&str, &str)]) -> Value {
    let mut responses = json!({
        "401": {"$ref": "#/components/responses/Unauthorized"},
        "403": {"$ref": "#/components/responses/Forbidden"},
    });
    for (code, description) in extra {
        responses[*code] = json!({"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    }
    responses
}

fn with(mut base: Value, code: &str, response: Value) -> Value {
    base[code] = response;
    base
}

fn json_content(schema: &str) -> Value {
    json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}})
}

fn id_param(description: &str) -> Value {
    json!({"name": "id", "in": "path", "required": true, "description": description, "schema": {"type": "string", "format": "uuid"}})
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn paging() -> Vec<Value> {
    vec![
        query("limit", "Page size (1–500, default 50).", json!({"type": "integer", "minimum": 1, "maximum": 500})),
        query("cursor", "next_cursor of the previous page.", json!({"type": "string"})),
    ]
}

pub fn document() -> Value {
    let endpoint_params = {
        let mut p = vec![
            query("facility_id", "Only endpoints of this facility.", json!({"type": "string", "format": "uuid"})),
            query("node_id", "Only endpoints of this PACS node.", json!({"type": "string"})),
            query("active", "Only active (true) or inactive (false) endpoints.", json!({"type": "boolean"})),
        ];
        p.extend(paging());
        p
    };
    let study_params = {
        let mut p = vec![
            query("patient_id", "Patient identifier (DICOM PatientID).", json!({"type": "string"})),
            query("accession_number", "Accession number (0008,0050).", json!({"type": "string"})),
            query("study_instance_uid", "Study Instance UID (0020,000D).", json!({"type": "string"})),
            query("pacs_endpoint_id", "The PACS endpoint the study was found on.", json!({"type": "string", "format": "uuid"})),
            query("status", "ImagingStudy.status.", json!({"type": "string", "enum": crate::studies::STATUSES})),
            query("modality", "A modality in the study (comma = any of).", json!({"type": "string"})),
            query("started_from", "Started at or after (date or date-time).", json!({"type": "string"})),
            query("started_to", "Started up to and including (date or date-time).", json!({"type": "string"})),
            query("tag", "meta.tag code, or system|code (e.g. historical).", json!({"type": "string"})),
        ];
        p.extend(paging());
        p
    };
    let report_params = {
        let mut p = vec![
            query("patient_id", "The subject (Patient/<id> → id, or its identifier value).", json!({"type": "string"})),
            query("identifier", "A business identifier, system|value or value.", json!({"type": "string"})),
            query("status", "DiagnosticReport.status.", json!({"type": "string", "enum": crate::reports::STATUSES})),
            query("category", "A category coding, system|code or code (e.g. LP29684-5).", json!({"type": "string"})),
            query("code", "A code coding, system|code or code (e.g. a LOINC code).", json!({"type": "string"})),
            query("date_from", "effective[x] at or after (date or date-time).", json!({"type": "string"})),
            query("date_to", "effective[x] up to and including (date or date-time).", json!({"type": "string"})),
            query("based_on", "The order reference, e.g. ServiceRequest/<id>.", json!({"type": "string"})),
            query("imaging_study", "One of our imaging study ids, or a Study Instance UID.", json!({"type": "string"})),
            query("critical", "Only reports flagged critical (true) or not (false).", json!({"type": "boolean"})),
            query("tag", "meta.tag code, or system|code (e.g. historical).", json!({"type": "string"})),
        ];
        p.extend(paging());
        p
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Radiology Service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "PACS endpoint registration, connectivity tests and QIDO-RS sync, and the imaging study index (also served as FHIR R4 under /fhir/r4, described by /fhir/r4/metadata). All /v1 routes take a bearer JWT (HS256) with tenant_id, sub, roles and exp; radiology.read may read, radiology.admin may also write. Another tenant's rows answer 404."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/radiology/pacs-endpoints": {
                "get": {
                    "operationId": "listPacsEndpoints", "summary": "List the tenant's PACS endpoints",
                    "parameters": endpoint_params,
                    "responses": with(problem_responses(&[("422", "Invalid query parameter")]), "200",
                        json!({"description": "A page of endpoints", "content": json_content("PacsEndpointPage")}))
                },
                "post": {
                    "operationId": "createPacsEndpoint", "summary": "Register a PACS DICOMweb endpoint (needs radiology.admin)",
                    "requestBody": {"required": true, "content": json_content("PacsEndpointInput")},
                    "responses": with(problem_responses(&[
                        ("400", "Malformed JSON"), ("409", "An active endpoint already exists for this node_id"),
                        ("415", "Not application/json"), ("422", "Invalid fields; `errors` names each")]), "201",
                        json!({"description": "Registered; Location names the new endpoint", "headers": {"Location": {"schema": {"type": "string"}}}, "content": json_content("PacsEndpoint")}))
                }
            },
            "/v1/radiology/pacs-endpoints/{id}": {
                "parameters": [id_param("PACS endpoint id")],
                "get": {
                    "operationId": "getPacsEndpoint", "summary": "Read one endpoint, with its last connectivity test",
                    "responses": with(problem_responses(&[("404", "No such endpoint in this tenant")]), "200",
                        json!({"description": "The endpoint", "content": json_content("PacsEndpoint")}))
                },
                "patch": {
                    "operationId": "patchPacsEndpoint", "summary": "Change an endpoint (JSON merge patch; a secret sent as \"***\" keeps its stored value)",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PacsEndpointPatch"}}}},
                    "responses": with(problem_responses(&[("404", "No such endpoint"), ("409", "node_id conflict"), ("422", "Invalid fields")]), "200",
                        json!({"description": "The changed endpoint", "content": json_content("PacsEndpoint")}))
                },
                "delete": {
                    "operationId": "deletePacsEndpoint", "summary": "Deactivate an endpoint; with purge=true delete it if no study references it",
                    "parameters": [query("purge", "Delete the row instead of deactivating it (refused with 409 if studies reference it).", json!({"type": "boolean"}))],
                    "responses": with(problem_responses(&[("404", "No such endpoint"), ("409", "Studies reference the endpoint")]), "204",
                        json!({"description": "Deactivated (or deleted)"}))
                }
            },
            "/v1/radiology/pacs-endpoints/{id}/test": {
                "parameters": [id_param("PACS endpoint id")],
                "get": {
                    "operationId": "testPacsEndpoint", "summary": "Run the connectivity test (dns, tcp, tls, http, auth, qido, patient_query) against the real endpoint (needs radiology.admin)",
                    "parameters": [query("patient_id", "Also query this patient's studies (all pages).", json!({"type": "string"}))],
                    "responses": with(problem_responses(&[("404", "No such endpoint")]), "200",
                        json!({"description": "The test report; `ok` says whether every step passed", "content": json_content("ConnectivityReport")}))
                }
            },
            "/v1/radiology/pacs-endpoints/{id}/sync": {
                "parameters": [id_param("PACS endpoint id")],
                "get": {
                    "operationId": "getPacsSync", "summary": "QIDO-RS sync state: phase, watermark, last run, counts, last error",
                    "responses": with(problem_responses(&[("404", "No such endpoint")]), "200",
                        json!({"description": "The sync state", "content": json_content("SyncStatus")}))
                },
                "post": {
                    "operationId": "runPacsSync", "summary": "Sync now (needs radiology.admin); full=true re-backfills the whole history",
                    "parameters": [
                        query("full", "Re-backfill from the configured start instead of polling incrementally.", json!({"type": "boolean"})),
                        query("interval_seconds", "Set this endpoint's incremental poll interval (10–86400 s; default 60).", json!({"type": "integer", "minimum": 10, "maximum": 86400}))
                    ],
                    "responses": with(problem_responses(&[("404", "No such endpoint"), ("409", "The endpoint is inactive"), ("422", "Invalid full")]), "202",
                        json!({"description": "Scheduled; the worker starts it at once", "content": json_content("SyncStatus")}))
                }
            },
            "/v1/radiology/imaging-studies": {
                "get": {
                    "operationId": "listImagingStudies", "summary": "Search the imaging study index",
                    "parameters": study_params,
                    "responses": with(problem_responses(&[("422", "Invalid query parameter")]), "200",
                        json!({"description": "A page of studies", "content": json_content("ImagingStudyPage")}))
                }
            },
            "/v1/radiology/imaging-studies/{id}": {
                "parameters": [id_param("Imaging study id")],
                "get": {
                    "operationId": "getImagingStudy", "summary": "Read one study",
                    "responses": with(problem_responses(&[("404", "No such study in this tenant")]), "200",
                        json!({"description": "The study", "content": json_content("ImagingStudy")}))
                }
            },
            "/v1/radiology/reports": {
                "get": {
                    "operationId": "listReports", "summary": "Search radiology reports (FHIR DiagnosticReport)",
                    "parameters": report_params,
                    "responses": with(problem_responses(&[("422", "Invalid query parameter")]), "200",
                        json!({"description": "A page of reports", "content": json_content("ReportPage")}))
                }
            },
            "/v1/radiology/reports/{id}": {
                "parameters": [id_param("Report id")],
                "get": {
                    "operationId": "getReport", "summary": "Read one report",
                    "responses": with(problem_responses(&[("404", "No such report in this tenant")]), "200",
                        json!({"description": "The report", "content": json_content("Report")}))
                }
            }
        },
        "components": components()
    })
}

fn components() -> Value {
    let url = json!({"type": "string", "format": "uri", "description": "Absolute http(s) URL without credentials"});
    let auth_config = json!({
        "description": "Per auth_mode: basic {username, password}; bearer {token}; oauth2_client_credentials {token_url, client_id, client_secret, scope?, client_auth? (basic|post)}; none: empty. Secret values are sealed at rest and always shown as \"***\".",
        "type": "object"
    });
    let input_props = json!({
        "name": {"type": "string", "maxLength": 200},
        "node_id": {"type": "string", "maxLength": 128, "description": "PACS node; one active endpoint per node"},
        "facility_id": {"type": ["string", "null"], "format": "uuid"},
        "qido_url": url, "wado_url": {"type": ["string", "null"], "format": "uri"}, "stow_url": {"type": ["string", "null"], "format": "uri"},
        "auth_mode": {"type": "string", "enum": ["none", "basic", "bearer", "oauth2_client_credentials"], "default": "none"},
        "auth_config": auth_config,
        "timeout_ms": {"type": "integer", "minimum": 100, "maximum": 600000, "default": 10000},
        "active": {"type": "boolean", "default": true}
    });
    let mut endpoint_props = input_props.clone();
    for (k, v) in [
        ("id", json!({"type": "string", "format": "uuid"})),
        ("created_at", json!({"type": "string", "format": "date-time"})),
        ("updated_at", json!({"type": "string", "format": "date-time"})),
        ("last_test", json!({"oneOf": [{"$ref": "#/components/schemas/ConnectivityReport"}, {"type": "null"}]})),
    ] {
        endpoint_props[k] = v;
    }
    json!({
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "responses": {
            "Unauthorized": {"description": "Missing, malformed, badly signed or expired token", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}},
            "Forbidden": {"description": "The token's roles do not allow this", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        },
        "schemas": {
            "Problem": {"type": "object", "description": "RFC 9457 problem details", "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object", "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}}}},
            "PacsEndpointInput": {"type": "object", "additionalProperties": false, "required": ["name", "node_id", "qido_url"], "properties": input_props},
            "PacsEndpointPatch": {"type": "object", "additionalProperties": false, "properties": input_props},
            "PacsEndpoint": {"type": "object", "properties": endpoint_props},
            "PacsEndpointPage": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/PacsEndpoint"}}, "next_cursor": {"type": ["string", "null"]}}},
            "ConnectivityReport": {"type": "object", "properties": {
                "ok": {"type": "boolean"}, "endpoint_id": {"type": "string", "format": "uuid"}, "tested_at": {"type": "string", "format": "date-time"},
                "steps": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string", "enum": ["dns", "tcp", "tls", "http", "auth", "qido", "patient_query"]},
                    "ok": {"type": "boolean"}, "latency_ms": {"type": "integer"}, "detail": {"type": "string"}}}},
                "studies": {"type": "array", "items": {"type": "object", "properties": {
                    "study_instance_uid": {"type": "string"}, "accession_number": {"type": ["string", "null"]}, "study_date": {"type": ["string", "null"]},
                    "modalities": {"type": "array", "items": {"type": "string"}}, "description": {"type": ["string", "null"]},
                    "number_of_series": {"type": ["integer", "null"]}, "number_of_instances": {"type": ["integer", "null"]}}}}}},
            "ImagingStudy": {"type": "object", "properties": {
                "id": {"type": "string", "format": "uuid"}, "study_instance_uid": {"type": "string"}, "patient_id": {"type": ["string", "null"]},
                "encounter_id": {"type": ["string", "null"]}, "order_id": {"type": ["string", "null"], "format": "uuid"},
                "accession_number": {"type": ["string", "null"]}, "modality": {"type": ["string", "null"]},
                "started_at": {"type": ["string", "null"], "format": "date-time"}, "status": {"type": "string", "enum": crate::studies::STATUSES},
                "pacs_endpoint_id": {"type": ["string", "null"], "format": "uuid"}, "description": {"type": ["string", "null"]},
                "number_of_series": {"type": ["integer", "null"]}, "number_of_instances": {"type": ["integer", "null"]},
                "version": {"type": "integer"}, "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"},
                "fhir": {"description": "The FHIR R4 ImagingStudy resource (as /fhir/r4/ImagingStudy/{id} serves it)", "type": "object"}}},
            "SyncStatus": {"type": "object", "properties": {
                "endpoint_id": {"type": "string", "format": "uuid"},
                "state": {"type": "string", "enum": ["pending", "idle", "running", "interrupted", "degraded", "inactive"]},
                "phase": {"type": "string", "enum": ["backfill", "incremental"]},
                "watermark": {"type": ["string", "null"], "format": "date-time"}, "next_run_at": {"type": ["string", "null"], "format": "date-time"},
                "full_requested": {"type": "boolean"}, "consecutive_failures": {"type": "integer"}, "last_error": {"type": ["string", "null"]},
                "last_run": {"type": ["object", "null"], "description": "started_at, finished_at, ok, seen, created, updated, failed, windows, errors"},
                "counts": {"type": "object", "properties": {"seen": {"type": "integer"}, "created": {"type": "integer"}, "updated": {"type": "integer"}, "failed": {"type": "integer"}}},
                "progress": {"type": ["object", "null"], "description": "Checkpoint of a run in progress or interrupted"}}},
            "ImagingStudyPage": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/ImagingStudy"}}, "next_cursor": {"type": ["string", "null"]}}},
            "Report": {"type": "object", "properties": {
                "id": {"type": "string", "format": "uuid"},
                "business_key": {"type": "string", "description": "identifier:<system>|<value> or id:<source id>: what makes a re-import update the report"},
                "patient_id": {"type": ["string", "null"]}, "status": {"type": "string", "enum": crate::reports::STATUSES},
                "effective_at": {"type": ["string", "null"], "format": "date-time"}, "issued": {"type": ["string", "null"], "format": "date-time"},
                "critical": {"type": "boolean"}, "order_id": {"type": ["string", "null"], "format": "uuid"},
                "version": {"type": "integer"}, "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"},
                "fhir": {"type": "object", "description": "The FHIR R4 DiagnosticReport (imagingStudy references resolved to our studies)"}}},
            "ReportPage": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Report"}}, "next_cursor": {"type": ["string", "null"]}}}
        }
    })
}
