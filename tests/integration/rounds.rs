//! The `smoke` pipeline end to end: every stage of two ASL rounds on a tiny random model and the
//! shipped corpus, reruns that do nothing, byte-identical reruns from the same seed, and
//! `kill -9` during `rollout` followed by `asl run` giving the uninterrupted run's shards.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use asl::manifest::{Manifest, Status};

use crate::common::*;

const SMOKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/smoke.toml");
const ROUND_STAGES: [&str; 8] = [
    "generate",
    "selfcheck",
    "rollout",
    "judge",
    "reward",
    "train",
    "apply",
    "eval",
];

fn run_smoke(assets: &Path, run_dir: &Path, extra: &[&str]) -> std::process::Output {
    run_pipeline(Path::new(SMOKE), assets, run_dir, extra)
}

/// `asl run PIPELINE` on the shipped assets, single-threaded.
fn run_pipeline(
    pipeline: &Path,
    assets: &Path,
    run_dir: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "run",
        pipeline.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    // One thread: candle's pool spin-waits, which costs more than it gains on a tiny model when
    // other tests share the cores.
    asl_with_env(
        &args,
        &[
            ("ASL_ASSETS", assets.to_str().unwrap()),
            ("RAYON_NUM_THREADS", "1"),
        ],
    )
}

#[test]
fn smoke_runs_two_rounds_of_every_stage_and_reruns_are_no_ops() {
    let Some(assets) = shipped_assets() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("run");
    let out = run_smoke(&assets, &rd, &[]);
    assert_ok(&out);
    let manifest = Manifest::load(&rd).unwrap();
    for round in 1..=2 {
        for stage in ROUND_STAGES {
            assert!(
                manifest
                    .done_outputs(stage, round)
                    .is_some_and(|(r, _)| r == round),
                "round {round} {stage} not done\n{}",
                stdout(&out)
            );
        }
    }
    // The self-check ran before the rollout: only tasks that passed it were attempted.
    for round in 1..=2 {
        let dir = |stage: &str| rd.join(format!("round-{round:03}/{stage}"));
        let checked: Vec<asl::shards::rows::TaskRow> =
            asl::shards::read_rows(&[dir("selfcheck").join("tasks-00000.parquet")]).unwrap();
        let attempts: Vec<asl::shards::rows::TrajectoryRow> =
            asl::shards::read_rows(&[dir("rollout").join("trajectories-00000.parquet")]).unwrap();
        let valid: std::collections::BTreeSet<&str> = checked
            .iter()
            .filter(|t| t.valid)
            .map(|t| t.task_id.as_str())
            .collect();
        assert!(
            attempts.iter().all(|a| valid.contains(a.task_id.as_str())),
            "round {round}: an attempt at a task that failed the self-check"
        );
    }
    // Every reward row that trains reaches `train` with its trajectory, the self-check's GRM
    // judgments included (they were once read from an upstream `train` had not declared, found
    // nothing, and were dropped as "rewards without a trajectory").
    let mut self_check_rows = 0;
    for round in 1..=2 {
        let dir = |stage: &str| rd.join(format!("round-{round:03}/{stage}"));
        let checks: Vec<asl::shards::rows::TrajectoryRow> =
            asl::shards::read_rows(&[dir("selfcheck").join("trajectories-00000.parquet")]).unwrap();
        let ids: std::collections::BTreeSet<&str> =
            checks.iter().map(|t| t.trajectory_id.as_str()).collect();
        let rewards: Vec<asl::shards::rows::RewardRow> =
            asl::shards::read_rows(&[dir("reward").join("rewards-00000.parquet")]).unwrap();
        self_check_rows += rewards
            .iter()
            .filter(|r| r.train && r.advantage != 0.0 && ids.contains(r.trajectory_id.as_str()))
            .count();
    }
    assert!(
        self_check_rows > 0,
        "smoke no longer trains a self-check judgment"
    );
    assert!(
        !stdout(&out).contains("without a trajectory")
            && !stderr(&out).contains("without a trajectory"),
        "{}",
        stdout(&out)
    );
    // The GRM is scored on near misses: a dev question's gold and its misspelling, paired.
    let items: Vec<asl::shards::rows::EvalItemRow> =
        asl::shards::read_rows(&[rd.join("round-002/eval/eval_items-00000.parquet")]).unwrap();
    let near: Vec<_> = items
        .iter()
        .filter(|r| r.dataset.starts_with("qa:dev near misses"))
        .collect();
    let misspelt: Vec<_> = near.iter().filter(|r| r.label == Some(false)).collect();
    assert!(!misspelt.is_empty() && near.len() == 2 * misspelt.len());
    for m in misspelt {
        let gold = near
            .iter()
            .find(|r| r.item_id == m.item_id.replace(":misspelt", ":gold"))
            .unwrap();
        assert_eq!(gold.candidate.as_ref(), Some(&m.references[0]));
        assert_ne!(m.candidate, gold.candidate);
    }
    let status = asl(&["status", "--run-dir", rd.to_str().unwrap()]);
    assert_ok(&status);
    assert!(!stdout(&status).contains("failed"));
    // The round table closes every round.
    assert!(stdout(&out).contains("held-out EM"), "{}", stdout(&out));

    // The audit reads the real shards of both rounds, prints its tables and draws its plots.
    let audit = asl(&["audit", "--run-dir", rd.to_str().unwrap()]);
    assert_ok(&audit);
    let text = stdout(&audit);
    assert!(
        text.contains("Round 2 by role") && text.contains("signals"),
        "{text}"
    );
    for png in [
        "heldout.png",
        "rewards.png",
        "solve_rate.png",
        "reward_hist_round_002.png",
    ] {
        assert!(
            rd.join("audit").join(png).is_file(),
            "{png} missing\n{text}"
        );
    }
    let show = asl(&[
        "show",
        "--run-dir",
        rd.to_str().unwrap(),
        "--stage",
        "rollout",
        "--round",
        "1",
        "--row",
        "0",
    ]);
    assert_ok(&show);
    assert!(stdout(&show).contains("turn 1: model"), "{}", stdout(&show));

    let again = run_smoke(&assets, &rd, &[]);
    assert_ok(&again);
    assert!(ran_stages(&again).is_empty(), "{}", stdout(&again));

    // The run as one page: both rounds, curves, a task with its attempts and verdicts.
    let page = asl(&["report", "--run-dir", rd.to_str().unwrap(), "--html"]);
    assert_ok(&page);
    let html = std::fs::read_to_string(rd.join("report.html")).unwrap();
    assert!(
        html.contains("<td>1</td>") && html.contains("<td>2</td>"),
        "both rounds"
    );
    assert!(html.contains("<polyline"), "curves");
    assert!(html.contains("data-role=policy") && html.contains("data-role=grm"));
    assert!(html.contains("class=tool"), "tool text marked");
    assert!(html.contains("data-round=2") && html.contains("GRM: "));
    // Self-contained: nothing is fetched (the SVG namespace is a name, not a request).
    let fetches = ["src=", "href=", "@import", "url("];
    assert!(
        fetches.iter().all(|f| !html.contains(f)),
        "the page fetches something"
    );
    crate::page::check_in_browser(&rd);

    // TensorBoard shows the run; a stage that reruns rewrites its round's points, never adds.
    assert_ok(&run_smoke(&assets, &rd, &["--force", "eval"]));
    crate::tensorboard::check_scalars(&rd, 2, 2);

    // The same seed gives the same bytes in a fresh run dir.
    let rd2 = dir.path().join("run2");
    assert_ok(&run_smoke(&assets, &rd2, &[]));
    assert_eq!(everything_written(&rd), everything_written(&rd2));
}

#[test]
fn kill_9_during_rollout_then_rerun_gives_the_same_shards() {
    let Some(assets) = shipped_assets() else {
        return;
    };
    // Longer rollouts, so the kill lands inside the stage.
    let sets = [
        "--set",
        "rollout.max_new_tokens=160",
        "--set",
        "rollout.attempts=6",
        "--rounds",
        "1",
    ];
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    assert_ok(&run_smoke(&assets, &reference, &sets));
    let expected = everything_written(&reference);

    let rd = dir.path().join("killed");
    let mut args = vec!["run", SMOKE, "--run-dir", rd.to_str().unwrap()];
    args.extend_from_slice(&sets);
    let mut child = Command::new(asl_bin())
        .args(&args)
        .env("ASL_ASSETS", &assets)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut killed_in_rollout = false;
    while started.elapsed() < Duration::from_secs(120) {
        if let Ok(m) = Manifest::load(&rd)
            && m.entries
                .iter()
                .any(|e| e.stage == "rollout" && e.status == Status::Running)
        {
            std::thread::sleep(Duration::from_millis(150));
            child.kill().unwrap();
            killed_in_rollout = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait().unwrap();
    assert!(
        killed_in_rollout,
        "the run ended before rollout could be killed"
    );
    let out = run_smoke(&assets, &rd, &sets);
    assert_ok(&out);
    assert!(
        ran_stages(&out).iter().any(|s| s.ends_with("rollout")),
        "{}",
        stdout(&out)
    );
    assert_eq!(everything_written(&rd), expected);
}

/// A round in which no role has anything to train leaves the checkpoint as it was, so the next
/// one could only repeat it with other seeds: after `stall_rounds` such rounds in a row the run
/// stops, and its last round is scored as the pipeline's last round would be (`eval.every`).
/// Here the policy's solve-rate band is empty and only the policy may train.
#[test]
fn a_run_whose_rounds_train_nothing_stops_after_stall_rounds() {
    let Some(assets) = shipped_assets() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pipe = dir.path().join("stall.toml");
    std::fs::write(
        &pipe,
        format!(
            "extends = {SMOKE:?}\nrounds = 5\nstall_rounds = 2\n\
             [params.reward]\ntrain_roles = \"policy\"\nsolve_rate_min = 1.0\nsolve_rate_max = 0.0\n\
             [params.eval]\nevery = 10\n\
             [params.selfcheck]\njudge_model = \"start\"\n[params.judge]\njudge_model = \"start\"\n"
        ),
    )
    .unwrap();
    let rd = dir.path().join("run");
    let run = || run_pipeline(&pipe, &assets, &rd, &[]);
    let out = run();
    assert_ok(&out);
    assert!(
        stdout(&out).contains("round 2: the run stops after this round: 2 rounds in a row"),
        "{}",
        stdout(&out)
    );
    let manifest = Manifest::load(&rd).unwrap();
    assert!(
        manifest
            .done_outputs("reward", 2)
            .is_some_and(|(r, _)| r == 2)
    );
    // Round 1 is not scored (every = 10); round 2, the last, is; round 3 never starts.
    assert!(manifest.done_outputs("eval", 1).is_none_or(|(r, _)| r != 1));
    assert!(
        manifest
            .done_outputs("eval", 2)
            .is_some_and(|(r, _)| r == 2)
    );
    assert!(!rd.join("round-003").exists());
    // A frozen judge (`judge_model = "start"`): round 2's GRM stages judge with the warm-up's
    // checkpoint while its rollout samples from round 1's `apply`.
    let reads = |stage: &str, round: u32, path: &str| {
        manifest
            .entries
            .iter()
            .find(|e| e.stage == stage && e.round == round && e.status == Status::Done)
            .unwrap_or_else(|| panic!("no round {round} {stage}"))
            .inputs
            .iter()
            .any(|i| i.path.starts_with(path))
    };
    assert!(reads("rollout", 2, "round-001/apply"));
    for stage in ["selfcheck", "judge"] {
        assert!(!reads(stage, 2, "round-001/apply"), "{stage}");
        assert!(reads(stage, 2, "round-000/warmup"), "{stage}");
    }
    // Resuming finds the same stall from the shards and skips everything.
    let again = run();
    assert_ok(&again);
    assert!(stdout(&again).contains("round 2: the run stops after this round"));
    assert!(!stdout(&again).contains(": running"), "{}", stdout(&again));
    assert!(!rd.join("round-003").exists());
}

/// `dtype = "q8_0"` samples with int8 weights (every sampling stage), `train` recomputes the
/// log-probs in f32, and the first step of each round says how far apart the two are.
#[test]
fn q8_0_sampling_runs_a_round_and_reports_the_log_prob_gap() {
    let Some(assets) = shipped_assets() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pipe = dir.path().join("q8.toml");
    std::fs::write(&pipe, format!("extends = {SMOKE:?}\nrounds = 1\n")).unwrap();
    let rd = dir.path().join("run");
    let out = run_pipeline(&pipe, &assets, &rd, &["--set", "dtype=q8_0"]);
    assert_ok(&out);
    let log = stdout(&out);
    let gap = log
        .lines()
        .find(|l| l.contains("round 1 train step 1/") && l.contains("done"))
        .unwrap_or_else(|| panic!("{log}"));
    let value: f64 = gap
        .split("sampling gap |Δ log p| ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no gap in {gap:?}"));
    // Not exact (int8), but close on this model.
    assert!(value > 0.0 && value < 0.1, "{gap}");
    let manifest = Manifest::load(&rd).unwrap();
    let rollout = manifest
        .entries
        .iter()
        .find(|e| e.stage == "rollout")
        .unwrap();
    assert_eq!(rollout.params["dtype"], "q8_0");
}

/// `generate.grounding_k`: a task counts only when the search engine's top K passages for its
/// question hold its answer. Every valid task's answer is in the corpus, and the tiny model's
/// made-up answers are rejected with the grounding reason.
#[test]
fn grounding_rejects_tasks_whose_answer_the_search_does_not_find() {
    use asl::rl::rewards::contains_answer;
    use asl::shards::read_rows;
    use asl::shards::rows::{CorpusRow, TaskRow};
    let Some(assets) = shipped_assets() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("run");
    let out = run_smoke(
        &assets,
        &rd,
        &[
            "--rounds",
            "1",
            "--set",
            "generate.grounding_k=3",
            "--set",
            "generate.tasks=8",
        ],
    );
    assert_ok(&out);
    let files = |stage: &str, prefix: &str| -> Vec<std::path::PathBuf> {
        let round = if stage == "corpus" { 0 } else { 1 };
        let d = rd.join(format!("round-{round:03}/{stage}"));
        let mut v: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
            .collect();
        v.sort();
        v
    };
    let tasks: Vec<TaskRow> = read_rows(&files("generate", "tasks")).unwrap();
    let corpus: Vec<CorpusRow> = read_rows(&files("corpus", "corpus")).unwrap();
    assert_eq!(tasks.len(), 8);
    let grounding = |t: &TaskRow| {
        t.invalid_reason
            .as_deref()
            .is_some_and(|r| r.contains("the search engine finds"))
    };
    assert!(tasks.iter().any(grounding), "{tasks:#?}");
    for t in &tasks {
        if t.valid {
            assert!(
                corpus.iter().any(|c| contains_answer(&c.text, &t.answer)),
                "valid task's answer {:?} is nowhere in the corpus",
                t.answer
            );
        }
        if grounding(t) {
            // Only the grounding check failed: the text checks passed first.
            assert!(t.question.trim().ends_with('?') && !t.answer.trim().is_empty());
        }
    }
    // Without a search index the check cannot run: one line naming the key.
    let out = run_smoke(
        &assets,
        &dir.path().join("nosearch"),
        &[
            "--rounds",
            "1",
            "--set",
            "generate.grounding_k=3",
            "--set",
            "generate.search_mode=none",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("generate.grounding_k"),
        "{}",
        stderr(&out)
    );
}

/// A stage dropped from the pipeline stops feeding what read it: after a smoke round with a
/// self-check, the same run dir under a pipeline without one (and new tasks) has rollout read
/// generate's tasks, not the old self-check's.
#[test]
fn an_optional_upstream_dropped_from_the_pipeline_is_not_read() {
    let Some(assets) = shipped_assets() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("run");
    assert_ok(&run_smoke(&assets, &rd, &["--rounds", "1"]));
    let without = dir.path().join("no-selfcheck.toml");
    std::fs::write(
        &without,
        format!(
            "extends = {SMOKE:?}\nname = \"smoke-no-selfcheck\"\nround = [\"generate\", \"rollout\", \"judge\", \"reward\", \"train\", \"apply\"]\n"
        ),
    )
    .unwrap();
    let out = run_pipeline(
        &without,
        &assets,
        &rd,
        &["--rounds", "1", "--set", "generate.tasks=3"],
    );
    assert_ok(&out);
    assert!(
        ran_stages(&out).contains(&"round 1 rollout".to_string()),
        "{}",
        stdout(&out)
    );
    let m = Manifest::load(&rd).unwrap();
    let rollout = m
        .entries
        .iter()
        .rev()
        .find(|e| e.stage == "rollout" && e.round == 1 && e.status == Status::Done)
        .unwrap();
    let read: Vec<&str> = rollout.inputs.iter().map(|f| f.path.as_str()).collect();
    assert!(
        read.iter().any(|p| p.contains("round-001/generate")),
        "{read:?}"
    );
    assert!(!read.iter().any(|p| p.contains("selfcheck")), "{read:?}");
}

/// `judge.samples = 3` with `reward.grm_group = answer`: every answered attempt is judged three
/// times (samples 0-2, their own judgment ids), an unanswered one once, and the GRM's reward rows
/// are grouped by the answer they judge.
#[test]
fn sampled_verdicts_run_a_round_grouped_by_answer() {
    use asl::shards::rows::{JudgmentRow, RewardRow};
    use std::collections::BTreeMap;
    let Some(assets) = shipped_assets() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pipe = dir.path().join("votes.toml");
    std::fs::write(&pipe, format!("extends = {SMOKE:?}\nrounds = 1\n")).unwrap();
    let rd = dir.path().join("run");
    let out = run_pipeline(
        &pipe,
        &assets,
        &rd,
        &[
            "--set",
            "judge.samples=3",
            "--set",
            "reward.grm_group=answer",
        ],
    );
    assert_ok(&out);
    let judge = files_with_extension(&rd.join("round-001/judge"), "parquet");
    let judgments: Vec<JudgmentRow> = asl::shards::read_rows(
        &judge
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("judgments-"))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut per_attempt: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for j in judgments.iter().filter(|j| j.target == "policy") {
        per_attempt
            .entry(&j.target_trajectory_id)
            .or_default()
            .push(j.sample);
    }
    assert!(
        judgments
            .iter()
            .any(|j| j.target == "policy" && j.candidate_answer.is_some()),
        "no answered attempt was judged"
    );
    for j in judgments.iter().filter(|j| j.target == "policy") {
        let samples = &per_attempt[j.target_trajectory_id.as_str()];
        let expected: &[u32] = if j.candidate_answer.is_some() {
            &[0, 1, 2]
        } else {
            &[0]
        };
        assert_eq!(samples, expected, "{}", j.target_trajectory_id);
        assert_eq!(
            j.judgment_id,
            format!("{}-j{}", j.target_trajectory_id, j.sample)
        );
    }
    // Each verdict has its own seed.
    let runs: Vec<asl::shards::rows::TrajectoryRow> = asl::shards::read_rows(
        &files_with_extension(&rd.join("round-001/judge"), "parquet")
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("trajectories-"))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut seeds: BTreeMap<String, std::collections::BTreeSet<u64>> = BTreeMap::new();
    for t in runs.iter().filter(|t| t.trajectory_id.contains("-p")) {
        let attempt = t.trajectory_id.rsplit_once("-j").unwrap().0.to_string();
        assert!(
            seeds.entry(attempt).or_default().insert(t.seed),
            "{}",
            t.trajectory_id
        );
    }
    assert!(seeds.values().any(|s| s.len() == 3));
    let rewards: Vec<RewardRow> = asl::shards::read_rows(&files_with_extension(
        &rd.join("round-001/reward"),
        "parquet",
    ))
    .unwrap();
    let by_id: BTreeMap<&str, &JudgmentRow> = judgments
        .iter()
        .map(|j| (j.judgment_id.as_str(), j))
        .collect();
    let grm: Vec<&RewardRow> = rewards.iter().filter(|r| r.role == "grm").collect();
    assert!(!grm.is_empty());
    // Grouped by the answer judged: the verdicts of one attempt share a group, and so do
    // attempts at one task that gave the same answer.
    for r in grm {
        if let Some(j) = by_id.get(r.trajectory_id.as_str()) {
            let prefix = format!("grm/{}/", j.task_id);
            assert!(r.group_id.starts_with(&prefix), "{} {}", r.group_id, prefix);
        }
    }
    let group_of: BTreeMap<&str, &str> = rewards
        .iter()
        .filter(|r| r.role == "grm")
        .map(|r| (r.trajectory_id.as_str(), r.group_id.as_str()))
        .collect();
    for j in judgments.iter().filter(|j| j.sample > 0) {
        let first = format!("{}-j0", j.target_trajectory_id);
        assert_eq!(group_of[j.judgment_id.as_str()], group_of[first.as_str()]);
    }
}
