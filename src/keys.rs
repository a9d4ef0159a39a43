//! Key material: the JWT signing key and the secret-sealing key. Each comes from
//! configuration (value, then `*_file`), else is generated once into the data folder
//! with owner-only permissions, so `serve` and `token` on one machine agree.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;

use crate::config::{Config, SecretString};

pub const JWT_KEY_FILE: &str = "jwt.key";
pub const SECRET_KEY_FILE: &str = "secret.key";

/// Raw bytes of the HS256 signing key.
pub fn jwt_key(config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(value) = configured(config.jwt_secret.as_ref(), config.jwt_secret_file.as_deref())? {
        if value.len() < 32 {
            tracing::warn!("RADIOLOGY_JWT_SECRET is shorter than 32 bytes; use a longer key in production");
        }
        return Ok(value.into_bytes());
    }
    let encoded = load_or_generate(&config.data_dir.join(JWT_KEY_FILE))?;
    B64.decode(encoded.trim()).context("decoding generated JWT key")
}

/// The 32-byte AES-256-GCM key.
pub fn secret_key(config: &Config) -> anyhow::Result<[u8; 32]> {
    let text = match configured(config.secret_key.as_ref(), config.secret_key_file.as_deref())? {
        Some(value) => value,
        None => load_or_generate(&config.data_dir.join(SECRET_KEY_FILE))?,
    };
    parse_aes_key(text.trim())
}

fn parse_aes_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16)).collect::<Result<Vec<_>, _>>()?
    } else {
        B64.decode(text).context("RADIOLOGY_SECRET_KEY must be 32 bytes as base64 or 64 hex digits")?
    };
    match <[u8; 32]>::try_from(bytes.as_slice()) {
        Ok(key) => Ok(key),
        Err(_) => bail!("RADIOLOGY_SECRET_KEY must decode to exactly 32 bytes (got {})", bytes.len()),
    }
}

fn configured(value: Option<&SecretString>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(v) = value.filter(|v| !v.expose().is_empty()) {
        return Ok(Some(v.expose().to_string()));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading key file {}", path.display()))?;
        return Ok(Some(text.trim().to_string()));
    }
    Ok(None)
}

/// Reads a base64 key file, creating it with 32 random bytes if it does not exist.
/// `create_new` makes concurrent first starts agree on one key.
fn load_or_generate(path: &Path) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return Ok(text);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating data folder {}", dir.display()))?;
    }
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    let encoded = B64.encode(key);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(encoded.as_bytes())?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "generated a new key");
            Ok(encoded)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read_to_string(path).with_context(|| format!("reading key file {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("creating key file {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_stable_across_calls() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
        assert_eq!(jwt_key(&config).unwrap(), jwt_key(&config).unwrap());
        assert_eq!(secret_key(&config).unwrap(), secret_key(&config).unwrap());
        assert_ne!(jwt_key(&config).unwrap(), secret_key(&config).unwrap().to_vec());
    }

    #[test]
    fn configured_aes_key_accepts_hex_and_base64_and_rejects_short_keys() {
        let hex = "00".repeat(32);
        assert_eq!(parse_aes_key(&hex).unwrap(), [0u8; 32]);
        assert_eq!(parse_aes_key(&B64.encode([7u8; 32])).unwrap(), [7u8; 32]);
        assert!(parse_aes_key(&B64.encode([7u8; 16])).is_err());
    }
}
