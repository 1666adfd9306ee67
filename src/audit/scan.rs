//! Which shards an audit reads. A round's shards are found on disk (`round-NNN/<stage>/`), and
//! the manifest says which of them a finished stage owns, so a stage that is still running, or
//! that failed half-way, is named in a note and what it left is still audited. A shard whose
//! footer or schema is wrong is named in a note and skipped; it never stops the audit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::manifest::{Manifest, resolve_path};
use crate::shards::ShardKind;

/// The kinds an audit looks at.
pub(crate) const AUDITED: [ShardKind; 5] = [
    ShardKind::Tasks,
    ShardKind::Trajectories,
    ShardKind::Judgments,
    ShardKind::Rewards,
    ShardKind::Eval,
];

/// The readable shards of one round, by kind, and what was wrong with the rest.
#[derive(Debug, Default, Clone)]
pub(crate) struct RoundFiles {
    pub round: u32,
    pub shards: BTreeMap<ShardKind, Vec<PathBuf>>,
}

impl RoundFiles {
    pub fn of(&self, kind: ShardKind) -> &[PathBuf] {
        self.shards.get(&kind).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Every round directory in the run that holds at least one audited shard, and the notes
/// (one line each) about what could not be read.
pub(crate) fn discover(run_dir: &Path, notes: &mut Vec<String>) -> Vec<RoundFiles> {
    // A run dir without a manifest (shards copied or made by hand) has nothing to compare with.
    let manifest = match Manifest::load(run_dir) {
        Ok(m) if m.entries.is_empty() => None,
        Ok(m) => Some(m),
        Err(e) => {
            notes.push(format!("{e}; auditing the shards on disk"));
            None
        }
    };
    let mut rounds = Vec::new();
    for (round, dir) in round_dirs(run_dir) {
        let mut files = RoundFiles {
            round,
            ..Default::default()
        };
        for stage_dir in sorted_dirs(&dir) {
            let stage = stage_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let on_disk = shard_files(&stage_dir);
            if on_disk.is_empty() {
                continue;
            }
            let owned = manifest
                .as_ref()
                .and_then(|m| m.done_outputs(&stage, round))
                .filter(|(r, _)| *r == round)
                .map(|(_, outs)| {
                    outs.iter()
                        .map(|o| resolve_path(run_dir, &o.path))
                        .collect::<Vec<_>>()
                });
            let chosen = match owned {
                Some(owned) => on_disk
                    .into_iter()
                    .filter(|p| owned.contains(p))
                    .collect::<Vec<_>>(),
                None => {
                    if manifest.is_some() && stage_has_audited(&on_disk) {
                        notes.push(format!(
                            "{}: stage `{stage}` of round {round} is not finished (no done entry in \
                             the manifest); auditing the shards it left",
                            stage_dir.display()
                        ));
                    }
                    on_disk
                }
            };
            for path in chosen {
                let Some(kind) = kind_of(&path) else { continue };
                // `selfcheck` rewrites `generate`'s tasks with their validity after the check;
                // the audit counts the tasks once, as written (the check's outcome is in the
                // reward labels and its judgments are read like the judge's).
                if kind == ShardKind::Tasks && stage == "selfcheck" {
                    continue;
                }
                match readable(&path, kind) {
                    Ok(()) => files.shards.entry(kind).or_default().push(path),
                    Err(message) => notes.push(format!("{}: {message}; skipped", path.display())),
                }
            }
        }
        if !files.shards.is_empty() {
            rounds.push(files);
        }
    }
    rounds
}

fn stage_has_audited(paths: &[PathBuf]) -> bool {
    paths.iter().any(|p| kind_of(p).is_some())
}

/// `round-NNN` directories in round order.
pub fn round_dirs(run_dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut out: Vec<(u32, PathBuf)> = sorted_dirs(run_dir)
        .into_iter()
        .filter_map(|d| {
            let name = d.file_name()?.to_string_lossy().into_owned();
            let n = name.strip_prefix("round-")?.parse().ok()?;
            Some((n, d))
        })
        .collect();
    out.sort();
    out
}

fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

/// Completed shard files in a stage directory; temporary names (a write in progress or one a
/// crash left) start with a dot and are never read.
fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension().is_some_and(|e| e == "parquet")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    out.sort();
    out
}

/// The audited kind a shard's name says it holds.
pub fn kind_of(path: &Path) -> Option<ShardKind> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    AUDITED
        .into_iter()
        .find(|k| name.starts_with(&format!("{}-", k.name())))
}

/// Checks the footer and the schema without reading data.
pub fn readable(path: &Path, kind: ShardKind) -> Result<(), String> {
    crate::shards::check_footer(path, kind).map_err(|e| {
        let line = e.to_string();
        let prefix = format!("{}: ", path.display());
        line.strip_prefix(&prefix).unwrap_or(&line).to_string()
    })
}
