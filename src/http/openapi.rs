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
    let order_params = {
        let mut p = vec![
            query("patient_id", "Patient identifier (PID-3).", json!({"type": "string"})),
            query("status", "ServiceRequest.status.", json!({"type": "string", "enum": crate::orders::STATUSES})),
            query("identifier", "Placer, filler or accession number.", json!({"type": "string"})),
            query("accession_number", "Accession number (OBR-18 / IPC-1).", json!({"type": "string"})),
            query("study_instance_uid", "Study Instance UID (ZDS-1 / IPC-3).", json!({"type": "string"})),
            query("modality", "Modality (OBR-24 / IPC-5).", json!({"type": "string"})),
            query("scheduled_from", "Scheduled at or after (date or date-time).", json!({"type": "string"})),
            query("scheduled_to", "Scheduled before the end of (date or date-time).", json!({"type": "string"})),
        ];
        p.extend(paging());
        p
    };
    let connector_params = {
        let mut p = vec![query("direction", "inbound | outbound", json!({"type": "string", "enum": ["inbound", "outbound"]}))];
        p.extend(paging());
        p
    };
    let message_params = {
        let mut p = vec![
            query("connector_id", "The inbound connector.", json!({"type": "string", "format": "uuid"})),
            query("message_type", "e.g. ORM^O01, ORU^R01.", json!({"type": "string"})),
            query("control_id", "MSH-10.", json!({"type": "string"})),
            query("status", "processed | error | rejected | conflict", json!({"type": "string", "enum": ["processed", "error", "rejected", "conflict"]})),
            query("received_from", "Received at or after (date or date-time).", json!({"type": "string"})),
            query("received_to", "Received before the end of (date or date-time).", json!({"type": "string"})),
        ];
        p.extend(paging());
        p
    };
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
            },
            "/v1/radiology/orders": {
                "get": {
                    "operationId": "listOrders", "summary": "Search radiology orders (from ORM^O01 / OMI^O23; FHIR ServiceRequest)",
                    "parameters": order_params,
                    "responses": with(problem_responses(&[("422", "Invalid query parameter")]), "200",
                        json!({"description": "A page of orders", "content": json_content("OrderPage")}))
                }
            },
            "/v1/radiology/orders/{id}": {
                "parameters": [id_param("Order id")],
                "get": {
                    "operationId": "getOrder", "summary": "Read one order, with the imaging study it led to",
                    "responses": with(problem_responses(&[("404", "No such order in this tenant")]), "200",
                        json!({"description": "The order", "content": json_content("Order")}))
                }
            },
            "/v1/radiology/hl7-connectors": {
                "get": {
                    "operationId": "listHl7Connectors", "summary": "List HL7 v2 connectors",
                    "parameters": connector_params,
                    "responses": with(problem_responses(&[("422", "Invalid query parameter")]), "200",
                        json!({"description": "A page of connectors", "content": json_content("Hl7ConnectorPage")}))
                },
                "post": {
                    "operationId": "createHl7Connector", "summary": "Register an inbound sender (MSH-3/MSH-4 → this tenant) or an outbound destination (admin)",
                    "requestBody": {"required": true, "content": json_content("Hl7ConnectorInput")},
                    "responses": with(problem_responses(&[("409", "Name taken, or the sender is another connector's"), ("422", "Invalid field(s), each named")]), "201",
                        json!({"description": "Created; Location names it", "content": json_content("Hl7Connector")}))
                }
            },
            "/v1/radiology/hl7-connectors/{id}": {
                "parameters": [id_param("Connector id")],
                "get": {
                    "operationId": "getHl7Connector", "summary": "Read one connector",
                    "responses": with(problem_responses(&[("404", "No such connector in this tenant")]), "200",
                        json!({"description": "The connector", "content": json_content("Hl7Connector")}))
                },
                "patch": {
                    "operationId": "patchHl7Connector", "summary": "Change a connector (fields given replace the stored ones; direction is fixed) (admin)",
                    "requestBody": {"required": true, "content": json_content("Hl7ConnectorInput")},
                    "responses": with(problem_responses(&[("404", "No such connector"), ("409", "Name taken, or the sender is another connector's"), ("422", "Invalid field(s)")]), "200",
                        json!({"description": "The connector", "content": json_content("Hl7Connector")}))
                },
                "delete": {
                    "operationId": "deleteHl7Connector", "summary": "Remove a connector (its messages stay in the log) (admin)",
                    "responses": with(problem_responses(&[("404", "No such connector")]), "204", json!({"description": "Deleted"}))
                }
            },
            "/v1/radiology/hl7-connectors/{id}/outbox": {
                "parameters": [id_param("Outbound connector id")],
                "get": {
                    "operationId": "listHl7Outbox", "summary": "A destination's outbound messages in delivery order, with attempts, errors and ACKs",
                    "parameters": [
                        query("status", "pending | acked | nak | failed", json!({"type": "string", "enum": ["pending", "acked", "nak", "failed"]})),
                        query("after", "Only entries after this seq.", json!({"type": "integer"})),
                        query("limit", "1–1000 (default 100).", json!({"type": "integer", "minimum": 1, "maximum": 1000}))
                    ],
                    "responses": with(problem_responses(&[("404", "No such connector"), ("422", "Invalid query parameter")]), "200",
                        json!({"description": "{items: [outbox entries]}", "content": {"application/json": {"schema": {"type": "object"}}}}))
                }
            },
            "/v1/radiology/hl7-connectors/{id}/outbox/{seq}/retry": {
                "parameters": [id_param("Outbound connector id"), {"name": "seq", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "post": {
                    "operationId": "retryHl7OutboxEntry", "summary": "Send a refused (nak) or failed outbound message again, as it was, before the entries after it (admin)",
                    "responses": with(problem_responses(&[("404", "No such entry"), ("409", "The entry is pending or acknowledged")]), "200",
                        json!({"description": "The entry, pending again", "content": {"application/json": {"schema": {"type": "object"}}}}))
                }
            },
            "/v1/radiology/hl7-connectors/{id}/round-trip": {
                "parameters": [id_param("Connector id")],
                "post": {
                    "operationId": "startHl7RoundTrip",
                    "summary": "Start the ORM/ORU round-trip check: a synthetic test order to an outbound destination (ACK verified), and the ORM → study → ORU chain of every order in a window of inbound traffic (admin)",
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "from": {"type": "string", "description": "Window start (date or date-time; default 7 days ago)"},
                        "to": {"type": "string", "description": "Window end (default now)"},
                        "send_test_order": {"type": "boolean", "default": true}}}}}},
                    "responses": with(problem_responses(&[("404", "No such connector"), ("422", "Invalid field(s)")]), "202",
                        json!({"description": "Started; Location is the run", "content": json_content("Hl7RoundTrip")}))
                }
            },
            "/v1/radiology/hl7-connectors/{id}/round-trip/{run}": {
                "parameters": [id_param("Connector id"), {"name": "run", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}],
                "get": {
                    "operationId": "getHl7RoundTrip", "summary": "A round-trip run: running, passed, failed (with every broken link named) or error",
                    "responses": with(problem_responses(&[("404", "No such run")]), "200", json!({"description": "The run", "content": json_content("Hl7RoundTrip")}))
                }
            },
            "/v1/radiology/hl7-messages": {
                "get": {
                    "operationId": "listHl7Messages", "summary": "The inbound HL7 message log (every message is stored before its ACK)",
                    "parameters": message_params,
                    "responses": with(problem_responses(&[("422", "Invalid query parameter")]), "200",
                        json!({"description": "A page of messages", "content": json_content("Hl7MessagePage")}))
                }
            },
            "/v1/radiology/hl7-messages/{id}": {
                "parameters": [id_param("Message id")],
                "get": {
                    "operationId": "getHl7Message", "summary": "One message: raw (decoded per MSH-18), parsed segments, and the ACK sent",
                    "responses": with(problem_responses(&[("404", "No such message in this tenant")]), "200",
                        json!({"description": "The message", "content": json_content("Hl7Message")}))
                }
            },
            "/v1/radiology/hl7-messages/{id}/reprocess": {
                "parameters": [id_param("Message id")],
                "post": {
                    "operationId": "reprocessHl7Message", "summary": "Apply a stored message again and record the new outcome (admin)",
                    "responses": with(problem_responses(&[("404", "No such message in this tenant")]), "200",
                        json!({"description": "The message with its new outcome", "content": json_content("Hl7Message")}))
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
            "ReportPage": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Report"}}, "next_cursor": {"type": ["string", "null"]}}},
            "Order": {"type": "object", "properties": {
                "id": {"type": "string", "format": "uuid"}, "placer_number": {"type": ["string", "null"]}, "filler_number": {"type": ["string", "null"]},
                "accession_number": {"type": ["string", "null"]}, "patient_id": {"type": ["string", "null"]},
                "status": {"type": "string", "enum": crate::orders::STATUSES},
                "order_control": {"type": "string", "description": "The last ORC-1 applied"}, "order_status": {"type": ["string", "null"], "description": "ORC-5 (HL7 table 0038)"},
                "requested_procedure_id": {"type": ["string", "null"]}, "procedure_code": {"type": ["string", "null"]}, "modality": {"type": ["string", "null"]},
                "priority": {"type": ["string", "null"], "enum": ["routine", "urgent", "asap", "stat", null]}, "ordering_provider": {"type": ["string", "null"]},
                "scheduled_at": {"type": ["string", "null"], "format": "date-time"}, "study_instance_uid": {"type": ["string", "null"]},
                "study": {"type": ["object", "null"], "description": "The imaging study it led to (by UID or accession), once it exists: {id, study_instance_uid, status}"},
                "version": {"type": "integer"}, "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"},
                "fhir": {"type": "object", "description": "The FHIR R4 ServiceRequest"}}},
            "OrderPage": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Order"}}, "next_cursor": {"type": ["string", "null"]}}},
            "Hl7ConnectorInput": {"type": "object", "required": ["direction", "name"], "description": "inbound: sending_application (MSH-3), sending_facility (MSH-4), facility_id; outbound: host, port, ack_timeout_ms, retry, events", "properties": {
                "direction": {"type": "string", "enum": ["inbound", "outbound"]}, "name": {"type": "string", "maxLength": 200},
                "sending_application": {"type": "string"}, "sending_facility": {"type": "string"}, "facility_id": {"type": "string", "format": "uuid"},
                "host": {"type": "string"}, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "ack_timeout_ms": {"type": "integer", "minimum": 100, "maximum": 600000, "default": 10000},
                "retry": {"type": "object", "properties": {"initial_ms": {"type": "integer", "default": 1000}, "max_ms": {"type": "integer", "default": 60000},
                    "max_attempts": {"type": "integer", "default": 5, "description": "For AR answers; an unreachable destination is retried for ever"}}},
                "tls": {"type": "object", "description": "MLLP over TLS to the destination", "properties": {
                    "enabled": {"type": "boolean"}, "ca_pem": {"type": "string", "description": "PEM certificates trusted besides the public roots"},
                    "server_name": {"type": "string", "description": "Name checked in the certificate (default: host)"}}},
                "events": {"type": "array", "items": {"type": "string", "enum": crate::interop::hl7::connectors::EVENTS}},
                "active": {"type": "boolean", "default": true}}},
            "Hl7Connector": {"type": "object", "description": "The input fields of its direction, with id, created_at, updated_at"},
            "Hl7ConnectorPage": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Hl7Connector"}}, "next_cursor": {"type": ["string", "null"]}}},
            "Hl7Message": {"type": "object", "properties": {
                "id": {"type": "string", "format": "uuid"}, "connector_id": {"type": ["string", "null"], "format": "uuid"}, "peer": {"type": ["string", "null"]},
                "message_type": {"type": ["string", "null"]}, "control_id": {"type": ["string", "null"]}, "version": {"type": ["string", "null"]},
                "status": {"type": "string", "enum": ["processed", "error", "rejected", "conflict"]}, "ack_code": {"type": ["string", "null"]},
                "error": {"type": ["string", "null"]}, "order_id": {"type": ["string", "null"]}, "report_id": {"type": ["string", "null"]},
                "duplicates": {"type": "integer", "description": "Times the same message was received again (answered with the stored ACK)"},
                "received_at": {"type": "string", "format": "date-time"}, "processed_at": {"type": "string", "format": "date-time"},
                "raw": {"type": "string", "description": "Single message only"}, "parsed": {"type": "object", "description": "Single message only"},
                "ack": {"type": ["string", "null"], "description": "Single message only"}}},
            "Hl7MessagePage": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Hl7Message"}}, "next_cursor": {"type": ["string", "null"]}}},
            "Hl7RoundTrip": {"type": "object", "properties": {
                "id": {"type": "string", "format": "uuid"}, "connector_id": {"type": "string", "format": "uuid"},
                "status": {"type": "string", "enum": ["running", "passed", "failed", "error"]},
                "window": {"type": "object"}, "created_at": {"type": "string"}, "finished_at": {"type": ["string", "null"]},
                "result": {"type": ["object", "null"], "description": "test_order {control_id, ack_code, accepted, round_trip_ms}; orders {total, complete, broken, chains: [{…, broken_links: [text]}]}; message_problems; ok"}}}
        }
    })
}
