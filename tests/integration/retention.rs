//! Long runs on one disk, and evals that compare: checkpoint retention prunes old `apply`
//! outputs without making `asl run` rerun anything, `eval.every` skips rounds but never the
//! last, and `asl eval compare` pairs two rounds' (or two `--model` evals') items.

use std::path::Path;

use asl::manifest::Manifest;

use crate::common::*;

const SMOKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/smoke.toml");
const SAMPLE_QA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/qa/sample.jsonl");

fn run(assets: &Path, args: &[&str]) -> std::process::Output {
    asl_with_env(
        args,
        &[
            ("ASL_ASSETS", assets.to_str().unwrap()),
            ("RAYON_NUM_THREADS", "1"),
        ],
    )
}

#[test]
fn retention_prunes_old_checkpoints_and_a_rerun_skips_everything() {
    let Some(assets) = shipped_assets() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("run");
    let rds = rd.to_str().unwrap();
    let args = [
        "run",
        SMOKE,
        "--run-dir",
        rds,
        "--rounds",
        "3",
        "--set",
        "apply.keep_checkpoints=1",
        "--set",
        "eval.every=2",
        // Two splits: each is its own dataset in the eval and in the comparison.
        "--set",
        "eval.split=test,dev",
    ];
    let first = run(&assets, &args);
    assert_ok(&first);
    let out = stdout(&first);
    assert!(out.contains("retention removed"), "{out}");
    assert!(out.contains("round 1 eval: not this round"), "{out}");

    // Round 3's last step is the one checkpoint kept; every gradient shard is gone.
    let model =
        |round: u32, step: u32| rd.join(format!("round-{round:03}/apply/step-{step:03}/model"));
    for (round, step) in [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)] {
        assert!(
            !model(round, step).exists(),
            "round {round} step {step} kept"
        );
    }
    assert!(model(3, 2).join("config.json").is_file());
    let gradients: Vec<_> = walk(&rd)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("gradients-")
        })
        .collect();
    assert!(gradients.is_empty(), "{gradients:?}");
    let m = Manifest::load(&rd).unwrap();
    assert!(m.pruned.iter().any(|p| p.stage == "apply" && p.round == 1));
    assert!(m.pruned.iter().any(|p| p.stage == "train"));
    // eval ran in rounds 2 and 3 only.
    assert!(!rd.join("round-001/eval").exists());
    assert!(rd.join("round-002/eval/eval_items-00000.parquet").is_file());

    // Pruned outputs never make the runner rerun anything.
    let second = run(&assets, &args);
    assert_ok(&second);
    assert!(ran_stages(&second).is_empty(), "{}", stdout(&second));
    // Nor does a change of retention itself: it steers the runner, not apply's outputs.
    let mut keep_more = args.to_vec();
    for a in keep_more
        .iter_mut()
        .filter(|a| a.starts_with("apply.keep_checkpoints="))
    {
        *a = "apply.keep_checkpoints=5";
    }
    let third = run(&assets, &keep_more);
    assert_ok(&third);
    assert!(ran_stages(&third).is_empty(), "{}", stdout(&third));

    // A stage that needs a pruned output says so in one line.
    let by_hand = run(
        &assets,
        &["train", "--run-dir", rds, "--round", "3", "--step", "2"],
    );
    assert_one_line_error(&by_hand, &["retention", "apply"]);

    // Two rounds' evals, paired question by question.
    let cmp = run(
        &assets,
        &["eval", "compare", "--run-dir", rds, "--rounds", "2", "3"],
    );
    assert_ok(&cmp);
    let table = stdout(&cmp);
    assert!(
        table.contains("policy EM") && table.contains("McNemar p"),
        "{table}"
    );
    assert!(
        table.contains("qa:test") && table.contains("qa:dev"),
        "{table}"
    );
    // A round without an eval is one clear line.
    let missing = run(
        &assets,
        &["eval", "compare", "--run-dir", rds, "--rounds", "1", "3"],
    );
    assert_one_line_error(&missing, &["round 1", "eval"]);

    // Two `--model` evals written with --out compare the same way; the same model twice
    // differs by exactly nothing.
    let ckpt = model(3, 2);
    let mut outs = Vec::new();
    for name in ["a", "b"] {
        let out_dir = dir.path().join(name);
        let e = run(
            &assets,
            &[
                "eval",
                "--model",
                ckpt.to_str().unwrap(),
                "--qa",
                SAMPLE_QA,
                "--out",
                out_dir.to_str().unwrap(),
                "--set",
                "eval.questions=4",
                "--set",
                "eval.grm_questions=2",
                "--set",
                "eval.max_new_tokens=24",
            ],
        );
        assert_ok(&e);
        assert!(out_dir.join("eval_items-00000.parquet").is_file());
        outs.push(out_dir);
    }
    let cmp = run(
        &assets,
        &[
            "eval",
            "compare",
            "--evals",
            outs[0].to_str().unwrap(),
            outs[1].to_str().unwrap(),
        ],
    );
    assert_ok(&cmp);
    let table = stdout(&cmp);
    assert!(
        table.contains("+0.000") && table.contains("1.0000"),
        "{table}"
    );
    let json = run(
        &assets,
        &[
            "eval",
            "compare",
            "--json",
            "--evals",
            outs[0].to_str().unwrap(),
            outs[1].to_str().unwrap(),
        ],
    );
    assert_ok(&json);
    let rows: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    let policy = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "policy")
        .unwrap();
    assert_eq!(policy["n"], 4);
    assert_eq!(policy["delta"], 0.0);
    assert_eq!(policy["p_value"], 1.0);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
