//! Persistence of radiology reports. One SQL text for both backends, but for the
//! token search (a PostgreSQL array, JSON text on SQLite).
//!
//! A report row holds the FHIR DiagnosticReport (`payload`) and the columns searches
//! need. The token and reference parameters identifier, category, code, based-on and
//! imaging-study, and the `_tag`s, are the row's `tokens` (see [`search_tokens`]; a GIN
//! index on PostgreSQL). Links to imaging studies are resolved when read, from the
//! report's own `imagingStudy` references, so a report imported before its study (or
//! whose study arrives later by sync) links as soon as the study exists.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use crate::auth::TenantId;
use crate::db::error::StoreResult;
use crate::db::sql::{AfterWrite, Arg, ArrayArg, BindArray, SqlBuf, UpsertOutcome};
use crate::db::{begin_write, Db, StoreError};
use crate::interop::fhir::resource::carry_tags;
use crate::pagination::{Cursor, PageRequest};
use crate::db::sql::Bound;
use crate::{bind_args, on_db, run_followups};

/// A row of `diagnostic_reports`.
#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct ReportRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub business_key: String,
    pub source_id: Option<String>,
    pub patient_id: Option<String>,
    pub status: String,
    pub effective_at: Option<DateTime<Utc>>,
    pub issued: Option<DateTime<Utc>>,
    pub critical: bool,
    pub order_id: Option<Uuid>,
    pub payload: Json<Value>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ReportRow {
    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }
}

/// One value of a token or reference search parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// `identifier`, `category`, `code`, `based-on` or `imaging-study`.
    pub param: &'static str,
    /// The token's system; for `imaging-study`, `ref` when `value` is a referenced id.
    pub system: Option<String>,
    pub value: Option<String>,
    /// `imaging-study` only: the Study Instance UID when the reference names it.
    pub study_uid: Option<String>,
}

pub use crate::interop::fhir::resource::token_term;
use crate::interop::fhir::resource::tag_terms;

/// The `tokens` of a report: for each indexed value but `imaging-study`, and each
/// `meta.tag` of the stored `payload` (as `_tag`), its exact term (an absent system as
/// "") and its any-system term; for each `imaging-study` reference, its
/// [`study_terms`]; sorted, without repeats. Migrations 0005 and 0007 derive the same
/// for the reports stored before them.
pub fn search_tokens(index: &[IndexEntry], payload: &Value) -> Vec<String> {
    let values = index
        .iter()
        .filter(|e| e.param != IMAGING_STUDY)
        .filter_map(|e| e.value.as_deref().map(|v| (e.param, e.system.as_deref(), v)));
    let mut tokens: Vec<String> =
        values.flat_map(|(param, system, v)| [token_term(param, Some(system.unwrap_or("")), v), token_term(param, None, v)]).collect();
    tokens.extend(tag_terms(payload));
    tokens.extend(index.iter().filter(|e| e.param == IMAGING_STUDY).flat_map(study_terms));
    tokens.sort_unstable();
    tokens.dedup();
    tokens
}

const IMAGING_STUDY: &str = "imaging-study";

/// The search terms of one `imaging-study` reference: `imaging-study|ref|<id>` for the
/// id it references, `imaging-study|uid|<UID>` for the Study Instance UID it names, and
/// `imaging-study|src|<id>` when it references an id and names no UID, so that it is
/// found from the study that had that id in its source (`fhir_source_ids`); a reference
/// that names a UID links to that study only.
fn study_terms(e: &IndexEntry) -> Vec<String> {
    let id = e.value.as_deref().filter(|_| e.system.as_deref() == Some("ref"));
    let mut terms = Vec::with_capacity(3);
    if let Some(id) = id {
        terms.push(token_term(IMAGING_STUDY, Some("ref"), id));
    }
    match (&e.study_uid, id) {
        (Some(uid), _) => terms.push(token_term(IMAGING_STUDY, Some("uid"), uid)),
        (None, Some(id)) => terms.push(token_term(IMAGING_STUDY, Some("src"), id)),
        (None, None) => {}
    }
    terms
}

/// A report as a source (bulk import, ORU^R01) describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportUpsert {
    pub business_key: String,
    pub source_id: Option<String>,
    pub patient_id: Option<String>,
    pub status: String,
    pub effective_at: Option<DateTime<Utc>>,
    pub issued: Option<DateTime<Utc>>,
    /// `None` keeps what the stored report says (an import does not know).
    pub critical: Option<bool>,
    /// `None` keeps the order a stored report is linked to.
    pub order_id: Option<Uuid>,
    /// The DiagnosticReport without `id` and `meta.versionId`/`meta.lastUpdated`.
    pub payload: Value,
    /// `payload` as JSON text when the source has it already (an import keeps the
    /// line it read, see `text_from_line`); `None` serializes `payload`.
    pub payload_text: Option<String>,
    pub index: Vec<IndexEntry>,
}

impl ReportUpsert {
    /// The payload's JSON text, as stored by an insert.
    fn payload_text(&self) -> String {
        self.payload_text.clone().unwrap_or_else(|| self.payload.to_string())
    }

    fn payload_over(&self, row: &ReportRow) -> Value {
        carry_tags(&self.payload, &row.payload.0).unwrap_or_else(|| self.payload.clone())
    }

    fn matches(&self, row: &ReportRow, payload: &Value) -> bool {
        row.patient_id == self.patient_id
            && row.status == self.status
            && row.effective_at == self.effective_at
            && row.issued == self.issued
            && (self.critical.is_none() || Some(row.critical) == self.critical)
            && row.source_id == self.source_id
            && (self.order_id.is_none() || row.order_id == self.order_id)
            && &row.payload.0 == payload
    }
}

/// One stored version of a report (FHIR vread).
#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct ReportVersion {
    pub report_id: Uuid,
    pub version: i32,
    pub status: String,
    pub payload: Json<Value>,
    pub recorded_at: DateTime<Utc>,
}

/// A report's link to an imaging study, as resolved now.
#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct StudyLink {
    pub report_id: Uuid,
    /// The referenced id (`ImagingStudy/<ref_id>`), when the reference was literal.
    pub ref_id: Option<String>,
    /// The Study Instance UID, from the reference or from the referenced study.
    pub study_uid: Option<String>,
    /// Our study, once it exists.
    pub study_id: Option<Uuid>,
}

/// Which studies an `imaging-study` search matches: by UID, or by referenced id.
#[derive(Debug, Default, Clone)]
pub struct StudyMatch {
    pub uids: Vec<String>,
    pub ref_ids: Vec<String>,
}

/// A token search value: (system, code); a `Some("")` system means "no system".
pub type Token = (Option<String>, String);

/// A search of the reports, shared by REST and FHIR. Lists within a field are
/// alternatives (OR); fields combine with AND.
#[derive(Debug, Default, Clone)]
pub struct ReportQuery {
    pub ids: Vec<Uuid>,
    pub patient_id: Option<String>,
    pub statuses: Vec<String>,
    /// (param, system, value) token conditions on the index; each is ANDed, the
    /// alternatives inside one are ORed.
    pub tokens: Vec<(&'static str, Vec<Token>)>,
    pub effective: Vec<Bound>,
    pub last_updated: Vec<Bound>,
    pub tags: Vec<(Option<String>, String)>,
    pub imaging_study: Option<StudyMatch>,
    pub critical: Option<bool>,
}

#[async_trait]
pub trait ReportStore: Send + Sync {
    /// Creates each report, or updates it (version + 1) when anything changed; an
    /// unchanged report is not rewritten. Idempotent by (tenant, business key), in one
    /// transaction with `after`'s statements. Keys must be distinct within a batch.
    async fn upsert_batch(&self, tenant: TenantId, reports: &[ReportUpsert], after: Option<AfterWrite<'_>>) -> StoreResult<Vec<UpsertOutcome>>;
    async fn get(&self, tenant: TenantId, id: Uuid) -> StoreResult<ReportRow>;
    /// One version of a report, as it was.
    async fn get_version(&self, tenant: TenantId, id: Uuid, version: i32) -> StoreResult<ReportVersion>;
    async fn list(&self, tenant: TenantId, query: &ReportQuery, page: &PageRequest) -> StoreResult<Vec<ReportRow>>;
    async fn count(&self, tenant: TenantId, query: &ReportQuery) -> StoreResult<i64>;
    /// The imaging-study links of these reports (from their `imagingStudy` references),
    /// resolved against the studies stored now.
    async fn study_links(&self, tenant: TenantId, reports: &[ReportRow]) -> StoreResult<Vec<StudyLink>>;
}

pub struct SqlReportStore {
    db: Db,
}

const COLUMN_TYPES: &[(&str, &str)] = &[
    ("id", "uuid"), ("tenant_id", "uuid"), ("business_key", "text"), ("source_id", "text"), ("patient_id", "text"),
    ("status", "text"), ("effective_at", "timestamptz"), ("issued", "timestamptz"), ("critical", "boolean"),
    ("order_id", "uuid"), ("payload", "json"), ("version", "integer"), ("created_at", "timestamptz"), ("updated_at", "timestamptz"),
    ("tokens", "text[]"),
];

const COLUMNS: &str = "id, tenant_id, business_key, source_id, patient_id, status, effective_at, issued, critical, \
                       order_id, payload, version, created_at, updated_at";

const UPDATE_CHANGED: &str = "UPDATE diagnostic_reports SET source_id = $3, patient_id = $4, status = $5, effective_at = $6, \
    issued = $7, critical = COALESCE($8, critical), order_id = COALESCE($9, order_id), payload = $10, version = version + 1, updated_at = $11, \
    tokens = $12 WHERE tenant_id = $1 AND id = $2";

const INSERT_VERSION: &str = "INSERT INTO diagnostic_report_versions (tenant_id, report_id, version, status, payload, recorded_at) \
    VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, report_id, version) DO NOTHING";

/// Reports per multi-row statement on SQLite (15 arguments each); PostgreSQL takes a
/// whole batch as one array per column.
const BATCH: usize = 500;

impl SqlReportStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// `SELECT <key>, <value> FROM <table> WHERE tenant_id = … <filter> AND <key> IN (keys)`,
    /// as a map from key to value.
    async fn map_by_keys<V>(&self, tenant: TenantId, table: &str, filter: &str, (key, value): (&str, &str), keys: HashSet<String>) -> StoreResult<HashMap<String, V>>
    where
        V: Send + Unpin,
        V: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
        V: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
    {
        let mut sql = SqlBuf::new(format!("SELECT {key}, {value} FROM {table} WHERE tenant_id = "));
        let t = sql.arg(Arg::Uuid(tenant.0));
        sql.push(&t).push(filter).push(" AND ");
        sql.push_in_keys(&self.db, key, keys.into_iter().collect());
        let rows = on_db!(&self.db, pool => bind_args!(sqlx::query_as::<_, (String, V)>(&sql.text), &sql.args).fetch_all(pool).await)?;
        Ok(rows.into_iter().collect())
    }

    fn where_clause(&self, tenant: TenantId, q: &ReportQuery, sql: &mut SqlBuf) {
        let t = sql.arg(Arg::Uuid(tenant.0));
        sql.push(&format!(" WHERE r.tenant_id = {t}"));
        let any = |sql: &mut SqlBuf, terms: Vec<String>| {
            if !terms.is_empty() {
                sql.push(&format!(" AND ({})", terms.join(" OR ")));
            }
        };
        let terms = q.ids.iter().map(|id| format!("r.id = {}", sql.arg(Arg::Uuid(*id)))).collect();
        any(sql, terms);
        if let Some(p) = &q.patient_id {
            let p = sql.arg(Arg::Text(p.clone()));
            sql.push(&format!(" AND r.patient_id = {p}"));
        }
        if let Some(c) = q.critical {
            let c = sql.arg(Arg::Bool(c));
            sql.push(&format!(" AND r.critical = {c}"));
        }
        let terms = q.statuses.iter().map(|s| format!("r.status = {}", sql.arg(Arg::Text(s.clone())))).collect();
        any(sql, terms);
        let tags = (!q.tags.is_empty()).then(|| ("_tag", q.tags.clone()));
        for (param, alternatives) in q.tokens.iter().chain(tags.as_ref()) {
            let terms: Vec<String> = alternatives.iter().map(|(system, value)| token_term(param, system.as_deref(), value)).collect();
            match &self.db {
                Db::Postgres(_) => {
                    let t = sql.arg(Arg::Array(ArrayArg::Text(terms.into_iter().map(Some).collect())));
                    sql.push(&format!(" AND r.tokens && CAST({t} AS text[])"));
                }
                Db::Sqlite(_) => {
                    let t = sql.arg(Arg::TextList(terms));
                    sql.push(&format!(" AND EXISTS (SELECT 1 FROM json_each(r.tokens) t WHERE t.value IN (SELECT value FROM json_each({t})))"));
                }
            }
        }
        if let Some(m) = &q.imaging_study {
            // A report names the study by the UID in a reference, by the id referenced, or
            // by the id the study had in its source when the reference names no UID
            // (fhir_source_ids maps that id to the UID); see study_terms. Report
            // references hold FHIR ids only, so a source id needing escapes matches none.
            let mut terms: Vec<String> = m.uids.iter().map(|u| token_term(IMAGING_STUDY, Some("uid"), u)).collect();
            terms.extend(m.ref_ids.iter().map(|v| token_term(IMAGING_STUDY, Some("ref"), v)));
            let sources = (!m.uids.is_empty()).then(|| {
                let uids: Vec<String> = m.uids.iter().map(|u| sql.arg(Arg::Text(u.clone()))).collect();
                // The tenant as an argument, not r.tenant_id: the subquery is run once, not per report.
                format!(
                    "SELECT '{IMAGING_STUDY}|src|' || m.source_id FROM fhir_source_ids m \
                     WHERE m.tenant_id = {t} AND m.resource_type = 'ImagingStudy' AND m.business_key IN ({})",
                    uids.join(", ")
                )
            });
            if terms.is_empty() {
                sql.push(" AND 1 = 0");
            } else {
                match &self.db {
                    Db::Postgres(_) => {
                        let a = sql.arg(Arg::Array(ArrayArg::Text(terms.into_iter().map(Some).collect())));
                        match sources {
                            Some(s) => sql.push(&format!(" AND r.tokens && (CAST({a} AS text[]) || ARRAY({s}))")),
                            None => sql.push(&format!(" AND r.tokens && CAST({a} AS text[])")),
                        };
                    }
                    Db::Sqlite(_) => {
                        let a = sql.arg(Arg::TextList(terms));
                        let sources = sources.map(|s| format!(" OR t.value IN ({s})")).unwrap_or_default();
                        sql.push(&format!(
                            " AND EXISTS (SELECT 1 FROM json_each(r.tokens) t WHERE t.value IN (SELECT value FROM json_each({a})){sources})"
                        ));
                    }
                }
            }
        }
        sql.push_bounds("r.effective_at", &q.effective).push_bounds("r.updated_at", &q.last_updated);
    }
}

#[async_trait]
impl ReportStore for SqlReportStore {
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, reports = reports.len()))]
    async fn upsert_batch(&self, tenant: TenantId, reports: &[ReportUpsert], after: Option<AfterWrite<'_>>) -> StoreResult<Vec<UpsertOutcome>> {
        on_db!(&self.db, pool => async {
            let now = crate::db::now();
            let mut tx = begin_write(pool).await?;
            let insert_first = after.as_ref().is_some_and(|a| a.insert_first);
            let mut outcomes: Vec<Option<UpsertOutcome>> = vec![None; reports.len()];
            let chunk_size = self.db.batch_rows(reports.len(), BATCH);
            for (chunk_index, chunk) in reports.chunks(chunk_size).enumerate() {
                let offset = chunk_index * chunk_size;
                let mut pending: Vec<usize> = (0..chunk.len()).collect();
                for attempt in 0..5 {
                    if pending.is_empty() {
                        break;
                    }
                    // Insert-first (see AfterWrite::insert_first): no lookup the first time; the
                    // rows whose insert met an existing one come back as pending.
                    let existing: Vec<ReportRow> = if attempt == 0 && insert_first {
                        Vec::new()
                    } else {
                        let keys = pending.iter().map(|i| chunk[*i].business_key.clone()).collect();
                        let lookup = SqlBuf::locked_lookup(&self.db, COLUMNS, "diagnostic_reports", tenant.0, "business_key", keys);
                        bind_args!(sqlx::query_as::<_, ReportRow>(&lookup.text), &lookup.args).fetch_all(&mut *tx).await?
                    };
                    let by_key: HashMap<&str, &ReportRow> = existing.iter().map(|r| (r.business_key.as_str(), r)).collect();
                    let mut new: Vec<(usize, Uuid)> = Vec::new();
                    for &i in &pending {
                        let report = &chunk[i];
                        let Some(row) = by_key.get(report.business_key.as_str()) else {
                            new.push((i, Uuid::now_v7())); // time-ordered: appends at the primary key's right edge
                            continue;
                        };
                        let payload = report.payload_over(row);
                        if report.matches(row, &payload) {
                            outcomes[offset + i] = Some(UpsertOutcome::Unchanged(row.id));
                            continue;
                        }
                        sqlx::query(INSERT_VERSION).bind(tenant.0).bind(row.id).bind(row.version).bind(&row.status)
                            .bind(&row.payload).bind(row.updated_at).execute(&mut *tx).await?;
                        let tokens = search_tokens(&report.index, &payload);
                        let update = sqlx::query(UPDATE_CHANGED)
                            .bind(tenant.0).bind(row.id).bind(&report.source_id).bind(&report.patient_id).bind(&report.status)
                            .bind(report.effective_at).bind(report.issued).bind(report.critical).bind(report.order_id)
                            .bind(Json(&payload)).bind(now);
                        BindArray::bind_list(update, &tokens).execute(&mut *tx).await?;
                        outcomes[offset + i] = Some(UpsertOutcome::Updated(row.id));
                    }
                    pending.clear();
                    new.sort_by(|a, b| chunk[a.0].business_key.cmp(&chunk[b.0].business_key));
                    if !new.is_empty() {
                        let rows = new
                            .iter()
                            .map(|(i, id)| {
                                let r = &chunk[*i];
                                vec![
                                    Arg::Uuid(*id), Arg::Uuid(tenant.0), Arg::Text(r.business_key.clone()), Arg::OptText(r.source_id.clone()),
                                    Arg::OptText(r.patient_id.clone()), Arg::Text(r.status.clone()), Arg::OptTime(r.effective_at),
                                    Arg::OptTime(r.issued), Arg::Bool(r.critical.unwrap_or(false)), Arg::OptUuid(r.order_id), Arg::JsonText(r.payload_text()),
                                    Arg::OptInt32(Some(1)), Arg::Time(now), Arg::Time(now), Arg::TextList(search_tokens(&r.index, &r.payload)),
                                ]
                            })
                            .collect();
                        let mut insert = SqlBuf::bulk_insert(&self.db, "diagnostic_reports", COLUMN_TYPES, rows);
                        insert.push(" ON CONFLICT (tenant_id, business_key) DO NOTHING RETURNING id");
                        let inserted: HashSet<Uuid> =
                            bind_args!(sqlx::query_scalar::<_, Uuid>(&insert.text), &insert.args).fetch_all(&mut *tx).await?.into_iter().collect();
                        for (i, id) in new {
                            if inserted.contains(&id) {
                                outcomes[offset + i] = Some(UpsertOutcome::Created(id));
                            } else {
                                pending.push(i);
                            }
                        }
                    }
                }
                if !pending.is_empty() {
                    return Err(StoreError::Conflict("reports kept changing under concurrent writers".into()));
                }
            }
            let outcomes: Vec<UpsertOutcome> = outcomes.into_iter().map(|o| o.expect("every report decided")).collect();
            if let Some(after) = after {
                let followups = after.gate().await?;
                run_followups!(tx, followups(&outcomes))?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(outcomes)
        }.await)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, report_id = %id))]
    async fn get(&self, tenant: TenantId, id: Uuid) -> StoreResult<ReportRow> {
        let sql = format!("SELECT {COLUMNS} FROM diagnostic_reports WHERE tenant_id = $1 AND id = $2");
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, ReportRow>(&sql).bind(tenant.0).bind(id).fetch_optional(pool).await)?;
        row.ok_or(StoreError::NotFound)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, report_id = %id))]
    async fn get_version(&self, tenant: TenantId, id: Uuid, version: i32) -> StoreResult<ReportVersion> {
        let current = self.get(tenant, id).await?;
        if current.version == version {
            return Ok(ReportVersion { report_id: id, version, status: current.status, payload: current.payload, recorded_at: current.updated_at });
        }
        let sql = "SELECT report_id, version, status, payload, recorded_at FROM diagnostic_report_versions \
                   WHERE tenant_id = $1 AND report_id = $2 AND version = $3";
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, ReportVersion>(sql)
            .bind(tenant.0).bind(id).bind(version).fetch_optional(pool).await)?;
        row.ok_or(StoreError::NotFound)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    async fn list(&self, tenant: TenantId, query: &ReportQuery, page: &PageRequest) -> StoreResult<Vec<ReportRow>> {
        let columns: Vec<String> = COLUMNS.split(", ").map(|c| format!("r.{}", c.trim())).collect();
        let mut sql = SqlBuf::new(format!("SELECT {} FROM diagnostic_reports r", columns.join(", ")));
        self.where_clause(tenant, query, &mut sql);
        sql.push_page("r.", "created_at", page);
        let rows = on_db!(&self.db, pool => bind_args!(sqlx::query_as::<_, ReportRow>(&sql.text), &sql.args).fetch_all(pool).await)?;
        Ok(rows)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    async fn count(&self, tenant: TenantId, query: &ReportQuery) -> StoreResult<i64> {
        let mut sql = SqlBuf::new("SELECT COUNT(*) FROM diagnostic_reports r");
        self.where_clause(tenant, query, &mut sql);
        let n = on_db!(&self.db, pool => bind_args!(sqlx::query_scalar::<_, i64>(&sql.text), &sql.args).fetch_one(pool).await)?;
        Ok(n)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, reports = reports.len()))]
    async fn study_links(&self, tenant: TenantId, reports: &[ReportRow]) -> StoreResult<Vec<StudyLink>> {
        // Each reference as the report's import (or message) indexed it.
        let mut links: Vec<StudyLink> = Vec::new();
        for row in reports {
            let mut stored_valid = crate::interop::fhir::resource::Issues::default();
            for e in crate::reports::from_fhir::study_references(&row.payload.0, &mut stored_valid) {
                let ref_id = e.value.filter(|_| e.system.as_deref() == Some("ref"));
                links.push(StudyLink { report_id: row.id, ref_id, study_uid: e.study_uid, study_id: None });
            }
        }
        // An id referenced without a UID: the UID of the study imported under that id.
        let by_source: HashSet<String> = links.iter().filter(|l| l.study_uid.is_none()).filter_map(|l| l.ref_id.clone()).collect();
        if !by_source.is_empty() {
            let found: HashMap<String, String> = self
                .map_by_keys(tenant, "fhir_source_ids", " AND resource_type = 'ImagingStudy'", ("source_id", "business_key"), by_source)
                .await?;
            for l in links.iter_mut().filter(|l| l.study_uid.is_none()) {
                l.study_uid = l.ref_id.as_ref().and_then(|id| found.get(id).cloned());
            }
        }
        // Our study of each UID, once it exists.
        let uids: HashSet<String> = links.iter().filter_map(|l| l.study_uid.clone()).collect();
        if !uids.is_empty() {
            let found: HashMap<String, Uuid> = self.map_by_keys(tenant, "imaging_studies", "", ("pacs_study_uid", "id"), uids).await?;
            for l in &mut links {
                l.study_id = l.study_uid.as_ref().and_then(|uid| found.get(uid).copied());
            }
        }
        Ok(links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_tokens_escape_and_match_what_migrations_0005_and_0007_derive() {
        let entry = |param, system: Option<&str>, value: &str| IndexEntry {
            param,
            system: system.map(str::to_string),
            value: Some(value.to_string()),
            study_uid: None,
        };
        let index = [
            entry("code", Some("http://loinc.org"), "123"),
            entry("identifier", None, "X%1"),
            entry("imaging-study", Some("ref"), "st1"),
        ];
        let payload = serde_json::json!({"meta": {"tag": [{"system": "urn:x", "code": "historical"}, {"code": "a|b"}]}});
        // The terms migrations/*/0005 computed for the same report, and 0007 for its
        // imaging-study reference (checked on both backends in tests/api/store_conformance.rs).
        assert_eq!(search_tokens(&index, &payload), [
            "_tag:a%7Cb", "_tag:historical", "_tag|urn:x|historical", "_tag||a%7Cb", "code:123",
            "code|http://loinc.org|123", "identifier:X%251", "identifier||X%251", "imaging-study|ref|st1", "imaging-study|src|st1",
        ]);
        assert_eq!(token_term("code", None, "123"), "code:123");
        assert_eq!(token_term("identifier", Some(""), "X%1"), "identifier||X%251");
        assert_eq!(token_term("code", Some("a|b"), "x\ny"), "code|a%7Cb|x%0Ay");
    }
}
