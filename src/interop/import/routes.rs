//! `$import` on the FHIR facade: kick-off, status polling, cancellation and the error
//! NDJSON of each input.
//!
//! - `POST /fhir/r4/$import` (`Prefer: respond-async`) → 202, `Content-Location` = the
//!   status URL. Needs `radiology.admin`.
//! - `GET /fhir/r4/$import-poll-status/{job}` → 202 + `X-Progress` while queued or
//!   running; 200 + the completion manifest; 500 + OperationOutcome if it failed.
//! - `DELETE` the same URL cancels a queued or running job (what is already imported
//!   stays), or forgets a finished one.
//! - `GET …/{job}/error/{input}.ndjson`: one OperationOutcome per rejected line.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_LOCATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use uuid::Uuid;

use super::store::{InputRow, JobRow};
use crate::auth::Role;
use crate::db::StoreError;
use crate::interop::fhir::{base_url, fhir_json, operation_outcome, FhirCtx, FhirError, BASE};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{BASE}/$import"), post(kick_off))
        .route(&format!("{BASE}/$import-poll-status/{{id}}"), get(status).delete(cancel))
        .route(&format!("{BASE}/$import-poll-status/{{id}}/error/{{file}}"), get(errors))
}

async fn kick_off(State(state): State<AppState>, ctx: FhirCtx, headers: HeaderMap, body: Bytes) -> Result<Response, FhirError> {
    ctx.0.require(Role::Admin)?;
    let prefer = headers.get("prefer").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !prefer.contains("respond-async") {
        return Err(FhirError::invalid(vec!["$import runs asynchronously: send Prefer: respond-async".into()]));
    }
    let body: Value = serde_json::from_slice(&body).map_err(|e| FhirError::invalid(vec![format!("the body is not JSON: {e}")]))?;
    let request = super::request::parse(&body, &state.imports.settings().policy).map_err(FhirError::invalid)?;
    let job = state.imports.submit(ctx.0.tenant, &request, Some(ctx.0.subject.clone())).await?;
    tracing::info!(job_id = %job.id, inputs = request.inputs.len(), "import job queued");
    let location = format!("{}/$import-poll-status/{}", base_url(&headers), job.id);
    let mut response = fhir_json(
        StatusCode::ACCEPTED,
        operation_outcome("information", "informational", &[format!("import job {} accepted; poll {location}", job.id)]),
    );
    response.headers_mut().insert(CONTENT_LOCATION, HeaderValue::from_str(&location).expect("a URL is a header value"));
    Ok(response)
}

async fn load(state: &AppState, ctx: &FhirCtx, id: &str) -> Result<(JobRow, Vec<InputRow>), FhirError> {
    let missing = || FhirError::not_found(&format!("import job {id}"));
    let id = Uuid::parse_str(id).map_err(|_| missing())?;
    match state.imports.store().get(ctx.0.tenant, id).await {
        Ok(found) => Ok(found),
        Err(StoreError::NotFound) => Err(missing()),
        Err(e) => Err(e.into()),
    }
}

/// `X-Progress` of a queued or running job.
fn progress(job: &JobRow, inputs: &[InputRow]) -> String {
    if job.status == "queued" && job.started_at.is_none() {
        return "queued (a tenant's imports run one at a time, oldest first)".into();
    }
    let parts: Vec<String> = inputs
        .iter()
        .map(|i| {
            let state = if i.done {
                "done".to_string()
            } else {
                match i.total_bytes.filter(|t| *t > 0) {
                    Some(total) => format!("{}%", i.byte_offset * 100 / total),
                    None => format!("{} lines", i.line),
                }
            };
            format!("{} #{}: {state} ({} imported, {} failed)", i.resource_type, i.position + 1, i.created + i.updated + i.unchanged, i.failed)
        })
        .collect();
    let retry = if job.status == "queued" { "; retrying after an error" } else { "" };
    format!("{}{retry}", parts.join("; "))
}

async fn status(State(state): State<AppState>, ctx: FhirCtx, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, FhirError> {
    let (job, inputs) = load(&state, &ctx, &id).await?;
    let base = base_url(&headers);
    match job.status.as_str() {
        "queued" | "running" => {
            let mut response = StatusCode::ACCEPTED.into_response();
            let h = response.headers_mut();
            let text: String = progress(&job, &inputs).chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).collect();
            h.insert("x-progress", HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("running")));
            h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
            Ok(response)
        }
        "completed" => {
            let output: Vec<Value> = inputs
                .iter()
                .map(|i| {
                    json!({"type": i.resource_type, "count": i.created + i.updated + i.unchanged, "inputUrl": i.url,
                           "created": i.created, "updated": i.updated, "unchanged": i.unchanged})
                })
                .collect();
            let error: Vec<Value> = inputs
                .iter()
                .filter(|i| i.failed > 0)
                .map(|i| {
                    json!({"type": "OperationOutcome", "count": i.failed, "inputUrl": i.url,
                           "url": format!("{base}/$import-poll-status/{}/error/{}.ndjson", job.id, i.position)})
                })
                .collect();
            let manifest = json!({
                "transactionTime": job.transaction_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "request": format!("{base}/$import"),
                "requiresAccessToken": true,
                "output": output,
                "error": error,
            });
            let mut response = (StatusCode::OK, manifest.to_string()).into_response();
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(response)
        }
        "failed" => Err(FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", format!("import job failed: {}", job.error.unwrap_or_default()))),
        _ => Err(FhirError::not_found(&format!("import job {id} (cancelled)"))),
    }
}

async fn cancel(State(state): State<AppState>, ctx: FhirCtx, Path(id): Path<String>) -> Result<Response, FhirError> {
    ctx.0.require(Role::Admin)?;
    let (job, _) = load(&state, &ctx, &id).await?;
    let before = state.imports.store().cancel(ctx.0.tenant, job.id).await?;
    if before != "queued" && before != "running" {
        state.imports.store().delete(ctx.0.tenant, job.id).await?;
    }
    tracing::info!(job_id = %job.id, status_before = %before, "import job cancelled or deleted");
    Ok(fhir_json(StatusCode::ACCEPTED, operation_outcome("information", "informational", &[format!("import job {} cancelled", job.id)])))
}

async fn errors(State(state): State<AppState>, ctx: FhirCtx, Path((id, file)): Path<(String, String)>) -> Result<Response, FhirError> {
    let (job, inputs) = load(&state, &ctx, &id).await?;
    let position: i32 = file
        .strip_suffix(".ndjson")
        .and_then(|p| p.parse().ok())
        .filter(|p| inputs.iter().any(|i| i.position == *p))
        .ok_or_else(|| FhirError::not_found(&format!("error file {file} of import job {id}")))?;
    let mut body = String::new();
    let mut after = 0;
    loop {
        let page = state.imports.store().errors(ctx.0.tenant, job.id, position, after, 1000).await?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (_, outcome) in &page {
            body.push_str(&outcome.0.to_string());
            body.push('\n');
        }
    }
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/fhir+ndjson"));
    Ok(response)
}
