//! DICOM JSON model (DICOM PS3.18 Annex F): a dataset is an object keyed by eight
//! hexadecimal digits (group+element), each holding `{"vr": "XX", "Value": [...]}`
//! (or `BulkDataURI` / `InlineBinary`). PN values are objects with `Alphabetic`,
//! `Ideographic`, `Phonetic`; IS/DS may arrive as numbers or strings.

use serde_json::{Map, Value};

/// Attribute tags used by the service, spelled as in PS3.6.
pub mod tags {
    pub const SPECIFIC_CHARACTER_SET: &str = "00080005";
    pub const STUDY_DATE: &str = "00080020";
    pub const STUDY_TIME: &str = "00080030";
    pub const ACCESSION_NUMBER: &str = "00080050";
    pub const MODALITIES_IN_STUDY: &str = "00080061";
    pub const TIMEZONE_OFFSET_FROM_UTC: &str = "00080201";
    pub const REFERRING_PHYSICIAN_NAME: &str = "00080090";
    pub const STUDY_DESCRIPTION: &str = "00081030";
    pub const RETRIEVE_URL: &str = "00081190";
    pub const PATIENT_NAME: &str = "00100010";
    pub const PATIENT_ID: &str = "00100020";
    pub const ISSUER_OF_PATIENT_ID: &str = "00100021";
    pub const STUDY_INSTANCE_UID: &str = "0020000D";
    pub const STUDY_ID: &str = "00200010";
    pub const NUMBER_OF_STUDY_RELATED_SERIES: &str = "00201206";
    pub const NUMBER_OF_STUDY_RELATED_INSTANCES: &str = "00201208";
}

/// Why a body is not DICOM JSON, in words an integration engineer can act on.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct NotDicomJson(pub String);

/// One DICOM JSON dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomObject(Map<String, Value>);

fn is_tag(key: &str) -> bool {
    key.len() == 8 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_vr(vr: &str) -> bool {
    vr.len() == 2 && vr.bytes().all(|b| b.is_ascii_uppercase())
}

impl DicomObject {
    /// Validates one dataset: tag keys, a VR on each attribute, a `Value` array if any.
    pub fn from_value(value: Value) -> Result<Self, NotDicomJson> {
        let Value::Object(map) = value else {
            return Err(NotDicomJson(format!("expected a DICOM JSON object, found {}", kind(&value))));
        };
        let mut normalized = Map::with_capacity(map.len());
        for (key, attr) in map {
            if !is_tag(&key) {
                return Err(NotDicomJson(format!("key {key:?} is not a DICOM tag (eight hex digits)")));
            }
            let Some(fields) = attr.as_object() else {
                return Err(NotDicomJson(format!("attribute {key} is {}, expected an object with \"vr\"", kind(&attr))));
            };
            match fields.get("vr").and_then(Value::as_str) {
                Some(vr) if is_vr(vr) => {}
                Some(vr) => return Err(NotDicomJson(format!("attribute {key} has an invalid vr {vr:?}"))),
                None => return Err(NotDicomJson(format!("attribute {key} has no \"vr\""))),
            }
            if let Some(v) = fields.get("Value") {
                if !v.is_array() {
                    return Err(NotDicomJson(format!("attribute {key} has a \"Value\" that is not an array")));
                }
            }
            normalized.insert(key.to_ascii_uppercase(), attr);
        }
        Ok(DicomObject(normalized))
    }

    fn values(&self, tag: &str) -> &[Value] {
        self.0.get(tag).and_then(|a| a.get("Value")).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
    }

    /// All values of an attribute as text (PN → its Alphabetic group; numbers as text).
    pub fn strings(&self, tag: &str) -> Vec<String> {
        self.values(tag).iter().filter_map(value_text).filter(|s| !s.is_empty()).collect()
    }

    /// The first value as text, trimmed; `None` when absent or empty.
    pub fn string(&self, tag: &str) -> Option<String> {
        self.values(tag).iter().find_map(value_text).filter(|s| !s.is_empty())
    }

    /// The first value as an integer (IS/US/UL arrive as numbers or numeric strings).
    pub fn int(&self, tag: &str) -> Option<i64> {
        match self.values(tag).first()? {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(clean(s)),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(pn) => pn
            .get("Alphabetic")
            .or_else(|| pn.get("Ideographic"))
            .or_else(|| pn.get("Phonetic"))
            .and_then(Value::as_str)
            .map(clean),
        _ => None,
    }
}

/// Trims padding: spaces, and the NUL that pads UIDs to even length in DICOM (a PACS
/// that leaks it into JSON would otherwise poison PostgreSQL text and jsonb).
fn clean(s: &str) -> String {
    s.replace('\0', "").trim().to_string()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a QIDO-RS response body: a JSON array of datasets.
pub fn parse_dataset_array(body: &[u8]) -> Result<Vec<DicomObject>, NotDicomJson> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        let head = String::from_utf8_lossy(&body[..body.len().min(60)]).replace(['\n', '\r'], " ");
        NotDicomJson(format!("body is not JSON ({e}); it begins {head:?}"))
    })?;
    let Value::Array(items) = value else {
        return Err(NotDicomJson(format!("expected a JSON array of datasets, found {}", kind(&value))));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| DicomObject::from_value(item).map_err(|e| NotDicomJson(format!("item {i}: {}", e.0))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_strings_person_names_and_numbers_as_orthanc_sends_them() {
        let body = json!([{
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Anna"}]},
            "00080061": {"vr": "CS", "Value": ["CT", "SR"]},
            "00201206": {"vr": "IS", "Value": [2]},
            "00201208": {"vr": "IS", "Value": ["17"]},
            "00081030": {"vr": "LO"}
        }]);
        let items = parse_dataset_array(body.to_string().as_bytes()).unwrap();
        let study = &items[0];
        assert_eq!(study.string(tags::STUDY_INSTANCE_UID).as_deref(), Some("1.2.3"));
        assert_eq!(study.string(tags::PATIENT_NAME).as_deref(), Some("Müller^Anna"));
        assert_eq!(study.strings(tags::MODALITIES_IN_STUDY), vec!["CT", "SR"]);
        assert_eq!(study.int(tags::NUMBER_OF_STUDY_RELATED_SERIES), Some(2));
        assert_eq!(study.int(tags::NUMBER_OF_STUDY_RELATED_INSTANCES), Some(17));
        assert_eq!(study.string(tags::STUDY_DESCRIPTION), None);
    }

    #[test]
    fn nul_padding_is_removed() {
        let items = parse_dataset_array(br#"[{"0020000D": {"vr": "UI", "Value": ["1.2.3\u0000"]}, "00081030": {"vr": "LO", "Value": ["CT\u0000 HEAD "]}}]"#).unwrap();
        assert_eq!(items[0].string(tags::STUDY_INSTANCE_UID).as_deref(), Some("1.2.3"));
        assert_eq!(items[0].string(tags::STUDY_DESCRIPTION).as_deref(), Some("CT HEAD"));
    }

    #[test]
    fn lowercase_tags_are_normalized() {
        let items = parse_dataset_array(br#"[{"0020000d": {"vr": "UI", "Value": ["9"]}}]"#).unwrap();
        assert_eq!(items[0].string(tags::STUDY_INSTANCE_UID).as_deref(), Some("9"));
    }

    #[test]
    fn rejects_what_is_not_dicom_json_with_a_reason() {
        // Orthanc's own REST API answers /studies with an array of ids.
        let e = parse_dataset_array(br#"["a409df7b-1c8c1a7f"]"#).unwrap_err();
        assert!(e.0.contains("item 0") && e.0.contains("a string"), "{e}");
        let e = parse_dataset_array(b"<html>login</html>").unwrap_err();
        assert!(e.0.contains("not JSON") && e.0.contains("<html>"), "{e}");
        let e = parse_dataset_array(br#"{"studies": []}"#).unwrap_err();
        assert!(e.0.contains("array"), "{e}");
        let e = parse_dataset_array(br#"[{"PatientID": {"vr": "LO"}}]"#).unwrap_err();
        assert!(e.0.contains("not a DICOM tag"), "{e}");
        let e = parse_dataset_array(br#"[{"00100020": {"Value": ["x"]}}]"#).unwrap_err();
        assert!(e.0.contains("no \"vr\""), "{e}");
        let e = parse_dataset_array(br#"[{"00100020": {"vr": "LO", "Value": "x"}}]"#).unwrap_err();
        assert!(e.0.contains("not an array"), "{e}");
    }

    #[test]
    fn empty_array_is_no_studies() {
        assert!(parse_dataset_array(b"[]").unwrap().is_empty());
    }
}
