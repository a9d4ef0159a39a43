//! Bulk import jobs, their inputs (each with its checkpoint) and rejected lines.
//!
//! A job is claimed with a row lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL), one
//! running job per tenant at a time, oldest first. Each stored batch carries a fenced
//! checkpoint in its own transaction, so a worker that lost its lease (or a cancelled
//! job) writes nothing more, and a resumed job starts exactly after the last stored batch.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use crate::auth::TenantId;
use crate::db::error::StoreResult;
use crate::db::sql::{Arg, Fence, Followup, SqlBuf, UpsertOutcome};
use crate::db::{begin_write, Db, StoreError};
use crate::{on_db, run_followups};

#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct JobRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// queued | running | completed | failed | cancelled
    pub status: String,
    /// `api` ($import, run by the service's workers) or `cli` (run by `radiology import`).
    pub origin: String,
    pub request: Json<Value>,
    pub requested_by: Option<String>,
    pub transaction_time: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct InputRow {
    pub job_id: Uuid,
    pub tenant_id: Uuid,
    pub position: i32,
    pub resource_type: String,
    pub url: String,
    pub byte_offset: i64,
    pub line: i64,
    pub total_bytes: Option<i64>,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub failed: i64,
    pub done: bool,
}

/// What one stored batch adds to its input's checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Where the batch started: the checkpoint only applies if it is still there
    /// (a worker that lost its lease and committed late cannot count a batch twice).
    pub start_offset: i64,
    pub byte_offset: i64,
    pub line: i64,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub failed: i64,
    pub done: bool,
}

impl Progress {
    /// This progress plus the outcomes of the batch's upserts.
    pub fn with(mut self, outcomes: &[UpsertOutcome]) -> Self {
        let (created, updated, unchanged) = UpsertOutcome::tally(outcomes);
        self.created += created;
        self.updated += updated;
        self.unchanged += unchanged;
        self
    }
}

pub struct NewJob {
    pub origin: &'static str,
    pub request: Value,
    pub requested_by: Option<String>,
    /// (resource type, url) in order.
    pub inputs: Vec<(String, String)>,
}

#[async_trait]
pub trait ImportStore: Send + Sync {
    async fn create(&self, tenant: TenantId, job: NewJob) -> StoreResult<JobRow>;
    async fn get(&self, tenant: TenantId, id: Uuid) -> StoreResult<(JobRow, Vec<InputRow>)>;
    /// Takes the next `api` job that may run now (queued, or running with an expired
    /// lease; at most one per tenant; oldest first).
    async fn claim(&self, owner: &str, lease_until: DateTime<Utc>) -> StoreResult<Option<JobRow>>;
    /// Takes this job (the CLI runs the job it created).
    async fn claim_id(&self, id: Uuid, owner: &str, lease_until: DateTime<Utc>) -> StoreResult<Option<JobRow>>;
    /// Extends the lease; false when it is no longer ours (lost, cancelled).
    async fn heartbeat(&self, id: Uuid, owner: &str, lease_until: DateTime<Utc>) -> StoreResult<bool>;
    async fn set_total_bytes(&self, id: Uuid, position: i32, total: i64) -> StoreResult<()>;
    /// Ends a running job (completed or failed); false when it was not ours any more.
    async fn finish(&self, id: Uuid, owner: &str, status: &str, error: Option<&str>) -> StoreResult<bool>;
    /// Gives the job back after a transient failure, to be retried at `retry_at`.
    /// `count_attempt: false` (a graceful stop) gives back the attempt the claim took.
    async fn release(&self, id: Uuid, owner: &str, error: Option<&str>, retry_at: DateTime<Utc>, count_attempt: bool) -> StoreResult<()>;
    /// Cancels a queued or running job; returns its status before.
    async fn cancel(&self, tenant: TenantId, id: Uuid) -> StoreResult<String>;
    /// Forgets a finished job and its error lines.
    async fn delete(&self, tenant: TenantId, id: Uuid) -> StoreResult<()>;
    /// The OperationOutcomes of an input's rejected lines, in line order.
    async fn errors(&self, tenant: TenantId, id: Uuid, position: i32, after_line: i64, limit: i64) -> StoreResult<Vec<(i64, Json<Value>)>>;
    /// Runs follow-ups (rejected lines and a checkpoint) in one transaction, for a
    /// batch with nothing to upsert.
    async fn commit(&self, followups: Vec<Followup>) -> StoreResult<()>;
    /// The database the follow-ups are written for.
    fn db(&self) -> &Db;
}

/// The fenced checkpoint of one input: applies only while `owner` holds the running job.
pub fn checkpoint(job: Uuid, owner: &str, position: i32, p: &Progress) -> Followup {
    let mut sql = SqlBuf::new("UPDATE import_job_inputs SET ");
    let set = [
        ("byte_offset = ", Arg::Int(p.byte_offset)),
        (", line = ", Arg::Int(p.line)),
        (", created = created + ", Arg::Int(p.created)),
        (", updated = updated + ", Arg::Int(p.updated)),
        (", unchanged = unchanged + ", Arg::Int(p.unchanged)),
        (", failed = failed + ", Arg::Int(p.failed)),
        (", done = ", Arg::Bool(p.done)),
    ];
    for (text, arg) in set {
        let a = sql.arg(arg);
        sql.push(text).push(&a);
    }
    let (j, pos, o) = (sql.arg(Arg::Uuid(job)), sql.arg(Arg::Int(position as i64)), sql.arg(Arg::Text(owner.to_string())));
    let start = sql.arg(Arg::Int(p.start_offset));
    sql.push(&format!(
        " WHERE job_id = {j} AND position = {pos} AND byte_offset = {start} AND EXISTS \
         (SELECT 1 FROM import_jobs j WHERE j.id = {j} AND j.status = 'running' AND j.lease_owner = {o})"
    ));
    Followup { sql, fence: Fence::AnyRow, independent: false }
}

/// Rejected lines of a batch (a line rejected twice, after a resume, is kept once).
pub fn rejected_lines(db: &Db, tenant: TenantId, job: Uuid, position: i32, lines: &[(i64, Value)]) -> Vec<Followup> {
    if lines.is_empty() {
        return Vec::new();
    }
    let columns = [("job_id", "uuid"), ("tenant_id", "uuid"), ("position", "integer"), ("line", "bigint"), ("outcome", "jsonb")];
    let rows = lines
        .iter()
        .map(|(line, outcome)| vec![Arg::Uuid(job), Arg::Uuid(tenant.0), Arg::Int(position as i64), Arg::Int(*line), Arg::Json(outcome.clone())])
        .collect();
    let mut sql = SqlBuf::bulk_insert(db, "import_errors", &columns, rows);
    sql.push(" ON CONFLICT (job_id, position, line) DO NOTHING");
    vec![Followup { sql, fence: Fence::None, independent: true }]
}

/// Remembers the source ids of imported resources (`ImagingStudy/<source id>`).
pub fn source_ids(db: &Db, tenant: TenantId, resource_type: &str, ids: &[(String, String)]) -> Vec<Followup> {
    if ids.is_empty() {
        return Vec::new();
    }
    let columns = [("tenant_id", "uuid"), ("resource_type", "text"), ("source_id", "text"), ("business_key", "text")];
    let rows = ids
        .iter()
        .map(|(source_id, key)| vec![Arg::Uuid(tenant.0), Arg::Text(resource_type.to_string()), Arg::Text(source_id.clone()), Arg::Text(key.clone())])
        .collect();
    let mut sql = SqlBuf::bulk_insert(db, "fhir_source_ids", &columns, rows);
    sql.push(" ON CONFLICT (tenant_id, resource_type, source_id) DO UPDATE SET business_key = excluded.business_key");
    vec![Followup { sql, fence: Fence::None, independent: true }]
}

pub struct SqlImportStore {
    db: Db,
}

const JOB_COLUMNS: &str = "id, tenant_id, status, origin, request, requested_by, transaction_time, lease_owner, lease_until, \
    attempts, next_attempt_at, error, started_at, finished_at, created_at, updated_at";
const INPUT_COLUMNS: &str = "job_id, tenant_id, position, resource_type, url, byte_offset, line, total_bytes, created, updated, \
    unchanged, failed, done";

impl SqlImportStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

#[async_trait]
impl ImportStore for SqlImportStore {
    async fn create(&self, tenant: TenantId, job: NewJob) -> StoreResult<JobRow> {
        let now = crate::db::now();
        let id = Uuid::new_v4();
        let insert = format!(
            "INSERT INTO import_jobs ({JOB_COLUMNS}) VALUES ($1, $2, 'queued', $3, $4, $5, $6, NULL, NULL, 0, $6, NULL, NULL, NULL, $6, $6) \
             RETURNING {JOB_COLUMNS}"
        );
        on_db!(&self.db, pool => async {
            let mut tx = begin_write(pool).await?;
            let row = sqlx::query_as::<_, JobRow>(&insert)
                .bind(id).bind(tenant.0).bind(job.origin).bind(Json(&job.request)).bind(&job.requested_by).bind(now)
                .fetch_one(&mut *tx).await?;
            for (position, (kind, url)) in job.inputs.iter().enumerate() {
                sqlx::query("INSERT INTO import_job_inputs (job_id, tenant_id, position, resource_type, url) VALUES ($1, $2, $3, $4, $5)")
                    .bind(id).bind(tenant.0).bind(position as i32).bind(kind).bind(url)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(row)
        }.await)
    }

    async fn get(&self, tenant: TenantId, id: Uuid) -> StoreResult<(JobRow, Vec<InputRow>)> {
        let job_sql = format!("SELECT {JOB_COLUMNS} FROM import_jobs WHERE tenant_id = $1 AND id = $2");
        let input_sql = format!("SELECT {INPUT_COLUMNS} FROM import_job_inputs WHERE tenant_id = $1 AND job_id = $2 ORDER BY position");
        on_db!(&self.db, pool => async {
            let job = sqlx::query_as::<_, JobRow>(&job_sql).bind(tenant.0).bind(id).fetch_optional(pool).await?.ok_or(StoreError::NotFound)?;
            let inputs = sqlx::query_as::<_, InputRow>(&input_sql).bind(tenant.0).bind(id).fetch_all(pool).await?;
            Ok::<_, StoreError>((job, inputs))
        }.await)
    }

    async fn claim(&self, owner: &str, lease_until: DateTime<Utc>) -> StoreResult<Option<JobRow>> {
        let lock = match self.db {
            Db::Postgres(_) => " FOR UPDATE SKIP LOCKED",
            Db::Sqlite(_) => "",
        };
        // FIFO per tenant: a job waits while an older one of its tenant is unfinished.
        let sql = format!(
            "UPDATE import_jobs SET status = 'running', lease_owner = $1, lease_until = $2, attempts = attempts + 1, \
                    started_at = COALESCE(started_at, $3), updated_at = $3 \
             WHERE id = (SELECT j.id FROM import_jobs j \
                         WHERE j.origin = 'api' AND j.next_attempt_at <= $3 \
                           AND (j.status = 'queued' OR (j.status = 'running' AND j.lease_until < $3)) \
                           AND NOT EXISTS (SELECT 1 FROM import_jobs o WHERE o.tenant_id = j.tenant_id AND o.origin = 'api' \
                                           AND o.status IN ('queued', 'running') \
                                           AND (o.created_at < j.created_at OR (o.created_at = j.created_at AND o.id < j.id))) \
                         ORDER BY j.created_at LIMIT 1{lock}) \
             RETURNING {JOB_COLUMNS}"
        );
        let now = crate::db::now();
        Ok(on_db!(&self.db, pool => sqlx::query_as::<_, JobRow>(&sql).bind(owner).bind(lease_until).bind(now).fetch_optional(pool).await)?)
    }

    async fn claim_id(&self, id: Uuid, owner: &str, lease_until: DateTime<Utc>) -> StoreResult<Option<JobRow>> {
        let sql = format!(
            "UPDATE import_jobs SET status = 'running', lease_owner = $2, lease_until = $3, attempts = attempts + 1, \
                    started_at = COALESCE(started_at, $4), updated_at = $4 \
             WHERE id = $1 AND (status = 'queued' OR (status = 'running' AND (lease_until < $4 OR lease_owner = $2))) \
             RETURNING {JOB_COLUMNS}"
        );
        let now = crate::db::now();
        Ok(on_db!(&self.db, pool => sqlx::query_as::<_, JobRow>(&sql).bind(id).bind(owner).bind(lease_until).bind(now).fetch_optional(pool).await)?)
    }

    async fn heartbeat(&self, id: Uuid, owner: &str, lease_until: DateTime<Utc>) -> StoreResult<bool> {
        let sql = "UPDATE import_jobs SET lease_until = $3, updated_at = $4 WHERE id = $1 AND lease_owner = $2 AND status = 'running'";
        let n = on_db!(&self.db, pool => sqlx::query(sql).bind(id).bind(owner).bind(lease_until).bind(crate::db::now())
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    async fn set_total_bytes(&self, id: Uuid, position: i32, total: i64) -> StoreResult<()> {
        on_db!(&self.db, pool => sqlx::query("UPDATE import_job_inputs SET total_bytes = $3 WHERE job_id = $1 AND position = $2")
            .bind(id).bind(position).bind(total).execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    async fn finish(&self, id: Uuid, owner: &str, status: &str, error: Option<&str>) -> StoreResult<bool> {
        let now = crate::db::now();
        let sql = "UPDATE import_jobs SET status = $3, error = $4, lease_owner = NULL, lease_until = NULL, finished_at = $5, updated_at = $5 \
                   WHERE id = $1 AND lease_owner = $2 AND status = 'running'";
        let n = on_db!(&self.db, pool => sqlx::query(sql).bind(id).bind(owner).bind(status).bind(error).bind(now)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    async fn release(&self, id: Uuid, owner: &str, error: Option<&str>, retry_at: DateTime<Utc>, count_attempt: bool) -> StoreResult<()> {
        let sql = if count_attempt {
            "UPDATE import_jobs SET status = 'queued', error = $3, lease_owner = NULL, lease_until = NULL, next_attempt_at = $4, updated_at = $5 \
                   WHERE id = $1 AND lease_owner = $2 AND status = 'running'"
        } else {
            "UPDATE import_jobs SET status = 'queued', error = $3, lease_owner = NULL, lease_until = NULL, next_attempt_at = $4, updated_at = $5, \
                    attempts = attempts - 1 WHERE id = $1 AND lease_owner = $2 AND status = 'running'"
        };
        on_db!(&self.db, pool => sqlx::query(sql).bind(id).bind(owner).bind(error).bind(retry_at).bind(crate::db::now()).execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    async fn cancel(&self, tenant: TenantId, id: Uuid) -> StoreResult<String> {
        let now = crate::db::now();
        on_db!(&self.db, pool => async {
            let mut tx = begin_write(pool).await?;
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM import_jobs WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.0).bind(id).fetch_optional(&mut *tx).await?;
            let status = status.ok_or(StoreError::NotFound)?;
            if status == "queued" || status == "running" {
                sqlx::query("UPDATE import_jobs SET status = 'cancelled', lease_owner = NULL, lease_until = NULL, finished_at = $3, updated_at = $3 \
                             WHERE tenant_id = $1 AND id = $2 AND status IN ('queued', 'running')")
                    .bind(tenant.0).bind(id).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(status)
        }.await)
    }

    async fn delete(&self, tenant: TenantId, id: Uuid) -> StoreResult<()> {
        on_db!(&self.db, pool => async {
            let mut tx = begin_write(pool).await?;
            for table in ["import_errors", "import_job_inputs"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1 AND job_id = $2")).bind(tenant.0).bind(id).execute(&mut *tx).await?;
            }
            sqlx::query("DELETE FROM import_jobs WHERE tenant_id = $1 AND id = $2").bind(tenant.0).bind(id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        }.await)
    }

    async fn errors(&self, tenant: TenantId, id: Uuid, position: i32, after_line: i64, limit: i64) -> StoreResult<Vec<(i64, Json<Value>)>> {
        let sql = "SELECT line, outcome FROM import_errors WHERE tenant_id = $1 AND job_id = $2 AND position = $3 AND line > $4 \
                   ORDER BY line LIMIT $5";
        Ok(on_db!(&self.db, pool => sqlx::query_as::<_, (i64, Json<Value>)>(sql)
            .bind(tenant.0).bind(id).bind(position).bind(after_line).bind(limit).fetch_all(pool).await)?)
    }

    fn db(&self) -> &Db {
        &self.db
    }

    async fn commit(&self, followups: Vec<Followup>) -> StoreResult<()> {
        on_db!(&self.db, pool => async {
            let mut tx = begin_write(pool).await?;
            run_followups!(tx, &followups)?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        }.await)
    }
}
