//! Bearer-token authentication and tenant scope.
//!
//! Every request to `/v1` and `/fhir` carries an HS256 JWT with `tenant_id`, `sub`,
//! `roles` and `exp`. The [`TenantCtx`] extractor verifies it; store calls take its
//! [`TenantId`], so no query can forget whose rows it touches.

use std::fmt;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

/// The tenant a request acts for. Constructed only from a verified token (or by
/// system jobs that iterate tenants explicitly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct TenantId(pub Uuid);

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// May read and write.
    Admin,
    /// May read.
    Read,
}

impl Role {
    pub const ADMIN: &'static str = "radiology.admin";
    pub const READ: &'static str = "radiology.read";

    fn name(self) -> &'static str {
        match self {
            Role::Admin => Self::ADMIN,
            Role::Read => Self::READ,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub tenant_id: Uuid,
    pub sub: String,
    pub roles: Vec<String>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
}

/// Who is calling, for which tenant, with which roles.
#[derive(Clone, Debug)]
pub struct TenantCtx {
    pub tenant: TenantId,
    pub subject: String,
    pub roles: Vec<String>,
}

impl TenantCtx {
    pub fn has(&self, role: Role) -> bool {
        // An administrator may also read.
        self.roles.iter().any(|r| r == role.name() || (role == Role::Read && r == Role::ADMIN))
    }

    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.has(role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("this operation needs the role {}", role.name())))
        }
    }
}

/// Signs and verifies tokens with one HS256 key.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret) }
    }

    pub fn mint(&self, claims: &Claims) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)?)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 30;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map(|d| d.claims).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let reason = match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::InvalidSignature => "the token signature is invalid",
                ErrorKind::InvalidAlgorithm => "the token must be signed with HS256",
                ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (exp)",
                ErrorKind::Json(_) => "the token claims are invalid (tenant_id uuid, sub, roles, exp required)",
                _ => "the token is malformed",
            };
            ApiError::Unauthorized(reason.into())
        })
    }
}

/// Anything that can hand the extractor the verification keys.
pub trait HasTokenKeys {
    fn token_keys(&self) -> &Arc<TokenKeys>;
}

impl<S> FromRequestParts<S> for TenantCtx
where
    S: HasTokenKeys + Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer header".into()))?;
        let value = header.to_str().map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("Authorization must be 'Bearer <token>'".into()))?;
        let claims = state.token_keys().verify(token)?;
        if claims.sub.trim().is_empty() {
            return Err(ApiError::Unauthorized("the token has an empty sub".into()));
        }
        Ok(TenantCtx { tenant: TenantId(claims.tenant_id), subject: claims.sub, roles: claims.roles })
    }
}

/// Parses a lifetime such as `90s`, `30m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_ttl(text: &str) -> anyhow::Result<chrono::Duration> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: i64 = digits.parse().map_err(|_| anyhow::anyhow!("invalid --ttl {text:?}: expected e.g. 30m, 1h, 7d"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => anyhow::bail!("invalid --ttl unit in {text:?}: use s, m, h or d"),
    };
    anyhow::ensure!(seconds > 0, "--ttl must be positive");
    Ok(chrono::Duration::seconds(seconds))
}

/// Mints a token as `radiology token` does.
pub fn mint_token(
    keys: &TokenKeys,
    tenant: Uuid,
    sub: &str,
    roles: &[String],
    ttl: chrono::Duration,
) -> anyhow::Result<String> {
    let now = chrono::Utc::now();
    keys.mint(&Claims {
        tenant_id: tenant,
        sub: sub.to_string(),
        roles: roles.to_vec(),
        exp: (now + ttl).timestamp(),
        iat: Some(now.timestamp()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h").unwrap().num_seconds(), 3600);
        assert_eq!(parse_ttl("90").unwrap().num_seconds(), 90);
        assert_eq!(parse_ttl("7d").unwrap().num_seconds(), 7 * 86400);
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn minted_token_verifies_and_wrong_key_or_expiry_fails() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let tenant = Uuid::new_v4();
        let token = mint_token(&keys, tenant, "alice", &["radiology.read".into()], chrono::Duration::hours(1)).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.tenant_id, tenant);
        let other = TokenKeys::new(b"another key another key another k");
        assert!(matches!(other.verify(&token), Err(ApiError::Unauthorized(_))));
        let expired = keys
            .mint(&Claims { tenant_id: tenant, sub: "a".into(), roles: vec![], exp: chrono::Utc::now().timestamp() - 3600, iat: None })
            .unwrap();
        match keys.verify(&expired) {
            Err(ApiError::Unauthorized(reason)) => assert!(reason.contains("expired")),
            other => panic!("expected 401, got {other:?}"),
        }
    }

    #[test]
    fn admin_implies_read_but_read_is_not_admin() {
        let ctx = |roles: &[&str]| TenantCtx {
            tenant: TenantId(Uuid::nil()),
            subject: "s".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        };
        assert!(ctx(&["radiology.admin"]).has(Role::Read));
        assert!(!ctx(&["radiology.read"]).has(Role::Admin));
        assert!(!ctx(&[]).has(Role::Read));
    }
}
