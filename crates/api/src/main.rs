//! `latchkey`: the server and its operator commands. `latchkey` alone serves; see
//! `latchkey --help`.

use std::process::ExitCode;

use clap::Parser;
use latchkey_api::cli::{Cli, Command};
use latchkey_api::Config;

/// mimalloc instead of glibc's malloc. Much of the work allocates on one thread and frees
/// on another (database rows built on SQLite's worker threads, read on the runtime's;
/// provider responses), which glibc's per-thread arenas handle with locks and
/// consolidation: the refresh engine measured 121-134 us of CPU per refresh with
/// mimalloc against 159-189 us with glibc (docs/BENCHMARKS.md), for ~15 MiB more RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging(json: bool, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("LATCHKEY_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    // clap prints --help and --version itself, and a usage error with exit code 2.
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    let config = if command.needs_config() {
        match Config::from_env() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("latchkey: invalid configuration: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    init_logging(
        config.as_ref().is_some_and(|c| c.log_json),
        command.default_log_filter(),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_threads())
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("latchkey: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let serving = matches!(command, Command::Serve);
    match runtime.block_on(latchkey_api::cli::run(command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if serving {
                tracing::error!("{e:#}");
            }
            // One line: the reason, with its causes.
            eprintln!("latchkey: {}", format!("{e:#}").replace('\n', " "));
            // A refused start must leave the database byte for byte as found. Shutting
            // the runtime down drops the database pool's tasks and so its connections,
            // and SQLite checkpoints its WAL into the main file on the last close. The
            // process exits right after, so nothing is lost by not shutting down.
            std::mem::forget(runtime);
            ExitCode::FAILURE
        }
    }
}

/// Worker threads of the main runtime: `TOKIO_WORKER_THREADS`, else one. HTTP requests
/// are served by actix's own workers (one per core); this runtime runs the background
/// jobs, the usage flusher and the cache's change feed, for which a second thread only
/// added cross-thread wake-ups (refresh bench on PostgreSQL: 247 µs of CPU per refresh
/// with two, 166 µs with one; one thread refreshes several thousand grants a second).
fn runtime_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}
