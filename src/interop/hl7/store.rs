//! Persistence of HL7 connectors, the inbound message log, the outbound outbox and
//! round-trip runs. One SQL text for both backends.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::connectors::ConnectorRow;
use crate::auth::TenantId;
use crate::db::error::StoreResult;
use crate::db::sql::{Arg, Bound, Fence, Followup, SqlBuf};
use crate::db::{begin_write, Db, StoreError};
use crate::pagination::PageRequest;
use crate::{bind_args, on_db, run_followups};

/// A row of the message log.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub connector_id: Option<Uuid>,
    pub peer: Option<String>,
    pub message_type: Option<String>,
    pub control_id: Option<String>,
    pub version_id: Option<String>,
    pub sending_application: Option<String>,
    pub sending_facility: Option<String>,
    pub content_hash: String,
    pub raw: Vec<u8>,
    pub status: String,
    pub ack_code: Option<String>,
    pub ack: Option<Vec<u8>>,
    pub error: Option<String>,
    pub order_id: Option<Uuid>,
    pub report_id: Option<Uuid>,
    pub duplicates: i32,
    pub received_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
}

impl MessageRow {
    pub fn cursor(&self) -> crate::pagination::Cursor {
        crate::pagination::Cursor { created_at: self.received_at, id: self.id }
    }
}

const MESSAGE_COLUMNS: &str = "id, tenant_id, connector_id, peer, message_type, control_id, version_id, sending_application, \
    sending_facility, content_hash, raw, status, ack_code, ack, error, order_id, report_id, duplicates, received_at, processed_at";

const CONNECTOR_COLUMNS: &str = "id, tenant_id, direction, name, sending_application, sending_facility, facility_id, host, port, \
    ack_timeout_ms, retry, tls, events, active, created_at, updated_at";

/// A stored message with the same sender and control id as a new one.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PriorMessage {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub connector_id: Option<Uuid>,
    pub control_id: Option<String>,
    pub content_hash: String,
    pub ack: Option<Vec<u8>>,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Default, Clone)]
pub struct MessageFilter {
    pub connector_id: Option<Uuid>,
    pub message_type: Option<String>,
    pub control_id: Option<String>,
    pub status: Option<String>,
    pub received: Vec<Bound>,
}

/// An outbox entry.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub seq: i64,
    pub tenant_id: Uuid,
    pub connector_id: Uuid,
    pub event: String,
    pub resource_type: String,
    pub resource_id: Uuid,
    pub resource_version: i32,
    pub status: String,
    pub control_id: Option<String>,
    pub message: Option<Vec<u8>>,
    pub attempts: i32,
    /// AR/CR answers so far (what `retry.max_attempts` limits).
    pub rejections: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub ack_code: Option<String>,
    pub ack: Option<Vec<u8>>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub done_at: Option<DateTime<Utc>>,
}

const OUTBOX_COLUMNS: &str = "seq, tenant_id, connector_id, event, resource_type, resource_id, resource_version, status, control_id, \
    message, attempts, rejections, next_attempt_at, last_error, ack_code, ack, created_at, sent_at, done_at";

/// How one delivery attempt ended.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// AA/CA: done.
    Acked { code: String, ack: Vec<u8> },
    /// AE/CE (or AR/CR after the last attempt): done, recorded as refused.
    Refused { status: &'static str, code: String, ack: Vec<u8>, error: String },
    /// Not delivered (no connection, no ACK in time, AR): try again at `next`.
    /// `rejected`: the destination answered AR/CR (counted against `max_attempts`).
    Retry { error: String, ack_code: Option<String>, next: DateTime<Utc>, rejected: bool },
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RoundTripRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub connector_id: Uuid,
    pub status: String,
    pub window_from: DateTime<Utc>,
    pub window_to: DateTime<Utc>,
    pub result: Option<Json<Value>>,
    pub requested_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One order's chain in a round-trip window, as stored now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChainRow {
    pub order_id: Uuid,
    pub placer_number: Option<String>,
    pub filler_number: Option<String>,
    pub accession_number: Option<String>,
    pub study_uid: Option<String>,
    pub order_status: String,
    pub study_id: Option<Uuid>,
    pub study_status: Option<String>,
    pub report_id: Option<Uuid>,
    pub report_status: Option<String>,
}

#[async_trait]
pub trait Hl7Store: Send + Sync {
    // connectors
    /// A second connector with the same name in a tenant, or an inbound sender
    /// (MSH-3/MSH-4) another connector already claims, is a `Conflict`.
    async fn insert_connector(&self, row: &ConnectorRow) -> StoreResult<()>;
    async fn update_connector(&self, row: &ConnectorRow) -> StoreResult<()>;
    async fn get_connector(&self, tenant: TenantId, id: Uuid) -> StoreResult<ConnectorRow>;
    async fn list_connectors(&self, tenant: TenantId, direction: Option<&str>, page: &PageRequest) -> StoreResult<Vec<ConnectorRow>>;
    async fn delete_connector(&self, tenant: TenantId, id: Uuid) -> StoreResult<()>;
    /// System: every active inbound connector of every tenant (the listener's routing).
    async fn inbound_routes(&self) -> StoreResult<Vec<ConnectorRow>>;

    // message log
    /// Stored messages with these (tenant, connector, control id) keys.
    async fn prior_messages(&self, keys: &[(Uuid, Uuid, String)]) -> StoreResult<Vec<PriorMessage>>;
    /// Counts a re-sent duplicate against the stored message.
    async fn count_duplicates(&self, ids: &[Uuid]) -> StoreResult<()>;
    /// Inserts log rows on their own (messages that change nothing else).
    async fn insert_messages(&self, rows: &[MessageRow]) -> StoreResult<()>;
    async fn list_messages(&self, tenant: TenantId, filter: &MessageFilter, page: &PageRequest) -> StoreResult<Vec<MessageRow>>;
    async fn get_message(&self, tenant: TenantId, id: Uuid) -> StoreResult<MessageRow>;
    /// Records the new outcome of a reprocessed message on its log row.
    async fn record_reprocess(&self, tenant: TenantId, row: &MessageRow) -> StoreResult<()>;

    // outbox
    /// System: outbound connectors with entries due, whose lease this worker took.
    async fn claim_destinations(&self, owner: &str, lease: chrono::Duration, limit: i64) -> StoreResult<Vec<ConnectorRow>>;
    async fn renew_destination(&self, connector: Uuid, owner: &str, lease: chrono::Duration) -> StoreResult<bool>;
    async fn release_destination(&self, connector: Uuid, owner: &str) -> StoreResult<()>;
    /// The first undelivered entry of a destination (ordering is by `seq`).
    async fn next_outbox(&self, connector: Uuid) -> StoreResult<Option<OutboxRow>>;
    /// Keeps the rendered message and its control id, before the first send.
    async fn set_outbox_message(&self, seq: i64, control_id: &str, message: &[u8]) -> StoreResult<()>;
    async fn record_delivery(&self, seq: i64, delivery: &Delivery) -> StoreResult<()>;
    async fn list_outbox(&self, tenant: TenantId, connector: Uuid, status: Option<&str>, after_seq: Option<i64>, limit: i64) -> StoreResult<Vec<OutboxRow>>;
    /// Sends a refused (`nak`) or `failed` entry again, as it was (same bytes, same MSH-10),
    /// before the entries after it. `Conflict` for an entry that is pending or acknowledged.
    async fn requeue_outbox(&self, tenant: TenantId, connector: Uuid, seq: i64) -> StoreResult<OutboxRow>;

    // round trips
    async fn insert_round_trip(&self, row: &RoundTripRow) -> StoreResult<()>;
    async fn finish_round_trip(&self, tenant: TenantId, id: Uuid, status: &str, result: &Value) -> StoreResult<()>;
    async fn get_round_trip(&self, tenant: TenantId, connector: Uuid, id: Uuid) -> StoreResult<RoundTripRow>;
    /// Every order an inbound ORM/OMI touched in the window (from `connector` when
    /// given), with its study and report as they are now.
    async fn order_chains(&self, tenant: TenantId, connector: Option<Uuid>, from: DateTime<Utc>, to: DateTime<Utc>) -> StoreResult<Vec<ChainRow>>;
    /// Messages of the window that did not apply: errors, rejects, conflicts, and
    /// results that named no known order.
    async fn window_problems(&self, tenant: TenantId, connector: Option<Uuid>, from: DateTime<Utc>, to: DateTime<Utc>) -> StoreResult<Vec<MessageRow>>;
}

pub struct SqlHl7Store {
    db: Db,
}

impl SqlHl7Store {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The log rows as one multi-row INSERT (a follow-up of the batch that applied them).
pub fn message_inserts(db: &Db, rows: &[MessageRow]) -> Vec<Followup> {
    const COLUMNS: &[(&str, &str)] = &[
        ("id", "uuid"), ("tenant_id", "uuid"), ("connector_id", "uuid"), ("peer", "text"), ("message_type", "text"), ("control_id", "text"),
        ("version_id", "text"), ("sending_application", "text"), ("sending_facility", "text"), ("content_hash", "text"), ("raw", "bytea"),
        ("status", "text"), ("ack_code", "text"), ("ack", "bytea"), ("error", "text"), ("order_id", "uuid"), ("report_id", "uuid"),
        ("duplicates", "integer"), ("received_at", "timestamptz"), ("processed_at", "timestamptz"),
    ];
    rows.chunks(db.batch_rows(rows.len(), 1000).min(1000))
        .map(|chunk| {
            let values = chunk
                .iter()
                .map(|r| {
                    vec![
                        Arg::Uuid(r.id), Arg::Uuid(r.tenant_id), Arg::OptUuid(r.connector_id), Arg::OptText(r.peer.clone()),
                        Arg::OptText(r.message_type.clone()), Arg::OptText(r.control_id.clone()), Arg::OptText(r.version_id.clone()),
                        Arg::OptText(r.sending_application.clone()), Arg::OptText(r.sending_facility.clone()), Arg::Text(r.content_hash.clone()),
                        Arg::Bytes(r.raw.clone()), Arg::Text(r.status.clone()), Arg::OptText(r.ack_code.clone()), Arg::OptBytes(r.ack.clone()),
                        Arg::OptText(r.error.clone()), Arg::OptUuid(r.order_id), Arg::OptUuid(r.report_id), Arg::OptInt32(Some(r.duplicates)),
                        Arg::Time(r.received_at), Arg::Time(r.processed_at),
                    ]
                })
                .collect();
            let mut sql = SqlBuf::bulk_insert(db, "hl7_messages", COLUMNS, values);
            // A control id stored before (a re-sent message, or one another process stored
            // first) rolls this transaction back: nothing is applied twice; the writer then
            // checks those messages for duplicates and answers with the stored ACK.
            // PostgreSQL names the unique index it met, so the insert is plain and may run
            // inside the batch's own statement; SQLite's inserts are counted instead.
            let fence = match db {
                Db::Postgres(_) => Fence::Unique("hl7_messages_control_once"),
                Db::Sqlite(_) => {
                    sql.push(" ON CONFLICT (tenant_id, connector_id, control_id) WHERE status <> 'conflict' DO NOTHING");
                    Fence::Rows(chunk.len() as u64)
                }
            };
            Followup { sql, fence, independent: true }
        })
        .collect()
}

/// Queues `event` for these resources to every active outbound connector of the tenant
/// subscribed to it (once per resource version; `version_column` NULL means once per
/// resource). `filter` restricts the resource rows (e.g. a status).
pub fn enqueue_event(tenant: TenantId, event: &str, resource_type: &str, table: &str, ids: &[Uuid], once_per_resource: bool, filter: &str) -> Option<Followup> {
    if ids.is_empty() {
        return None;
    }
    let mut sql = SqlBuf::new("INSERT INTO hl7_outbox (tenant_id, connector_id, event, resource_type, resource_id, resource_version, status, attempts, next_attempt_at, created_at) SELECT c.tenant_id, c.id, ");
    let e = sql.arg(Arg::Text(event.to_string()));
    let rt = sql.arg(Arg::Text(resource_type.to_string()));
    let now = sql.arg(Arg::Time(crate::db::now()));
    let version = if once_per_resource { "0" } else { "r.version" };
    sql.push(&format!("{e}, {rt}, r.id, {version}, 'pending', 0, {now}, {now} FROM hl7_connectors c JOIN {table} r ON r.tenant_id = c.tenant_id WHERE c.tenant_id = "));
    let t = sql.arg(Arg::Uuid(tenant.0));
    let pattern = sql.arg(Arg::Text(format!("%\"{event}\"%")));
    sql.push(&format!("{t} AND c.direction = 'outbound' AND c.active = TRUE AND CAST(c.events AS TEXT) LIKE {pattern} {filter} AND r.id IN ("));
    let ids: Vec<String> = ids.iter().map(|id| sql.arg(Arg::Uuid(*id))).collect();
    sql.push(&ids.join(", ")).push(") ORDER BY r.id ON CONFLICT (connector_id, event, resource_id, resource_version) DO NOTHING");
    // It reads the batch's rows: it runs after them.
    Some(Followup { sql, fence: Fence::None, independent: false })
}

#[async_trait]
impl Hl7Store for SqlHl7Store {
    async fn insert_connector(&self, row: &ConnectorRow) -> StoreResult<()> {
        let sql = format!("INSERT INTO hl7_connectors ({CONNECTOR_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)");
        let result = on_db!(&self.db, pool => sqlx::query(&sql)
            .bind(row.id).bind(row.tenant_id).bind(&row.direction).bind(&row.name).bind(&row.sending_application).bind(&row.sending_facility)
            .bind(row.facility_id).bind(&row.host).bind(row.port).bind(row.ack_timeout_ms).bind(row.retry).bind(&row.tls).bind(&row.events)
            .bind(row.active).bind(row.created_at).bind(row.updated_at)
            .execute(pool).await.map(|r| r.rows_affected()));
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(
                "a connector with this name exists, or another connector already receives from this sending application and facility".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn update_connector(&self, row: &ConnectorRow) -> StoreResult<()> {
        let sql = "UPDATE hl7_connectors SET name = $3, sending_application = $4, sending_facility = $5, facility_id = $6, host = $7, port = $8, \
                   ack_timeout_ms = $9, retry = $10, tls = $11, events = $12, active = $13, updated_at = $14 WHERE tenant_id = $1 AND id = $2";
        let result = on_db!(&self.db, pool => sqlx::query(sql)
            .bind(row.tenant_id).bind(row.id).bind(&row.name).bind(&row.sending_application).bind(&row.sending_facility).bind(row.facility_id)
            .bind(&row.host).bind(row.port).bind(row.ack_timeout_ms).bind(row.retry).bind(&row.tls).bind(&row.events).bind(row.active)
            .bind(row.updated_at)
            .execute(pool).await.map(|r| r.rows_affected()));
        match result {
            Ok(0) => Err(StoreError::NotFound),
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(
                "a connector with this name exists, or another connector already receives from this sending application and facility".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_connector(&self, tenant: TenantId, id: Uuid) -> StoreResult<ConnectorRow> {
        let sql = format!("SELECT {CONNECTOR_COLUMNS} FROM hl7_connectors WHERE tenant_id = $1 AND id = $2");
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, ConnectorRow>(&sql).bind(tenant.0).bind(id).fetch_optional(pool).await)?;
        row.ok_or(StoreError::NotFound)
    }

    async fn list_connectors(&self, tenant: TenantId, direction: Option<&str>, page: &PageRequest) -> StoreResult<Vec<ConnectorRow>> {
        let mut sql = SqlBuf::new(format!("SELECT {CONNECTOR_COLUMNS} FROM hl7_connectors WHERE tenant_id = "));
        let t = sql.arg(Arg::Uuid(tenant.0));
        sql.push(&t);
        if let Some(d) = direction {
            let d = sql.arg(Arg::Text(d.to_string()));
            sql.push(&format!(" AND direction = {d}"));
        }
        sql.push_page("", "created_at", page);
        let rows = on_db!(&self.db, pool => bind_args!(sqlx::query_as::<_, ConnectorRow>(&sql.text), &sql.args).fetch_all(pool).await)?;
        Ok(rows)
    }

    async fn delete_connector(&self, tenant: TenantId, id: Uuid) -> StoreResult<()> {
        let n = on_db!(&self.db, pool => sqlx::query("DELETE FROM hl7_connectors WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.0).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn inbound_routes(&self) -> StoreResult<Vec<ConnectorRow>> {
        let sql = format!("SELECT {CONNECTOR_COLUMNS} FROM hl7_connectors WHERE direction = 'inbound' AND active = TRUE");
        let rows = on_db!(&self.db, pool => sqlx::query_as::<_, ConnectorRow>(&sql).fetch_all(pool).await)?;
        Ok(rows)
    }

    async fn prior_messages(&self, keys: &[(Uuid, Uuid, String)]) -> StoreResult<Vec<PriorMessage>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Per sender, its control ids as ONE argument: an OR of per-key conditions made
        // PostgreSQL scan the sender's whole index range (it factors the shared columns out).
        let mut senders: Vec<((Uuid, Uuid), Vec<String>)> = Vec::new();
        for (t, c, id) in keys {
            match senders.iter_mut().find(|(k, _)| *k == (*t, *c)) {
                Some((_, ids)) => ids.push(id.clone()),
                None => senders.push(((*t, *c), vec![id.clone()])),
            }
        }
        let mut sql = SqlBuf::new("SELECT id, tenant_id, connector_id, control_id, content_hash, ack, received_at FROM hl7_messages WHERE ");
        for (n, ((t, c), ids)) in senders.into_iter().enumerate() {
            let (t, c) = (sql.arg(Arg::Uuid(t)), sql.arg(Arg::Uuid(c)));
            sql.push(if n == 0 { "(" } else { " OR (" });
            sql.push(&format!("tenant_id = {t} AND connector_id = {c} AND "));
            sql.push_in_keys(&self.db, "control_id", ids);
            sql.push(")");
        }
        sql.push(" ORDER BY received_at");
        let rows = on_db!(&self.db, pool => bind_args!(sqlx::query_as::<_, PriorMessage>(&sql.text), &sql.args).fetch_all(pool).await)?;
        Ok(rows)
    }

    async fn count_duplicates(&self, ids: &[Uuid]) -> StoreResult<()> {
        for id in ids {
            on_db!(&self.db, pool => sqlx::query("UPDATE hl7_messages SET duplicates = duplicates + 1 WHERE id = $1").bind(*id).execute(pool).await.map(|r| r.rows_affected()))?;
        }
        Ok(())
    }

    async fn insert_messages(&self, rows: &[MessageRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        on_db!(&self.db, pool => async {
            let mut tx = begin_write(pool).await?;
            // A control id stored before is `Fenced`: the writer checks it for a duplicate.
            run_followups!(tx, message_inserts(&self.db, rows))?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        }.await)
    }

    async fn list_messages(&self, tenant: TenantId, filter: &MessageFilter, page: &PageRequest) -> StoreResult<Vec<MessageRow>> {
        let mut sql = SqlBuf::new(format!("SELECT {MESSAGE_COLUMNS} FROM hl7_messages WHERE tenant_id = "));
        let t = sql.arg(Arg::Uuid(tenant.0));
        sql.push(&t);
        if let Some(c) = filter.connector_id {
            let c = sql.arg(Arg::Uuid(c));
            sql.push(&format!(" AND connector_id = {c}"));
        }
        for (column, value) in [("message_type", &filter.message_type), ("control_id", &filter.control_id), ("status", &filter.status)] {
            if let Some(v) = value {
                let v = sql.arg(Arg::Text(v.clone()));
                sql.push(&format!(" AND {column} = {v}"));
            }
        }
        sql.push_bounds("received_at", &filter.received);
        sql.push_page("", "received_at", page);
        let rows = on_db!(&self.db, pool => bind_args!(sqlx::query_as::<_, MessageRow>(&sql.text), &sql.args).fetch_all(pool).await)?;
        Ok(rows)
    }

    async fn get_message(&self, tenant: TenantId, id: Uuid) -> StoreResult<MessageRow> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM hl7_messages WHERE tenant_id = $1 AND id = $2");
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, MessageRow>(&sql).bind(tenant.0).bind(id).fetch_optional(pool).await)?;
        row.ok_or(StoreError::NotFound)
    }

    async fn record_reprocess(&self, tenant: TenantId, row: &MessageRow) -> StoreResult<()> {
        let sql = "UPDATE hl7_messages SET status = $3, ack_code = $4, ack = $5, error = $6, order_id = $7, report_id = $8, processed_at = $9 \
                   WHERE tenant_id = $1 AND id = $2";
        on_db!(&self.db, pool => sqlx::query(sql)
            .bind(tenant.0).bind(row.id).bind(&row.status).bind(&row.ack_code).bind(&row.ack).bind(&row.error).bind(row.order_id)
            .bind(row.report_id).bind(row.processed_at)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    async fn claim_destinations(&self, owner: &str, lease: chrono::Duration, limit: i64) -> StoreResult<Vec<ConnectorRow>> {
        let now = crate::db::now();
        let until = now + lease;
        // Candidates, then a compare-and-set per connector: the lease is the lock.
        let candidates: Vec<Uuid> = on_db!(&self.db, pool => sqlx::query_scalar::<_, Uuid>(
            "SELECT c.id FROM hl7_connectors c WHERE c.direction = 'outbound' AND c.active = TRUE \
               AND (c.lease_until IS NULL OR c.lease_until < $1 OR c.lease_owner = $2) \
               AND EXISTS (SELECT 1 FROM hl7_outbox o WHERE o.connector_id = c.id AND o.next_attempt_at <= $1 \
                   AND o.seq = (SELECT MIN(p.seq) FROM hl7_outbox p WHERE p.connector_id = c.id AND p.status = 'pending')) \
             ORDER BY c.id LIMIT $3")
            .bind(now).bind(owner).bind(limit).fetch_all(pool).await)?;
        let mut claimed = Vec::new();
        for id in candidates {
            let sql = format!(
                "UPDATE hl7_connectors SET lease_owner = $2, lease_until = $3 WHERE id = $1 AND active = TRUE \
                 AND (lease_until IS NULL OR lease_until < $4 OR lease_owner = $2) RETURNING {CONNECTOR_COLUMNS}"
            );
            let row = on_db!(&self.db, pool => sqlx::query_as::<_, ConnectorRow>(&sql).bind(id).bind(owner).bind(until).bind(now).fetch_optional(pool).await)?;
            claimed.extend(row);
        }
        Ok(claimed)
    }

    async fn renew_destination(&self, connector: Uuid, owner: &str, lease: chrono::Duration) -> StoreResult<bool> {
        let until = crate::db::now() + lease;
        let n = on_db!(&self.db, pool => sqlx::query("UPDATE hl7_connectors SET lease_until = $3 WHERE id = $1 AND lease_owner = $2 AND active = TRUE")
            .bind(connector).bind(owner).bind(until).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    async fn release_destination(&self, connector: Uuid, owner: &str) -> StoreResult<()> {
        on_db!(&self.db, pool => sqlx::query("UPDATE hl7_connectors SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2")
            .bind(connector).bind(owner).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    async fn next_outbox(&self, connector: Uuid) -> StoreResult<Option<OutboxRow>> {
        let sql = format!("SELECT {OUTBOX_COLUMNS} FROM hl7_outbox WHERE connector_id = $1 AND status = 'pending' ORDER BY seq LIMIT 1");
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, OutboxRow>(&sql).bind(connector).fetch_optional(pool).await)?;
        Ok(row)
    }

    async fn set_outbox_message(&self, seq: i64, control_id: &str, message: &[u8]) -> StoreResult<()> {
        on_db!(&self.db, pool => sqlx::query("UPDATE hl7_outbox SET control_id = $2, message = $3 WHERE seq = $1")
            .bind(seq).bind(control_id).bind(message).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    async fn record_delivery(&self, seq: i64, delivery: &Delivery) -> StoreResult<()> {
        let now = crate::db::now();
        on_db!(&self.db, pool => match delivery {
            Delivery::Acked { code, ack } => sqlx::query(
                "UPDATE hl7_outbox SET status = 'acked', attempts = attempts + 1, ack_code = $2, ack = $3, sent_at = COALESCE(sent_at, $4), \
                 done_at = $4, last_error = NULL WHERE seq = $1")
                .bind(seq).bind(code).bind(ack).bind(now).execute(pool).await.map(|r| r.rows_affected()),
            Delivery::Refused { status, code, ack, error } => sqlx::query(
                "UPDATE hl7_outbox SET status = $2, attempts = attempts + 1, ack_code = $3, ack = $4, sent_at = COALESCE(sent_at, $5), \
                 done_at = $5, last_error = $6 WHERE seq = $1")
                .bind(seq).bind(*status).bind(code).bind(ack).bind(now).bind(error).execute(pool).await.map(|r| r.rows_affected()),
            Delivery::Retry { error, ack_code, next, rejected } => sqlx::query(
                "UPDATE hl7_outbox SET attempts = attempts + 1, rejections = rejections + $5, last_error = $2, ack_code = $3, \
                 next_attempt_at = $4 WHERE seq = $1")
                .bind(seq).bind(error).bind(ack_code).bind(*next).bind(i32::from(*rejected)).execute(pool).await.map(|r| r.rows_affected()),
        })?;
        Ok(())
    }

    async fn list_outbox(&self, tenant: TenantId, connector: Uuid, status: Option<&str>, after_seq: Option<i64>, limit: i64) -> StoreResult<Vec<OutboxRow>> {
        let mut sql = SqlBuf::new(format!("SELECT {OUTBOX_COLUMNS} FROM hl7_outbox WHERE tenant_id = "));
        let (t, c) = (sql.arg(Arg::Uuid(tenant.0)), sql.arg(Arg::Uuid(connector)));
        sql.push(&format!("{t} AND connector_id = {c}"));
        if let Some(s) = status {
            let s = sql.arg(Arg::Text(s.to_string()));
            sql.push(&format!(" AND status = {s}"));
        }
        if let Some(a) = after_seq {
            let a = sql.arg(Arg::Int(a));
            sql.push(&format!(" AND seq > {a}"));
        }
        let l = sql.arg(Arg::Int(limit));
        sql.push(&format!(" ORDER BY seq LIMIT {l}"));
        let rows = on_db!(&self.db, pool => bind_args!(sqlx::query_as::<_, OutboxRow>(&sql.text), &sql.args).fetch_all(pool).await)?;
        Ok(rows)
    }

    async fn requeue_outbox(&self, tenant: TenantId, connector: Uuid, seq: i64) -> StoreResult<OutboxRow> {
        let now = crate::db::now();
        let sql = format!(
            "UPDATE hl7_outbox SET status = 'pending', rejections = 0, next_attempt_at = $4, done_at = NULL \
             WHERE tenant_id = $1 AND connector_id = $2 AND seq = $3 AND status IN ('nak', 'failed') RETURNING {OUTBOX_COLUMNS}"
        );
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, OutboxRow>(&sql).bind(tenant.0).bind(connector).bind(seq).bind(now)
            .fetch_optional(pool).await)?;
        match row {
            Some(r) => Ok(r),
            None => {
                // Tell "no such entry" from "not refused".
                let exists = self.list_outbox(tenant, connector, None, Some(seq - 1), 1).await?.into_iter().any(|r| r.seq == seq);
                if exists {
                    Err(StoreError::Conflict("only a refused (nak) or failed entry can be sent again".into()))
                } else {
                    Err(StoreError::NotFound)
                }
            }
        }
    }

    async fn insert_round_trip(&self, row: &RoundTripRow) -> StoreResult<()> {
        on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO hl7_round_trips (id, tenant_id, connector_id, status, window_from, window_to, result, requested_by, created_at, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(row.id).bind(row.tenant_id).bind(row.connector_id).bind(&row.status).bind(row.window_from).bind(row.window_to)
            .bind(&row.result).bind(&row.requested_by).bind(row.created_at).bind(row.finished_at)
            .execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    async fn finish_round_trip(&self, tenant: TenantId, id: Uuid, status: &str, result: &Value) -> StoreResult<()> {
        on_db!(&self.db, pool => sqlx::query("UPDATE hl7_round_trips SET status = $3, result = $4, finished_at = $5 WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.0).bind(id).bind(status).bind(Json(result)).bind(crate::db::now()).execute(pool).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    async fn get_round_trip(&self, tenant: TenantId, connector: Uuid, id: Uuid) -> StoreResult<RoundTripRow> {
        let row = on_db!(&self.db, pool => sqlx::query_as::<_, RoundTripRow>(
            "SELECT id, tenant_id, connector_id, status, window_from, window_to, result, requested_by, created_at, finished_at \
             FROM hl7_round_trips WHERE tenant_id = $1 AND connector_id = $2 AND id = $3")
            .bind(tenant.0).bind(connector).bind(id).fetch_optional(pool).await)?;
        row.ok_or(StoreError::NotFound)
    }

    async fn order_chains(&self, tenant: TenantId, connector: Option<Uuid>, from: DateTime<Utc>, to: DateTime<Utc>) -> StoreResult<Vec<ChainRow>> {
        let sql = "SELECT o.id AS order_id, o.placer_number, o.filler_number, o.accession_number, o.study_uid, o.status AS order_status, \
                   (SELECT s.id FROM imaging_studies s WHERE s.tenant_id = o.tenant_id \
                      AND (s.pacs_study_uid = o.study_uid OR s.accession_number = o.accession_number) ORDER BY s.created_at LIMIT 1) AS study_id, \
                   (SELECT s.status FROM imaging_studies s WHERE s.tenant_id = o.tenant_id \
                      AND (s.pacs_study_uid = o.study_uid OR s.accession_number = o.accession_number) ORDER BY s.created_at LIMIT 1) AS study_status, \
                   (SELECT r.id FROM diagnostic_reports r WHERE r.tenant_id = o.tenant_id AND r.order_id = o.id ORDER BY r.updated_at DESC LIMIT 1) AS report_id, \
                   (SELECT r.status FROM diagnostic_reports r WHERE r.tenant_id = o.tenant_id AND r.order_id = o.id ORDER BY r.updated_at DESC LIMIT 1) AS report_status \
                   FROM orders o WHERE o.tenant_id = $1 AND o.id IN (SELECT m.order_id FROM hl7_messages m WHERE m.tenant_id = $1 \
                      AND m.order_id IS NOT NULL AND m.received_at >= $2 AND m.received_at < $3 AND ($4 IS NULL OR m.connector_id = $4) \
                      AND (m.message_type LIKE 'ORM%' OR m.message_type LIKE 'OMI%')) \
                   ORDER BY o.created_at, o.id";
        let rows = on_db!(&self.db, pool => sqlx::query_as::<_, ChainRow>(sql).bind(tenant.0).bind(from).bind(to).bind(connector).fetch_all(pool).await)?;
        Ok(rows)
    }

    async fn window_problems(&self, tenant: TenantId, connector: Option<Uuid>, from: DateTime<Utc>, to: DateTime<Utc>) -> StoreResult<Vec<MessageRow>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM hl7_messages WHERE tenant_id = $1 AND received_at >= $2 AND received_at < $3 \
             AND ($4 IS NULL OR connector_id = $4) \
             AND (status <> 'processed' OR (message_type LIKE 'ORU%' AND order_id IS NULL)) ORDER BY received_at, id LIMIT 1000"
        );
        let rows = on_db!(&self.db, pool => sqlx::query_as::<_, MessageRow>(&sql).bind(tenant.0).bind(from).bind(to).bind(connector).fetch_all(pool).await)?;
        Ok(rows)
    }
}
