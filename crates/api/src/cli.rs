//! The `latchkey` command line (clap, derive). Every command reads the same
//! `LATCHKEY_*` settings as the server.

// A command-line tool: printing to stdout is its interface.
#![allow(clippy::print_stdout)]

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use serde_json::json;

use latchkey_app::keys::{RewrapOptions, RewrapProgress};
use latchkey_app::Principal;
use latchkey_domain::AccessKeyId;

use crate::{adapters, keys, Application, Config};

#[derive(Debug, Parser)]
#[command(
    name = "latchkey",
    version,
    about = "Holds and refreshes the credentials of a workflow engine's connections.",
    long_about = "Holds and refreshes the credentials of a workflow engine's connections.\n\nWith no command, serves the HTTP API. Every command reads its configuration from the LATCHKEY_* environment variables (see README.md)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API and run the background jobs (the default).
    Serve,
    /// Migrate the database and exit.
    Migrate,
    /// Print the OpenAPI 3.1 document of the HTTP API.
    Openapi,
    /// Master keys: what each key seals, and re-sealing under the newest key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Project-scoped access keys (admin).
    #[command(subcommand, name = "access-keys")]
    AccessKeys(AccessKeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// How many sealed values each key id seals, and which key seals new data.
    Status {
        /// Print `{"keys":[{"id":…,"values":N,"active":true|false}]}`.
        #[arg(long)]
        json: bool,
    },
    /// Re-seal every value under the ring's first key, while servers keep serving.
    /// Safe to interrupt and run again.
    Rewrap {
        /// Count what would be re-sealed; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rows read per batch.
        #[arg(long, default_value_t = latchkey_app::keys::DEFAULT_BATCH, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        batch_size: u32,
        /// Stop after re-sealing this many values (rotate in slices).
        #[arg(long)]
        limit: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccessKeysCommand {
    /// Create a key; it is printed once and only its hash is kept.
    Create {
        #[arg(long)]
        project: String,
        /// connections:read, connections:write, credentials:read or metrics:read.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every access key (never the keys themselves).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke (delete) a key by id.
    Revoke { id: String },
}

impl Command {
    /// The log filter when `LATCHKEY_LOG` is unset: the server logs requests, the
    /// one-shot commands only what goes wrong (and a rewrap its progress).
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Serve | Command::Migrate => "info,sqlx=warn,sea_orm=warn",
            Command::Keys(KeysCommand::Rewrap { .. }) => "warn,latchkey=info",
            _ => "warn,sqlx=warn,sea_orm=warn",
        }
    }

    pub fn needs_config(&self) -> bool {
        !matches!(self, Command::Openapi)
    }
}

/// Runs a command. Errors are reported by the caller, in one line.
pub async fn run(command: Command, config: Option<Config>) -> anyhow::Result<()> {
    if let Command::Openapi = command {
        println!("{}", crate::openapi::json());
        return Ok(());
    }
    let config = config.context("no configuration")?;
    match command {
        Command::Serve => {
            let app = Application::build(config).await?;
            app.run_until_stopped().await?;
        }
        Command::Migrate => {
            crate::migrate(&config).await?;
            tracing::info!("migrations applied");
        }
        Command::Openapi => {}
        Command::Keys(KeysCommand::Status { json }) => keys_status(&config, json).await?,
        Command::Keys(KeysCommand::Rewrap {
            dry_run,
            batch_size,
            limit,
        }) => {
            let options = RewrapOptions {
                batch: batch_size,
                dry_run,
                limit,
                ..RewrapOptions::default()
            };
            rewrap(&config, options).await?
        }
        Command::AccessKeys(cmd) => access_keys(&config, cmd).await?,
    }
    Ok(())
}

async fn keys_status(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let store = crate::open_store(config).await?;
    let Some((ring, _)) = keys::load_existing(config)? else {
        bail!("no master key is configured: set LATCHKEY_MASTER_KEYS (or keep the key file in LATCHKEY_DATA_DIR)");
    };
    let census = latchkey_app::keys::key_census(&store, &ring).await?;
    let rows = census.rows();
    if as_json {
        let keys: Vec<_> = rows
            .iter()
            .map(|(id, n, active)| json!({ "id": id, "values": n, "active": active }))
            .collect();
        println!("{}", json!({ "keys": keys }));
    } else {
        println!("{:<34} {:>10}  state", "key id", "values");
        for (id, n, active) in &rows {
            let state = if *active {
                "active (seals new data)"
            } else if ring.key_ids().contains(&id.as_str()) {
                "in ring (opens only)"
            } else {
                "MISSING from the ring"
            };
            println!("{id:<34} {n:>10}  {state}");
        }
        if census.unreadable > 0 {
            println!("{} value(s) have an unreadable header", census.unreadable);
        }
        let stale = census.not_under_sealing_key();
        if stale > 0 {
            println!(
                "{stale} value(s) are not sealed by the active key: run `latchkey keys rewrap`"
            );
        }
    }
    Ok(())
}

async fn rewrap(config: &Config, options: RewrapOptions) -> anyhow::Result<()> {
    let store = crate::open_store(config).await?;
    let (ring, _) = keys::load_and_check(config, &store).await?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>24} [{bar:40}] {pos}/{len} values ({eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let step = u64::from(options.batch.max(1));
    let mut last_logged = 0u64;
    let mut last_table = None;
    let mut progress = |p: RewrapProgress| match &bar {
        Some(bar) => {
            bar.set_length(p.total.max(p.resealed));
            bar.set_position(p.resealed);
            bar.set_message(p.table.as_str());
        }
        None => {
            if p.resealed >= last_logged + step || last_table != Some(p.table) {
                tracing::info!(
                    table = p.table.as_str(),
                    resealed = p.resealed,
                    total = p.total,
                    "rewrap progress"
                );
                last_logged = p.resealed;
                last_table = Some(p.table);
            }
        }
    };
    let report = latchkey_app::keys::rewrap(
        &store,
        &ring,
        &adapters::SystemClock,
        &options,
        &mut progress,
    )
    .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let verb = if options.dry_run {
        "would re-seal"
    } else {
        "re-sealed"
    };
    println!(
        "{verb} {} value(s) under key {:?}; {} already under it; {} race(s) lost and retried; {} row(s) still busy",
        report.resealed, report.sealing_key, report.current, report.conflicts, report.busy
    );
    if report.stopped_at_limit {
        println!("stopped at --limit; run again to continue");
    }
    if report.busy > 0 {
        bail!(
            "{} row(s) stayed busy (a refresh or an edit kept changing them); run `latchkey keys rewrap` again",
            report.busy
        );
    }
    Ok(())
}

async fn access_keys(config: &Config, cmd: AccessKeysCommand) -> anyhow::Result<()> {
    let store = crate::open_store(config).await?;
    let (ring, _) = keys::load_and_check(config, &store).await?;
    let app = crate::wire(config, &store, Arc::new(ring))?;
    let admin = Principal::Admin;
    match cmd {
        AccessKeysCommand::Create {
            project,
            scopes,
            name,
            json: as_json,
        } => {
            let name = name.unwrap_or_else(|| format!("key for {project}"));
            let issued = app
                .create_access_key(&admin, &project, &name, &scopes)
                .await
                .map_err(describe)?;
            let k = &issued.key;
            if as_json {
                println!(
                    "{}",
                    json!({ "id": k.id, "project_id": k.project_id, "name": k.name, "scopes": k.scopes, "created_at": k.created_at, "key": issued.token.expose_secret() })
                );
            } else {
                println!("id:      {}", k.id);
                println!("project: {}", k.project_id);
                println!("name:    {}", k.name);
                println!(
                    "scopes:  {}",
                    k.scopes
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                println!("key:     {}", issued.token.expose_secret());
                eprintln!("The key is shown this once; only its hash is kept.");
            }
        }
        AccessKeysCommand::List { json: as_json } => {
            let keys = app.list_access_keys(&admin).await.map_err(describe)?;
            if as_json {
                let list: Vec<_> = keys
                    .iter()
                    .map(|k| json!({ "id": k.id, "project_id": k.project_id, "name": k.name, "scopes": k.scopes, "created_at": k.created_at }))
                    .collect();
                println!("{}", json!({ "data": list }));
            } else {
                println!("{:<36}  {:<20}  {:<24}  scopes", "id", "project", "name");
                for k in &keys {
                    println!(
                        "{:<36}  {:<20}  {:<24}  {}",
                        k.id.to_string(),
                        k.project_id.as_str(),
                        k.name.as_str(),
                        k.scopes
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                }
            }
        }
        AccessKeysCommand::Revoke { id } => {
            let parsed: AccessKeyId = id
                .parse()
                .map_err(|_| anyhow::anyhow!("{id:?} is not an access key id"))?;
            app.delete_access_key(&admin, parsed)
                .await
                .map_err(describe)?;
            println!("revoked {parsed}");
        }
    }
    Ok(())
}

/// A use case's error as the one line the API would answer.
fn describe(e: latchkey_app::AppError) -> anyhow::Error {
    let api = crate::http::error::ApiError::from(e);
    anyhow::anyhow!("{}", api.message)
}
