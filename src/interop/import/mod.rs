//! FHIR bulk `$import` of ImagingStudy and DiagnosticReport NDJSON, tagged `historical`.
//!
//! A job lists inputs (type + URL). Workers claim jobs with a row lease (one running
//! job per tenant, oldest first) and stream each input line by line: each line is
//! parsed, checked against its declared type and validated; good resources are
//! upserted by business identifier in batches, and each batch commits together with
//! its rejected lines (one OperationOutcome each) and the input's checkpoint (byte
//! offset, line, counts), fenced by the lease. A job killed at any point resumes after
//! its last stored batch, and its counts are exact. The same engine runs `radiology
//! import` (the job then belongs to the CLI process).

pub mod request;
pub mod routes;
pub mod source;
pub mod store;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use url::Url;
use uuid::Uuid;

use self::request::ImportRequest;
use self::source::{Line, LineReader, SourcePolicy};
use self::store::{checkpoint, rejected_lines, source_ids, ImportStore, InputRow, JobRow, NewJob, Progress};
use crate::auth::TenantId;
use crate::config::Config;
use crate::db::sql::{AfterWrite, CommitGate, UpsertOutcome};
use crate::db::StoreError;
use crate::interop::fhir::resource::{text_from_line, Issue};
use crate::reports::store::ReportUpsert;
use crate::reports::ReportStore;
use crate::studies::store::StudyUpsert;
use crate::studies::StudyStore;

/// Raw bytes per batch at most, whatever the line count (bounds memory for big lines).
const BATCH_BYTES: usize = 1024 * 1024;
/// Batches parsed ahead of the one being written.
const READ_AHEAD: usize = 1;

#[derive(Debug, Clone)]
pub struct ImportSettings {
    pub policy: SourcePolicy,
    pub batch_size: usize,
    pub lease: Duration,
    pub workers: usize,
    /// Attempts (claims) after which a job that keeps failing is marked failed.
    pub max_attempts: i32,
    pub retry_base: Duration,
}

impl ImportSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            policy: SourcePolicy::restricted(&config.import_allowed_hosts, config.import_dir.as_deref()),
            batch_size: config.import_batch_size.clamp(1, 10_000) as usize,
            lease: Duration::from_secs(config.import_lease_seconds.max(2).into()),
            workers: config.import_workers as usize,
            max_attempts: 5,
            retry_base: Duration::from_secs(5),
        }
    }
}

/// Called with an input's checkpoints after each stored batch (the CLI's progress line).
type OnProgress<'a> = &'a (dyn Fn(&[InputRow]) + Sync);

/// Why a job stopped before finishing.
#[derive(Debug, thiserror::Error)]
enum RunError {
    /// The lease was lost or the job cancelled: someone else owns what happens next.
    #[error("the job is no longer ours (cancelled, or its lease expired)")]
    Lost,
    #[error("the service is stopping")]
    Stopping,
    /// Worth retrying: the source or the database failed.
    #[error("{0}")]
    Failed(String),
}

impl From<StoreError> for RunError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Fenced => RunError::Lost,
            other => RunError::Failed(format!("database: {other}")),
        }
    }
}

/// Resources of one batch, ready to upsert.
enum Items {
    Studies { upserts: Vec<StudyUpsert>, source_ids: Vec<(String, String)> },
    Reports(Vec<ReportUpsert>),
}

impl Batch {
    fn kind(&self) -> &'static str {
        match self.items {
            Items::Studies { .. } => "ImagingStudy",
            Items::Reports(_) => "DiagnosticReport",
        }
    }
}

impl Items {
    fn len(&self) -> usize {
        match self {
            Items::Studies { upserts, .. } => upserts.len(),
            Items::Reports(r) => r.len(),
        }
    }
}

/// Lines of one input up to `end`, parsed.
struct Batch {
    items: Items,
    rejected: Vec<(i64, Value)>,
    start_offset: i64,
    end_offset: i64,
    end_line: i64,
    done: bool,
    /// A resource of this batch is also in the batch before.
    overlaps_previous: bool,
}

/// What a finished job did, per input (for the CLI's summary).
#[derive(Debug, Clone)]
pub struct JobSummary {
    pub job: JobRow,
    pub inputs: Vec<InputRow>,
}

pub struct ImportService {
    store: Arc<dyn ImportStore>,
    studies: Arc<dyn StudyStore>,
    reports: Arc<dyn ReportStore>,
    http: reqwest::Client,
    settings: ImportSettings,
    owner: String,
    stopping: AtomicBool,
    wake: tokio::sync::Notify,
    metrics: Arc<crate::http::metrics::Metrics>,
}

impl ImportService {
    pub fn new(
        store: Arc<dyn ImportStore>,
        studies: Arc<dyn StudyStore>,
        reports: Arc<dyn ReportStore>,
        http: reqwest::Client,
        settings: ImportSettings,
        metrics: Arc<crate::http::metrics::Metrics>,
    ) -> Self {
        let owner = format!("{}:{}", std::process::id(), Uuid::new_v4());
        Self { store, studies, reports, http, settings, owner, stopping: AtomicBool::new(false), wake: tokio::sync::Notify::new(), metrics }
    }

    pub fn store(&self) -> &Arc<dyn ImportStore> {
        &self.store
    }

    pub fn settings(&self) -> &ImportSettings {
        &self.settings
    }

    /// Records a job; the service's workers pick it up (in order, per tenant).
    pub async fn submit(&self, tenant: TenantId, request: &ImportRequest, requested_by: Option<String>) -> Result<JobRow, StoreError> {
        let job = self
            .store
            .create(tenant, NewJob { origin: "api", request: request.to_json(), requested_by, inputs: request.inputs.clone() })
            .await?;
        self.wake.notify_waiters();
        Ok(job)
    }

    pub fn spawn_workers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.settings.workers)
            .map(|_| {
                let service = self.clone();
                tokio::spawn(async move {
                    while !service.stopping.load(Ordering::Relaxed) {
                        let lease_until = Utc::now() + service.settings.lease;
                        match service.store.claim(&service.owner, lease_until).await {
                            Ok(Some(job)) => {
                                service.run(job, None).await;
                                continue;
                            }
                            Ok(None) => {}
                            Err(e) => tracing::error!(error = %e, "import worker: claiming a job"),
                        }
                        tokio::select! {
                            _ = service.wake.notified() => {}
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                })
            })
            .collect()
    }

    /// Asks running jobs to stop after their current batch (they resume elsewhere).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.wake.notify_waiters();
    }

    /// Creates a job for the operator's CLI and runs it here to the end.
    pub async fn run_cli(&self, tenant: TenantId, request: &ImportRequest, on_progress: &(dyn Fn(&[InputRow]) + Sync)) -> anyhow::Result<JobSummary> {
        let job = self
            .store
            .create(tenant, NewJob { origin: "cli", request: request.to_json(), requested_by: Some("radiology import".into()), inputs: request.inputs.clone() })
            .await?;
        let job = self
            .store
            .claim_id(job.id, &self.owner, Utc::now() + self.settings.lease)
            .await?
            .ok_or_else(|| anyhow::anyhow!("could not take the job just created"))?;
        self.run(job.clone(), Some(on_progress)).await;
        let (job, inputs) = self.store.get(tenant, job.id).await?;
        Ok(JobSummary { job, inputs })
    }

    /// Runs a claimed job to its end (or until it is lost), keeping its lease alive.
    async fn run(&self, job: JobRow, on_progress: Option<OnProgress<'_>>) {
        let tenant = TenantId(job.tenant_id);
        let lost = AtomicBool::new(false);
        let work = self.run_inputs(tenant, &job, &lost, on_progress);
        // Renews the lease until the work ends; a lost lease is noticed by the work at
        // its next batch (and its fenced checkpoint could not commit anyway).
        let heartbeat = async {
            while !lost.load(Ordering::Relaxed) {
                tokio::time::sleep(self.settings.lease / 3).await;
                match self.store.heartbeat(job.id, &self.owner, Utc::now() + self.settings.lease).await {
                    Ok(true) => {}
                    Ok(false) => lost.store(true, Ordering::Relaxed),
                    Err(e) => tracing::warn!(error = %e, job_id = %job.id, "import heartbeat failed; retrying"),
                }
            }
            std::future::pending::<()>().await
        };
        let result = tokio::select! {
            r = work => r,
            _ = heartbeat => unreachable!("the heartbeat never ends by itself"),
        };
        self.metrics.observe_import_job(match &result {
            Ok(()) => "completed",
            Err(RunError::Lost) => "lost_or_cancelled",
            Err(RunError::Stopping) => "interrupted",
            Err(RunError::Failed(_)) if job.origin == "cli" || job.attempts >= self.settings.max_attempts => "failed",
            Err(RunError::Failed(_)) => "retried",
        });
        let outcome = match result {
            Ok(()) => self.store.finish(job.id, &self.owner, "completed", None).await.map(|_| ()),
            Err(RunError::Lost) => {
                tracing::info!(job_id = %job.id, "import job stopped: cancelled or taken over");
                Ok(())
            }
            Err(RunError::Stopping) => self.store.release(job.id, &self.owner, None, crate::db::now(), false).await,
            Err(RunError::Failed(reason)) => {
                // The CLI reports its failure to the operator, who re-runs the command.
                if job.origin == "cli" || job.attempts >= self.settings.max_attempts {
                    tracing::error!(job_id = %job.id, %reason, "import job failed for good");
                    self.store.finish(job.id, &self.owner, "failed", Some(&reason)).await.map(|_| ())
                } else {
                    let wait = self.settings.retry_base * 2u32.pow(job.attempts.clamp(0, 10) as u32);
                    tracing::warn!(job_id = %job.id, %reason, retry_in_s = wait.as_secs(), "import job failed; will retry");
                    self.store.release(job.id, &self.owner, Some(&reason), crate::db::now() + wait, true).await
                }
            }
        };
        if let Err(e) = outcome {
            tracing::error!(error = %e, job_id = %job.id, "recording the end of an import job");
        }
    }

    async fn run_inputs(&self, tenant: TenantId, job: &JobRow, lost: &AtomicBool, on_progress: Option<OnProgress<'_>>) -> Result<(), RunError> {
        let (_, inputs) = self.store.get(tenant, job.id).await?;
        // Inputs of one resource type run one after the other: two of them writing at
        // once could hold rows the other waits for while each waits on its own commit
        // order. Inputs of different types share no rows (studies and reports are
        // linked when read), so on PostgreSQL each type runs at the same time as the
        // other; SQLite has one writer anyway.
        let concurrent = matches!(self.store.db(), crate::db::Db::Postgres(_));
        let mut by_type: Vec<Vec<&InputRow>> = Vec::new();
        for input in inputs.iter().filter(|i| !i.done) {
            match by_type.iter_mut().find(|g| !concurrent || g[0].resource_type == input.resource_type) {
                Some(group) => group.push(input),
                None => by_type.push(vec![input]),
            }
        }
        let progress = || async {
            if let Some(on_progress) = on_progress {
                if let Ok((_, now)) = self.store.get(tenant, job.id).await {
                    on_progress(&now);
                }
            }
        };
        let groups = by_type.into_iter().map(|group| async move {
            for input in group {
                self.run_input(tenant, job.id, input, lost, &progress).await?;
            }
            Ok::<(), RunError>(())
        });
        // The first failure ends the job; the other type's batch in hand is rolled back
        // and resumes from its checkpoint with the job.
        futures_util::future::try_join_all(groups).await?;
        Ok(())
    }

    /// Streams one input from its checkpoint: parsing runs ahead of storing.
    async fn run_input<F, Fut>(&self, tenant: TenantId, job: Uuid, input: &InputRow, lost: &AtomicBool, progress: &F) -> Result<(), RunError>
    where
        F: Fn() -> Fut + Sync,
        Fut: std::future::Future<Output = ()>,
    {
        let url = Url::parse(&input.url).map_err(|e| RunError::Failed(format!("{}: {e}", input.url)))?;
        let mut reader = LineReader::open(&self.http, &url, input.byte_offset, input.line).await.map_err(RunError::Failed)?;
        if let (Some(total), None) = (reader.total_bytes, input.total_bytes) {
            self.store.set_total_bytes(job, input.position, total).await?;
        }
        // Reading, parsing and validating run on their own task (another core) ahead
        // of the writes.
        let (tx, mut rx) = mpsc::channel::<Result<Batch, String>>(READ_AHEAD);
        let (kind, url, batch_size) = (input.resource_type.clone(), input.url.clone(), self.settings.batch_size);
        let reading = tokio::spawn(async move {
            let mut previous_keys = HashSet::new();
            loop {
                let batch = read_batch(&mut reader, &kind, &url, batch_size, &mut previous_keys).await;
                let done = matches!(&batch, Ok(b) if b.done) || batch.is_err();
                if tx.send(batch).await.is_err() || done {
                    return;
                }
            }
        });
        // Up to `depth` batches are written at once, each in its own transaction; batch
        // k+1 commits only after batch k did (its gate), so checkpoints advance in order
        // and a failed batch takes the ones after it down with it.
        let depth = if matches!(self.store.db(), crate::db::Db::Postgres(_)) { 2 } else { 1 };
        let written = async {
            let mut in_flight = FuturesOrdered::new();
            let mut previous: Option<oneshot::Receiver<bool>> = None;
            let mut more = true;
            // The last stored batch created everything it wrote: the input is (so far) new
            // to this tenant, and the next batch inserts before it looks anything up.
            let mut all_new = false;
            loop {
                tokio::select! {
                    biased;
                    Some((result, done)) = in_flight.next(), if !in_flight.is_empty() => {
                        all_new = result?;
                        progress().await;
                        if done {
                            return Ok(());
                        }
                    }
                    batch = rx.recv(), if more && in_flight.len() < depth => {
                        let Some(batch) = batch else {
                            more = false;
                            continue;
                        };
                        if lost.load(Ordering::Relaxed) {
                            return Err(RunError::Lost);
                        }
                        if self.stopping.load(Ordering::Relaxed) {
                            while let Some((result, _)) = in_flight.next().await {
                                result?;
                            }
                            return Err(RunError::Stopping);
                        }
                        let batch = batch.map_err(RunError::Failed)?;
                        let (committed, next) = oneshot::channel();
                        let gate = previous.replace(next);
                        let done = batch.done;
                        let position = input.position;
                        let insert_first = all_new;
                        in_flight.push_back(async move {
                            let kind = batch.kind();
                            let result = self.write_batch(tenant, job, position, batch, gate, insert_first).await;
                            if let Ok(p) = &result {
                                self.metrics.observe_import_batch(kind, p.created, p.updated, p.unchanged, p.failed);
                            }
                            let _ = committed.send(result.is_ok());
                            (result.map(|p| p.created > 0 && p.updated == 0 && p.unchanged == 0), done)
                        });
                    }
                    else => return Err(RunError::Failed("the input reader stopped early".into())),
                }
            }
        }
        .await;
        reading.abort();
        written
    }

    /// Stores a batch, its rejected lines and the checkpoint in one transaction, which
    /// commits only once the batch before it (`previous`) has.
    async fn write_batch(
        &self,
        tenant: TenantId,
        job: Uuid,
        position: i32,
        batch: Batch,
        previous: Option<oneshot::Receiver<bool>>,
        insert_first: bool,
    ) -> Result<Progress, RunError> {
        let Batch { items, rejected, start_offset, end_offset, end_line, done, overlaps_previous } = batch;
        let mut previous = previous;
        if overlaps_previous {
            // The same resource is in the batch before: let that one commit first (two
            // transactions holding each other's rows would otherwise wait forever).
            if let Some(p) = previous.take() {
                if !p.await.unwrap_or(false) {
                    return Err(RunError::Failed("the batch before failed".into()));
                }
            }
        }
        let gate: Option<CommitGate<'_>> = previous.map(|p| Box::pin(async move { p.await.unwrap_or(false) }) as CommitGate<'_>);
        let base = Progress { start_offset, byte_offset: end_offset, line: end_line, failed: rejected.len() as i64, done, ..Progress::default() };
        let owner = self.owner.as_str();
        let followups = |outcomes: &[UpsertOutcome], extra: Vec<crate::db::sql::Followup>| {
            let p = base.with(outcomes);
            let mut f = rejected_lines(self.store.db(), tenant, job, position, &rejected);
            f.extend(extra);
            f.push(checkpoint(job, owner, position, &p));
            f
        };
        if items.len() == 0 {
            if let Some(g) = gate {
                if !g.await {
                    return Err(RunError::Failed("the batch before failed".into()));
                }
            }
            self.store.commit(followups(&[], Vec::new())).await?;
            return Ok(base);
        }
        let result = match items {
            Items::Studies { upserts, source_ids: ids } => {
                let after = |outcomes: &[UpsertOutcome]| followups(outcomes, source_ids(self.store.db(), tenant, "ImagingStudy", &ids));
                self.studies.upsert_batch(tenant, &upserts, Some(AfterWrite { followups: &after, gate, insert_first })).await
            }
            Items::Reports(reports) => {
                let after = |outcomes: &[UpsertOutcome]| followups(outcomes, Vec::new());
                self.reports.upsert_batch(tenant, &reports, Some(AfterWrite { followups: &after, gate, insert_first })).await
            }
        };
        Ok(base.with(&result.map_err(RunError::from)?))
    }
}

/// Reads lines until a batch is full (by count or bytes) or the input ends.
async fn read_batch(reader: &mut LineReader, kind: &str, url: &str, batch_size: usize, previous_keys: &mut HashSet<String>) -> Result<Batch, String> {
    let mut studies = Vec::new();
    let mut study_ids: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut reports = Vec::new();
    let mut keys: HashSet<String> = HashSet::new();
    let mut rejected = Vec::new();
    let mut bytes = 0;
    let mut pending: Option<Line> = None;
    let (mut end_offset, mut end_line) = reader.position();
    let start_offset = end_offset;
    let mut done = false;
    loop {
        let line = match pending.take() {
            Some(l) => l,
            None => match reader.next_line().await? {
                Some(l) => l,
                None => {
                    done = true;
                    break;
                }
            },
        };
        if line.bytes.iter().all(u8::is_ascii_whitespace) && !line.too_long {
            (end_offset, end_line) = (line.end_offset, line.number);
            continue;
        }
        match parse_line(&line, kind) {
            Err(outcome) => rejected.push((line.number, outcome_for(url, line.number, outcome))),
            Ok(Parsed::Study(study)) => {
                if !keys.insert(study.upsert.study_instance_uid.clone()) {
                    pending = Some(line); // the same study twice: the second goes in the next batch
                    break;
                }
                if let Some(id) = study.source_id {
                    study_ids.insert(id, study.upsert.study_instance_uid.clone());
                }
                studies.push(study.upsert);
            }
            Ok(Parsed::Report(report)) => {
                if !keys.insert(report.business_key.clone()) {
                    pending = Some(line);
                    break;
                }
                reports.push(report);
            }
        }
        bytes += line.bytes.len();
        (end_offset, end_line) = (line.end_offset, line.number);
        if keys.len() >= batch_size || bytes >= BATCH_BYTES || rejected.len() >= batch_size {
            break;
        }
    }
    if let Some(line) = pending {
        // Not in this batch: the checkpoint stays before it, and the next batch starts with it.
        reader.unread(line);
    }
    let items = if kind == "ImagingStudy" { Items::Studies { upserts: studies, source_ids: study_ids.into_iter().collect() } } else { Items::Reports(reports) };
    let overlaps_previous = keys.iter().any(|k| previous_keys.contains(k));
    *previous_keys = keys;
    Ok(Batch { items, rejected, start_offset, end_offset, end_line, done, overlaps_previous })
}

enum Parsed {
    Study(crate::studies::from_fhir::ImportedStudy),
    Report(ReportUpsert),
}

/// Why a line was rejected: (OperationOutcome issue code, issues).
type Rejection = (&'static str, Vec<Issue>);

fn parse_line(line: &Line, kind: &str) -> Result<Parsed, Rejection> {
    let whole = |message: String| vec![Issue { expression: String::new(), message }];
    if line.too_long {
        return Err(("too-long", whole(format!("the line is longer than {} MiB", source::MAX_LINE_BYTES >> 20))));
    }
    let value: Value = serde_json::from_slice(&line.bytes).map_err(|e| ("structure", whole(format!("not JSON: {e}"))))?;
    if line.bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
        return Err(("invalid", whole("a string holds a NUL character (\\u0000), which FHIR strings may not contain".into())));
    }
    let Some(found) = value.as_object().map(|o| o.get("resourceType")) else {
        return Err(("structure", whole("not a JSON object (NDJSON holds one resource per line)".into())));
    };
    match found.and_then(Value::as_str) {
        Some(t) if t == kind => {}
        Some(t) => return Err(("invalid", vec![Issue { expression: "resourceType".into(), message: format!("{t} in an input declared as {kind}") }])),
        None => return Err(("required", vec![Issue { expression: "resourceType".into(), message: "is required".into() }])),
    }
    // What is stored is the line as sent, less the id, with the new `meta`.
    let text = |payload: &Value| {
        let text = payload.as_object().and_then(|p| text_from_line(&line.bytes, p));
        debug_assert!(text.as_ref().is_none_or(|t| serde_json::from_str::<Value>(t).ok().as_ref() == Some(payload)), "{text:?}");
        text
    };
    match kind {
        "ImagingStudy" => crate::studies::from_fhir::from_fhir(value)
            .map(|mut study| {
                study.upsert.payload_text = text(&study.upsert.payload);
                Parsed::Study(study)
            })
            .map_err(|i| ("invalid", i)),
        _ => crate::reports::from_fhir::from_fhir(value)
            .map(|mut report| {
                report.payload_text = text(&report.payload);
                Parsed::Report(report)
            })
            .map_err(|i| ("invalid", i)),
    }
}

/// The OperationOutcome of a rejected line, naming the input and the line.
fn outcome_for(url: &str, line: i64, (code, issues): Rejection) -> Value {
    let issues: Vec<Value> = issues
        .into_iter()
        .map(|i| {
            let at = if i.expression.is_empty() { String::new() } else { format!("{}: ", i.expression) };
            let mut issue = json!({"severity": "error", "code": code, "diagnostics": format!("{url} line {line}: {at}{}", i.message)});
            if !i.expression.is_empty() {
                issue["expression"] = json!([i.expression]);
            }
            issue
        })
        .collect();
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Line {
        Line { number: 7, bytes: text.as_bytes().to_vec(), too_long: false, start_offset: 0, end_offset: text.len() as i64 }
    }

    fn rejected(text: &str, kind: &str) -> String {
        match parse_line(&line(text), kind) {
            Ok(_) => panic!("{text} accepted"),
            Err(r) => outcome_for("file:///in.ndjson", 7, r).to_string(),
        }
    }

    #[test]
    fn lines_postgresql_could_not_store_are_rejected_not_fatal() {
        let report = |extra: &str| {
            format!(r#"{{"resourceType":"DiagnosticReport","id":"r1","status":"final","code":{{"text":"CT"}}{extra}}}"#)
        };
        assert!(parse_line(&line(&report("")), "DiagnosticReport").is_ok());
        assert!(rejected(&report(r#","conclusion":"a\u0000b""#), "DiagnosticReport").contains("NUL"));
        assert!(rejected(&report(r#","issued":"0001-01-01T00:00:00+01:00""#), "DiagnosticReport").contains("issued"));
        assert!(rejected(&report(r#","effectiveDateTime":"0000""#), "DiagnosticReport").contains("effectiveDateTime"));
        let o = rejected(&report("").replace("DiagnosticReport", "Patient"), "DiagnosticReport");
        assert!(o.contains("file:///in.ndjson line 7: resourceType: Patient in an input declared as DiagnosticReport"), "{o}");
    }
}
