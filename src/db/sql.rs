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
    /// A whole column of a PostgreSQL bulk insert, bound as one array (`unnest`).
    Array(ArrayArg),
    /// A list of strings, each without a newline: a PostgreSQL `text[]`, SQLite JSON text.
    TextList(Vec<String>),
}

/// One column's values as a PostgreSQL array argument (see [`SqlBuf::bulk_insert`]).
/// Only PostgreSQL statements carry them; SQLite has no array type.
#[derive(Debug, Clone)]
pub enum ArrayArg {
    Uuid(Vec<Option<Uuid>>),
    /// Also `jsonb` columns, as serialized JSON cast in the statement.
    Text(Vec<Option<String>>),
    Time(Vec<Option<DateTime<Utc>>>),
    Int32(Vec<Option<i32>>),
    Int64(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
    Bytes(Vec<Option<Vec<u8>>>),
}

/// What [`bind_args!`] does with the arguments whose binding differs per backend.
pub trait BindArray<'q>: Sized {
    /// Binds the array by reference: a column of a big batch is not copied.
    fn bind_array(self, array: &'q ArrayArg) -> Self;
    /// Binds [`Arg::TextList`].
    fn bind_list(self, list: &'q Vec<String>) -> Self;
}

macro_rules! bind_array {
    (postgres: $(<$($g:lifetime),* $(, $t:ident)?> $ty:ty),*) => {$(
        impl<$($g),* $(, $t)?> BindArray<'q> for $ty {
            fn bind_array(self, array: &'q ArrayArg) -> Self {
                match array {
                    ArrayArg::Uuid(v) => self.bind(v),
                    ArrayArg::Text(v) => self.bind(v),
                    ArrayArg::Time(v) => self.bind(v),
                    ArrayArg::Int32(v) => self.bind(v),
                    ArrayArg::Int64(v) => self.bind(v),
                    ArrayArg::Bool(v) => self.bind(v),
                    ArrayArg::Bytes(v) => self.bind(v),
                }
            }

            fn bind_list(self, list: &'q Vec<String>) -> Self {
                self.bind(list)
            }
        }
    )*};
    (sqlite: $(<$($g:lifetime),* $(, $t:ident)?> $ty:ty),*) => {$(
        impl<$($g),* $(, $t)?> BindArray<'q> for $ty {
            fn bind_array(self, _: &'q ArrayArg) -> Self {
                unreachable!("array arguments are built for PostgreSQL statements only")
            }

            fn bind_list(self, list: &'q Vec<String>) -> Self {
                self.bind(serde_json::to_string(list).expect("strings serialize"))
            }
        }
    )*};
}

type PgArgs<'q> = <sqlx::Postgres as sqlx::Database>::Arguments<'q>;
type SqliteArgs<'q> = <sqlx::Sqlite as sqlx::Database>::Arguments<'q>;
bind_array!(postgres:
    <'q> sqlx::query::Query<'q, sqlx::Postgres, PgArgs<'q>>,
    <'q, O> sqlx::query::QueryAs<'q, sqlx::Postgres, O, PgArgs<'q>>,
    <'q, O> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, PgArgs<'q>>
);
bind_array!(sqlite:
    <'q> sqlx::query::Query<'q, sqlx::Sqlite, SqliteArgs<'q>>,
    <'q, O> sqlx::query::QueryAs<'q, sqlx::Sqlite, O, SqliteArgs<'q>>,
    <'q, O> sqlx::query::QueryScalar<'q, sqlx::Sqlite, O, SqliteArgs<'q>>
);

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
                $crate::db::sql::Arg::Array(v) => $crate::db::sql::BindArray::bind_array(q, v),
                $crate::db::sql::Arg::TextList(v) => $crate::db::sql::BindArray::bind_list(q, v),
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
    /// It reads nothing the batch writes and its fence needs no row count (`None` or
    /// `Unique`), so a writer may run it inside the batch's own statement (see
    /// [`with_followups`]).
    pub independent: bool,
}

/// What a follow-up must change for its transaction to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    None,
    /// At least one row (a lease that is still ours).
    AnyRow,
    /// Exactly this many rows (each insert new: nobody stored them first).
    Rows(u64),
    /// A plain insert that must not meet this unique index (PostgreSQL, which names the
    /// index in the error): a row stored first rolls the whole write back.
    Unique(&'static str),
}

impl Fence {
    /// Whether `e` is this fence refusing the write (a unique violation of its index).
    pub fn refused(&self, e: &sqlx::Error) -> bool {
        match (self, e) {
            (Fence::Unique(index), sqlx::Error::Database(db)) => db.is_unique_violation() && db.constraint() == Some(*index),
            _ => false,
        }
    }
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
    /// The caller expects the rows to be new (an import whose batch before created all
    /// it wrote): insert first, and look up only the rows whose insert met an existing
    /// one. Without it each batch starts with the lookup, which a re-run or a sync of
    /// known rows needs anyway.
    pub insert_first: bool,
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

/// `main` and its follow-ups as ONE PostgreSQL statement: each follow-up becomes a
/// data-modifying `WITH` member, its placeholders numbered after `main`'s. Run outside
/// a transaction ([`execute_alone`]) it is its own transaction: one round trip and one
/// commit for all, and any error (a fence's unique index met, a unique key of `main`)
/// writes nothing. Members see the database as it was before the statement, not each
/// other's rows: only [`Followup::independent`] follow-ups may go in, `None` when one
/// may not.
pub fn with_followups(main: SqlBuf, followups: &[Followup]) -> Option<SqlBuf> {
    if followups.iter().any(|f| !f.independent || !matches!(f.fence, Fence::None | Fence::Unique(_))) {
        return None;
    }
    let mut members = Vec::with_capacity(followups.len());
    let mut args = main.args;
    for (i, f) in followups.iter().enumerate() {
        members.push(format!("f{i} AS ({})", shift_placeholders(&f.sql.text, args.len())));
        args.extend(f.sql.args.iter().cloned());
    }
    let text = if members.is_empty() { main.text } else { format!("WITH {} {}", members.join(", "), main.text) };
    Some(SqlBuf { text, args })
}

/// Runs a statement of [`with_followups`] outside any transaction; a unique index one of
/// `followups` fences with refusing it is `Fenced`. Returns the rows `main` changed.
pub async fn execute_alone(pool: &sqlx::PgPool, sql: &SqlBuf, followups: &[Followup]) -> Result<u64, super::StoreError> {
    match bind_args!(sqlx::query(&sql.text), &sql.args).execute(pool).await {
        Ok(done) => Ok(done.rows_affected()),
        Err(e) if followups.iter().any(|f| f.fence.refused(&e)) => Err(super::StoreError::Fenced),
        Err(e) => Err(e.into()),
    }
}

/// `text` with every `$n` placeholder outside quoted literals raised by `offset`.
fn shift_placeholders(text: &str, offset: usize) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        out.push(c);
        match c {
            '\'' => quoted = !quoted,
            '$' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut n = 0usize;
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    n = n * 10 + d as usize;
                    chars.next();
                }
                out.push_str(&(n + offset).to_string());
            }
            _ => {}
        }
    }
    out
}

/// Runs follow-ups inside the open transaction `$tx`; evaluates to
/// `Err(StoreError::Fenced)` when a fence changed nothing.
#[macro_export]
macro_rules! run_followups {
    ($tx:expr, $followups:expr) => {{
        let mut result: Result<(), $crate::db::StoreError> = Ok(());
        for f in $followups {
            let n = match $crate::bind_args!(sqlx::query(&f.sql.text), &f.sql.args).execute(&mut *$tx).await {
                Ok(done) => done.rows_affected(),
                Err(e) if f.fence.refused(&e) => {
                    result = Err($crate::db::StoreError::Fenced);
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            let fenced = match f.fence {
                $crate::db::sql::Fence::None | $crate::db::sql::Fence::Unique(_) => false,
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

impl ArrayArg {
    /// An empty column of PostgreSQL type `pg_type`, with room for `rows` values.
    fn for_type(pg_type: &str, rows: usize) -> Self {
        match pg_type {
            "uuid" => ArrayArg::Uuid(Vec::with_capacity(rows)),
            "text" | "json" | "jsonb" | "text[]" => ArrayArg::Text(Vec::with_capacity(rows)),
            "timestamptz" => ArrayArg::Time(Vec::with_capacity(rows)),
            "integer" => ArrayArg::Int32(Vec::with_capacity(rows)),
            "bigint" => ArrayArg::Int64(Vec::with_capacity(rows)),
            "boolean" => ArrayArg::Bool(Vec::with_capacity(rows)),
            "bytea" => ArrayArg::Bytes(Vec::with_capacity(rows)),
            other => unreachable!("bulk insert: no array binding for PostgreSQL type {other}"),
        }
    }

    /// Appends one row's value; the column's type decides, and a value of another kind
    /// is a programming error of the statement's builder.
    fn push(&mut self, arg: Arg) {
        match (self, arg) {
            (ArrayArg::Uuid(v), Arg::Uuid(x)) => v.push(Some(x)),
            (ArrayArg::Uuid(v), Arg::OptUuid(x)) => v.push(x),
            (ArrayArg::Text(v), Arg::Text(x)) => v.push(Some(x)),
            (ArrayArg::Text(v), Arg::OptText(x)) => v.push(x),
            (ArrayArg::Text(v), Arg::JsonText(x)) => v.push(Some(x)),
            (ArrayArg::Text(v), Arg::Json(x)) => v.push(Some(x.to_string())),
            (ArrayArg::Text(v), Arg::TextList(x)) => v.push(Some(x.join("\n"))),
            (ArrayArg::Time(v), Arg::Time(x)) => v.push(Some(x)),
            (ArrayArg::Time(v), Arg::OptTime(x)) => v.push(x),
            (ArrayArg::Int32(v), Arg::OptInt32(x)) => v.push(x),
            (ArrayArg::Int32(v), Arg::Int(x)) => v.push(Some(i32::try_from(x).expect("an integer column's value fits i32"))),
            (ArrayArg::Int64(v), Arg::Int(x)) => v.push(Some(x)),
            (ArrayArg::Bool(v), Arg::Bool(x)) => v.push(Some(x)),
            (ArrayArg::Bytes(v), Arg::Bytes(x)) => v.push(Some(x)),
            (ArrayArg::Bytes(v), Arg::OptBytes(x)) => v.push(x),
            (column, value) => unreachable!("bulk insert: {value:?} in a column bound as {column:?}"),
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
    /// name with its PostgreSQL type). PostgreSQL gets one array argument per column,
    /// in binary, expanded by `unnest` (one statement text whatever the row count, a
    /// trivial plan, no argument limit, and each JSON document parsed once); SQLite, in
    /// process, gets a plain `VALUES` list. Append `ON CONFLICT …` after.
    pub fn bulk_insert(db: &super::Db, table: &str, columns: &[(&str, &str)], rows: Vec<Vec<Arg>>) -> Self {
        let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
        let mut sql = SqlBuf::new(format!("INSERT INTO {table} ({}) ", names.join(", ")));
        match db {
            super::Db::Postgres(_) => {
                let mut arrays: Vec<ArrayArg> = columns.iter().map(|(_, t)| ArrayArg::for_type(t, rows.len())).collect();
                for row in rows {
                    debug_assert_eq!(row.len(), columns.len(), "bulk insert into {table}: a row with the wrong number of values");
                    for (array, value) in arrays.iter_mut().zip(row) {
                        array.push(value);
                    }
                }
                let mut selected = Vec::with_capacity(columns.len());
                let mut unnested = Vec::with_capacity(columns.len());
                for ((name, pg_type), array) in columns.iter().zip(arrays) {
                    let p = sql.arg(Arg::Array(array));
                    // json and jsonb travel as text, parsed once per value here; a text[]
                    // value (a TextList: no newlines) as its items joined by newlines.
                    let element = if matches!(*pg_type, "json" | "jsonb" | "text[]") { "text" } else { pg_type };
                    unnested.push(format!("CAST({p} AS {element}[])"));
                    selected.push(match *pg_type {
                        "json" | "jsonb" => format!("CAST(x.{name} AS {pg_type})"),
                        "text[]" => format!("string_to_array(x.{name}, E'\\n')"),
                        _ => format!("x.{name}"),
                    });
                }
                sql.push(&format!("SELECT {} FROM unnest({}) AS x({})", selected.join(", "), unnested.join(", "), names.join(", ")));
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

    /// ` AND …`: the row's FHIR resource has one of these `meta.tag`s (system, code; no
    /// system matches any). `terms` are the same tags as search terms, matched against
    /// the row's `tags` column (interop::fhir::resource::tag_terms of what was written).
    /// Where `tags` is NULL (a row written outside the service, e.g. by the legacy
    /// migration's SQL) the resource in `payload` is read instead.
    pub fn push_tags(&mut self, db: &super::Db, tags_column: &str, payload: &str, tags: &[(Option<String>, String)], terms: Vec<String>) -> &mut Self {
        if tags.is_empty() {
            return self;
        }
        let from_payload: Vec<String> = tags
            .iter()
            .map(|(system, code)| match db {
                super::Db::Postgres(_) => {
                    let mut tag = serde_json::json!({"code": code});
                    if let Some(s) = system {
                        tag["system"] = serde_json::json!(s);
                    }
                    format!("CAST({payload} AS jsonb) @> {}", self.arg(Arg::Json(serde_json::json!({"meta": {"tag": [tag]}}))))
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
        let from_terms = match db {
            super::Db::Postgres(_) => {
                let a = self.arg(Arg::Array(ArrayArg::Text(terms.into_iter().map(Some).collect())));
                format!("{tags_column} && CAST({a} AS text[])")
            }
            super::Db::Sqlite(_) => {
                let a = self.arg(Arg::TextList(terms));
                format!("EXISTS (SELECT 1 FROM json_each({tags_column}) t WHERE t.value IN (SELECT value FROM json_each({a})))")
            }
        };
        self.push(&format!(" AND CASE WHEN {tags_column} IS NULL THEN ({}) ELSE {from_terms} END", from_payload.join(" OR ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_shift_outside_quoted_literals_only() {
        assert_eq!(shift_placeholders("SELECT $1, $12, '$3', E'\\n', x$ FROM t WHERE a = $2", 20), "SELECT $21, $32, '$3', E'\\n', x$ FROM t WHERE a = $22");
    }

    #[test]
    fn follow_ups_become_with_members_numbered_after_the_main_statement() {
        let mut main = SqlBuf::new("INSERT INTO a (x, y) VALUES (");
        let (x, y) = (main.arg(Arg::Int(1)), main.arg(Arg::Int(2)));
        main.push(&format!("{x}, {y})"));
        let mut b = SqlBuf::new("INSERT INTO b (z) VALUES (");
        let z = b.arg(Arg::Int(3));
        b.push(&format!("{z})"));
        let followups = [Followup { sql: b.clone(), fence: Fence::Unique("b_z"), independent: true }];
        let one = with_followups(main.clone(), &followups).expect("independent");
        assert_eq!(one.text, "WITH f0 AS (INSERT INTO b (z) VALUES ($3)) INSERT INTO a (x, y) VALUES ($1, $2)");
        assert!(matches!(one.args.as_slice(), [Arg::Int(1), Arg::Int(2), Arg::Int(3)]));
        // A follow-up that reads the batch's rows, or counts rows, stays out.
        assert!(with_followups(main.clone(), &[Followup { sql: b.clone(), fence: Fence::None, independent: false }]).is_none());
        assert!(with_followups(main, &[Followup { sql: b, fence: Fence::Rows(1), independent: true }]).is_none());
    }
}
