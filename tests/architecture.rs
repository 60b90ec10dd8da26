//! The one-way module dependencies of docs/ARCHITECTURE.md, checked on the source: a module
//! that starts to use one it may not fails here, not in a reviewer's eye.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::as_conversions,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "a test panics on what it did not expect, and may cast what it made itself"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each module and the crate modules its code may name (besides itself and the leaves that
/// every module may use: `limits`, the named limits, and `num`, the audited conversions).
/// `gateway`, `demo` and `main.rs` wire everything and are not listed. A module missing here
/// fails `every_module_has_a_rule`, so a new module states its place when it is added.
const RULES: &[(&str, &[&str])] = &[
    ("journal", &[]),
    ("spool", &["journal", "telemetry"]),
    ("sftp", &["spool", "names", "telemetry"]),
    // The drain reads its own configuration types and reports into status's plain data
    // (`BudgetStatus`, `ShapingStatus`); a unit test of aws.rs starts the embedded S3 server.
    // It never names sftp, console or gateway.
    (
        "drain",
        &["config", "s3server", "spool", "status", "telemetry"],
    ),
    // Status renders snapshots: it names the spool's and the defender's data types, and the
    // journal only in `offline.rs` (a read-only replay while the daemon is down).
    (
        "status",
        &[
            "config",
            "events",
            "journal",
            "names",
            "sftp",
            "spool",
            "telemetry",
        ],
    ),
    // The console is a client of the control socket, like `sftpgw status`.
    (
        "console",
        &["config", "https", "spool", "status", "telemetry"],
    ),
    ("s3server", &["config"]),
    ("config", &["sftp", "spool", "webhook"]),
    ("webhook", &["events", "https"]),
    ("events", &["spool"]),
    ("report", &["spool"]),
    ("health", &["status"]),
    ("telemetry", &[]),
    ("logfmt", &["names"]),
    ("https", &[]),
    ("names", &[]),
    ("limits", &[]),
    ("num", &[]),
];

/// Modules that wire the others together and may name any of them.
const WIRING: &[&str] = &["gateway", "demo", "fuzz"];

/// Leaves every module may name.
const LEAVES: &[&str] = &["limits", "num"];

fn sources(module: &str) -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = vec![src.join(format!("{module}.rs"))];
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.retain(|p| p.exists());
    out
}

/// The crate modules named in `code` (`crate::x`, `crate::{x, y}`), comments left out.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or_default();
                names.extend(inner.split(',').filter_map(|item| {
                    let name = item.trim().split("::").next()?.trim();
                    (!name.is_empty()).then(|| name.to_owned())
                }));
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn modules_name_only_the_modules_they_may_depend_on() {
    let mut broken = Vec::new();
    for (module, allowed) in RULES {
        let files = sources(module);
        assert!(!files.is_empty(), "no sources for {module}");
        for file in files {
            let code = std::fs::read_to_string(&file).expect("read source");
            for name in named_modules(&code) {
                if name != *module
                    && !allowed.contains(&name.as_str())
                    && !LEAVES.contains(&name.as_str())
                {
                    broken.push(format!("{}: names crate::{name}", file.display()));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "dependencies against docs/ARCHITECTURE.md:\n{}",
        broken.join("\n")
    );
}

#[test]
fn every_module_has_a_rule() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("read lib.rs");
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("pub mod")
                .or(l.trim().strip_prefix("mod"))
        })
        .map(|rest| rest.trim().trim_end_matches(';'))
        .collect();
    assert!(modules.len() > 10, "lib.rs lists its modules: {modules:?}");
    let missing: Vec<&&str> = modules
        .iter()
        .filter(|m| !WIRING.contains(m) && !RULES.iter().any(|(name, _)| name == *m))
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a rule in RULES: {missing:?}"
    );
}

#[test]
fn the_checker_sees_plain_and_grouped_paths_but_not_comments() {
    let code = "use crate::spool::VPath;\nuse crate::{config, limits::X};\n// crate::drain\nlet x = crate::status::f(); // crate::gateway";
    let names: Vec<String> = named_modules(code).into_iter().collect();
    assert_eq!(names, ["config", "limits", "spool", "status"]);
}
