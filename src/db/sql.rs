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
    /// Nullable values keep their SQL type (PostgreSQL refuses a text NULL in a uuid column).
    OptText(Option<String>),
    OptUuid(Option<Uuid>),
    OptTime(Option<DateTime<Utc>>),
    OptInt32(Option<i32>),
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
    pub fence: bool,
}

/// Builds the follow-ups of a batch once its outcomes are known.
pub type AfterWrite<'a> = &'a (dyn Fn(&[UpsertOutcome]) -> Vec<Followup> + Send + Sync);

/// Runs follow-ups inside the open transaction `$tx`; evaluates to
/// `Err(StoreError::Fenced)` when a fence changed nothing.
#[macro_export]
macro_rules! run_followups {
    ($tx:expr, $followups:expr) => {{
        let mut result: Result<(), $crate::db::StoreError> = Ok(());
        for f in $followups {
            let n = $crate::bind_args!(sqlx::query(&f.sql.text), &f.sql.args).execute(&mut *$tx).await?.rows_affected();
            if f.fence && n == 0 {
                result = Err($crate::db::StoreError::Fenced);
                break;
            }
        }
        result
    }};
}
