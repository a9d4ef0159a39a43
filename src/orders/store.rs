//! Persistence of orders. One SQL text for both backends.
//!
//! A row holds the merged [`OrderState`] (what the next message is applied to), the
//! FHIR ServiceRequest of the current version, and the columns searches need.
//! Superseded versions go to `order_versions` (FHIR vread).

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::{OrderState, OrderUpsert};
use crate::auth::TenantId;
use crate::db::error::StoreResult;
use crate::db::sql::{AfterWrite, Arg, Bound, SqlBuf, UpsertOutcome};
use crate::db::{begin_write, Db, StoreError};
use crate::pagination::{Cursor, PageRequest};
use crate::{bind_args, on_db, run_followups};

#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct OrderRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub business_key: String,
    pub placer_number: Option<String>,
    pub filler_number: Option<String>,
    pub accession_number: Option<String>,
    pub patient_id: Option<String>,
    pub status: String,
    pub order_control: String,
    pub order_status: Option<String>,
    pub requested_procedure_id: Option<String>,
    pub procedure_code: Option<String>,
    pub modality: Option<String>,
    pub priority: Option<String>,
    pub ordering_provider: Option<String>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub study_uid: Option<String>,
    pub facility_id: Option<Uuid>,
    pub state: Json<OrderState>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl OrderRow {
    pub fn cursor(&self) -> Cursor {
        Cursor { created_at: self.created_at, id: self.id }
    }

    /// The FHIR ServiceRequest of this version, rendered from its state (without `id`
    /// and `meta`; see [`super::fhir::render`]).
    pub fn service_request(&self) -> Value {
        super::fhir::service_request(&self.state.0)
    }
}

#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct OrderVersion {
    pub order_id: Uuid,
    pub version: i32,
    pub status: String,
    pub payload: Json<Value>,
    pub recorded_at: DateTime<Utc>,
}

/// An order's imaging study, resolved now: by Study Instance UID or by accession number.
#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct OrderStudyLink {
    pub order_id: Uuid,
    pub study_id: Uuid,
    pub study_uid: String,
    pub study_status: String,
}

/// A search of orders, shared by REST and FHIR. Lists are alternatives (OR); fields
/// combine with AND.
#[derive(Debug, Default, Clone)]
pub struct OrderQuery {
    pub ids: Vec<Uuid>,
    pub patient_id: Option<String>,
    pub statuses: Vec<String>,
    /// Placer, filler or accession number.
    pub identifiers: Vec<String>,
    pub accession_numbers: Vec<String>,
    pub study_uids: Vec<String>,
    pub codes: Vec<String>,
    pub modality: Option<String>,
    pub scheduled: Vec<Bound>,
    pub last_updated: Vec<Bound>,
    pub tags: Vec<(Option<String>, String)>,
}

#[async_trait]
pub trait OrderStore: Send + Sync {
    /// Applies each message's order to the stored order (creating it when new); an
    /// order the message does not change is not rewritten. Keys must be distinct within
    /// a batch. `after`'s statements run in the same transaction.
    async fn upsert_batch(&self, tenant: TenantId, orders: &[OrderUpsert], after: Option<AfterWrite<'_>>) -> StoreResult<Vec<UpsertOutcome>>;
    async fn get(&self, tenant: TenantId, id: Uuid) -> StoreResult<OrderRow>;
    async fn get_version(&self, tenant: TenantId, id: Uuid, version: i32) -> StoreResult<OrderVersion>;
    async fn list(&self, tenant: TenantId, query: &OrderQuery, page: &PageRequest) -> StoreResult<Vec<OrderRow>>;
    async fn count(&self, tenant: TenantId, query: &OrderQuery) -> StoreResult<i64>;
    /// The order a result names: by business key, filler number or accession number
    /// (first match in that order of preference).
    async fn find_for_result(&self, tenant: TenantId, business_keys: &[String], filler: Option<&str>, accession: Option<&str>) -> StoreResult<Option<OrderRow>>;
    /// The imaging studies of these orders, resolved against the study index now.
    async fn study_links(&self, tenant: TenantId, order_ids: &[Uuid]) -> StoreResult<Vec<OrderStudyLink>>;
}

pub struct SqlOrderStore {
    db: Db,
}

const COLUMNS: &str = "id, tenant_id, business_key, placer_number, filler_number, accession_number, patient_id, status, order_control, \
    order_status, requested_procedure_id, procedure_code, modality, priority, ordering_provider, scheduled_at, study_uid, facility_id, \
    state, version, created_at, updated_at";

const COLUMN_TYPES: &[(&str, &str)] = &[
    ("id", "uuid"), ("tenant_id", "uuid"), ("business_key", "text"), ("placer_number", "text"), ("filler_number", "text"),
    ("accession_number", "text"), ("patient_id", "text"), ("status", "text"), ("order_control", "text"), ("order_status", "text"),
    ("requested_procedure_id", "text"), ("procedure_code", "text"), ("modality", "text"), ("priority", "text"),
    ("ordering_provider", "text"), ("scheduled_at", "timestamptz"), ("study_uid", "text"), ("facility_id", "uuid"),
    ("state", "json"), ("version", "integer"), ("created_at", "timestamptz"), ("updated_at", "timestamptz"),
];

/// Orders per multi-row statement on SQLite (23 arguments each).
const BATCH: usize = 400;

impl SqlOrderStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The plain insert of new orders (append `ON CONFLICT …` for a lenient one).
    fn insert_new(&self, tenant: TenantId, chunk: &[OrderUpsert], new: &[(usize, Uuid, OrderState)], now: DateTime<Utc>) -> StoreResult<SqlBuf> {
        let mut rows = Vec::with_capacity(new.len());
        for (i, id, state) in new {
            let mut row = vec![Arg::Uuid(*id), Arg::Uuid(tenant.0), Arg::Text(chunk[*i].business_key.clone())];
            row.extend(state_columns(state));
            row.push(Arg::JsonText(serde_json::to_string(state).map_err(anyhow::Error::from)?));
            row.extend([Arg::OptInt32(Some(1)), Arg::Time(now), Arg::Time(now)]);
            rows.push(row);
        }
        Ok(SqlBuf::bulk_insert(&self.db, "orders", COLUMN_TYPES, rows))
    }

    /// The insert of new orders that skips those stored already: the ids that went in.
    fn insert_new_returning(&self, tenant: TenantId, chunk: &[OrderUpsert], new: &[(usize, Uuid, OrderState)], now: DateTime<Utc>) -> StoreResult<SqlBuf> {
        let mut insert = self.insert_new(tenant, chunk, new, now)?;
        insert.push(" ON CONFLICT (tenant_id, business_key) DO NOTHING RETURNING id");
        Ok(insert)
    }

    /// PostgreSQL, a batch of new orders (ORC-1 NW) whose follow-ups are independent
    /// (the HL7 log rows): the orders and the follow-ups as ONE statement outside any
    /// transaction, i.e. one round trip and one commit instead of BEGIN, two INSERTs and
    /// COMMIT. When one of the orders exists already the statement meets the orders'
    /// unique key and writes nothing; the batch then takes the general path, which looks
    /// the existing orders up and merges. `Ok(Err(after))` hands the batch back.
    async fn create_in_one_statement<'a>(&self, tenant: TenantId, orders: &[OrderUpsert], after: Option<AfterWrite<'a>>) -> StoreResult<Result<Vec<UpsertOutcome>, Option<AfterWrite<'a>>>> {
        let Db::Postgres(pool) = &self.db else { return Ok(Err(after)) };
        if orders.is_empty() || orders.iter().any(|o| o.control != "NW") || after.as_ref().is_some_and(|a| a.gate.is_some()) {
            return Ok(Err(after));
        }
        let new = all_new(orders);
        let mut outcomes = vec![UpsertOutcome::Created(Uuid::nil()); orders.len()];
        for (i, id, _) in &new {
            outcomes[*i] = UpsertOutcome::Created(*id);
        }
        let followups = after.as_ref().map(|a| (a.followups)(&outcomes)).unwrap_or_default();
        let insert = self.insert_new(tenant, orders, &new, crate::db::now())?;
        let Some(statement) = crate::db::sql::with_followups(insert, &followups) else { return Ok(Err(after)) };
        match crate::db::sql::execute_alone(pool, &statement, &followups).await {
            Ok(_) => Ok(Ok(outcomes)),
            Err(StoreError::Conflict(index)) if index == "orders_tenant_key" => Ok(Err(after)),
            Err(e) => Err(e),
        }
    }

    fn where_clause(&self, tenant: TenantId, q: &OrderQuery, sql: &mut SqlBuf) {
        let t = sql.arg(Arg::Uuid(tenant.0));
        sql.push(&format!(" WHERE o.tenant_id = {t}"));
        let any = |sql: &mut SqlBuf, terms: Vec<String>| {
            if !terms.is_empty() {
                sql.push(&format!(" AND ({})", terms.join(" OR ")));
            }
        };
        let terms = q.ids.iter().map(|id| format!("o.id = {}", sql.arg(Arg::Uuid(*id)))).collect();
        any(sql, terms);
        if let Some(p) = &q.patient_id {
            let p = sql.arg(Arg::Text(p.clone()));
            sql.push(&format!(" AND o.patient_id = {p}"));
        }
        if let Some(m) = &q.modality {
            let m = sql.arg(Arg::Text(m.clone()));
            sql.push(&format!(" AND o.modality = {m}"));
        }
        let terms = q.statuses.iter().map(|s| format!("o.status = {}", sql.arg(Arg::Text(s.clone())))).collect();
        any(sql, terms);
        let terms = q
            .identifiers
            .iter()
            .map(|v| {
                let v = sql.arg(Arg::Text(v.clone()));
                format!("o.placer_number = {v} OR o.filler_number = {v} OR o.accession_number = {v}")
            })
            .collect();
        any(sql, terms);
        let terms = q.accession_numbers.iter().map(|v| format!("o.accession_number = {}", sql.arg(Arg::Text(v.clone())))).collect();
        any(sql, terms);
        let terms = q.study_uids.iter().map(|v| format!("o.study_uid = {}", sql.arg(Arg::Text(v.clone())))).collect();
        any(sql, terms);
        let terms = q.codes.iter().map(|v| format!("o.procedure_code = {}", sql.arg(Arg::Text(v.clone())))).collect();
        any(sql, terms);
        sql.push_bounds("o.scheduled_at", &q.scheduled).push_bounds("o.updated_at", &q.last_updated);
        if !q.tags.is_empty() {
            // No ServiceRequest carries a meta.tag (orders come from HL7 messages).
            sql.push(" AND 1 = 0");
        }
    }
}

/// Every order of `orders` as a new one: (index, new id, state), in business-key order
/// (the order rows are inserted, and locked, in). Ids are time-ordered (UUID v7), so
/// new rows append at the primary key's right edge instead of a random leaf.
fn all_new(orders: &[OrderUpsert]) -> Vec<(usize, Uuid, OrderState)> {
    let mut new: Vec<(usize, Uuid, OrderState)> = orders.iter().enumerate().map(|(i, o)| (i, Uuid::now_v7(), o.apply(None))).collect();
    new.sort_by(|a, b| orders[a.0].business_key.cmp(&orders[b.0].business_key));
    new
}

/// The column values of a state, in [`COLUMN_TYPES`] order from `placer_number` to
/// `facility_id`.
fn state_columns(state: &OrderState) -> Vec<Arg> {
    let s = &state.fields;
    vec![
        Arg::OptText(s.placer_number.clone()),
        Arg::OptText(s.filler_number.clone()),
        Arg::OptText(s.accession_number.clone()),
        Arg::OptText(s.patient_id.clone()),
        Arg::Text(state.status.clone()),
        Arg::Text(state.order_control.clone()),
        Arg::OptText(s.order_status.clone()),
        Arg::OptText(s.requested_procedure_id.clone()),
        Arg::OptText(s.procedure.as_ref().map(|c| c.code.clone())),
        Arg::OptText(s.modality.clone()),
        Arg::OptText(s.priority.clone()),
        Arg::OptText(s.ordering_provider.as_ref().and_then(|p| p.name.clone().or_else(|| p.id.clone()))),
        Arg::OptTime(s.scheduled_at),
        Arg::OptText(s.study_uid.clone()),
        Arg::OptUuid(s.facility_id),
    ]
}

const UPDATE: &str = "UPDATE orders SET placer_number = $3, filler_number = $4, accession_number = $5, patient_id = $6, status = $7, \
    order_control = $8, order_status = $9, requested_procedure_id = $10, procedure_code = $11, modality = $12, priority = $13, \
    ordering_provider = $14, scheduled_at = $15, study_uid = $16, facility_id = $17, state = $18, version = version + 1, \
    updated_at = $19 WHERE tenant_id = $1 AND id = $2";

#[async_trait]
impl OrderStore for SqlOrderStore {
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, orders = orders.len()))]
    async fn upsert_batch(&self, tenant: TenantId, orders: &[OrderUpsert], after: Option<AfterWrite<'_>>) -> StoreResult<Vec<UpsertOutcome>> {
        let after = match self.create_in_one_statement(tenant, orders, after).await? {
            Ok(outcomes) => return Ok(outcomes),
            Err(after) => after,
        };
        on_db!(&self.db, pool => async {
            let now = crate::db::now();
            let mut tx = begin_write(pool).await?;
            let mut outcomes: Vec<Option<UpsertOutcome>> = vec![None; orders.len()];
            let chunk_size = self.db.batch_rows(orders.len(), BATCH);
            for (chunk_index, chunk) in orders.chunks(chunk_size).enumerate() {
                let offset = chunk_index * chunk_size;
                let mut pending: Vec<usize> = (0..chunk.len()).collect();
                // New orders (NW) are inserted straight away; only those that exist already
                // are looked up and merged (one statement fewer for the common case).
                if chunk.iter().all(|o| o.control == "NW") {
                    let new = all_new(chunk);
                    let insert = self.insert_new_returning(tenant, chunk, &new, now)?;
                    let inserted: std::collections::HashSet<Uuid> =
                        bind_args!(sqlx::query_scalar::<_, Uuid>(&insert.text), &insert.args).fetch_all(&mut *tx).await?.into_iter().collect();
                    pending.clear();
                    for (i, id, _) in new {
                        if inserted.contains(&id) {
                            outcomes[offset + i] = Some(UpsertOutcome::Created(id));
                        } else {
                            pending.push(i);
                        }
                    }
                }
                for _attempt in 0..5 {
                    if pending.is_empty() {
                        break;
                    }
                    let keys = pending.iter().map(|i| chunk[*i].business_key.clone()).collect();
                    let lookup = SqlBuf::locked_lookup(&self.db, COLUMNS, "orders", tenant.0, "business_key", keys);
                    let existing: Vec<OrderRow> = bind_args!(sqlx::query_as::<_, OrderRow>(&lookup.text), &lookup.args).fetch_all(&mut *tx).await?;
                    let by_key: HashMap<&str, &OrderRow> = existing.iter().map(|r| (r.business_key.as_str(), r)).collect();
                    let mut new: Vec<(usize, Uuid, OrderState)> = Vec::new();
                    for &i in &pending {
                        let order = &chunk[i];
                        let Some(row) = by_key.get(order.business_key.as_str()) else {
                            new.push((i, Uuid::now_v7(), order.apply(None)));
                            continue;
                        };
                        let state = order.apply(Some(&row.state.0));
                        if state == row.state.0 {
                            outcomes[offset + i] = Some(UpsertOutcome::Unchanged(row.id));
                            continue;
                        }
                        // The version replaced keeps the ServiceRequest it rendered to.
                        sqlx::query("INSERT INTO order_versions (tenant_id, order_id, version, status, payload, recorded_at) \
                                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, order_id, version) DO NOTHING")
                            .bind(tenant.0).bind(row.id).bind(row.version).bind(&row.status).bind(Json(row.service_request())).bind(row.updated_at)
                            .execute(&mut *tx).await?;
                        let mut update = SqlBuf::new(UPDATE);
                        update.args.push(Arg::Uuid(tenant.0));
                        update.args.push(Arg::Uuid(row.id));
                        update.args.extend(state_columns(&state));
                        update.args.push(Arg::Json(serde_json::to_value(&state).map_err(anyhow::Error::from)?));
                        update.args.push(Arg::Time(now));
                        bind_args!(sqlx::query(&update.text), &update.args).execute(&mut *tx).await?;
                        outcomes[offset + i] = Some(UpsertOutcome::Updated(row.id));
                    }
                    pending.clear();
                    new.sort_by(|a, b| chunk[a.0].business_key.cmp(&chunk[b.0].business_key));
                    if !new.is_empty() {
                        let insert = self.insert_new_returning(tenant, chunk, &new, now)?;
                        let inserted: std::collections::HashSet<Uuid> =
                            bind_args!(sqlx::query_scalar::<_, Uuid>(&insert.text), &insert.args).fetch_all(&mut *tx).await?.into_iter().collect();
                        for (i, id, _) in new {
                            if inserted.contains(&id) {
                                outcomes[offset + i] = Some(UpsertOutcome::Created(id));
                            } else {
                                pending.push(i);
                            }
                        }
                    }
                }
                if !pending.is_empty() {
                    return Err(StoreError::Conflict("orders kept changing under concurrent writers".into()));
                }
            }
            let outcomes: Vec<UpsertOutcome> = outcomes.into_iter().map(|o| o.expect("every order decided")).collect();
            if let Some(after) = after {
                let followups = after.gate().await?;
                run_followups!(tx, followups(&outcomes))?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(outcomes)
        }.await)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, order_id = %id))]
    async fn get(&self, tenant: TenantId, id: Uuid) -> StoreResult<OrderRow> {
        let sql = format!("SELECT {COLUMNS} FROM orders WHERE tenant_id = $1 AND id = $2");
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, OrderRow>(&sql).bind(tenant.0).bind(id).fetch_optional(pool).await)?;
        row.ok_or(StoreError::NotFound)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, order_id = %id))]
    async fn get_version(&self, tenant: TenantId, id: Uuid, version: i32) -> StoreResult<OrderVersion> {
        let current = self.get(tenant, id).await?;
        if current.version == version {
            return Ok(OrderVersion { order_id: id, version, status: current.status.clone(), payload: Json(current.service_request()), recorded_at: current.updated_at });
        }
        let sql = "SELECT order_id, version, status, payload, recorded_at FROM order_versions WHERE tenant_id = $1 AND order_id = $2 AND version = $3";
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, OrderVersion>(sql).bind(tenant.0).bind(id).bind(version).fetch_optional(pool).await)?;
        row.ok_or(StoreError::NotFound)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    async fn list(&self, tenant: TenantId, query: &OrderQuery, page: &PageRequest) -> StoreResult<Vec<OrderRow>> {
        let columns: Vec<String> = COLUMNS.split(", ").map(|c| format!("o.{}", c.trim())).collect();
        let mut sql = SqlBuf::new(format!("SELECT {} FROM orders o", columns.join(", ")));
        self.where_clause(tenant, query, &mut sql);
        sql.push_page("o.", "created_at", page);
        let rows = on_db!(&self.db, pool => bind_args!(sqlx::query_as::<_, OrderRow>(&sql.text), &sql.args).fetch_all(pool).await)?;
        Ok(rows)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    async fn count(&self, tenant: TenantId, query: &OrderQuery) -> StoreResult<i64> {
        let mut sql = SqlBuf::new("SELECT COUNT(*) FROM orders o");
        self.where_clause(tenant, query, &mut sql);
        let n = on_db!(&self.db, pool => bind_args!(sqlx::query_scalar::<_, i64>(&sql.text), &sql.args).fetch_one(pool).await)?;
        Ok(n)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant))]
    async fn find_for_result(&self, tenant: TenantId, business_keys: &[String], filler: Option<&str>, accession: Option<&str>) -> StoreResult<Option<OrderRow>> {
        let mut sql = SqlBuf::new(format!("SELECT {COLUMNS}, CASE "));
        let mut terms = Vec::new();
        for (rank, key) in business_keys.iter().enumerate() {
            let k = sql.arg(Arg::Text(key.clone()));
            sql.push(&format!("WHEN business_key = {k} THEN {rank} "));
            terms.push(format!("business_key = {k}"));
        }
        if let Some(f) = filler {
            let f = sql.arg(Arg::Text(f.to_string()));
            sql.push(&format!("WHEN filler_number = {f} THEN 100 "));
            terms.push(format!("filler_number = {f}"));
        }
        if let Some(a) = accession {
            let a = sql.arg(Arg::Text(a.to_string()));
            sql.push(&format!("WHEN accession_number = {a} THEN 200 "));
            terms.push(format!("accession_number = {a}"));
        }
        if terms.is_empty() {
            return Ok(None);
        }
        let t = sql.arg(Arg::Uuid(tenant.0));
        sql.push(&format!("ELSE 300 END AS preference FROM orders WHERE tenant_id = {t} AND ({}) ORDER BY preference, created_at LIMIT 1", terms.join(" OR ")));
        let row = on_db!(&self.db, pool => bind_args!(sqlx::query_as::<_, OrderRow>(&sql.text), &sql.args).fetch_optional(pool).await)?;
        Ok(row)
    }

    #[tracing::instrument(skip_all, fields(tenant_id = %tenant, orders = order_ids.len()))]
    async fn study_links(&self, tenant: TenantId, order_ids: &[Uuid]) -> StoreResult<Vec<OrderStudyLink>> {
        if order_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = SqlBuf::new(
            "SELECT o.id AS order_id, s.id AS study_id, s.pacs_study_uid AS study_uid, s.status AS study_status FROM orders o \
             JOIN imaging_studies s ON s.tenant_id = o.tenant_id \
               AND (s.pacs_study_uid = o.study_uid OR s.accession_number = o.accession_number) \
             WHERE o.tenant_id = ",
        );
        let t = sql.arg(Arg::Uuid(tenant.0));
        sql.push(&t);
        let ids: Vec<String> = order_ids.iter().map(|id| sql.arg(Arg::Uuid(*id))).collect();
        sql.push(&format!(" AND o.id IN ({}) ORDER BY s.created_at", ids.join(", ")));
        let links = on_db!(&self.db, pool => bind_args!(sqlx::query_as::<_, OrderStudyLink>(&sql.text), &sql.args).fetch_all(pool).await)?;
        Ok(links)
    }
}
