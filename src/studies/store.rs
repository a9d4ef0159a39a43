//! Persistence of imaging studies. One SQL text for both backends.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use crate::auth::TenantId;
use crate::db::error::StoreResult;
use crate::db::{Db, StoreError};
use crate::bind_args;
use crate::db::begin_write;
use crate::db::sql::{AfterWrite, Arg, BindArray, SqlBuf};
pub use crate::db::sql::UpsertOutcome;
use crate::interop::fhir::resource::{carry_tags, tag_terms, token_term};
use crate::run_followups;
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

pub use crate::db::sql::Bound;

/// A search of the study index, shared by REST and FHIR. Lists within a field are
/// alternatives (OR); fields combine with AND.
#[derive(Debug, Default, Clone)]
pub struct StudyQuery {
    pub ids: Vec<Uuid>,
    pub patient_id: Option<String>,
    pub accession_number: Option<String>,
    pub study_instance_uid: Option<String>,
    /// Matches a Study Instance UID or an accession number.
    pub identifier_any: Option<String>,
    pub pacs_endpoint_id: Option<Uuid>,
    pub statuses: Vec<String>,
    pub modalities: Vec<String>,
    pub started: Vec<Bound>,
    pub last_updated: Vec<Bound>,
    /// `meta.tag` (system, code); no system matches any.
    pub tags: Vec<(Option<String>, String)>,
}

/// A study as a source (QIDO-RS sync, import) describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyUpsert {
    pub study_instance_uid: String,
    pub patient_id: Option<String>,
    pub accession_number: Option<String>,
    pub modality: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub status: String,
    pub pacs_endpoint_id: Option<Uuid>,
    pub description: Option<String>,
    pub number_of_series: Option<i32>,
    pub number_of_instances: Option<i32>,
    /// The FHIR ImagingStudy without `id` and `meta.versionId`/`meta.lastUpdated`.
    pub payload: Value,
    /// `payload` as JSON text when the source has it already (an import keeps the
    /// line it read, see `text_from_line`); `None` serializes `payload`.
    pub payload_text: Option<String>,
}

impl StudyUpsert {
    /// The payload's JSON text, as stored by an insert.
    fn payload_text(&self) -> String {
        self.payload_text.clone().unwrap_or_else(|| self.payload.to_string())
    }

    /// The payload to store over `row`: this one, with the tags of the stored version
    /// carried over (FHIR keeps tags across updates).
    fn payload_over(&self, row: &StudyRow) -> Value {
        row.payload.as_ref().and_then(|old| carry_tags(&self.payload, &old.0)).unwrap_or_else(|| self.payload.clone())
    }

    /// True when `row` already says everything this upsert says. An upsert without an
    /// endpoint (an import) keeps the row's endpoint.
    fn matches(&self, row: &StudyRow, payload: &Value) -> bool {
        row.patient_id == self.patient_id
            && row.accession_number == self.accession_number
            && row.modality == self.modality
            && row.started_at == self.started_at
            && row.status == self.status
            && (self.pacs_endpoint_id.is_none() || row.pacs_endpoint_id == self.pacs_endpoint_id)
            && row.description == self.description
            && row.number_of_series == self.number_of_series
            && row.number_of_instances == self.number_of_instances
            && row.payload.as_ref().map(|p| &p.0) == Some(payload)
    }
}

/// One stored version of a study (FHIR vread).
#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct StudyVersion {
    pub study_id: Uuid,
    pub version: i32,
    pub status: String,
    pub payload: Option<Json<Value>>,
    pub recorded_at: DateTime<Utc>,
}

#[async_trait]
pub trait StudyStore: Send + Sync {
    /// Creates the study, or updates it (version + 1) when anything changed; an
    /// unchanged study is not rewritten. Idempotent by (tenant, Study Instance UID),
    /// and safe under concurrent callers.
    async fn upsert(&self, tenant: TenantId, study: &StudyUpsert) -> StoreResult<UpsertOutcome>;
    /// Studies of an endpoint (created, updated) since `since`: the exact outcome of a
    /// sync run, whatever restarts it went through.
    async fn count_changes_since(&self, tenant: TenantId, endpoint: Uuid, since: DateTime<Utc>) -> StoreResult<(i64, i64)>;
    /// [`StudyStore::upsert`] for a batch, in one transaction and a few statements per
    /// 500 studies: one lookup, one multi-row insert, updates only for studies that
    /// changed (with `after.insert_first`, the insert goes first and only the studies it
    /// found stored are looked up). `after` adds statements to the same transaction (a
    /// fenced checkpoint); if a fence fails nothing is written. Outcomes are in input
    /// order; UIDs must be distinct.
    async fn upsert_batch(&self, tenant: TenantId, studies: &[StudyUpsert], after: Option<AfterWrite<'_>>) -> StoreResult<Vec<UpsertOutcome>>;
    /// [`StudyStore::upsert_batch`] with nothing else in the transaction (one window of a sync).
    async fn upsert_many(&self, tenant: TenantId, studies: &[StudyUpsert]) -> StoreResult<Vec<UpsertOutcome>> {
        crate::db::error::retry_transient(|| self.upsert_batch(tenant, studies, None)).await
    }
    /// One version of a study, as it was.
    async fn get_version(&self, tenant: TenantId, id: Uuid, version: i32) -> StoreResult<StudyVersion>;
    /// Inserts a study; the same Study Instance UID twice in a tenant is a `Conflict`.
    async fn insert(&self, tenant: TenantId, row: &StudyRow) -> StoreResult<()>;
    async fn get(&self, tenant: TenantId, id: Uuid) -> StoreResult<StudyRow>;
    async fn get_by_uid(&self, tenant: TenantId, study_instance_uid: &str) -> StoreResult<StudyRow>;
    async fn list(&self, tenant: TenantId, query: &StudyQuery, page: &PageRequest) -> StoreResult<Vec<StudyRow>>;
    async fn count(&self, tenant: TenantId, query: &StudyQuery) -> StoreResult<i64>;
}

pub struct SqlStudyStore {
    db: Db,
}

/// Writes a changed study (optimistic: only if still at version `$14`).
const UPDATE_CHANGED: &str = "UPDATE imaging_studies SET patient_id = $3, accession_number = $4, modality = $5, started_at = $6, \
    status = $7, pacs_endpoint_id = COALESCE($8, pacs_endpoint_id), description = $9, number_of_series = $10, number_of_instances = $11, \
    payload = $12, version = version + 1, updated_at = $13, tags = $15 WHERE tenant_id = $1 AND id = $2 AND version = $14";

/// Keeps a superseded version of a study (FHIR vread); the current one is the row.
/// Databases written before this rule also hold current versions, hence the ON CONFLICT.
const INSERT_VERSION: &str = "INSERT INTO imaging_study_versions (tenant_id, study_id, version, status, payload, recorded_at) \
    VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, study_id, version) DO NOTHING";

/// Studies per multi-row statement on SQLite (18 arguments each; at most 32,766);
/// PostgreSQL takes a whole batch as one array per column.
const UPSERT_BATCH: usize = 500;

impl SqlStudyStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    fn where_clause(&self, tenant: TenantId, q: &StudyQuery, sql: &mut SqlBuf) {
        let t = sql.arg(Arg::Uuid(tenant.0));
        sql.push(&format!(" WHERE tenant_id = {t}"));
        let any = |sql: &mut SqlBuf, terms: Vec<String>| {
            if !terms.is_empty() {
                sql.push(&format!(" AND ({})", terms.join(" OR ")));
            }
        };
        let terms = q.ids.iter().map(|id| format!("id = {}", sql.arg(Arg::Uuid(*id)))).collect();
        any(sql, terms);
        for (column, value) in [
            ("patient_id", &q.patient_id),
            ("accession_number", &q.accession_number),
            ("pacs_study_uid", &q.study_instance_uid),
        ] {
            if let Some(v) = value {
                let p = sql.arg(Arg::Text(v.clone()));
                sql.push(&format!(" AND {column} = {p}"));
            }
        }
        if let Some(v) = &q.identifier_any {
            let p = sql.arg(Arg::Text(v.clone()));
            sql.push(&format!(" AND (pacs_study_uid = {p} OR accession_number = {p})"));
        }
        if let Some(e) = q.pacs_endpoint_id {
            let p = sql.arg(Arg::Uuid(e));
            sql.push(&format!(" AND pacs_endpoint_id = {p}"));
        }
        let terms = q.statuses.iter().map(|s| format!("status = {}", sql.arg(Arg::Text(s.clone())))).collect();
        any(sql, terms);
        // `modality` holds ModalitiesInStudy joined with '\'; match one whole value.
        let terms = q
            .modalities
            .iter()
            .map(|m| format!("(',' || REPLACE(modality, '\\', ',') || ',') LIKE {}", sql.arg(Arg::Text(format!("%,{},%", m.to_ascii_uppercase())))))
            .collect();
        any(sql, terms);
        sql.push_bounds("started_at", &q.started).push_bounds("updated_at", &q.last_updated);
        let terms = q.tags.iter().map(|(system, code)| token_term("_tag", system.as_deref(), code)).collect();
        sql.push_tags(&self.db, "tags", "payload", &q.tags, terms);
    }
}

/// [`COLUMNS`] with their PostgreSQL types, and the `_tag` search terms (`tags`) that
/// reads do not need (bulk inserts).
const COLUMN_TYPES: &[(&str, &str)] = &[
    ("id", "uuid"), ("tenant_id", "uuid"), ("patient_id", "text"), ("encounter_id", "text"), ("order_id", "uuid"),
    ("accession_number", "text"), ("modality", "text"), ("started_at", "timestamptz"), ("status", "text"),
    ("pacs_study_uid", "text"), ("pacs_endpoint_id", "uuid"), ("description", "text"), ("number_of_series", "integer"),
    ("number_of_instances", "integer"), ("payload", "json"), ("version", "integer"), ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"), ("tags", "text[]"),
];

const COLUMNS: &str = "id, tenant_id, patient_id, encounter_id, order_id, accession_number, modality, started_at, \
                       status, pacs_study_uid, pacs_endpoint_id, description, number_of_series, number_of_instances, \
                       payload, version, created_at, updated_at";

/// [`COLUMNS`] as reads see them: a study's `order_id` is the order that names it (by
/// Study Instance UID or accession number) when the column itself is empty, so orders and
/// studies link whichever arrived first.
const READ_COLUMNS: &str = "id, tenant_id, patient_id, encounter_id, \
    COALESCE(order_id, (SELECT o.id FROM orders o WHERE o.tenant_id = imaging_studies.tenant_id \
        AND (o.study_uid = imaging_studies.pacs_study_uid OR o.accession_number = imaging_studies.accession_number) \
        ORDER BY o.created_at, o.id LIMIT 1)) AS order_id, \
    accession_number, modality, started_at, status, pacs_study_uid, pacs_endpoint_id, description, number_of_series, \
    number_of_instances, payload, version, created_at, updated_at";

#[async_trait]
impl StudyStore for SqlStudyStore {
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, study_id = %row.id))]
    async fn insert(&self, tenant: TenantId, row: &StudyRow) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO imaging_studies ({COLUMNS}, tags) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        );
        let tags = row.payload.as_ref().map(|p| tag_terms(&p.0)).unwrap_or_default();
        on_db!(&self.db, pool => BindArray::bind_list(sqlx::query(&sql)
            .bind(row.id).bind(tenant.0).bind(&row.patient_id).bind(&row.encounter_id).bind(row.order_id)
            .bind(&row.accession_number).bind(&row.modality).bind(row.started_at).bind(&row.status)
            .bind(&row.pacs_study_uid).bind(row.pacs_endpoint_id).bind(&row.description)
            .bind(row.number_of_series).bind(row.number_of_instances).bind(&row.payload).bind(row.version)
            .bind(row.created_at).bind(row.updated_at), &tags)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    async fn upsert(&self, tenant: TenantId, study: &StudyUpsert) -> StoreResult<UpsertOutcome> {
        Ok(self.upsert_batch(tenant, std::slice::from_ref(study), None).await?[0])
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, studies = studies.len()))]
    async fn upsert_batch(&self, tenant: TenantId, studies: &[StudyUpsert], after: Option<AfterWrite<'_>>) -> StoreResult<Vec<UpsertOutcome>> {
        on_db!(&self.db, pool => async {
            let now = crate::db::now();
            let mut tx = begin_write(pool).await?;
            let insert_first = after.as_ref().is_some_and(|a| a.insert_first);
            let mut outcomes: Vec<Option<UpsertOutcome>> = vec![None; studies.len()];
            let chunk_size = self.db.batch_rows(studies.len(), UPSERT_BATCH);
            for (chunk_index, chunk) in studies.chunks(chunk_size).enumerate() {
                let offset = chunk_index * chunk_size;
                // PostgreSQL locks the rows it may update, so concurrent writers of one
                // study queue; SQLite's BEGIN IMMEDIATE already serializes writers. An
                // insert that loses a race (ON CONFLICT DO NOTHING) is looked up again.
                let mut pending: Vec<usize> = (0..chunk.len()).collect();
                for attempt in 0..5 {
                    if pending.is_empty() {
                        break;
                    }
                    // Insert-first (see AfterWrite::insert_first): no lookup the first time; the
                    // rows whose insert met an existing one come back as pending.
                    let existing: Vec<StudyRow> = if attempt == 0 && insert_first {
                        Vec::new()
                    } else {
                        let keys = pending.iter().map(|i| chunk[*i].study_instance_uid.clone()).collect();
                        let lookup = SqlBuf::locked_lookup(&self.db, COLUMNS, "imaging_studies", tenant.0, "pacs_study_uid", keys);
                        bind_args!(sqlx::query_as::<_, StudyRow>(&lookup.text), &lookup.args).fetch_all(&mut *tx).await?
                    };
                    let by_uid: std::collections::HashMap<&str, &StudyRow> =
                        existing.iter().map(|r| (r.pacs_study_uid.as_str(), r)).collect();
                    let mut new: Vec<(usize, Uuid)> = Vec::new();
                    for &i in &pending {
                        let study = &chunk[i];
                        let Some(row) = by_uid.get(study.study_instance_uid.as_str()) else {
                            new.push((i, Uuid::now_v7())); // time-ordered: appends at the primary key's right edge
                            continue;
                        };
                        let payload = study.payload_over(row);
                        if study.matches(row, &payload) {
                            outcomes[offset + i] = Some(UpsertOutcome::Unchanged(row.id));
                            continue;
                        }
                        sqlx::query(INSERT_VERSION).bind(tenant.0).bind(row.id).bind(row.version).bind(&row.status)
                            .bind(&row.payload).bind(row.updated_at).execute(&mut *tx).await?;
                        let tags = tag_terms(&payload);
                        let update = sqlx::query(UPDATE_CHANGED)
                            .bind(tenant.0).bind(row.id).bind(&study.patient_id).bind(&study.accession_number)
                            .bind(&study.modality).bind(study.started_at).bind(&study.status).bind(study.pacs_endpoint_id)
                            .bind(&study.description).bind(study.number_of_series).bind(study.number_of_instances)
                            .bind(Json(&payload)).bind(now).bind(row.version);
                        BindArray::bind_list(update, &tags).execute(&mut *tx).await?;
                        outcomes[offset + i] = Some(UpsertOutcome::Updated(row.id));
                    }
                    pending.clear();
                    if new.is_empty() {
                        continue;
                    }
                    new.sort_by(|a, b| chunk[a.0].study_instance_uid.cmp(&chunk[b.0].study_instance_uid));
                    let rows = new
                        .iter()
                        .map(|(i, id)| {
                            let s = &chunk[*i];
                            vec![
                                Arg::Uuid(*id), Arg::Uuid(tenant.0), Arg::OptText(s.patient_id.clone()), Arg::OptText(None), Arg::OptUuid(None),
                                Arg::OptText(s.accession_number.clone()), Arg::OptText(s.modality.clone()), Arg::OptTime(s.started_at),
                                Arg::Text(s.status.clone()), Arg::Text(s.study_instance_uid.clone()), Arg::OptUuid(s.pacs_endpoint_id),
                                Arg::OptText(s.description.clone()), Arg::OptInt32(s.number_of_series), Arg::OptInt32(s.number_of_instances),
                                Arg::JsonText(s.payload_text()),
                                Arg::OptInt32(Some(1)), Arg::Time(now), Arg::Time(now), Arg::TextList(tag_terms(&s.payload)),
                            ]
                        })
                        .collect();
                    let mut insert = SqlBuf::bulk_insert(&self.db, "imaging_studies", COLUMN_TYPES, rows);
                    insert.push(" ON CONFLICT (tenant_id, pacs_study_uid) DO NOTHING RETURNING id");
                    let inserted: std::collections::HashSet<Uuid> =
                        bind_args!(sqlx::query_scalar::<_, Uuid>(&insert.text), &insert.args).fetch_all(&mut *tx).await?.into_iter().collect();
                    for (i, id) in new {
                        if inserted.contains(&id) {
                            outcomes[offset + i] = Some(UpsertOutcome::Created(id));
                        } else {
                            pending.push(i);
                        }
                    }
                }
                if !pending.is_empty() {
                    return Err(StoreError::Conflict("studies kept changing under concurrent writers".into()));
                }
            }
            let outcomes: Vec<UpsertOutcome> = outcomes.into_iter().map(|o| o.expect("every study decided")).collect();
            if let Some(after) = after {
                let followups = after.gate().await?;
                run_followups!(tx, followups(&outcomes))?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(outcomes)
        }.await)
    }

    async fn count_changes_since(&self, tenant: TenantId, endpoint: Uuid, since: DateTime<Utc>) -> StoreResult<(i64, i64)> {
        let sql = "SELECT COALESCE(SUM(CASE WHEN created_at >= $3 THEN 1 ELSE 0 END), 0), \
                          COALESCE(SUM(CASE WHEN created_at < $3 THEN 1 ELSE 0 END), 0) \
                   FROM imaging_studies WHERE tenant_id = $1 AND pacs_endpoint_id = $2 AND updated_at >= $3";
        let counts: (i64, i64) = on_db!(&self.db, pool => sqlx::query_as(sql)
            .bind(tenant.0).bind(endpoint).bind(since).fetch_one(pool).await)?;
        Ok(counts)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, study_id = %id))]
    async fn get_version(&self, tenant: TenantId, id: Uuid, version: i32) -> StoreResult<StudyVersion> {
        let sql = "SELECT study_id, version, status, payload, recorded_at FROM imaging_study_versions \
                   WHERE tenant_id = $1 AND study_id = $2 AND version = $3";
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, StudyVersion>(sql)
            .bind(tenant.0).bind(id).bind(version).fetch_optional(pool).await)?;
        match row {
            Some(v) => Ok(v),
            None => {
                let current = self.get(tenant, id).await?;
                if current.version != version {
                    return Err(StoreError::NotFound);
                }
                Ok(StudyVersion { study_id: id, version, status: current.status, payload: current.payload, recorded_at: current.updated_at })
            }
        }
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, study_id = %id))]
    async fn get(&self, tenant: TenantId, id: Uuid) -> StoreResult<StudyRow> {
        let sql = format!("SELECT {READ_COLUMNS} FROM imaging_studies WHERE tenant_id = $1 AND id = $2");
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, StudyRow>(&sql)
            .bind(tenant.0).bind(id).fetch_optional(pool).await)?;
        row.ok_or(StoreError::NotFound)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    async fn get_by_uid(&self, tenant: TenantId, study_instance_uid: &str) -> StoreResult<StudyRow> {
        let sql = format!("SELECT {READ_COLUMNS} FROM imaging_studies WHERE tenant_id = $1 AND pacs_study_uid = $2");
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, StudyRow>(&sql)
            .bind(tenant.0).bind(study_instance_uid).fetch_optional(pool).await)?;
        row.ok_or(StoreError::NotFound)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    async fn list(&self, tenant: TenantId, query: &StudyQuery, page: &PageRequest) -> StoreResult<Vec<StudyRow>> {
        let mut sql = SqlBuf::new(format!("SELECT {READ_COLUMNS} FROM imaging_studies"));
        self.where_clause(tenant, query, &mut sql);
        sql.push_page("", "created_at", page);
        let rows = on_db!(&self.db, pool => bind_args!(sqlx::query_as::<_, StudyRow>(&sql.text), &sql.args)
            .fetch_all(pool).await)?;
        Ok(rows)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    async fn count(&self, tenant: TenantId, query: &StudyQuery) -> StoreResult<i64> {
        let mut sql = SqlBuf::new("SELECT COUNT(*) FROM imaging_studies");
        self.where_clause(tenant, query, &mut sql);
        let n = on_db!(&self.db, pool => bind_args!(sqlx::query_scalar::<_, i64>(&sql.text), &sql.args)
            .fetch_one(pool).await)?;
        Ok(n)
    }
}
