//! Credentials in `auth_config`: sealing secret values at rest, opening them for a
//! PACS call, and redacting them for every response.
//!
//! Secret values are sealed field by field, so non-secret parts (username, token URL)
//! stay readable for operators. Rows written by hand (the migration plan's SQL copies
//! legacy `config_json` verbatim) may hold plain text: it still works and is sealed at
//! the next start by [`seal_plaintext_everywhere`].

use serde_json::{Map, Value};
use uuid::Uuid;

use super::dicomweb::{ClientAuth, Credentials};
use super::store::PacsStore;
use super::AuthMode;
use crate::auth::TenantId;
use crate::config::SecretString;
use crate::crypto::{is_sealed, SecretBox};

pub const REDACTED: &str = "***";

/// Keys whose values are secrets, whatever the mode (legacy configs included).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    matches!(k.as_str(), "password" | "passwd" | "pass" | "token" | "access_token" | "refresh_token" | "api_key" | "apikey")
        || k.contains("secret")
        || k.contains("password")
}

fn aad(tenant: TenantId, endpoint: Uuid, field: &str) -> String {
    format!("radiology/pacs_endpoints/{tenant}/{endpoint}/{field}")
}

/// Seals every plain secret value of `config` (already sealed values are kept).
pub fn seal(sb: &SecretBox, tenant: TenantId, endpoint: Uuid, config: &Map<String, Value>) -> Map<String, Value> {
    config
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) if is_secret_key(k) => sb.seal(s, &aad(tenant, endpoint, k)),
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// True when some secret value is stored in plain text.
pub fn has_plaintext(config: &Value) -> bool {
    config.as_object().is_some_and(|o| o.iter().any(|(k, v)| is_secret_key(k) && v.is_string()))
}

/// The config as a client may see it: every secret value shown as `"***"`.
pub fn redact(config: Option<&Value>) -> Value {
    match config {
        Some(Value::Object(o)) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let shown = if is_secret_key(k) || is_sealed(v) { Value::String(REDACTED.into()) } else { v.clone() };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        _ => Value::Object(Map::new()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("auth_mode {0:?} is not supported (use none, basic, bearer or oauth2_client_credentials)")]
    UnknownMode(String),
    #[error("auth_config lacks {0}")]
    Missing(&'static str),
    #[error("auth_config.{field}: {reason}")]
    Unreadable { field: &'static str, reason: String },
}

/// Opens the credentials of a stored endpoint for use in a PACS call.
pub fn open_credentials(
    sb: &SecretBox,
    tenant: TenantId,
    endpoint: Uuid,
    auth_mode: Option<&str>,
    config: Option<&Value>,
) -> Result<Credentials, CredentialError> {
    let mode = AuthMode::parse(auth_mode).ok_or_else(|| CredentialError::UnknownMode(auth_mode.unwrap_or("").into()))?;
    let empty = Map::new();
    let config = config.and_then(Value::as_object).unwrap_or(&empty);
    let plain = |field: &'static str| -> Result<Option<String>, CredentialError> {
        match config.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) if is_sealed(v) => sb
                .open(v, &aad(tenant, endpoint, field))
                .map(Some)
                .map_err(|e| CredentialError::Unreadable { field, reason: e.to_string() }),
            Some(_) => Err(CredentialError::Unreadable { field, reason: "expected a string".into() }),
        }
    };
    let required = |field: &'static str| plain(field)?.ok_or(CredentialError::Missing(field));
    Ok(match mode {
        AuthMode::None => Credentials::None,
        AuthMode::Basic => Credentials::Basic {
            username: required("username")?,
            password: SecretString::new(required("password")?),
        },
        AuthMode::Bearer => Credentials::Bearer { token: SecretString::new(required("token")?) },
        AuthMode::OAuth2ClientCredentials => Credentials::OAuth2 {
            token_url: required("token_url")?,
            client_id: required("client_id")?,
            client_secret: SecretString::new(required("client_secret")?),
            scope: plain("scope")?,
            client_auth: match plain("client_auth")?.as_deref() {
                Some("post") => ClientAuth::Post,
                _ => ClientAuth::Basic,
            },
        },
    })
}

/// Start-up sweep: seals plain-text secrets left in `auth_config` by hand-run SQL.
/// Returns how many endpoints were sealed.
pub async fn seal_plaintext_everywhere(store: &dyn PacsStore, sb: &SecretBox) -> anyhow::Result<usize> {
    let mut sealed = 0;
    for (tenant, id, config) in store.all_auth_configs().await? {
        let Some(Value::Object(map)) = config.as_ref().filter(|c| has_plaintext(c)) else { continue };
        let new = Value::Object(seal(sb, tenant, id, map));
        store.replace_auth_config(tenant, id, &new).await?;
        sealed += 1;
    }
    if sealed > 0 {
        tracing::info!(endpoints = sealed, "sealed plain-text PACS credentials found in the database");
    }
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seal_redact_open_round_trip() {
        let sb = SecretBox::new(&[9u8; 32]);
        let tenant = TenantId(Uuid::new_v4());
        let id = Uuid::new_v4();
        let config = json!({"username": "orthanc", "password": "pw-123"});
        let sealed = Value::Object(seal(&sb, tenant, id, config.as_object().unwrap()));
        assert!(!sealed.to_string().contains("pw-123"));
        assert_eq!(sealed["username"], "orthanc");
        assert!(!has_plaintext(&sealed));
        assert_eq!(redact(Some(&sealed)), json!({"username": "orthanc", "password": "***"}));
        match open_credentials(&sb, tenant, id, Some("basic"), Some(&sealed)).unwrap() {
            Credentials::Basic { username, password } => {
                assert_eq!(username, "orthanc");
                assert_eq!(password.expose(), "pw-123");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plaintext_legacy_config_still_opens_and_is_detected() {
        let sb = SecretBox::new(&[9u8; 32]);
        let config = json!({"username": "u", "password": "legacy"});
        assert!(has_plaintext(&config));
        assert!(matches!(
            open_credentials(&sb, TenantId(Uuid::nil()), Uuid::nil(), Some("BASIC"), Some(&config)),
            Ok(Credentials::Basic { .. })
        ));
        assert_eq!(redact(Some(&config))["password"], "***");
    }

    #[test]
    fn token_url_is_not_a_secret_but_client_secret_is() {
        assert!(!is_secret_key("token_url"));
        assert!(is_secret_key("client_secret"));
        assert!(is_secret_key("token"));
    }
}
