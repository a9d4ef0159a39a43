//! DICOM study attributes (QIDO-RS, DICOM JSON) → an `imaging_studies` row and its
//! FHIR R4 ImagingStudy. The same mapping serves sync, `export-studies` and import.
//!
//! - identifier: `urn:dicom:uid` / `urn:oid:<StudyInstanceUID>`; accession (0008,0050)
//!   as an identifier typed `ACSN` (v2-0203)
//! - subject: Patient by PatientID (0010,0020), issuer (0010,0021) as the assigner
//! - started: StudyDate + StudyTime with TimezoneOffsetFromUTC (0008,0201) when given
//! - modality: ModalitiesInStudy (0008,0061) as DCM codings
//! - numberOfSeries (0020,1206), numberOfInstances (0020,1208), description (0008,1030)
//! - endpoint: a contained Endpoint for the WADO-RS base URL; status `available`

use chrono::{FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use serde_json::{json, Map, Value};

use super::store::StudyUpsert;
use crate::pacs::dicom_json::{tags, DicomObject};

pub const DCM_SYSTEM: &str = "http://dicom.nema.org/resources/ontology/DCM";
pub const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
pub const DICOM_UID_SYSTEM: &str = "urn:dicom:uid";

/// Why a QIDO item could not be mapped (it is skipped and counted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MappingError(pub String);

/// A UID is 1–64 characters of digits and dots, no empty or zero-padded components.
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.split('.').all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c == "0" || !c.starts_with('0')))
}

/// Parses DA `YYYYMMDD` (also tolerates `YYYY-MM-DD` and `YYYY.MM.DD` from old systems).
pub fn parse_da(text: &str) -> Option<NaiveDate> {
    let digits: String = text.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() != 8 {
        return None;
    }
    NaiveDate::parse_from_str(&digits, "%Y%m%d").ok()
}

/// Parses TM `HH[MM[SS[.FFFFFF]]]` (also tolerates `HH:MM:SS`).
pub fn parse_tm(text: &str) -> Option<NaiveTime> {
    let text = text.trim().replace(':', "");
    let (main, fraction) = text.split_once('.').unwrap_or((&text, ""));
    if main.is_empty() || main.len() % 2 != 0 || main.len() > 6 || !main.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let part = |i: usize| main.get(i..i + 2).map(|s| s.parse::<u32>().unwrap()).unwrap_or(0);
    let micros = if fraction.is_empty() {
        0
    } else {
        let f: String = fraction.chars().take(6).collect();
        if !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        f.parse::<u32>().ok()? * 10u32.pow(6 - f.len() as u32)
    };
    NaiveTime::from_hms_micro_opt(part(0), part(2), part(4).min(59), micros)
}

/// Parses the TimezoneOffsetFromUTC `&ZZXX` form, e.g. `+0100`, `-0500`.
pub fn parse_offset(text: &str) -> Option<FixedOffset> {
    let text = text.trim();
    if text.len() != 5 {
        return None;
    }
    let sign = match &text[..1] {
        "+" => 1,
        "-" => -1,
        _ => return None,
    };
    let hours: i32 = text[1..3].parse().ok()?;
    let minutes: i32 = text[3..5].parse().ok()?;
    if hours > 14 || minutes > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))
}

/// Maps one QIDO-RS study to the upsert of its row (status `available`, no endpoint:
/// the caller names the endpoint it came from). `wado_base` is the WADO-RS base URL;
/// `default_offset` applies when the study carries no TimezoneOffsetFromUTC. The
/// payload is the ImagingStudy without `id` and `meta` (the store adds those).
pub fn map_study(d: &DicomObject, wado_base: Option<&str>, default_offset: FixedOffset) -> Result<StudyUpsert, MappingError> {
    let uid = d
        .string(tags::STUDY_INSTANCE_UID)
        .ok_or_else(|| MappingError("no Study Instance UID (0020,000D)".into()))?;
    if !is_valid_uid(&uid) {
        return Err(MappingError(format!("Study Instance UID {uid:?} is not a valid DICOM UID")));
    }
    let patient_id = d.string(tags::PATIENT_ID);
    let accession = d.string(tags::ACCESSION_NUMBER);
    let modalities: Vec<String> = d.strings(tags::MODALITIES_IN_STUDY).into_iter().map(|m| m.to_ascii_uppercase()).collect();
    let description = d.string(tags::STUDY_DESCRIPTION);
    let count = |tag: &str| d.int(tag).and_then(|n| i32::try_from(n).ok()).filter(|n| *n >= 0);
    let number_of_series = count(tags::NUMBER_OF_STUDY_RELATED_SERIES);
    let number_of_instances = count(tags::NUMBER_OF_STUDY_RELATED_INSTANCES);

    let date = d.string(tags::STUDY_DATE).map(|s| parse_da(&s).ok_or_else(|| MappingError(format!("StudyDate {s:?} is not a DICOM date"))));
    let date = date.transpose()?;
    let time = d.string(tags::STUDY_TIME).and_then(|s| parse_tm(&s));
    let offset = d.string(tags::TIMEZONE_OFFSET_FROM_UTC).and_then(|s| parse_offset(&s)).unwrap_or(default_offset);
    let started = date.map(|date| {
        let local = NaiveDateTime::new(date, time.unwrap_or(NaiveTime::MIN));
        offset.from_local_datetime(&local).single().expect("a fixed offset has no gaps")
    });
    // Without a StudyTime only the day is known: FHIR then gets the date alone.
    let started_text = started.map(|s| match time {
        Some(_) => s.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false),
        None => s.date_naive().format("%Y-%m-%d").to_string(),
    });

    let mut identifiers = vec![json!({"system": DICOM_UID_SYSTEM, "value": format!("urn:oid:{uid}")})];
    if let Some(acc) = &accession {
        identifiers.push(json!({
            "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
            "value": acc
        }));
    }
    let mut subject = Map::new();
    subject.insert("type".into(), json!("Patient"));
    match &patient_id {
        Some(pid) => {
            let mut identifier = json!({"value": pid});
            if let Some(issuer) = d.string(tags::ISSUER_OF_PATIENT_ID) {
                identifier["assigner"] = json!({"display": issuer});
            }
            subject.insert("identifier".into(), identifier);
        }
        None => {
            subject.insert("display".into(), json!("unknown patient (no PatientID on the PACS)"));
        }
    }
    if let Some(name) = d.string(tags::PATIENT_NAME) {
        subject.insert("display".into(), json!(name.replace('^', " ").trim()));
    }

    let mut resource = json!({
        "resourceType": "ImagingStudy",
        "identifier": identifiers,
        "status": "available",
        "subject": Value::Object(subject),
    });
    if !modalities.is_empty() {
        resource["modality"] = json!(modalities.iter().map(|m| json!({"system": DCM_SYSTEM, "code": m})).collect::<Vec<_>>());
    }
    if let Some(s) = started_text {
        resource["started"] = json!(s);
    }
    if let Some(n) = number_of_series {
        resource["numberOfSeries"] = json!(n);
    }
    if let Some(n) = number_of_instances {
        resource["numberOfInstances"] = json!(n);
    }
    if let Some(text) = &description {
        resource["description"] = json!(text);
    }
    if let Some(base) = wado_base {
        resource["contained"] = json!([{
            "resourceType": "Endpoint",
            "id": "wado",
            "status": "active",
            "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "dicom-wado-rs"},
            "payloadType": [{"text": "DICOM WADO-RS"}],
            "payloadMimeType": ["application/dicom"],
            "address": base
        }]);
        resource["endpoint"] = json!([{"reference": "#wado"}]);
    }
    Ok(StudyUpsert {
        study_instance_uid: uid,
        patient_id,
        accession_number: accession,
        modality: (!modalities.is_empty()).then(|| modalities.join("\\")),
        started_at: started.map(|s| s.with_timezone(&Utc)),
        description,
        number_of_series,
        number_of_instances,
        status: "available".into(),
        pacs_endpoint_id: None,
        payload: resource,
        payload_text: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pacs::dicom_json::parse_dataset_array;

    fn study(extra: Value) -> DicomObject {
        let mut base = json!({
            "0020000D": {"vr": "UI", "Value": ["1.2.840.113619.2.55.3"]},
            "00100020": {"vr": "LO", "Value": ["P-100"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Anna"}]},
            "00080050": {"vr": "SH", "Value": ["ACC-7"]},
            "00080020": {"vr": "DA", "Value": ["20240105"]},
            "00080030": {"vr": "TM", "Value": ["101500.25"]},
            "00080061": {"vr": "CS", "Value": ["CT", "sr"]},
            "00081030": {"vr": "LO", "Value": ["CT HEAD"]},
            "00201206": {"vr": "IS", "Value": [3]},
            "00201208": {"vr": "IS", "Value": ["120"]}
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        parse_dataset_array(json!([base]).to_string().as_bytes()).unwrap().remove(0)
    }

    fn utc() -> FixedOffset {
        FixedOffset::east_opt(0).unwrap()
    }

    #[test]
    fn maps_every_attribute_the_design_names() {
        let m = map_study(&study(json!({"00100021": {"vr": "LO", "Value": ["HOSP-A"]}})), Some("http://pacs/dicom-web"), utc()).unwrap();
        assert_eq!(m.study_instance_uid, "1.2.840.113619.2.55.3");
        assert_eq!(m.modality.as_deref(), Some("CT\\SR"));
        assert_eq!(m.number_of_series, Some(3));
        assert_eq!(m.number_of_instances, Some(120));
        let r = &m.payload;
        assert_eq!(r["identifier"][0], json!({"system": "urn:dicom:uid", "value": "urn:oid:1.2.840.113619.2.55.3"}));
        assert_eq!(r["identifier"][1]["type"]["coding"][0]["code"], "ACSN");
        assert_eq!(r["identifier"][1]["value"], "ACC-7");
        assert_eq!(r["subject"]["identifier"], json!({"value": "P-100", "assigner": {"display": "HOSP-A"}}));
        assert_eq!(r["subject"]["display"], "Müller Anna");
        assert_eq!(r["started"], "2024-01-05T10:15:00.250+00:00");
        assert_eq!(r["modality"][1], json!({"system": DCM_SYSTEM, "code": "SR"}));
        assert_eq!(r["status"], "available");
        assert_eq!(r["endpoint"][0]["reference"], "#wado");
        assert_eq!(r["contained"][0]["address"], "http://pacs/dicom-web");
    }

    #[test]
    fn timezone_offset_from_utc_is_applied() {
        let m = map_study(&study(json!({"00080201": {"vr": "SH", "Value": ["+0100"]}})), None, utc()).unwrap();
        assert_eq!(m.payload["started"], "2024-01-05T10:15:00.250+01:00");
        assert_eq!(m.started_at.unwrap().to_rfc3339(), "2024-01-05T09:15:00.250+00:00");
    }

    #[test]
    fn a_date_without_time_gives_a_fhir_date() {
        let map = json!({"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "00080020": {"vr": "DA", "Value": ["20231231"]}});
        let m = map_study(&DicomObject::from_value(map).unwrap(), None, utc()).unwrap();
        assert_eq!(m.payload["started"], "2023-12-31");
        assert!(m.payload.get("modality").is_none());
        assert_eq!(m.payload["subject"]["type"], "Patient");
    }

    #[test]
    fn malformed_items_are_refused_with_a_reason() {
        let no_uid = DicomObject::from_value(json!({"00100020": {"vr": "LO", "Value": ["P"]}})).unwrap();
        assert!(map_study(&no_uid, None, utc()).unwrap_err().0.contains("no Study Instance UID"));
        let bad_uid = study(json!({"0020000D": {"vr": "UI", "Value": ["1.02.x"]}}));
        assert!(map_study(&bad_uid, None, utc()).unwrap_err().0.contains("not a valid DICOM UID"));
        let bad_date = study(json!({"00080020": {"vr": "DA", "Value": ["2024-13-45"]}}));
        assert!(map_study(&bad_date, None, utc()).unwrap_err().0.contains("StudyDate"));
    }

    #[test]
    fn dicom_value_parsers() {
        assert_eq!(parse_tm("10"), NaiveTime::from_hms_opt(10, 0, 0));
        assert_eq!(parse_tm("1015"), NaiveTime::from_hms_opt(10, 15, 0));
        assert_eq!(parse_tm("10:15:30"), NaiveTime::from_hms_opt(10, 15, 30));
        assert_eq!(parse_tm("101530.1"), NaiveTime::from_hms_micro_opt(10, 15, 30, 100_000));
        assert_eq!(parse_tm("1"), None);
        assert_eq!(parse_da("2024.01.05"), NaiveDate::from_ymd_opt(2024, 1, 5));
        assert_eq!(parse_offset("-0500"), FixedOffset::west_opt(5 * 3600));
        assert_eq!(parse_offset("0500"), None);
        assert!(is_valid_uid("1.2.840.10008.1.2"));
        assert!(!is_valid_uid("1..2") && !is_valid_uid("1.02") && !is_valid_uid(""));
    }
}
