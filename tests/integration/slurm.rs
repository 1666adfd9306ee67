//! `asl submit` on a real Slurm: the one-node cluster `scripts/slurm-local.sh` starts (and
//! `scripts/test.sh` starts for the suite, exporting `SLURM_CONF` and `ASL_REQUIRE_SLURM`). The
//! `smoke` pipeline is submitted for two rounds with `rollout`, `judge` and `train` split into
//! two parts; every shard and checkpoint file must equal those of the same job scripts run one
//! after another by hand (`asl submit --dry-run` writes them). A part that fails is named by
//! `asl status` with its Slurm job, and submitting again runs only what is not done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use asl::manifest::{Manifest, ShardSpec, Status};

use crate::common::*;

const SMOKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/smoke.toml");
const PARTS: &str = "rollout=2,judge=2,train=2";

/// The cluster's config, or None (with a note) when no cluster was started. Where
/// ASL_REQUIRE_SLURM is set (scripts/test.sh, hence CI), a missing cluster fails the test.
fn slurm_conf() -> Option<PathBuf> {
    let conf = std::env::var_os("SLURM_CONF").map(PathBuf::from);
    let up = conf.as_ref().is_some_and(|c| c.exists())
        && Command::new("sinfo")
            .arg("-h")
            .output()
            .is_ok_and(|o| o.status.success());
    if !up {
        assert!(
            std::env::var_os("ASL_REQUIRE_SLURM").is_none(),
            "ASL_REQUIRE_SLURM is set but no Slurm answers (SLURM_CONF={conf:?}); scripts/slurm-local.sh start"
        );
        eprintln!(
            "skipped: no Slurm cluster (scripts/slurm-local.sh start, then export SLURM_CONF)"
        );
        return None;
    }
    conf
}

fn env(assets: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("ASL_ASSETS", assets.to_string_lossy().into_owned()),
        ("RAYON_NUM_THREADS", "1".into()),
    ]
}

fn submit(assets: &Path, run_dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(asl_bin());
    cmd.args(["submit", SMOKE, "--run-dir"])
        .arg(run_dir)
        .args(["--rounds", "2", "--parts", PARTS])
        .args(extra);
    for (k, v) in env(assets) {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The shards and checkpoint files of the same parts run by hand: `--dry-run` writes the job
/// scripts and `submit.sh`; each script runs with `bash`, array tasks one by one, in order.
fn reference(assets: &Path) -> &'static BTreeMap<String, String> {
    static REFERENCE: OnceLock<(tempfile::TempDir, BTreeMap<String, String>)> = OnceLock::new();
    &REFERENCE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let rd = dir.path().join("by-hand");
            let out = submit(assets, &rd, &["--dry-run"]);
            assert_ok(&out);
            let lines = std::fs::read_to_string(rd.join("slurm/submit.sh")).unwrap();
            let mut jobs = 0;
            for line in lines.lines().filter(|l| l.contains("=$(sbatch ")) {
                let words: Vec<&str> = line.trim_end_matches(')').split_whitespace().collect();
                let script = words.last().unwrap().trim_matches('\'');
                let tasks: Vec<String> = match words.iter().find_map(|w| w.strip_prefix("--array="))
                {
                    Some(spec) => {
                        let (a, b) = spec.split_once('-').unwrap();
                        let (a, b): (u32, u32) = (a.parse().unwrap(), b.parse().unwrap());
                        (a..=b).map(|t| t.to_string()).collect()
                    }
                    None => vec![String::new()],
                };
                for task in tasks {
                    let mut cmd = Command::new("bash");
                    cmd.arg(script).env("SLURM_ARRAY_TASK_ID", &task);
                    for (k, v) in env(assets) {
                        cmd.env(k, v);
                    }
                    let out = cmd.output().unwrap();
                    assert_ok(&out);
                    jobs += 1;
                }
            }
            // 5 setup stages; per round generate, selfcheck, 2 rollout, 2 judge, reward,
            // 2 × (2 train + apply), eval.
            assert_eq!(jobs, 5 + 2 * 14, "{lines}");
            let written = everything_written(&rd);
            (dir, written)
        })
        .1
}

/// Waits until Slurm has none of the run's jobs queued or running.
fn wait_for_jobs(run_dir: &Path, limit: Duration) {
    let submitted = asl::slurm::Submissions::load(run_dir).unwrap();
    let ids: Vec<String> = submitted.jobs.iter().map(|j| j.job_id.clone()).collect();
    let started = Instant::now();
    loop {
        let live = asl::slurm::live_jobs().unwrap();
        let mine = live
            .iter()
            .filter(|l| {
                ids.iter()
                    .any(|id| *l == id || l.starts_with(&format!("{id}_")))
            })
            .count();
        if mine == 0 {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{mine} jobs still queued or running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn status(run_dir: &Path) -> String {
    let out = asl(&["status", "--run-dir", run_dir.to_str().unwrap()]);
    assert_ok(&out);
    stdout(&out)
}

#[test]
fn smoke_submitted_as_job_arrays_equals_the_same_parts_run_by_hand() {
    let (Some(_conf), Some(assets)) = (slurm_conf(), shipped_assets()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("cluster");
    let started = Instant::now();
    let out = submit(&assets, &rd, &[]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("jobs submitted"), "{text}");
    // The arrays are in the queue (or already running) right after submitting.
    let jobs = asl::slurm::Submissions::load(&rd).unwrap().jobs;
    assert_eq!(jobs.len(), 5 + 2 * 10, "{text}");
    let rollout = jobs.iter().find(|j| j.stage == "rollout").unwrap();
    assert_eq!((rollout.parts, rollout.tasks.as_slice()), (2, &[0, 1][..]));
    assert!(!rollout.after.is_empty(), "rollout waits for selfcheck");
    wait_for_jobs(&rd, Duration::from_secs(1200));
    eprintln!("slurm smoke: {:?}", started.elapsed());

    let table = status(&rd);
    assert!(
        !table.contains("failed") && !table.contains("never ran"),
        "{table}"
    );
    let m = Manifest::load(&rd).unwrap();
    let rollout_parts: Vec<_> = m
        .entries
        .iter()
        .filter(|e| e.stage == "rollout" && e.round == 1)
        .collect();
    assert_eq!(rollout_parts.len(), 2);
    assert!(rollout_parts.iter().all(|e| {
        e.status == Status::Done
            && e.slurm_job
                .as_deref()
                .is_some_and(|j| j.starts_with(&format!("{}_", rollout.job_id)))
    }));
    assert_eq!(&everything_written(&rd), reference(&assets));

    // Submitting again finds every part done and submits nothing.
    let again = submit(&assets, &rd, &[]);
    assert_ok(&again);
    assert!(
        stdout(&again).contains("nothing to submit"),
        "{}",
        stdout(&again)
    );
}

#[test]
fn a_failed_part_is_named_with_its_job_and_a_resubmission_runs_only_what_is_not_done() {
    let (Some(_conf), Some(assets)) = (slurm_conf(), shipped_assets()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("cluster");
    // Part 1 of round 1's rollout gets a device this build cannot place the model on: a bad
    // parameter for one array task, failing inside the stage (a `failed` manifest entry).
    let wrapper = dir.path().join("asl-wrapper.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = rollout ] && [ \"$5\" = 1 ] && [ \"${{SLURM_ARRAY_TASK_ID:-}}\" = 1 ]; then\n  exec {asl} \"$@\" --set device=cuda\nfi\nexec {asl} \"$@\"\n",
            asl = asl_bin()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = submit(&assets, &rd, &["--asl", wrapper.to_str().unwrap()]);
    assert_ok(&out);
    wait_for_jobs(&rd, Duration::from_secs(1200));

    let table = status(&rd);
    let rollout = asl::slurm::Submissions::load(&rd)
        .unwrap()
        .jobs
        .into_iter()
        .find(|j| j.stage == "rollout" && j.round == 1)
        .unwrap();
    let failed_line = format!("round 1 rollout part 1/2 (slurm job {}_1)", rollout.job_id);
    assert!(table.contains(&failed_line), "{table}");
    assert!(table.contains("cuda"), "the error is shown: {table}");
    // What reads the failed part never ran (its dependency can no longer be met).
    assert!(table.contains("never ran"), "{table}");
    let m = Manifest::load(&rd).unwrap();
    let part0 = ShardSpec { index: 0, count: 2 };
    assert!(m.latest_done_part("rollout", 1, 0, part0).is_some());

    // Again, with the plain binary: the done part 0 of rollout is not rerun.
    let again = submit(&assets, &rd, &[]);
    assert_ok(&again);
    let text = stdout(&again);
    assert!(
        text.contains("1 of 2"),
        "only rollout's failed part is resubmitted: {text}"
    );
    wait_for_jobs(&rd, Duration::from_secs(1200));
    let table = status(&rd);
    assert!(
        !table.contains("failed") && !table.contains("never ran"),
        "{table}"
    );
    let m = Manifest::load(&rd).unwrap();
    let runs_of_part0 = m
        .entries
        .iter()
        .filter(|e| e.stage == "rollout" && e.round == 1 && e.shard == part0)
        .count();
    assert_eq!(runs_of_part0, 1, "a finished part was run again");
    assert_eq!(&everything_written(&rd), reference(&assets));
}
