//! # latchkey-api
//!
//! The `latchkey` server: reads configuration, wires the adapters into the use cases,
//! serves the HTTP API and runs the background refresh and expiry jobs. The only crate
//! that knows every adapter.

pub mod adapters;
pub mod cli;
pub mod config;
pub mod files;
pub mod hot_path;
pub mod http;
mod jobs;
pub mod keys;
pub mod openapi;
pub mod telemetry;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, HttpServer};
use anyhow::Context;
use secrecy::ExposeSecret;

use latchkey_app::{CachedStore, Latchkey, Services, Settings, DEFAULT_CACHE_CAPACITY};
use latchkey_cipher::KeyRing;
use latchkey_domain::{RefreshPolicy, UrlPolicy};
use latchkey_oauth::{HttpProviderClient, OutboundPolicy};
use latchkey_store::SeaStore;

pub use config::Config;

/// A built server, bound to its port, not yet running.
pub struct Application {
    port: u16,
    server: Server,
    jobs: Option<tokio::task::JoinHandle<()>>,
    hot_path: hot_path::HotPath,
    app: Arc<Latchkey>,
    /// How long a graceful stop waits for refreshes in flight.
    refresh_drain: std::time::Duration,
}

/// Beyond the HTTP timeout (one provider call), what a refresh in flight at shutdown
/// gets to save its result.
const REFRESH_DRAIN_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish()
    }
}

/// Connects and migrates the database (for `latchkey migrate`).
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let store = SeaStore::connect(config.database_url.expose_secret())
        .await
        .context("connecting to the database")?;
    store.migrate().await.context("running migrations")?;
    Ok(())
}

impl Application {
    /// Opens the database, checks the master keys against it, and binds the listener.
    pub async fn build(mut config: Config) -> anyhow::Result<Self> {
        let (store, ring) = open_checked(&config).await?;
        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        // With port 0 and the default public URL, the public URL follows the bound port.
        if config.public_url.as_str().trim_end_matches('/') == "http://127.0.0.1:8080"
            && config.listen.port() == 0
        {
            config.public_url = url::Url::parse(&format!("http://{addr}"))?;
        }
        telemetry::install()?;
        let ring = Arc::new(ring);
        let (app, cache) = wire_with_cache(&config, &store, ring.clone())?;
        let app = Arc::new(app);
        let hot_path = hot_path::HotPath::start(app.clone(), cache, store.change_feed());
        let lease_std = app.settings().refresh.lease.to_std().unwrap_or_default();
        let job_health = config
            .run_jobs
            .then(|| Arc::new(jobs::JobHealth::new(config.refresh_interval, lease_std)));
        if !config.allow_private_networks.is_empty() {
            let ranges: Vec<String> = config
                .allow_private_networks
                .iter()
                .map(ToString::to_string)
                .collect();
            tracing::warn!(ranges = %ranges.join(","), "provider calls may reach these non-public ranges (LATCHKEY_ALLOW_PRIVATE_NETWORKS)");
        }
        let state = http_state(&config, store, app.clone(), ring, job_health.clone());
        if config.admin_token.is_none() {
            tracing::warn!("LATCHKEY_ADMIN_TOKEN is not set: no admin key exists, so no access key can be created");
        }
        let server = HttpServer::new(move || http::app(state.clone()))
            .listen(listener)?
            .shutdown_timeout(10)
            .run();
        let jobs =
            job_health.map(|health| jobs::spawn(app.clone(), config.refresh_interval, health));
        tracing::info!(%addr, public_url = %config.public_url, "latchkey listening");
        Ok(Self {
            port: addr.port(),
            server,
            jobs,
            hot_path,
            app,
            refresh_drain: config.http_timeout.saturating_add(REFRESH_DRAIN_MARGIN),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server is stopped (SIGINT/SIGTERM).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let r = self.server.await;
        // Refreshes first: one cut off between the provider's answer and the save would
        // lose a rotated refresh token. Queued ones give their claims back.
        let in_flight = self.app.refreshes_in_flight();
        if in_flight > 0 {
            tracing::info!(refreshes = in_flight, "waiting for the refreshes in flight");
        }
        if tokio::time::timeout(self.refresh_drain, self.app.stop_refreshes())
            .await
            .is_err()
        {
            tracing::error!(
                refreshes = self.app.refreshes_in_flight(),
                waited_ms = u64::try_from(self.refresh_drain.as_millis()).unwrap_or(u64::MAX),
                "refreshes still in flight at shutdown were cut off: a provider that rotates refresh tokens may have spent the stored one; their leases lapse and another worker retries them"
            );
        }
        if let Some(j) = self.jobs {
            j.abort();
        }
        self.hot_path.shutdown().await;
        r
    }
}

/// Opens and migrates the database, then checks the master keys against it: a wrong key
/// refuses start-up before any data is touched.
async fn open_checked(config: &Config) -> anyhow::Result<(SeaStore, KeyRing)> {
    let store = open_store(config).await?;
    let (ring, source) = match keys::load_and_check(config, &store).await {
        Ok(r) => r,
        Err(e) => {
            // Refusing to start must leave the database byte for byte as found:
            // closing the pool would let SQLite checkpoint its WAL into the main
            // file on the last close. The process is about to exit anyway.
            std::mem::forget(store);
            return Err(e.into());
        }
    };
    match &source {
        keys::KeySource::Generated(path) => tracing::warn!(
            path = %path.display(),
            "NO MASTER KEY WAS CONFIGURED: generated a new one into {}. Back it up: without it the stored credentials cannot be read. Set LATCHKEY_MASTER_KEYS in production.",
            path.display()
        ),
        keys::KeySource::File(path) => {
            tracing::info!(path = %path.display(), "master key read from file")
        }
        keys::KeySource::Environment => {
            tracing::info!(keys = %ring.key_ids().join(","), "master keys from LATCHKEY_MASTER_KEYS")
        }
    }
    Ok((store, ring))
}

fn http_state(
    config: &Config,
    store: SeaStore,
    app: Arc<Latchkey>,
    ring: Arc<KeyRing>,
    jobs: Option<Arc<jobs::JobHealth>>,
) -> web::Data<http::AppState> {
    web::Data::new(http::AppState {
        app,
        store,
        admin_token: config.admin_token.clone(),
        ui_origin: config.ui_target_origin(),
        ring,
        gauges: telemetry::Gauges::default(),
        jobs,
    })
}

/// The state of [`http::app`] as the server builds it (database opened and migrated,
/// master keys checked, adapters wired), without a listener, the background jobs or the
/// change-feed follower: every read goes to the database and flow use is not flushed.
/// The in-process HTTP tests serve `http::app(app_state(&config).await?)`.
pub async fn app_state(config: &Config) -> anyhow::Result<web::Data<http::AppState>> {
    let (store, ring) = open_checked(config).await?;
    let ring = Arc::new(ring);
    let app = Arc::new(wire(config, &store, ring.clone())?);
    Ok(http_state(config, store, app, ring, None))
}

/// Wires the adapters into the use cases (the server and the CLI's commands).
pub fn wire(config: &Config, store: &SeaStore, ring: Arc<KeyRing>) -> anyhow::Result<Latchkey> {
    // Without a change feed followed the cache never serves: every read is the store's.
    Ok(wire_with_cache(config, store, ring)?.0)
}

/// [`wire`], with connections and access keys read through the in-process cache that the
/// server keeps true by following the store's change feed.
pub fn wire_with_cache(
    config: &Config,
    store: &SeaStore,
    ring: Arc<KeyRing>,
) -> anyhow::Result<(Latchkey, Arc<CachedStore>)> {
    let provider = HttpProviderClient::new(OutboundPolicy {
        allow_insecure_loopback: config.allow_insecure_loopback,
        private_networks: config.allow_private_networks.clone(),
        timeout: config.http_timeout,
        keep_alive: config.http_keep_alive,
        ..OutboundPolicy::default()
    })
    .context("building the HTTP client for OAuth providers")?;
    let store_arc = Arc::new(store.clone());
    let cache = Arc::new(CachedStore::new(store_arc.clone(), DEFAULT_CACHE_CAPACITY));
    let svc = Services {
        connections: cache.clone(),
        activity: cache.clone(),
        leases: cache.clone(),
        sessions: store_arc.clone(),
        clients: store_arc,
        keys: cache.clone(),
        cipher: ring.clone(),
        provider: Arc::new(provider),
        clock: Arc::new(adapters::SystemClock),
        entropy: Arc::new(adapters::OsEntropy),
    };
    let lease = chrono::Duration::from_std(config.refresh_lease)?;
    // A lease shorter than a provider call could lapse mid-refresh and let a second
    // worker reuse a refresh token; what is left of it after the call is the time
    // the refreshed tokens' save is retried for.
    let min_lease = chrono::Duration::from_std(config.http_timeout)? + chrono::Duration::seconds(5);
    let settings = Settings {
        callback_url: config.callback_url(),
        url_policy: UrlPolicy {
            allow_insecure_loopback: config.allow_insecure_loopback,
            private_networks: config.allow_private_networks.clone(),
        },
        refresh: RefreshPolicy {
            margin: chrono::Duration::from_std(config.refresh_margin)?,
            lease: lease.max(min_lease),
            ..RefreshPolicy::default()
        },
        default_clients: config.default_clients.clone(),
        worker_id: format!("{}-{}", hostname(), std::process::id()),
        max_connections_per_project: config.max_connections_per_project,
        event_retention: chrono::Duration::from_std(config.event_retention)?,
        refresh_concurrency: config.refresh_concurrency,
        refresh_concurrency_per_host: config.refresh_concurrency_per_host,
        provider_call_budget: chrono::Duration::from_std(config.http_timeout)?
            + chrono::Duration::seconds(2),
        ..Settings::default()
    };
    Ok((Latchkey::new(svc, settings), cache))
}

/// Connects to the database and migrates it.
pub async fn open_store(config: &Config) -> anyhow::Result<SeaStore> {
    let store = SeaStore::connect(config.database_url.expose_secret())
        .await
        .with_context(|| {
            format!(
                "connecting to the database at {}",
                redact_url(config.database_url.expose_secret())
            )
        })?;
    store
        .migrate()
        .await
        .context("running database migrations")?;
    Ok(store)
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "latchkey".into())
}

/// A database URL without its password, for messages.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => raw.to_owned(),
    }
}
