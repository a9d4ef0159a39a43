//! The `$import` kick-off body, in either form clients send:
//!
//! - a FHIR `Parameters` resource (Microsoft, HAPI and IBM servers): `inputFormat`,
//!   `inputSource`, `mode`, repeated `input` with parts `type` and `url`, and
//!   `storageDetail` with part `type`;
//! - the plain JSON of the HL7 bulk-import draft: `{"inputFormat", "inputSource",
//!   "storageDetail": {"type"}, "input": [{"type", "url"}]}`.

use serde_json::{json, Value};

use super::source::SourcePolicy;

/// The resource types this service imports.
pub const IMPORT_TYPES: &[&str] = &["ImagingStudy", "DiagnosticReport"];
const FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];
const MAX_INPUTS: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct ImportRequest {
    pub input_format: String,
    pub input_source: Option<String>,
    pub mode: Option<String>,
    pub storage_type: Option<String>,
    /// (resource type, url), in order.
    pub inputs: Vec<(String, String)>,
}

impl ImportRequest {
    /// As stored with the job and echoed nowhere else (URLs never carry credentials).
    pub fn to_json(&self) -> Value {
        json!({
            "inputFormat": self.input_format,
            "inputSource": self.input_source,
            "mode": self.mode,
            "storageDetail": self.storage_type.as_ref().map(|t| json!({"type": t})),
            "input": self.inputs.iter().map(|(t, u)| json!({"type": t, "url": u})).collect::<Vec<_>>(),
        })
    }
}

fn value_of(p: &Value) -> Option<&str> {
    ["valueString", "valueUri", "valueUrl", "valueCode", "valueCanonical"].iter().find_map(|k| p.get(*k).and_then(Value::as_str))
}

/// Parses and checks a kick-off body; every problem is reported.
pub fn parse(body: &Value, policy: &SourcePolicy) -> Result<ImportRequest, Vec<String>> {
    let mut errors = Vec::new();
    let mut req = ImportRequest { input_format: String::new(), input_source: None, mode: None, storage_type: None, inputs: Vec::new() };
    let mut raw_inputs: Vec<(Option<String>, Option<String>)> = Vec::new();
    match body.get("resourceType").and_then(Value::as_str) {
        Some("Parameters") => {
            for (i, p) in body.get("parameter").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]).iter().enumerate() {
                let name = p.get("name").and_then(Value::as_str).unwrap_or("");
                let parts = p.get("part").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
                let part = |n: &str| parts.iter().find(|q| q.get("name").and_then(Value::as_str) == Some(n)).and_then(value_of).map(str::to_string);
                match name {
                    "inputFormat" => req.input_format = value_of(p).unwrap_or("").to_string(),
                    "inputSource" => req.input_source = value_of(p).map(str::to_string),
                    "mode" => req.mode = value_of(p).map(str::to_string),
                    "storageDetail" => req.storage_type = part("type").or_else(|| value_of(p).map(str::to_string)),
                    "input" => raw_inputs.push((part("type"), part("url"))),
                    "" => errors.push(format!("parameter[{i}]: needs a name")),
                    _ => {} // other vendors' options (e.g. maxBatchSize) are not ours to refuse
                }
            }
        }
        Some(other) => errors.push(format!("resourceType: expected Parameters (or the plain bulk-import JSON), got {other:?}")),
        None => {
            let Some(obj) = body.as_object() else {
                return Err(vec!["the body must be a JSON object".into()]);
            };
            req.input_format = obj.get("inputFormat").and_then(Value::as_str).unwrap_or("").to_string();
            req.input_source = obj.get("inputSource").and_then(Value::as_str).map(str::to_string);
            req.mode = obj.get("mode").and_then(Value::as_str).map(str::to_string);
            req.storage_type = obj.get("storageDetail").and_then(|s| s.get("type")).and_then(Value::as_str).map(str::to_string);
            match obj.get("input") {
                Some(Value::Array(items)) => {
                    for item in items {
                        raw_inputs.push((
                            item.get("type").and_then(Value::as_str).map(str::to_string),
                            item.get("url").and_then(Value::as_str).map(str::to_string),
                        ));
                    }
                }
                Some(_) => errors.push("input: must be an array of {type, url}".into()),
                None => {}
            }
        }
    }
    if req.input_format.is_empty() {
        errors.push("inputFormat: is required (application/fhir+ndjson)".into());
    } else if !FORMATS.contains(&req.input_format.as_str()) {
        errors.push(format!("inputFormat: {:?} is not supported (application/fhir+ndjson)", req.input_format));
    }
    if let Some(mode) = &req.mode {
        if !["InitialLoad", "IncrementalLoad"].contains(&mode.as_str()) {
            errors.push(format!("mode: {mode:?} is not InitialLoad or IncrementalLoad"));
        }
    }
    if let Some(t) = &req.storage_type {
        if !["https", "http", "file"].contains(&t.as_str()) {
            errors.push(format!("storageDetail.type: {t:?} is not supported (https, http or file)"));
        }
    }
    if raw_inputs.is_empty() {
        errors.push("input: at least one {type, url} is required".into());
    }
    if raw_inputs.len() > MAX_INPUTS {
        errors.push(format!("input: at most {MAX_INPUTS} inputs per job"));
    }
    for (i, (kind, url)) in raw_inputs.into_iter().enumerate() {
        match &kind {
            Some(k) if IMPORT_TYPES.contains(&k.as_str()) => {}
            Some(k) => errors.push(format!("input[{i}].type: {k:?} is not imported here (supported: {})", IMPORT_TYPES.join(", "))),
            None => errors.push(format!("input[{i}].type: is required")),
        }
        match &url {
            Some(u) => {
                if let Err(e) = policy.check(u) {
                    errors.push(format!("input[{i}].url: {e}"));
                }
            }
            None => errors.push(format!("input[{i}].url: is required")),
        }
        if let (Some(k), Some(u)) = (kind, url) {
            req.inputs.push((k, u));
        }
    }
    if errors.is_empty() {
        Ok(req)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SourcePolicy {
        SourcePolicy::restricted("files.example", None)
    }

    #[test]
    fn both_kick_off_forms_parse_to_the_same_request() {
        let parameters = json!({"resourceType": "Parameters", "parameter": [
            {"name": "inputFormat", "valueString": "application/fhir+ndjson"},
            {"name": "inputSource", "valueUri": "https://pacs.example/fhir"},
            {"name": "mode", "valueCode": "InitialLoad"},
            {"name": "storageDetail", "part": [{"name": "type", "valueString": "https"}]},
            {"name": "input", "part": [{"name": "type", "valueString": "ImagingStudy"}, {"name": "url", "valueUri": "https://files.example/s.ndjson"}]},
            {"name": "input", "part": [{"name": "type", "valueString": "DiagnosticReport"}, {"name": "url", "valueUrl": "https://files.example/r.ndjson"}]}
        ]});
        let plain = json!({"inputFormat": "application/fhir+ndjson", "inputSource": "https://pacs.example/fhir", "mode": "InitialLoad",
            "storageDetail": {"type": "https"},
            "input": [{"type": "ImagingStudy", "url": "https://files.example/s.ndjson"}, {"type": "DiagnosticReport", "url": "https://files.example/r.ndjson"}]});
        let a = parse(&parameters, &policy()).unwrap();
        assert_eq!(a, parse(&plain, &policy()).unwrap());
        assert_eq!(a.inputs.len(), 2);
    }

    #[test]
    fn every_problem_is_named() {
        let bad = json!({"inputFormat": "text/csv", "input": [{"type": "Patient", "url": "https://elsewhere.example/p.ndjson"}, {"url": "ftp://x/y"}]});
        let errors = parse(&bad, &policy()).unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("input[0].url") && e.contains("ALLOWED_HOSTS")));
        assert!(parse(&json!({"resourceType": "Bundle"}), &policy()).is_err());
    }
}
