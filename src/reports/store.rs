//! Persistence of radiology reports. One SQL text for both backends, but for the
//! token search (a PostgreSQL array, JSON text on SQLite).
//!
//! A report row holds the FHIR DiagnosticReport (`payload`) and the columns searches
//! need. The token and reference parameters identifier, category, code and based-on,
//! and the `_tag`s, are the row's `tokens` (see [`search_tokens`]; a GIN index on
//! PostgreSQL). The `imaging-study` references live one per row in
//! `diagnostic_report_index`: links to imaging studies are resolved when read, so a
//! report imported before its study (or whose study arrives later by sync) links as
//! soon as the study exists.

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

/// `%`, `|` and newline escaped, so the parts of a token cannot run together.
fn token_part(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['%', '|', '\n']) {
        return std::borrow::Cow::Borrowed(text); // the usual case: nothing to escape, nothing to copy
    }
    std::borrow::Cow::Owned(text.replace('%', "%25").replace('|', "%7C").replace('\n', "%0A"))
}

/// The stored search token a token search term matches: `param|system|value` for
/// `system|value`, `param||value` for `|value` (no system), `param:value` for a value
/// in any system.
pub fn token_term(param: &str, system: Option<&str>, value: &str) -> String {
    match system {
        Some(system) => format!("{param}|{}|{}", token_part(system), token_part(value)),
        None => format!("{param}:{}", token_part(value)),
    }
}

/// The `tokens` of a report: for each indexed value but `imaging-study`, and each
/// `meta.tag` of the stored `payload` (as `_tag`), its exact term (an absent system as
/// "") and its any-system term; sorted, without repeats. Migration 0005 derives the
/// same for the reports stored before it.
pub fn search_tokens(index: &[IndexEntry], payload: &Value) -> Vec<String> {
    let tags = payload.pointer("/meta/tag").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let values = index
        .iter()
        .filter(|e| e.param != IMAGING_STUDY)
        .filter_map(|e| e.value.as_deref().map(|v| (e.param, e.system.as_deref(), v)))
        .chain(tags.iter().filter_map(|t| {
            t.get("code").and_then(Value::as_str).map(|code| ("_tag", t.get("system").and_then(Value::as_str), code))
        }));
    let mut tokens: Vec<String> =
        values.flat_map(|(param, system, v)| [token_term(param, Some(system.unwrap_or("")), v), token_term(param, None, v)]).collect();
    tokens.sort_unstable();
    tokens.dedup();
    tokens
}

const IMAGING_STUDY: &str = "imaging-study";

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

    /// The `imaging-study` entries of the index: the rows of `diagnostic_report_index`.
    fn study_references(&self) -> impl Iterator<Item = &IndexEntry> {
        self.index.iter().filter(|e| e.param == IMAGING_STUDY)
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
    /// The imaging-study links of these reports, resolved against the study index now.
    async fn study_links(&self, tenant: TenantId, report_ids: &[Uuid]) -> StoreResult<Vec<StudyLink>>;
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
/// Index rows per multi-row statement (6 arguments each; both backends allow 32,766).
const INDEX_BATCH: usize = 4000;

/// Resolves `imaging-study` index rows: a literal reference through the source ids of
/// imported studies, then the UID to our study.
const LINK_JOINS: &str = "LEFT JOIN fhir_source_ids m ON m.tenant_id = i.tenant_id AND m.resource_type = 'ImagingStudy' \
        AND i.system = 'ref' AND m.source_id = i.value";

impl SqlReportStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Inserts of index entries (chunked under SQLite's argument limit).
    fn index_inserts(&self, tenant: TenantId, entries: &[(Uuid, &IndexEntry)]) -> Vec<SqlBuf> {
        let columns = [("tenant_id", "uuid"), ("report_id", "uuid"), ("param", "text"), ("system", "text"), ("value", "text"), ("study_uid", "text")];
        let chunk = self.db.batch_rows(entries.len(), INDEX_BATCH);
        entries
            .chunks(chunk)
            .map(|chunk| {
                let rows = chunk
                    .iter()
                    .map(|(id, e)| {
                        vec![
                            Arg::Uuid(tenant.0),
                            Arg::Uuid(*id),
                            Arg::Text(e.param.to_string()),
                            Arg::OptText(e.system.clone()),
                            Arg::OptText(e.value.clone()),
                            Arg::OptText(e.study_uid.clone()),
                        ]
                    })
                    .collect();
                SqlBuf::bulk_insert(&self.db, "diagnostic_report_index", &columns, rows)
            })
            .collect()
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
            // One index-friendly branch per way a report can name the study: the UID in
            // the reference, a literal reference to the id the study had in its source
            // (mapped to its UID by fhir_source_ids) when the reference names no UID, or
            // the referenced id itself.
            // The tenant as an argument, not r.tenant_id: the subquery is run once, not per report.
            let tenant_arg = &t;
            let mut branches: Vec<String> = Vec::new();
            for uid in &m.uids {
                let u = sql.arg(Arg::Text(uid.clone()));
                branches.push(format!("SELECT i.report_id FROM diagnostic_report_index i WHERE i.tenant_id = {tenant_arg} AND i.study_uid = {u}"));
                branches.push(format!(
                    "SELECT i.report_id FROM fhir_source_ids m JOIN diagnostic_report_index i ON i.tenant_id = m.tenant_id \
                     AND i.param = 'imaging-study' AND i.system = 'ref' AND i.value = m.source_id AND i.study_uid IS NULL \
                     WHERE m.tenant_id = {tenant_arg} AND m.resource_type = 'ImagingStudy' AND m.business_key = {u}"
                ));
            }
            for ref_id in &m.ref_ids {
                let v = sql.arg(Arg::Text(ref_id.clone()));
                branches.push(format!(
                    "SELECT i.report_id FROM diagnostic_report_index i WHERE i.tenant_id = {tenant_arg} \
                     AND i.param = 'imaging-study' AND i.system = 'ref' AND i.value = {v}"
                ));
            }
            if branches.is_empty() {
                sql.push(" AND 1 = 0");
            } else {
                sql.push(&format!(" AND r.id IN ({})", branches.join(" UNION ALL ")));
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
            let mut outcomes: Vec<Option<UpsertOutcome>> = vec![None; reports.len()];
            let chunk_size = self.db.batch_rows(reports.len(), BATCH);
            for (chunk_index, chunk) in reports.chunks(chunk_size).enumerate() {
                let offset = chunk_index * chunk_size;
                let mut pending: Vec<usize> = (0..chunk.len()).collect();
                for _attempt in 0..5 {
                    if pending.is_empty() {
                        break;
                    }
                    let keys = pending.iter().map(|i| chunk[*i].business_key.clone()).collect();
                    let lookup = SqlBuf::locked_lookup(&self.db, COLUMNS, "diagnostic_reports", tenant.0, "business_key", keys);
                    let existing: Vec<ReportRow> = bind_args!(sqlx::query_as::<_, ReportRow>(&lookup.text), &lookup.args)
                        .fetch_all(&mut *tx).await?;
                    let by_key: HashMap<&str, &ReportRow> = existing.iter().map(|r| (r.business_key.as_str(), r)).collect();
                    let mut new: Vec<(usize, Uuid)> = Vec::new();
                    let mut reindex: Vec<(Uuid, &IndexEntry)> = Vec::new();
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
                        sqlx::query("DELETE FROM diagnostic_report_index WHERE tenant_id = $1 AND report_id = $2")
                            .bind(tenant.0).bind(row.id).execute(&mut *tx).await?;
                        reindex.extend(report.study_references().map(|e| (row.id, e)));
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
                                reindex.extend(chunk[i].study_references().map(|e| (id, e)));
                            } else {
                                pending.push(i);
                            }
                        }
                    }
                    for sql in self.index_inserts(tenant, &reindex) {
                        bind_args!(sqlx::query(&sql.text), &sql.args).execute(&mut *tx).await?;
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

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, reports = report_ids.len()))]
    async fn study_links(&self, tenant: TenantId, report_ids: &[Uuid]) -> StoreResult<Vec<StudyLink>> {
        if report_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = SqlBuf::new(format!(
            "SELECT i.report_id, CASE WHEN i.system = 'ref' THEN i.value END AS ref_id, \
                    COALESCE(i.study_uid, m.business_key) AS study_uid, s.id AS study_id \
             FROM diagnostic_report_index i {LINK_JOINS} \
             LEFT JOIN imaging_studies s ON s.tenant_id = i.tenant_id AND s.pacs_study_uid = COALESCE(i.study_uid, m.business_key) \
             WHERE i.tenant_id = "
        ));
        let t = sql.arg(Arg::Uuid(tenant.0));
        sql.push(&t);
        let ids: Vec<String> = report_ids.iter().map(|id| sql.arg(Arg::Uuid(*id))).collect();
        sql.push(&format!(" AND i.param = 'imaging-study' AND i.report_id IN ({})", ids.join(", ")));
        let links = on_db!(&self.db, pool => bind_args!(sqlx::query_as::<_, StudyLink>(&sql.text), &sql.args).fetch_all(pool).await)?;
        Ok(links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_tokens_escape_and_match_what_migration_0005_derives() {
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
        // The terms migrations/*/0005 computed for the same report (checked on both backends).
        assert_eq!(search_tokens(&index, &payload), [
            "_tag:a%7Cb", "_tag:historical", "_tag|urn:x|historical", "_tag||a%7Cb", "code:123",
            "code|http://loinc.org|123", "identifier:X%251", "identifier||X%251",
        ]);
        assert_eq!(token_term("code", None, "123"), "code:123");
        assert_eq!(token_term("identifier", Some(""), "X%1"), "identifier||X%251");
        assert_eq!(token_term("code", Some("a|b"), "x\ny"), "code|a%7Cb|x%0Ay");
    }
}
