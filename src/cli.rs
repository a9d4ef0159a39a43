//! The `radiology` command line. `main` only parses and calls [`run`].

use std::path::PathBuf;

use anyhow::Context;
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
    /// Import ImagingStudy / DiagnosticReport NDJSON straight into the database (the
    /// `$import` engine, run here), tagged historical; prints a summary per input.
    Import {
        /// Tenant UUID the resources belong to.
        #[arg(long)]
        tenant: Uuid,
        /// Resource type of every input; by default taken from each file's name
        /// (…ImagingStudy….ndjson) or its first line's resourceType.
        #[arg(long = "type", value_parser = ["ImagingStudy", "DiagnosticReport"])]
        resource_type: Option<String>,
        /// Write the OperationOutcome of every rejected line (NDJSON) to this file.
        #[arg(long)]
        errors: Option<PathBuf>,
        /// NDJSON files or http(s) URLs.
        #[arg(required = true)]
        inputs: Vec<String>,
    },
    /// Write ImagingStudy NDJSON built from a PACS's QIDO-RS study metadata (the
    /// sync's mapping) to stdout, for PACS that cannot export FHIR.
    ExportStudies {
        /// The PACS endpoint (its UUID).
        #[arg(long)]
        endpoint: Uuid,
        /// Oldest StudyDate to export (YYYY-MM-DD); default: the sync's backfill start.
        #[arg(long)]
        since: Option<chrono::NaiveDate>,
    },
    /// List HL7 messages no inbound connector claimed (unknown senders, unreadable
    /// headers), newest last: what a RIS sends before its connector is registered.
    Hl7Unrouted {
        /// Only messages received on or after this date (YYYY-MM-DD).
        #[arg(long)]
        since: Option<chrono::NaiveDate>,
        /// At most this many messages.
        #[arg(long, default_value_t = 100)]
        limit: i64,
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
        Command::Import { tenant, resource_type, errors, inputs } => import(&config, tenant, resource_type, errors, inputs).await,
        Command::ExportStudies { endpoint, since } => export_studies(&config, endpoint, since).await,
        Command::Hl7Unrouted { since, limit } => hl7_unrouted(&config, since, limit).await,
        Command::Token { tenant, sub, roles, ttl } => {
            let keys = TokenKeys::new(&crate::keys::jwt_key(&config)?);
            let roles: Vec<String> = roles.into_iter().map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect();
            println!("{}", mint_token(&keys, tenant, &sub, &roles, parse_ttl(&ttl)?)?);
            Ok(())
        }
    }
}

/// The resource type of an input: `--type`, else its file name, else its first line.
fn input_type(input: &str, given: Option<&str>) -> anyhow::Result<String> {
    if let Some(t) = given {
        return Ok(t.to_string());
    }
    let name = input.rsplit('/').next().unwrap_or(input);
    for t in crate::interop::import::request::IMPORT_TYPES {
        if name.contains(t) {
            return Ok(t.to_string());
        }
    }
    if !input.contains("://") {
        use std::io::BufRead;
        let file = std::fs::File::open(input).with_context(|| format!("opening {input}"))?;
        for line in std::io::BufReader::new(file).lines().take(100) {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            if let Some(t) = serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v["resourceType"].as_str().map(str::to_string)) {
                return Ok(t);
            }
            break;
        }
    }
    anyhow::bail!("cannot tell the resource type of {input}: name it …ImagingStudy….ndjson or …DiagnosticReport….ndjson, or pass --type")
}

async fn import(config: &Config, tenant: Uuid, resource_type: Option<String>, errors: Option<PathBuf>, inputs: Vec<String>) -> anyhow::Result<()> {
    use crate::interop::import::request::{ImportRequest, IMPORT_TYPES};
    use crate::interop::import::source::SourcePolicy;
    let mut request = ImportRequest { input_format: "application/fhir+ndjson".into(), input_source: None, mode: Some("InitialLoad".into()), storage_type: None, inputs: Vec::new() };
    for input in &inputs {
        let kind = input_type(input, resource_type.as_deref())?;
        anyhow::ensure!(IMPORT_TYPES.contains(&kind.as_str()), "{input}: {kind} is not imported here (supported: {})", IMPORT_TYPES.join(", "));
        let url = if input.contains("://") {
            input.clone()
        } else {
            let path = std::fs::canonicalize(input).with_context(|| input.to_string())?;
            url::Url::from_file_path(&path).map_err(|_| anyhow::anyhow!("{input}: not a usable path"))?.to_string()
        };
        SourcePolicy::Operator.check(&url).map_err(|e| anyhow::anyhow!(e))?;
        request.inputs.push((kind, url));
    }
    let state = crate::AppState::build(config).await?;
    let started = std::time::Instant::now();
    let show = |rows: &[crate::interop::import::store::InputRow]| {
        let parts: Vec<String> = rows
            .iter()
            .map(|i| {
                let done = i.created + i.updated + i.unchanged;
                let pct = i.total_bytes.filter(|t| *t > 0).map(|t| format!(" {:>3}%", i.byte_offset * 100 / t)).unwrap_or_default();
                format!("{}{pct} {done} ok {} failed", i.resource_type, i.failed)
            })
            .collect();
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let total: i64 = rows.iter().map(|i| i.created + i.updated + i.unchanged + i.failed).sum();
        eprint!("\r{}  [{:.0}/s]   ", parts.join(" | "), total as f64 / secs);
    };
    let summary = state.imports.run_cli(crate::auth::TenantId(tenant), &request, &show).await?;
    eprintln!();
    let secs = started.elapsed().as_secs_f64();
    println!("{:<18} {:>10} {:>10} {:>10} {:>10}  input", "type", "created", "updated", "unchanged", "failed");
    let mut failed = 0;
    for i in &summary.inputs {
        println!("{:<18} {:>10} {:>10} {:>10} {:>10}  {}", i.resource_type, i.created, i.updated, i.unchanged, i.failed, i.url);
        failed += i.failed;
    }
    let total: i64 = summary.inputs.iter().map(|i| i.created + i.updated + i.unchanged + i.failed).sum();
    println!("job {} {} in {secs:.1} s ({:.0} resources/s)", summary.job.id, summary.job.status, total as f64 / secs.max(0.001));
    if let Some(path) = errors {
        let mut out = String::new();
        for i in &summary.inputs {
            let mut after = 0;
            loop {
                let page = state.imports.store().errors(crate::auth::TenantId(tenant), summary.job.id, i.position, after, 1000).await?;
                let Some((last, _)) = page.last() else { break };
                after = *last;
                for (_, outcome) in page {
                    out.push_str(&outcome.0.to_string());
                    out.push('\n');
                }
            }
        }
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        println!("rejected lines: {failed}, their OperationOutcomes are in {}", path.display());
    } else if failed > 0 {
        println!("rejected lines: {failed} (pass --errors FILE for their OperationOutcomes)");
    }
    state.db.close().await;
    anyhow::ensure!(summary.job.status == "completed", "the import job ended {}: {}", summary.job.status, summary.job.error.unwrap_or_default());
    Ok(())
}

async fn export_studies(config: &Config, endpoint: Uuid, since: Option<chrono::NaiveDate>) -> anyhow::Result<()> {
    use std::io::Write;
    let state = crate::AppState::build(config).await?;
    // An operator command: find the endpoint's tenant, then work inside that tenant.
    let (tenant, _, _) = state
        .pacs
        .store()
        .all_auth_configs()
        .await?
        .into_iter()
        .find(|(_, id, _)| *id == endpoint)
        .ok_or_else(|| anyhow::anyhow!("no PACS endpoint {endpoint}"))?;
    let since = since.unwrap_or(state.sync.settings().backfill_since);
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
    let mut sink = |studies: Vec<crate::studies::store::StudyUpsert>| -> anyhow::Result<()> {
        for s in studies {
            let mut resource = s.payload;
            resource["resourceType"] = serde_json::json!("ImagingStudy");
            serde_json::to_writer(&mut out, &resource)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    };
    let (n, warnings) = state.sync.walk_studies(tenant, endpoint, since, &mut sink).await?;
    out.flush()?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    eprintln!("{n} studies exported from endpoint {endpoint} (StudyDate from {since})");
    state.db.close().await;
    Ok(())
}

/// `radiology hl7-unrouted`: the messages kept under no tenant, one line each.
async fn hl7_unrouted(config: &Config, since: Option<chrono::NaiveDate>, limit: i64) -> anyhow::Result<()> {
    use crate::interop::hl7::store::{Hl7Store, MessageFilter, SqlHl7Store};
    let db = crate::db::Db::connect(&config.database_url, 2).await?;
    db.migrate().await?;
    let store = SqlHl7Store::new(db.clone());
    let mut filter = MessageFilter::default();
    if let Some(d) = since {
        filter.received.push(crate::db::sql::Bound::From(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc()));
    }
    let page = crate::pagination::PageRequest { limit: limit.clamp(1, 10_000), after: None };
    let rows = store.list_messages(crate::auth::TenantId(crate::interop::hl7::inbound::UNROUTED), &filter, &page).await?;
    println!("{:<27} {:<21} {:<16} {:<16} {:<10} {:<20} problem", "received", "peer", "MSH-3", "MSH-4", "type", "MSH-10");
    for m in rows.iter().take(limit as usize) {
        println!(
            "{:<27} {:<21} {:<16} {:<16} {:<10} {:<20} {}",
            m.received_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            m.peer.as_deref().unwrap_or("-"),
            m.sending_application.as_deref().unwrap_or("-"),
            m.sending_facility.as_deref().unwrap_or("-"),
            m.message_type.as_deref().unwrap_or("-"),
            m.control_id.as_deref().unwrap_or("-"),
            m.error.as_deref().unwrap_or("")
        );
    }
    db.close().await;
    Ok(())
}
