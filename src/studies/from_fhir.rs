//! An ImagingStudy resource from outside (bulk `$import`) → a study upsert.
//!
//! The study is keyed by its Study Instance UID: the identifier with system
//! `urn:dicom:uid` and value `urn:oid:<uid>`. The resource is kept as sent, less the
//! fields the server owns, plus the `historical` tag.

use serde_json::Value;

use super::mapping::{is_valid_uid, DICOM_UID_SYSTEM};
use super::store::StudyUpsert;
use super::STATUSES;
use crate::interop::fhir::resource::{add_tag, strip_server_fields, Issue, Issues, HISTORICAL, TAG_SYSTEM};

/// A study ready to upsert, with the id it had in its source system.
#[derive(Debug, Clone)]
pub struct ImportedStudy {
    pub upsert: StudyUpsert,
    pub source_id: Option<String>,
}

/// Validates an ImagingStudy and maps it; every problem found is reported.
pub fn from_fhir(resource: Value) -> Result<ImportedStudy, Vec<Issue>> {
    let mut issues = Issues::default();
    let p = "ImagingStudy";
    let r = &resource;
    let status = issues.code(r, p, "status", STATUSES).map(str::to_string);

    let mut uid = None;
    let mut accession = None;
    for (i, id) in issues.array(r, p, "identifier").iter().enumerate() {
        let system = id.get("system").and_then(Value::as_str);
        let value = id.get("value").and_then(Value::as_str);
        if system == Some(DICOM_UID_SYSTEM) {
            match value.map(|v| v.strip_prefix("urn:oid:").unwrap_or(v)) {
                Some(v) if is_valid_uid(v) => uid = uid.or(Some(v.to_string())),
                _ => issues.add(format!("{p}.identifier[{i}].value"), format!("{:?} is not urn:oid:<a valid DICOM UID>", value.unwrap_or(""))),
            }
        }
        let is_acsn = id.pointer("/type/coding").and_then(Value::as_array).is_some_and(|c| c.iter().any(|c| c.get("code").and_then(Value::as_str) == Some("ACSN")));
        if is_acsn {
            accession = accession.or(value.map(str::to_string));
        }
    }
    if uid.is_none() && !issues.0.iter().any(|i| i.expression.starts_with("ImagingStudy.identifier[")) {
        issues.add(format!("{p}.identifier"), format!("needs the Study Instance UID: an identifier with system {DICOM_UID_SYSTEM} and value urn:oid:<uid>"));
    }

    let patient_id = match r.get("subject") {
        None => {
            issues.add(format!("{p}.subject"), "is required");
            None
        }
        Some(s) => issues.reference(s, &format!("{p}.subject")).and_then(|reference| match (reference.resource_type.as_deref(), reference.id) {
            (Some("Patient"), Some(id)) => Some(id),
            _ => reference.identifier.map(|(_, value)| value),
        }),
    };
    let started_at = issues.date_time(r, p, "started");
    let mut modalities = Vec::new();
    for (i, m) in issues.array(r, p, "modality").iter().enumerate() {
        match m.get("code").and_then(Value::as_str) {
            Some(code) if !code.is_empty() => modalities.push(code.to_ascii_uppercase()),
            _ => issues.add(format!("{p}.modality[{i}].code"), "a modality Coding needs a code"),
        }
    }
    let description = issues.string(r, p, "description").map(str::to_string);
    let number_of_series = issues.unsigned(r, p, "numberOfSeries");
    let number_of_instances = issues.unsigned(r, p, "numberOfInstances");
    for (i, e) in issues.array(r, p, "endpoint").iter().enumerate() {
        issues.reference(e, &format!("{p}.endpoint[{i}]"));
    }
    for (field, target) in [("encounter", "Encounter"), ("referrer", "Practitioner")] {
        if let Some(v) = r.get(field) {
            issues.reference(v, &format!("{p}.{field}")).map(|_| target);
        }
    }
    for (i, b) in issues.array(r, p, "basedOn").iter().enumerate() {
        issues.reference(b, &format!("{p}.basedOn[{i}]"));
    }
    if !issues.is_empty() {
        return Err(issues.0);
    }
    let Value::Object(mut payload) = resource else {
        return Err(vec![Issue { expression: p.into(), message: "must be a JSON object".into() }]);
    };
    let source_id = strip_server_fields(&mut payload);
    add_tag(&mut payload, TAG_SYSTEM, HISTORICAL);
    Ok(ImportedStudy {
        upsert: StudyUpsert {
            study_instance_uid: uid.expect("checked above"),
            patient_id,
            accession_number: accession,
            modality: (!modalities.is_empty()).then(|| modalities.join("\\")),
            started_at,
            status: status.expect("checked above"),
            pacs_endpoint_id: None,
            description,
            number_of_series,
            number_of_instances,
            payload: Value::Object(payload),
            payload_text: None,
        },
        source_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn study() -> Value {
        json!({
            "resourceType": "ImagingStudy", "id": "src-1", "meta": {"versionId": "4", "tag": [{"system": "s", "code": "x"}]},
            "status": "available",
            "identifier": [
                {"system": "urn:dicom:uid", "value": "urn:oid:1.2.840.1.7"},
                {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}, "value": "A-77"}
            ],
            "subject": {"reference": "Patient/p-9"},
            "started": "2019-03-01T08:30:00+01:00",
            "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}, {"code": "sr"}],
            "numberOfSeries": 3, "numberOfInstances": 120, "description": "Thorax"
        })
    }

    #[test]
    fn a_valid_study_maps_with_its_keys_and_the_historical_tag() {
        let s = from_fhir(study()).unwrap();
        assert_eq!(s.source_id.as_deref(), Some("src-1"));
        let u = s.upsert;
        assert_eq!((u.study_instance_uid.as_str(), u.patient_id.as_deref(), u.accession_number.as_deref()), ("1.2.840.1.7", Some("p-9"), Some("A-77")));
        assert_eq!(u.modality.as_deref(), Some("CT\\SR"));
        assert_eq!(u.started_at.unwrap().to_rfc3339(), "2019-03-01T07:30:00+00:00");
        assert_eq!(u.payload["meta"], json!({"tag": [{"system": "s", "code": "x"}, {"system": TAG_SYSTEM, "code": HISTORICAL}]}));
        assert!(u.payload.get("id").is_none());
    }

    #[test]
    fn every_problem_is_named_by_its_path() {
        let mut bad = study();
        bad["status"] = json!("done");
        bad["identifier"] = json!([{"system": "urn:dicom:uid", "value": "urn:oid:01.2"}]);
        bad["subject"] = json!({"reference": "not a reference"});
        bad["started"] = json!("2019-03-01T08:30");
        bad["numberOfSeries"] = json!(-1);
        let issues = from_fhir(bad).unwrap_err();
        let paths: Vec<&str> = issues.iter().map(|i| i.expression.as_str()).collect();
        assert_eq!(paths, ["ImagingStudy.status", "ImagingStudy.identifier[0].value", "ImagingStudy.subject.reference", "ImagingStudy.started", "ImagingStudy.numberOfSeries"]);
        let mut no_uid = study();
        no_uid["identifier"] = json!([]);
        no_uid.as_object_mut().unwrap().remove("subject");
        let issues = from_fhir(no_uid).unwrap_err();
        assert_eq!(issues.len(), 2, "{issues:?}");
    }
}
