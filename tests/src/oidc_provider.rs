//! Runs `tests/oidc-provider/server.mjs` (npm `oidc-provider`) as a child process and talks to
//! its test-only admin endpoints.
//!
//! The child is killed when the [`OidcProvider`] is dropped; it also exits by itself when this
//! process dies without running destructors, because it watches its stdin.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use url::Url;

/// The account every login ends as.
pub const TEST_ACCOUNT_ID: &str = "user-1";
pub const TEST_ACCOUNT_EMAIL: &str = "user-1@example.test";
/// `login_hint` value that makes the simulated user deny the request (`error=access_denied`).
pub const DENY_LOGIN_HINT: &str = "deny";

/// How much of the child's output is kept for failure reports.
const LOG_LINES: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    /// A public client: no secret, PKCE required.
    None,
}

impl TokenAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::None => "none",
        }
    }
}

/// A client registered with the provider at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcClient {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub auth_method: TokenAuthMethod,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    /// Confidential clients may skip PKCE unless this is set; public clients never may.
    pub require_pkce: bool,
}

impl OidcClient {
    pub fn confidential(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        auth_method: TokenAuthMethod,
        redirect_uris: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: Some(client_secret.into()),
            auth_method,
            redirect_uris: redirect_uris.into_iter().map(Into::into).collect(),
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            require_pkce: false,
        }
    }

    pub fn public(
        client_id: impl Into<String>,
        redirect_uris: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: None,
            auth_method: TokenAuthMethod::None,
            redirect_uris: redirect_uris.into_iter().map(Into::into).collect(),
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            require_pkce: true,
        }
    }

    pub fn with_required_pkce(mut self) -> Self {
        self.require_pkce = true;
        self
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "client_id": self.client_id,
            "token_endpoint_auth_method": self.auth_method.as_str(),
            "redirect_uris": self.redirect_uris,
            "grant_types": self.grant_types,
            "response_types": ["code"],
            "require_pkce": self.require_pkce,
        });
        if let Some(secret) = &self.client_secret {
            v["client_secret"] = json!(secret);
        }
        v
    }
}

#[derive(Debug, Clone)]
pub struct OidcProviderOptions {
    pub clients: Vec<OidcClient>,
    /// Access token lifetime, whole seconds (default 3600).
    pub access_token_ttl: Duration,
    /// Refresh token (and grant) lifetime, whole seconds (default 30 days).
    pub refresh_token_ttl: Duration,
    /// Scopes accepted beyond `openid offline_access email profile read write`.
    pub extra_scopes: Vec<String>,
    /// 0 picks a free port.
    pub port: u16,
    /// Covers `npm ci` only when node_modules is already there; the install has its own.
    pub startup_timeout: Duration,
}

impl Default for OidcProviderOptions {
    fn default() -> Self {
        Self {
            clients: Vec::new(),
            access_token_ttl: Duration::from_secs(3600),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            extra_scopes: Vec::new(),
            port: 0,
            startup_timeout: Duration::from_secs(30),
        }
    }
}

impl OidcProviderOptions {
    pub fn client(mut self, client: OidcClient) -> Self {
        self.clients.push(client);
        self
    }

    pub fn access_token_ttl(mut self, ttl: Duration) -> Self {
        self.access_token_ttl = ttl;
        self
    }
}

/// Counters kept by the peer since start (or the last [`OidcProvider::reset_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PeerStats {
    /// Successful code exchanges.
    pub authorization_code_grants: u64,
    /// Successful refresh_token grants.
    pub refresh_grants: u64,
    /// Consumed refresh tokens presented again (each one revokes its grant).
    pub refresh_token_reuses: u64,
    /// Whole grants revoked, for any reason: reuse, RFC 7009 revocation of a refresh token,
    /// or the admin endpoint.
    pub grant_revocations: u64,
    /// Grants revoked through [`OidcProvider::revoke_grant`].
    pub admin_grant_revocations: u64,
    /// Token endpoint errors, keyed `error: detail`.
    pub token_errors: BTreeMap<String, u64>,
}

/// A refresh request the peer holds (see [`OidcProvider::hold_refreshes`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ParkedRefresh {
    /// The client's TCP port, to tell which process sent it.
    pub remote_port: u16,
    /// The client closed its connection while the request was parked.
    pub gone: bool,
}

/// What [`OidcProvider::release_refreshes`] did with the parked requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct ReleasedRefreshes {
    pub processed: u64,
    /// Requests whose client went away: never processed.
    pub dropped: u64,
}

#[derive(Debug, Deserialize)]
struct ReadyLine {
    issuer: String,
    port: u16,
    resource_server: ResourceServer,
}

#[derive(Debug, Clone, Deserialize)]
struct ResourceServer {
    client_id: String,
    client_secret: String,
}

type LogBuffer = Arc<Mutex<VecDeque<String>>>;

/// A running `oidc-provider`, killed on drop. Create and drop it inside one Tokio runtime.
pub struct OidcProvider {
    child: Child,
    // Held only so it closes (and the child exits) when we go away.
    _stdin: Option<ChildStdin>,
    issuer: Url,
    port: u16,
    discovery: Value,
    resource_server: ResourceServer,
    http: reqwest::Client,
    logs: LogBuffer,
}

impl fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcProvider")
            .field("pid", &self.child.id())
            .field("issuer", &self.issuer.as_str())
            .finish_non_exhaustive()
    }
}

impl OidcProvider {
    /// Installs the npm packages if needed, spawns the server and waits for its ready line.
    pub async fn start(options: OidcProviderOptions) -> Result<Self> {
        let dir = peer_dir();
        {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || ensure_node_modules(&dir))
                .await
                .context("npm install task")??;
        }

        let clients: Vec<Value> = options.clients.iter().map(OidcClient::to_json).collect();
        let mut cmd = Command::new(env_or("LATCHKEY_NODE", "node"));
        cmd.current_dir(&dir)
            .arg("server.mjs")
            .arg("--port")
            .arg(options.port.to_string())
            .arg("--exit-with-stdin")
            .env("OIDC_CLIENTS", Value::Array(clients).to_string())
            .env(
                "OIDC_ACCESS_TOKEN_TTL",
                options.access_token_ttl.as_secs().to_string(),
            )
            .env(
                "OIDC_REFRESH_TOKEN_TTL",
                options.refresh_token_ttl.as_secs().to_string(),
            )
            .env("OIDC_EXTRA_SCOPES", options.extra_scopes.join(" "))
            // Only the options above configure the peer, not the caller's environment.
            .env_remove("OIDC_PORT")
            .env_remove("OIDC_RS_CLIENT_ID")
            .env_remove("OIDC_RS_CLIENT_SECRET")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning node server.mjs in {}", dir.display()))?;

        let logs: LogBuffer = Arc::default();
        let (ready_tx, ready_rx) = oneshot::channel();
        let stdout = child.stdout.take().context("child stdout")?;
        let stderr = child.stderr.take().context("child stderr")?;
        spawn_reader(stdout, logs.clone(), Some(ready_tx));
        spawn_reader(stderr, logs.clone(), None);
        let stdin = child.stdin.take();

        // From here on the child is owned by a guard so that early returns kill it.
        let mut guard = ChildGuard(Some(child));
        let line = match tokio::time::timeout(options.startup_timeout, ready_rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => {
                let status = guard.kill_and_wait();
                bail!(
                    "oidc-provider exited before READY ({status}); output:\n{}",
                    dump(&logs)
                );
            }
            Err(_) => {
                guard.kill_and_wait();
                bail!(
                    "oidc-provider not ready within {:?}; output:\n{}",
                    options.startup_timeout,
                    dump(&logs)
                );
            }
        };
        let ready: ReadyLine =
            serde_json::from_str(&line).with_context(|| format!("bad READY line {line:?}"))?;
        let issuer = Url::parse(&ready.issuer).context("issuer from READY")?;

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the admin HTTP client")?;
        let discovery: Value = http
            .get(format!("{}/.well-known/openid-configuration", ready.issuer))
            .send()
            .await
            .context("fetching discovery")?
            .error_for_status()?
            .json()
            .await
            .context("parsing discovery")?;

        let child = guard.0.take().context("child vanished")?;
        Ok(Self {
            child,
            _stdin: stdin,
            issuer,
            port: ready.port,
            discovery,
            resource_server: ready.resource_server,
            http,
            logs,
        })
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash (as it appears in `iss`).
    pub fn issuer(&self) -> &str {
        self.issuer.as_str().trim_end_matches('/')
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node process id (to check cleanup).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The discovery document, fetched once at start.
    pub fn discovery(&self) -> &Value {
        &self.discovery
    }

    pub fn authorization_endpoint(&self) -> &str {
        self.endpoint("authorization_endpoint")
    }

    pub fn token_endpoint(&self) -> &str {
        self.endpoint("token_endpoint")
    }

    pub fn introspection_endpoint(&self) -> &str {
        self.endpoint("introspection_endpoint")
    }

    pub fn revocation_endpoint(&self) -> &str {
        self.endpoint("revocation_endpoint")
    }

    pub fn userinfo_endpoint(&self) -> &str {
        self.endpoint("userinfo_endpoint")
    }

    // server.mjs enables every one of these, so a missing one is a broken peer.
    fn endpoint(&self, name: &str) -> &str {
        self.discovery[name].as_str().unwrap_or_default()
    }

    /// The confidential client that may introspect any token: `(client_id, client_secret)`.
    pub fn resource_server_credentials(&self) -> (&str, &str) {
        (
            &self.resource_server.client_id,
            &self.resource_server.client_secret,
        )
    }

    fn admin_url(&self, path: &str) -> String {
        format!("{}/__test/{path}", self.issuer())
    }

    pub async fn stats(&self) -> Result<PeerStats> {
        let resp = self.http.get(self.admin_url("stats")).send().await?;
        Ok(resp.error_for_status()?.json().await?)
    }

    pub async fn reset_stats(&self) -> Result<()> {
        let resp = self.http.post(self.admin_url("stats/reset")).send().await?;
        resp.error_for_status()?;
        Ok(())
    }

    /// Revokes the whole grant the access token belongs to (all its access and refresh
    /// tokens), as a user would in the provider's security settings. Returns the grant id.
    pub async fn revoke_grant(&self, access_token: &str) -> Result<String> {
        self.revoke_grant_by("access_token", access_token).await
    }

    /// Same as [`Self::revoke_grant`], finding the grant from a refresh token.
    pub async fn revoke_grant_of_refresh_token(&self, refresh_token: &str) -> Result<String> {
        self.revoke_grant_by("refresh_token", refresh_token).await
    }

    async fn revoke_grant_by(&self, kind: &str, token: &str) -> Result<String> {
        let resp = self
            .http
            .post(self.admin_url("revoke-grant"))
            .form(&[(kind, token)])
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if !status.is_success() {
            bail!("revoke-grant by {kind} failed: {status} {body}");
        }
        body["grant_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("revoke-grant answered without grant_id: {body}"))
    }

    /// From now on the peer parks `refresh_token` grant requests before processing them,
    /// until [`Self::release_refreshes`].
    pub async fn hold_refreshes(&self) -> Result<()> {
        let resp = self
            .http
            .post(self.admin_url("refreshes/hold"))
            .send()
            .await?;
        resp.error_for_status()?;
        Ok(())
    }

    /// The refresh requests parked right now.
    pub async fn parked_refreshes(&self) -> Result<Vec<ParkedRefresh>> {
        #[derive(Deserialize)]
        struct Parked {
            parked: Vec<ParkedRefresh>,
        }
        let resp = self
            .http
            .get(self.admin_url("refreshes/parked"))
            .send()
            .await?;
        Ok(resp.error_for_status()?.json::<Parked>().await?.parked)
    }

    /// Stops holding: parked requests are processed, except those whose client went away
    /// (dropped without consuming their refresh tokens).
    pub async fn release_refreshes(&self) -> Result<ReleasedRefreshes> {
        let resp = self
            .http
            .post(self.admin_url("refreshes/release"))
            .send()
            .await?;
        Ok(resp.error_for_status()?.json().await?)
    }

    /// RFC 7662 introspection as the resource server client.
    pub async fn introspect(&self, token: &str) -> Result<Value> {
        let (id, secret) = self.resource_server_credentials();
        let resp = self
            .http
            .post(self.introspection_endpoint())
            .basic_auth(id, Some(secret))
            .form(&[("token", token)])
            .send()
            .await?;
        Ok(resp.error_for_status()?.json().await?)
    }

    /// The child's recent stdout and stderr lines.
    pub fn logs(&self) -> String {
        dump(&self.logs)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- oidc-provider output (pid {}) ---\n{}",
                self.child.id(),
                self.logs()
            );
        }
    }
}

struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn kill_and_wait(&mut self) -> String {
        match self.0.take() {
            Some(mut child) => {
                let _ = child.kill();
                child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string())
            }
            None => "gone".into(),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_and_wait();
    }
}

/// Drains one of the child's pipes on a thread of its own: the child writes synchronously, so
/// an unread pipe would block it. The first `READY ` line on stdout goes to `ready`.
fn spawn_reader(
    pipe: impl Read + Send + 'static,
    logs: LogBuffer,
    mut ready: Option<oneshot::Sender<String>>,
) {
    let echo = std::env::var_os("LATCHKEY_PEER_LOG").is_some();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("READY ") {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(rest.to_owned());
                }
            }
            if echo {
                eprintln!("[oidc-provider] {line}");
            }
            let mut buf = logs.lock().unwrap_or_else(PoisonError::into_inner);
            if buf.len() == LOG_LINES {
                buf.pop_front();
            }
            buf.push_back(line);
        }
    });
}

fn dump(logs: &LogBuffer) -> String {
    let buf = logs.lock().unwrap_or_else(PoisonError::into_inner);
    buf.iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// `tests/oidc-provider`, next to this crate's manifest.
pub fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc-provider")
}

/// Serialises installs among the tests of one process; other processes are handled by the
/// atomic rename in [`ensure_node_modules`].
static INSTALL: Mutex<()> = Mutex::new(());
static SCRATCH_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Runs `npm ci` if node_modules lacks the pinned oidc-provider. The install happens in a
/// scratch directory whose node_modules is then renamed into place: concurrent test processes
/// may both install, but none ever sees a half-written node_modules, and a crash leaves no lock
/// behind.
fn ensure_node_modules(dir: &Path) -> Result<()> {
    let _guard = INSTALL.lock().unwrap_or_else(PoisonError::into_inner);
    let wanted = pinned_version(dir)?;
    if installed_version(dir).as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }

    let scratch = dir.join(format!(
        ".install-{}-{}",
        std::process::id(),
        SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let result = install_into(dir, &scratch, &wanted);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn install_into(dir: &Path, scratch: &Path, wanted: &str) -> Result<()> {
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(dir.join(file), scratch.join(file))
            .with_context(|| format!("copying {file}"))?;
    }
    let npm = env_or("LATCHKEY_NPM", "npm");
    let out = Command::new(&npm)
        .current_dir(scratch)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {npm} ci (is Node.js installed?)"))?;
    if !out.status.success() {
        bail!(
            "npm ci failed in {}: {}\n{}",
            scratch.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let target = dir.join("node_modules");
    if target.exists() && installed_version(dir).as_deref() != Some(wanted) {
        // An install of another version: move it out of the way, then delete it.
        std::fs::rename(&target, scratch.join("stale_node_modules"))
            .context("moving the stale node_modules aside")?;
    }
    // Fails (ENOTEMPTY) when another process won the race, which is just as good.
    if let Err(e) = std::fs::rename(scratch.join("node_modules"), &target) {
        if installed_version(dir).as_deref() != Some(wanted) {
            return Err(e).context("moving node_modules into place");
        }
    }
    Ok(())
}

/// The exact oidc-provider version package.json pins.
fn pinned_version(dir: &Path) -> Result<String> {
    let pkg: Value = serde_json::from_slice(&std::fs::read(dir.join("package.json"))?)?;
    pkg["dependencies"]["oidc-provider"]
        .as_str()
        .map(str::to_owned)
        .context("package.json does not pin oidc-provider")
}

fn installed_version(dir: &Path) -> Option<String> {
    let raw = std::fs::read(dir.join("node_modules/oidc-provider/package.json")).ok()?;
    let pkg: Value = serde_json::from_slice(&raw).ok()?;
    pkg["version"].as_str().map(str::to_owned)
}
