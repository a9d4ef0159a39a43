//! Sealing of credentials at rest with AES-256-GCM.
//!
//! A sealed value is stored in JSON as `{"$sealed": "v1:<base64(nonce ‖ ciphertext)>"}`.
//! The associated data binds it to its tenant, row and field, so a sealed password
//! copied into another row or field does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use serde_json::{json, Value};

pub const SEALED_KEY: &str = "$sealed";
const VERSION_PREFIX: &str = "v1:";

#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value does not open with the configured RADIOLOGY_SECRET_KEY (wrong key, or the value was moved)")]
    WrongKey,
}

impl SecretBox {
    pub fn new(key: &[u8; 32]) -> Self {
        Self { cipher: Aes256Gcm::new(key.into()) }
    }

    /// Seals `plaintext`, returning the JSON object stored in place of it.
    pub fn seal(&self, plaintext: &str, aad: &str) -> Value {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: aad.as_bytes() })
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        json!({ SEALED_KEY: format!("{VERSION_PREFIX}{}", B64.encode(blob)) })
    }

    /// Opens a value produced by [`SecretBox::seal`].
    pub fn open(&self, sealed: &Value, aad: &str) -> Result<String, OpenError> {
        let text = sealed.get(SEALED_KEY).and_then(Value::as_str).ok_or(OpenError::Malformed)?;
        let encoded = text.strip_prefix(VERSION_PREFIX).ok_or(OpenError::Malformed)?;
        let blob = B64.decode(encoded).map_err(|_| OpenError::Malformed)?;
        if blob.len() < 12 + 16 {
            return Err(OpenError::Malformed);
        }
        let (nonce, ciphertext) = blob.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: aad.as_bytes() })
            .map_err(|_| OpenError::WrongKey)?;
        String::from_utf8(plain).map_err(|_| OpenError::Malformed)
    }
}

pub fn is_sealed(value: &Value) -> bool {
    value.as_object().is_some_and(|o| o.len() == 1 && o.contains_key(SEALED_KEY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_hides_plaintext() {
        let sb = SecretBox::new(&[1u8; 32]);
        let sealed = sb.seal("correct horse", "t:e:password");
        assert!(is_sealed(&sealed));
        assert!(!sealed.to_string().contains("correct horse"));
        assert_eq!(sb.open(&sealed, "t:e:password").unwrap(), "correct horse");
    }

    #[test]
    fn sealed_value_is_bound_to_its_context_and_key() {
        let sb = SecretBox::new(&[1u8; 32]);
        let sealed = sb.seal("pw", "tenant-a:e1:password");
        assert!(matches!(sb.open(&sealed, "tenant-b:e1:password"), Err(OpenError::WrongKey)));
        let other = SecretBox::new(&[2u8; 32]);
        assert!(matches!(other.open(&sealed, "tenant-a:e1:password"), Err(OpenError::WrongKey)));
        assert!(matches!(sb.open(&json!({"$sealed": "nope"}), "x"), Err(OpenError::Malformed)));
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let sb = SecretBox::new(&[1u8; 32]);
        assert_ne!(sb.seal("pw", "a"), sb.seal("pw", "a"));
    }
}
