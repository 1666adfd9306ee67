//! `asl audit` on synthetic runs with known patterns: the planted frozen-judge run raises the
//! reward-hacking signal and the healthy one does not; bad inputs give a line and the rest of
//! the audit; `audit diff` and `show` on the same shards.

use std::path::Path;

use asl::audit::synthetic::{Pattern, SyntheticRun};
use asl::audit::{AuditOptions, Thresholds, audit};

use crate::common::*;

fn synthetic(dir: &Path, pattern: Pattern) {
    SyntheticRun {
        rounds: 3,
        tasks_per_round: 60,
        attempts: 4,
        tokens: 8,
        pattern,
        seed: 7,
    }
    .write(dir)
    .unwrap();
}

fn options(dir: &Path, plots: bool) -> AuditOptions {
    AuditOptions {
        run_dir: dir.to_path_buf(),
        round: None,
        out: None,
        thresholds: Thresholds::default(),
        plots,
    }
}

fn signal_names(dir: &Path) -> Vec<String> {
    let report = audit(&options(dir, false)).unwrap();
    report.signals.iter().map(|s| s.name.clone()).collect()
}

/// The judge's false accepts on policy answers (passed where the rule label says wrong), by round.
fn false_accepts(dir: &Path) -> Vec<f64> {
    let report = audit(&options(dir, false)).unwrap();
    report
        .rounds
        .iter()
        .filter_map(|r| r.judge("policy").map(|j| j.false_accept))
        .collect()
}

#[test]
fn frozen_judge_pattern_raises_reward_hacking() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), Pattern::FrozenJudge);
    let names = signal_names(dir.path());
    assert!(names.contains(&"reward_hacking".to_string()), "{names:?}");
    // The judge also drifts from the rule label as it passes wrong answers, and its pass rate
    // on the answers the rule calls wrong rises.
    assert!(names.contains(&"judge_drift".to_string()), "{names:?}");
    assert!(names.contains(&"judge_leniency".to_string()), "{names:?}");
    // More of the tasks the generator is paid for split only because the judge lets wrong
    // answers through.
    assert!(
        names.contains(&"unsupported_splits".to_string()),
        "{names:?}"
    );
    // Those passes are false accepts: their share rises from the first round to the last.
    let fa = false_accepts(dir.path());
    assert!(fa.len() >= 2 && fa[fa.len() - 1] > fa[0] + 0.1, "{fa:?}");
}

/// A run that scores held-out EM only at its ends (round 0, the start checkpoint, and the last
/// round, as the learning benchmark does) is judged on those: the rule once looked for EM in
/// two trained rounds and could never fire on such a run.
#[test]
fn reward_hacking_reads_em_from_round_zero_when_only_the_ends_are_scored() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), Pattern::FrozenJudge);
    let round = |r: u32| dir.path().join(format!("round-{r:03}"));
    std::fs::create_dir_all(round(0)).unwrap();
    std::fs::rename(round(1).join("eval"), round(0).join("eval")).unwrap();
    std::fs::remove_dir_all(round(2).join("eval")).unwrap();
    let report = audit(&options(dir.path(), false)).unwrap();
    let hacking = report
        .signals
        .iter()
        .find(|s| s.name == "reward_hacking")
        .unwrap_or_else(|| panic!("{:?}", report.signals));
    assert!(
        hacking.message.contains("(rounds 0→3)"),
        "{}",
        hacking.message
    );
    // The message says how much of the rise the rule label confirms.
    assert!(
        hacking.message.contains("the rule label calls"),
        "{}",
        hacking.message
    );
}

#[test]
fn healthy_run_keeps_reward_hacking_quiet() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), Pattern::Healthy);
    let names = signal_names(dir.path());
    assert!(!names.contains(&"reward_hacking".to_string()), "{names:?}");
    assert!(!names.contains(&"judge_drift".to_string()), "{names:?}");
    assert!(!names.contains(&"judge_leniency".to_string()), "{names:?}");
    assert!(
        !names.contains(&"unsupported_splits".to_string()),
        "{names:?}"
    );
    // The pass rate rises because the answers get right, not because the judge lets more through.
    let fa = false_accepts(dir.path());
    assert!(fa.len() >= 2 && fa[fa.len() - 1] <= fa[0] + 0.05, "{fa:?}");
}

#[test]
fn cli_prints_tables_signals_plots_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    synthetic(dir.path(), Pattern::FrozenJudge);
    let rd = dir.path().to_str().unwrap();
    let out = asl(&["audit", "--run-dir", rd]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("WARNING [reward_hacking] round 3"), "{text}");
    assert!(text.contains("GRM pass rate"), "{text}");
    for f in [
        "heldout.png",
        "rewards.png",
        "solve_rate.png",
        "reward_hist_round_003.png",
        "solve_hist_round_003.png",
        "audit.md",
        "rounds.csv",
        "stats.csv",
        "audit.json",
    ] {
        let p = dir.path().join("audit").join(f);
        assert!(p.is_file(), "{f} missing\n{text}");
        assert!(std::fs::metadata(&p).unwrap().len() > 100, "{f} is empty");
    }
    let png = std::fs::read(dir.path().join("audit/heldout.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    let json = asl(&["audit", "--run-dir", rd, "--json", "--no-plots"]);
    assert_ok(&json);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["rounds"].as_array().unwrap().len(), 3);
    assert_eq!(v["signals"][0]["name"], "reward_hacking");

    // A stricter threshold set from the command line silences it.
    let quiet = asl(&[
        "audit",
        "--run-dir",
        rd,
        "--no-plots",
        "--set",
        "audit.hacking_pass_rise=0.99",
    ]);
    assert_ok(&quiet);
    assert!(
        !stdout(&quiet).contains("reward_hacking"),
        "{}",
        stdout(&quiet)
    );
    let bad = asl(&["audit", "--run-dir", rd, "--set", "audit.nonsense=1"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("audit.nonsense"), "{}", stderr(&bad));

    let diff = asl(&["audit", "diff", "--run-dir", rd, "--rounds", "1", "3"]);
    assert_ok(&diff);
    let text = stdout(&diff);
    assert!(text.contains("judge.policy.pass_rate"), "{text}");
    assert!(text.contains("tasks.template.harder"), "{text}");
    assert!(text.contains("new questions"), "{text}");

    let show = asl(&[
        "show",
        "--run-dir",
        rd,
        "--stage",
        "rollout",
        "--round",
        "2",
        "--row",
        "2",
    ]);
    assert_ok(&show);
    let text = stdout(&show);
    assert!(text.contains("trajectory r2-t0-p1"), "{text}");
    assert!(text.contains("GRM verdict on the policy answer"), "{text}");
    assert!(text.contains("reward (grm)"), "{text}");
    let tasks = asl(&[
        "show",
        "--run-dir",
        rd,
        "--stage",
        "generate",
        "--round",
        "1",
        "--row",
        "5",
    ]);
    assert_ok(&tasks);
    assert!(
        stdout(&tasks).contains("question: Which place is linked to item 5"),
        "{}",
        stdout(&tasks)
    );
    let past = asl(&[
        "show",
        "--run-dir",
        rd,
        "--stage",
        "generate",
        "--round",
        "1",
        "--row",
        "999",
    ]);
    assert!(!past.status.success());
    assert!(stderr(&past).contains("past the end"), "{}", stderr(&past));
}

#[test]
fn bad_inputs_give_a_line_and_the_rest_of_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    // No shards at all.
    let empty = asl(&["audit", "--run-dir", dir.path().to_str().unwrap()]);
    assert!(!empty.status.success());
    assert!(
        stdout(&empty).contains("no tasks, trajectories"),
        "{}",
        stdout(&empty)
    );
    let missing = asl(&[
        "audit",
        "--run-dir",
        dir.path().join("nope").to_str().unwrap(),
    ]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no such run directory"),
        "{}",
        stderr(&missing)
    );

    synthetic(dir.path(), Pattern::Healthy);
    let rd = dir.path();
    // A corrupt shard, a shard of another schema, and a half-written temporary file.
    std::fs::write(
        rd.join("round-002/judge/judgments-00001.parquet"),
        b"not parquet",
    )
    .unwrap();
    std::fs::copy(
        rd.join("round-002/generate/tasks-00000.parquet"),
        rd.join("round-002/reward/rewards-00001.parquet"),
    )
    .unwrap();
    std::fs::write(
        rd.join("round-002/rollout/.trajectories-00001.parquet.asl-tmp-1"),
        b"half",
    )
    .unwrap();
    let mut opts = options(rd, false);
    opts.round = Some(9);
    let report = audit(&opts).unwrap();
    assert_eq!(report.rounds.len(), 3);
    let notes = report.notes.join("\n");
    assert!(
        notes.contains("judgments-00001.parquet: not a readable Parquet file"),
        "{notes}"
    );
    assert!(
        notes.contains("rewards-00001.parquet: not a rewards shard: missing column"),
        "{notes}"
    );
    assert!(notes.contains("round 9 has no audited shards"), "{notes}");
    assert!(!notes.contains("asl-tmp"), "{notes}");
    // What was readable is still audited.
    let r2 = &report.rounds[1];
    assert_eq!(r2.judge("policy").unwrap().judgments, 240);
    assert_eq!(
        r2.role("policy").unwrap().reward.as_ref().unwrap().count,
        240
    );

    // The CLI prints the same notes and still succeeds.
    let out = asl(&[
        "audit",
        "--run-dir",
        rd.to_str().unwrap(),
        "--no-plots",
        "--round",
        "9",
    ]);
    assert_ok(&out);
    assert!(stdout(&out).contains("note: "), "{}", stdout(&out));
}
