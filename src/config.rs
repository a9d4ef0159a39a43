//! Service configuration: defaults, then an optional TOML file (`--config`), then
//! `RADIOLOGY_*` environment variables. Secrets may also come from `*_file` paths.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// A string that never shows itself in `Debug` output or logs.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address of the REST/FHIR HTTP listener.
    pub http_addr: String,
    /// `sqlite://path` (embedded default) or `postgres://…`.
    pub database_url: String,
    /// Folder for generated keys (and the default SQLite file).
    pub data_dir: PathBuf,
    /// HS256 key for bearer tokens; generated into `data_dir` when absent.
    pub jwt_secret: Option<SecretString>,
    pub jwt_secret_file: Option<PathBuf>,
    /// 32-byte AES-256-GCM key (base64 or hex) sealing PACS credentials at rest.
    pub secret_key: Option<SecretString>,
    pub secret_key_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Maximum connections in the database pool.
    pub db_max_connections: u32,
    /// QIDO-RS study sync (see `studies::sync`).
    pub sync_enabled: bool,
    /// Seconds between incremental polls of an endpoint.
    pub sync_interval_seconds: u32,
    /// How long a process holds an endpoint's sync lease without renewing it.
    pub sync_lease_seconds: u32,
    /// QIDO `limit` of each page.
    pub sync_page_size: u32,
    /// A window returning this many studies is "full" (the PACS may cap results) and is split.
    pub sync_max_results: u32,
    /// Endpoints synced at once by this process.
    pub sync_concurrency: u32,
    /// Oldest StudyDate the first backfill reaches (YYYY-MM-DD).
    pub sync_backfill_since: String,
    /// Days re-read before the watermark on each incremental poll.
    pub sync_overlap_days: u32,
    /// UTC offset (+HH:MM) assumed for study times without TimezoneOffsetFromUTC.
    pub dicom_default_utc_offset: String,
    /// Hosts `$import` may fetch http(s) inputs from (comma list of `host` or
    /// `host:port`); empty = none.
    pub import_allowed_hosts: String,
    /// Folder `$import` may read `file://` inputs from; unset = none.
    pub import_dir: Option<PathBuf>,
    /// Import jobs this process runs at once (one per tenant at a time in any case).
    pub import_workers: u32,
    /// Resources per stored batch (one transaction, one checkpoint).
    pub import_batch_size: u32,
    /// How long a process holds an import job's lease without renewing it.
    pub import_lease_seconds: u32,
    /// Where the MLLP listener accepts HL7 v2 connections; empty = no listener.
    pub mllp_addr: String,
    /// Largest HL7 message taken (bytes); a bigger frame is answered AR and skipped.
    pub mllp_max_message_bytes: u32,
    /// A connection silent this long is closed.
    pub mllp_idle_timeout_seconds: u32,
    /// Most inbound messages stored in one transaction (group commit).
    pub mllp_batch_max: u32,
    /// Transactions storing inbound messages at once (PostgreSQL; SQLite uses one). One
    /// writer makes the largest groups: the fastest where the database has few cores.
    pub mllp_writers: u32,
    /// UTC offset (+HH:MM) assumed for HL7 timestamps without one.
    pub hl7_default_utc_offset: String,
    /// Whether this process delivers the outbound outbox.
    pub hl7_outbound_enabled: bool,
    /// Milliseconds between outbox polls when there is nothing to deliver.
    pub hl7_outbound_poll_ms: u32,
    /// How long a process holds an outbound destination without renewing it.
    pub hl7_outbound_lease_seconds: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8080".into(),
            database_url: "sqlite://./data/radiology.db".into(),
            data_dir: PathBuf::from("./data"),
            jwt_secret: None,
            jwt_secret_file: None,
            secret_key: None,
            secret_key_file: None,
            log_format: LogFormat::Text,
            db_max_connections: 10,
            sync_enabled: true,
            sync_interval_seconds: 60,
            sync_lease_seconds: 60,
            sync_page_size: 100,
            sync_max_results: 1000,
            sync_concurrency: 2,
            sync_backfill_since: "1900-01-01".into(),
            sync_overlap_days: 1,
            dicom_default_utc_offset: "+00:00".into(),
            import_allowed_hosts: String::new(),
            import_dir: None,
            import_workers: 1,
            import_batch_size: 1000,
            import_lease_seconds: 60,
            mllp_addr: "127.0.0.1:2575".into(),
            mllp_max_message_bytes: 4 * 1024 * 1024,
            mllp_idle_timeout_seconds: 600,
            mllp_batch_max: 64,
            mllp_writers: 1,
            hl7_default_utc_offset: "+00:00".into(),
            hl7_outbound_enabled: true,
            hl7_outbound_poll_ms: 500,
            hl7_outbound_lease_seconds: 30,
        }
    }
}

impl Config {
    /// Defaults → TOML file (when given) → `RADIOLOGY_*` environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            anyhow::ensure!(path.exists(), "config file {} does not exist", path.display());
            figment = figment.merge(Toml::file(path));
        }
        // `RADIOLOGY_TEST_*` variables belong to the test harness, not the service.
        figment = figment.merge(Env::prefixed("RADIOLOGY_").filter(|k| !k.as_str().starts_with("test_")));
        let config: Config = figment.extract().context("reading configuration")?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_string_is_redacted_in_debug() {
        let config = Config { jwt_secret: Some(SecretString::new("hunter2")), ..Config::default() };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn toml_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("radiology.toml", "http_addr = \"127.0.0.1:9999\"\ndb_max_connections = 3\n")?;
            jail.set_env("RADIOLOGY_DB_MAX_CONNECTIONS", "7");
            let config = Config::load(Some(Path::new("radiology.toml"))).expect("config");
            assert_eq!(config.http_addr, "127.0.0.1:9999");
            assert_eq!(config.db_max_connections, 7);
            assert_eq!(config.database_url, "sqlite://./data/radiology.db");
            Ok(())
        });
    }
}
