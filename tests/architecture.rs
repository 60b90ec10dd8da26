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

/// Each checked module and the crate modules its code may name (besides itself).
const RULES: &[(&str, &[&str])] = &[
    ("journal", &["limits"]),
    ("spool", &["journal", "limits", "telemetry"]),
    ("sftp", &["spool", "names", "limits", "telemetry"]),
];

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
                if name != *module && !allowed.contains(&name.as_str()) {
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
fn the_checker_sees_plain_and_grouped_paths_but_not_comments() {
    let code = "use crate::spool::VPath;\nuse crate::{config, limits::X};\n// crate::drain\nlet x = crate::status::f(); // crate::gateway";
    let names: Vec<String> = named_modules(code).into_iter().collect();
    assert_eq!(names, ["config", "limits", "spool", "status"]);
}
