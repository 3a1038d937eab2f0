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
  bench   Build the release `latchkey` binary and run the workspace's bench targets
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
        Some("bench") => bench(),
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

fn bench() -> Result<()> {
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
    let mut run = cargo(["bench", "--workspace", "--benches"]);
    // Benchmarks that drive the server as a process find it here.
    run.env("LATCHKEY_BIN", &binary);
    steps.run("bench", run, "benchmarks failed")?;
    println!("\nxtask bench: OK: {}", steps.summary());
    Ok(())
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
