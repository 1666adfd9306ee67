//! Imports run one way: the lower layers (shards, search, model, rl and the small utility
//! modules) never name a module above them, so `search/` and `model/` know nothing of stages,
//! the manifest or the runner. Read from the `use` paths of each file's non-test code.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::files_with_extension;

/// What each lower module may name as `crate::X`, beside itself.
const LAYERS: [(&str, &[&str]); 10] = [
    ("error", &[]),
    ("seed", &[]),
    ("progress", &[]),
    ("memory", &["process"]),
    ("process", &["memory"]),
    ("fsutil", &["error"]),
    ("shards", &["error", "fsutil"]),
    ("search", &["error", "fsutil", "shards", "seed", "progress"]),
    (
        "model",
        &["error", "fsutil", "memory", "process", "progress", "seed"],
    ),
    ("rl", &["error", "model"]),
];

/// The module's source files: `src/NAME.rs` or everything under `src/NAME/`.
fn files(src: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let file = src.join(format!("{name}.rs"));
    if file.exists() {
        return vec![file];
    }
    files_with_extension(&src.join(name), "rs")
}

/// The `crate::X` names in `text` before its test module, outside comments.
fn named_modules(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut names = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn lower_layers_never_import_upward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (module, allowed) in LAYERS {
        let paths = files(&src, module);
        assert!(!paths.is_empty(), "src/{module} not found");
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap();
            for name in named_modules(&text) {
                if name != module && !allowed.contains(&name.as_str()) {
                    bad.push(format!("{} names crate::{name}", path.display()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
}

#[test]
fn the_scan_sees_an_upward_import() {
    let text = "use crate::error::Result;\nuse crate::stages::assets_dir; // why\n\
                // crate::manifest in a comment\n#[cfg(test)]\nmod tests { use crate::pipeline; }";
    let names: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(names, ["error", "stages"]);
}
