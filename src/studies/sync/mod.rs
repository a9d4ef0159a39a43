//! QIDO-RS study sync: pulls every active endpoint's studies into the study index.
//!
//! A run walks StudyDate windows backwards from today to a floor: the configured
//! backfill start on the first run, the watermark minus an overlap on incremental
//! polls. A window returning `sync_max_results` studies may have been cut by the
//! PACS, so it is narrowed (halved; a single full day is split by StudyTime); sparse
//! windows widen. Each window is checkpointed once stored, so a restart — or another
//! process after the lease expires — resumes where the run stopped. Every study is
//! upserted by (tenant, Study Instance UID): nothing is inserted twice.

pub mod routes;
pub mod store;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Days, FixedOffset, NaiveDate, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use self::store::{RunEnd, SyncStateRow, SyncStore};
use super::mapping::map_study;
use super::store::{StudyStore, StudyUpsert};
use crate::auth::TenantId;
use crate::config::Config;
use crate::http::metrics::Metrics;
use crate::pacs::connectivity::STUDY_INCLUDE_FIELDS;
use crate::pacs::dicom_json::{tags, DicomObject};
use crate::pacs::dicomweb::DicomWebClient;
use crate::pacs::{EndpointRow, PacsService};

/// Most skipped-item reasons kept in a run report.
const MAX_REPORTED_ERRORS: usize = 20;
const MAX_SPAN_DAYS: i64 = 3650;
const INITIAL_SPAN_DAYS: i64 = 7;
/// How often the background workers look for endpoints without a sync state.
const ENSURE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub enabled: bool,
    pub interval: Duration,
    pub lease: Duration,
    pub page_size: usize,
    pub max_results: usize,
    pub concurrency: usize,
    pub backfill_since: NaiveDate,
    pub overlap_days: u64,
    pub default_offset: FixedOffset,
    /// Consecutive failed runs after which an endpoint is `degraded`.
    pub degraded_after: i32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl SyncSettings {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let backfill_since = NaiveDate::parse_from_str(&config.sync_backfill_since, "%Y-%m-%d")
            .map_err(|e| anyhow::anyhow!("sync_backfill_since {:?}: {e}", config.sync_backfill_since))?;
        let default_offset = parse_utc_offset(&config.dicom_default_utc_offset)
            .ok_or_else(|| anyhow::anyhow!("dicom_default_utc_offset {:?} must look like +01:00", config.dicom_default_utc_offset))?;
        anyhow::ensure!(config.sync_page_size > 0 && config.sync_max_results > 0, "sync page size and max results must be positive");
        Ok(Self {
            enabled: config.sync_enabled,
            interval: Duration::from_secs(config.sync_interval_seconds.max(1).into()),
            lease: Duration::from_secs(config.sync_lease_seconds.max(1).into()),
            page_size: config.sync_page_size as usize,
            max_results: config.sync_max_results as usize,
            concurrency: config.sync_concurrency.max(1) as usize,
            backfill_since,
            overlap_days: config.sync_overlap_days.into(),
            default_offset,
            degraded_after: 3,
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(900),
        })
    }
}

fn parse_utc_offset(text: &str) -> Option<FixedOffset> {
    super::mapping::parse_offset(&text.replace(':', ""))
}

/// Where an interrupted run resumes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub run_started_at: DateTime<Utc>,
    pub phase: Phase,
    /// Oldest StudyDate this run reaches.
    pub floor: NaiveDate,
    /// StudyDate dated after today (clock skew, scheduled studies) done yet?
    pub future_done: bool,
    /// Newest StudyDate not yet synced (inclusive); `None` = today.
    pub cursor: Option<NaiveDate>,
    pub span_days: i64,
    pub counts: Counts,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Backfill,
    Incremental,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    pub seen: i64,
    pub failed: i64,
    pub windows: i64,
    pub errors: Vec<String>,
}

/// One fetched window, not yet stored.
struct Fetched {
    items: Vec<DicomObject>,
    found: usize,
    full: bool,
    warnings: Vec<String>,
}

impl Counts {
    fn merge(&mut self, other: Counts) {
        self.seen += other.seen;
        self.windows += other.windows;
        self.failed += other.failed;
        let room = MAX_REPORTED_ERRORS.saturating_sub(self.errors.len());
        self.errors.extend(other.errors.into_iter().take(room));
    }

    fn fail(&mut self, reason: String) {
        self.failed += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(reason);
        }
    }
}

/// A StudyDate (and possibly StudyTime) range of a QIDO query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// StudyDate after `0`.
    After(NaiveDate),
    Dates(NaiveDate, NaiveDate),
    /// One day, StudyTime from..to in seconds after midnight.
    Times(NaiveDate, u32, u32),
}

impl Window {
    fn params(&self) -> Vec<(&'static str, String)> {
        let da = |d: &NaiveDate| d.format("%Y%m%d").to_string();
        let tm = |s: u32| format!("{:02}{:02}{:02}", s / 3600, s / 60 % 60, s % 60);
        match self {
            Window::After(d) => vec![("StudyDate", format!("{}-", da(&(*d + Days::new(1)))))],
            Window::Dates(a, b) if a == b => vec![("StudyDate", da(a))],
            Window::Dates(a, b) => vec![("StudyDate", format!("{}-{}", da(a), da(b)))],
            Window::Times(d, a, b) => vec![("StudyDate", da(d)), ("StudyTime", format!("{}-{}", tm(*a), tm(*b)))],
        }
    }
}

impl Progress {
    fn new(now: DateTime<Utc>, watermark: Option<DateTime<Utc>>, settings: &SyncSettings) -> Self {
        let (phase, floor) = match watermark {
            Some(w) => (Phase::Incremental, w.date_naive() - Days::new(settings.overlap_days)),
            None => (Phase::Backfill, settings.backfill_since),
        };
        Progress { run_started_at: now, phase, floor, future_done: false, cursor: None, span_days: INITIAL_SPAN_DAYS, counts: Counts::default() }
    }

    /// The next window to query, or `None` when the run is complete.
    fn next_window(&self, today: NaiveDate) -> Option<Window> {
        if !self.future_done {
            return Some(Window::After(today));
        }
        let to = self.cursor.unwrap_or(today);
        if to < self.floor {
            return None;
        }
        let from = (to - Days::new((self.span_days - 1).max(0) as u64)).max(self.floor);
        Some(Window::Dates(from, to))
    }

    /// Moves past a stored window; a full multi-day window is retried narrower instead.
    fn advance(&mut self, window: Window, found: usize, full: bool, max_results: usize) {
        match window {
            Window::After(_) => self.future_done = true,
            Window::Dates(from, to) if full && from < to => {
                self.span_days = ((to - from).num_days() + 1) / 2;
            }
            Window::Dates(from, to) => {
                self.cursor = from.pred_opt();
                if self.cursor.is_none() {
                    self.floor = NaiveDate::MAX;
                }
                // Size the next window from the density just seen, aiming at a quarter of
                // the cap (room for uneven days), growing at most 16× per step.
                let span = (to - from).num_days() + 1;
                let target = (max_results / 4).max(1) as i64;
                let next = span.saturating_mul(target) / (found as i64).max(1);
                self.span_days = next.clamp((span / 2).max(1), span.saturating_mul(16)).min(MAX_SPAN_DAYS);
            }
            Window::Times(..) => unreachable!("time windows are resolved inside one day"),
        }
        self.counts.windows += 1;
    }
}

/// The summary of one finished run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    pub endpoint_id: Uuid,
    pub phase: Phase,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub ok: bool,
    pub seen: i64,
    pub created: i64,
    pub updated: i64,
    pub failed: i64,
    pub windows: i64,
    pub errors: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("{0}")]
    Failed(String),
    #[error("the sync lease was taken over by another process")]
    LeaseLost,
    #[error("stopping")]
    Stopping,
}

pub struct SyncService {
    metrics: Arc<Metrics>,
    pacs: Arc<PacsService>,
    studies: Arc<dyn StudyStore>,
    store: Arc<dyn SyncStore>,
    settings: SyncSettings,
    /// This process's lease owner name.
    owner: String,
    stopping: AtomicBool,
    /// When the endpoint sweep last ran (the workers throttle it).
    last_ensure: std::sync::Mutex<Option<std::time::Instant>>,
}

impl SyncService {
    pub fn new(
        pacs: Arc<PacsService>,
        studies: Arc<dyn StudyStore>,
        store: Arc<dyn SyncStore>,
        settings: SyncSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let owner = format!("{}:{}", std::process::id(), Uuid::new_v4().simple());
        Self { metrics, pacs, studies, store, settings, owner, stopping: AtomicBool::new(false), last_ensure: Default::default() }
    }

    pub fn settings(&self) -> &SyncSettings {
        &self.settings
    }

    pub fn store(&self) -> &Arc<dyn SyncStore> {
        &self.store
    }

    fn lease_until(&self) -> DateTime<Utc> {
        crate::db::now() + chrono::Duration::from_std(self.settings.lease).expect("lease fits")
    }

    /// Gives every active endpoint (newly registered or migrated by hand) a state row.
    async fn ensure_states(&self) -> anyhow::Result<()> {
        *self.last_ensure.lock().expect("not poisoned") = Some(std::time::Instant::now());
        self.store.ensure_states(crate::db::now(), self.settings.interval.as_secs() as i32).await?;
        Ok(())
    }

    /// Claims one due endpoint and syncs it. `None` when nothing is due.
    pub async fn run_next(&self) -> anyhow::Result<Option<RunReport>> {
        let now = crate::db::now();
        let Some(job) = self.store.claim_due(&self.owner, now, self.lease_until()).await? else { return Ok(None) };
        Ok(Some(self.run_job(job).await?))
    }

    /// Runs due jobs until none is left (tests and the CLI drive sync this way).
    pub async fn run_until_idle(&self) -> anyhow::Result<Vec<RunReport>> {
        self.ensure_states().await?;
        let mut reports = Vec::new();
        while let Some(report) = self.run_next().await? {
            reports.push(report);
        }
        Ok(reports)
    }

    /// Walks an endpoint's studies from today back to `since` with the sync's windows
    /// (so a PACS that caps its results is still read whole), handing each window's
    /// mapped studies to `sink` and storing nothing: `radiology export-studies`.
    /// Returns the studies handed over and the warnings (unmappable items, capped windows).
    pub async fn walk_studies(
        &self,
        tenant: TenantId,
        endpoint_id: Uuid,
        since: NaiveDate,
        sink: &mut (dyn FnMut(Vec<StudyUpsert>) -> anyhow::Result<()> + Send),
    ) -> anyhow::Result<(usize, Vec<String>)> {
        let endpoint = self.pacs.get(tenant, endpoint_id).await?;
        let client = self.pacs.client_for(&endpoint)?;
        let wado = endpoint.wado_url.as_deref().unwrap_or(&endpoint.qido_url).to_string();
        let today = Utc::now().date_naive();
        let mut progress = Progress::new(Utc::now(), None, &self.settings);
        progress.floor = since;
        let (mut longest_page, mut total, mut warnings) = (0, 0, Vec::new());
        while let Some(window) = progress.next_window(today) {
            let fetched = self.fetch_window(&client, window, &mut longest_page).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            warnings.extend(fetched.warnings);
            progress.advance(window, fetched.found, fetched.full, self.settings.max_results);
            let mut studies = Vec::with_capacity(fetched.items.len());
            for item in &fetched.items {
                match map_study(item, Some(&wado), self.settings.default_offset) {
                    Ok(study) => studies.push(study),
                    Err(e) => warnings.push(format!("study {}: {e}", item.string(tags::STUDY_INSTANCE_UID).unwrap_or_else(|| "?".into()))),
                }
            }
            total += studies.len();
            if !studies.is_empty() {
                sink(studies)?;
            }
        }
        Ok((total, warnings))
    }

    /// The background worker: `concurrency` loops claiming due endpoints until `stop`.
    pub fn spawn_workers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.settings.concurrency)
            .map(|_| {
                let service = self.clone();
                tokio::spawn(async move {
                    while !service.stopping.load(Ordering::Relaxed) {
                        // The endpoint sweep is cheap but not free: at most every few seconds.
                        let stale = service.last_ensure.lock().expect("not poisoned").is_none_or(|t| t.elapsed() >= ENSURE_EVERY);
                        if stale {
                            if let Err(e) = service.ensure_states().await {
                                tracing::error!(error.cause_chain = ?e, "sync worker: endpoint sweep");
                            }
                        }
                        match service.run_next().await {
                            Ok(Some(_)) => continue,
                            Ok(None) => {}
                            Err(e) => tracing::error!(error.cause_chain = ?e, "sync worker"),
                        }
                        tokio::time::sleep(Duration::from_millis(1000)).await;
                    }
                })
            })
            .collect()
    }

    /// Asks running jobs to checkpoint and release their leases at the next window.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    async fn run_job(&self, job: SyncStateRow) -> anyhow::Result<RunReport> {
        let tenant = TenantId(job.tenant_id);
        let now = crate::db::now();
        let mut progress = job
            .progress
            .as_ref()
            .and_then(|p| serde_json::from_value::<Progress>(p.0.clone()).ok())
            .unwrap_or_else(|| Progress::new(now, job.watermark, &self.settings));
        tracing::info!(tenant_id = %tenant, endpoint_id = %job.endpoint_id, phase = ?progress.phase, resumed = job.progress.is_some(), "sync run");
        let outcome = tokio::select! {
            outcome = self.run_windows(tenant, job.endpoint_id, &mut progress) => outcome,
            lost = self.heartbeat(tenant, job.endpoint_id) => Err(lost),
        };
        let (created, updated) = self.studies.count_changes_since(tenant, job.endpoint_id, progress.run_started_at).await?;
        let finished_at = crate::db::now();
        let report = RunReport {
            endpoint_id: job.endpoint_id,
            phase: progress.phase,
            started_at: progress.run_started_at,
            finished_at,
            ok: outcome.is_ok(),
            seen: progress.counts.seen,
            created,
            updated,
            failed: progress.counts.failed,
            windows: progress.counts.windows,
            errors: progress.counts.errors.clone(),
        };
        let interval = chrono::Duration::seconds(job.interval_seconds.max(1).into());
        let end = match &outcome {
            Ok(()) => RunEnd {
                progress: None,
                watermark: Some(progress.run_started_at),
                status: "idle",
                consecutive_failures: 0,
                last_error: None,
                last_run: json!(report),
                next_run_at: finished_at + interval,
                add_seen: report.seen,
                add_created: created,
                add_updated: updated,
                add_failed: report.failed,
            },
            Err(RunError::LeaseLost) => {
                tracing::warn!(endpoint_id = %job.endpoint_id, "sync lease lost; another process continues the run");
                return Ok(report);
            }
            Err(RunError::Stopping) => RunEnd {
                progress: Some(json!(progress)),
                watermark: None,
                status: if job.consecutive_failures >= self.settings.degraded_after { "degraded" } else { "idle" },
                consecutive_failures: job.consecutive_failures,
                last_error: job.last_error.clone(),
                last_run: job.last_run.as_ref().map(|j| j.0.clone()).unwrap_or(Value::Null),
                next_run_at: finished_at,
                add_seen: 0,
                add_created: 0,
                add_updated: 0,
                add_failed: 0,
            },
            Err(RunError::Failed(reason)) => {
                let failures = job.consecutive_failures + 1;
                let degraded = failures >= self.settings.degraded_after;
                tracing::warn!(tenant_id = %tenant, endpoint_id = %job.endpoint_id, failures, degraded, reason = %reason, "sync run failed");
                RunEnd {
                    progress: Some(json!(progress)),
                    watermark: None,
                    status: if degraded { "degraded" } else { "idle" },
                    consecutive_failures: failures,
                    last_error: Some(reason.clone()),
                    last_run: json!(report),
                    next_run_at: finished_at + self.backoff(failures),
                    add_seen: 0,
                    add_created: 0,
                    add_updated: 0,
                    add_failed: 0,
                }
            }
        };
        if !matches!(outcome, Err(RunError::Stopping)) {
            self.metrics.observe_sync_run(report.ok, report.seen, created, updated, report.failed);
        }
        if !self.store.finish(tenant, job.endpoint_id, &self.owner, &end).await? {
            tracing::warn!(endpoint_id = %job.endpoint_id, "sync lease lost before the run could be recorded");
        }
        Ok(report)
    }

    /// Renews the lease every third of its length while a run goes on, so a window
    /// slower than the lease is never taken over. Completes only if the lease is lost.
    async fn heartbeat(&self, tenant: TenantId, endpoint_id: Uuid) -> RunError {
        loop {
            tokio::time::sleep(self.settings.lease / 3).await;
            match self.store.renew_lease(tenant, endpoint_id, &self.owner, self.lease_until()).await {
                Ok(true) => {}
                Ok(false) => return RunError::LeaseLost,
                Err(e) => tracing::warn!(endpoint_id = %endpoint_id, error = %e, "could not renew the sync lease"),
            }
        }
    }

    /// Exponential backoff with ±50 % jitter, so failing endpoints do not retry in step.
    fn backoff(&self, failures: i32) -> chrono::Duration {
        let base = self.settings.backoff_base.as_secs_f64() * 2f64.powi((failures - 1).clamp(0, 20));
        let capped = base.min(self.settings.backoff_max.as_secs_f64());
        let jittered = capped * rand::thread_rng().gen_range(0.5..1.5);
        chrono::Duration::milliseconds((jittered * 1000.0) as i64)
    }

    /// Walks the windows of a run. Storing window k overlaps fetching window k+1, and
    /// window k is checkpointed once stored. `progress` only ever holds what was
    /// checkpointed (the walk runs ahead on a copy), so a failed run resumes at the
    /// first window not yet stored.
    async fn run_windows(&self, tenant: TenantId, endpoint_id: Uuid, progress: &mut Progress) -> Result<(), RunError> {
        let endpoint = self.pacs.get(tenant, endpoint_id).await.map_err(|e| RunError::Failed(e.to_string()))?;
        let client = self.pacs.client_for(&endpoint).map_err(|e| RunError::Failed(e.to_string()))?;
        let today = Utc::now().date_naive();
        let mut longest_page = 0;
        let mut ahead = progress.clone();
        let mut pending: Option<Vec<DicomObject>> = None;
        loop {
            let next = if self.stopping.load(Ordering::Relaxed) { None } else { ahead.next_window(today) };
            let fetch = async {
                match next {
                    Some(window) => Some(self.fetch_window(&client, window, &mut longest_page).await),
                    None => None,
                }
            };
            let store = async {
                match pending.take() {
                    Some(items) => self.store_items(tenant, &endpoint, items, progress.phase == Phase::Incremental).await.map(Some),
                    None => Ok(None),
                }
            };
            let (fetched, stored) = tokio::join!(fetch, store);
            if let Some(counts) = stored? {
                ahead.counts.merge(counts);
                *progress = ahead.clone();
                self.checkpoint(tenant, endpoint_id, progress).await?;
            }
            let Some(window) = next else { break };
            let fetched = fetched.expect("a window was fetched")?;
            ahead.counts.merge(Counts { errors: fetched.warnings.clone(), failed: fetched.warnings.len() as i64, ..Counts::default() });
            ahead.advance(window, fetched.found, fetched.full, self.settings.max_results);
            if fetched.full {
                // Narrowed; nothing to store.
                *progress = ahead.clone();
                self.checkpoint(tenant, endpoint_id, progress).await?;
            } else {
                pending = Some(fetched.items);
            }
        }
        if self.stopping.load(Ordering::Relaxed) && progress.next_window(today).is_some() {
            return Err(RunError::Stopping);
        }
        Ok(())
    }

    async fn checkpoint(&self, tenant: TenantId, endpoint_id: Uuid, progress: &Progress) -> Result<(), RunError> {
        let kept = self
            .store
            .checkpoint(tenant, endpoint_id, &self.owner, &json!(progress), self.lease_until())
            .await
            .map_err(|e| RunError::Failed(format!("saving sync progress: {e}")))?;
        if kept {
            Ok(())
        } else {
            Err(RunError::LeaseLost)
        }
    }

    /// Queries one window. A multi-day window that comes back full is reported `full`
    /// (the caller narrows it, storing nothing); a full single day is split by StudyTime
    /// here until each part fits.
    async fn fetch_window(&self, client: &DicomWebClient, window: Window, longest_page: &mut usize) -> Result<Fetched, RunError> {
        let (items, full) = self.fetch(client, window, longest_page).await?;
        let found = items.len();
        let single_day = matches!(window, Window::Dates(a, b) if a == b);
        if full && matches!(window, Window::Dates(a, b) if a < b) {
            return Ok(Fetched { items: Vec::new(), found, full: true, warnings: Vec::new() });
        }
        if !(full && single_day) {
            let warnings = if full {
                vec![format!("{window:?} returned {found} studies, the most the PACS gives; some may be missing")]
            } else {
                Vec::new()
            };
            return Ok(Fetched { items, found, full: false, warnings });
        }
        let Window::Dates(day, _) = window else { unreachable!() };
        let mut all = Vec::new();
        let mut warnings = Vec::new();
        let mut stack = vec![(0u32, 86_399u32)];
        while let Some((a, b)) = stack.pop() {
            let part = Window::Times(day, a, b);
            let (items, full) = self.fetch(client, part, longest_page).await?;
            if full && b - a >= 60 {
                let mid = a + (b - a) / 2;
                stack.push((a, mid));
                stack.push((mid + 1, b));
                continue;
            }
            if full {
                warnings.push(format!("{part:?} still returns the most the PACS gives; some studies may be missing"));
            }
            all.extend(items);
        }
        Ok(Fetched { found: all.len(), items: all, full: false, warnings })
    }

    /// Every study of a window, paging until the end (or the result cap).
    ///
    /// The end is an empty page, or a page shorter than the longest page this PACS has
    /// already returned in the run (`longest_page`): a PACS that caps its page size
    /// below `limit` thus never looks finished early, and one that honours `limit`
    /// costs no extra empty request per window.
    async fn fetch(&self, client: &DicomWebClient, window: Window, longest_page: &mut usize) -> Result<(Vec<DicomObject>, bool), RunError> {
        let mut params = window.params();
        params.extend(STUDY_INCLUDE_FIELDS.iter().map(|t| ("includefield", t.to_string())));
        let mut items = Vec::new();
        let mut seen = HashSet::new();
        let mut offset = 0;
        loop {
            let page = client
                .search_studies_page(&params, self.settings.page_size, offset)
                .await
                .map_err(|e| RunError::Failed(e.to_string()))?;
            if page.items.is_empty() {
                break;
            }
            let received = page.items.len();
            let short = received < *longest_page;
            *longest_page = (*longest_page).max(received);
            let before = items.len();
            for item in page.items {
                if let Some(uid) = item.string(tags::STUDY_INSTANCE_UID) {
                    if !seen.insert(uid) {
                        continue;
                    }
                }
                items.push(item);
            }
            if items.len() >= self.settings.max_results {
                return Ok((items, true));
            }
            if items.len() == before || short {
                break; // the end, or a PACS that ignores offset (every page repeats)
            }
            offset += received;
        }
        Ok((items, false))
    }

    /// Maps and upserts a window's studies; returns what was seen and skipped.
    /// `announce`: new arrivals (an incremental poll), announced to subscribed HL7
    /// destinations; a backfill is history and is not.
    async fn store_items(&self, tenant: TenantId, endpoint: &EndpointRow, items: Vec<DicomObject>, announce: bool) -> Result<Counts, RunError> {
        let mut counts = Counts::default();
        let wado = endpoint.wado_url.as_deref().unwrap_or(&endpoint.qido_url).to_string();
        let mut upserts = Vec::with_capacity(items.len());
        for item in &items {
            counts.seen += 1;
            match map_study(item, Some(&wado), self.settings.default_offset) {
                Ok(upsert) => upserts.push(StudyUpsert { pacs_endpoint_id: Some(endpoint.id), ..upsert }),
                Err(e) => {
                    let uid = item.string(tags::STUDY_INSTANCE_UID).unwrap_or_else(|| "?".into());
                    counts.fail(format!("study {uid}: {e}"));
                }
            }
        }
        if upserts.is_empty() {
            return Ok(counts);
        }
        // A study that is (now) available is announced to subscribed HL7 destinations,
        // queued in the same transaction as the study.
        let queue_events = |outcomes: &[crate::db::sql::UpsertOutcome]| {
            let changed: Vec<uuid::Uuid> = outcomes
                .iter()
                .filter(|o| announce && !matches!(o, crate::db::sql::UpsertOutcome::Unchanged(_)))
                .map(|o| o.id())
                .collect();
            crate::interop::hl7::store::enqueue_event(tenant, "study_available", "ImagingStudy", "imaging_studies", &changed, true, "AND r.status = 'available'")
                .into_iter()
                .collect()
        };
        crate::db::error::retry_transient(|| {
            self.studies.upsert_batch(tenant, &upserts, Some(crate::db::sql::AfterWrite { followups: &queue_events, gate: None, insert_first: false }))
        })
        .await
        .map_err(|e| RunError::Failed(format!("storing studies: {e}")))?;
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SyncSettings {
        SyncSettings::from_config(&Config::default()).unwrap()
    }

    #[test]
    fn windows_walk_back_to_the_floor_narrowing_when_full_and_widening_when_sparse() {
        let s = settings();
        let today = NaiveDate::from_ymd_opt(2024, 3, 10).unwrap();
        let mut p = Progress::new(crate::db::now(), None, &s);
        p.floor = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
        assert_eq!(p.next_window(today), Some(Window::After(today)));
        p.advance(Window::After(today), 0, false, 1000);
        let w = p.next_window(today).unwrap();
        assert_eq!(w, Window::Dates(NaiveDate::from_ymd_opt(2024, 3, 4).unwrap(), today));
        p.advance(w, 1000, true, 1000);
        let narrower = p.next_window(today).unwrap();
        assert_eq!(narrower, Window::Dates(NaiveDate::from_ymd_opt(2024, 3, 8).unwrap(), today), "halved, same end");
        p.advance(narrower, 10, false, 1000);
        assert_eq!(p.cursor, NaiveDate::from_ymd_opt(2024, 3, 7));
        let mut windows = 0;
        while let Some(w) = p.next_window(today) {
            p.advance(w, 0, false, 1000);
            windows += 1;
            assert!(windows < 20, "sparse windows widen");
        }
        assert!(p.cursor.unwrap() < p.floor);
    }

    #[test]
    fn incremental_runs_start_an_overlap_before_the_watermark() {
        let s = settings();
        let watermark = "2024-03-10T08:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let p = Progress::new(crate::db::now(), Some(watermark), &s);
        assert_eq!(p.phase, Phase::Incremental);
        assert_eq!(p.floor, NaiveDate::from_ymd_opt(2024, 3, 9).unwrap());
    }

    #[test]
    fn window_query_parameters_are_dicom_ranges() {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).unwrap();
        assert_eq!(Window::After(d(2024, 3, 10)).params(), vec![("StudyDate", "20240311-".to_string())]);
        assert_eq!(Window::Dates(d(2024, 1, 1), d(2024, 1, 31)).params(), vec![("StudyDate", "20240101-20240131".to_string())]);
        assert_eq!(Window::Dates(d(2024, 1, 1), d(2024, 1, 1)).params(), vec![("StudyDate", "20240101".to_string())]);
        assert_eq!(
            Window::Times(d(2024, 1, 1), 0, 43_199).params(),
            vec![("StudyDate", "20240101".to_string()), ("StudyTime", "000000-115959".to_string())]
        );
    }
}
