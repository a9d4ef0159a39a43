//! Radiology Service: PACS DICOMweb integration, the imaging study index, and the
//! tooling to carry a tenant through its migration. See README.md.
#![forbid(unsafe_code)]
#![recursion_limit = "256"]

pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
pub mod error;
pub mod http;
pub mod interop;
pub mod keys;
pub mod orders;
pub mod pacs;
pub mod pagination;
pub mod reports;
pub mod studies;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::auth::{HasTokenKeys, TokenKeys};
use crate::config::Config;
use crate::crypto::SecretBox;
use crate::db::Db;
use crate::http::metrics::Metrics;
use crate::pacs::{PacsService, SqlPacsStore};
use crate::studies::sync::store::SqlSyncStore;
use crate::studies::sync::{SyncService, SyncSettings};
use crate::studies::{SqlStudyStore, StudyStore};
use crate::reports::{ReportStore, SqlReportStore};
use crate::orders::{OrderStore, SqlOrderStore};
use crate::interop::import::store::SqlImportStore;
use crate::interop::import::{ImportService, ImportSettings};
use crate::interop::hl7::store::SqlHl7Store;
use crate::interop::hl7::{Hl7Service, Hl7Settings};

/// Everything a request handler may need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub token_keys: Arc<TokenKeys>,
    pub pacs: Arc<PacsService>,
    pub studies: Arc<dyn StudyStore>,
    pub reports: Arc<dyn ReportStore>,
    pub orders: Arc<dyn OrderStore>,
    pub sync: Arc<SyncService>,
    pub imports: Arc<ImportService>,
    pub hl7: Arc<Hl7Service>,
    pub metrics: Arc<Metrics>,
}

impl HasTokenKeys for AppState {
    fn token_keys(&self) -> &Arc<TokenKeys> {
        &self.token_keys
    }
}

/// A built application: database migrated, secrets sealed, listener bound.
pub struct Application {
    listener: TcpListener,
    mllp: Option<TcpListener>,
    state: AppState,
}

impl AppState {
    /// Connects to the database, applies migrations, seals plain-text credentials and
    /// wires the contexts together.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let db = Db::connect(&config.database_url, config.db_max_connections).await?;
        db.migrate().await?;
        let secrets = SecretBox::new(&keys::secret_key(config)?);
        let token_keys = Arc::new(TokenKeys::new(&keys::jwt_key(config)?));
        let http = reqwest::Client::builder()
            .user_agent(concat!("radiology-service/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        let pacs_store = Arc::new(SqlPacsStore::new(db.clone()));
        pacs::secrets::seal_plaintext_everywhere(pacs_store.as_ref(), &secrets).await?;
        let pacs = Arc::new(PacsService::new(pacs_store, secrets, http.clone()));
        let studies: Arc<dyn StudyStore> = Arc::new(SqlStudyStore::new(db.clone()));
        let reports: Arc<dyn ReportStore> = Arc::new(SqlReportStore::new(db.clone()));
        let orders: Arc<dyn OrderStore> = Arc::new(SqlOrderStore::new(db.clone()));
        let metrics: Arc<Metrics> = Arc::default();
        // Import inputs: no redirects (a redirect could leave the allowed hosts), and a
        // stalled source fails instead of holding the job.
        let import_http = reqwest::Client::builder()
            .user_agent(concat!("radiology-service/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(15))
            .read_timeout(std::time::Duration::from_secs(120))
            .build()
            .context("building the import HTTP client")?;
        let imports = Arc::new(ImportService::new(
            Arc::new(SqlImportStore::new(db.clone())),
            studies.clone(),
            reports.clone(),
            import_http,
            ImportSettings::from_config(config),
            metrics.clone(),
        ));
        let sync = Arc::new(SyncService::new(
            pacs.clone(),
            studies.clone(),
            Arc::new(SqlSyncStore::new(db.clone())),
            SyncSettings::from_config(config)?,
            metrics.clone(),
        ));
        let hl7 = Arc::new(Hl7Service::new(
            Arc::new(SqlHl7Store::new(db.clone())),
            orders.clone(),
            reports.clone(),
            studies.clone(),
            db.clone(),
            Hl7Settings::from_config(config)?,
            metrics.clone(),
        ));
        Ok(AppState { hl7, pacs, studies, reports, orders, sync, imports, db, token_keys, metrics })
    }
}

impl Application {
    /// Builds the state and binds the HTTP listener (port 0 picks a free port, as tests do).
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let state = AppState::build(config).await?;
        let listener = TcpListener::bind(&config.http_addr)
            .await
            .with_context(|| format!("binding the HTTP listener on {}", config.http_addr))?;
        let mllp = match config.mllp_addr.trim() {
            "" => None,
            addr => Some(TcpListener::bind(addr).await.with_context(|| format!("binding the MLLP listener on {addr}"))?),
        };
        Ok(Self { listener, mllp, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Where the MLLP listener accepts HL7 (none when `mllp_addr` is empty).
    pub fn mllp_addr(&self) -> Option<SocketAddr> {
        self.mllp.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests and closes the pool.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let db = self.state.db.clone();
        let sync = self.state.sync.clone();
        let imports = self.state.imports.clone();
        let hl7 = self.state.hl7.clone();
        let mllp_addr = self.mllp_addr();
        let mut workers = if sync.settings().enabled { sync.spawn_workers() } else { Vec::new() };
        let sync_workers = workers.len();
        workers.extend(imports.spawn_workers());
        let http_addr = self.local_addr();
        workers.extend(hl7.spawn(self.mllp));
        tracing::info!(addr = %http_addr, mllp = ?mllp_addr, database = db.backend(), sync_workers, import_workers = imports.settings().workers, "radiology service listening");
        let served = http::serve(self.listener, self.state, shutdown).await;
        // Running syncs and imports checkpoint and release their leases at the next
        // window or batch.
        sync.stop();
        imports.stop();
        hl7.stop();
        for worker in workers {
            if tokio::time::timeout(std::time::Duration::from_secs(30), worker).await.is_err() {
                tracing::warn!("a background worker did not stop within 30 s");
            }
        }
        db.close().await;
        served?;
        tracing::info!("radiology service stopped");
        Ok(())
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received; draining");
}
