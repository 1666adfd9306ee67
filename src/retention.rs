//! Checkpoint retention, so runs of hundreds of rounds fit on one disk. After `asl run` closes
//! a round it removes, with `apply.keep_checkpoints = K > 0`:
//!
//! - the checkpoints (`apply` model folders) of rounds that are neither among the last K nor a
//!   multiple of `apply.keep_every`;
//! - the checkpoints of every closed round's intermediate optimizer steps (a round's checkpoint
//!   is its last step's);
//! - every closed round's `gradients` shards (read once, by the step's `apply`).
//!
//! Row shards (`updates`, `steps`, trajectories, …) stay: they are small and the report reads
//! them. Each removal is recorded in the manifest's `pruned` list; the entries that wrote the
//! outputs stay `done`, so a pruned output never makes `asl run` rerun its stage, and a stage
//! that needs one as input fails with a line that names it (`pipeline::prepare`).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, IoContext, Result};
use crate::manifest::{Manifest, Pruned, Status, now_rfc3339, resolve_path};
use crate::params::Params;
use crate::shards::ShardKind;

/// Which round checkpoints to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    /// The last `keep_last` rounds' checkpoints are kept (at least 1).
    pub keep_last: u32,
    /// And every round that is a multiple of this (0: none).
    pub keep_every: u32,
}

impl Retention {
    /// From `apply`'s params: `None` when `keep_checkpoints` is 0 (keep everything).
    pub(crate) fn from_params(params: &Params) -> Result<Option<Retention>> {
        let int = |key: &str| -> Result<u32> {
            let v = params.get(key);
            v.and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    Error::param(
                        format!("apply.{key}"),
                        format!(
                            "expected a non-negative integer, got {}",
                            v.map_or("nothing".to_string(), |v| v.to_string())
                        ),
                    )
                })
        };
        let keep_last = int("keep_checkpoints")?;
        let keep_every = int("keep_every")?;
        Ok((keep_last > 0).then_some(Retention {
            keep_last,
            keep_every,
        }))
    }

    /// Whether round `round`'s checkpoint is kept once round `closed` is done.
    pub fn keeps(&self, round: u32, closed: u32) -> bool {
        round.saturating_add(self.keep_last) > closed
            || (self.keep_every > 0 && round.is_multiple_of(self.keep_every))
    }
}

/// Prunes what `retention` lets go once round `closed` is done, and returns what it removed.
/// `seen` is the caller's copy of the manifest: most calls (every round of a resumed run) find
/// nothing new in it, and then neither the lock is taken nor the manifest rewritten.
pub(crate) fn prune(
    run_dir: &Path,
    seen: &Manifest,
    closed: u32,
    retention: &Retention,
) -> Result<Vec<Pruned>> {
    if choose(seen, closed, retention).is_empty() {
        return Ok(Vec::new());
    }
    Manifest::update(run_dir, |m| -> Result<Vec<Pruned>> {
        let chosen = choose(m, closed, retention);
        for p in &chosen {
            let path = resolve_path(run_dir, &p.path);
            if path.is_dir() {
                std::fs::remove_dir_all(&path).at(&path)?;
            } else if path.exists() {
                std::fs::remove_file(&path).at(&path)?;
            }
            // Recorded one by one, so an error half-way leaves the manifest true to the disk.
            m.pruned.push(p.clone());
        }
        Ok(chosen)
    })?
}

/// What retention removes once round `closed` is done and is not removed yet.
fn choose(m: &Manifest, closed: u32, retention: &Retention) -> Vec<Pruned> {
    let already: BTreeSet<String> = m.pruned.iter().map(|p| p.path.clone()).collect();
    let mut chosen: Vec<Pruned> = Vec::new();
    let mut seen = BTreeSet::new();
    let gradients = format!("{}-", ShardKind::Gradients.name());
    for e in &m.entries {
        if e.status != Status::Done || e.round == 0 || e.round > closed {
            continue;
        }
        let drop_checkpoint =
            e.stage == "apply" && (!retention.keeps(e.round, closed) || e.step < e.steps);
        for o in &e.outputs {
            let is_checkpoint = o.files.is_some();
            let is_gradients = e.stage == "train"
                && Path::new(&o.path)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&gradients));
            if !((drop_checkpoint && is_checkpoint) || is_gradients)
                || already.contains(&o.path)
                || !seen.insert(o.path.clone())
            {
                continue;
            }
            chosen.push(Pruned {
                path: o.path.clone(),
                stage: e.stage.clone(),
                round: e.round,
                step: e.step,
                pruned_at: now_rfc3339(),
            });
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_rounds_and_every_nth() {
        let r = Retention {
            keep_last: 2,
            keep_every: 5,
        };
        let kept: Vec<u32> = (1..=12).filter(|&q| r.keeps(q, 12)).collect();
        assert_eq!(kept, vec![5, 10, 11, 12]);
        let r = Retention {
            keep_last: 1,
            keep_every: 0,
        };
        assert_eq!((1..=3).filter(|&q| r.keeps(q, 3)).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn params_of_zero_keep_everything_and_bad_values_name_the_key() {
        let mut p = Params::new();
        p.insert("keep_checkpoints".into(), 0.into());
        p.insert("keep_every".into(), 0.into());
        assert_eq!(Retention::from_params(&p).unwrap(), None);
        p.insert("keep_checkpoints".into(), 3.into());
        assert_eq!(
            Retention::from_params(&p).unwrap(),
            Some(Retention {
                keep_last: 3,
                keep_every: 0
            })
        );
        p.insert("keep_every".into(), (-1).into());
        let e = Retention::from_params(&p).unwrap_err().to_string();
        assert!(e.contains("apply.keep_every") && !e.contains('\n'), "{e}");
    }
}
