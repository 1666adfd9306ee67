//! TensorBoard scalars of a finished run, read back with the `tensorboard` Python package: the
//! round figures at step = round equal the eval shards' metrics and the round table's rewards,
//! the training figures sit at global optimizer steps, and no tag has two points at one step
//! (after a stage reran, too). Called from the smoke test, which has the run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use asl::shards::rows::{EvalRow, RewardRow};

/// Every scalar in `RUN_DIR/tensorboard` as TensorBoard reads it: tag → [(step, value)].
fn read_back(run_dir: &Path) -> Option<BTreeMap<String, Vec<(i64, f64)>>> {
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
"#;
    let has = Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        assert!(
            std::env::var_os("ASL_REQUIRE_PY_READERS").is_none(),
            "ASL_REQUIRE_PY_READERS is set but the tensorboard package does not import"
        );
        eprintln!("skipped the TensorBoard read-back: python3 with tensorboard not found");
        return None;
    }
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(run_dir.join("tensorboard"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

pub fn check_scalars(run_dir: &Path, rounds: u32, steps: u32) {
    let Some(scalars) = read_back(run_dir) else {
        return;
    };
    for (tag, points) in &scalars {
        let mut seen: Vec<i64> = points.iter().map(|p| p.0).collect();
        seen.sort_unstable();
        let n = seen.len();
        seen.dedup();
        assert_eq!(
            seen.len(),
            n,
            "{tag} has two points at one step: {points:?}"
        );
    }
    for round in 1..=rounds {
        let dir = run_dir.join(format!("round-{round:03}"));
        let eval: Vec<EvalRow> =
            asl::shards::read_rows(&[dir.join("eval/eval-00000.parquet")]).unwrap();
        for e in eval.iter().filter(|e| e.role == "policy") {
            let tag = format!("eval/{}/{}/{}", e.dataset, e.role, e.metric);
            let at = scalars[&tag]
                .iter()
                .find(|p| p.0 == i64::from(round))
                .unwrap_or_else(|| panic!("{tag} has no point at round {round}"));
            assert!(
                (at.1 - e.value).abs() < 1e-6,
                "{tag}: {} vs {}",
                at.1,
                e.value
            );
        }
        let rewards: Vec<RewardRow> =
            asl::shards::read_rows(&[dir.join("reward/rewards-00000.parquet")]).unwrap();
        let policy: Vec<f64> = rewards
            .iter()
            .filter(|r| r.role == "policy")
            .map(|r| f64::from(r.total))
            .collect();
        if !policy.is_empty() {
            let mean = policy.iter().sum::<f64>() / policy.len() as f64;
            let at = scalars["reward/policy"]
                .iter()
                .find(|p| p.0 == i64::from(round))
                .unwrap();
            assert!(
                (at.1 - mean).abs() < 1e-5,
                "reward/policy: {} vs {mean}",
                at.1
            );
        }
    }
    // Training figures at every global optimizer step.
    let loss_steps: Vec<i64> = scalars
        .iter()
        .filter(|(t, _)| t.starts_with("train/") && t.ends_with("/grad_norm"))
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let expected: Vec<i64> = (1..=i64::from(rounds * steps)).collect();
    assert_eq!(loss_steps, expected);
}
