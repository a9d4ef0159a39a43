//! Persistence of imaging studies. One SQL text for both backends.

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

/// A row of `imaging_studies`, columns in contract order.
#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct StudyRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub patient_id: Option<String>,
    pub encounter_id: Option<String>,
    pub order_id: Option<Uuid>,
    pub accession_number: Option<String>,
    pub modality: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub status: String,
    pub pacs_study_uid: String,
    pub pacs_endpoint_id: Option<Uuid>,
    pub description: Option<String>,
    pub number_of_series: Option<i32>,
    pub number_of_instances: Option<i32>,
    pub payload: Option<Json<Value>>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl StudyRow {
    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

#[derive(Debug, Default, Clone)]
pub struct StudyFilter {
    pub patient_id: Option<String>,
    pub accession_number: Option<String>,
    pub study_instance_uid: Option<String>,
    pub pacs_endpoint_id: Option<Uuid>,
    pub status: Option<String>,
}

#[async_trait]
pub trait StudyStore: Send + Sync {
    /// Inserts a study; the same Study Instance UID twice in a tenant is a `Conflict`.
    async fn insert(&self, tenant: TenantId, row: &StudyRow) -> StoreResult<()>;
    async fn get(&self, tenant: TenantId, id: Uuid) -> StoreResult<StudyRow>;
    async fn get_by_uid(&self, tenant: TenantId, study_instance_uid: &str) -> StoreResult<StudyRow>;
    async fn list(&self, tenant: TenantId, filter: &StudyFilter, page: &PageRequest) -> StoreResult<Vec<StudyRow>>;
}

pub struct SqlStudyStore {
    db: Db,
}

impl SqlStudyStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

const COLUMNS: &str = "id, tenant_id, patient_id, encounter_id, order_id, accession_number, modality, started_at, \
                       status, pacs_study_uid, pacs_endpoint_id, description, number_of_series, number_of_instances, \
                       payload, version, created_at, updated_at";

#[async_trait]
impl StudyStore for SqlStudyStore {
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, study_id = %row.id))]
    async fn insert(&self, tenant: TenantId, row: &StudyRow) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO imaging_studies ({COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
        );
        on_db!(&self.db, pool => sqlx::query(&sql)
            .bind(row.id).bind(tenant.0).bind(&row.patient_id).bind(&row.encounter_id).bind(row.order_id)
            .bind(&row.accession_number).bind(&row.modality).bind(row.started_at).bind(&row.status)
            .bind(&row.pacs_study_uid).bind(row.pacs_endpoint_id).bind(&row.description)
            .bind(row.number_of_series).bind(row.number_of_instances).bind(&row.payload).bind(row.version)
            .bind(row.created_at).bind(row.updated_at)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, study_id = %id))]
    async fn get(&self, tenant: TenantId, id: Uuid) -> StoreResult<StudyRow> {
        let sql = format!("SELECT {COLUMNS} FROM imaging_studies WHERE tenant_id = $1 AND id = $2");
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, StudyRow>(&sql)
            .bind(tenant.0).bind(id).fetch_optional(pool).await)?;
        row.ok_or(StoreError::NotFound)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    async fn get_by_uid(&self, tenant: TenantId, study_instance_uid: &str) -> StoreResult<StudyRow> {
        let sql = format!("SELECT {COLUMNS} FROM imaging_studies WHERE tenant_id = $1 AND pacs_study_uid = $2");
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, StudyRow>(&sql)
            .bind(tenant.0).bind(study_instance_uid).fetch_optional(pool).await)?;
        row.ok_or(StoreError::NotFound)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    async fn list(&self, tenant: TenantId, filter: &StudyFilter, page: &PageRequest) -> StoreResult<Vec<StudyRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM imaging_studies WHERE tenant_id = $1 \
             AND ($2 IS NULL OR patient_id = $2) AND ($3 IS NULL OR accession_number = $3) \
             AND ($4 IS NULL OR pacs_study_uid = $4) AND ($5 IS NULL OR pacs_endpoint_id = $5) \
             AND ($6 IS NULL OR status = $6) \
             AND ($7 IS NULL OR created_at > $7 OR (created_at = $7 AND id > $8)) \
             ORDER BY created_at, id LIMIT $9"
        );
        let rows = on_db!(&self.db, pool => sqlx::query_as::<_, StudyRow>(&sql)
            .bind(tenant.0).bind(&filter.patient_id).bind(&filter.accession_number)
            .bind(&filter.study_instance_uid).bind(filter.pacs_endpoint_id).bind(&filter.status)
            .bind(page.after.map(|c| c.created_at)).bind(page.after.map(|c| c.id)).bind(page.fetch_limit())
            .fetch_all(pool).await)?;
        Ok(rows)
    }
}
