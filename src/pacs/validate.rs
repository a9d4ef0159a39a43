//! Validation of PACS endpoint requests. Every bad field is reported at once, and a
//! request with any bad field changes nothing.

use serde_json::{Map, Value};
use uuid::Uuid;

use super::secrets::REDACTED;
use super::AuthMode;
use crate::crypto::is_sealed;
use crate::error::FieldError;

pub const DEFAULT_TIMEOUT_MS: i32 = 10_000;
const MIN_TIMEOUT_MS: i64 = 100;
const MAX_TIMEOUT_MS: i64 = 600_000;

const WRITABLE: &[&str] =
    &["name", "node_id", "facility_id", "qido_url", "wado_url", "stow_url", "auth_mode", "auth_config", "timeout_ms", "active"];
const READ_ONLY: &[&str] = &["id", "tenant_id", "created_at", "updated_at", "last_test"];

/// A complete, valid endpoint definition. Secret values in `auth_config` are plain
/// strings (new) or sealed objects (kept from the stored row).
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointInput {
    pub name: String,
    pub node_id: String,
    pub facility_id: Option<Uuid>,
    pub qido_url: String,
    pub wado_url: Option<String>,
    pub stow_url: Option<String>,
    pub auth_mode: AuthMode,
    pub auth_config: Map<String, Value>,
    pub timeout_ms: i32,
    pub active: bool,
}

/// Validates a `POST` body.
pub fn validate_create(body: &Map<String, Value>) -> Result<EndpointInput, Vec<FieldError>> {
    let mut errors = unknown_fields(body);
    let name = required_text(body, "name", 200, &mut errors);
    let node_id = required_text(body, "node_id", 128, &mut errors);
    let qido_url = match body.get("qido_url") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("qido_url", "is required"));
            None
        }
        Some(v) => url_field("qido_url", v, &mut errors),
    };
    let wado_url = optional_url(body, "wado_url", &mut errors);
    let stow_url = optional_url(body, "stow_url", &mut errors);
    let facility_id = optional_uuid(body, "facility_id", &mut errors);
    let auth_mode = auth_mode_field(body.get("auth_mode"), &mut errors).unwrap_or(Some(AuthMode::None));
    let auth_config = auth_mode.and_then(|mode| auth_config_field(mode, body.get("auth_config"), None, &mut errors));
    let timeout_ms = timeout_field(body.get("timeout_ms"), &mut errors).unwrap_or(DEFAULT_TIMEOUT_MS);
    let active = bool_field(body.get("active"), "active", &mut errors).unwrap_or(true);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(EndpointInput {
        name: name.unwrap(),
        node_id: node_id.unwrap(),
        facility_id: facility_id.flatten(),
        qido_url: qido_url.unwrap(),
        wado_url: wado_url.flatten(),
        stow_url: stow_url.flatten(),
        auth_mode: auth_mode.unwrap(),
        auth_config: auth_config.unwrap(),
        timeout_ms,
        active,
    })
}

/// Validates a `PATCH` body (JSON merge patch) against the current definition.
/// In `auth_config`, a secret given as `"***"` (as a GET shows it) keeps the stored value.
pub fn validate_patch(body: &Map<String, Value>, current: &EndpointInput) -> Result<EndpointInput, Vec<FieldError>> {
    let mut errors = unknown_fields(body);
    let mut next = current.clone();
    if body.contains_key("name") {
        if let Some(v) = required_text(body, "name", 200, &mut errors) {
            next.name = v;
        }
    }
    if body.contains_key("node_id") {
        if let Some(v) = required_text(body, "node_id", 128, &mut errors) {
            next.node_id = v;
        }
    }
    if let Some(v) = body.get("qido_url") {
        if v.is_null() {
            errors.push(FieldError::new("qido_url", "is required and cannot be removed"));
        } else if let Some(url) = url_field("qido_url", v, &mut errors) {
            next.qido_url = url;
        }
    }
    if let Some(v) = optional_url(body, "wado_url", &mut errors) {
        next.wado_url = v;
    }
    if let Some(v) = optional_url(body, "stow_url", &mut errors) {
        next.stow_url = v;
    }
    if let Some(v) = optional_uuid(body, "facility_id", &mut errors) {
        next.facility_id = v;
    }
    if let Some(v) = body.get("timeout_ms") {
        if v.is_null() {
            next.timeout_ms = DEFAULT_TIMEOUT_MS;
        } else if let Some(t) = timeout_field(Some(v), &mut errors) {
            next.timeout_ms = t;
        }
    }
    if let Some(v) = bool_field(body.get("active"), "active", &mut errors) {
        next.active = v;
    }
    let mode = match auth_mode_field(body.get("auth_mode"), &mut errors) {
        Some(Some(mode)) => Some(mode),
        Some(None) => None,
        None => Some(current.auth_mode),
    };
    if let Some(mode) = mode {
        let mode_changed = mode != current.auth_mode;
        match body.get("auth_config") {
            Some(config) => {
                let keep = (!mode_changed).then_some(&current.auth_config);
                if let Some(c) = auth_config_field(mode, Some(config), keep, &mut errors) {
                    next.auth_config = c;
                }
            }
            None if mode_changed && mode != AuthMode::None => {
                errors.push(FieldError::new("auth_config", format!("is required when auth_mode changes to {}", mode.as_str())))
            }
            None if mode_changed => next.auth_config = Map::new(),
            None => {}
        }
        next.auth_mode = mode;
    }
    if errors.is_empty() {
        Ok(next)
    } else {
        Err(errors)
    }
}

fn unknown_fields(body: &Map<String, Value>) -> Vec<FieldError> {
    body.keys()
        .filter(|k| !WRITABLE.contains(&k.as_str()))
        .map(|k| {
            if READ_ONLY.contains(&k.as_str()) {
                FieldError::new(k.as_str(), "is read-only")
            } else {
                FieldError::new(k.as_str(), format!("unknown field; allowed: {}", WRITABLE.join(", ")))
            }
        })
        .collect()
}

fn required_text(body: &Map<String, Value>, field: &str, max: usize, errors: &mut Vec<FieldError>) -> Option<String> {
    match body.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= max => Some(s.trim().to_string()),
        Some(Value::String(s)) if s.trim().is_empty() => {
            errors.push(FieldError::new(field, "must not be empty"));
            None
        }
        Some(Value::String(_)) => {
            errors.push(FieldError::new(field, format!("must be at most {max} characters")));
            None
        }
        None | Some(Value::Null) => {
            errors.push(FieldError::new(field, "is required"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

/// An absolute http(s) URL with a host and no embedded credentials.
pub fn check_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text.trim()).map_err(|e| format!("is not an absolute URL ({e})"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("must use http or https, not {}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not embed credentials; put them in auth_config".into());
    }
    if url.fragment().is_some() {
        return Err("must not have a fragment".into());
    }
    Ok(text.trim().trim_end_matches('/').to_string())
}

fn url_field(field: &str, value: &Value, errors: &mut Vec<FieldError>) -> Option<String> {
    match value.as_str().map(check_url) {
        Some(Ok(url)) => Some(url),
        Some(Err(message)) => {
            errors.push(FieldError::new(field, message));
            None
        }
        None => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

/// `None` = absent; `Some(None)` = null (cleared); `Some(Some(url))` = set.
fn optional_url(body: &Map<String, Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<Option<String>> {
    match body.get(field)? {
        Value::Null => Some(None),
        v => url_field(field, v, errors).map(Some),
    }
}

fn optional_uuid(body: &Map<String, Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<Option<Uuid>> {
    match body.get(field)? {
        Value::Null => Some(None),
        Value::String(s) => match Uuid::parse_str(s) {
            Ok(u) => Some(Some(u)),
            Err(_) => {
                errors.push(FieldError::new(field, "must be a UUID"));
                None
            }
        },
        _ => {
            errors.push(FieldError::new(field, "must be a UUID string"));
            None
        }
    }
}

/// `None` = absent; `Some(None)` = invalid (reported); `Some(Some(mode))` = valid.
fn auth_mode_field(value: Option<&Value>, errors: &mut Vec<FieldError>) -> Option<Option<AuthMode>> {
    let value = value?;
    let parsed = value.as_str().and_then(|s| AuthMode::ALL.into_iter().find(|m| m.as_str() == s));
    if parsed.is_none() {
        errors.push(FieldError::new("auth_mode", "must be one of none, basic, bearer, oauth2_client_credentials"));
    }
    Some(parsed)
}

fn timeout_field(value: Option<&Value>, errors: &mut Vec<FieldError>) -> Option<i32> {
    let value = value?;
    match value.as_i64() {
        Some(t) if (MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&t) => Some(t as i32),
        _ => {
            errors.push(FieldError::new(
                "timeout_ms",
                format!("must be an integer from {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS}"),
            ));
            None
        }
    }
}

fn bool_field(value: Option<&Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<bool> {
    let value = value?;
    if value.is_boolean() {
        value.as_bool()
    } else {
        errors.push(FieldError::new(field, "must be true or false"));
        None
    }
}

/// Checks `auth_config` against the mode. With `keep`, a secret sent as `"***"` takes
/// the value stored in `keep`.
fn auth_config_field(
    mode: AuthMode,
    value: Option<&Value>,
    keep: Option<&Map<String, Value>>,
    errors: &mut Vec<FieldError>,
) -> Option<Map<String, Value>> {
    let empty = Map::new();
    let config = match value {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(_) => {
            errors.push(FieldError::new("auth_config", "must be an object"));
            return None;
        }
    };
    let before = errors.len();
    let fields = mode.fields();
    for key in config.keys() {
        if !fields.iter().any(|(name, _, _)| name == key) {
            let allowed: Vec<&str> = fields.iter().map(|(n, _, _)| *n).collect();
            let hint = if allowed.is_empty() {
                format!("auth_mode {} takes no auth_config", mode.as_str())
            } else {
                format!("unknown for auth_mode {}; allowed: {}", mode.as_str(), allowed.join(", "))
            };
            errors.push(FieldError::new(format!("auth_config.{key}"), hint));
        }
    }
    let mut out = Map::new();
    for &(name, required, secret) in fields {
        let path = format!("auth_config.{name}");
        match config.get(name) {
            None | Some(Value::Null) if required => errors.push(FieldError::new(path, format!("is required for auth_mode {}", mode.as_str()))),
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if secret && s == REDACTED => match keep.and_then(|k| k.get(name)) {
                Some(stored) => {
                    out.insert(name.into(), stored.clone());
                }
                None => errors.push(FieldError::new(path, "\"***\" keeps a stored secret, but none is stored; send the value")),
            },
            Some(Value::String(s)) if s.trim().is_empty() => errors.push(FieldError::new(path, "must not be empty")),
            Some(Value::String(s)) => {
                let ok = match name {
                    "token_url" => check_url(s).map(|_| ()),
                    "client_auth" if s != "basic" && s != "post" => Err("must be basic or post".to_string()),
                    _ => Ok(()),
                };
                match ok {
                    Ok(()) => {
                        out.insert(name.into(), Value::String(s.clone()));
                    }
                    Err(message) => errors.push(FieldError::new(path, message)),
                }
            }
            Some(v) if secret && is_sealed(v) && keep.is_some() => {
                out.insert(name.into(), v.clone());
            }
            Some(_) => errors.push(FieldError::new(path, "must be a string")),
        }
    }
    (errors.len() == before).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn valid() -> Value {
        json!({
            "name": "Main PACS", "node_id": "node-1", "qido_url": "http://pacs.example:8042/dicom-web/",
            "auth_mode": "basic", "auth_config": {"username": "u", "password": "p"}
        })
    }

    #[test]
    fn a_valid_body_gets_defaults() {
        let input = validate_create(&obj(valid())).unwrap();
        assert_eq!(input.qido_url, "http://pacs.example:8042/dicom-web");
        assert_eq!(input.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert!(input.active);
        assert_eq!(input.auth_mode, AuthMode::Basic);
    }

    #[test]
    fn every_bad_field_is_named() {
        let body = json!({
            "name": "", "qido_url": "ftp://x", "wado_url": "not a url", "auth_mode": "basic",
            "auth_config": {"username": "u", "extra": 1}, "timeout_ms": 5, "active": "yes", "color": "red", "id": "x"
        });
        let errors = validate_create(&obj(body)).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for f in ["name", "node_id", "qido_url", "wado_url", "auth_config.extra", "auth_config.password", "timeout_ms", "active", "color", "id"] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn auth_config_must_match_the_mode() {
        let mut body = valid();
        body["auth_mode"] = json!("oauth2_client_credentials");
        let errors = validate_create(&obj(body)).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"auth_config.token_url") && fields.contains(&"auth_config.username"), "{fields:?}");
        let mut body = valid();
        body["auth_mode"] = json!("none");
        assert!(validate_create(&obj(body)).is_err(), "none takes no credentials");
    }

    #[test]
    fn urls_with_credentials_are_refused() {
        assert!(check_url("http://u:p@pacs/dicom-web").unwrap_err().contains("auth_config"));
        assert!(check_url("/dicom-web").is_err());
    }

    #[test]
    fn patch_keeps_stored_secret_for_redacted_value_and_requires_config_on_mode_change() {
        let mut current = validate_create(&obj(valid())).unwrap();
        current.auth_config.insert("password".into(), json!({"$sealed": "v1:abc"}));
        let next = validate_patch(&obj(json!({"auth_config": {"username": "v", "password": "***"}})), &current).unwrap();
        assert_eq!(next.auth_config["username"], "v");
        assert_eq!(next.auth_config["password"], json!({"$sealed": "v1:abc"}));
        let errors = validate_patch(&obj(json!({"auth_mode": "bearer"})), &current).unwrap_err();
        assert_eq!(errors[0].field, "auth_config");
        let next = validate_patch(&obj(json!({"auth_mode": "none"})), &current).unwrap();
        assert!(next.auth_config.is_empty());
        let errors = validate_patch(&obj(json!({"qido_url": null})), &current).unwrap_err();
        assert_eq!(errors[0].field, "qido_url");
    }
}
