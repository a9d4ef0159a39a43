//! A DiagnosticReport from outside (bulk `$import`) → a report upsert.
//!
//! The report is keyed by its first identifier (`identifier:<system>|<value>`), else by
//! the id it had in its source system (`id:<id>`). Its `imagingStudy` references are
//! indexed by referenced id and by Study Instance UID (a logical reference with system
//! `urn:dicom:uid`), so they resolve whichever arrives first.

use base64::Engine;
use serde_json::Value;

use super::store::{IndexEntry, ReportUpsert};
use super::STATUSES;
use crate::interop::fhir::resource::{add_tag, strip_server_fields, Issue, Issues, HISTORICAL, TAG_SYSTEM};
use crate::studies::mapping::{is_valid_uid, DICOM_UID_SYSTEM};

/// Validates a DiagnosticReport from a bulk import and maps it, tagged `historical`;
/// every problem found is reported.
pub fn from_fhir(resource: Value) -> Result<ReportUpsert, Vec<Issue>> {
    let mut upsert = map(resource)?;
    if let Value::Object(payload) = &mut upsert.payload {
        add_tag(payload, TAG_SYSTEM, HISTORICAL);
    }
    Ok(upsert)
}

/// Validates a DiagnosticReport (from any source) and maps it; every problem found is
/// reported.
pub fn map(resource: Value) -> Result<ReportUpsert, Vec<Issue>> {
    let mut issues = Issues::default();
    let p = "DiagnosticReport";
    let r = &resource;
    let status = issues.code(r, p, "status", STATUSES).map(str::to_string);
    let mut index = Vec::new();
    let token = |param: &'static str, (system, value): (Option<String>, String)| IndexEntry { param, system, value: Some(value), study_uid: None };

    let mut business_key = None;
    for (i, id) in issues.array(r, p, "identifier").iter().enumerate() {
        let system = id.get("system").and_then(Value::as_str);
        match id.get("value").and_then(Value::as_str).filter(|v| !v.is_empty()) {
            Some(value) => {
                // `|` and `%` in the system are escaped, so system and value cannot run together.
                let system_part = system.unwrap_or("").replace('%', "%25").replace('|', "%7C");
                business_key = business_key.or_else(|| Some(format!("identifier:{system_part}|{value}")));
                index.push(token("identifier", (system.map(str::to_string), value.to_string())));
            }
            None => issues.add(format!("{p}.identifier[{i}].value"), "an identifier needs a value"),
        }
    }
    let source_id = r.get("id").and_then(Value::as_str).map(str::to_string);
    if let Some(id) = &source_id {
        if !crate::interop::fhir::resource::is_id(id) {
            issues.add(format!("{p}.id"), format!("{id:?} is not a FHIR id (1-64 of A-Z a-z 0-9 - .)"));
        }
    }
    let business_key = business_key.or_else(|| source_id.as_ref().map(|id| format!("id:{id}")));
    if business_key.is_none() {
        issues.add(format!("{p}.identifier"), "a report needs an identifier (or an id) so that a re-run updates it instead of duplicating it");
    }

    match r.get("code") {
        None => issues.add(format!("{p}.code"), "is required"),
        Some(code) => {
            for c in issues.codings(code, &format!("{p}.code")) {
                index.push(token("code", c));
            }
        }
    }
    for (i, c) in issues.array(r, p, "category").iter().enumerate() {
        for coding in issues.codings(c, &format!("{p}.category[{i}]")) {
            index.push(token("category", coding));
        }
    }
    let patient_id = r.get("subject").and_then(|s| issues.reference(s, &format!("{p}.subject"))).and_then(|reference| {
        match (reference.resource_type.as_deref(), reference.id) {
            (Some("Patient"), Some(id)) => Some(id),
            _ => reference.identifier.map(|(_, value)| value),
        }
    });
    let effective_at = match (r.get("effectiveDateTime"), r.get("effectivePeriod")) {
        (Some(_), Some(_)) => {
            issues.add(format!("{p}.effective[x]"), "only one of effectiveDateTime and effectivePeriod");
            None
        }
        (Some(_), None) => issues.date_time(r, p, "effectiveDateTime"),
        (None, Some(period)) => {
            let start = issues.date_time(period, &format!("{p}.effectivePeriod"), "start");
            let end = issues.date_time(period, &format!("{p}.effectivePeriod"), "end");
            start.or(end)
        }
        (None, None) => None,
    };
    let issued = issues.instant(r, p, "issued");
    for (i, b) in issues.array(r, p, "basedOn").iter().enumerate() {
        if let Some(reference) = issues.reference(b, &format!("{p}.basedOn[{i}]")) {
            let value = match (&reference.resource_type, &reference.id) {
                (Some(t), Some(id)) => Some(format!("{t}/{id}")),
                _ => reference.literal.clone(),
            };
            if let Some(value) = value {
                index.push(IndexEntry { param: "based-on", system: None, value: Some(value), study_uid: None });
            }
        }
    }
    index.extend(study_references(r, &mut issues));
    for field in ["performer", "resultsInterpreter", "result", "specimen"] {
        for (i, v) in issues.array(r, p, field).iter().enumerate() {
            issues.reference(v, &format!("{p}.{field}[{i}]"));
        }
    }
    if let Some(e) = r.get("encounter") {
        issues.reference(e, &format!("{p}.encounter"));
    }
    issues.string(r, p, "conclusion");
    for (i, form) in issues.array(r, p, "presentedForm").iter().enumerate() {
        if let Some(data) = form.get("data") {
            let ok = data.as_str().is_some_and(|d| base64::engine::general_purpose::STANDARD.decode(d).is_ok());
            if !ok {
                issues.add(format!("{p}.presentedForm[{i}].data"), "must be base64");
            }
        }
    }
    if !issues.is_empty() {
        return Err(issues.0);
    }
    let Value::Object(mut payload) = resource else {
        return Err(vec![Issue { expression: p.into(), message: "must be a JSON object".into() }]);
    };
    strip_server_fields(&mut payload);
    Ok(ReportUpsert {
        business_key: business_key.expect("checked above"),
        source_id,
        patient_id,
        status: status.expect("checked above"),
        effective_at,
        issued,
        critical: None,
        order_id: None,
        payload: Value::Object(payload),
        payload_text: None,
        index,
    })
}

/// The `imaging-study` entries of a DiagnosticReport: one per `imagingStudy` reference
/// that names a study, by the id it references (system `ref`) and/or by the Study
/// Instance UID of a logical reference (`study_uid`). Problems go to `issues`; a stored
/// report, valid when stored, gives the same entries again (its links are resolved from
/// them when read).
pub fn study_references(r: &Value, issues: &mut Issues) -> Vec<IndexEntry> {
    let p = "DiagnosticReport";
    let mut entries = Vec::new();
    for (i, s) in issues.array(r, p, "imagingStudy").iter().enumerate() {
        let path = format!("{p}.imagingStudy[{i}]");
        let Some(reference) = issues.reference(s, &path) else { continue };
        if reference.resource_type.as_deref().is_some_and(|t| t != "ImagingStudy") {
            issues.add(format!("{path}.reference"), "must reference an ImagingStudy");
            continue;
        }
        let study_uid = match &reference.identifier {
            Some((Some(system), value)) if system == DICOM_UID_SYSTEM => {
                let uid = value.strip_prefix("urn:oid:").unwrap_or(value);
                if !is_valid_uid(uid) {
                    issues.add(format!("{path}.identifier.value"), format!("{value:?} is not urn:oid:<a valid DICOM UID>"));
                    continue;
                }
                Some(uid.to_string())
            }
            _ => None,
        };
        if reference.id.is_none() && study_uid.is_none() {
            continue; // a display-only reference: nothing to resolve
        }
        let system = reference.id.as_ref().map(|_| "ref".to_string());
        entries.push(IndexEntry { param: "imaging-study", system, value: reference.id.clone(), study_uid });
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report() -> Value {
        json!({
            "resourceType": "DiagnosticReport", "id": "r-1",
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "RPT1"}],
            "status": "final",
            "category": [{"coding": [{"system": "http://loinc.org", "code": "LP29684-5"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2"}]},
            "subject": {"reference": "Patient/p-1"},
            "effectiveDateTime": "2020-01-02T03:04:05Z",
            "issued": "2020-01-02T05:00:00+01:00",
            "basedOn": [{"reference": "ServiceRequest/o-1"}],
            "imagingStudy": [
                {"reference": "ImagingStudy/st-1"},
                {"identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}},
                {"display": "an old film"}
            ],
            "presentedForm": [{"contentType": "text/plain", "data": "aGVsbG8="}]
        })
    }

    #[test]
    fn a_report_maps_with_its_key_and_index() {
        let u = from_fhir(report()).unwrap();
        assert_eq!(u.business_key, "identifier:urn:oid:2.16.840.1.113883.19.5|RPT1");
        assert_eq!(u.patient_id.as_deref(), Some("p-1"));
        assert_eq!(u.issued.unwrap().to_rfc3339(), "2020-01-02T04:00:00+00:00");
        let params: Vec<&str> = u.index.iter().map(|e| e.param).collect();
        assert_eq!(params, ["identifier", "code", "category", "based-on", "imaging-study", "imaging-study"]);
        assert_eq!(u.index[4], IndexEntry { param: "imaging-study", system: Some("ref".into()), value: Some("st-1".into()), study_uid: None });
        assert_eq!(u.index[5].study_uid.as_deref(), Some("1.2.3"));
        assert_eq!(u.payload["meta"]["tag"][0]["code"], HISTORICAL);
        let mut no_identifier = report();
        no_identifier.as_object_mut().unwrap().remove("identifier");
        assert_eq!(from_fhir(no_identifier).unwrap().business_key, "id:r-1");
    }

    #[test]
    fn bad_reports_name_each_problem() {
        let mut bad = report();
        bad.as_object_mut().unwrap().remove("code");
        bad["status"] = json!("available");
        bad["imagingStudy"] = json!([{"reference": "Patient/p-1"}]);
        bad["presentedForm"] = json!([{"data": "not base64!"}]);
        bad["effectiveDateTime"] = json!("04/03/2015 10:00");
        let paths: Vec<String> = from_fhir(bad).unwrap_err().into_iter().map(|i| i.expression).collect();
        assert_eq!(paths, [
            "DiagnosticReport.status", "DiagnosticReport.code", "DiagnosticReport.effectiveDateTime",
            "DiagnosticReport.imagingStudy[0].reference", "DiagnosticReport.presentedForm[0].data"
        ]);
    }
}
