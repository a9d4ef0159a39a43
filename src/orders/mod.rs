//! Radiology orders (FHIR ServiceRequest), from ORM^O01 and OMI^O23.
//!
//! An order is keyed by its placer order number (ORC-2, with its namespace), else its
//! filler order number (ORC-3). Each message carries the order control (ORC-1) that
//! decides the new status: `NW` creates, `XO` updates, `CA`/`DC` cancel, `SC` takes
//! the order status of ORC-5. Fields a message leaves empty keep what the order had.
//! Orders link to imaging studies by Study Instance UID or accession number, resolved
//! when read, whichever arrived first.

pub mod fhir;
pub mod from_hl7;
pub mod routes;
pub mod store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use store::{OrderRow, OrderStore, SqlOrderStore};

/// ServiceRequest.status values (FHIR R4 value set request-status).
pub const STATUSES: &[&str] = &["draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"];

/// A coded value (HL7 CE/CWE, FHIR Coding).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Code {
    pub code: String,
    pub display: Option<String>,
    pub system: Option<String>,
}

/// What is known of an order; in a message, `None` keeps the stored value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderFields {
    /// ORC-5 (HL7 table 0038).
    pub order_status: Option<String>,
    pub placer_number: Option<String>,
    pub placer_namespace: Option<String>,
    pub filler_number: Option<String>,
    pub filler_namespace: Option<String>,
    pub accession_number: Option<String>,
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub requested_procedure_id: Option<String>,
    pub procedure: Option<Code>,
    pub modality: Option<String>,
    /// FHIR request-priority: routine | urgent | asap | stat.
    pub priority: Option<String>,
    pub ordering_provider: Option<Provider>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub authored_at: Option<DateTime<Utc>>,
    pub study_uid: Option<String>,
    /// OBR-31 (reason for study).
    pub reason: Option<Code>,
    /// OBR-13 (relevant clinical information).
    pub clinical_info: Option<String>,
    pub facility_id: Option<Uuid>,
}

impl OrderFields {
    /// Takes every value `newer` gives.
    fn overlay(&mut self, newer: &OrderFields) {
        macro_rules! take {
            ($($f:ident),*) => { $( if newer.$f.is_some() { self.$f = newer.$f.clone(); } )* };
        }
        take!(order_status, placer_number, placer_namespace, filler_number, filler_namespace, accession_number, patient_id, patient_name,
              requested_procedure_id, procedure, modality, priority, ordering_provider, scheduled_at, authored_at, study_uid, reason, clinical_info,
              facility_id);
    }
}

/// What an order message says about one order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrderUpsert {
    pub business_key: String,
    /// ORC-1: NW, XO, CA, DC, SC (and OC/OD/HD/RL for order-control messages).
    pub control: String,
    pub fields: OrderFields,
}

/// An ordering provider (XCN): id and name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    pub id: Option<String>,
    pub name: Option<String>,
}

/// The state of an order after a message: the stored one with the message applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderState {
    pub status: String,
    pub order_control: String,
    #[serde(flatten)]
    pub fields: OrderFields,
}

/// The ServiceRequest status an ORC-5 order status (HL7 table 0038) means.
pub fn status_of_order_status(code: &str) -> Option<&'static str> {
    Some(match code {
        "A" | "IP" | "SC" => "active",
        "CM" => "completed",
        "CA" | "DC" => "revoked",
        "HD" => "on-hold",
        "ER" => "entered-in-error",
        "RP" => "revoked",
        _ => return None,
    })
}

/// The order controls this service applies (HL7 table 0119).
pub const CONTROLS: &[&str] = &["NW", "XO", "CA", "DC", "SC", "OC", "OD", "HD", "RL"];

impl OrderUpsert {
    /// The order as it is after this message: `before` (the stored state, if any) with
    /// every value this message gives, and the status its order control implies.
    pub fn apply(&self, before: Option<&OrderState>) -> OrderState {
        let mut s = before.cloned().unwrap_or_else(|| OrderState { status: "active".into(), ..OrderState::default() });
        s.fields.overlay(&self.fields);
        s.order_control = self.control.clone();
        let from_orc5 = self.fields.order_status.as_deref().and_then(status_of_order_status);
        s.status = match self.control.as_str() {
            // A new order, or a re-order of a cancelled one.
            "NW" => from_orc5.filter(|st| *st != "revoked").unwrap_or("active").to_string(),
            "CA" | "DC" | "OC" | "OD" => "revoked".to_string(),
            "HD" => "on-hold".to_string(),
            "RL" => "active".to_string(),
            // XO and SC: ORC-5 when given, else what the order was.
            _ => from_orc5.map(str::to_string).unwrap_or(s.status),
        };
        s
    }
}
