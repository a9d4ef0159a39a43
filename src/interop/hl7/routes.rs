//! REST: `/v1/radiology/hl7-connectors` (with each destination's outbox and the
//! round-trip check) and `/v1/radiology/hl7-messages` (the inbound message log).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::connectors::{self, ConnectorRow};
use super::message::{decode_text, Message};
use super::store::{MessageFilter, MessageRow, OutboxRow};
use crate::auth::{Role, TenantCtx};
use crate::db::sql::Bound;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::http::{parse_uuid, reject_unknown_params, JsonObject};
use crate::interop::fhir::params::date_range;
use crate::pagination::{Page, PageRequest};
use crate::AppState;

pub const CONNECTORS: &str = "/v1/radiology/hl7-connectors";
pub const MESSAGES: &str = "/v1/radiology/hl7-messages";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(CONNECTORS, get(list_connectors).post(create_connector))
        .route(&format!("{CONNECTORS}/{{id}}"), get(read_connector).patch(patch_connector).delete(delete_connector))
        .route(&format!("{CONNECTORS}/{{id}}/outbox"), get(outbox))
        .route(&format!("{CONNECTORS}/{{id}}/outbox/{{seq}}/retry"), post(retry_outbox))
        .route(&format!("{CONNECTORS}/{{id}}/round-trip"), post(start_round_trip))
        .route(&format!("{CONNECTORS}/{{id}}/round-trip/{{run}}"), get(read_round_trip))
        .route(MESSAGES, get(list_messages))
        .route(&format!("{MESSAGES}/{{id}}"), get(read_message))
        .route(&format!("{MESSAGES}/{{id}}/reprocess"), post(reprocess))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn create_connector(State(state): State<AppState>, ctx: TenantCtx, JsonObject(body): JsonObject) -> ApiResult<Response> {
    ctx.require(Role::Admin)?;
    let mut row = ConnectorRow::blank(ctx.tenant.0);
    connectors::validate(&body, &mut row).map_err(ApiError::Validation)?;
    state.hl7.store.insert_connector(&row).await?;
    state.hl7.reload_routes().await;
    let location = format!("{CONNECTORS}/{}", row.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(row.view())).into_response())
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn list_connectors(State(state): State<AppState>, ctx: TenantCtx, Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<Page<Value>>> {
    ctx.require(Role::Read)?;
    let mut errors = Vec::new();
    reject_unknown_params(q.keys(), &["direction", "limit", "cursor"], &mut errors);
    let direction = q.get("direction").map(String::as_str);
    if direction.is_some_and(|d| d != "inbound" && d != "outbound") {
        errors.push(FieldError::new("direction", "must be inbound or outbound"));
    }
    let page = PageRequest::parse(q.get("limit").map(String::as_str), q.get("cursor").map(String::as_str), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let rows = state.hl7.store.list_connectors(ctx.tenant, direction, &page).await?;
    Ok(Json(Page::from_rows(rows, &page, ConnectorRow::cursor, |r| r.view())))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn read_connector(State(state): State<AppState>, ctx: TenantCtx, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    ctx.require(Role::Read)?;
    Ok(Json(state.hl7.store.get_connector(ctx.tenant, parse_uuid(&id)?).await?.view()))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn patch_connector(State(state): State<AppState>, ctx: TenantCtx, Path(id): Path<String>, JsonObject(body): JsonObject) -> ApiResult<Json<Value>> {
    ctx.require(Role::Admin)?;
    let mut row = state.hl7.store.get_connector(ctx.tenant, parse_uuid(&id)?).await?;
    if let Some(d) = body.get("direction") {
        if d.as_str() != Some(row.direction.as_str()) {
            return Err(ApiError::Validation(vec![FieldError::new("direction", "cannot be changed; create another connector")]));
        }
    }
    let mut merged: Map<String, Value> = connectors::as_body(&row);
    for (k, v) in body {
        merged.insert(k, v);
    }
    connectors::validate(&merged, &mut row).map_err(ApiError::Validation)?;
    row.updated_at = crate::db::now();
    state.hl7.store.update_connector(&row).await?;
    state.hl7.reload_routes().await;
    Ok(Json(row.view()))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn delete_connector(State(state): State<AppState>, ctx: TenantCtx, Path(id): Path<String>) -> ApiResult<StatusCode> {
    ctx.require(Role::Admin)?;
    state.hl7.store.delete_connector(ctx.tenant, parse_uuid(&id)?).await?;
    state.hl7.reload_routes().await;
    Ok(StatusCode::NO_CONTENT)
}

fn outbox_view(r: &OutboxRow) -> Value {
    json!({
        "seq": r.seq,
        "event": r.event,
        "resource_type": r.resource_type,
        "resource_id": r.resource_id,
        "resource_version": r.resource_version,
        "status": r.status,
        "control_id": r.control_id,
        "attempts": r.attempts,
        "next_attempt_at": r.next_attempt_at,
        "last_error": r.last_error,
        "ack_code": r.ack_code,
        "message": r.message.as_deref().map(|m| String::from_utf8_lossy(m).replace('\r', "\n")),
        "ack": r.ack.as_deref().map(|m| String::from_utf8_lossy(m).replace('\r', "\n")),
        "created_at": r.created_at,
        "sent_at": r.sent_at,
        "done_at": r.done_at,
    })
}

/// A destination's outbox, oldest first: `status` filters, `after` is the last `seq` seen.
#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn outbox(State(state): State<AppState>, ctx: TenantCtx, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<Value>> {
    ctx.require(Role::Read)?;
    let mut errors = Vec::new();
    reject_unknown_params(q.keys(), &["status", "after", "limit"], &mut errors);
    let status = q.get("status").map(String::as_str);
    if status.is_some_and(|s| !["pending", "acked", "nak", "failed"].contains(&s)) {
        errors.push(FieldError::new("status", "must be pending, acked, nak or failed"));
    }
    let after = q.get("after").map(|a| a.parse::<i64>().map_err(|_| FieldError::new("after", "must be an integer (a seq)")));
    let limit = q.get("limit").map(|a| a.parse::<i64>().ok().filter(|n| (1..=1000).contains(n)).ok_or(FieldError::new("limit", "must be 1 to 1000")));
    let after = match after.transpose() {
        Ok(a) => a,
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let limit = match limit.transpose() {
        Ok(l) => l.unwrap_or(100),
        Err(e) => {
            errors.push(e);
            100
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let connector = state.hl7.store.get_connector(ctx.tenant, parse_uuid(&id)?).await?;
    let rows = state.hl7.store.list_outbox(ctx.tenant, connector.id, status, after, limit).await?;
    Ok(Json(json!({"items": rows.iter().map(outbox_view).collect::<Vec<_>>()})))
}

/// Sends a refused or failed outbound message again (admin).
#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn retry_outbox(State(state): State<AppState>, ctx: TenantCtx, Path((id, seq)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    ctx.require(Role::Admin)?;
    let seq: i64 = seq.parse().map_err(|_| ApiError::NotFound)?;
    let connector = state.hl7.store.get_connector(ctx.tenant, parse_uuid(&id)?).await?;
    let row = state.hl7.store.requeue_outbox(ctx.tenant, connector.id, seq).await?;
    Ok(Json(outbox_view(&row)))
}

fn round_trip_view(r: &super::store::RoundTripRow) -> Value {
    json!({
        "id": r.id,
        "connector_id": r.connector_id,
        "status": r.status,
        "window": {"from": r.window_from, "to": r.window_to},
        "requested_by": r.requested_by,
        "created_at": r.created_at,
        "finished_at": r.finished_at,
        "result": r.result.as_ref().map(|j| &j.0),
    })
}

/// Body (all optional): `from`, `to` (dates or date-times; default the last 7 days),
/// `send_test_order` (default true; outbound connectors only).
#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn start_round_trip(State(state): State<AppState>, ctx: TenantCtx, Path(id): Path<String>, body: axum::body::Bytes) -> ApiResult<Response> {
    ctx.require(Role::Admin)?;
    let body: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => m,
            _ => return Err(ApiError::BadRequest("the body must be a JSON object (or empty)".into())),
        }
    };
    let mut errors = Vec::new();
    for k in body.keys() {
        if !["from", "to", "send_test_order"].contains(&k.as_str()) {
            errors.push(FieldError::new(k.as_str(), "unknown field; allowed: from, to, send_test_order"));
        }
    }
    let mut bound = |field: &str, lower: bool, default: chrono::DateTime<Utc>| match body.get(field) {
        None | Some(Value::Null) => default,
        Some(v) => match v.as_str().and_then(date_range) {
            Some((lo, hi)) => {
                if lower {
                    lo
                } else {
                    hi
                }
            }
            None => {
                errors.push(FieldError::new(field, "must be a date (YYYY-MM-DD) or date-time (RFC 3339)"));
                default
            }
        },
    };
    let now = Utc::now();
    let from = bound("from", true, now - chrono::Duration::days(7));
    let to = bound("to", false, now + chrono::Duration::seconds(1));
    let send = match body.get("send_test_order") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(FieldError::new("send_test_order", "must be true or false"));
            true
        }
    };
    if to <= from {
        errors.push(FieldError::new("to", "must be after from"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let connector = state.hl7.store.get_connector(ctx.tenant, parse_uuid(&id)?).await?;
    let run = super::roundtrip::start(&state.hl7, ctx.tenant, connector.clone(), from, to, send, Some(ctx.subject.clone())).await?;
    let location = format!("{CONNECTORS}/{}/round-trip/{}", connector.id, run.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(round_trip_view(&run))).into_response())
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn read_round_trip(State(state): State<AppState>, ctx: TenantCtx, Path((id, run)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    ctx.require(Role::Read)?;
    let row = state.hl7.store.get_round_trip(ctx.tenant, parse_uuid(&id)?, parse_uuid(&run)?).await?;
    Ok(Json(round_trip_view(&row)))
}

/// A message as the log shows it; `full` adds the raw text, the parsed segments and the ACK.
pub fn message_view(m: &MessageRow, full: bool) -> Value {
    let mut v = json!({
        "id": m.id,
        "connector_id": m.connector_id,
        "peer": m.peer,
        "message_type": m.message_type,
        "control_id": m.control_id,
        "version": m.version_id,
        "sending_application": m.sending_application,
        "sending_facility": m.sending_facility,
        "status": m.status,
        "ack_code": m.ack_code,
        "error": m.error,
        "order_id": m.order_id,
        "report_id": m.report_id,
        "duplicates": m.duplicates,
        "size": m.raw.len(),
        "sha256": m.content_hash,
        "received_at": m.received_at,
        "processed_at": m.processed_at,
    });
    if full {
        let parsed = Message::parse(&m.raw);
        let charset = parsed.as_ref().ok().and_then(|p| p.raw_field("MSH", 18).map(str::to_string));
        v["raw"] = json!(decode_text(&m.raw, charset.as_deref()).0.replace('\r', "\n"));
        v["parsed"] = match parsed {
            Ok(p) => json!({
                "latin1_fallback": p.latin1_fallback,
                "segments": p.segments.iter().map(|s| json!({"id": s.id(), "fields": &s.fields[1..]})).collect::<Vec<_>>(),
            }),
            Err(e) => json!({"error": e.to_string()}),
        };
        v["ack"] = json!(m.ack.as_deref().map(|a| String::from_utf8_lossy(a).replace('\r', "\n")));
    }
    v
}

const MESSAGE_FILTERS: &[&str] = &["connector_id", "message_type", "control_id", "status", "received_from", "received_to", "limit", "cursor"];

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn list_messages(State(state): State<AppState>, ctx: TenantCtx, Query(q): Query<HashMap<String, String>>) -> ApiResult<Json<Page<Value>>> {
    ctx.require(Role::Read)?;
    let mut errors = Vec::new();
    reject_unknown_params(q.keys(), MESSAGE_FILTERS, &mut errors);
    let mut filter = MessageFilter {
        message_type: q.get("message_type").cloned(),
        control_id: q.get("control_id").cloned(),
        status: q.get("status").cloned(),
        ..MessageFilter::default()
    };
    if let Some(s) = &filter.status {
        if !["processed", "error", "rejected", "conflict"].contains(&s.as_str()) {
            errors.push(FieldError::new("status", "must be processed, error, rejected or conflict"));
        }
    }
    if let Some(c) = q.get("connector_id") {
        match Uuid::parse_str(c) {
            Ok(u) => filter.connector_id = Some(u),
            Err(_) => errors.push(FieldError::new("connector_id", "must be a UUID")),
        }
    }
    for (field, lower) in [("received_from", true), ("received_to", false)] {
        if let Some(v) = q.get(field) {
            match date_range(v) {
                Some((lo, hi)) => filter.received.push(if lower { Bound::From(lo) } else { Bound::Before(hi) }),
                None => errors.push(FieldError::new(field, "must be a date (YYYY-MM-DD) or date-time (RFC 3339)")),
            }
        }
    }
    let page = PageRequest::parse(q.get("limit").map(String::as_str), q.get("cursor").map(String::as_str), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let rows = state.hl7.store.list_messages(ctx.tenant, &filter, &page).await?;
    Ok(Json(Page::from_rows(rows, &page, MessageRow::cursor, |m| message_view(&m, false))))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn read_message(State(state): State<AppState>, ctx: TenantCtx, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    ctx.require(Role::Read)?;
    let m = state.hl7.store.get_message(ctx.tenant, parse_uuid(&id)?).await?;
    Ok(Json(message_view(&m, true)))
}

#[tracing::instrument(skip_all, fields(tenant_id = %ctx.tenant))]
async fn reprocess(State(state): State<AppState>, ctx: TenantCtx, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    ctx.require(Role::Admin)?;
    let row = state.hl7.reprocess(ctx.tenant, parse_uuid(&id)?).await?;
    Ok(Json(message_view(&row, true)))
}
