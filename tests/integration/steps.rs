//! Many optimizer steps per round: `train` + `apply` repeat once per step, each step's
//! checkpoint feeds the next, and splitting every step across two `--shard` workers by hand
//! gives the one-worker run's checkpoint up to f32 summation order.

use std::collections::BTreeMap;
use std::path::Path;

use asl::manifest::Manifest;
use asl::shards::read_rows;
use asl::shards::rows::{StepRow, UpdateRow};
use candle_core::Device;

use crate::common::*;

const SMOKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/smoke.toml");
const STEPS: u32 = 8;

fn env(assets: &Path) -> [(&'static str, String); 2] {
    [
        ("ASL_ASSETS", assets.to_string_lossy().into_owned()),
        ("RAYON_NUM_THREADS", "1".to_string()),
    ]
}

fn run(assets: &Path, args: &[&str]) -> std::process::Output {
    let env = env(assets);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    asl_with_env(args, &env)
}

fn weights(model: &Path) -> BTreeMap<String, Vec<f32>> {
    asl::model::io::load_safetensors_dir(model, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn eight_steps_on_one_worker_equal_eight_steps_on_two() {
    let Some(assets) = shipped_assets() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    let steps = format!("train.steps_per_round={STEPS}");
    // More attempts per task than smoke's two, so the round has more rows than steps.
    let sets = [
        "--rounds",
        "1",
        "--set",
        &steps,
        "--set",
        "rollout.attempts=6",
        // Train the last block only, so the untrained tensors' shard is shared between steps.
        "--set",
        "train.train_last_k=1",
    ];
    let mut args = vec!["run", SMOKE, "--run-dir", one.to_str().unwrap()];
    args.extend_from_slice(&sets);
    let out = run(&assets, &args);
    assert_ok(&out);
    let text = stdout(&out);
    for s in 1..=STEPS {
        assert!(
            text.contains(&format!("round 1 train step {s}/{STEPS}: done")),
            "{text}"
        );
        assert!(
            text.contains(&format!("round 1 apply step {s}/{STEPS}: done")),
            "{text}"
        );
    }
    // One manifest entry per step, and the updates' `step` column tells the steps apart.
    let m = Manifest::load(&one).unwrap();
    let mut seen = Vec::new();
    for s in 1..=STEPS {
        let outs = m.done_step_outputs("train", 1, s).expect("step done");
        let files: Vec<_> = outs
            .iter()
            .filter(|o| o.path.contains("updates-"))
            .map(|o| one.join(&o.path))
            .collect();
        let updates: Vec<UpdateRow> = read_rows(&files).unwrap();
        assert!(updates.iter().all(|u| u.step == s), "step {s}: {updates:?}");
        seen.extend(updates.into_iter().map(|u| u.trajectory_id));
        let applied = m.done_step_outputs("apply", 1, s).unwrap();
        let norms: Vec<StepRow> = read_rows(&[one.join(
            &applied
                .iter()
                .find(|o| o.path.contains("steps-"))
                .unwrap()
                .path,
        )])
        .unwrap();
        assert!(norms.iter().all(|r| r.step == s && r.grad_norm.is_finite()));
    }
    // One epoch: every training row is in exactly one step.
    let n = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), n, "a row trained twice in one epoch");
    assert!(n >= STEPS as usize, "{n} rows");
    // The round's result is the last step's checkpoint, and eval scored it.
    let (_, last) = m.done_outputs("apply", 1).unwrap();
    assert!(
        last[0].path.contains(&format!("step-{STEPS:03}")),
        "{last:?}"
    );

    // More steps than the round has rows (on a copy, so `one` keeps its steps): the steps
    // past the rows get an empty mini-batch, and the run goes on.
    let copy_of_one = |name: &str| {
        let to = dir.path().join(name);
        let copy = std::process::Command::new("cp")
            .args(["-a", one.to_str().unwrap(), to.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(copy.success());
        to
    };
    let few = copy_of_one("few");
    let out = run(
        &assets,
        &[
            "train",
            "--run-dir",
            few.to_str().unwrap(),
            "--round",
            "1",
            "--set",
            "train.steps_per_round=100000",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("empty mini-batch"),
        "{}",
        stdout(&out)
    );

    // The same round with every step split across two workers by hand.
    let two = copy_of_one("two");
    let rd = two.to_str().unwrap();
    for s in 1..=STEPS {
        let step = s.to_string();
        for shard in ["0/2", "1/2"] {
            let out = run(
                &assets,
                &[
                    "train",
                    "--run-dir",
                    rd,
                    "--round",
                    "1",
                    "--step",
                    &step,
                    "--shard",
                    shard,
                ],
            );
            assert_ok(&out);
        }
        assert_ok(&run(
            &assets,
            &["apply", "--run-dir", rd, "--round", "1", "--step", &step],
        ));
    }
    let model = |root: &Path| root.join(format!("round-001/apply/step-{STEPS:03}/model"));
    let (a, b) = (weights(&model(&one)), weights(&model(&two)));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let mut moved = false;
    for (name, x) in &a {
        let y = &b[name];
        for (p, q) in x.iter().zip(y) {
            assert!(
                (p - q).abs() <= 1e-4 * (1.0 + p.abs()),
                "{name}: {p} vs {q}"
            );
        }
        let start = weights(&one.join("round-000/warmup/model"));
        moved |= start[name] != *x;
    }
    assert!(moved, "eight steps left every weight where it was");
    // The untrained tensors are written once and hard-linked by every later step.
    use std::os::unix::fs::MetadataExt;
    let frozen = |s: u32| {
        std::fs::metadata(one.join(format!(
            "round-001/apply/step-{s:03}/model/{}",
            asl::model::train::FROZEN_SHARD
        )))
        .unwrap()
        .ino()
    };
    assert_eq!(frozen(2), frozen(STEPS));
}

#[test]
fn bad_training_settings_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("run");
    for (set, key) in [
        ("train.loss_type=dapo2", "train.loss_type"),
        ("train.steps_per_round=-1", "train.steps_per_round"),
        ("train.steps_per_round=0", "train.steps_per_round"),
        ("train.epochs=0", "train.epochs"),
        ("train.clip_eps=-0.1", "train.clip_eps"),
    ] {
        let out = asl(&[
            "run",
            SMOKE,
            "--run-dir",
            rd.to_str().unwrap(),
            "--set",
            set,
        ]);
        assert_eq!(out.status.code(), Some(1), "{set}");
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{set}: {err}");
        assert!(err.contains(key), "{set}: {err}");
        assert!(!rd.join("round-000").exists(), "{set}: a stage ran");
    }
}
