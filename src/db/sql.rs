//! Dynamic SQL shared by both backends: text with `$n` placeholders plus typed
//! arguments, bound per backend by [`bind_args!`].

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub enum Arg {
    Text(String),
    Uuid(Uuid),
    Time(DateTime<Utc>),
    Int(i64),
    Bool(bool),
    Json(Value),
    /// JSON already serialized (compact): what a bulk insert carries for big documents.
    JsonText(String),
    /// Nullable values keep their SQL type (PostgreSQL refuses a text NULL in a uuid column).
    OptText(Option<String>),
    OptUuid(Option<Uuid>),
    OptTime(Option<DateTime<Utc>>),
    OptInt32(Option<i32>),
    Bytes(Vec<u8>),
    OptBytes(Option<Vec<u8>>),
}

#[derive(Debug, Default, Clone)]
pub struct SqlBuf {
    pub text: String,
    pub args: Vec<Arg>,
}

impl SqlBuf {
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into(), args: Vec::new() }
    }

    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Adds an argument and returns its placeholder.
    pub fn arg(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }
}

/// Binds every [`Arg`] of `$args` to the query `$q` (any backend).
#[macro_export]
macro_rules! bind_args {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for arg in $args {
            q = match arg {
                $crate::db::sql::Arg::Text(v) => q.bind(v.clone()),
                $crate::db::sql::Arg::Uuid(v) => q.bind(*v),
                $crate::db::sql::Arg::Time(v) => q.bind(*v),
                $crate::db::sql::Arg::Int(v) => q.bind(*v),
                $crate::db::sql::Arg::Bool(v) => q.bind(*v),
                $crate::db::sql::Arg::OptText(v) => q.bind(v.clone()),
                $crate::db::sql::Arg::OptUuid(v) => q.bind(*v),
                $crate::db::sql::Arg::OptTime(v) => q.bind(*v),
                $crate::db::sql::Arg::OptInt32(v) => q.bind(*v),
                $crate::db::sql::Arg::Json(v) => q.bind(sqlx::types::Json(v.clone())),
                $crate::db::sql::Arg::JsonText(v) => q.bind(v.clone()),
                $crate::db::sql::Arg::Bytes(v) => q.bind(v.clone()),
                $crate::db::sql::Arg::OptBytes(v) => q.bind(v.clone()),
            };
        }
        q
    }};
}

/// What a batch writer did with one item, in input order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertOutcome {
    Created(Uuid),
    Updated(Uuid),
    Unchanged(Uuid),
}

impl UpsertOutcome {
    /// (created, updated, unchanged) among `outcomes`.
    pub fn tally(outcomes: &[UpsertOutcome]) -> (i64, i64, i64) {
        outcomes.iter().fold((0, 0, 0), |(c, u, n), o| match o {
            UpsertOutcome::Created(_) => (c + 1, u, n),
            UpsertOutcome::Updated(_) => (c, u + 1, n),
            UpsertOutcome::Unchanged(_) => (c, u, n + 1),
        })
    }

    pub fn id(&self) -> Uuid {
        match self {
            UpsertOutcome::Created(id) | UpsertOutcome::Updated(id) | UpsertOutcome::Unchanged(id) => *id,
        }
    }
}

/// A statement another context asks a batch writer to run in the same transaction as
/// the batch (a job checkpoint, rejected lines, an id mapping). A `fence` must change
/// at least one row, or the whole transaction is rolled back: that is how a worker
/// that lost its lease is kept from writing.
#[derive(Debug, Clone)]
pub struct Followup {
    pub sql: SqlBuf,
    pub fence: Fence,
}

/// What a follow-up must change for its transaction to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    None,
    /// At least one row (a lease that is still ours).
    AnyRow,
    /// Exactly this many rows (each insert new: nobody stored them first).
    Rows(u64),
}

/// Awaited by a batch writer just before its follow-ups and COMMIT; `false` rolls the
/// batch back (as `Fenced`). It orders the commits of batches written concurrently.
pub type CommitGate<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;

/// What another context adds to a batch's transaction.
pub struct AfterWrite<'a> {
    /// Statements built from the batch's outcomes (a checkpoint, rejected lines, …).
    pub followups: &'a (dyn Fn(&[UpsertOutcome]) -> Vec<Followup> + Send + Sync),
    /// Waited for once the batch's own statements ran, before the follow-ups.
    pub gate: Option<CommitGate<'a>>,
}

impl<'a> AfterWrite<'a> {
    /// Waits for the gate, then runs the follow-ups in the open transaction `$tx`.
    pub async fn gate(self) -> Result<&'a (dyn Fn(&[UpsertOutcome]) -> Vec<Followup> + Send + Sync), super::StoreError> {
        if let Some(gate) = self.gate {
            if !gate.await {
                return Err(super::StoreError::Fenced);
            }
        }
        Ok(self.followups)
    }
}

/// Runs follow-ups inside the open transaction `$tx`; evaluates to
/// `Err(StoreError::Fenced)` when a fence changed nothing.
#[macro_export]
macro_rules! run_followups {
    ($tx:expr, $followups:expr) => {{
        let mut result: Result<(), $crate::db::StoreError> = Ok(());
        for f in $followups {
            let n = $crate::bind_args!(sqlx::query(&f.sql.text), &f.sql.args).execute(&mut *$tx).await?.rows_affected();
            let fenced = match f.fence {
                $crate::db::sql::Fence::None => false,
                $crate::db::sql::Fence::AnyRow => n == 0,
                $crate::db::sql::Fence::Rows(expected) => n != expected,
            };
            if fenced {
                result = Err($crate::db::StoreError::Fenced);
                break;
            }
        }
        result
    }};
}

impl Arg {
    /// Appends the value as JSON, for PostgreSQL's `jsonb_to_recordset` bulk statements.
    fn write_json(&self, out: &mut String) {
        let text = |v: &str, out: &mut String| out.push_str(&Value::String(v.to_string()).to_string());
        let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        match self {
            Arg::Text(v) | Arg::OptText(Some(v)) => text(v, out),
            Arg::Uuid(v) | Arg::OptUuid(Some(v)) => out.push_str(&format!("\"{v}\"")),
            Arg::Time(v) | Arg::OptTime(Some(v)) => out.push_str(&format!("\"{}\"", time(v))),
            Arg::Int(v) => out.push_str(&v.to_string()),
            Arg::OptInt32(Some(v)) => out.push_str(&v.to_string()),
            Arg::Bool(v) => out.push_str(if *v { "true" } else { "false" }),
            Arg::Json(v) => out.push_str(&v.to_string()),
            Arg::JsonText(v) => out.push_str(v),
            // bytea's hex input form
            Arg::Bytes(v) | Arg::OptBytes(Some(v)) => {
                out.push_str("\"\\\\x");
                for b in v {
                    out.push_str(&format!("{b:02x}"));
                }
                out.push('"');
            }
            Arg::OptText(None) | Arg::OptUuid(None) | Arg::OptTime(None) | Arg::OptInt32(None) | Arg::OptBytes(None) => out.push_str("null"),
        }
    }
}

impl SqlBuf {
    /// `SELECT <columns> FROM <table> WHERE tenant_id = … AND <key> IN (<keys>)`, rows
    /// locked in key order (PostgreSQL `FOR UPDATE`; SQLite's writers are serialized
    /// already): the lookup of a batch upsert.
    pub fn locked_lookup(db: &super::Db, columns: &str, table: &str, tenant: Uuid, key: &str, keys: Vec<String>) -> Self {
        let mut sql = SqlBuf::new(format!("SELECT {columns} FROM {table} WHERE tenant_id = "));
        let t = sql.arg(Arg::Uuid(tenant));
        sql.push(&t).push(" AND ");
        sql.push_in_keys(db, key, keys);
        // Rows are locked in key order, so concurrent writers cannot deadlock.
        sql.push(&format!(" ORDER BY {key}"));
        if matches!(db, super::Db::Postgres(_)) {
            sql.push(" FOR UPDATE");
        }
        sql
    }

    /// `<column> IN (<keys>)` with the keys as ONE argument (a JSON array), so the
    /// statement text and its plan do not depend on how many keys a batch has.
    pub fn push_in_keys(&mut self, db: &super::Db, column: &str, keys: Vec<String>) -> &mut Self {
        let p = self.arg(Arg::Json(Value::from(keys)));
        match db {
            super::Db::Postgres(_) => self.push(&format!("{column} = ANY(ARRAY(SELECT jsonb_array_elements_text({p})))")),
            super::Db::Sqlite(_) => self.push(&format!("{column} IN (SELECT value FROM json_each({p}))")),
        }
    }

    /// A multi-row INSERT of `rows` (values in `columns` order; `columns` pairs each
    /// name with its PostgreSQL type). PostgreSQL gets all rows as one JSON argument
    /// expanded by `jsonb_to_recordset` (one parse, a trivial plan, no argument limit);
    /// SQLite, in process, gets a plain `VALUES` list. Append `ON CONFLICT …` after.
    pub fn bulk_insert(db: &super::Db, table: &str, columns: &[(&str, &str)], rows: Vec<Vec<Arg>>) -> Self {
        let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
        let mut sql = SqlBuf::new(format!("INSERT INTO {table} ({}) ", names.join(", ")));
        match db {
            super::Db::Postgres(_) => {
                let mut doc = String::from("[");
                for (r, row) in rows.iter().enumerate() {
                    doc.push_str(if r == 0 { "{" } else { ",{" });
                    for (c, (name, arg)) in names.iter().zip(row).enumerate() {
                        if c > 0 {
                            doc.push(',');
                        }
                        doc.push_str(&format!("\"{name}\":"));
                        arg.write_json(&mut doc);
                    }
                    doc.push('}');
                }
                doc.push(']');
                drop(rows);
                let p = format!("CAST({} AS jsonb)", sql.arg(Arg::Text(doc)));
                let types: Vec<String> = columns.iter().map(|(n, t)| format!("{n} {t}")).collect();
                sql.push(&format!("SELECT {} FROM jsonb_to_recordset({p}) AS x({})", names.join(", "), types.join(", ")));
            }
            super::Db::Sqlite(_) => {
                sql.push("VALUES ");
                for (n, row) in rows.into_iter().enumerate() {
                    let placeholders: Vec<String> = row.into_iter().map(|v| sql.arg(v)).collect();
                    sql.push(if n == 0 { "(" } else { ", (" }).push(&placeholders.join(", ")).push(")");
                }
            }
        }
        sql
    }
}

impl SqlBuf {
    /// ` AND (<time>, <id>) after the page's cursor ORDER BY <time>, <id> LIMIT …`: one
    /// page of a keyset-paged list (`alias` is the table's alias, with its dot, or "").
    pub fn push_page(&mut self, alias: &str, time: &str, page: &crate::pagination::PageRequest) -> &mut Self {
        let (t, id) = (format!("{alias}{time}"), format!("{alias}id"));
        if let Some(after) = page.after {
            let (c, i) = (self.arg(Arg::Time(after.created_at)), self.arg(Arg::Uuid(after.id)));
            self.push(&format!(" AND ({t} > {c} OR ({t} = {c} AND {id} > {i}))"));
        }
        let limit = self.arg(Arg::Int(page.fetch_limit()));
        self.push(&format!(" ORDER BY {t}, {id} LIMIT {limit}"))
    }
}

/// A half-open time bound of a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// at or after
    From(DateTime<Utc>),
    /// strictly before
    Before(DateTime<Utc>),
}

impl SqlBuf {
    /// ` AND <column> >= …` / ` AND <column> < …` for each bound.
    pub fn push_bounds(&mut self, column: &str, bounds: &[Bound]) -> &mut Self {
        for bound in bounds {
            let (op, at) = match bound {
                Bound::From(t) => (">=", *t),
                Bound::Before(t) => ("<", *t),
            };
            let p = self.arg(Arg::Time(at));
            self.push(&format!(" AND {column} {op} {p}"));
        }
        self
    }

    /// ` AND (…)`: the FHIR resource in `payload` (a JSON column) has one of these
    /// `meta.tag`s (system, code); no system matches any.
    pub fn push_tags(&mut self, db: &super::Db, payload: &str, tags: &[(Option<String>, String)]) -> &mut Self {
        if tags.is_empty() {
            return self;
        }
        let terms: Vec<String> = tags
            .iter()
            .map(|(system, code)| match db {
                super::Db::Postgres(_) => {
                    let mut tag = serde_json::json!({"code": code});
                    if let Some(s) = system {
                        tag["system"] = serde_json::json!(s);
                    }
                    format!("{payload} @> {}", self.arg(Arg::Json(serde_json::json!({"meta": {"tag": [tag]}}))))
                }
                super::Db::Sqlite(_) => {
                    let c = self.arg(Arg::Text(code.clone()));
                    let system = match system {
                        Some(s) => format!(" AND json_extract(t.value, '$.system') = {}", self.arg(Arg::Text(s.clone()))),
                        None => String::new(),
                    };
                    format!("EXISTS (SELECT 1 FROM json_each({payload}, '$.meta.tag') t WHERE json_extract(t.value, '$.code') = {c}{system})")
                }
            })
            .collect();
        self.push(&format!(" AND ({})", terms.join(" OR ")))
    }
}
