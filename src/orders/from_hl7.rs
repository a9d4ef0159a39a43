//! ORM^O01 and OMI^O23 → order upserts.
//!
//! One order per ORC group (an ORC and the OBR, TQ1, IPC and ZDS segments after it).
//! Fields, with the v2.3.1 and v2.5.1 places they come from:
//!
//! | order | from |
//! |---|---|
//! | order control / status | ORC-1 / ORC-5 |
//! | placer / filler number | ORC-2 / ORC-3, else OBR-2 / OBR-3 (EI: id^namespace) |
//! | patient | PID-3 (first repetition, the id), PID-5 |
//! | accession | IPC-1, else OBR-18 |
//! | requested procedure id | IPC-2, else OBR-19 |
//! | procedure code | OBR-44, else OBR-4 (CE: code^text^system) |
//! | modality | IPC-5, else OBR-24 |
//! | priority | TQ1-9, else ORC-7/OBR-27 component 6 (table 0027) |
//! | scheduled | TQ1-7, else OBR-36, else ORC-7/OBR-27 component 4 |
//! | ordering provider | ORC-12, else OBR-16 (XCN: id^family^given) |
//! | Study Instance UID | IPC-3, else ZDS-1 |
//! | reason / clinical information | OBR-31 / OBR-13 |

use chrono::FixedOffset;

use super::{Code, OrderFields, OrderUpsert, Provider, CONTROLS};
use crate::interop::hl7::ack::AckError;
use crate::interop::hl7::message::{parse_ts, Message, Segment};
use crate::studies::mapping::is_valid_uid;

/// What went wrong with a message, for its ACK: the field and an HL7 table 0357 code.
pub fn error(segment: &str, sequence: usize, field: usize, code: u16, text: impl Into<String>) -> AckError {
    AckError { segment: segment.into(), sequence, field, component: 0, code, text: text.into() }
}

/// The business key of an order: `placer:<namespace>|<id>` (or `filler:…`).
pub fn order_key(kind: &str, id: &str, namespace: Option<&str>) -> String {
    format!("{kind}:{}|{id}", namespace.unwrap_or("").replace('|', "%7C"))
}

/// An EI (entity identifier): (id, namespace).
fn ei(m: &Message, seg: &Segment, field: usize) -> Option<(String, Option<String>)> {
    m.value_in(seg, field, 1).map(|id| (id, m.value_in(seg, field, 2)))
}

/// A CE/CWE: code^text^coding system.
pub fn code(m: &Message, seg: &Segment, field: usize) -> Option<Code> {
    let code = m.value_in(seg, field, 1)?;
    Some(Code { code, display: m.value_in(seg, field, 2), system: m.value_in(seg, field, 3) })
}

/// An XCN: id^family^given.
pub fn provider(m: &Message, seg: &Segment, field: usize) -> Option<Provider> {
    let id = m.value_in(seg, field, 1);
    let name = person_name(m.value_in(seg, field, 2), m.value_in(seg, field, 3));
    (id.is_some() || name.is_some()).then_some(Provider { id, name })
}

/// "Given Family" from the parts of an XPN/XCN.
pub fn person_name(family: Option<String>, given: Option<String>) -> Option<String> {
    match (given, family) {
        (Some(g), Some(f)) => Some(format!("{g} {f}")),
        (g, f) => g.or(f),
    }
}

/// HL7 table 0027 priority → FHIR request-priority.
fn priority(code: &str) -> Option<String> {
    Some(match code.to_ascii_uppercase().as_str() {
        "S" => "stat",
        "A" => "asap",
        "R" => "routine",
        "P" | "T" | "C" => "urgent",
        _ => return None,
    }
    .to_string())
}

/// PID-3 (the first identifier) and PID-5 of a message.
pub fn patient(m: &Message) -> (Option<String>, Option<String>) {
    let Some(pid) = m.segments("PID").next() else { return (None, None) };
    (m.value_in(pid, 3, 1), person_name(m.value_in(pid, 5, 1), m.value_in(pid, 5, 2)))
}

/// Reads every order of an ORM^O01 / OMI^O23. The first problem found is returned as
/// the error of the ACK.
pub fn orders(m: &Message, offset: FixedOffset) -> Result<Vec<OrderUpsert>, AckError> {
    let (patient_id, patient_name) = patient(m);
    if m.segments("PID").next().is_none() {
        return Err(error("PID", 1, 0, 100, "the message has no PID segment"));
    }
    match &patient_id {
        None => return Err(error("PID", 1, 3, 101, "PID-3 (patient identifier) is required")),
        Some(id) if id.chars().any(char::is_control) => return Err(error("PID", 1, 3, 102, "PID-3 (patient identifier) holds control characters")),
        Some(_) => {}
    }
    let mut groups: Vec<Vec<&Segment>> = Vec::new();
    for seg in &m.segments {
        match seg.id() {
            "ORC" => groups.push(vec![seg]),
            "OBR" | "TQ1" | "IPC" | "ZDS" | "NTE" => {
                if let Some(g) = groups.last_mut() {
                    g.push(seg);
                }
            }
            _ => {}
        }
    }
    if groups.is_empty() {
        return Err(error("ORC", 1, 0, 100, "the message has no ORC segment"));
    }
    // A ZDS written once after the last group belongs to every group that has none.
    let zds_anywhere = m.segments("ZDS").next().and_then(|z| m.value_in(z, 1, 1));
    let mut out = Vec::new();
    for (n, group) in groups.iter().enumerate() {
        let seq = n + 1;
        let orc = group[0];
        let find = |id: &str| group.iter().copied().find(|s| s.id() == id);
        let control = m.value_in(orc, 1, 1).ok_or_else(|| error("ORC", seq, 1, 101, "ORC-1 (order control) is required"))?;
        if !CONTROLS.contains(&control.as_str()) {
            return Err(error("ORC", seq, 1, 103, format!("ORC-1 {control:?} is not an order control this service applies ({})", CONTROLS.join(", "))));
        }
        let obr = find("OBR").ok_or_else(|| error("OBR", seq, 0, 100, format!("order {seq} (ORC) has no OBR segment")))?;
        let tq1 = find("TQ1");
        let ipc = find("IPC");
        let placer = ei(m, orc, 2).or_else(|| ei(m, obr, 2));
        let filler = ei(m, orc, 3).or_else(|| ei(m, obr, 3));
        let business_key = match (&placer, &filler) {
            (Some((id, ns)), _) => order_key("placer", id, ns.as_deref()),
            (None, Some((id, ns))) => order_key("filler", id, ns.as_deref()),
            (None, None) => return Err(error("ORC", seq, 2, 101, "ORC-2 (placer order number) or ORC-3 (filler order number) is required")),
        };
        let ts = |seg: &Segment, field: usize, comp: usize, label: &str| -> Result<Option<chrono::DateTime<chrono::Utc>>, AckError> {
            match m.value_in(seg, field, comp) {
                None => Ok(None),
                Some(v) => parse_ts(&v, offset)
                    .map(Some)
                    .ok_or_else(|| error(seg.id(), seq, field, 102, format!("{label} {v:?} is not an HL7 date/time"))),
            }
        };
        let timing = |comp: usize| m.value_in(orc, 7, comp).or_else(|| m.value_in(obr, 27, comp));
        let scheduled_at = match (tq1, m.value_in(obr, 36, 1), timing(4)) {
            (Some(t), _, _) if m.value_in(t, 7, 1).is_some() => ts(t, 7, 1, "TQ1-7 (start date/time)")?,
            (_, Some(_), _) => ts(obr, 36, 1, "OBR-36 (scheduled date/time)")?,
            (_, _, Some(v)) => Some(parse_ts(&v, offset).ok_or_else(|| error("OBR", seq, 27, 102, format!("OBR-27.4 {v:?} is not an HL7 date/time")))?),
            _ => None,
        };
        let priority = tq1.and_then(|t| m.value_in(t, 9, 1)).or_else(|| timing(6)).and_then(|p| priority(&p));
        let study_uid = ipc
            .and_then(|i| m.value_in(i, 3, 1))
            .or_else(|| find("ZDS").and_then(|z| m.value_in(z, 1, 1)))
            .or_else(|| (groups.len() == 1).then(|| zds_anywhere.clone()).flatten());
        if let Some(uid) = &study_uid {
            if !is_valid_uid(uid) {
                let (s, f) = if ipc.is_some() { ("IPC", 3) } else { ("ZDS", 1) };
                return Err(error(s, seq, f, 102, format!("{uid:?} is not a DICOM UID")));
            }
        }
        out.push(OrderUpsert {
            business_key,
            control,
            fields: OrderFields {
                order_status: m.value_in(orc, 5, 1),
                placer_number: placer.as_ref().map(|p| p.0.clone()),
                placer_namespace: placer.and_then(|p| p.1),
                filler_number: filler.as_ref().map(|p| p.0.clone()),
                filler_namespace: filler.and_then(|p| p.1),
                accession_number: ipc.and_then(|i| m.value_in(i, 1, 1)).or_else(|| m.value_in(obr, 18, 1)),
                patient_id: patient_id.clone(),
                patient_name: patient_name.clone(),
                requested_procedure_id: ipc.and_then(|i| m.value_in(i, 2, 1)).or_else(|| m.value_in(obr, 19, 1)),
                procedure: code(m, obr, 44).or_else(|| code(m, obr, 4)),
                modality: ipc.and_then(|i| m.value_in(i, 5, 1)).or_else(|| m.value_in(obr, 24, 1)),
                priority,
                ordering_provider: provider(m, orc, 12).or_else(|| provider(m, obr, 16)),
                scheduled_at,
                authored_at: ts(orc, 9, 1, "ORC-9 (date/time of transaction)")?,
                study_uid,
                reason: code(m, obr, 31),
                clinical_info: m.value_in(obr, 13, 1),
                facility_id: None,
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc() -> FixedOffset {
        FixedOffset::east_opt(0).unwrap()
    }

    const ORM: &str = "MSH|^~\\&|RIS|GEN|RAD|PLAT|20261205101500||ORM^O01|C1|P|2.3.1\r\
PID|1||MRN1^^^GEN^MR~X9^^^OTHER||M\\S\\ller^J\\T\\rgen\r\
ORC|NW|PL-1^RIS|FL-1^PACS||SC||^^^20261206090000^^S||20261205101400|||D1^House^Greg\r\
OBR|1|PL-1^RIS|FL-1^PACS|71020^CHEST 2 VIEWS^C4|||||||||Cough\\F\\fever|||||ACC-1|RP-1|||||CR\r\
ZDS|1.2.3.4.5^RIS^Application^DICOM\r";

    #[test]
    fn an_orm_maps_every_field() {
        let m = Message::parse(ORM.as_bytes()).unwrap();
        let u = orders(&m, utc()).unwrap().remove(0);
        let o = &u.fields;
        assert_eq!(u.business_key, "placer:RIS|PL-1");
        assert_eq!(u.control, "NW");
        assert_eq!(o.order_status.as_deref(), Some("SC"));
        assert_eq!(o.filler_number.as_deref(), Some("FL-1"));
        assert_eq!(o.patient_id.as_deref(), Some("MRN1"));
        assert_eq!(o.patient_name.as_deref(), Some("J&rgen M^ller"));
        assert_eq!(o.accession_number.as_deref(), Some("ACC-1"));
        assert_eq!(o.requested_procedure_id.as_deref(), Some("RP-1"));
        assert_eq!(o.procedure.as_ref().unwrap().code, "71020");
        assert_eq!(o.procedure.as_ref().unwrap().system.as_deref(), Some("C4"));
        assert_eq!(o.modality.as_deref(), Some("CR"));
        assert_eq!(o.priority.as_deref(), Some("stat"));
        assert_eq!(o.scheduled_at.unwrap().to_rfc3339(), "2026-12-06T09:00:00+00:00");
        assert_eq!(o.ordering_provider.as_ref().unwrap().name.as_deref(), Some("Greg House"));
        assert_eq!(o.study_uid.as_deref(), Some("1.2.3.4.5"));
        assert_eq!(o.clinical_info.as_deref(), Some("Cough|fever"));
        let s = u.apply(None);
        assert_eq!(s.status, "active");
    }

    #[test]
    fn omi_takes_ipc_and_tq1() {
        let omi = "MSH|^~\\&|RIS|GEN|RAD|PLAT|20261205101500||OMI^O23^OMI_O23|C2|P|2.5.1\r\
PID|1||MRN2\r\
ORC|NW|PL-2||||||||||\r\
TQ1|1||||||20261207080000||A\r\
OBR|1|PL-2||CT^CT HEAD^L||||||||||||||ACC-OLD||||||MR||||||||||||||||||||IMG1^CT head^LOCAL\r\
IPC|ACC-2|RP-2|1.2.840.5|SPS-1|CT\r";
        let u = orders(&Message::parse(omi.as_bytes()).unwrap(), utc()).unwrap().remove(0);
        let o = &u.fields;
        assert_eq!(o.accession_number.as_deref(), Some("ACC-2"));
        assert_eq!(o.requested_procedure_id.as_deref(), Some("RP-2"));
        assert_eq!(o.study_uid.as_deref(), Some("1.2.840.5"));
        assert_eq!(o.modality.as_deref(), Some("CT"));
        assert_eq!(o.priority.as_deref(), Some("asap"));
        assert_eq!(o.procedure.as_ref().unwrap().code, "IMG1");
        assert_eq!(o.scheduled_at.unwrap().to_rfc3339(), "2026-12-07T08:00:00+00:00");
        assert_eq!(u.business_key, "placer:|PL-2");
    }

    #[test]
    fn order_controls_move_the_status() {
        let m = Message::parse(ORM.as_bytes()).unwrap();
        let nw = orders(&m, utc()).unwrap().remove(0);
        let created = nw.apply(None);
        let mut xo = OrderUpsert { control: "XO".into(), fields: OrderFields { modality: Some("DX".into()), ..OrderFields::default() }, ..OrderUpsert::default() };
        let updated = xo.apply(Some(&created));
        assert_eq!((updated.status.as_str(), updated.fields.modality.as_deref(), updated.fields.accession_number.as_deref()), ("active", Some("DX"), Some("ACC-1")));
        xo.control = "CA".into();
        assert_eq!(xo.apply(Some(&updated)).status, "revoked");
        let sc = OrderUpsert { control: "SC".into(), fields: OrderFields { order_status: Some("CM".into()), ..OrderFields::default() }, ..OrderUpsert::default() };
        assert_eq!(sc.apply(Some(&updated)).status, "completed");
        let sc = OrderUpsert { control: "SC".into(), fields: OrderFields { order_status: Some("IP".into()), ..OrderFields::default() }, ..OrderUpsert::default() };
        assert_eq!(sc.apply(Some(&updated)).status, "active");
    }

    #[test]
    fn problems_name_their_field() {
        let cases = [
            (ORM.replace("|MRN1^^^GEN^MR~X9^^^OTHER|", "||"), "PID", 3, 101),
            (ORM.replace("ORC|NW|", "ORC|ZZ|"), "ORC", 1, 103),
            (ORM.replace("ORC|NW|PL-1^RIS|FL-1^PACS|", "ORC|NW|||").replace("OBR|1|PL-1^RIS|FL-1^PACS|", "OBR|1|||"), "ORC", 2, 101),
            (ORM.replace("1.2.3.4.5", "not-a-uid"), "ZDS", 1, 102),
            (ORM.replace("20261206090000", "tomorrow"), "OBR", 27, 102),
        ];
        for (text, seg, field, code) in cases {
            let e = orders(&Message::parse(text.as_bytes()).unwrap(), utc()).unwrap_err();
            assert_eq!((e.segment.as_str(), e.field, e.code), (seg, field, code), "{}", e.text);
        }
        let no_obr = ORM.split('\r').filter(|l| !l.starts_with("OBR")).collect::<Vec<_>>().join("\r");
        let e = orders(&Message::parse(no_obr.as_bytes()).unwrap(), utc()).unwrap_err();
        assert_eq!((e.segment.as_str(), e.code), ("OBR", 100));
    }
}
