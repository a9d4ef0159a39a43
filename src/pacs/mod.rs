//! PACS endpoints: registration of a tenant's DICOMweb endpoints (one per facility
//! node), their credentials sealed at rest, the step-by-step connectivity test, and
//! the DICOMweb client the rest of the service uses to talk to a PACS.

pub mod connectivity;
pub mod dicom_json;
pub mod dicomweb;
pub mod routes;
pub mod secrets;
pub mod service;
pub mod store;
pub mod validate;

pub use service::{PacsError, PacsService};
pub use store::{EndpointRow, PacsStore, SqlPacsStore};

/// How the service authenticates to a PACS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    None,
    Basic,
    Bearer,
    OAuth2ClientCredentials,
}

impl AuthMode {
    pub const ALL: [AuthMode; 4] = [AuthMode::None, AuthMode::Basic, AuthMode::Bearer, AuthMode::OAuth2ClientCredentials];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Basic => "basic",
            AuthMode::Bearer => "bearer",
            AuthMode::OAuth2ClientCredentials => "oauth2_client_credentials",
        }
    }

    /// Parses a stored or requested mode; legacy rows may use other case or NULL (none).
    pub fn parse(text: Option<&str>) -> Option<AuthMode> {
        let text = text.map(str::trim).unwrap_or("none");
        AuthMode::ALL.into_iter().find(|m| m.as_str().eq_ignore_ascii_case(text)).or_else(|| {
            match text.to_ascii_lowercase().as_str() {
                "" => Some(AuthMode::None),
                "oauth2" | "oauth" | "client_credentials" => Some(AuthMode::OAuth2ClientCredentials),
                _ => None,
            }
        })
    }

    /// `auth_config` fields: (name, required, secret).
    pub fn fields(self) -> &'static [(&'static str, bool, bool)] {
        match self {
            AuthMode::None => &[],
            AuthMode::Basic => &[("username", true, false), ("password", true, true)],
            AuthMode::Bearer => &[("token", true, true)],
            AuthMode::OAuth2ClientCredentials => &[
                ("token_url", true, false),
                ("client_id", true, false),
                ("client_secret", true, true),
                ("scope", false, false),
                ("client_auth", false, false),
            ],
        }
    }
}
