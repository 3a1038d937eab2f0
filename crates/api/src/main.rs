//! `latchkey`: the server. `latchkey` (or `latchkey serve`) serves; `latchkey migrate`
//! migrates the database and exits.

use std::process::ExitCode;

use latchkey_api::{Application, Config};

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LATCHKEY_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("serve");
    if matches!(command, "-h" | "--help" | "help") {
        eprintln!("usage: latchkey [serve|migrate]\n\nConfiguration comes from LATCHKEY_* environment variables; see README.md.");
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("latchkey: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("latchkey: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            "serve" => {
                let app = Application::build(config).await?;
                app.run_until_stopped().await?;
                Ok(())
            }
            "migrate" => {
                latchkey_api::migrate(&config).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            other => Err(anyhow::anyhow!(
                "unknown command {other:?}; use serve or migrate"
            )),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("latchkey: {e:#}");
            ExitCode::FAILURE
        }
    }
}
