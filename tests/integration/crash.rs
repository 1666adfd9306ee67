//! `kill -9` at any moment of `asl run`, then `asl run` again: the run finishes with the same
//! shard bytes as an uninterrupted one, and no temporary file is ever taken for an output.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// After a kill: the manifest is valid JSON, and every file under a final shard name is a
/// complete Parquet file.
fn check_nothing_half_written(run_dir: &Path) {
    asl::manifest::Manifest::load(run_dir).expect("manifest stays valid after kill -9");
    for rel in shard_hashes(run_dir).keys() {
        asl::shards::count_rows(&run_dir.join(rel))
            .unwrap_or_else(|e| panic!("half-written shard under a final name: {e}"));
    }
}

#[test]
fn kill_9_at_any_moment_then_rerun_gives_the_same_bytes() {
    let fx = Fixture::new(150_000);
    let reference = fx.run_dir("reference");
    let started = Instant::now();
    assert_ok(&fx.run(&reference, &[]));
    let full = started.elapsed();
    eprintln!("uninterrupted run: {full:?}");
    let expected = shard_hashes(&reference);
    assert_eq!(expected.len(), 2);

    for (i, fraction) in [0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99].iter().enumerate() {
        let rd = fx.run_dir(&format!("killed-{i}"));
        let mut child = Command::new(asl_bin())
            .args(["run", fx.pipeline.to_str().unwrap(), "--run-dir"])
            .arg(&rd)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(*fraction).max(Duration::from_millis(1)));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        if rd.exists() {
            check_nothing_half_written(&rd);
        }
        let out = fx.run(&rd, &[]);
        assert_ok(&out);
        assert_eq!(
            shard_hashes(&rd),
            expected,
            "after a kill at {fraction} of the run"
        );
        let tmp_left = std::fs::read_dir(rd.join("round-000/corpus"))
            .unwrap()
            .filter(|e| asl::fsutil::is_tmp_name(&e.as_ref().unwrap().path()))
            .count();
        assert_eq!(tmp_left, 0, "stale temporary files survive a rerun");
    }
}

/// Every checkpoint folder under a final name loads: a half-written checkpoint is never taken
/// for one (they are staged under a temporary name and renamed when complete).
fn check_checkpoints_whole(run_dir: &Path) {
    let mut stack = vec![run_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if !p.is_dir() || asl::fsutil::is_tmp_name(&p) {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "model") {
                asl::model::llama::Model::load(&p, &candle_core::Device::Cpu).unwrap_or_else(|e| {
                    panic!("a checkpoint under a final name does not load: {e}")
                });
            } else {
                stack.push(p);
            }
        }
    }
}

/// The stage part the kill interrupted (the newest entry still `running`), as `rR stage`.
fn running_at_kill(run_dir: &Path) -> String {
    asl::manifest::Manifest::load(run_dir)
        .ok()
        .and_then(|m| {
            m.entries
                .iter()
                .rev()
                .find(|e| e.status == asl::manifest::Status::Running)
                .map(|e| format!("r{} {}", e.round, e.stage))
        })
        .unwrap_or_else(|| "between stages".into())
}

/// Seeded xorshift: the kill points of a failing run can be replayed with ASL_KILL_SEED.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn thirty_kills_anywhere_in_two_smoke_rounds_leave_the_same_bytes() {
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
    assert_ok(&asl_with_env(
        &["run", smoke, "--run-dir", reference.to_str().unwrap()],
        &env,
    ));
    let expected = everything_written(&reference);

    let seed: u64 = std::env::var("ASL_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_202);
    eprintln!("kill points from ASL_KILL_SEED={seed}");
    let mut state = seed.max(1);
    let rd = dir.path().join("killed");
    let spawn = || {
        Command::new(asl_bin())
            .args(["run", smoke, "--run-dir", rd.to_str().unwrap()])
            .envs(env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // First the checkpoint writers, mid-write; then 30 kills at seeded random moments, each
    // run resuming what the last one left.
    let mut kills = Vec::new();
    for stage in ["warmup", "apply"] {
        let mut child = spawn();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(300) {
            let running = asl::manifest::Manifest::load(&rd).is_ok_and(|m| {
                m.entries
                    .iter()
                    .any(|e| e.stage == stage && e.status == asl::manifest::Status::Running)
            });
            if running || child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(next(&mut state) % 40));
        child.kill().unwrap();
        child.wait().unwrap();
        kills.push(stage.to_string());
        check_nothing_half_written(&rd);
        check_checkpoints_whole(&rd);
    }
    // Most kills wait until the resumed run finishes one more stage part, so the 30 points
    // spread over the whole run instead of piling up where a restart spends its first second.
    let done = |rd: &Path| {
        asl::manifest::Manifest::load(rd).map_or(0, |m| {
            m.entries
                .iter()
                .filter(|e| e.status == asl::manifest::Status::Done)
                .count()
        })
    };
    for _ in 0..30 {
        let before = done(&rd);
        let wait_for_progress = !next(&mut state).is_multiple_of(3);
        let delay = Duration::from_millis(next(&mut state) % 400);
        let mut child = spawn();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none()
            && started.elapsed() < Duration::from_secs(300)
            && wait_for_progress
            && done(&rd) == before
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_some() {
            break; // the run finished before this kill
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills.push(format!("{delay:?} in {}", running_at_kill(&rd)));
        check_nothing_half_written(&rd);
        check_checkpoints_whole(&rd);
    }
    eprintln!("{} kills: {kills:?}", kills.len());
    assert!(
        kills.len() >= 10,
        "the run ended before most kills: {kills:?}"
    );
    assert!(
        kills.iter().any(|k| k.contains("r2 ")),
        "no kill reached round 2: {kills:?}"
    );
    let last = asl_with_env(&["run", smoke, "--run-dir", rd.to_str().unwrap()], &env);
    assert_ok(&last);
    assert_eq!(
        everything_written(&rd),
        expected,
        "kills at {kills:?} (ASL_KILL_SEED={seed})"
    );
}
