//! Token refresh and expiry, end to end: real `latchkey` processes refresh short-lived
//! grants at a real authorization server (npm oidc-provider, rotating refresh tokens with
//! reuse detection: any double refresh revokes the grant and shows up in the peer's stats)
//! while clients fetch credentials from every process.
//!
//! With `LATCHKEY_TEST_POSTGRES_URL` the processes share a PostgreSQL database of their own;
//! without it they share one SQLite file. `LATCHKEY_E2E_CONNECTIONS` sets the number of
//! connections of the multi-process tests (default 60; a few hundred for a manual run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use latchkey_tests::server::{free_port, LatchkeyServer, PgDatabase, ServerOptions, ADMIN_TOKEN};
use latchkey_tests::{Browser, OidcClient, OidcProvider, OidcProviderOptions, TokenAuthMethod};
use serde_json::{json, Value};
use url::Url;

const CLIENT_ID: &str = "latchkey-refresh";
const CLIENT_SECRET: &str = "latchkey-refresh-secret";
/// Registered without the refresh_token grant: the peer issues no refresh token to it.
const NO_REFRESH_CLIENT_ID: &str = "latchkey-no-refresh";
const PROJECT: &str = "p-refresh";
const CALLBACK_PATH: &str = "/v1/connections/oauth2/callback";

/// Access token lifetime at the peer. With a 2 s margin a grant is due 2 s after it was
/// obtained (half its life), so every connection is refreshed every 2-3 s.
const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(4);
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// The provider HTTP timeout of the servers; the lease is this plus 5 s.
const HTTP_TIMEOUT: Duration = Duration::from_secs(6);

/// How long clients hammer the credentials endpoint in the multi-process tests.
const LOAD: Duration = Duration::from_secs(30);
const CLIENT_TASKS: usize = 4;
/// Pause between two calls of one client task (pacing for a 2-core machine).
const CLIENT_PACE: Duration = Duration::from_millis(10);
/// Upper bound of calls per client task, whatever the machine's speed.
const MAX_CALLS_PER_TASK: usize = 20_000;
/// One successful credentials call in this many has its token introspected at the peer.
const INTROSPECT_EVERY: usize = 25;

/// The multi-process tests run one at a time: each starts several servers.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn connection_count() -> usize {
    std::env::var("LATCHKEY_E2E_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(60)
}

fn server_options(dir: &std::path::Path, port: u16, db: Option<&PgDatabase>) -> ServerOptions {
    let mut o = ServerOptions::new(dir)
        .env("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true")
        .env("LATCHKEY_REFRESH_INTERVAL", "1s")
        .env("LATCHKEY_REFRESH_MARGIN", "2s")
        // Raised by the server to the HTTP timeout plus 5 s.
        .env("LATCHKEY_REFRESH_LEASE", "1s")
        .env(
            "LATCHKEY_HTTP_TIMEOUT",
            format!("{}s", HTTP_TIMEOUT.as_secs()),
        );
    o.port = Some(port);
    if let Some(db) = db {
        o = o.database(db.url.clone());
    }
    o
}

/// Distinct free ports, chosen before the peer starts so it can register every callback.
fn distinct_ports(n: usize) -> Result<Vec<u16>> {
    let mut ports = Vec::new();
    while ports.len() < n {
        let p = free_port()?;
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    Ok(ports)
}

/// A peer and one or more latchkey processes sharing one database (and one data directory,
/// so one master key).
struct Cluster {
    // Dropped in this order: servers first, the database last.
    servers: Vec<LatchkeyServer>,
    peer: OidcProvider,
    pg: Option<PgDatabase>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(label: &str, processes_pg: usize, processes_sqlite: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let pg = PgDatabase::create(label)?;
        let n = if pg.is_some() {
            processes_pg
        } else {
            processes_sqlite
        };
        let ports = distinct_ports(n)?;
        let callbacks: Vec<String> = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}{CALLBACK_PATH}"))
            .collect();
        let mut no_refresh = OidcClient::confidential(
            NO_REFRESH_CLIENT_ID,
            CLIENT_SECRET,
            TokenAuthMethod::ClientSecretBasic,
            callbacks.clone(),
        );
        no_refresh.grant_types = vec!["authorization_code".into()];
        let peer = OidcProvider::start(
            OidcProviderOptions::default()
                .access_token_ttl(ACCESS_TOKEN_TTL)
                .client(OidcClient::confidential(
                    CLIENT_ID,
                    CLIENT_SECRET,
                    TokenAuthMethod::ClientSecretBasic,
                    callbacks,
                ))
                .client(no_refresh),
        )
        .await?;
        let mut servers = Vec::new();
        // One after the other: the first creates the schema and the master key.
        for port in ports {
            servers
                .push(LatchkeyServer::start(server_options(dir.path(), port, pg.as_ref())).await?);
        }
        Ok(Self {
            servers,
            peer,
            pg,
            _dir: dir,
        })
    }

    fn backend(&self) -> &'static str {
        if self.pg.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    }

    fn bases(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.base_url.clone()).collect()
    }

    /// Creates `n` connections and authorizes each through the peer, spread over the servers.
    async fn connect_many(&self, n: usize, client_id: &str) -> Result<Vec<String>> {
        let bases = Arc::new(self.bases());
        let issuer = self.peer.issuer().to_owned();
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let (bases, issuer, next, client_id) = (
                bases.clone(),
                issuer.clone(),
                next.clone(),
                client_id.to_owned(),
            );
            tasks.spawn(async move {
                let api = Api::new();
                let mut made = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(made);
                    }
                    let base = &bases[i % bases.len()];
                    let id = api
                        .create_oauth(base, &format!("refresh-{i}"), &issuer, &client_id)
                        .await?;
                    api.authorize(base, &id).await?;
                    made.push((i, id));
                }
            });
        }
        let mut all = Vec::new();
        while let Some(r) = tasks.join_next().await {
            all.extend(r??);
        }
        all.sort();
        Ok(all.into_iter().map(|(_, id)| id).collect())
    }

    /// Lines of each server's log containing `needle`.
    fn log_counts(&self, needle: &str) -> Vec<usize> {
        self.servers
            .iter()
            .map(|s| s.logs().lines().filter(|l| l.contains(needle)).count())
            .collect()
    }
}

/// The admin API of any server.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
}

impl Api {
    fn new() -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
        );
        Self {
            http: reqwest::Client::builder()
                .default_headers(headers)
                // Longer than a credentials call waiting for another process's refresh.
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value)> {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    async fn create(&self, base: &str, body: Value) -> Result<String> {
        let (status, body) = self
            .send(self.http.post(format!("{base}/v1/connections")).json(&body))
            .await?;
        if status != 201 {
            bail!("creating a connection answered {status}: {body}");
        }
        Ok(body["data"]["id"].as_str().context("id")?.to_owned())
    }

    async fn create_oauth(
        &self,
        base: &str,
        name: &str,
        issuer: &str,
        client_id: &str,
    ) -> Result<String> {
        self.create(
            base,
            json!({
                "name": name,
                "project_id": PROJECT,
                "type": "oauth2",
                "config": {
                    "scopes": ["openid", "read"],
                    "oauth2_config": {
                        "client_id": client_id,
                        "client_secret": CLIENT_SECRET,
                        "issuer": issuer,
                        "token_endpoint_auth_method": "client_secret_basic",
                    },
                },
            }),
        )
        .await
    }

    async fn authorize_url(&self, base: &str, id: &str) -> Result<String> {
        let (status, body) = self
            .send(
                self.http
                    .post(format!("{base}/v1/connections/{id}/oauth2/authorize")),
            )
            .await?;
        if status != 200 {
            bail!("authorize answered {status}: {body}");
        }
        Ok(body["data"]["url"].as_str().context("url")?.to_owned())
    }

    /// Consent at the peer in a browser of its own (so every connection gets a grant of its
    /// own), then the callback on the server.
    async fn authorize(&self, base: &str, id: &str) -> Result<()> {
        let url = self.authorize_url(base, id).await?;
        let browser = Browser::new()?;
        let callback = browser
            .follow_until(&url, &format!("{base}{CALLBACK_PATH}"))
            .await?;
        let resp = browser.open(callback.as_str()).await?;
        let status = resp.status();
        if !status.is_success() {
            bail!(
                "callback answered {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        let c = self.connection(base, id).await?;
        if c["status"] != "active" {
            bail!("connection {id} is not active after the callback: {c}");
        }
        Ok(())
    }

    async fn connection(&self, base: &str, id: &str) -> Result<Value> {
        let (status, body) = self
            .send(self.http.get(format!("{base}/v1/connections/{id}")))
            .await?;
        if status != 200 {
            bail!("GET connection {id} answered {status}: {body}");
        }
        Ok(body["data"].clone())
    }

    async fn events(&self, base: &str, id: &str) -> Result<Vec<Value>> {
        let (status, body) = self
            .send(self.http.get(format!("{base}/v1/connections/{id}/events")))
            .await?;
        if status != 200 {
            bail!("GET events of {id} answered {status}: {body}");
        }
        Ok(body["data"].as_array().cloned().unwrap_or_default())
    }

    async fn credentials(&self, base: &str, id: &str) -> Result<(u16, Value)> {
        self.send(
            self.http
                .get(format!("{base}/v1/connections/{id}/credentials")),
        )
        .await
    }
}

/// RFC 7662 introspection at the peer, usable from spawned tasks.
#[derive(Clone)]
struct Introspector {
    url: String,
    client_id: String,
    secret: String,
    http: reqwest::Client,
}

impl Introspector {
    fn new(peer: &OidcProvider) -> Self {
        let (client_id, secret) = peer.resource_server_credentials();
        Self {
            url: peer.introspection_endpoint().to_owned(),
            client_id: client_id.to_owned(),
            secret: secret.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn active(&self, token: &str) -> Result<bool> {
        let v: Value = self
            .http
            .post(&self.url)
            .basic_auth(&self.client_id, Some(&self.secret))
            .form(&[("token", token)])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(v["active"] == true)
    }
}

/// What the client tasks saw.
#[derive(Default)]
struct LoadReport {
    calls: AtomicU64,
    ok: AtomicU64,
    introspected: AtomicU64,
    /// Non-200 answers and failed introspections, by kind, with one example each.
    failures: Mutex<BTreeMap<String, (u64, String)>>,
    /// Transport errors (refused, reset), by server index.
    transport_errors: Mutex<BTreeMap<usize, u64>>,
    max_latency: Mutex<Duration>,
}

impl LoadReport {
    fn fail(&self, kind: String, example: String) {
        let mut f = self.failures.lock().unwrap();
        let e = f.entry(kind).or_insert((0, example));
        e.0 += 1;
    }

    fn failures(&self) -> BTreeMap<String, (u64, String)> {
        self.failures.lock().unwrap().clone()
    }

    fn transport_errors(&self) -> BTreeMap<usize, u64> {
        self.transport_errors.lock().unwrap().clone()
    }
}

/// Client tasks calling GET credentials on every connection through every server that is
/// up, until `until`.
struct Load {
    report: Arc<LoadReport>,
    up: Arc<Vec<AtomicBool>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Load {
    fn start(
        bases: Vec<String>,
        ids: &[String],
        introspector: Introspector,
        duration: Duration,
    ) -> Self {
        let report = Arc::new(LoadReport::default());
        let up: Arc<Vec<AtomicBool>> =
            Arc::new(bases.iter().map(|_| AtomicBool::new(true)).collect());
        let bases = Arc::new(bases);
        let ids = Arc::new(ids.to_vec());
        let until = Instant::now() + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..CLIENT_TASKS {
            let (bases, ids, report, up, introspector) = (
                bases.clone(),
                ids.clone(),
                report.clone(),
                up.clone(),
                introspector.clone(),
            );
            tasks.spawn(async move {
                let api = Api::new();
                for n in 0..MAX_CALLS_PER_TASK {
                    if Instant::now() >= until {
                        break;
                    }
                    // Every connection through every server in turn: the server moves on
                    // by one each round over the connections.
                    let k = task + n * CLIENT_TASKS;
                    let (i, round) = (k % ids.len(), k / ids.len());
                    let id = &ids[i];
                    let s = (i + round) % bases.len();
                    if !up[s].load(Ordering::SeqCst) {
                        continue;
                    }
                    let started = Instant::now();
                    let result = api.credentials(&bases[s], id).await;
                    {
                        let mut max = report.max_latency.lock().unwrap();
                        *max = (*max).max(started.elapsed());
                    }
                    if started.elapsed() > Duration::from_secs(1) {
                        eprintln!("load: {id} via server {s} took {:?}", started.elapsed());
                    }
                    report.calls.fetch_add(1, Ordering::Relaxed);
                    match result {
                        Ok((200, body)) => {
                            report.ok.fetch_add(1, Ordering::Relaxed);
                            if n % INTROSPECT_EVERY == 0 {
                                let token = body["data"]["access_token"].as_str().unwrap_or("");
                                match introspector.active(token).await {
                                    Ok(true) => {
                                        report.introspected.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Ok(false) => report.fail(
                                        "token not active at the peer".into(),
                                        format!("{id} via server {s}: {body}"),
                                    ),
                                    Err(e) => {
                                        report.fail("introspection failed".into(), e.to_string())
                                    }
                                }
                            }
                        }
                        Ok((status, body)) => report.fail(
                            format!("{status} {}", body["error"]["code"].as_str().unwrap_or("?")),
                            format!("{id} via server {s}: {body}"),
                        ),
                        Err(_) => {
                            *report
                                .transport_errors
                                .lock()
                                .unwrap()
                                .entry(s)
                                .or_default() += 1;
                        }
                    }
                    tokio::time::sleep(CLIENT_PACE).await;
                }
            });
        }
        Self { report, up, tasks }
    }

    fn set_up(&self, server: usize, up: bool) {
        self.up[server].store(up, Ordering::SeqCst);
    }

    async fn finish(mut self) -> Arc<LoadReport> {
        while let Some(r) = self.tasks.join_next().await {
            r.expect("client task panicked");
        }
        self.report
    }
}

/// Polls `check` until it answers `Some`, or fails after `deadline`.
async fn poll<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let end = Instant::now() + deadline;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > end {
            bail!(
                "{what}: not reached within {deadline:?}{}",
                last_err
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every connection active without error, and its credentials served by every server.
async fn assert_all_healthy(bases: &[String], ids: &[String], introspector: &Introspector) {
    let api = Api::new();
    let mut bad = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let base = &bases[i % bases.len()];
        let c = api.connection(base, id).await.unwrap();
        if c["status"] != "active" || !c["last_error"].is_null() {
            let events = api.events(base, id).await.unwrap_or_default();
            bad.push(format!("{id}: {c}\n  events: {}", Value::from(events)));
            continue;
        }
        for b in bases {
            let (status, body) = api.credentials(b, id).await.unwrap();
            if status != 200 {
                bad.push(format!("{id} via {b}: {status} {body}"));
            } else if i % 10 == 0 {
                let token = body["data"]["access_token"].as_str().unwrap();
                assert!(
                    introspector.active(token).await.unwrap(),
                    "{id}: a token served by {b} is not active at the peer"
                );
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} connections are not healthy:\n{}",
        bad.len(),
        ids.len(),
        bad.join("\n")
    );
}

/// Socket ports of a process's TCP sockets (Linux /proc), to tell which process sent a
/// request the peer holds.
fn tcp_ports_of(pid: u32) -> HashSet<u16> {
    let mut inodes = HashSet::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path()) {
                if let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                {
                    inodes.insert(inode.to_owned());
                }
            }
        }
    }
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if cols.len() > 9 && inodes.contains(cols[9]) {
                if let Some(port) = cols[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    ports.insert(port);
                }
            }
        }
    }
    ports
}

fn print_load(label: &str, report: &LoadReport) {
    eprintln!(
        "{label}: {} credentials calls, {} ok, {} tokens introspected active, max latency {:?}, failures {:?}, transport errors by server {:?}",
        report.calls.load(Ordering::Relaxed),
        report.ok.load(Ordering::Relaxed),
        report.introspected.load(Ordering::Relaxed),
        *report.max_latency.lock().unwrap(),
        report.failures(),
        report.transport_errors(),
    );
}

// ---------------------------------------------------------------------------------------
// 1. Many connections, several processes, several refresh cycles under load
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_stay_active_through_refresh_cycles_across_processes() {
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start("refreshload", 3, 2).await.unwrap();
    let n = connection_count();
    let started = Instant::now();
    let ids = cluster.connect_many(n, CLIENT_ID).await.unwrap();
    eprintln!(
        "{} connections authorized in {:?} ({} processes on {})",
        ids.len(),
        started.elapsed(),
        cluster.servers.len(),
        cluster.backend()
    );
    let introspector = Introspector::new(&cluster.peer);
    let before = cluster.peer.stats().await.unwrap();
    assert_eq!(before.authorization_code_grants, n as u64);

    let load = Load::start(cluster.bases(), &ids, introspector.clone(), LOAD);
    let report = load.finish().await;
    print_load("load", &report);

    let stats = cluster.peer.stats().await.unwrap();
    let refreshed = cluster.log_counts("grant refreshed");
    eprintln!(
        "peer: {} refresh grants for {} connections ({:.1} cycles each), {} reuses, token errors {:?}; refreshes per process {:?}",
        stats.refresh_grants,
        n,
        stats.refresh_grants as f64 / n as f64,
        stats.refresh_token_reuses,
        stats.token_errors,
        refreshed,
    );

    assert_eq!(
        stats.refresh_token_reuses, 0,
        "a refresh token was used twice"
    );
    assert_eq!(stats.grant_revocations, 0);
    assert!(
        stats.token_errors.is_empty(),
        "token errors: {:?}",
        stats.token_errors
    );
    assert!(
        stats.refresh_grants >= 3 * n as u64,
        "expected several refresh cycles, got {} refresh grants for {n} connections",
        stats.refresh_grants
    );
    assert!(
        refreshed.iter().all(|&c| c > 0),
        "every process should have refreshed some grants: {refreshed:?}"
    );
    assert!(
        report.failures().is_empty(),
        "credentials calls failed: {:#?}",
        report.failures()
    );
    assert!(
        report.transport_errors().is_empty(),
        "transport errors: {:?}",
        report.transport_errors()
    );
    assert!(report.calls.load(Ordering::Relaxed) > n as u64);
    assert!(report.introspected.load(Ordering::Relaxed) > 0);
    assert_all_healthy(&cluster.bases(), &ids, &introspector).await;
    let after = cluster.peer.stats().await.unwrap();
    assert_eq!(after.refresh_token_reuses, 0);
}

// ---------------------------------------------------------------------------------------
// 2. SIGKILL while refreshes are in flight
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_refresh_loses_no_connection() {
    let _heavy = HEAVY.lock().await;
    let mut cluster = Cluster::start("refreshkill", 3, 2).await.unwrap();
    let n = connection_count();
    let ids = cluster.connect_many(n, CLIENT_ID).await.unwrap();
    let introspector = Introspector::new(&cluster.peer);
    let victim = cluster.servers.len() - 1;
    let load = Load::start(cluster.bases(), &ids, introspector.clone(), LOAD);

    // Let one refresh cycle pass first.
    let peer = &cluster.peer;
    poll("a first refresh cycle", Duration::from_secs(20), || async {
        Ok((peer.stats().await?.refresh_grants >= n as u64).then_some(()))
    })
    .await
    .unwrap();

    // Park refreshes at the peer until the victim has one in flight, then kill it.
    let pid = cluster.servers[victim].pid().unwrap();
    let mut attempt = 0;
    let in_flight = loop {
        attempt += 1;
        cluster.peer.hold_refreshes().await.unwrap();
        let found = poll(
            "a refresh of the victim at the peer",
            Duration::from_secs(2),
            || async {
                let ports = tcp_ports_of(pid);
                let parked = peer.parked_refreshes().await?;
                let mine = parked
                    .iter()
                    .filter(|p| ports.contains(&p.remote_port))
                    .count();
                Ok((mine > 0).then_some(mine))
            },
        )
        .await;
        match found {
            Ok(mine) => break mine,
            Err(e) if attempt < 5 => {
                eprintln!("attempt {attempt}: {e:#}");
                cluster.peer.release_refreshes().await.unwrap();
            }
            Err(e) => panic!("{e:#}"),
        }
    };
    let victim_ports = tcp_ports_of(pid);
    load.set_up(victim, false);
    cluster.servers[victim].kill9();
    let killed_at = Instant::now();
    // The peer sees the victim's connections close before it releases the parked requests.
    poll(
        "the peer notices the killed client",
        Duration::from_secs(2),
        || async {
            let parked = peer.parked_refreshes().await?;
            Ok(parked
                .iter()
                .filter(|p| victim_ports.contains(&p.remote_port))
                .all(|p| p.gone)
                .then_some(()))
        },
    )
    .await
    .unwrap();
    let released = cluster.peer.release_refreshes().await.unwrap();
    eprintln!(
        "killed server {victim} (pid {pid}) with {in_flight} refresh(es) in flight at the peer; released {released:?}"
    );
    assert!(released.dropped >= 1, "{released:?}");

    // The survivors alone take over: the leases the victim held lapse, and every connection
    // is served a live token again.
    let survivors: Vec<String> = cluster
        .bases()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, b)| b)
        .collect();
    let api = Api::new();
    let (ids_ref, survivors_ref, api_ref) = (&ids, &survivors, &api);
    poll(
        "the survivors serve every connection",
        Duration::from_secs(30),
        || async move {
            for (i, id) in ids_ref.iter().enumerate() {
                let base = &survivors_ref[i % survivors_ref.len()];
                let started = Instant::now();
                let (status, body) = api_ref.credentials(base, id).await?;
                if started.elapsed() > Duration::from_secs(1) {
                    eprintln!("recovery: {id} via {base} took {:?}", started.elapsed());
                }
                if status != 200 {
                    bail!("{id} via {base}: {status} {body}");
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .unwrap();
    eprintln!(
        "the survivors serve every connection {:?} after the kill",
        killed_at.elapsed()
    );

    // Start it again on the same port and data while the load goes on.
    let dead = cluster.servers.remove(victim);
    let restarted = LatchkeyServer::start(dead.options.clone()).await.unwrap();
    drop(dead);
    cluster.servers.insert(victim, restarted);
    load.set_up(victim, true);
    eprintln!(
        "restarted server {victim} {:?} after the kill",
        killed_at.elapsed()
    );

    let report = load.finish().await;
    print_load("load with a kill", &report);
    let bases = cluster.bases();
    let stats = cluster.peer.stats().await.unwrap();
    eprintln!(
        "peer: {} refresh grants for {n} connections, {} reuses, token errors {:?}; refreshes per process {:?}",
        stats.refresh_grants,
        stats.refresh_token_reuses,
        stats.token_errors,
        cluster.log_counts("grant refreshed"),
    );
    assert_eq!(
        stats.refresh_token_reuses, 0,
        "a refresh token was used twice"
    );
    assert_eq!(stats.grant_revocations, 0);
    assert!(
        stats.refresh_grants >= 3 * n as u64,
        "expected several refresh cycles, got {} refresh grants for {n} connections",
        stats.refresh_grants
    );
    assert_all_healthy(&bases, &ids, &introspector).await;
    // A call waits at most for the dead process's lease to lapse (HTTP timeout + 5 s),
    // then its own process refreshes.
    let max_latency = *report.max_latency.lock().unwrap();
    assert!(
        max_latency < HTTP_TIMEOUT + Duration::from_secs(9),
        "a credentials call took {max_latency:?}"
    );
    // Only calls cut by the kill may have failed at the transport level.
    let transport = report.transport_errors();
    assert!(
        transport.keys().all(|&s| s == victim),
        "transport errors on a surviving server: {transport:?}"
    );
    assert!(
        report.failures().is_empty(),
        "credentials calls failed: {:#?}",
        report.failures()
    );
}

// ---------------------------------------------------------------------------------------
// 3. A grant revoked at the provider
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_grant_revoked_at_the_provider_expires_the_connection_until_reconnected() {
    let cluster = Cluster::start("refreshrevoke", 1, 1).await.unwrap();
    let base = cluster.servers[0].base_url.clone();
    let api = Api::new();
    let ids = cluster.connect_many(2, CLIENT_ID).await.unwrap();
    let (revoked, control) = (&ids[0], &ids[1]);
    let before = api.connection(&base, revoked).await.unwrap();

    let (status, creds) = api.credentials(&base, revoked).await.unwrap();
    assert_eq!(status, 200, "{creds}");
    let token = creds["data"]["access_token"].as_str().unwrap();
    cluster.peer.revoke_grant(token).await.unwrap();
    let revoked_at = Instant::now();

    let c = poll(
        "the revoked connection expires",
        Duration::from_secs(30),
        || async {
            let c = api.connection(&base, revoked).await?;
            Ok((c["status"] == "expired").then_some(c))
        },
    )
    .await
    .unwrap();
    let took = revoked_at.elapsed();
    eprintln!("expired {took:?} after the revocation: {}", c["last_error"]);
    assert!(
        took <= REFRESH_INTERVAL + ACCESS_TOKEN_TTL + Duration::from_secs(3),
        "took {took:?}"
    );
    let last_error = c["last_error"].as_str().unwrap();
    assert!(last_error.contains("invalid_grant"), "{last_error}");

    let events = api.events(&base, revoked).await.unwrap();
    let rejected = events
        .iter()
        .find(|e| e["kind"] == "refresh_rejected")
        .unwrap_or_else(|| panic!("no refresh_rejected event: {events:?}"));
    assert_eq!(rejected["to"], "expired", "{rejected}");
    assert_eq!(rejected["from"], "active", "{rejected}");
    assert!(
        rejected["reason"]
            .as_str()
            .is_some_and(|r| r.contains("invalid_grant")),
        "{rejected}"
    );

    let (status, body) = api.credentials(&base, revoked).await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "connection_expired", "{body}");

    // The other connection is untouched.
    assert_eq!(
        api.connection(&base, control).await.unwrap()["status"],
        "active"
    );
    assert_eq!(api.credentials(&base, control).await.unwrap().0, 200);

    // Reconnect: the same connection comes back.
    api.authorize(&base, revoked).await.unwrap();
    let after = api.connection(&base, revoked).await.unwrap();
    assert_eq!(after["status"], "active");
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["name"], before["name"]);
    assert!(after["last_error"].is_null(), "{after}");
    // Oldest first: authorized, refresh_rejected, authorized again.
    let events = api.events(&base, revoked).await.unwrap();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds.last(), Some(&"authorized"), "{kinds:?}");
    let rejected_at = kinds.iter().position(|k| *k == "refresh_rejected").unwrap();
    assert!(kinds[..rejected_at].contains(&"authorized"), "{kinds:?}");
    let last = events.last().unwrap();
    assert_eq!(
        (&last["from"], &last["to"]),
        (&json!("expired"), &json!("active")),
        "{last}"
    );
    let (status, creds) = api.credentials(&base, revoked).await.unwrap();
    assert_eq!(status, 200, "{creds}");
    let introspector = Introspector::new(&cluster.peer);
    assert!(introspector
        .active(creds["data"]["access_token"].as_str().unwrap())
        .await
        .unwrap());

    let stats = cluster.peer.stats().await.unwrap();
    assert_eq!(stats.refresh_token_reuses, 0);
    assert_eq!(stats.admin_grant_revocations, 1);
}

// ---------------------------------------------------------------------------------------
// 5. No refresh token: expired once the access token lapses
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_grant_without_refresh_token_expires_when_its_token_does() {
    let cluster = Cluster::start("refreshnorefresh", 1, 1).await.unwrap();
    let base = cluster.servers[0].base_url.clone();
    let api = Api::new();
    let id = cluster
        .connect_many(1, NO_REFRESH_CLIENT_ID)
        .await
        .unwrap()
        .remove(0);
    let c = api.connection(&base, &id).await.unwrap();
    assert_eq!(c["status"], "active");
    assert_eq!(c["oauth2"]["has_refresh_token"], false, "{c}");
    assert!(c["oauth2"]["next_refresh_at"].is_null(), "{c}");
    let expires_at = c["oauth2"]["expires_at"].as_str().unwrap().to_owned();

    let (status, creds) = api.credentials(&base, &id).await.unwrap();
    assert_eq!(status, 200, "{creds}");
    assert!(Introspector::new(&cluster.peer)
        .active(creds["data"]["access_token"].as_str().unwrap())
        .await
        .unwrap());

    let c = poll(
        "the connection expires",
        Duration::from_secs(30),
        || async {
            let c = api.connection(&base, &id).await?;
            Ok((c["status"] == "expired").then_some(c))
        },
    )
    .await
    .unwrap();
    let events = api.events(&base, &id).await.unwrap();
    let lapsed = events
        .iter()
        .find(|e| e["kind"] == "lapsed")
        .unwrap_or_else(|| panic!("no lapsed event: {events:?}"));
    assert_eq!(lapsed["to"], "expired", "{lapsed}");
    let reason = lapsed["reason"].as_str().unwrap();
    assert!(reason.contains("no refresh token"), "{reason}");
    assert_eq!(c["last_error"].as_str(), Some(reason));
    // Not before the token's expiry.
    assert!(
        chrono_ms(lapsed["at"].as_str().unwrap()) >= chrono_ms(&expires_at),
        "lapsed at {} before the token's expiry {expires_at}",
        lapsed["at"]
    );

    let (status, body) = api.credentials(&base, &id).await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "connection_expired", "{body}");
    let stats = cluster.peer.stats().await.unwrap();
    assert_eq!(stats.refresh_grants, 0);
    assert!(stats.token_errors.is_empty(), "{:?}", stats.token_errors);
}

/// Milliseconds since the epoch of an RFC 3339 UTC timestamp as the API writes them.
fn chrono_ms(s: &str) -> i64 {
    // YYYY-MM-DDTHH:MM:SS(.fff…)Z
    let (date, time) = s.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    let ms: i64 = format!("{frac:0<3}")[..3].parse().unwrap();
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + ms
}

// ---------------------------------------------------------------------------------------
// 4. Tokens without expiry are never refreshed (mock token endpoint: oidc-provider always
//    sends expires_in)
// ---------------------------------------------------------------------------------------

mod mock {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use serde_json::json;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, Request, ResponseTemplate};

    pub fn grant_type(req: &Request) -> String {
        url::form_urlencoded::parse(&req.body)
            .find(|(k, _)| k == "grant_type")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    }

    /// `/token-forever` issues a token without `expires_in`; `/token-short` one that lives
    /// `short_ttl` seconds, with a new access token on every refresh.
    pub async fn start(short_ttl: u64) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/token-forever"))
            .respond_with(|req: &Request| {
                if grant_type(req) == "authorization_code" {
                    ResponseTemplate::new(200).set_body_json(json!({
                        "access_token": "forever-access",
                        "token_type": "Bearer",
                        "refresh_token": "forever-refresh",
                        "scope": "read",
                    }))
                } else {
                    ResponseTemplate::new(400).set_body_json(json!({
                        "error": "invalid_grant",
                        "error_description": "a token without expiry was refreshed",
                    }))
                }
            })
            .mount(&server)
            .await;
        let issued = Arc::new(AtomicUsize::new(0));
        Mock::given(method("POST"))
            .and(path("/token-short"))
            .respond_with(move |_: &Request| {
                let n = issued.fetch_add(1, Ordering::SeqCst);
                ResponseTemplate::new(200).set_body_json(json!({
                    "access_token": format!("short-access-{n}"),
                    "token_type": "Bearer",
                    "expires_in": short_ttl,
                    "refresh_token": format!("short-refresh-{n}"),
                    "scope": "read",
                }))
            })
            .mount(&server)
            .await;
        server
    }
}

#[tokio::test]
async fn tokens_without_expiry_are_never_refreshed() {
    let mock = mock::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let pg = PgDatabase::create("refreshforever").unwrap();
    let server = LatchkeyServer::start(server_options(
        dir.path(),
        free_port().unwrap(),
        pg.as_ref(),
    ))
    .await
    .unwrap();
    let base = server.base_url.clone();
    let api = Api::new();

    let connect = |name: &'static str, token_path: &'static str| {
        let (api, base, mock_uri) = (api.clone(), base.clone(), mock.uri());
        async move {
            let id = api
                .create(
                    &base,
                    json!({
                        "name": name,
                        "project_id": PROJECT,
                        "type": "oauth2",
                        "config": {
                            "scopes": ["read"],
                            "oauth2_config": {
                                "client_id": "mock-client",
                                "client_secret": "mock-secret",
                                "authorization_endpoint": format!("{mock_uri}/authorize"),
                                "token_endpoint": format!("{mock_uri}{token_path}"),
                                "token_endpoint_auth_method": "client_secret_post",
                            },
                        },
                    }),
                )
                .await
                .unwrap();
            // The user's consent at the mock is skipped: the callback gets a code directly.
            let url = Url::parse(&api.authorize_url(&base, &id).await.unwrap()).unwrap();
            let q: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
            let mut callback = Url::parse(&q["redirect_uri"]).unwrap();
            callback
                .query_pairs_mut()
                .append_pair("code", &format!("code-{name}"))
                .append_pair("state", &q["state"]);
            let resp = Browser::new()
                .unwrap()
                .open(callback.as_str())
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
            let c = api.connection(&base, &id).await.unwrap();
            assert_eq!(c["status"], "active", "{c}");
            id
        }
    };
    let forever = connect("forever", "/token-forever").await;
    let short = connect("short", "/token-short").await;

    let c = api.connection(&base, &forever).await.unwrap();
    assert!(c["oauth2"]["expires_at"].is_null(), "{c}");
    assert!(c["oauth2"]["next_refresh_at"].is_null(), "{c}");
    assert_eq!(c["oauth2"]["has_refresh_token"], true, "{c}");

    // The refresh job runs: the short-lived grant is refreshed several times meanwhile.
    let count = |path: &'static str, grant: &'static str| {
        let mock = &mock;
        async move {
            mock.received_requests()
                .await
                .unwrap_or_default()
                .iter()
                .filter(|r| r.url.path() == path && mock::grant_type(r) == grant)
                .count()
        }
    };
    poll(
        "three refreshes of the short-lived grant",
        Duration::from_secs(30),
        || async {
            let (status, _) = api.credentials(&base, &forever).await?;
            assert_eq!(status, 200);
            Ok((count("/token-short", "refresh_token").await >= 3).then_some(()))
        },
    )
    .await
    .unwrap();

    assert_eq!(count("/token-forever", "authorization_code").await, 1);
    assert_eq!(
        count("/token-forever", "refresh_token").await,
        0,
        "a token without expiry was refreshed"
    );
    let c = api.connection(&base, &forever).await.unwrap();
    assert_eq!(c["status"], "active", "{c}");
    assert!(c["last_error"].is_null(), "{c}");
    let (status, creds) = api.credentials(&base, &forever).await.unwrap();
    assert_eq!(status, 200, "{creds}");
    assert_eq!(creds["data"]["access_token"], "forever-access");
    assert!(creds["data"]["expires_at"].is_null(), "{creds}");
    let s = api.connection(&base, &short).await.unwrap();
    assert_eq!(s["status"], "active", "{s}");
    drop(server);
    drop(pg);
}
