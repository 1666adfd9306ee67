//! Stage `reward`: every role's reward under the pipeline's scheme and the group-relative
//! advantages GRPO trains on (SPEC §2, §4). The formulas live in `rl`; this stage joins the
//! round's shards (tasks, attempts, judgments) and decides which trajectories train.
//!
//! - Policy: 1 when the attempt is correct (`verifier`: the GRM's verdict, `rule` exact match
//!   against the reference, or `majority` agreement with the group's most common answer, R-Zero's
//!   pseudo-label), plus the format bonus; grouped by task.
//! - Generator: the scheme's function of the task's solve rate `p` for a valid task, 0 otherwise;
//!   validity includes the GRM accepting the generator's own answer at least `v_min` times.
//! - GRM: 1 when its verdict equals the label (`self`: the majority verdict over all judgments of
//!   the same answer to the same question, class-balanced *(ours: the seed's self labels made
//!   concrete)*; `rule`: the answer matches the reference; verification items always carry
//!   their real label).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::generate::{tasks, trajectories};
use super::judge::VERIFICATION;
use super::{Stage, StageContext, StageOutput};
use crate::error::{Error, Result};
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::rl::advantages::{Scale, group_advantages};
use crate::rl::metrics::{exact_match, normalize_answer, sub_exact_match};
use crate::rl::rewards::{
    GeneratorScheme, LabelMode, class_balance, format_bonus, generator_reward, grm_reward,
    repetition_penalties, validity,
};
use crate::seed::stable_u64;
use crate::shards::rows::{JudgmentRow, RewardRow, TaskRow, TrajectoryRow};
use crate::shards::{ShardKind, read_kind, shard_path, write_rows};

pub struct RewardStage;

/// How a policy attempt is decided correct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verifier {
    Grm,
    Rule,
    Majority,
}

/// The reward stage's parameters, parsed.
pub struct Settings {
    verifier: Verifier,
    scheme: GeneratorScheme,
    labels: LabelMode,
    v_min: usize,
    bonus: bool,
    repetition_threshold: f64,
    band: (f64, f64),
    roles: Vec<String>,
    scale: Scale,
}

pub fn settings(params: &Params) -> Result<Settings> {
    let bad = |key: &str, e: String| Error::param(format!("reward.{key}"), e);
    Ok(Settings {
        verifier: match params.str("verifier") {
            "grm" => Verifier::Grm,
            "rule" => Verifier::Rule,
            "majority" => Verifier::Majority,
            other => {
                return Err(bad(
                    "verifier",
                    format!("unknown verifier {other:?} (grm, rule, majority)"),
                ));
            }
        },
        scheme: params
            .str("generator_reward")
            .parse()
            .map_err(|e| bad("generator_reward", e))?,
        labels: params
            .str("grm_labels")
            .parse()
            .map_err(|e| bad("grm_labels", e))?,
        v_min: params.u64("v_min") as usize,
        bonus: params.bool("format_bonus"),
        repetition_threshold: params.f64("repetition_threshold"),
        band: (params.f64("solve_rate_min"), params.f64("solve_rate_max")),
        roles: params
            .str("train_roles")
            .split(',')
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .collect(),
        scale: params
            .str("advantage_scale")
            .parse()
            .map_err(|e| bad("advantage_scale", e))?,
    })
}

impl Stage for RewardStage {
    fn name(&self) -> &'static str {
        "reward"
    }

    fn about(&self) -> &'static str {
        "every role's reward and group-normalised advantages"
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::new(
                "verifier",
                "grm",
                "how an attempt is decided correct: `grm`, `rule` (exact match) or `majority`",
            ),
            ParamSpec::new(
                "generator_reward",
                "entropy",
                "`entropy` (ASL), `uncertainty` (R-Zero) or `learnability` (Absolute Zero)",
            ),
            ParamSpec::new(
                "grm_labels",
                "self",
                "GRM training labels: `self`, `rule` or `real` (only verification items)",
            ),
            ParamSpec::new(
                "v_min",
                4,
                "self-judgments that must accept the generator's answer",
            ),
            ParamSpec::new("format_bonus", true, "add the format bonus to every reward"),
            ParamSpec::new(
                "repetition_threshold",
                0.5,
                "BLEU similarity that clusters questions for R-Zero's repetition penalty",
            ),
            ParamSpec::new(
                "solve_rate_min",
                0.0,
                "train the policy only on tasks solved at least this often",
            ),
            ParamSpec::new(
                "solve_rate_max",
                1.0,
                "train the policy only on tasks solved at most this often",
            ),
            ParamSpec::new(
                "train_roles",
                "policy,generator,grm",
                "roles whose trajectories train (comma-separated)",
            ),
            ParamSpec::new(
                "advantage_scale",
                "group",
                "divide centred rewards by the `group` std, the `batch` std, or `none`",
            ),
        ]
    }

    fn upstream(&self, params: &Params) -> Vec<&'static str> {
        // Judgments matter when the GRM verifies attempts or trains; a pipeline without a judge
        // (Search-R1, R-Zero) must not pick up one that happens to sit in the run dir.
        let grm_trains = params
            .str("train_roles")
            .split(',')
            .any(|r| r.trim() == "grm");
        if params.str("verifier") == "grm" || grm_trains {
            vec!["generate", "rollout", "judge?"]
        } else {
            vec!["generate", "rollout"]
        }
    }

    fn external_inputs(&self, _params: &Params) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let s = settings(ctx.params)?;
        let task_rows = tasks(ctx.input_files("generate"))?;
        let generator_runs = trajectories(ctx.input_files("generate"))?;
        let attempts = trajectories(ctx.input_files("rollout"))?;
        let judge_files: Vec<PathBuf> = ctx.input_files("judge?").to_vec();
        let judgments: Vec<JudgmentRow> = read_kind(&judge_files)?;
        let judge_runs = trajectories(&judge_files)?;
        if s.verifier == Verifier::Grm && judge_files.is_empty() {
            return Err(Error::stage(
                "reward",
                "verifier = grm needs this round's `judge` stage",
            ));
        }
        let rewards = compute(
            &s,
            ctx.seed,
            &task_rows,
            &generator_runs,
            &attempts,
            &judgments,
            &judge_runs,
        );
        let out = shard_path(&ctx.out_dir, ShardKind::Rewards, ctx.shard.index);
        write_rows(&out, &rewards.rows)?;
        Ok(StageOutput {
            files: vec![out],
            summary: rewards.summary(),
        })
    }
}

/// Rewards of one round and the counts a person checks.
pub struct Computed {
    pub rows: Vec<RewardRow>,
    pub tasks: usize,
    pub valid_tasks: usize,
    pub solve_rates: Vec<f64>,
    pub zero_variance_groups: usize,
    pub orphan_judgments: usize,
    pub unjudged_attempts: usize,
    pub unparsable: BTreeMap<String, usize>,
}

impl Computed {
    pub fn summary(&self) -> String {
        let mut by_role: BTreeMap<&str, (f64, usize, usize)> = BTreeMap::new();
        for r in &self.rows {
            let e = by_role.entry(r.role.as_str()).or_default();
            e.0 += f64::from(r.total);
            e.1 += 1;
            e.2 += usize::from(r.train);
        }
        let roles: Vec<String> = by_role
            .iter()
            .map(|(role, (sum, n, train))| {
                format!("{role} {:.3} ({train}/{n} train)", sum / *n as f64)
            })
            .collect();
        let solve =
            self.solve_rates.iter().fold(0.0, |a, b| a + b) / self.solve_rates.len().max(1) as f64;
        let mut s = format!(
            "{}/{} tasks valid, solve rate {solve:.2}; mean reward: {}; {} zero-variance groups",
            self.valid_tasks,
            self.tasks,
            roles.join(", "),
            self.zero_variance_groups
        );
        if self.orphan_judgments > 0 {
            s.push_str(&format!(
                "; {} judgments without a matching trajectory",
                self.orphan_judgments
            ));
        }
        if self.unjudged_attempts > 0 {
            s.push_str(&format!(
                "; {} attempts without a judgment (scored wrong)",
                self.unjudged_attempts
            ));
        }
        let unparsable: Vec<String> = self
            .unparsable
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        if !unparsable.is_empty() {
            s.push_str(&format!("; unparsable: {}", unparsable.join(", ")));
        }
        s
    }
}

fn bonus_of(s: &Settings, t: Option<&TrajectoryRow>) -> f64 {
    match (s.bonus, t) {
        (true, Some(t)) => {
            let own = crate::roles::tags::without_blocks(&t.text, "information");
            let think = own
                .split("</search>")
                .filter(|turn| turn.trim_start().starts_with("<think>"))
                .count()
                .min(t.turns as usize);
            format_bonus(t.turns as usize, think, t.searches > 0)
        }
        _ => 0.0,
    }
}

/// The rewards of one round (pure: the stage only reads and writes around it).
pub fn compute(
    s: &Settings,
    seed: u64,
    task_rows: &[TaskRow],
    generator_runs: &[TrajectoryRow],
    attempts: &[TrajectoryRow],
    judgments: &[JudgmentRow],
    judge_runs: &[TrajectoryRow],
) -> Computed {
    let gen_by_id: BTreeMap<&str, &TrajectoryRow> = generator_runs
        .iter()
        .map(|t| (t.trajectory_id.as_str(), t))
        .collect();
    let judge_by_id: BTreeMap<&str, &TrajectoryRow> = judge_runs
        .iter()
        .map(|t| (t.trajectory_id.as_str(), t))
        .collect();
    let attempt_ids: std::collections::BTreeSet<&str> =
        attempts.iter().map(|a| a.trajectory_id.as_str()).collect();
    let mut policy_verdicts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut self_verdicts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut orphan_judgments = 0;
    for j in judgments {
        let correct = usize::from(j.verdict == "correct");
        match j.target.as_str() {
            "policy" if attempt_ids.contains(j.target_trajectory_id.as_str()) => {
                let e = policy_verdicts.entry(&j.target_trajectory_id).or_default();
                e.0 += correct;
                e.1 += 1;
            }
            "policy" => orphan_judgments += 1,
            "generator" => {
                let e = self_verdicts.entry(&j.task_id).or_default();
                e.0 += correct;
                e.1 += 1;
            }
            _ => {}
        }
    }
    let mut by_task: BTreeMap<&str, Vec<&TrajectoryRow>> = BTreeMap::new();
    for a in attempts {
        by_task.entry(&a.task_id).or_default().push(a);
    }
    let trains = |role: &str| s.roles.iter().any(|r| r == role);
    let mut rows: Vec<RewardRow> = Vec::new();
    let mut unjudged = 0;
    let mut solve_rates = Vec::new();
    let mut valid_tasks = 0;
    let mut zero_variance = 0;

    // Validity after the self-check, and the valid questions for R-Zero's repetition penalty.
    let final_validity: Vec<Option<String>> = task_rows
        .iter()
        .map(|t| {
            if !t.valid {
                return Some(t.invalid_reason.clone().unwrap_or_else(|| "invalid".into()));
            }
            match self_verdicts.get(t.task_id.as_str()) {
                Some(&(correct, n)) if t.template != "labelled" => {
                    validity(&t.question, Some(&t.answer), correct, s.v_min.min(n))
                }
                _ => None,
            }
        })
        .collect();
    let valid_questions: Vec<String> = task_rows
        .iter()
        .zip(&final_validity)
        .filter(|(_, v)| v.is_none())
        .map(|(t, _)| t.question.clone())
        .collect();
    let penalties = if s.scheme == GeneratorScheme::Uncertainty {
        repetition_penalties(&valid_questions, s.repetition_threshold)
    } else {
        vec![0.0; valid_questions.len()]
    };
    let mut penalty_of = valid_questions.iter().zip(penalties);

    for (task, invalid) in task_rows.iter().zip(&final_validity) {
        let group = by_task
            .get(task.task_id.as_str())
            .cloned()
            .unwrap_or_default();
        let golds: Vec<String> = std::iter::once(task.answer.clone())
            .chain(task.answer_aliases.iter().cloned())
            .collect();
        let majority = majority_answer(&group);
        let correct: Vec<bool> = group
            .iter()
            .map(|a| match (s.verifier, &a.answer) {
                (_, None) => false,
                (Verifier::Rule, Some(ans)) => exact_match(ans, &golds) > 0.0,
                (Verifier::Majority, Some(ans)) => {
                    majority.as_deref() == Some(normalize_answer(ans).as_str())
                }
                (Verifier::Grm, Some(_)) => match policy_verdicts.get(a.trajectory_id.as_str()) {
                    Some(&(c, n)) => 2 * c > n,
                    None => {
                        unjudged += 1;
                        false
                    }
                },
            })
            .collect();
        let p = if group.is_empty() {
            0.0
        } else {
            correct.iter().filter(|c| **c).count() as f64 / group.len() as f64
        };
        let valid = invalid.is_none();
        let mut gen_raw = 0.0;
        if valid {
            valid_tasks += 1;
            let penalty = penalty_of.next().map(|(_, p)| p).unwrap_or(0.0);
            gen_raw = (generator_reward(s.scheme, p) - penalty).max(0.0);
            if !group.is_empty() {
                solve_rates.push(p);
            }
        }
        if let Some(gid) = &task.generator_trajectory_id {
            let run = gen_by_id.get(gid.as_str()).copied();
            let bonus = bonus_of(s, run);
            rows.push(RewardRow {
                trajectory_id: gid.clone(),
                task_id: task.task_id.clone(),
                role: "generator".into(),
                group_id: "generator".into(),
                scheme: scheme_name(s.scheme).into(),
                reward: gen_raw as f32,
                format_bonus: bonus as f32,
                total: (gen_raw + bonus) as f32,
                advantage: 0.0,
                label: Some(match invalid {
                    None => "valid".to_string(),
                    Some(r) => format!("invalid: {r}"),
                }),
                train: trains("generator") && run.is_some(),
            });
        }
        let labelled = task.template == "labelled";
        let in_band = p >= s.band.0 && p <= s.band.1;
        let policy_trains = trains("policy") && valid && in_band && (labelled || gen_raw > 0.0);
        let totals: Vec<f64> = group
            .iter()
            .zip(&correct)
            .map(|(a, &c)| f64::from(u8::from(c)) + bonus_of(s, Some(a)))
            .collect();
        if group.len() > 1 && totals.iter().all(|t| *t == totals[0]) {
            zero_variance += 1;
        }
        for ((a, &c), total) in group.iter().zip(&correct).zip(&totals) {
            let reward = f64::from(u8::from(c));
            rows.push(RewardRow {
                trajectory_id: a.trajectory_id.clone(),
                task_id: task.task_id.clone(),
                role: "policy".into(),
                group_id: task.task_id.clone(),
                scheme: match s.verifier {
                    Verifier::Grm => "grm-verdict",
                    Verifier::Rule => "rule-em",
                    Verifier::Majority => "majority-vote",
                }
                .into(),
                reward: reward as f32,
                format_bonus: (total - reward) as f32,
                total: *total as f32,
                advantage: 0.0,
                label: Some(if c { "correct" } else { "wrong" }.into()),
                train: policy_trains,
            });
        }
    }

    rows.extend(grm_rows(s, seed, judgments, &judge_by_id, task_rows));

    // Advantages over the training rows of each group; other rows keep 0.
    let idx: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].train).collect();
    let totals: Vec<f64> = idx.iter().map(|&i| f64::from(rows[i].total)).collect();
    let groups: Vec<String> = idx
        .iter()
        .map(|&i| format!("{}/{}", rows[i].role, rows[i].group_id))
        .collect();
    for (&i, a) in idx.iter().zip(group_advantages(&totals, &groups, s.scale)) {
        rows[i].advantage = a as f32;
    }

    let mut unparsable = BTreeMap::new();
    unparsable.insert(
        "policy".to_string(),
        attempts.iter().filter(|a| !a.parsed).count(),
    );
    unparsable.insert(
        "generator".to_string(),
        generator_runs.iter().filter(|a| !a.parsed).count(),
    );
    unparsable.insert(
        "grm".to_string(),
        judge_runs.iter().filter(|a| !a.parsed).count(),
    );
    Computed {
        rows,
        tasks: task_rows.len(),
        valid_tasks,
        solve_rates,
        zero_variance_groups: zero_variance,
        orphan_judgments,
        unjudged_attempts: unjudged,
        unparsable,
    }
}

/// The GRM's rows: one per judgment the GRM actually ran.
fn grm_rows(
    s: &Settings,
    seed: u64,
    judgments: &[JudgmentRow],
    judge_by_id: &BTreeMap<&str, &TrajectoryRow>,
    task_rows: &[TaskRow],
) -> Vec<RewardRow> {
    let aliases: BTreeMap<&str, &TaskRow> =
        task_rows.iter().map(|t| (t.task_id.as_str(), t)).collect();
    let ran: Vec<&JudgmentRow> = judgments
        .iter()
        .filter(|j| judge_by_id.contains_key(j.judge_trajectory_id.as_str()))
        .collect();
    // Self labels: the majority verdict over every judgment of the same answer to one question.
    let key = |j: &JudgmentRow| {
        format!(
            "{}\u{1f}{}",
            j.task_id,
            normalize_answer(j.candidate_answer.as_deref().unwrap_or(""))
        )
    };
    let mut votes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for j in &ran {
        let e = votes.entry(key(j)).or_default();
        e.0 += usize::from(j.verdict == "correct");
        e.1 += 1;
    }
    let labels: Vec<Option<bool>> = ran
        .iter()
        .map(|j| {
            let candidate = j.candidate_answer.as_deref().unwrap_or("");
            if j.target == VERIFICATION {
                return Some(normalize_answer(candidate) == normalize_answer(&j.reference_answer));
            }
            match s.labels {
                LabelMode::Real => None,
                LabelMode::Rule => Some(match j.target.as_str() {
                    "generator" => true,
                    _ => {
                        let mut golds = vec![j.reference_answer.clone()];
                        if let Some(t) = aliases.get(j.task_id.as_str()) {
                            golds.extend(t.answer_aliases.iter().cloned());
                        }
                        sub_exact_match(candidate, &golds) > 0.0
                    }
                }),
                LabelMode::SelfVerdict => {
                    let (c, n) = votes[&key(j)];
                    Some(2 * c > n)
                }
            }
        })
        .collect();
    // Class balance applies to self labels only; real and rule labels are kept as they are.
    let self_idx: Vec<usize> = (0..ran.len())
        .filter(|&i| {
            s.labels == LabelMode::SelfVerdict
                && ran[i].target != VERIFICATION
                && labels[i].is_some()
        })
        .collect();
    let self_labels: Vec<bool> = self_idx.iter().map(|&i| labels[i] == Some(true)).collect();
    let kept: std::collections::BTreeSet<usize> = class_balance(&self_labels, |k| {
        stable_u64(&[&seed.to_string(), &ran[self_idx[k]].judgment_id])
    })
    .into_iter()
    .map(|k| self_idx[k])
    .collect();
    let trains = s.roles.iter().any(|r| r == "grm");
    ran.iter()
        .zip(labels)
        .enumerate()
        .map(|(i, (j, label))| {
            let run = judge_by_id[j.judge_trajectory_id.as_str()];
            let verdict = j.verdict == "correct";
            let reward = match label {
                Some(l) if j.parsed => grm_reward(verdict, l),
                _ => 0.0,
            };
            let bonus = bonus_of(s, Some(run));
            let balanced_out = self_idx.contains(&i) && !kept.contains(&i);
            RewardRow {
                trajectory_id: j.judge_trajectory_id.clone(),
                task_id: j.task_id.clone(),
                role: "grm".into(),
                group_id: "grm".into(),
                scheme: format!("grm-label/{}", label_mode_name(s.labels, &j.target)),
                reward: reward as f32,
                format_bonus: bonus as f32,
                total: (reward + bonus) as f32,
                advantage: 0.0,
                label: label.map(|l| if l { "correct" } else { "wrong" }.to_string()),
                train: trains && label.is_some() && !balanced_out,
            }
        })
        .collect()
}

fn label_mode_name(mode: LabelMode, target: &str) -> &'static str {
    if target == VERIFICATION {
        return "real";
    }
    match mode {
        LabelMode::SelfVerdict => "self",
        LabelMode::Rule => "rule",
        LabelMode::Real => "real",
    }
}

fn scheme_name(scheme: GeneratorScheme) -> &'static str {
    match scheme {
        GeneratorScheme::Entropy => "asl-entropy",
        GeneratorScheme::Uncertainty => "r-zero",
        GeneratorScheme::Learnability => "azr-learnability",
    }
}

/// The most common normalised answer of a group (ties: the smallest string), R-Zero's
/// pseudo-label.
fn majority_answer(group: &[&TrajectoryRow]) -> Option<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for a in group {
        if let Some(ans) = &a.answer {
            *counts.entry(normalize_answer(ans)).or_default() += 1;
        }
    }
    let best = counts.values().copied().max()?;
    counts.into_iter().find(|(_, n)| *n == best).map(|(a, _)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(verifier: Verifier, scheme: GeneratorScheme, labels: LabelMode) -> Settings {
        Settings {
            verifier,
            scheme,
            labels,
            v_min: 2,
            bonus: false,
            repetition_threshold: 0.5,
            band: (0.0, 1.0),
            roles: vec!["policy".into(), "generator".into(), "grm".into()],
            scale: Scale::Group,
        }
    }

    fn task(id: &str, question: &str, answer: &str) -> TaskRow {
        TaskRow {
            task_id: id.into(),
            round: 1,
            question: question.into(),
            answer: answer.into(),
            answer_aliases: vec![],
            template: "seed".into(),
            parent_task_id: None,
            topic: None,
            generator_trajectory_id: Some(format!("{id}-g")),
            valid: true,
            invalid_reason: None,
        }
    }

    fn traj(id: &str, task: &str, role: &str, answer: Option<&str>) -> TrajectoryRow {
        TrajectoryRow {
            trajectory_id: id.into(),
            task_id: task.into(),
            role: role.into(),
            attempt: 0,
            seed: 0,
            prompt_ids: vec![1],
            completion_ids: vec![2],
            loss_mask: vec![true],
            sampling_logprobs: vec![-1.0],
            text: String::new(),
            turns: 1,
            searches: 0,
            answer: answer.map(str::to_string),
            parsed: answer.is_some(),
            parse_error: answer.is_none().then(|| "no <answer> block".to_string()),
            finish_reason: "stop".into(),
        }
    }

    fn judgment(
        target_traj: &str,
        task: &str,
        target: &str,
        verdict: &str,
        sample: u32,
    ) -> JudgmentRow {
        JudgmentRow {
            judgment_id: format!("{target_traj}-j{sample}"),
            task_id: task.into(),
            target_trajectory_id: target_traj.into(),
            target: target.into(),
            sample,
            question: "Q?".into(),
            reference_answer: "Paris".into(),
            candidate_answer: Some("Paris".into()),
            verdict: verdict.into(),
            parsed: true,
            parse_error: None,
            judge_trajectory_id: format!("{target_traj}-j{sample}"),
        }
    }

    fn row<'a>(c: &'a Computed, id: &str) -> &'a RewardRow {
        c.rows.iter().find(|r| r.trajectory_id == id).unwrap()
    }

    /// Task t1: 4 attempts, the GRM accepts 2 → p = ½, entropy ln 2, advantages ±1/(½+ε)·½.
    /// Task t2: every attempt accepted → p = 1, entropy 0, a zero-variance group (advantages 0,
    /// not NaN), and no policy training on it.
    #[test]
    fn asl_entropy_rewards_and_advantages_by_hand() {
        let tasks = vec![
            task("t1", "What is the capital of France?", "Paris"),
            task("t2", "Which river flows through Rome?", "Tiber"),
        ];
        let gens = vec![
            traj("t1-g", "t1", "generator", Some("q")),
            traj("t2-g", "t2", "generator", Some("q")),
        ];
        let mut attempts = Vec::new();
        let mut judgments = Vec::new();
        for (t, verdicts) in [
            ("t1", ["correct", "wrong", "correct", "wrong"]),
            ("t2", ["correct"; 4]),
        ] {
            for (k, v) in verdicts.iter().enumerate() {
                let id = format!("{t}-p{k}");
                attempts.push(traj(&id, t, "policy", Some("Paris")));
                judgments.push(judgment(&id, t, "policy", v, 0));
            }
            for s in 0..2 {
                judgments.push(judgment(&format!("{t}-g"), t, "generator", "correct", s));
            }
        }
        judgments.push(judgment("nobody-p0", "t1", "policy", "correct", 0));
        let runs: Vec<TrajectoryRow> = judgments
            .iter()
            .filter(|j| j.target_trajectory_id != "nobody-p0")
            .map(|j| traj(&j.judge_trajectory_id, &j.task_id, "grm", Some(&j.verdict)))
            .collect();
        let s = settings(Verifier::Grm, GeneratorScheme::Entropy, LabelMode::Rule);
        let c = compute(&s, 1, &tasks, &gens, &attempts, &judgments, &runs);

        assert!((f64::from(row(&c, "t1-g").reward) - 2f64.ln()).abs() < 1e-6);
        assert_eq!(row(&c, "t2-g").reward, 0.0);
        let expected = 0.5 / (0.5 + crate::rl::advantages::EPS);
        assert!((f64::from(row(&c, "t1-p0").advantage) - expected).abs() < 1e-5);
        assert!((f64::from(row(&c, "t1-p1").advantage) + expected).abs() < 1e-5);
        for k in 0..4 {
            let r = row(&c, &format!("t2-p{k}"));
            assert_eq!(r.advantage, 0.0);
            assert!(
                !r.train,
                "a task solved every time does not train the policy"
            );
        }
        // Generator group: rewards ln 2 and 0 → ±1 after normalisation.
        assert!(row(&c, "t1-g").advantage > 0.99 && row(&c, "t2-g").advantage < -0.99);
        assert_eq!(c.zero_variance_groups, 1);
        assert_eq!(c.orphan_judgments, 1);
        assert_eq!(c.valid_tasks, 2);
        assert!(c.rows.iter().all(|r| r.advantage.is_finite()));
        // Rule labels: every candidate was "Paris" against reference "Paris" → label correct,
        // so a "wrong" verdict earns 0 and a "correct" one 1.
        assert_eq!(row(&c, "t1-p1-j0").reward, 0.0);
        assert_eq!(row(&c, "t1-p0-j0").reward, 1.0);
    }

    #[test]
    fn self_check_invalidates_and_every_reward_equal_gives_zero_advantages() {
        let tasks = vec![task("t1", "What is the capital of France?", "Paris")];
        let gens = vec![traj("t1-g", "t1", "generator", Some("q"))];
        let attempts: Vec<TrajectoryRow> = (0..3)
            .map(|k| traj(&format!("t1-p{k}"), "t1", "policy", None))
            .collect();
        // The GRM accepts the generator's own answer once, v_min is 2: invalid.
        let judgments = vec![
            judgment("t1-g", "t1", "generator", "correct", 0),
            judgment("t1-g", "t1", "generator", "wrong", 1),
        ];
        let s = settings(
            Verifier::Grm,
            GeneratorScheme::Entropy,
            LabelMode::SelfVerdict,
        );
        let c = compute(&s, 1, &tasks, &gens, &attempts, &judgments, &[]);
        let g = row(&c, "t1-g");
        assert_eq!(g.reward, 0.0);
        assert!(
            g.label
                .as_deref()
                .unwrap()
                .starts_with("invalid: the judge accepted")
        );
        assert_eq!(c.valid_tasks, 0);
        assert!(c.rows.iter().all(|r| r.advantage == 0.0));
        assert_eq!(c.unparsable["policy"], 3);
    }

    #[test]
    fn rule_majority_uncertainty_and_learnability_schemes() {
        let tasks = vec![task("t1", "Who wrote Dune, the novel?", "Frank Herbert")];
        let answers = [
            Some("Frank Herbert"),
            Some("the frank herbert"),
            Some("Asimov"),
            None,
        ];
        let attempts: Vec<TrajectoryRow> = answers
            .iter()
            .enumerate()
            .map(|(k, a)| traj(&format!("t1-p{k}"), "t1", "policy", *a))
            .collect();
        let gens = vec![traj("t1-g", "t1", "generator", Some("q"))];
        // Rule: EM after normalisation → 2 of 4 → p = ½; learnability 1 − p = ½.
        let s = settings(
            Verifier::Rule,
            GeneratorScheme::Learnability,
            LabelMode::Rule,
        );
        let c = compute(&s, 1, &tasks, &gens, &attempts, &[], &[]);
        assert_eq!(row(&c, "t1-p1").reward, 1.0);
        assert_eq!(row(&c, "t1-p2").reward, 0.0);
        assert!((row(&c, "t1-g").reward - 0.5).abs() < 1e-6);
        // Majority: "frank herbert" is the pseudo-label; uncertainty 1 − 2|½ − ½| = 1 minus the
        // repetition penalty of a batch of one question (its cluster is the whole batch: 1).
        let s = settings(
            Verifier::Majority,
            GeneratorScheme::Uncertainty,
            LabelMode::Rule,
        );
        let c = compute(&s, 1, &tasks, &gens, &attempts, &[], &[]);
        assert_eq!(row(&c, "t1-p0").reward, 1.0);
        assert_eq!(row(&c, "t1-p3").reward, 0.0);
        assert_eq!(row(&c, "t1-g").reward, 0.0);
    }
}
