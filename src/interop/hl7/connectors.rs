//! HL7 connectors: an inbound connector is a sender (a RIS), recognised by MSH-3/MSH-4;
//! an outbound connector is a destination the outbox delivers events to.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sqlx::types::Json;
use uuid::Uuid;

use crate::error::FieldError;

/// Events an outbound connector may subscribe to.
pub const EVENTS: &[&str] = &["study_available", "report_final"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Redelivery of an outbound message: exponential backoff from `initial_ms` to `max_ms`.
/// A destination that cannot be reached is retried for ever (nothing is dropped); a
/// message it rejects (AR) is retried `max_attempts` times, then marked failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    pub initial_ms: u32,
    pub max_ms: u32,
    pub max_attempts: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { initial_ms: 1000, max_ms: 60_000, max_attempts: 5 }
    }
}

impl Retry {
    /// The wait before attempt `attempts + 1`.
    pub fn delay(&self, attempts: i32) -> std::time::Duration {
        let factor = 2u64.saturating_pow(attempts.clamp(0, 30) as u32);
        std::time::Duration::from_millis((u64::from(self.initial_ms).saturating_mul(factor)).min(u64::from(self.max_ms)))
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConnectorRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub direction: String,
    pub name: String,
    pub sending_application: Option<String>,
    pub sending_facility: Option<String>,
    pub facility_id: Option<Uuid>,
    pub host: Option<String>,
    pub port: Option<i32>,
    pub ack_timeout_ms: Option<i32>,
    pub retry: Option<Json<Retry>>,
    pub tls: Option<Json<Value>>,
    pub events: Json<Vec<String>>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ConnectorRow {
    /// A new connector of `tenant` with nothing set yet: what a create request's body
    /// is validated into.
    pub fn blank(tenant: Uuid) -> Self {
        let now = crate::db::now();
        ConnectorRow {
            id: Uuid::new_v4(),
            tenant_id: tenant,
            direction: String::new(),
            name: String::new(),
            sending_application: None,
            sending_facility: None,
            facility_id: None,
            host: None,
            port: None,
            ack_timeout_ms: None,
            retry: None,
            tls: None,
            events: Json(Vec::new()),
            active: true,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn cursor(&self) -> crate::pagination::Cursor {
        crate::pagination::Cursor { created_at: self.created_at, id: self.id }
    }

    pub fn retry(&self) -> Retry {
        self.retry.as_ref().map(|r| r.0).unwrap_or_default()
    }

    pub fn ack_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ack_timeout_ms.unwrap_or(10_000).max(1) as u64)
    }

    /// What clients see.
    pub fn view(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "direction": self.direction,
            "name": self.name,
            "active": self.active,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        });
        if self.direction == "inbound" {
            v["sending_application"] = json!(self.sending_application);
            v["sending_facility"] = json!(self.sending_facility.as_deref().filter(|f| !f.is_empty()));
            v["facility_id"] = json!(self.facility_id);
        } else {
            v["host"] = json!(self.host);
            v["port"] = json!(self.port);
            v["ack_timeout_ms"] = json!(self.ack_timeout_ms);
            v["retry"] = json!(self.retry());
            v["tls"] = json!(self.tls.as_ref().map(|t| &t.0));
            v["events"] = json!(self.events.0);
        }
        v
    }
}

const INBOUND_FIELDS: &[&str] = &["direction", "name", "sending_application", "sending_facility", "facility_id", "active"];
const OUTBOUND_FIELDS: &[&str] = &["direction", "name", "host", "port", "ack_timeout_ms", "retry", "tls", "events", "active"];

fn text(body: &Map<String, Value>, field: &str, max: usize, errors: &mut Vec<FieldError>) -> Option<String> {
    match body.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control) => Some(s.trim().to_string()),
        Some(_) => {
            errors.push(FieldError::new(field, format!("must be a non-empty string of at most {max} characters")));
            None
        }
    }
}

fn int(body: &Map<String, Value>, field: &str, range: std::ops::RangeInclusive<i64>, errors: &mut Vec<FieldError>) -> Option<i64> {
    match body.get(field) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64().filter(|n| range.contains(n)) {
            Some(n) => Some(n),
            None => {
                errors.push(FieldError::new(field, format!("must be an integer from {} to {}", range.start(), range.end())));
                None
            }
        },
    }
}

/// Validates a whole connector (a create, or a patch merged over the stored one) and
/// fills `row`'s columns. Every bad field is named.
pub fn validate(body: &Map<String, Value>, row: &mut ConnectorRow) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let direction = match body.get("direction").and_then(Value::as_str) {
        Some("inbound") => Direction::Inbound,
        Some("outbound") => Direction::Outbound,
        _ => {
            errors.push(FieldError::new("direction", "must be \"inbound\" or \"outbound\""));
            return Err(errors);
        }
    };
    let allowed = if direction == Direction::Inbound { INBOUND_FIELDS } else { OUTBOUND_FIELDS };
    for key in body.keys() {
        if !allowed.contains(&key.as_str()) {
            errors.push(FieldError::new(key.as_str(), format!("is not a field of an {} connector; allowed: {}", direction.as_str(), allowed.join(", "))));
        }
    }
    row.direction = direction.as_str().to_string();
    match text(body, "name", 200, &mut errors) {
        Some(n) => row.name = n,
        None if !body.contains_key("name") => errors.push(FieldError::new("name", "is required")),
        None => {}
    }
    row.active = match body.get("active") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(FieldError::new("active", "must be true or false"));
            true
        }
    };
    match direction {
        Direction::Inbound => {
            row.sending_application = text(body, "sending_application", 180, &mut errors);
            if row.sending_application.is_none() && !errors.iter().any(|e| e.field == "sending_application") {
                errors.push(FieldError::new("sending_application", "is required (MSH-3 namespace id of the sender)"));
            }
            // An absent MSH-4 is stored as "" so that the sender pair stays unique.
            row.sending_facility = Some(text(body, "sending_facility", 180, &mut errors).unwrap_or_default());
            row.facility_id = match body.get("facility_id") {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                    Some(u) => Some(u),
                    None => {
                        errors.push(FieldError::new("facility_id", "must be a UUID"));
                        None
                    }
                },
            };
        }
        Direction::Outbound => {
            row.host = text(body, "host", 253, &mut errors);
            if let Some(h) = &row.host {
                if h.contains(['/', ' ', '@']) {
                    errors.push(FieldError::new("host", "must be a host name or IP address"));
                }
            } else if !errors.iter().any(|e| e.field == "host") {
                errors.push(FieldError::new("host", "is required"));
            }
            row.port = int(body, "port", 1..=65535, &mut errors).map(|p| p as i32);
            if row.port.is_none() && !errors.iter().any(|e| e.field == "port") {
                errors.push(FieldError::new("port", "is required"));
            }
            row.ack_timeout_ms = Some(int(body, "ack_timeout_ms", 100..=600_000, &mut errors).unwrap_or(10_000) as i32);
            let mut retry = Retry::default();
            match body.get("retry") {
                None | Some(Value::Null) => {}
                Some(Value::Object(r)) => {
                    for key in r.keys() {
                        if !["initial_ms", "max_ms", "max_attempts"].contains(&key.as_str()) {
                            errors.push(FieldError::new(format!("retry.{key}"), "unknown; allowed: initial_ms, max_ms, max_attempts"));
                        }
                    }
                    let mut sub = Vec::new();
                    retry.initial_ms = int(r, "initial_ms", 10..=3_600_000, &mut sub).unwrap_or(retry.initial_ms as i64) as u32;
                    retry.max_ms = int(r, "max_ms", 10..=86_400_000, &mut sub).unwrap_or(retry.max_ms as i64) as u32;
                    retry.max_attempts = int(r, "max_attempts", 1..=1000, &mut sub).unwrap_or(retry.max_attempts as i64) as u32;
                    if retry.max_ms < retry.initial_ms {
                        sub.push(FieldError::new("max_ms", "must not be less than initial_ms"));
                    }
                    errors.extend(sub.into_iter().map(|e| FieldError::new(format!("retry.{}", e.field), e.message)));
                }
                Some(_) => errors.push(FieldError::new("retry", "must be an object {initial_ms, max_ms, max_attempts}")),
            }
            row.retry = Some(Json(retry));
            row.tls = match body.get("tls") {
                None | Some(Value::Null) => None,
                Some(Value::Object(t)) => tls_field(t, &mut errors).map(Json),
                Some(_) => {
                    errors.push(FieldError::new("tls", "must be an object {enabled, ca_pem?, server_name?}"));
                    None
                }
            };
            match body.get("events") {
                Some(Value::Array(list)) if !list.is_empty() => {
                    let mut events = Vec::new();
                    for (i, e) in list.iter().enumerate() {
                        match e.as_str().filter(|e| EVENTS.contains(e)) {
                            Some(e) if !events.iter().any(|x: &String| x == e) => events.push(e.to_string()),
                            Some(_) => errors.push(FieldError::new(format!("events[{i}]"), "is listed twice")),
                            None => errors.push(FieldError::new(format!("events[{i}]"), format!("must be one of {}", EVENTS.join(", ")))),
                        }
                    }
                    row.events = Json(events);
                }
                _ => errors.push(FieldError::new("events", format!("is required: a non-empty list of {}", EVENTS.join(", ")))),
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// MLLP over TLS to a destination: `{"enabled": true, "ca_pem"?: "<PEM certificates the
/// RIS's certificate chains to, besides the public roots>", "server_name"?: "<name in its
/// certificate; default the host>"}`. `{"enabled": false}` is plain TCP.
fn tls_field(t: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<Value> {
    for key in t.keys() {
        if !["enabled", "ca_pem", "server_name"].contains(&key.as_str()) {
            errors.push(FieldError::new(format!("tls.{key}"), "unknown; allowed: enabled, ca_pem, server_name"));
        }
    }
    let enabled = match t.get("enabled") {
        Some(Value::Bool(b)) => *b,
        _ => {
            errors.push(FieldError::new("tls.enabled", "is required: true or false"));
            return None;
        }
    };
    if !enabled {
        return None;
    }
    if let Some(pem) = t.get("ca_pem") {
        match pem.as_str() {
            Some(p) if !super::outbound::pem_certificates(p).is_empty() => {}
            _ => errors.push(FieldError::new("tls.ca_pem", "must hold at least one PEM certificate (-----BEGIN CERTIFICATE-----)")),
        }
    }
    if let Some(name) = t.get("server_name") {
        let ok = name.as_str().is_some_and(|n| tokio_rustls::rustls::pki_types::ServerName::try_from(n.to_string()).is_ok());
        if !ok {
            errors.push(FieldError::new("tls.server_name", "must be a DNS name or IP address"));
        }
    }
    Some(Value::Object(t.clone()))
}

/// The stored connector as a request body (for a patch merged over it).
pub fn as_body(row: &ConnectorRow) -> Map<String, Value> {
    let mut v = row.view();
    let obj = v.as_object_mut().expect("an object");
    for k in ["id", "created_at", "updated_at"] {
        obj.remove(k);
    }
    obj.retain(|_, v| !v.is_null());
    obj.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> ConnectorRow {
        ConnectorRow::blank(Uuid::nil())
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn inbound_and_outbound_bodies() {
        let mut row = blank();
        validate(&obj(json!({"direction": "inbound", "name": "RIS", "sending_application": "RIS"})), &mut row).unwrap();
        assert_eq!(row.sending_facility.as_deref(), Some(""));
        let mut row = blank();
        validate(&obj(json!({"direction": "outbound", "name": "RIS out", "host": "127.0.0.1", "port": 2576, "events": ["report_final"]})), &mut row).unwrap();
        assert_eq!(row.retry().max_attempts, 5);
        assert_eq!(row.ack_timeout_ms, Some(10_000));
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut row = blank();
        let errors = validate(
            &obj(json!({"direction": "outbound", "name": "", "host": "a b", "port": 70000, "events": ["x", "report_final"], "retry": {"initial_ms": 5, "nope": 1}, "sending_application": "RIS"})),
            &mut row,
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for f in ["name", "host", "port", "events[0]", "retry.initial_ms", "retry.nope", "sending_application"] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
        assert!(validate(&obj(json!({"direction": "sideways"})), &mut row).is_err());
        let e = validate(&obj(json!({"direction": "inbound", "name": "x"})), &mut row).unwrap_err();
        assert_eq!(e[0].field, "sending_application");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = Retry { initial_ms: 100, max_ms: 1000, max_attempts: 3 };
        assert_eq!(r.delay(0).as_millis(), 100);
        assert_eq!(r.delay(3).as_millis(), 800);
        assert_eq!(r.delay(10).as_millis(), 1000);
    }
}
