//! Database connection, migrations and the two backends.
//!
//! Stores hold one implementation whose SQL text is shared by PostgreSQL and SQLite
//! wherever the dialects agree (`$n` placeholders work in both); [`on_db!`] expands a
//! query once per backend at compile time. Only what truly differs (row leases,
//! JSONB operators, COPY) is written per backend.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

pub mod error;
pub mod sql;
pub use error::StoreError;

/// The PostgreSQL schema everything lives in (the seed's SQL names it).
pub const PG_SCHEMA: &str = "radiology";

#[derive(Clone, Debug)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of whichever backend `$db` is.
#[macro_export]
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Postgres($pool) => $body,
            $crate::db::Db::Sqlite($pool) => $body,
        }
    };
}

static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

impl Db {
    /// Connects to `url` (`postgres://…` or `sqlite://…`), creating the SQLite file and
    /// the PostgreSQL schema when missing.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)
                .context("parsing RADIOLOGY_DATABASE_URL")?
                // A lock wait this long is a cycle PostgreSQL cannot see (a batch waiting
                // on its commit order while holding rows); fail it and let it retry.
                .options([("search_path", PG_SCHEMA), ("lock_timeout", "30s")]);
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                // No ping before each checkout: it was a second round trip for every
                // statement. A connection the server dropped fails its next statement
                // and is discarded; HL7 answers AR (the sender sends again and is
                // deduplicated), imports resume from their checkpoint, REST answers 5xx.
                // Idle connections are closed after a minute, before firewalls and
                // server-side timeouts typically cut them.
                .test_before_acquire(false)
                .idle_timeout(Duration::from_secs(60))
                .connect_with(options)
                .await
                .context("connecting to PostgreSQL")?;
            Ok(Db::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .context("parsing RADIOLOGY_DATABASE_URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let file = options.get_filename();
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .context("opening SQLite database")?;
            Ok(Db::Sqlite(pool))
        } else {
            anyhow::bail!("RADIOLOGY_DATABASE_URL must start with postgres:// or sqlite:// (got {url:?})")
        }
    }

    /// Rows per statement of a batch upsert: PostgreSQL takes a whole batch as one JSON
    /// argument; SQLite's VALUES lists stay under its argument limit (`sqlite_rows`).
    pub fn batch_rows(&self, len: usize, sqlite_rows: usize) -> usize {
        match self {
            Db::Postgres(_) => len.max(1),
            Db::Sqlite(_) => sqlite_rows,
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Db::Postgres(pool) => {
                sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}"))
                    .execute(pool)
                    .await
                    .context("creating schema radiology")?;
                PG_MIGRATOR.run(pool).await.context("running PostgreSQL migrations")?;
            }
            Db::Sqlite(pool) => SQLITE_MIGRATOR.run(pool).await.context("running SQLite migrations")?,
        }
        Ok(())
    }

    /// Applies the embedded migrations up to `version` only: a test of a later
    /// migration writes rows as the code before it did, then runs [`Db::migrate`].
    pub async fn migrate_to(&self, version: i64) -> anyhow::Result<()> {
        let upto = |m: &sqlx::migrate::Migrator| sqlx::migrate::Migrator {
            migrations: m.iter().filter(|x| x.version <= version).cloned().collect::<Vec<_>>().into(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        match self {
            Db::Postgres(pool) => {
                sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}")).execute(pool).await?;
                upto(&PG_MIGRATOR).run(pool).await?;
            }
            Db::Sqlite(pool) => upto(&SQLITE_MIGRATOR).run(pool).await?,
        }
        Ok(())
    }

    /// Readiness: the database answers and every embedded migration is applied.
    pub async fn check_ready(&self) -> anyhow::Result<()> {
        let migrator = match self {
            Db::Postgres(_) => &PG_MIGRATOR,
            Db::Sqlite(_) => &SQLITE_MIGRATOR,
        };
        let expected = migrator.iter().filter(|m| m.migration_type.is_up_migration()).count() as i64;
        let applied: i64 = on_db!(self, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_one(pool).await)
        .context("reading applied migrations")?;
        anyhow::ensure!(applied >= expected, "{applied} of {expected} migrations applied");
        Ok(())
    }

    /// (size, idle, max) of the connection pool, for metrics.
    pub fn pool_stats(&self) -> (u32, usize, u32) {
        on_db!(self, pool => (pool.size(), pool.num_idle(), pool.options().get_max_connections()))
    }

    pub async fn close(&self) {
        on_db!(self, pool => pool.close().await)
    }
}

/// Starts a transaction that will write. SQLite takes the write lock up front
/// (`BEGIN IMMEDIATE`), so two writers never deadlock upgrading read locks.
pub async fn begin_write<DB: WriteBegin>(pool: &sqlx::Pool<DB>) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    DB::begin_write(pool).await
}

pub trait WriteBegin: sqlx::Database {
    fn begin_write(pool: &sqlx::Pool<Self>) -> impl Future<Output = Result<sqlx::Transaction<'static, Self>, sqlx::Error>> + Send;
}

impl WriteBegin for sqlx::Postgres {
    fn begin_write(pool: &sqlx::Pool<Self>) -> impl Future<Output = Result<sqlx::Transaction<'static, Self>, sqlx::Error>> + Send {
        pool.begin()
    }
}

impl WriteBegin for sqlx::Sqlite {
    fn begin_write(pool: &sqlx::Pool<Self>) -> impl Future<Output = Result<sqlx::Transaction<'static, Self>, sqlx::Error>> + Send {
        pool.begin_with("BEGIN IMMEDIATE")
    }
}

/// The current time at the precision both backends store (microseconds), so a value
/// read back equals the value written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
