//! HL7 v2 over MLLP with the RIS.
//!
//! - Protocol: framing ([`mllp`]), messages with their separators, escapes and
//!   character sets ([`message`]), acknowledgements ([`ack`]).
//! - [`connectors`]: inbound senders (MSH-3/MSH-4 → tenant) and outbound destinations.
//! - [`listener`]: the MLLP server inside `radiology serve`.
//! - [`inbound`]: parse, route, decide, store durably (group commit), then ACK;
//!   duplicates answered with the stored ACK.
//! - [`outbound`]: the outbox worker (ORM^O01 SC on `study_available`, ORU^R01 on
//!   `report_final`), ordered per destination, retried, ACKs matched by MSA-2.
//! - [`roundtrip`]: the ORM → study → ORU chain check before the parallel run.
//! - [`routes`]: `/v1/radiology/hl7-connectors` and `/v1/radiology/hl7-messages`.

pub mod ack;
pub mod connectors;
pub mod inbound;
pub mod listener;
pub mod message;
pub mod mllp;
pub mod outbound;
pub mod roundtrip;
pub mod routes;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::FixedOffset;
use tokio::sync::{mpsc, watch, RwLock};

use crate::config::Config;
use crate::db::Db;
use crate::http::metrics::Metrics;
use crate::orders::OrderStore;
use crate::reports::ReportStore;
use crate::studies::StudyStore;
use connectors::ConnectorRow;
use inbound::Job;
use store::Hl7Store;

/// Completes once `stop` says true.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[derive(Debug, Clone)]
pub struct Hl7Settings {
    pub max_message_bytes: usize,
    pub idle_timeout: std::time::Duration,
    pub batch_max: usize,
    /// Writers storing messages at once: each takes what is queued when it is free (a
    /// control id two writers store at once meets the unique index, and the second
    /// is answered as a duplicate).
    pub writers: usize,
    pub default_offset: FixedOffset,
    pub outbound_enabled: bool,
    pub outbound_poll: std::time::Duration,
    pub outbound_lease: chrono::Duration,
}

impl Hl7Settings {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            max_message_bytes: config.mllp_max_message_bytes.max(1024) as usize,
            idle_timeout: std::time::Duration::from_secs(config.mllp_idle_timeout_seconds.max(1) as u64),
            batch_max: config.mllp_batch_max.clamp(1, 1000) as usize,
            writers: config.mllp_writers.clamp(1, 64) as usize,
            default_offset: inbound::parse_offset(&config.hl7_default_utc_offset)?,
            outbound_enabled: config.hl7_outbound_enabled,
            outbound_poll: std::time::Duration::from_millis(config.hl7_outbound_poll_ms.max(10) as u64),
            outbound_lease: chrono::Duration::seconds(config.hl7_outbound_lease_seconds.max(2) as i64),
        })
    }
}

/// The listener's routing: (loaded at, (sending application, sending facility) → inbound connector).
type Routes = (Option<std::time::Instant>, HashMap<(String, String), ConnectorRow>);

/// The HL7 use cases shared by the MLLP listener, the REST routes and the workers.
pub struct Hl7Service {
    pub store: Arc<dyn Hl7Store>,
    pub orders: Arc<dyn OrderStore>,
    pub reports: Arc<dyn ReportStore>,
    pub studies: Arc<dyn StudyStore>,
    pub db: Db,
    pub settings: Hl7Settings,
    pub metrics: Arc<Metrics>,
    routes: RwLock<Routes>,
    /// Messages waiting for a writer (one queue: a free writer takes what is there).
    queue: mpsc::Sender<Job>,
    queue_rx: std::sync::Mutex<Option<mpsc::Receiver<Job>>>,
    writer_count: usize,
    stop: watch::Sender<bool>,
    /// Who holds outbound leases: this process.
    owner: String,
}

impl Hl7Service {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Hl7Store>,
        orders: Arc<dyn OrderStore>,
        reports: Arc<dyn ReportStore>,
        studies: Arc<dyn StudyStore>,
        db: Db,
        settings: Hl7Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        // SQLite has one writer at a time anyway.
        let writer_count = if matches!(db, Db::Sqlite(_)) { 1 } else { settings.writers.max(1) };
        let (queue, queue_rx) = mpsc::channel(4096);
        let (stop, _) = watch::channel(false);
        Self {
            store,
            orders,
            reports,
            studies,
            db,
            settings,
            metrics,
            routes: RwLock::new((None, HashMap::new())),
            queue,
            queue_rx: std::sync::Mutex::new(Some(queue_rx)),
            writer_count,
            stop,
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        }
    }

    /// Starts the writer and (when enabled) the outbox worker; `listener` serves MLLP.
    pub fn spawn(self: &Arc<Self>, listener: Option<tokio::net::TcpListener>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(rx) = self.queue_rx.lock().expect("lock").take() {
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for _ in 0..self.writer_count {
                tasks.push(self.spawn_writer(rx.clone()));
            }
        }
        if let Some(l) = listener {
            tasks.push(tokio::spawn(listener::serve(l, self.clone(), self.stop.subscribe())));
        }
        if self.settings.outbound_enabled {
            tasks.push(tokio::spawn(outbound::run(self.clone(), self.stop.subscribe())));
        }
        tasks
    }

    /// Stops accepting connections and delivering; in-flight messages finish.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }
}
