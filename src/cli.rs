//! The `radiology` command line. `main` only parses and calls [`run`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::auth::{mint_token, parse_ttl, TokenKeys};
use crate::config::Config;

#[derive(Debug, Parser)]
#[command(name = "radiology", version, about = "Radiology Service")]
pub struct Cli {
    /// Optional TOML configuration file (environment variables RADIOLOGY_* override it).
    #[arg(long, global = true, env = "RADIOLOGY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (HTTP API; SQLite in ./data unless RADIOLOGY_DATABASE_URL says otherwise).
    Serve,
    /// Run every due QIDO-RS sync to completion (all tenants), print the run reports, exit.
    Sync {
        /// Re-backfill every active endpoint from the configured start.
        #[arg(long)]
        full: bool,
    },
    /// Print a bearer token signed with the key the server uses.
    Token {
        /// Tenant UUID the token acts for.
        #[arg(long)]
        tenant: Uuid,
        /// Subject (user or system name).
        #[arg(long)]
        sub: String,
        /// Comma-separated roles, e.g. radiology.admin,radiology.read
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// Lifetime: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    crate::telemetry::init(config.log_format);
    match cli.command {
        Command::Serve => {
            let app = crate::Application::build(&config).await?;
            app.run_until(crate::shutdown_signal()).await
        }
        Command::Sync { full } => {
            let state = crate::AppState::build(&config).await?;
            let store = state.sync.store();
            let now = crate::db::now();
            let interval = state.sync.settings().interval.as_secs() as i32;
            store.ensure_states(now, interval).await?;
            if full {
                store.request_full_everywhere(now).await?;
            }
            let reports = state.sync.run_until_idle().await?;
            println!("{}", serde_json::to_string_pretty(&reports)?);
            state.db.close().await;
            anyhow::ensure!(reports.iter().all(|r| r.ok), "some endpoints failed to sync (see the reports)");
            Ok(())
        }
        Command::Token { tenant, sub, roles, ttl } => {
            let keys = TokenKeys::new(&crate::keys::jwt_key(&config)?);
            let roles: Vec<String> = roles.into_iter().map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect();
            println!("{}", mint_token(&keys, tenant, &sub, &roles, parse_ttl(&ttl)?)?);
            Ok(())
        }
    }
}
