//! Tidy checks: rules about the code base itself, run as ordinary tests so that
//! `cargo test` enforces them (in the manner of rust-analyzer's `tidy.rs`).
//!
//! The crate graph is read from `cargo metadata`; everything else from the files.

// The helpers below run only inside tests: panicking is how they fail one.
#![allow(clippy::expect_used)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

const DOMAIN: &str = "latchkey-domain";
const PORTS: &str = "latchkey-ports";
const APP: &str = "latchkey-app";
const API: &str = "latchkey-api";
const ADAPTERS: [&str; 3] = ["latchkey-store", "latchkey-cipher", "latchkey-oauth"];

/// I/O, framework and mocking crates the pure domain must never reach.
const NOT_IN_DOMAIN: [&str; 7] = [
    "tokio",
    "sea-orm",
    "sqlx",
    "actix-web",
    "reqwest",
    "hyper",
    "mockall",
];
/// Infrastructure the use cases must not reach (they go through the ports).
const NOT_IN_APP: [&str; 5] = ["sea-orm", "sqlx", "actix", "reqwest", "hyper"];

// ---------------------------------------------------------------------------------------
// The dependency rule
// ---------------------------------------------------------------------------------------

#[test]
fn domain_depends_on_nothing_of_ours_and_no_io() {
    let m = metadata();
    let closure = m.normal_closure(DOMAIN);
    let ours: Vec<_> = closure.iter().filter(|n| is_ours(n)).collect();
    assert!(
        ours.is_empty(),
        "{DOMAIN} must not depend on other latchkey crates, but reaches {ours:?}"
    );
    let bad = matching(&closure, &NOT_IN_DOMAIN);
    assert!(
        bad.is_empty(),
        "{DOMAIN} must stay free of I/O and mocking crates, but reaches {bad:?}"
    );
}

#[test]
fn ports_depend_only_on_domain() {
    let m = metadata();
    let ours = ours_in(&m.normal_closure(PORTS));
    assert_eq!(
        ours,
        BTreeSet::from([DOMAIN.to_owned()]),
        "among our crates {PORTS} may depend only on {DOMAIN}"
    );
    // The resolved graph cannot tell: another member enabling `mocks` adds mockall
    // to it. The manifest can.
    for dep in m.direct_deps(PORTS) {
        if dep.name == "mockall" && dep.kind.is_none() {
            assert!(
                dep.optional,
                "{PORTS} may depend on mockall only as an optional dependency (the `mocks` feature)"
            );
        }
    }
}

#[test]
fn adapters_depend_on_ports_and_domain_only() {
    let m = metadata();
    for adapter in ADAPTERS {
        let direct: BTreeSet<String> = m
            .direct_deps(adapter)
            .into_iter()
            .filter(|d| d.kind.is_none() && is_ours(&d.name))
            .map(|d| d.name)
            .collect();
        for needed in [DOMAIN, PORTS] {
            assert!(
                direct.contains(needed),
                "adapter {adapter} should implement the ports: it does not depend on {needed}"
            );
        }
        let ours = ours_in(&m.normal_closure(adapter));
        let extra: Vec<_> = ours
            .iter()
            .filter(|n| *n != DOMAIN && *n != PORTS)
            .collect();
        assert!(
            extra.is_empty(),
            "adapter {adapter} must not depend on other adapters, the app or the api, but reaches {extra:?}"
        );
    }
}

#[test]
fn app_depends_on_domain_and_ports_only() {
    let m = metadata();
    let closure = m.normal_closure(APP);
    let ours = ours_in(&closure);
    let extra: Vec<_> = ours
        .iter()
        .filter(|n| *n != DOMAIN && *n != PORTS)
        .collect();
    assert!(
        extra.is_empty(),
        "{APP} may depend only on {DOMAIN} and {PORTS} among our crates, but reaches {extra:?}"
    );
    let bad = matching(&closure, &NOT_IN_APP);
    assert!(
        bad.is_empty(),
        "{APP} must reach infrastructure only through the ports, but depends on {bad:?}"
    );
}

#[test]
fn only_the_api_depends_on_adapters() {
    let m = metadata();
    for member in m.members() {
        if member == API {
            continue;
        }
        // Dev-dependencies are exempt: a test may pick whatever it exercises. What
        // ships is what the layering is about.
        let offending: Vec<_> = m
            .direct_deps(&member)
            .into_iter()
            .filter(|d| d.kind.as_deref() != Some("dev"))
            .filter(|d| ADAPTERS.contains(&d.name.as_str()))
            .map(|d| d.name)
            .collect();
        assert!(
            offending.is_empty(),
            "only {API} wires adapters in, but {member} depends on {offending:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Sources and manifests
// ---------------------------------------------------------------------------------------

#[test]
fn no_ignored_tests() {
    // Built at run time so that this file does not match itself.
    let attribute = ["#[", "ignore"].concat();
    let mut offenders = Vec::new();
    for dir in ["crates", "tests", "xtask"] {
        for file in rust_files(&root().join(dir)) {
            let Ok(text) = fs::read_to_string(&file) else {
                continue;
            };
            for (i, line) in text.lines().enumerate() {
                let mut rest = line;
                while let Some(at) = rest.find(&attribute) {
                    rest = &rest[at + attribute.len()..];
                    // The bare attribute or one with a reason; not a longer name.
                    if rest.starts_with([']', '=', ' ', '(']) {
                        offenders.push(format!("{}:{}", relative(&file), i + 1));
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "tests must run, not be skipped: fix or delete them (or gate them on an \
         environment variable with an explicit skip message):\n  {}",
        offenders.join("\n  ")
    );
}

/// Past this a file wants splitting by concern (issue 11); unit tests don't count.
const MAX_SOURCE_LINES: usize = 500;
/// A port with more methods than this mixes concerns: split it (issue 11).
const MAX_PORT_METHODS: usize = 8;

#[test]
fn no_source_file_is_over_500_lines() {
    let mut offenders = Vec::new();
    for file in rust_files(&root().join("crates")) {
        if !relative(&file).contains("/src/") {
            continue;
        }
        let text = fs::read_to_string(&file).expect("reading a source file");
        let lines = lines_before_unit_tests(&text);
        if lines > MAX_SOURCE_LINES {
            offenders.push(format!("{} ({lines} lines)", relative(&file)));
        }
    }
    assert!(
        offenders.is_empty(),
        "split these by concern (the count stops at the first `#[cfg(test)]`):\n  {}",
        offenders.join("\n  ")
    );
}

/// Lines up to the first top-level `#[cfg(test)]`, where the unit tests begin.
fn lines_before_unit_tests(text: &str) -> usize {
    text.lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .count()
}

#[test]
fn lines_before_unit_tests_stops_at_the_test_module() {
    assert_eq!(
        lines_before_unit_tests("a\nb\n#[cfg(test)]\nmod tests {}\n"),
        2
    );
    assert_eq!(lines_before_unit_tests("a\n    #[cfg(test)]\nb\n"), 3);
    assert_eq!(lines_before_unit_tests(""), 0);
}

#[test]
fn no_port_trait_has_more_than_8_methods() {
    let mut offenders = Vec::new();
    let mut traits = 0;
    for file in rust_files(&root().join("crates/ports/src")) {
        let text = fs::read_to_string(&file).expect("reading a port file");
        for (name, methods) in trait_method_counts(&text) {
            traits += 1;
            if methods > MAX_PORT_METHODS {
                offenders.push(format!("{}: {name} has {methods}", relative(&file)));
            }
        }
    }
    // The check must see the ports it guards.
    assert!(
        traits >= 5,
        "found only {traits} traits under crates/ports/src"
    );
    assert!(
        offenders.is_empty(),
        "split these ports into cohesive traits:\n  {}",
        offenders.join("\n  ")
    );
}

/// Each `trait` declared in `text` with the number of `fn`s in its body.
fn trait_method_counts(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = find_trait_keyword(rest) {
        let after = &rest[at + "trait ".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let Some(open) = after.find('{') else { break };
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let body = &after[open..end];
        let methods = body
            .lines()
            .map(str::trim_start)
            .filter(|l| !l.starts_with("//"))
            .filter(|l| l.starts_with("fn ") || l.starts_with("async fn "))
            .count();
        out.push((name, methods));
        rest = &after[end..];
    }
    out
}

/// Where the next `trait` item starts (at a line start, after `pub` or `pub(crate)`).
fn find_trait_keyword(text: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        for prefix in ["pub trait ", "pub(crate) trait ", "trait "] {
            if trimmed.starts_with(prefix) {
                return Some(offset + indent + prefix.len() - "trait ".len());
            }
        }
        offset += line.len();
    }
    None
}

#[test]
fn trait_method_counts_reads_bodies() {
    let text = "pub trait A: Send {\n    fn a(&self);\n    // fn not_me();\n    async fn b(&self) -> Result<(), E>;\n}\nimpl X { fn c() {} }\ntrait B {\n    fn d(&self) {\n        let f = || {};\n    }\n}\n";
    assert_eq!(
        trait_method_counts(text),
        vec![("A".to_string(), 2), ("B".to_string(), 1)]
    );
}

#[test]
fn every_member_inherits_workspace_lints() {
    let m = metadata();
    let mut missing = Vec::new();
    for manifest in m.member_manifests() {
        let text = fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("reading {}: {e}", manifest.display()));
        if !inherits_lints(&text) {
            missing.push(relative(&manifest));
        }
    }
    assert!(
        missing.is_empty(),
        "add `[lints]\\nworkspace = true` to: {missing:?}"
    );
}

#[test]
fn architecture_doc_mentions_every_crate() {
    let doc_path = root().join("docs/ARCHITECTURE.md");
    let doc = fs::read_to_string(&doc_path)
        .unwrap_or_else(|e| panic!("docs/ARCHITECTURE.md must exist ({e})"));
    let mut crates: Vec<String> = fs::read_dir(root().join("crates"))
        .expect("listing crates/")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    crates.sort();
    let missing: Vec<_> = crates
        .iter()
        .filter(|dir| {
            // Either the directory or the package name will do.
            !doc.contains(&format!("crates/{dir}")) && !doc.contains(&format!("latchkey-{dir}"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md does not describe crates {missing:?} (mention `crates/<dir>` or the package name)"
    );
}

/// Whether a manifest has `[lints]` with `workspace = true` (or `lints.workspace = true`).
fn inherits_lints(manifest: &str) -> bool {
    let mut in_lints = false;
    for line in manifest.lines() {
        let line: String = line
            .split('#')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if line.starts_with('[') {
            in_lints = line == "[lints]";
        } else if (in_lints && line == "workspace=true") || line == "lints.workspace=true" {
            return true;
        }
    }
    false
}

#[test]
fn inherits_lints_parses() {
    assert!(inherits_lints(
        "[package]\nname = \"x\"\n\n[lints]\nworkspace = true\n"
    ));
    assert!(inherits_lints("[package]\nlints.workspace = true\n"));
    assert!(!inherits_lints("[package]\nworkspace = true\n[lints]\n"));
    assert!(!inherits_lints(
        "[lints]\n[dependencies]\nworkspace = true\n"
    ));
    assert!(!inherits_lints("[lints]\n# workspace = true\n"));
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn root() -> PathBuf {
    // This package lives in `tests/`, one level below the workspace root.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_path_buf()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn is_ours(name: &str) -> bool {
    name.starts_with("latchkey-")
}

fn ours_in(names: &BTreeSet<String>) -> BTreeSet<String> {
    names.iter().filter(|n| is_ours(n)).cloned().collect()
}

/// Packages named `x` or `x-…` for any `x` in `families` (`sqlx` also finds
/// `sqlx-core`, `hyper` finds `hyper-util`).
fn matching(names: &BTreeSet<String>, families: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            families
                .iter()
                .any(|f| *n == f || n.starts_with(&format!("{f}-")))
        })
        .cloned()
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                // Build output and npm packages are not ours.
                if name != "target"
                    && name != "node_modules"
                    && !name.to_string_lossy().starts_with('.')
                {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A dependency as declared in a manifest.
#[derive(Debug)]
struct Dep {
    name: String,
    /// `None` for normal dependencies, else `dev` or `build`.
    kind: Option<String>,
    optional: bool,
}

/// `cargo metadata` with the dependency graph resolved.
#[derive(Debug)]
struct Metadata {
    json: Value,
    names: HashMap<String, String>,
}

fn metadata() -> &'static Metadata {
    static METADATA: OnceLock<Metadata> = OnceLock::new();
    METADATA.get_or_init(|| {
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(root().join("Cargo.toml"))
            .output()
            .expect("running cargo metadata");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
        let names = json["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| (str_of(&p["id"]), str_of(&p["name"])))
            .collect();
        Metadata { json, names }
    })
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

impl Metadata {
    fn member_ids(&self) -> HashSet<String> {
        self.json["workspace_members"]
            .as_array()
            .expect("workspace_members")
            .iter()
            .map(str_of)
            .collect()
    }

    fn member_packages(&self) -> Vec<&Value> {
        let ids = self.member_ids();
        self.json["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .filter(|p| ids.contains(&str_of(&p["id"])))
            .collect()
    }

    fn members(&self) -> Vec<String> {
        self.member_packages()
            .into_iter()
            .map(|p| str_of(&p["name"]))
            .collect()
    }

    fn member_manifests(&self) -> Vec<PathBuf> {
        self.member_packages()
            .into_iter()
            .map(|p| PathBuf::from(str_of(&p["manifest_path"])))
            .collect()
    }

    fn member_id(&self, name: &str) -> String {
        self.member_packages()
            .into_iter()
            .find(|p| p["name"] == name)
            .map(|p| str_of(&p["id"]))
            .unwrap_or_else(|| panic!("{name} is not a workspace member"))
    }

    fn direct_deps(&self, member: &str) -> Vec<Dep> {
        let id = self.member_id(member);
        let package = self
            .member_packages()
            .into_iter()
            .find(|p| str_of(&p["id"]) == id)
            .expect("member package");
        package["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .map(|d| Dep {
                name: str_of(&d["name"]),
                kind: d["kind"].as_str().map(str::to_owned),
                optional: d["optional"].as_bool().unwrap_or(false),
            })
            .collect()
    }

    /// Names of every package reachable from `member` through normal dependencies in
    /// the resolved graph, `member` excluded.
    fn normal_closure(&self, member: &str) -> BTreeSet<String> {
        let nodes: HashMap<String, &Value> = self.json["resolve"]["nodes"]
            .as_array()
            .expect("resolve.nodes (metadata must be read with dependencies)")
            .iter()
            .map(|n| (str_of(&n["id"]), n))
            .collect();
        let start = self.member_id(member);
        let mut seen = HashSet::from([start.clone()]);
        let mut stack = vec![start.clone()];
        while let Some(id) = stack.pop() {
            let Some(node) = nodes.get(&id) else { continue };
            for dep in node["deps"].as_array().into_iter().flatten() {
                let normal = dep["dep_kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k["kind"].is_null());
                let pkg = str_of(&dep["pkg"]);
                if normal && seen.insert(pkg.clone()) {
                    stack.push(pkg);
                }
            }
        }
        seen.remove(&start);
        seen.iter()
            .map(|id| self.names.get(id).cloned().unwrap_or_else(|| id.clone()))
            .collect()
    }
}
