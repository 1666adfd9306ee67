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
