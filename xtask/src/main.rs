//! Project automation, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! Plain Rust on std and anyhow so that it builds in seconds and works wherever cargo
//! does. Every command runs from the workspace root and stops at the first failure.

// A command-line tool: printing is its interface.
#![allow(clippy::print_stdout)]

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const HELP: &str = "\
Usage: cargo xtask <command>

Commands:
  ci      What CI runs, failing fast: cargo fmt --check, cargo clippy -D warnings,
          npm ci for the OIDC test peer if needed, cargo test --workspace
  e2e     npm ci for the OIDC test peer if needed, then cargo test -p latchkey-tests
  bench   Build the release `latchkey` binary, install wrk if missing, and run the
          workspace's bench targets: the server bench (one table of req/s, p50, p99 and
          ratios to the static-404 ceiling, refreshes/s, CPU per refresh, list p99, RSS,
          start-up) and the refresh-scan bench. Fails when a target is missed.
          `bench --smoke` runs a few seconds of each, targets reported, not enforced
  openapi Regenerate docs/openapi.json from the code
  fuzz    Schema-driven fuzzing: schemathesis (pinned, in target/schemathesis-venv)
          against the live binary with the admin token; no 5xx, every response
          matches docs/openapi.json (ci runs it after the tests)
  help    Print this help

Environment:
  LATCHKEY_TEST_POSTGRES_URL  when set, the tests also run against this PostgreSQL
  CARGO_TARGET_DIR            passed through to every cargo invocation";

/// The OIDC provider used as the peer of the end-to-end tests, relative to the root.
const OIDC_PEER_DIR: &str = "tests/oidc-provider";
const POSTGRES_ENV: &str = "LATCHKEY_TEST_POSTGRES_URL";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("e2e") => e2e(),
        Some("bench") => bench(&args[1..]),
        Some("openapi") => openapi(),
        Some("fuzz") => {
            let mut steps = Steps::default();
            steps.step("fuzz", fuzz)
        }
        Some("help" | "-h" | "--help") => {
            println!("{HELP}");
            Ok(())
        }
        Some(other) => {
            eprintln!("xtask: unknown command `{other}`\n\n{HELP}");
            return ExitCode::from(2);
        }
        None => {
            eprintln!("{HELP}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn ci() -> Result<()> {
    let started = Instant::now();
    let mut steps = Steps::default();

    steps.run(
        "fmt",
        cargo(["fmt", "--all", "--", "--check"]),
        "code is not formatted; run `cargo fmt --all`",
    )?;
    steps.run(
        "clippy",
        cargo([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        "clippy found problems",
    )?;
    steps.step("npm", ensure_oidc_peer)?;

    if env::var_os(POSTGRES_ENV).is_some_and(|v| !v.is_empty()) {
        // The URL may carry a password: say that it is set, never what it is.
        println!("xtask: {POSTGRES_ENV} is set: the PostgreSQL tests run too");
    } else {
        println!(
            "xtask: {POSTGRES_ENV} is not set: the PostgreSQL tests are skipped (SQLite only)"
        );
    }
    steps.run("test", cargo(["test", "--workspace"]), "tests failed")?;
    steps.step("fuzz", fuzz)?;

    println!(
        "\nxtask ci: OK: {} in {}",
        steps.summary(),
        secs(started.elapsed())
    );
    Ok(())
}

fn e2e() -> Result<()> {
    let started = Instant::now();
    let mut steps = Steps::default();
    steps.step("npm", ensure_oidc_peer)?;
    steps.run(
        "test",
        cargo(["test", "-p", "latchkey-tests"]),
        "end-to-end tests failed",
    )?;
    println!(
        "\nxtask e2e: OK: {} in {}",
        steps.summary(),
        secs(started.elapsed())
    );
    Ok(())
}

fn bench(args: &[String]) -> Result<()> {
    let smoke = args.iter().any(|a| a == "--smoke");
    let mut steps = Steps::default();
    steps.run(
        "build",
        cargo([
            "build",
            "--release",
            "--package",
            "latchkey-api",
            "--bin",
            "latchkey",
        ]),
        "release build of `latchkey` failed",
    )?;
    let binary = target_dir().join("release").join("latchkey");
    println!("xtask: release binary: {}", binary.display());

    let benches = bench_targets()?;
    if benches == 0 {
        println!("xtask bench: no benchmarks defined yet (no bench targets in the workspace)");
        return Ok(());
    }
    println!("xtask: {benches} bench target(s) found");
    steps.step("wrk", ensure_wrk)?;
    // Only the `[[bench]]` targets: `--benches` would also build every library and binary
    // as a bench harness, the server's included, in release mode with LTO (a second
    // release build of `latchkey` next to the one above).
    let mut run = cargo(["bench", "--workspace", "--bench", "*"]);
    // Benchmarks that drive the server as a process find it here.
    run.env("LATCHKEY_BIN", &binary);
    if smoke {
        run.env("LATCHKEY_BENCH_SMOKE", "1");
    } else if env::var_os("LATCHKEY_BENCH_SCAN_ROWS").is_none() {
        // The refresh scans at the issue's 100,000 stored connections.
        run.env("LATCHKEY_BENCH_SCAN_ROWS", "100000");
    }
    steps.run("bench", run, "benchmarks failed")?;
    println!("\nxtask bench: OK: {}", steps.summary());
    Ok(())
}

/// Schemathesis, pinned: the version this repository's schema and checks were tried with.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
const FUZZ_TOKEN: &str = "xtask-fuzz-admin-token-0123456789";

fn openapi() -> Result<()> {
    let mut cmd = cargo([
        "run",
        "--quiet",
        "-p",
        "latchkey-api",
        "--bin",
        "latchkey",
        "--",
        "openapi",
    ]);
    let out = cmd
        .output()
        .with_context(|| format!("running {}", describe(&cmd)))?;
    if !out.status.success() {
        bail!(
            "latchkey openapi failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let path = root().join("docs").join("openapi.json");
    fs::write(&path, &out.stdout).with_context(|| format!("writing {}", path.display()))?;
    println!("xtask: wrote {}", path.display());
    Ok(())
}

/// The virtualenv with the pinned schemathesis, created or updated only when needed.
fn ensure_schemathesis() -> Result<PathBuf> {
    let venv = target_dir().join("schemathesis-venv");
    let st = venv.join("bin").join("st");
    let pin = venv.join("latchkey-pin");
    if st.is_file() && fs::read_to_string(&pin).is_ok_and(|p| p == SCHEMATHESIS) {
        println!("xtask: {SCHEMATHESIS} is installed in {}", venv.display());
        return Ok(st);
    }
    let mut mk = Command::new("python3");
    mk.args(["-m", "venv"]).arg(&venv);
    run(
        mk,
        "python3 -m venv failed (is python3 with venv installed?)",
    )?;
    let mut pip = Command::new(venv.join("bin").join("pip"));
    pip.args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        SCHEMATHESIS,
    ]);
    run(pip, "pip install of schemathesis failed")?;
    fs::write(&pin, SCHEMATHESIS)?;
    Ok(st)
}

/// Starts the debug binary on a free loopback port with a throwaway SQLite database,
/// runs schemathesis against its `/openapi.json`, and stops it.
fn fuzz() -> Result<()> {
    let st = ensure_schemathesis()?;
    run(
        cargo([
            "build",
            "--quiet",
            "-p",
            "latchkey-api",
            "--bin",
            "latchkey",
        ]),
        "build of `latchkey` failed",
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let work = target_dir().join("fuzz");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let log = fs::File::create(work.join("latchkey.log"))?;
    let mut server = Command::new(target_dir().join("debug").join("latchkey"));
    server
        .current_dir(&work)
        .env_clear()
        .env("PATH", env::var_os("PATH").unwrap_or_default())
        .env("LATCHKEY_LISTEN", format!("127.0.0.1:{port}"))
        .env("LATCHKEY_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
        .env("LATCHKEY_ADMIN_TOKEN", FUZZ_TOKEN)
        .env("LATCHKEY_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child = server.spawn().context("starting latchkey")?;
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                bail!(
                    "latchkey did not start; see {}",
                    work.join("latchkey.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut cmd = Command::new(&st);
        cmd.current_dir(&work)
            .args(["run", &format!("http://127.0.0.1:{port}/openapi.json")])
            .args(["--header", &format!("Authorization: Bearer {FUZZ_TOKEN}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            ])
            // Bounded: about a minute on a laptop, reproducible by seed.
            .args(["--max-examples", "60", "--seed", "20261130", "--request-timeout", "20"])
            .args(["--max-failures", "20", "--no-color"])
            .env("SCHEMATHESIS_HOOKS", "")
            .env("NO_COLOR", "1");
        run(
            cmd,
            "schemathesis found responses that break the contract (see above)",
        )
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Installs Debian's `wrk`, the load generator of the server bench, when it is missing.
fn ensure_wrk() -> Result<()> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        println!("xtask: wrk is installed");
        return Ok(());
    }
    println!("xtask: wrk is missing: installing it with apt-get");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let mut apt = if root {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    apt.args(["install", "-y", "wrk"]);
    run(apt, "installing wrk failed (apt-get install -y wrk)")
}

/// Runs `npm ci` in the OIDC peer's directory when its dependencies are missing or
/// older than its lock file. Without a lock file there is nothing reproducible to
/// install, so it only says so.
fn ensure_oidc_peer() -> Result<()> {
    let dir = root().join(OIDC_PEER_DIR);
    let lock = dir.join("package-lock.json");
    if !lock.is_file() {
        println!("xtask: no {OIDC_PEER_DIR}/package-lock.json: skipping npm ci");
        return Ok(());
    }
    let modules = dir.join("node_modules");
    // npm rewrites its hidden lock file on every install, which makes it a better
    // "installed at" stamp than the directory (whose mtime changes only on entries).
    let stamp = [modules.join(".package-lock.json"), modules.clone()]
        .into_iter()
        .find(|p| p.exists());
    let reason = match stamp {
        None => Some("node_modules is missing"),
        Some(stamp) => {
            let lock_time = modified(&lock)?;
            let stamp_time = modified(&stamp)?;
            (stamp_time < lock_time).then_some("node_modules is older than package-lock.json")
        }
    };
    let Some(reason) = reason else {
        println!("xtask: {OIDC_PEER_DIR}/node_modules is up to date");
        return Ok(());
    };
    println!("xtask: {reason}: running npm ci in {OIDC_PEER_DIR}");
    let mut npm = Command::new("npm");
    npm.arg("ci").current_dir(&dir);
    run(
        npm,
        "npm ci failed (is Node.js >= 20 with npm installed and on PATH?)",
    )
}

fn modified(path: &Path) -> Result<std::time::SystemTime> {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading the modification time of {}", path.display()))
}

/// How many bench targets the workspace members declare (explicit or auto-discovered).
fn bench_targets() -> Result<usize> {
    let mut cmd = cargo(["metadata", "--format-version", "1", "--no-deps"]);
    let output = cmd
        .output()
        .with_context(|| format!("running {}", describe(&cmd)))?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let json = String::from_utf8(output.stdout).context("cargo metadata printed non-UTF-8")?;
    // cargo metadata prints compact JSON and every target's `kind` is a list: matching
    // the text spares a JSON dependency for one question.
    Ok(json.matches(r#""kind":["bench"]"#).count())
}

/// The steps of one command, for the summary line.
#[derive(Debug, Default)]
struct Steps {
    done: Vec<(&'static str, Duration)>,
}

impl Steps {
    fn run(&mut self, name: &'static str, cmd: Command, failure: &str) -> Result<()> {
        self.step(name, || run(cmd, failure))
    }

    fn step(&mut self, name: &'static str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        println!("\nxtask: ==> {name}");
        let started = Instant::now();
        f().with_context(|| format!("step `{name}`"))?;
        self.done.push((name, started.elapsed()));
        Ok(())
    }

    fn summary(&self) -> String {
        self.done
            .iter()
            .map(|(name, took)| format!("{name} ({})", secs(*took)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn run(mut cmd: Command, failure: &str) -> Result<()> {
    println!("xtask: $ {}", describe(&cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", describe(&cmd)))?;
    if !status.success() {
        bail!("{failure}: `{}` exited with {status}", describe(&cmd));
    }
    Ok(())
}

fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    // `CARGO` is set by cargo for the processes it runs: use the same toolchain.
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(args).current_dir(root());
    cmd
}

/// The workspace root: xtask lives one level below it.
fn root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned();
    std::iter::once(program)
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
