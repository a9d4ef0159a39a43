//! The ORM/ORU round-trip check (go-live step 2, before the parallel run).
//!
//! A run has two parts:
//! - **Send** (outbound connectors): a synthetic ORM^O01 NW test order (MSH-11 `T`,
//!   patient `ROUNDTRIP^TEST`) goes to the destination; its ACK must be AA/CA with
//!   MSA-2 = our MSH-10. The ACK code and round-trip time are recorded.
//! - **Chains**: over a window of inbound traffic (the connector's own for an inbound
//!   connector, the tenant's for an outbound one), every order an ORM/OMI created or
//!   changed is followed to its imaging study (by Study Instance UID or accession) and
//!   its report (an ORU linked to the order). Each broken link is named, as are the
//!   messages of the window that did not apply and results that named no known order.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::connectors::ConnectorRow;
use super::inbound::new_control_id;
use super::message::format_ts;
use super::outbound::{send_once, Builder};
use super::store::RoundTripRow;
use super::Hl7Service;
use crate::auth::TenantId;

/// Starts a run: stores it as `running` and does the work on its own task.
pub async fn start(
    service: &Arc<Hl7Service>,
    tenant: TenantId,
    connector: ConnectorRow,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    send_test_order: bool,
    requested_by: Option<String>,
) -> Result<RoundTripRow, crate::db::StoreError> {
    let row = RoundTripRow {
        id: Uuid::new_v4(),
        tenant_id: tenant.0,
        connector_id: connector.id,
        status: "running".into(),
        window_from: from,
        window_to: to,
        result: None,
        requested_by,
        created_at: crate::db::now(),
        finished_at: None,
    };
    service.store.insert_round_trip(&row).await?;
    let s = service.clone();
    let id = row.id;
    tokio::spawn(async move {
        let result = run(&s, tenant, &connector, from, to, send_test_order).await;
        let (status, result) = match result {
            Ok(r) => (if r["ok"] == json!(true) { "passed" } else { "failed" }, r),
            Err(e) => {
                tracing::warn!(error.cause_chain = ?e, "round-trip check could not run");
                ("error", json!({"ok": false, "error": e.to_string()}))
            }
        };
        if let Err(e) = s.store.finish_round_trip(tenant, id, status, &result).await {
            tracing::error!(error.cause_chain = ?e, "could not record a round-trip result");
        }
    });
    Ok(row)
}

/// The synthetic test order.
pub fn test_order(control_id: &str) -> Vec<u8> {
    let mut b = Builder::new("ORM^O01^ORM_O01", control_id, "T");
    let now = format_ts(Utc::now());
    let placer = format!("RT-{}", &control_id[1..9]);
    b.segment("PID", &[&["1"], &[], &["ROUNDTRIP-TEST", "", "", "RADIOLOGY", "MR"], &[], &["ROUNDTRIP", "TEST"]]);
    b.segment("ORC", &[&["NW"], &[&placer, "RADIOLOGY"], &[], &[], &["SC"], &[], &[], &[], &[&now]]);
    b.segment("OBR", &[&["1"], &[&placer, "RADIOLOGY"], &[], &["RTCHECK", "Round-trip check (test order, do not perform)", "L"]]);
    b.finish()
}

async fn run(service: &Hl7Service, tenant: TenantId, connector: &ConnectorRow, from: DateTime<Utc>, to: DateTime<Utc>, send_test_order: bool) -> anyhow::Result<Value> {
    let mut ok = true;
    let mut report = json!({"connector_id": connector.id, "direction": connector.direction, "window": {"from": from, "to": to}});
    if send_test_order && connector.direction == "outbound" {
        let control_id = new_control_id();
        let message = test_order(&control_id);
        let sent = match send_once(connector, &control_id, &message).await {
            Ok((code, ack, elapsed)) => {
                let accepted = code == "AA" || code == "CA";
                ok &= accepted;
                json!({"control_id": control_id, "ack_code": code, "accepted": accepted, "round_trip_ms": elapsed.as_millis() as u64,
                       "ack": String::from_utf8_lossy(&ack).replace('\r', "\n")})
            }
            Err(e) => {
                ok = false;
                json!({"control_id": control_id, "accepted": false, "error": e.to_string()})
            }
        };
        report["test_order"] = sent;
    }
    let inbound = (connector.direction == "inbound").then_some(connector.id);
    let chains = service.store.order_chains(tenant, inbound, from, to).await?;
    let mut complete = 0;
    let mut list = Vec::new();
    for c in &chains {
        let mut broken = Vec::new();
        let who = c.accession_number.as_deref().or(c.placer_number.as_deref()).unwrap_or("?");
        if c.order_status == "revoked" {
            list.push(json!({"order_id": c.order_id, "placer_number": c.placer_number, "accession_number": c.accession_number,
                             "order_status": c.order_status, "complete": true, "note": "the order was cancelled; no study or result expected"}));
            complete += 1;
            continue;
        }
        if c.study_id.is_none() {
            broken.push(format!(
                "study: no imaging study with Study Instance UID {} or accession {} has arrived from the PACS",
                c.study_uid.as_deref().unwrap_or("(none given)"),
                c.accession_number.as_deref().unwrap_or("(none given)")
            ));
        }
        match c.report_status.as_deref() {
            None => broken.push(format!("result: no ORU^R01 for order {who} has been received")),
            Some("final" | "amended" | "corrected" | "appended") => {}
            Some(s) => broken.push(format!("result: the report for order {who} is {s}, not final")),
        }
        if broken.is_empty() {
            complete += 1;
        }
        list.push(json!({
            "order_id": c.order_id,
            "placer_number": c.placer_number,
            "filler_number": c.filler_number,
            "accession_number": c.accession_number,
            "study_instance_uid": c.study_uid,
            "order_status": c.order_status,
            "order": "received",
            "study": c.study_id.map(|id| json!({"id": id, "status": c.study_status})),
            "report": c.report_id.map(|id| json!({"id": id, "status": c.report_status})),
            "complete": broken.is_empty(),
            "broken_links": broken,
        }));
    }
    let problems = service.store.window_problems(tenant, inbound, from, to).await?;
    let problems: Vec<Value> = problems
        .iter()
        .map(|m| {
            let what = if m.status == "processed" { "a result for an order this service never received (no ORM/OMI)".to_string() } else { m.error.clone().unwrap_or_default() };
            json!({"message_id": m.id, "control_id": m.control_id, "message_type": m.message_type, "status": m.status, "received_at": m.received_at, "problem": what})
        })
        .collect();
    ok &= complete == chains.len() && problems.is_empty();
    report["orders"] = json!({"total": chains.len(), "complete": complete, "broken": chains.len() - complete, "chains": list});
    report["message_problems"] = json!(problems);
    report["ok"] = json!(ok);
    Ok(report)
}
