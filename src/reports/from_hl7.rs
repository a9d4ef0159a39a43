//! ORU^R01 → reports.
//!
//! One report per OBR (with the ORC before it and the OBX/NTE after it). The report is
//! identified by the order's filler number (OBR-3/ORC-3, else the placer number), so
//! the preliminary, final and corrected results of one order are versions of one
//! report.
//!
//! | DiagnosticReport | from |
//! |---|---|
//! | status | OBR-25 (table 0123), else OBX-11 of the first OBX (table 0085): `P` preliminary, `F` final, `C` corrected |
//! | code | OBR-4 |
//! | subject | PID-3 |
//! | effectiveDateTime / issued | OBR-7 / OBR-22 |
//! | resultsInterpreter | OBR-32 |
//! | imagingStudy | ZDS-1 (Study Instance UID), else the order's |
//! | conclusion | the impression OBX (LOINC 19005-8, or text starting IMPRESSION), else the whole text |
//! | presentedForm | the whole OBX-5 text (TX, FT, ST), text/plain |
//! | critical (column) | any OBX-8 `AA`, `HH` or `LL` |

use base64::Engine;
use chrono::FixedOffset;
use serde_json::{json, Map, Value};

use crate::interop::hl7::ack::AckError;
use crate::interop::hl7::message::{parse_ts, Message, Segment};
use crate::orders::fhir::{codeable, number, patient_reference};
use crate::orders::from_hl7::{code, error, order_key, patient, person_name};
use crate::studies::mapping::{is_valid_uid, DICOM_UID_SYSTEM};

/// What one OBR of an ORU says, before it is linked to its order.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultReport {
    /// The DiagnosticReport (no `basedOn` reference yet: the caller adds the order).
    pub resource: Value,
    /// Business keys the order may have (`placer:<ns>|<id>`, `filler:<ns>|<id>`).
    pub order_keys: Vec<String>,
    pub filler_number: Option<String>,
    pub accession_number: Option<String>,
    pub study_uid: Option<String>,
    pub critical: bool,
    /// The order it was linked to ([`link_order`]).
    pub order_id: Option<uuid::Uuid>,
}

/// Abnormal flags (HL7 table 0078) that mark a critical result.
pub const CRITICAL_FLAGS: &[&str] = &["AA", "HH", "LL"];

fn status(obr25: Option<&str>, obx11: Option<&str>) -> Option<&'static str> {
    if let Some(s) = obr25 {
        return Some(match s {
            "P" => "preliminary",
            "F" => "final",
            "C" => "corrected",
            "A" | "R" => "partial",
            "X" => "cancelled",
            "O" | "I" | "S" => "registered",
            _ => return None,
        });
    }
    Some(match obx11? {
        "P" => "preliminary",
        "F" => "final",
        "C" => "corrected",
        "R" | "S" => "partial",
        "D" | "W" => "entered-in-error",
        "X" => "cancelled",
        "I" => "registered",
        _ => return None,
    })
}

/// Reads every report of an ORU^R01; the first problem found is the ACK's error.
pub fn results(m: &Message, offset: FixedOffset) -> Result<Vec<ResultReport>, AckError> {
    let (patient_id, patient_name) = patient(m);
    let Some(patient_id) = patient_id else {
        return Err(error("PID", 1, 3, 101, "PID-3 (patient identifier) is required"));
    };
    if patient_id.chars().any(char::is_control) {
        return Err(error("PID", 1, 3, 102, "PID-3 (patient identifier) holds control characters"));
    }
    // (ORC, OBR, OBX/NTE…) groups
    let mut groups: Vec<(Option<&Segment>, &Segment, Vec<&Segment>)> = Vec::new();
    let mut orc: Option<&Segment> = None;
    let mut zds: Option<&Segment> = None;
    for seg in &m.segments {
        match seg.id() {
            "ORC" => orc = Some(seg),
            "OBR" => groups.push((orc.take(), seg, Vec::new())),
            "OBX" | "NTE" => {
                if let Some(g) = groups.last_mut() {
                    g.2.push(seg);
                }
            }
            "ZDS" => zds = zds.or(Some(seg)),
            _ => {}
        }
    }
    if groups.is_empty() {
        return Err(error("OBR", 1, 0, 100, "the message has no OBR segment"));
    }
    let mut out = Vec::new();
    for (n, (orc, obr, obx)) in groups.into_iter().enumerate() {
        let seq = n + 1;
        let ei = |seg: Option<&Segment>, f: usize| seg.and_then(|s| m.value_in(s, f, 1).map(|id| (id, m.value_in(s, f, 2))));
        let placer = ei(orc, 2).or_else(|| ei(Some(obr), 2));
        let filler = ei(orc, 3).or_else(|| ei(Some(obr), 3));
        let mut order_keys = Vec::new();
        if let Some((id, ns)) = &placer {
            order_keys.push(order_key("placer", id, ns.as_deref()));
        }
        if let Some((id, ns)) = &filler {
            order_keys.push(order_key("filler", id, ns.as_deref()));
        }
        let identifier = match (&filler, &placer) {
            (Some((id, ns)), _) => number("FILL", id, ns.as_deref()),
            (None, Some((id, ns))) => number("PLAC", id, ns.as_deref()),
            (None, None) => return Err(error("OBR", seq, 3, 101, "OBR-3 (filler order number) or OBR-2 (placer order number) is required")),
        };
        let first_obx = obx.iter().find(|s| s.id() == "OBX");
        let obr25 = m.value_in(obr, 25, 1);
        let obx11 = first_obx.and_then(|o| m.value_in(o, 11, 1));
        let Some(status) = status(obr25.as_deref(), obx11.as_deref()) else {
            return Err(match obr25 {
                Some(v) => error("OBR", seq, 25, 103, format!("OBR-25 {v:?} is not a result status (HL7 table 0123)")),
                None => error("OBR", seq, 25, 101, "OBR-25 (result status) or OBX-11 (observation result status) is required"),
            });
        };
        let code = code(m, obr, 4).ok_or_else(|| error("OBR", seq, 4, 101, "OBR-4 (universal service identifier) is required"))?;
        let ts = |field: usize, label: &str| -> Result<Option<String>, AckError> {
            match m.value_in(obr, field, 1) {
                None => Ok(None),
                Some(v) => parse_ts(&v, offset)
                    .map(|t| Some(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
                    .ok_or_else(|| error("OBR", seq, field, 102, format!("{label} {v:?} is not an HL7 date/time"))),
            }
        };
        let effective = ts(7, "OBR-7 (observation date/time)")?;
        let issued = ts(22, "OBR-22 (results report/status change)")?;
        let study_uid = zds.and_then(|z| m.value_in(z, 1, 1));
        if let Some(uid) = &study_uid {
            if !is_valid_uid(uid) {
                return Err(error("ZDS", 1, 1, 102, format!("{uid:?} is not a DICOM UID")));
            }
        }
        // The report text: every text OBX-5, in order; the impression is the conclusion.
        let mut text: Vec<String> = Vec::new();
        let mut impression: Vec<String> = Vec::new();
        let mut critical = false;
        for s in obx.iter().filter(|s| s.id() == "OBX") {
            let kind = m.value_in(s, 2, 1).unwrap_or_default();
            let flags = m.repetitions_in(s, 8, 1);
            critical |= flags.iter().any(|f| CRITICAL_FLAGS.contains(&f.as_str()));
            if !["TX", "FT", "ST"].contains(&kind.as_str()) {
                continue;
            }
            let lines = m.repetitions_in(s, 5, 1);
            if lines.is_empty() {
                continue;
            }
            let value = lines.join("\n");
            let observation = m.value_in(s, 3, 1).unwrap_or_default();
            if observation == "19005-8" || value.trim_start().to_ascii_uppercase().starts_with("IMPRESSION") {
                impression.push(value.clone());
            }
            text.push(value);
        }
        let mut r = Map::new();
        r.insert("resourceType".into(), json!("DiagnosticReport"));
        r.insert("identifier".into(), json!([identifier]));
        if let Some((id, ns)) = &placer {
            r.insert("basedOn".into(), json!([{"type": "ServiceRequest", "identifier": number("PLAC", id, ns.as_deref())}]));
        }
        r.insert("status".into(), json!(status));
        r.insert(
            "category".into(),
            json!([
                {"coding": [{"system": "http://loinc.org", "code": "LP29684-5", "display": "Radiology"}]},
                {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}]}
            ]),
        );
        r.insert("code".into(), codeable(&code));
        r.insert("subject".into(), patient_reference(Some(&patient_id), patient_name.as_deref()));
        if let Some(t) = effective {
            r.insert("effectiveDateTime".into(), json!(t));
        }
        if let Some(t) = issued {
            r.insert("issued".into(), json!(t));
        }
        let interpreter = m.subcomponents_in(obr, 32, 1);
        let interpreter_name = person_name(interpreter.get(1).cloned().filter(|v| !v.is_empty()), interpreter.get(2).cloned().filter(|v| !v.is_empty()));
        if let Some(name) = interpreter_name.or_else(|| interpreter.first().cloned().filter(|v| !v.is_empty())) {
            r.insert("resultsInterpreter".into(), json!([{"display": name}]));
        }
        if let Some(uid) = &study_uid {
            r.insert("imagingStudy".into(), json!([{"identifier": {"system": DICOM_UID_SYSTEM, "value": format!("urn:oid:{uid}")}}]));
        }
        if !text.is_empty() {
            let full = text.join("\n\n");
            let conclusion = if impression.is_empty() { full.clone() } else { impression.join("\n") };
            r.insert("conclusion".into(), json!(conclusion));
            r.insert(
                "presentedForm".into(),
                json!([{
                    "contentType": "text/plain; charset=utf-8",
                    "language": "en",
                    "data": base64::engine::general_purpose::STANDARD.encode(full.as_bytes()),
                    "title": "Radiology report"
                }]),
            );
        }
        out.push(ResultReport {
            resource: Value::Object(r),
            order_keys,
            filler_number: filler.map(|f| f.0),
            accession_number: m.value_in(obr, 18, 1),
            study_uid,
            critical,
            order_id: None,
        });
    }
    Ok(out)
}

/// Links a result to its order (when known): `basedOn` names the ServiceRequest and a
/// study the ORU did not name is taken from the order.
pub fn link_order(report: &mut ResultReport, order_id: uuid::Uuid, order_study_uid: Option<&str>) {
    report.order_id = Some(order_id);
    let r = report.resource.as_object_mut().expect("a report is an object");
    let based_on = r.entry("basedOn").or_insert_with(|| json!([{"type": "ServiceRequest"}]));
    if let Some(first) = based_on.get_mut(0).and_then(Value::as_object_mut) {
        first.insert("reference".into(), json!(format!("ServiceRequest/{order_id}")));
    }
    if report.study_uid.is_none() {
        if let Some(uid) = order_study_uid {
            report.study_uid = Some(uid.to_string());
            r.insert("imagingStudy".into(), json!([{"identifier": {"system": DICOM_UID_SYSTEM, "value": format!("urn:oid:{uid}")}}]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORU: &str = "MSH|^~\\&|RIS|GEN|RAD|PLAT|20261205153000||ORU^R01^ORU_R01|C9|P|2.5.1\r\
PID|1||MRN1^^^H^MR||DOE^JANE\r\
ORC|RE|PL-1^EMR|FL-1^RIS||CM\r\
OBR|1|PL-1^EMR|FL-1^RIS|71030^CHEST^C4|||20261205141800|||||||||||ACC-1||||20261205153000||CR|F|||||||7777&CHEN&AMY&&&DR^20261205153000\r\
ZDS|1.2.3.4^RIS^Application^DICOM\r\
OBX|1|TX|18782-3^Narrative^LN|1|EXAM: XR CHEST PA \\T\\ LAT||||||F\r\
OBX|2|FT|18782-3^Narrative^LN|1|FINDINGS:\\.br\\Clear lungs.||||||F\r\
OBX|3|TX|19005-8^Impression^LN|2|IMPRESSION: Normal.||||||F";

    #[test]
    fn an_oru_becomes_a_valid_report() {
        let m = Message::parse(ORU.as_bytes()).unwrap();
        let mut r = results(&m, FixedOffset::east_opt(0).unwrap()).unwrap().remove(0);
        assert_eq!(r.order_keys, vec!["placer:EMR|PL-1".to_string(), "filler:RIS|FL-1".to_string()]);
        assert!(!r.critical);
        assert_eq!(r.resource["status"], "final");
        assert_eq!(r.resource["conclusion"], "IMPRESSION: Normal.");
        let text = base64::engine::general_purpose::STANDARD.decode(r.resource["presentedForm"][0]["data"].as_str().unwrap()).unwrap();
        assert_eq!(String::from_utf8(text).unwrap(), "EXAM: XR CHEST PA & LAT\n\nFINDINGS:\nClear lungs.\n\nIMPRESSION: Normal.");
        assert_eq!(r.resource["resultsInterpreter"][0]["display"], "AMY CHEN");
        assert_eq!(r.resource["effectiveDateTime"], "2026-12-05T14:18:00Z");
        link_order(&mut r, uuid::Uuid::nil(), None);
        assert_eq!(r.resource["basedOn"][0]["reference"], format!("ServiceRequest/{}", uuid::Uuid::nil()));
        let upsert = crate::reports::from_fhir::map(r.resource.clone()).unwrap();
        assert_eq!(upsert.business_key, "identifier:urn:radiology-service:hl7:order-number:RIS|FL-1");
        assert!(upsert.index.iter().any(|e| e.param == "imaging-study" && e.study_uid.as_deref() == Some("1.2.3.4")));
    }

    #[test]
    fn statuses_and_critical_flags() {
        for (obr25, expect) in [("P", "preliminary"), ("C", "corrected"), ("F", "final")] {
            let text = ORU.replace("|CR|F|", &format!("|CR|{obr25}|"));
            let r = results(&Message::parse(text.as_bytes()).unwrap(), FixedOffset::east_opt(0).unwrap()).unwrap();
            assert_eq!(r[0].resource["status"], expect);
        }
        let critical = ORU.replace("IMPRESSION: Normal.|||", "IMPRESSION: Pneumothorax.|||HH");
        let r = results(&Message::parse(critical.as_bytes()).unwrap(), FixedOffset::east_opt(0).unwrap()).unwrap();
        assert!(r[0].critical);
        // An MRN that is no FHIR id is referenced by identifier; control characters are refused.
        let odd = ORU.replace("MRN1^^^H^MR", "MRN_1/2^^^H^MR");
        let r = results(&Message::parse(odd.as_bytes()).unwrap(), FixedOffset::east_opt(0).unwrap()).unwrap();
        assert_eq!(r[0].resource["subject"]["identifier"]["value"], "MRN_1/2");
        assert_eq!(crate::reports::from_fhir::map(r[0].resource.clone()).unwrap().patient_id.as_deref(), Some("MRN_1/2"));
        let control = ORU.replace("MRN1^^^H^MR", "M\\X01\\RN^^^H^MR");
        let e = results(&Message::parse(control.as_bytes()).unwrap(), FixedOffset::east_opt(0).unwrap()).unwrap_err();
        assert_eq!((e.segment.as_str(), e.field, e.code), ("PID", 3, 102));
        let no_status = ORU.replace("|CR|F|", "|CR||").replace("||||||F", "||||||");
        let e = results(&Message::parse(no_status.as_bytes()).unwrap(), FixedOffset::east_opt(0).unwrap()).unwrap_err();
        assert_eq!((e.segment.as_str(), e.field, e.code), ("OBR", 25, 101));
    }
}
