//! Persistence of PACS endpoints (`pacs_endpoints`). One SQL text for both backends.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use crate::auth::TenantId;
use crate::db::error::StoreResult;
use crate::db::{Db, StoreError};
use crate::on_db;
use crate::pagination::{Cursor, PageRequest};

/// A row of `pacs_endpoints`. `name` and `auth_mode` are optional because rows copied
/// from the legacy module by hand may lack them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndpointRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub node_id: String,
    pub name: Option<String>,
    pub qido_url: String,
    pub wado_url: Option<String>,
    pub stow_url: Option<String>,
    pub auth_mode: Option<String>,
    pub auth_config: Option<Json<Value>>,
    pub facility_id: Option<Uuid>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub timeout_ms: i32,
    pub last_test: Option<Json<Value>>,
}

impl EndpointRow {
    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

#[derive(Debug, Default, Clone)]
pub struct EndpointFilter {
    pub facility_id: Option<Uuid>,
    pub node_id: Option<String>,
    pub active: Option<bool>,
}

#[async_trait]
pub trait PacsStore: Send + Sync {
    /// Inserts a new endpoint. A second active endpoint on one node is a `Conflict`.
    async fn insert(&self, tenant: TenantId, row: &EndpointRow) -> StoreResult<()>;
    async fn get(&self, tenant: TenantId, id: Uuid) -> StoreResult<EndpointRow>;
    async fn list(&self, tenant: TenantId, filter: &EndpointFilter, page: &PageRequest) -> StoreResult<Vec<EndpointRow>>;
    /// Writes every mutable column of `row`.
    async fn update(&self, tenant: TenantId, row: &EndpointRow) -> StoreResult<()>;
    async fn set_last_test(&self, tenant: TenantId, id: Uuid, result: &Value) -> StoreResult<()>;
    /// Deletes an endpoint no study references; `Conflict` when studies reference it.
    async fn delete_unreferenced(&self, tenant: TenantId, id: Uuid) -> StoreResult<()>;
    /// System maintenance (start-up sealing): every endpoint's credentials, all tenants.
    async fn all_auth_configs(&self) -> StoreResult<Vec<(TenantId, Uuid, Option<Value>)>>;
    async fn replace_auth_config(&self, tenant: TenantId, id: Uuid, config: &Value) -> StoreResult<()>;
}

pub struct SqlPacsStore {
    db: Db,
}

impl SqlPacsStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

const COLUMNS: &str = "id, tenant_id, node_id, name, qido_url, wado_url, stow_url, auth_mode, auth_config, \
                       facility_id, active, created_at, updated_at, timeout_ms, last_test";

#[async_trait]
impl PacsStore for SqlPacsStore {
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, endpoint_id = %row.id))]
    async fn insert(&self, tenant: TenantId, row: &EndpointRow) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO pacs_endpoints ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        );
        on_db!(&self.db, pool => sqlx::query(&sql)
            .bind(row.id).bind(tenant.0).bind(&row.node_id).bind(&row.name).bind(&row.qido_url)
            .bind(&row.wado_url).bind(&row.stow_url).bind(&row.auth_mode).bind(&row.auth_config)
            .bind(row.facility_id).bind(row.active).bind(row.created_at).bind(row.updated_at)
            .bind(row.timeout_ms).bind(&row.last_test)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, endpoint_id = %id))]
    async fn get(&self, tenant: TenantId, id: Uuid) -> StoreResult<EndpointRow> {
        let sql = format!("SELECT {COLUMNS} FROM pacs_endpoints WHERE tenant_id = $1 AND id = $2");
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, EndpointRow>(&sql)
            .bind(tenant.0).bind(id).fetch_optional(pool).await)?;
        row.ok_or(StoreError::NotFound)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    async fn list(&self, tenant: TenantId, filter: &EndpointFilter, page: &PageRequest) -> StoreResult<Vec<EndpointRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM pacs_endpoints WHERE tenant_id = $1 \
             AND ($2 IS NULL OR facility_id = $2) AND ($3 IS NULL OR node_id = $3) AND ($4 IS NULL OR active = $4) \
             AND ($5 IS NULL OR created_at > $5 OR (created_at = $5 AND id > $6)) \
             ORDER BY created_at, id LIMIT $7"
        );
        let rows = on_db!(&self.db, pool => sqlx::query_as::<_, EndpointRow>(&sql)
            .bind(tenant.0).bind(filter.facility_id).bind(&filter.node_id).bind(filter.active)
            .bind(page.after.map(|c| c.created_at)).bind(page.after.map(|c| c.id)).bind(page.fetch_limit())
            .fetch_all(pool).await)?;
        Ok(rows)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, endpoint_id = %row.id))]
    async fn update(&self, tenant: TenantId, row: &EndpointRow) -> StoreResult<()> {
        let sql = "UPDATE pacs_endpoints SET node_id = $3, name = $4, qido_url = $5, wado_url = $6, stow_url = $7, \
                   auth_mode = $8, auth_config = $9, facility_id = $10, active = $11, updated_at = $12, timeout_ms = $13 \
                   WHERE tenant_id = $1 AND id = $2";
        let result = on_db!(&self.db, pool => sqlx::query(sql)
            .bind(tenant.0).bind(row.id).bind(&row.node_id).bind(&row.name).bind(&row.qido_url)
            .bind(&row.wado_url).bind(&row.stow_url).bind(&row.auth_mode).bind(&row.auth_config)
            .bind(row.facility_id).bind(row.active).bind(row.updated_at).bind(row.timeout_ms)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        if result == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, endpoint_id = %id))]
    async fn set_last_test(&self, tenant: TenantId, id: Uuid, result: &Value) -> StoreResult<()> {
        let sql = "UPDATE pacs_endpoints SET last_test = $3 WHERE tenant_id = $1 AND id = $2";
        let n = on_db!(&self.db, pool => sqlx::query(sql).bind(tenant.0).bind(id).bind(Json(result))
            .execute(pool).await.map(|r| r.rows_affected()))?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, endpoint_id = %id))]
    async fn delete_unreferenced(&self, tenant: TenantId, id: Uuid) -> StoreResult<()> {
        // One statement, so a study cannot slip in between the check and the delete.
        let sql = "DELETE FROM pacs_endpoints WHERE tenant_id = $1 AND id = $2 AND NOT EXISTS \
                   (SELECT 1 FROM imaging_studies s WHERE s.tenant_id = $1 AND s.pacs_endpoint_id = $2)";
        let n = on_db!(&self.db, pool => sqlx::query(sql).bind(tenant.0).bind(id)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        if n == 0 {
            self.get(tenant, id).await?;
            return Err(StoreError::Conflict("imaging studies reference this endpoint".into()));
        }
        Ok(())
    }

    async fn all_auth_configs(&self) -> StoreResult<Vec<(TenantId, Uuid, Option<Value>)>> {
        let sql = "SELECT tenant_id, id, auth_config FROM pacs_endpoints ORDER BY tenant_id, id";
        let rows: Vec<(Uuid, Uuid, Option<Json<Value>>)> =
            on_db!(&self.db, pool => sqlx::query_as(sql).fetch_all(pool).await)?;
        Ok(rows.into_iter().map(|(t, id, c)| (TenantId(t), id, c.map(|j| j.0))).collect())
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, endpoint_id = %id))]
    async fn replace_auth_config(&self, tenant: TenantId, id: Uuid, config: &Value) -> StoreResult<()> {
        let sql = "UPDATE pacs_endpoints SET auth_config = $3 WHERE tenant_id = $1 AND id = $2";
        on_db!(&self.db, pool => sqlx::query(sql).bind(tenant.0).bind(id).bind(Json(config)).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}
