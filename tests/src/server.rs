//! The real `latchkey` binary as a child process, with its own data directory and
//! database, on a free loopback port.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The admin token every test server gets unless told otherwise.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Builds the binary once per test process and returns its path.
pub fn latchkey_binary() -> Result<PathBuf> {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.as_ref() {
        return Ok(p.clone());
    }
    let workspace = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "latchkey-api",
            "--bin",
            "latchkey",
        ])
        .current_dir(&workspace)
        .status()
        .context("running cargo build for the latchkey binary")?;
    if !status.success() {
        bail!("cargo build of the latchkey binary failed: {status}");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                workspace.join(p)
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    let path = target.join("debug").join("latchkey");
    if !path.exists() {
        bail!(
            "built the latchkey binary but found none at {}",
            path.display()
        );
    }
    *built = Some(path.clone());
    Ok(path)
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where `./data` lives (the working directory of the child).
    pub work_dir: PathBuf,
    /// `None`: the default SQLite file under the work dir.
    pub database_url: Option<String>,
    /// Extra `LATCHKEY_*` variables.
    pub env: Vec<(String, String)>,
    /// Port to listen on; `None` picks a free one.
    pub port: Option<u16>,
}

impl ServerOptions {
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            work_dir: work_dir.into(),
            database_url: None,
            env: Vec::new(),
            port: None,
        }
    }

    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_owned(), v.into()));
        self
    }

    pub fn database(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// The database and `LATCHKEY_*` variables of these options. PostgreSQL requires
    /// `LATCHKEY_MASTER_KEYS`: unless the test sets it (empty to leave it unset), every
    /// process on PostgreSQL gets [`PG_TEST_MASTER_KEYS`].
    fn apply_env(&self, cmd: &mut Command) {
        if let Some(db) = &self.database_url {
            cmd.env("LATCHKEY_DATABASE_URL", db);
            if db.starts_with("postgres")
                && !self.env.iter().any(|(k, _)| k == "LATCHKEY_MASTER_KEYS")
            {
                cmd.env("LATCHKEY_MASTER_KEYS", PG_TEST_MASTER_KEYS);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }

    /// Runs a `latchkey` command (not the server) with these options' environment and
    /// working directory, and waits for it.
    pub fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        std::fs::create_dir_all(&self.work_dir)?;
        let mut cmd = Command::new(latchkey_binary()?);
        cmd.current_dir(&self.work_dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LATCHKEY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("NO_COLOR", "1")
            .args(args)
            .stdin(Stdio::null());
        self.apply_env(&mut cmd);
        cmd.output().context("running latchkey")
    }
}

/// The key ring every test process on PostgreSQL gets unless the test names its own.
pub const PG_TEST_MASTER_KEYS: &str = "pgtest:cGdfdGVzdF9tYXN0ZXJfa2V5XzMyX2J5dGVzX2xvbmc=";

/// A running `latchkey` process. Killed on drop.
#[derive(Debug)]
pub struct LatchkeyServer {
    child: Option<Child>,
    pub port: u16,
    pub base_url: String,
    pub log_path: PathBuf,
    pub options: ServerOptions,
}

impl LatchkeyServer {
    fn command(options: &ServerOptions, port: u16, log_path: &Path) -> Result<Command> {
        std::fs::create_dir_all(&options.work_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        let mut cmd = Command::new(latchkey_binary()?);
        cmd.current_dir(&options.work_dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LATCHKEY_LISTEN", format!("127.0.0.1:{port}"))
            .env("LATCHKEY_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
            .env("LATCHKEY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("LATCHKEY_LOG", "info,latchkey_app=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        options.apply_env(&mut cmd);
        Ok(cmd)
    }

    /// Starts the server and waits until `/healthz` answers 200.
    pub async fn start(options: ServerOptions) -> Result<Self> {
        let port = match options.port {
            Some(p) => p,
            None => free_port()?,
        };
        let log_path = options.work_dir.join(format!("latchkey-{port}.log"));
        let child = Self::command(&options, port, &log_path)?
            .spawn()
            .context("spawning latchkey")?;
        let mut server = Self {
            child: Some(child),
            port,
            base_url: format!("http://127.0.0.1:{port}"),
            log_path,
            options: ServerOptions {
                port: Some(port),
                ..options
            },
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = server.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "latchkey exited during start-up ({status}):\n{}",
                        server.logs()
                    );
                }
            }
            if let Ok(r) = client
                .get(format!("{}/healthz", server.base_url))
                .send()
                .await
            {
                if r.status().is_success() {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "latchkey did not become healthy within 60 s:\n{}",
                    server.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs the server expecting it to refuse to start; returns its exit status and output.
    pub fn start_expecting_failure(options: ServerOptions) -> Result<(ExitStatus, String)> {
        let port = free_port()?;
        let log_path = options.work_dir.join(format!("latchkey-fail-{port}.log"));
        let mut child = Self::command(&options, port, &log_path)?.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                let mut out = String::new();
                std::fs::File::open(&log_path)?.read_to_string(&mut out)?;
                return Ok((status, out));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("latchkey kept running although it was expected to refuse to start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server wrote so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same server again (same port, data and database).
    pub async fn restart(mut self) -> Result<Self> {
        self.stop();
        let options = self.options.clone();
        Self::start(options).await
    }
}

impl Drop for LatchkeyServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- latchkey log ({}) ----\n{}",
                self.log_path.display(),
                self.logs()
            );
        }
        self.kill9();
    }
}

/// A PostgreSQL database of its own for one test, dropped at the end. `None` when
/// `LATCHKEY_TEST_POSTGRES_URL` is unset.
#[derive(Debug)]
pub struct PgDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub fn create(label: &str) -> Result<Option<Self>> {
        let Ok(admin_url) = std::env::var("LATCHKEY_TEST_POSTGRES_URL") else {
            return Ok(None);
        };
        let mut bytes = [0u8; 6];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let clean: String = label
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(20)
            .collect::<String>()
            .to_lowercase();
        let name = format!("lk_e2e_{clean}_{suffix}");
        psql(&admin_url, &format!("CREATE DATABASE {name}"))?;
        let mut url = url::Url::parse(&admin_url)?;
        url.set_path(&format!("/{name}"));
        Ok(Some(Self {
            admin_url,
            name,
            url: url.to_string(),
        }))
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .arg(url)
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg("-qc")
        .arg(sql)
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!(
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A reqwest client that sends the admin token.
pub fn admin_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {ADMIN_TOKEN}")) {
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap_or_default()
}
