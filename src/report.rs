//! The table that closes a round of `asl run`: what the generator wrote, how the policy did, what
//! each role earned, how the judge leaned, and the held-out scores, read back from the round's
//! shards so it says what the data says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::error::Result;
use crate::manifest::{Manifest, resolve_path};
use crate::shards::read_kind;
use crate::shards::rows::{EvalRow, JudgmentRow, RewardRow, StepRow, TaskRow, UpdateRow};

/// Outputs of `stage` in exactly `round`.
pub(crate) fn outputs(run_dir: &Path, m: &Manifest, stage: &str, round: u32) -> Vec<PathBuf> {
    match m.done_outputs(stage, round) {
        Some((r, outs)) if r == round => outs
            .iter()
            .map(|o| resolve_path(run_dir, &o.path))
            .collect(),
        _ => Vec::new(),
    }
}

/// Outputs of each optimizer step of a stepped stage (`train`, `apply`) in exactly `round`, in
/// step order, for the step count of its newest run.
fn step_outputs(run_dir: &Path, m: &Manifest, stage: &str, round: u32) -> Vec<(u32, Vec<PathBuf>)> {
    let Some(newest) = m.entries.iter().rev().find(|e| {
        e.stage == stage && e.round == round && e.status == crate::manifest::Status::Done
    }) else {
        return Vec::new();
    };
    (1..=newest.steps)
        .filter_map(|step| {
            let outs = m.done_step_outputs(stage, round, step)?;
            Some((
                step,
                outs.iter()
                    .map(|o| resolve_path(run_dir, &o.path))
                    .collect(),
            ))
        })
        .collect()
}

/// One row per optimizer step and role of the round: the mean per-sequence loss, ratio, clip
/// fraction, KL and entropy of the step's sequences (`train`'s updates) and the norm of the
/// role's summed gradient (`apply`'s steps shard).
pub(crate) fn updates_table(run_dir: &Path, round: u32) -> Result<Table> {
    let m = Manifest::load(run_dir)?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "step",
        "role",
        "seqs",
        "loss",
        "ratio",
        "clip",
        "KL",
        "entropy",
        "grad norm",
    ]);
    let norms: Vec<StepRow> = step_outputs(run_dir, &m, "apply", round)
        .into_iter()
        .map(|(_, files)| read_kind::<StepRow>(&files))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    for (step, files) in step_outputs(run_dir, &m, "train", round) {
        let updates: Vec<UpdateRow> = read_kind(&files)?;
        let mut by_role: BTreeMap<&str, Vec<&UpdateRow>> = BTreeMap::new();
        for u in &updates {
            by_role.entry(u.role.as_str()).or_default().push(u);
        }
        for (role, rows) in by_role {
            let avg = |f: fn(&UpdateRow) -> f32| show(mean(rows.iter().map(|u| f64::from(f(u)))));
            let norm = norms
                .iter()
                .find(|n| n.step == step && n.role == role)
                .map(|n| format!("{:.4}", n.grad_norm))
                .unwrap_or_else(|| "-".into());
            table.add_row(vec![
                step.to_string(),
                role.to_string(),
                rows.len().to_string(),
                avg(|u| u.loss),
                avg(|u| u.mean_ratio),
                avg(|u| u.clip_fraction),
                avg(|u| u.kl),
                avg(|u| u.entropy),
                norm,
            ]);
        }
    }
    Ok(table)
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

fn show(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into())
}

/// What a round's shards say, counted once for the round table and the TensorBoard scalars.
struct RoundNumbers {
    tasks: usize,
    valid: usize,
    /// Tasks the self-check accepted (None: no generator rows, labelled tasks).
    valid_after_check: Option<usize>,
    solve: Option<f64>,
    mean_reward: Vec<(&'static str, Option<f64>)>,
    groups_with_signal: usize,
    groups: usize,
    verdicts_correct: usize,
    verdicts_wrong: usize,
    eval: Vec<EvalRow>,
}

impl RoundNumbers {
    fn read(run_dir: &Path, m: &Manifest, round: u32) -> Result<RoundNumbers> {
        let tasks: Vec<TaskRow> = read_kind(&outputs(run_dir, m, "generate", round))?;
        let rewards: Vec<RewardRow> = read_kind(&outputs(run_dir, m, "reward", round))?;
        // Every GRM verdict of the round: the self-check's (the generator's answers) and the
        // judge's.
        let mut grm_files = outputs(run_dir, m, "selfcheck", round);
        grm_files.extend(outputs(run_dir, m, "judge", round));
        let judgments: Vec<JudgmentRow> = read_kind(&grm_files)?;
        let eval: Vec<EvalRow> = read_kind(&outputs(run_dir, m, "eval", round))?;
        // Labelled tasks (Search-R1) have no generator and no self-check: nothing to count.
        let generator_rows = rewards.iter().any(|r| r.role == "generator");
        let valid_after_check = generator_rows.then(|| {
            rewards
                .iter()
                .filter(|r| r.role == "generator" && r.label.as_deref() == Some("valid"))
                .count()
        });
        let mut per_task: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for r in rewards.iter().filter(|r| r.role == "policy") {
            per_task
                .entry(r.task_id.as_str())
                .or_default()
                .push(f64::from(r.reward));
        }
        let solve = mean(per_task.values().filter_map(|v| mean(v.iter().copied())));
        let mean_reward = ["policy", "generator", "grm"]
            .into_iter()
            .map(|role| {
                let m = mean(
                    rewards
                        .iter()
                        .filter(|r| r.role == role)
                        .map(|r| f64::from(r.total)),
                );
                (role, m)
            })
            .collect();
        let mut groups: BTreeMap<&str, bool> = BTreeMap::new();
        for r in rewards.iter().filter(|r| r.role == "policy") {
            *groups.entry(r.group_id.as_str()).or_default() |= r.advantage != 0.0;
        }
        let ran: Vec<&JudgmentRow> = judgments
            .iter()
            .filter(|j| !j.judge_trajectory_id.is_empty())
            .collect();
        Ok(RoundNumbers {
            tasks: tasks.len(),
            valid: tasks.iter().filter(|t| t.valid).count(),
            valid_after_check,
            solve,
            mean_reward,
            groups_with_signal: groups.values().filter(|v| **v).count(),
            groups: groups.len(),
            verdicts_correct: ran.iter().filter(|j| j.verdict == "correct").count(),
            verdicts_wrong: ran.iter().filter(|j| j.verdict != "correct").count(),
            eval,
        })
    }

    fn metric(&self, role: &str, metric: &str) -> Option<f64> {
        self.eval
            .iter()
            .find(|e| e.role == role && e.metric == metric)
            .map(|e| e.value)
    }
}

/// The round's table (rows whose shards are absent show `-`).
pub fn round_table(run_dir: &Path, round: u32) -> Result<Table> {
    let n = RoundNumbers::read(run_dir, &Manifest::load(run_dir)?, round)?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![format!("round {round}"), "value".to_string()]);
    table.add_row(vec![
        "tasks written / valid".to_string(),
        format!(
            "{} / {}{}",
            n.tasks,
            n.valid,
            match n.valid_after_check {
                Some(v) => format!(" ({v} after self-check)"),
                None => String::new(),
            }
        ),
    ]);
    table.add_row(vec!["policy solve rate".to_string(), show(n.solve)]);
    for (role, m) in &n.mean_reward {
        table.add_row(vec![format!("mean reward: {role}"), show(*m)]);
    }
    table.add_row(vec![
        "policy groups with a learning signal".to_string(),
        format!("{} / {}", n.groups_with_signal, n.groups),
    ]);
    table.add_row(vec![
        "GRM verdicts correct / wrong".to_string(),
        format!("{} / {}", n.verdicts_correct, n.verdicts_wrong),
    ]);
    table.add_row(vec![
        "held-out EM".to_string(),
        show(n.metric("policy", "em")),
    ]);
    table.add_row(vec![
        "held-out F1".to_string(),
        show(n.metric("policy", "f1")),
    ]);
    table.add_row(vec![
        "GRM accuracy".to_string(),
        show(n.metric("grm", "accuracy")),
    ]);
    table.add_row(vec![
        "parse rate: policy / generator / GRM".to_string(),
        format!(
            "{} / {} / {}",
            show(n.metric("policy", "parse_rate")),
            show(n.metric("generator", "parse_rate")),
            show(n.metric("grm", "parse_rate"))
        ),
    ]);
    Ok(table)
}

/// The round's figures as (tag, value) scalars, the round table's and every eval metric
/// (`eval/<dataset>/<role>/<metric>`): what TensorBoard shows at step = round. Figures whose
/// shards are absent are left out.
pub(crate) fn round_scalars(
    run_dir: &Path,
    m: &Manifest,
    round: u32,
) -> Result<Vec<(String, f64)>> {
    let n = RoundNumbers::read(run_dir, m, round)?;
    let mut out = Vec::new();
    if n.tasks > 0 {
        out.push(("tasks/written".to_string(), n.tasks as f64));
        out.push(("tasks/valid".to_string(), n.valid as f64));
    }
    if let Some(v) = n.valid_after_check {
        out.push(("tasks/valid_after_selfcheck".to_string(), v as f64));
    }
    if let Some(s) = n.solve {
        out.push(("policy/solve_rate".to_string(), s));
    }
    for (role, m) in &n.mean_reward {
        if let Some(m) = m {
            out.push((format!("reward/{role}"), *m));
        }
    }
    if n.groups > 0 {
        out.push((
            "policy/groups_with_signal".to_string(),
            n.groups_with_signal as f64 / n.groups as f64,
        ));
    }
    let verdicts = n.verdicts_correct + n.verdicts_wrong;
    if verdicts > 0 {
        out.push((
            "grm/verdict_correct_rate".to_string(),
            n.verdicts_correct as f64 / verdicts as f64,
        ));
    }
    for e in &n.eval {
        out.push((
            format!("eval/{}/{}/{}", e.dataset, e.role, e.metric),
            e.value,
        ));
    }
    Ok(out)
}

/// The round's training figures per optimizer step, as (global optimizer step, tag, value), the
/// global step being (round − 1) × the round's steps + the step within the round:
/// the updates table's means per role (`train/<role>/loss`, `ratio`, `clip_fraction`, `kl`,
/// `entropy`) and each role's gradient norm and learning rate from `apply`.
pub(crate) fn step_scalars(
    run_dir: &Path,
    m: &Manifest,
    round: u32,
) -> Result<Vec<(u64, String, f64)>> {
    let steps = m
        .entries
        .iter()
        .rev()
        .find(|e| {
            e.stage == "train" && e.round == round && e.status == crate::manifest::Status::Done
        })
        .map_or(1, |e| e.steps.max(1));
    let global =
        |step: u32| u64::from(round.saturating_sub(1)) * u64::from(steps) + u64::from(step);
    let mut out = Vec::new();
    for (step, files) in step_outputs(run_dir, m, "train", round) {
        let updates: Vec<UpdateRow> = read_kind(&files)?;
        let mut by_role: BTreeMap<&str, Vec<&UpdateRow>> = BTreeMap::new();
        for u in &updates {
            by_role.entry(u.role.as_str()).or_default().push(u);
        }
        for (role, rows) in by_role {
            type Field = (&'static str, fn(&UpdateRow) -> f32);
            let fields: [Field; 5] = [
                ("loss", |u| u.loss),
                ("ratio", |u| u.mean_ratio),
                ("clip_fraction", |u| u.clip_fraction),
                ("kl", |u| u.kl),
                ("entropy", |u| u.entropy),
            ];
            for (name, f) in fields {
                if let Some(v) = mean(rows.iter().map(|u| f64::from(f(u)))) {
                    out.push((global(step), format!("train/{role}/{name}"), v));
                }
            }
        }
    }
    for (_, files) in step_outputs(run_dir, m, "apply", round) {
        for n in read_kind::<StepRow>(&files)? {
            out.push((
                global(n.step),
                format!("train/{}/grad_norm", n.role),
                f64::from(n.grad_norm),
            ));
            out.push((global(n.step), format!("train/{}/lr", n.role), n.lr));
        }
    }
    Ok(out)
}

/// Held-out EM, GRM accuracy and stage wall time per round, one column group per run dir: the
/// table `scripts/compare.sh` prints.
pub fn compare_table(run_dirs: &[PathBuf]) -> Result<Table> {
    let mut header = vec!["round".to_string()];
    let mut columns: Vec<BTreeMap<u32, [String; 3]>> = Vec::new();
    let mut rounds = std::collections::BTreeSet::new();
    for dir in run_dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        header.extend([
            format!("{name} EM"),
            format!("{name} GRM acc"),
            format!("{name} wall s"),
        ]);
        let m = Manifest::load(dir)?;
        let mut col = BTreeMap::new();
        let last = m.entries.iter().map(|e| e.round).max().unwrap_or(0);
        for round in 1..=last {
            let eval: Vec<EvalRow> = read_kind(&outputs(dir, &m, "eval", round))?;
            let metric = |role: &str, metric: &str| {
                eval.iter()
                    .find(|e| e.role == role && e.metric == metric)
                    .map(|e| e.value)
            };
            // Only the stages of the run's own pipeline count (a run seeded from a copy of
            // another keeps that run's entries).
            let own = |stage: &str| {
                m.pipeline
                    .as_ref()
                    .is_none_or(|p| p.params.contains_key(stage))
            };
            // The newest finished run of each stage part is the one whose outputs stand.
            let mut newest: BTreeMap<(String, u32, String), f64> = BTreeMap::new();
            for e in m.entries.iter().filter(|e| {
                e.round == round && e.status == crate::manifest::Status::Done && own(&e.stage)
            }) {
                newest.insert(
                    (e.stage.clone(), e.step, e.shard.to_string()),
                    e.wall_s.unwrap_or_default(),
                );
            }
            let wall: f64 = newest.values().sum();
            rounds.insert(round);
            col.insert(
                round,
                [
                    show(metric("policy", "em")),
                    show(metric("grm", "accuracy")),
                    format!("{wall:.0}"),
                ],
            );
        }
        columns.push(col);
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(header);
    for round in rounds {
        let mut row = vec![round.to_string()];
        for col in &columns {
            match col.get(&round) {
                Some(cells) => row.extend(cells.iter().cloned()),
                None => row.extend(["-".to_string(), "-".to_string(), "-".to_string()]),
            }
        }
        table.add_row(row);
    }
    Ok(table)
}
