//! Persistence of each endpoint's sync state, with row leases so that one process
//! at a time syncs an endpoint: `FOR UPDATE SKIP LOCKED` on PostgreSQL; on SQLite
//! the claim is one `UPDATE … RETURNING` under the database's single write lock.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use crate::auth::TenantId;
use crate::db::error::StoreResult;
use crate::db::{Db, StoreError};
use crate::on_db;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncStateRow {
    pub endpoint_id: Uuid,
    pub tenant_id: Uuid,
    pub status: String,
    pub progress: Option<Json<Value>>,
    pub watermark: Option<DateTime<Utc>>,
    pub full_requested: bool,
    pub next_run_at: DateTime<Utc>,
    pub interval_seconds: i32,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub consecutive_failures: i32,
    pub last_error: Option<String>,
    pub last_run: Option<Json<Value>>,
    pub total_seen: i64,
    pub total_created: i64,
    pub total_updated: i64,
    pub total_failed: i64,
    pub updated_at: DateTime<Utc>,
}

/// How a run ended, as written back to the state row.
#[derive(Debug, Clone)]
pub struct RunEnd {
    /// Progress to resume from; `None` when the run completed.
    pub progress: Option<Value>,
    pub watermark: Option<DateTime<Utc>>,
    pub status: &'static str,
    pub consecutive_failures: i32,
    pub last_error: Option<String>,
    pub last_run: Value,
    pub next_run_at: DateTime<Utc>,
    pub add_seen: i64,
    pub add_created: i64,
    pub add_updated: i64,
    pub add_failed: i64,
}

#[async_trait]
pub trait SyncStore: Send + Sync {
    /// System sweep: gives every active endpoint a state row (due now).
    async fn ensure_states(&self, now: DateTime<Utc>, interval_seconds: i32) -> StoreResult<u64>;
    /// System: claims the most overdue unleased job of an active endpoint, if any.
    async fn claim_due(&self, owner: &str, now: DateTime<Utc>, lease_until: DateTime<Utc>) -> StoreResult<Option<SyncStateRow>>;
    /// Saves progress and renews the lease; `false` when the lease was lost.
    async fn checkpoint(&self, tenant: TenantId, endpoint: Uuid, owner: &str, progress: &Value, lease_until: DateTime<Utc>) -> StoreResult<bool>;
    /// Extends the lease of a running job; `false` when the lease was lost.
    async fn renew_lease(&self, tenant: TenantId, endpoint: Uuid, owner: &str, lease_until: DateTime<Utc>) -> StoreResult<bool>;
    /// Ends a run and releases the lease; `false` when the lease was lost.
    async fn finish(&self, tenant: TenantId, endpoint: Uuid, owner: &str, end: &RunEnd) -> StoreResult<bool>;
    async fn get(&self, tenant: TenantId, endpoint: Uuid) -> StoreResult<SyncStateRow>;
    /// System (operator CLI): every endpoint re-backfills at its next run, due now.
    async fn request_full_everywhere(&self, now: DateTime<Utc>) -> StoreResult<u64>;
    /// Makes the endpoint due now; with `full`, the next run re-backfills from scratch.
    /// `interval_seconds` (when given) becomes the endpoint's poll interval; new state
    /// rows otherwise get `default_interval`.
    async fn request_run(
        &self,
        tenant: TenantId,
        endpoint: Uuid,
        now: DateTime<Utc>,
        full: bool,
        interval_seconds: Option<i32>,
        default_interval: i32,
    ) -> StoreResult<()>;
}

pub struct SqlSyncStore {
    db: Db,
}

impl SqlSyncStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

const COLUMNS: &str = "endpoint_id, tenant_id, status, progress, watermark, full_requested, next_run_at, interval_seconds, \
                       lease_owner, lease_until, consecutive_failures, last_error, last_run, total_seen, total_created, \
                       total_updated, total_failed, updated_at";

#[async_trait]
impl SyncStore for SqlSyncStore {
    async fn ensure_states(&self, now: DateTime<Utc>, interval_seconds: i32) -> StoreResult<u64> {
        let sql = "INSERT INTO pacs_sync_state (endpoint_id, tenant_id, next_run_at, interval_seconds, updated_at) \
                   SELECT e.id, e.tenant_id, $1, $2, $1 FROM pacs_endpoints e WHERE e.active \
                   AND NOT EXISTS (SELECT 1 FROM pacs_sync_state s WHERE s.endpoint_id = e.id) \
                   ON CONFLICT (endpoint_id) DO NOTHING";
        Ok(on_db!(&self.db, pool => sqlx::query(sql).bind(now).bind(interval_seconds)
            .execute(pool).await.map(|r| r.rows_affected()))?)
    }

    async fn claim_due(&self, owner: &str, now: DateTime<Utc>, lease_until: DateTime<Utc>) -> StoreResult<Option<SyncStateRow>> {
        // A full re-backfill request is taken up here, atomically with the claim.
        let claim = |lock: &str| {
            format!(
                "UPDATE pacs_sync_state SET lease_owner = $1, lease_until = $2, updated_at = $3, \
                 status = CASE WHEN status = 'degraded' THEN status ELSE 'running' END, \
                 progress = CASE WHEN full_requested THEN NULL ELSE progress END, \
                 watermark = CASE WHEN full_requested THEN NULL ELSE watermark END, \
                 full_requested = FALSE \
                 WHERE endpoint_id = (SELECT s.endpoint_id FROM pacs_sync_state s \
                   JOIN pacs_endpoints e ON e.id = s.endpoint_id AND e.tenant_id = s.tenant_id \
                   WHERE e.active AND s.next_run_at <= $3 AND (s.lease_until IS NULL OR s.lease_until < $3) \
                   ORDER BY s.next_run_at LIMIT 1 {lock}) \
                 RETURNING {COLUMNS}"
            )
        };
        let row = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as::<_, SyncStateRow>(&claim("FOR UPDATE OF s SKIP LOCKED"))
                    .bind(owner).bind(lease_until).bind(now).fetch_optional(pool).await?
            }
            Db::Sqlite(pool) => {
                sqlx::query_as::<_, SyncStateRow>(&claim("")).bind(owner).bind(lease_until).bind(now).fetch_optional(pool).await?
            }
        };
        Ok(row)
    }

    async fn checkpoint(&self, tenant: TenantId, endpoint: Uuid, owner: &str, progress: &Value, lease_until: DateTime<Utc>) -> StoreResult<bool> {
        let sql = "UPDATE pacs_sync_state SET progress = $4, lease_until = $5, updated_at = $6 \
                   WHERE tenant_id = $1 AND endpoint_id = $2 AND lease_owner = $3";
        let n = on_db!(&self.db, pool => sqlx::query(sql).bind(tenant.0).bind(endpoint).bind(owner)
            .bind(Json(progress)).bind(lease_until).bind(crate::db::now())
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    async fn renew_lease(&self, tenant: TenantId, endpoint: Uuid, owner: &str, lease_until: DateTime<Utc>) -> StoreResult<bool> {
        let sql = "UPDATE pacs_sync_state SET lease_until = $4 WHERE tenant_id = $1 AND endpoint_id = $2 AND lease_owner = $3";
        let n = on_db!(&self.db, pool => sqlx::query(sql).bind(tenant.0).bind(endpoint).bind(owner).bind(lease_until)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    async fn finish(&self, tenant: TenantId, endpoint: Uuid, owner: &str, end: &RunEnd) -> StoreResult<bool> {
        let sql = "UPDATE pacs_sync_state SET progress = $4, watermark = COALESCE($5, watermark), status = $6, \
                   consecutive_failures = $7, last_error = $8, last_run = $9, next_run_at = $10, \
                   total_seen = total_seen + $11, total_created = total_created + $12, \
                   total_updated = total_updated + $13, total_failed = total_failed + $14, \
                   lease_owner = NULL, lease_until = NULL, updated_at = $15 \
                   WHERE tenant_id = $1 AND endpoint_id = $2 AND lease_owner = $3";
        let n = on_db!(&self.db, pool => sqlx::query(sql).bind(tenant.0).bind(endpoint).bind(owner)
            .bind(end.progress.as_ref().map(Json)).bind(end.watermark).bind(end.status).bind(end.consecutive_failures)
            .bind(&end.last_error).bind(Json(&end.last_run)).bind(end.next_run_at)
            .bind(end.add_seen).bind(end.add_created).bind(end.add_updated).bind(end.add_failed).bind(crate::db::now())
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    async fn get(&self, tenant: TenantId, endpoint: Uuid) -> StoreResult<SyncStateRow> {
        let sql = format!("SELECT {COLUMNS} FROM pacs_sync_state WHERE tenant_id = $1 AND endpoint_id = $2");
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, SyncStateRow>(&sql)
            .bind(tenant.0).bind(endpoint).fetch_optional(pool).await)?;
        row.ok_or(StoreError::NotFound)
    }

    async fn request_full_everywhere(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let sql = "UPDATE pacs_sync_state SET full_requested = TRUE, next_run_at = $1, updated_at = $1";
        Ok(on_db!(&self.db, pool => sqlx::query(sql).bind(now).execute(pool).await.map(|r| r.rows_affected()))?)
    }

    async fn request_run(
        &self,
        tenant: TenantId,
        endpoint: Uuid,
        now: DateTime<Utc>,
        full: bool,
        interval_seconds: Option<i32>,
        default_interval: i32,
    ) -> StoreResult<()> {
        let sql = "INSERT INTO pacs_sync_state (endpoint_id, tenant_id, next_run_at, interval_seconds, full_requested, updated_at) \
                   VALUES ($2, $1, $3, COALESCE($4, $6), $5, $3) \
                   ON CONFLICT (endpoint_id) DO UPDATE SET next_run_at = $3, updated_at = $3, \
                   full_requested = (pacs_sync_state.full_requested OR $5), \
                   interval_seconds = COALESCE($4, pacs_sync_state.interval_seconds) \
                   WHERE pacs_sync_state.tenant_id = $1";
        on_db!(&self.db, pool => sqlx::query(sql).bind(tenant.0).bind(endpoint).bind(now).bind(interval_seconds).bind(full)
            .bind(default_interval).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}
