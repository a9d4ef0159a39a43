//! Checking and normalizing FHIR R4 resources that arrive from outside (bulk import):
//! element shapes, dateTime/instant syntax, references, and `meta.tag` handling.
//! Each resource context (studies, reports) states its own rules with these.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// The code system of the tags this service puts on resources.
pub const TAG_SYSTEM: &str = "urn:radiology-service:fhir:tag";
/// The tag every bulk-imported resource carries.
pub const HISTORICAL: &str = "historical";

/// One problem with an incoming resource: the FHIRPath of the element and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub expression: String,
    pub message: String,
}

/// Collects the issues of one resource.
#[derive(Debug, Default)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    pub fn add(&mut self, expression: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue { expression: expression.into(), message: message.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An optional string element; a value of another JSON type is an issue.
    pub fn string<'a>(&mut self, r: &'a Value, path: &str, name: &str) -> Option<&'a str> {
        match r.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
            Some(_) => {
                self.add(format!("{path}.{name}"), "must be a non-empty string");
                None
            }
        }
    }

    /// A required `code` element from a fixed value set.
    pub fn code<'a>(&mut self, r: &'a Value, path: &str, name: &str, allowed: &[&str]) -> Option<&'a str> {
        match r.get(name) {
            None | Some(Value::Null) => {
                self.add(format!("{path}.{name}"), "is required");
                None
            }
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Some(s),
            Some(other) => {
                self.add(format!("{path}.{name}"), format!("{other} is not one of {}", allowed.join(" | ")));
                None
            }
        }
    }

    /// An optional `unsignedInt`.
    pub fn unsigned(&mut self, r: &Value, path: &str, name: &str) -> Option<i32> {
        match r.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(n) if (0..=i32::MAX as i64).contains(&n) => Some(n as i32),
                _ => {
                    self.add(format!("{path}.{name}"), "must be an unsignedInt");
                    None
                }
            },
        }
    }

    /// An optional `dateTime`; returns the earliest instant it covers.
    pub fn date_time(&mut self, r: &Value, path: &str, name: &str) -> Option<DateTime<Utc>> {
        let v = r.get(name)?;
        match v.as_str().and_then(date_time_start) {
            Some(t) => Some(t),
            None => {
                self.add(format!("{path}.{name}"), format!("{v} is not a FHIR dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with a time zone)"));
                None
            }
        }
    }

    /// An optional `instant` (to the second, with a time zone).
    pub fn instant(&mut self, r: &Value, path: &str, name: &str) -> Option<DateTime<Utc>> {
        let v = r.get(name)?;
        match v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).and_then(|t| storable(t.with_timezone(&Utc))) {
            Some(t) => Some(t),
            None => {
                self.add(format!("{path}.{name}"), format!("{v} is not a FHIR instant (YYYY-MM-DDThh:mm:ss with a time zone)"));
                None
            }
        }
    }

    /// An optional array element; a single object where an array belongs is an issue.
    pub fn array<'a>(&mut self, r: &'a Value, path: &str, name: &str) -> &'a [Value] {
        match r.get(name) {
            None | Some(Value::Null) => &[],
            Some(Value::Array(items)) => items,
            Some(_) => {
                self.add(format!("{path}.{name}"), "must be an array");
                &[]
            }
        }
    }

    /// Checks a Reference's shape; returns it parsed.
    pub fn reference(&mut self, v: &Value, path: &str) -> Option<Reference> {
        let Some(obj) = v.as_object() else {
            self.add(path, "must be a Reference object");
            return None;
        };
        let mut parsed = Reference::default();
        if let Some(r) = obj.get("reference") {
            match r.as_str().and_then(parse_reference) {
                Some((kind, id)) => {
                    parsed.resource_type = kind;
                    parsed.id = id;
                    parsed.literal = r.as_str().map(str::to_string);
                }
                None => {
                    self.add(format!("{path}.reference"), format!("{r} is not a reference (Type/id, an absolute URL, urn:uuid:…, urn:oid:… or #contained)"));
                    return None;
                }
            }
        }
        if let Some(i) = obj.get("identifier") {
            match (i.get("system").map(Value::as_str), i.get("value").and_then(Value::as_str)) {
                (None | Some(Some(_)), Some(value)) if !value.is_empty() => {
                    parsed.identifier = Some((i.get("system").and_then(Value::as_str).map(str::to_string), value.to_string()));
                }
                _ => {
                    self.add(format!("{path}.identifier"), "must be an Identifier with a value (and a string system)");
                    return None;
                }
            }
        }
        if parsed.literal.is_none() && parsed.identifier.is_none() && obj.get("display").and_then(Value::as_str).is_none() {
            self.add(path, "a Reference needs a reference, an identifier or a display");
            return None;
        }
        Some(parsed)
    }

    /// Codings of a CodeableConcept as (system, code).
    pub fn codings(&mut self, v: &Value, path: &str) -> Vec<(Option<String>, String)> {
        if !v.is_object() {
            self.add(path, "must be a CodeableConcept");
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, c) in self.array(v, path, "coding").iter().enumerate() {
            match c.get("code").and_then(Value::as_str) {
                Some(code) if !code.is_empty() => out.push((c.get("system").and_then(Value::as_str).map(str::to_string), code.to_string())),
                _ if c.get("display").is_some() => {}
                _ => self.add(format!("{path}.coding[{i}].code"), "a Coding needs a code (or at least a display)"),
            }
        }
        if out.is_empty() && v.get("text").and_then(Value::as_str).is_none() && v.get("coding").is_none_or(|c| c.as_array().is_none_or(|a| a.is_empty())) {
            self.add(path, "a CodeableConcept needs a coding or a text");
        }
        out
    }
}

/// A Reference, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reference {
    /// The literal reference as written.
    pub literal: Option<String>,
    /// Resource type and id of a relative (or absolute RESTful) literal reference.
    pub resource_type: Option<String>,
    pub id: Option<String>,
    /// The logical reference (system, value).
    pub identifier: Option<(Option<String>, String)>,
}

/// A FHIR `id`: 1–64 of `A-Z a-z 0-9 - .`.
pub fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `Type/id[/_history/v]`, `http(s)://…/Type/id`, `urn:uuid:…`, `urn:oid:…`, `#id`.
/// Returns the type and id when the reference names them.
pub fn parse_reference(s: &str) -> Option<(Option<String>, Option<String>)> {
    if let Some(local) = s.strip_prefix('#') {
        return (local.is_empty() || is_id(local)).then_some((None, None));
    }
    if s.starts_with("urn:uuid:") || s.starts_with("urn:oid:") {
        return (!s.contains(char::is_whitespace) && s.len() > 9).then_some((None, None));
    }
    if s.contains(char::is_whitespace) {
        return None;
    }
    let mut parts: Vec<&str> = s.split('/').collect();
    if parts.len() >= 4 && parts[parts.len() - 2] == "_history" {
        parts.truncate(parts.len() - 2);
    }
    let (kind, id) = match parts.as_slice() {
        [.., kind, id] => (*kind, *id),
        _ => return None,
    };
    let is_type = kind.len() > 1 && kind.starts_with(|c: char| c.is_ascii_uppercase()) && kind.bytes().all(|b| b.is_ascii_alphabetic());
    let absolute = s.starts_with("http://") || s.starts_with("https://");
    if !is_type || !is_id(id) || (!absolute && parts.len() != 2) {
        return None;
    }
    Some((Some(kind.to_string()), Some(id.to_string())))
}

/// The earliest instant of a FHIR dateTime; a time needs seconds and a zone. Kept to
/// microseconds and years 1–9999 (what both stores hold exactly).
pub fn date_time_start(s: &str) -> Option<DateTime<Utc>> {
    let t = if s.contains('T') {
        DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
    } else {
        match s.len() {
            4 | 7 | 10 => crate::interop::fhir::params::date_range(s).map(|(lo, _)| lo),
            _ => None,
        }
    };
    storable(t?)
}

/// An instant both stores hold exactly: years 1–9999 in UTC, microseconds.
pub fn storable(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    use chrono::{Datelike, SubsecRound};
    (1..=9999).contains(&t.year()).then(|| t.trunc_subsecs(6))
}

/// Removes what the server owns (`id`, `meta.versionId`, `meta.lastUpdated`) from an
/// incoming resource; returns the id it had.
pub fn strip_server_fields(r: &mut Map<String, Value>) -> Option<String> {
    let id = match r.remove("id") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    if let Some(Value::Object(meta)) = r.get_mut("meta") {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            r.remove("meta");
        }
    }
    id
}

/// Adds a tag to `meta.tag` unless the resource already has it.
pub fn add_tag(r: &mut Map<String, Value>, system: &str, code: &str) {
    let meta = r.entry("meta").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let tags = meta.as_object_mut().expect("an object").entry("tag").or_insert_with(|| json!([]));
    if !tags.is_array() {
        *tags = json!([]);
    }
    let tags = tags.as_array_mut().expect("an array");
    let present = tags.iter().any(|t| t.get("system").and_then(Value::as_str) == Some(system) && t.get("code").and_then(Value::as_str) == Some(code));
    if !present {
        tags.push(json!({"system": system, "code": code}));
    }
}

/// FHIR keeps tags across updates: the tags of `old` that `new` lacks are carried over
/// (so a study imported as historical stays historical when the sync refreshes it).
pub fn carry_tags(new: &Value, old: &Value) -> Option<Value> {
    let old_tags = old.pointer("/meta/tag").and_then(Value::as_array)?;
    let mut merged = new.as_object()?.clone();
    let before = merged.clone();
    for t in old_tags {
        if let (Some(system), Some(code)) = (t.get("system").and_then(Value::as_str), t.get("code").and_then(Value::as_str)) {
            add_tag(&mut merged, system, code);
        }
    }
    (merged != before).then_some(Value::Object(merged))
}

/// `%`, `|` and newline escaped, so the parts of a token cannot run together.
fn token_part(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['%', '|', '\n']) {
        return std::borrow::Cow::Borrowed(text); // the usual case: nothing to escape, nothing to copy
    }
    std::borrow::Cow::Owned(text.replace('%', "%25").replace('|', "%7C").replace('\n', "%0A"))
}

/// The stored search token a token search term matches: `param|system|value` for
/// `system|value`, `param||value` for `|value` (no system), `param:value` for a value
/// in any system.
pub fn token_term(param: &str, system: Option<&str>, value: &str) -> String {
    match system {
        Some(system) => format!("{param}|{}|{}", token_part(system), token_part(value)),
        None => format!("{param}:{}", token_part(value)),
    }
}

/// The `_tag` search terms of a resource: for each `meta.tag` with a code, its exact term
/// (`_tag|system|code`, an absent system as "") and its any-system term (`_tag:code`);
/// in tag order, repeats included.
pub fn tag_terms(resource: &Value) -> Vec<String> {
    let tags = resource.pointer("/meta/tag").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    tags.iter()
        .filter_map(|t| t.get("code").and_then(Value::as_str).map(|code| (t.get("system").and_then(Value::as_str), code)))
        .flat_map(|(system, code)| [token_term("_tag", Some(system.unwrap_or("")), code), token_term("_tag", None, code)])
        .collect()
}

/// The JSON text of `resource`, a resource parsed from `line` and since changed only
/// in its `id` and `meta` members (removed, replaced or added), made from the line
/// itself: every other top-level member is copied as sent, in the order sent, and only
/// `meta` is serialized again. For an import this replaces printing the whole parsed
/// tree back to text (each string escaped anew), the larger part of the importer's own
/// CPU time on big resources. `None` when the line is not an object whose member names
/// are distinct and free of escapes; the caller then serializes `resource`.
pub fn text_from_line(line: &[u8], resource: &Map<String, Value>) -> Option<String> {
    let Members(members) = serde_json::from_slice(line).ok()?;
    let mut out = String::with_capacity(line.len() + 96);
    out.push('{');
    let push_member = |out: &mut String, name: &str, text: &str| {
        if out.len() > 1 {
            out.push(',');
        }
        out.push('"');
        out.push_str(name); // has no escapes: read borrowed, or a key of ours below
        out.push_str("\":");
        out.push_str(text);
    };
    for (i, (name, raw)) in members.iter().enumerate() {
        if members[..i].iter().any(|(other, _)| other == name) {
            return None; // the parsed tree kept the last of two: leave it to the serializer
        }
        match (*name, resource.get(*name)) {
            (_, None) => {} // removed (the id)
            ("meta" | "id", Some(value)) => push_member(&mut out, name, &serde_json::to_string(value).ok()?),
            (_, Some(_)) => push_member(&mut out, name, raw.get()),
        }
    }
    for (name, value) in resource {
        if !members.iter().any(|(sent, _)| sent == name) {
            if name.contains(['"', '\\']) || name.chars().any(char::is_control) {
                return None;
            }
            push_member(&mut out, name, &serde_json::to_string(value).ok()?); // added (a `meta` for the tag)
        }
    }
    out.push('}');
    Some(out)
}

/// The top-level members of a JSON object, as sent (names borrowed, so escape-free).
struct Members<'a>(Vec<(&'a str, &'a serde_json::value::RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(name) = map.next_key::<&'de str>()? {
                    members.push((name, map.next_value()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_of_every_shape() {
        let ok = |s: &str| parse_reference(s).is_some();
        assert_eq!(parse_reference("ImagingStudy/abc-1"), Some((Some("ImagingStudy".into()), Some("abc-1".into()))));
        assert_eq!(parse_reference("https://pacs.example/fhir/ImagingStudy/7/_history/2"), Some((Some("ImagingStudy".into()), Some("7".into()))));
        assert!(ok("urn:uuid:0c3b1e2a-8e7a-4a51-9d7b-1b2f3c4d5e6f") && ok("#p1") && ok("urn:oid:1.2.3"));
        for bad in ["not a reference", "ImagingStudy/", "imagingstudy/1", "a/b/c", "Patient/has space", "", "Patient/x/y"] {
            assert!(!ok(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn date_times_need_a_zone_with_a_time() {
        assert!(date_time_start("2019").is_some() && date_time_start("2019-07").is_some() && date_time_start("2019-07-04").is_some());
        assert_eq!(date_time_start("2019-07-04T10:00:00+02:00").unwrap().to_rfc3339(), "2019-07-04T08:00:00+00:00");
        for bad in ["2019-07-04T10:00:00", "2019-7-4", "yesterday", "2019-13", "20190704"] {
            assert!(date_time_start(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tags_are_added_once_and_carried_over() {
        let mut r = json!({"meta": {"versionId": "3", "tag": [{"system": "s", "code": "legacy"}]}, "id": "x"}).as_object().unwrap().clone();
        assert_eq!(strip_server_fields(&mut r).as_deref(), Some("x"));
        add_tag(&mut r, TAG_SYSTEM, HISTORICAL);
        add_tag(&mut r, TAG_SYSTEM, HISTORICAL);
        assert_eq!(r["meta"], json!({"tag": [{"system": "s", "code": "legacy"}, {"system": TAG_SYSTEM, "code": HISTORICAL}]}));
        let synced = json!({"status": "available"});
        let kept = carry_tags(&synced, &Value::Object(r)).unwrap();
        assert_eq!(kept["meta"]["tag"].as_array().unwrap().len(), 2);
        assert_eq!(carry_tags(&kept, &kept), None, "nothing to carry is no change");
    }
    #[test]
    fn the_stored_text_is_the_line_less_the_id_with_the_new_meta() {
        let line = br#"{"resourceType":"X","id":"src-1", "status":"final","meta":{"versionId":"3","tag":[{"code":"a"}]},"note":[{"text":"caf\u00e9 \"q\" 1.50"}],"n":1.50}"#;
        let mut r = serde_json::from_slice::<Value>(line).unwrap().as_object().unwrap().clone();
        strip_server_fields(&mut r);
        add_tag(&mut r, TAG_SYSTEM, HISTORICAL);
        let text = text_from_line(line, &r).unwrap();
        assert_eq!(
            text,
            format!(r#"{{"resourceType":"X","status":"final","meta":{{"tag":[{{"code":"a"}},{{"code":"historical","system":"{TAG_SYSTEM}"}}]}},"note":[{{"text":"caf\u00e9 \"q\" 1.50"}}],"n":1.50}}"#)
        );
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), Value::Object(r.clone()));
        // No meta sent: the tag's meta is added at the end.
        let line = br#"{"resourceType":"X","id":"s"}"#;
        let mut r = serde_json::from_slice::<Value>(line).unwrap().as_object().unwrap().clone();
        strip_server_fields(&mut r);
        add_tag(&mut r, TAG_SYSTEM, HISTORICAL);
        let text = text_from_line(line, &r).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), Value::Object(r.clone()));
        assert!(text.starts_with(r#"{"resourceType":"X","meta":"#), "{text}");
        // Two members of one name, or an escaped name: left to the serializer.
        assert_eq!(text_from_line(br#"{"a":1,"a":2}"#, &Map::new()), None);
        assert_eq!(text_from_line(br#"{"\u0061":1}"#, &Map::new()), None);
        assert_eq!(text_from_line(b"[1]", &Map::new()), None);
    }
}
