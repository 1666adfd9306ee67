//! A full disk (issue 20): a stage that cannot write its output fails with one line and exit
//! code 1, leaves no file under a final name that is not the complete file, leaves the manifest
//! readable with every finished stage's entry as it was, and the run finishes with the same bytes
//! once there is room again.
//!
//! The limit is `RLIMIT_FSIZE` (`ulimit -f` in a shell that ignores SIGXFSZ, inherited by
//! `asl`): a write past it fails with EFBIG where a full filesystem fails with ENOSPC, through
//! the same error paths. Mounting a small filesystem needs privileges CI does not have.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

/// `asl run` of `pipeline` with files limited to `limit` bytes (rounded down to KiB).
fn run_limited(pipeline: &str, rd: &Path, env: &[(&str, &str)], limit: Option<u64>) -> Output {
    let script = match limit {
        Some(bytes) => format!(
            "trap '' XFSZ; ulimit -f {}; exec \"$0\" \"$@\"",
            bytes / 1024
        ),
        None => "exec \"$0\" \"$@\"".to_string(),
    };
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(asl_bin())
        .args(["run", pipeline, "--run-dir", rd.to_str().unwrap()])
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Size of every regular file under `dir`, by relative path.
fn sizes(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, p.metadata().unwrap().len());
            }
        }
    }
    out
}

#[test]
fn a_full_disk_fails_one_stage_cleanly_and_the_rerun_finishes_with_the_same_bytes() {
    let Some(assets) = shipped_assets() else {
        return;
    };
    let smoke = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/smoke.toml");
    let env = [
        ("ASL_ASSETS", assets.to_str().unwrap()),
        ("RAYON_NUM_THREADS", "1"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    assert_ok(&run_limited(smoke, &reference, &env, None));
    let expected = everything_written(&reference);
    let written = sizes(&reference);
    // Limits above the largest file asl rewrites while running (the manifest, its hash cache)
    // and below some outputs: each fails the first stage that writes a bigger file.
    let bookkeeping = written
        .iter()
        .filter(|(rel, _)| !rel.contains('/'))
        .map(|(_, n)| *n)
        .max()
        .unwrap();
    let mut big: Vec<u64> = written
        .values()
        .copied()
        .filter(|n| *n > bookkeeping + 8192)
        .collect();
    big.sort_unstable();
    big.dedup_by_key(|n| *n / 1024);
    assert!(
        big.len() >= 3,
        "smoke writes files of only these sizes: {written:?}"
    );
    let limits = [
        big[0] - 1024,
        big[big.len() / 2] - 1024,
        big[big.len() - 1] - 1024,
    ];

    let rd = dir.path().join("full");
    let mut failed_stages = Vec::new();
    for limit in limits {
        let before = asl::manifest::Manifest::load(&rd).ok();
        let out = run_limited(smoke, &rd, &env, Some(limit));
        if out.status.success() {
            continue;
        }
        assert_one_line_error(&out, &[]);
        let err = stderr(&out);
        assert!(
            err.contains("File too large") || err.contains("too large"),
            "the line says why: {err}"
        );
        // Nothing under a final name differs from the uninterrupted run's bytes.
        for (rel, hash) in everything_written(&rd) {
            assert_eq!(
                Some(&hash),
                expected.get(&rel),
                "{rel} is under a final name but is not the complete file (limit {limit})"
            );
        }
        // The manifest reads, and every entry that was done before is still there, unchanged.
        let after =
            asl::manifest::Manifest::load(&rd).expect("manifest readable after a full disk");
        if let Some(before) = before {
            for e in before
                .entries
                .iter()
                .filter(|e| e.status == asl::manifest::Status::Done)
            {
                assert!(
                    after.entries.iter().any(|a| a.stage == e.stage
                        && a.round == e.round
                        && a.step == e.step
                        && a.shard == e.shard
                        && a.outputs == e.outputs
                        && a.status == e.status),
                    "entry r{} {} changed after a full disk",
                    e.round,
                    e.stage
                );
            }
        }
        let failed: Vec<String> = after
            .entries
            .iter()
            .filter(|e| e.status == asl::manifest::Status::Failed)
            .map(|e| format!("r{} {}", e.round, e.stage))
            .collect();
        assert!(
            !failed.is_empty(),
            "the stage that hit the limit is recorded as failed: {err}"
        );
        failed_stages.push((
            limit,
            failed.last().unwrap().clone(),
            err.trim().to_string(),
        ));
    }
    eprintln!("full-disk failures: {failed_stages:#?}");
    assert!(
        failed_stages.len() >= 2,
        "the limits failed fewer than two stages: {failed_stages:?}"
    );
    // Room again: the run finishes where it stopped, with the same bytes.
    assert_ok(&run_limited(smoke, &rd, &env, None));
    assert_eq!(everything_written(&rd), expected);
}
