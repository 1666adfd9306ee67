//! Stage `reward`: every role's reward under the pipeline's scheme and the group-relative
//! advantages GRPO trains on (SPEC §2, §4). The formulas live in `rl`; this stage joins the
//! round's shards (tasks, attempts, judgments) and decides which trajectories train.
//!
//! - Policy: 1 when the attempt is correct (`verifier`: the GRM's verdict, `rule` exact match
//!   against the reference, or `majority` agreement with the group's most common answer, R-Zero's
//!   pseudo-label), plus the format bonus; grouped by task.
//! - Generator: the scheme's function of the task's solve rate `p` for a valid task, plus the
//!   format bonus; exactly 0 for an invalid task (no bonus either, so an invalid task never
//!   outranks a valid one). Validity, the GRM's self-check included, is decided upstream: the
//!   tasks come from `selfcheck` when the round has one (`v_min` lives there), else `generate`.
//! - GRM: 1 when its verdict equals the label. `self`: the majority verdict of the *other*
//!   judgments of the same answer to the same question (leave-one-out; a key judged once, or
//!   whose other verdicts tie, has no label and does not train), class-balanced per question as
//!   the seed does (a question without disagreement trains no judgment) *(ours: the seed's self
//!   labels made concrete)*. `rule`: SubEM of the attempt against the reference; the
//!   generator's self-judgments have no independent reference (the generator's answer *is* the
//!   reference) and do not train. Verification items always carry their real label.
//! - Dynamic sampling: a training group whose totals are all equal (decided from max − min) has
//!   advantages of exactly 0 and is left out of training (`train = false`); the summary counts
//!   such groups per role.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::kit::{SELF_CHECK_TARGET, VERIFICATION, round_tasks, trajectories};
use super::{Stage, StageContext, StageOutput, Upstream};
use crate::error::{Error, Result};
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::rl::advantages::{Scale, advantages};
use crate::rl::labels::{
    GrmBalance, GrmGroup, Judged, Judgment, LabelMode, grm_labels, grm_trains,
};
use crate::rl::rewards::{
    Attempt, GeneratorScheme, SelfCheck, Verifier, answered_bonus, attempt_correct,
    format_bonus_of_text, grm_reward, majority_answer, penalised_generator_reward, policy_reward,
    repetition_penalties, solve_rate, unread,
};
use crate::roles::Role;
use crate::roles::grm::Verdict;
use crate::roles::tool::results_read;
use crate::seed::stable_u64;
use crate::shards::rows::{JudgmentRow, RewardRow, TaskRow, TrajectoryRow};
use crate::shards::{ShardKind, read_kind, shard_path, write_rows};

pub(crate) struct RewardStage;

/// This round's judgments, when the pipeline has a `judge` stage.
const JUDGE: Upstream = Upstream::optional("judge");

/// Judgments matter when the GRM verifies attempts or trains; a pipeline without a judge
/// (Search-R1, R-Zero) must not pick up one that happens to sit in the run dir.
fn reads_judgments(params: &Params) -> bool {
    params.str("verifier") == "grm" || train_roles(params).is_ok_and(|r| r.contains(&Role::Grm))
}

/// `reward.train_roles`: the roles whose rows train.
fn train_roles(params: &Params) -> Result<Vec<Role>> {
    params
        .str("train_roles")
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| r.parse().map_err(|e| Error::param("reward.train_roles", e)))
        .collect()
}

/// The reward stage's parameters, parsed.
pub struct Settings {
    verifier: Verifier,
    scheme: GeneratorScheme,
    labels: LabelMode,
    balance: GrmBalance,
    grm_group: GrmGroup,
    bonus: bool,
    answered: f64,
    grounded: bool,
    repetition_threshold: f64,
    band: (f64, f64),
    roles: Vec<Role>,
    scale: Scale,
}

pub fn settings(params: &Params) -> Result<Settings> {
    let bad = |key: &str, e: String| Error::param(format!("reward.{key}"), e);
    // The rule needs no grounding (it reads the answer, not the judge), and grounding under it
    // would still overrule the GRM's labels of answers the rule scores right.
    if params.bool("grounded_answers") && params.str("verifier") == "rule" {
        return Err(bad(
            "grounded_answers",
            "applies under the label-free verifiers (`grm`, `majority`), not `verifier = rule`"
                .into(),
        ));
    }
    Ok(Settings {
        verifier: params
            .str("verifier")
            .parse()
            .map_err(|e| bad("verifier", e))?,
        scheme: params
            .str("generator_reward")
            .parse()
            .map_err(|e| bad("generator_reward", e))?,
        labels: params
            .str("grm_labels")
            .parse()
            .map_err(|e| bad("grm_labels", e))?,
        balance: params
            .str("grm_balance")
            .parse()
            .map_err(|e| bad("grm_balance", e))?,
        grm_group: params
            .str("grm_group")
            .parse()
            .map_err(|e| bad("grm_group", e))?,
        bonus: params.bool("format_bonus"),
        answered: params.f64("answered_score"),
        grounded: params.bool("grounded_answers"),
        repetition_threshold: params.f64("repetition_threshold"),
        band: (params.f64("solve_rate_min"), params.f64("solve_rate_max")),
        roles: train_roles(params)?,
        scale: params
            .str("advantage_scale")
            .parse()
            .map_err(|e| bad("advantage_scale", e))?,
    })
}

impl Stage for RewardStage {
    /// 2: an answer taken from the question is wrong under the label-free verifiers.
    /// 3: `answered_score` no longer pays an answer taken from the question.
    /// 4: `rule` GRM labels are class-balanced (`grm_balance`) as `self` labels are.
    /// 5: under `majority`, answers that normalise to nothing do not vote.
    /// 6: with `tool_format = qwen`, a turn after a tool turn that opens with `<think>` counts
    ///    toward the format bonus (the template's scaffolding before it hid it); under
    ///    `advantage_scale = batch` each role is scaled by its own rows' spread;
    ///    SQuAD normalisation deletes punctuation instead of spacing it ("U.S." = "US").
    /// 7: `grm_balance` balances the self-check's judgments apart from the judge's.
    fn version(&self) -> u32 {
        7
    }

    fn name(&self) -> &'static str {
        "reward"
    }

    fn about(&self) -> &'static str {
        "every role's reward and group-normalised advantages"
    }

    /// The typed settings are built when the pipeline loads, so a bad value fails first.
    fn check(&self, params: &Params) -> Result<()> {
        settings(params).map(|_| ())
    }

    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::new(
                "verifier",
                "grm",
                "how an attempt is decided correct: `grm`, `rule` (exact match) or `majority`",
            ).one_of(&["grm", "rule", "majority"]),
            ParamSpec::new(
                "generator_reward",
                "entropy",
                "`entropy` (ASL), `uncertainty` (R-Zero) or `learnability` (Absolute Zero)",
            ).one_of(&["entropy", "uncertainty", "learnability"]),
            ParamSpec::new(
                "grm_labels",
                "self",
                "GRM training labels: `self` (leave-one-out majority), `rule` (SubEM) or `real` (only verification items)",
            ).one_of(&["self", "rule", "real"]),
            ParamSpec::new(
                "grm_balance",
                "question",
                "class-balance `self` and `rule` labels per `question` (the seed), over the `round`, or `none` (docs/rounds.md: `round` measured a collapse with `self` labels)",
            ).one_of(&["question", "round", "none"]),
            ParamSpec::new(
                "grm_group",
                "round",
                "what the GRM's advantages are centred within: the whole `round`, or each `answer` to a task (every verdict on it: `judge.samples` per attempt that gave it, and the self-check's when it is the generator's; verification items together), as GRPO centres the samples of one prompt",
            ).one_of(&["round", "answer"]),
            ParamSpec::new("format_bonus", true, "add the format bonus to every reward"),
            ParamSpec::new(
                "answered_score",
                0.0,
                "a wrong policy attempt that ends in an answer not taken from its question earns this, one without an answer nothing (Search-R1's structure_format_score; 0 = off)",
            ).between(0.0, 0.5),
            ParamSpec::new(
                "grounded_answers",
                false,
                "under the label-free verifiers (`grm`, `majority`), an attempt whose answer is in none of the search results it read is wrong, whatever the judge says, and the GRM's `self` label on a judgment of it says wrong (docs/rounds.md: the judge passes misspelt copies)",
            ),
            ParamSpec::new(
                "repetition_threshold",
                0.5,
                "BLEU similarity that clusters questions for R-Zero's repetition penalty",
            ).between(0.0, 1.0),
            ParamSpec::new(
                "solve_rate_min",
                0.0,
                "train the policy only on tasks solved at least this often",
            ).between(0.0, 1.0),
            ParamSpec::new(
                "solve_rate_max",
                1.0,
                "train the policy only on tasks solved at most this often",
            ).between(0.0, 1.0),
            ParamSpec::new(
                "train_roles",
                "policy,generator,grm",
                "roles whose trajectories train (comma-separated)",
            ).list_of(&["policy", "generator", "grm"]),
            ParamSpec::new(
                "advantage_scale",
                "group",
                "divide centred rewards by the `group` std, the `batch` std (each role its own rows), or `none`",
            ).one_of(&["group", "batch", "none"]),
        ]
    }

    fn upstream(&self, params: &Params) -> Vec<Upstream> {
        let mut up = vec![
            Upstream::needs("generate"),
            Upstream::optional("selfcheck"),
            Upstream::needs("rollout"),
        ];
        if reads_judgments(params) {
            up.push(JUDGE);
        }
        up
    }

    fn external_inputs(&self, _params: &Params) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let s = settings(ctx.params)?;
        let task_rows = round_tasks(ctx)?;
        let generator_runs = trajectories(ctx.input_files(Upstream::needs("generate"))?)?;
        let attempts = trajectories(ctx.input_files(Upstream::needs("rollout"))?)?;
        let judge_files: Vec<PathBuf> = if reads_judgments(ctx.params) {
            ctx.input_files(JUDGE)?.to_vec()
        } else {
            Vec::new()
        };
        // The GRM's judgments of the round: the self-check's and the judge's.
        let grm_files: Vec<PathBuf> = ctx
            .input_files(Upstream::optional("selfcheck"))?
            .iter()
            .chain(&judge_files)
            .cloned()
            .collect();
        let judgments: Vec<JudgmentRow> = read_kind(&grm_files)?;
        let judge_runs = trajectories(&grm_files)?;
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
pub(crate) struct Computed {
    pub rows: Vec<RewardRow>,
    pub tasks: usize,
    pub valid_tasks: usize,
    /// Tasks the self-check rejected (fewer than `v_min` correct verdicts).
    pub self_check_rejected: usize,
    /// Tasks with fewer self-judgments than `v_min` (invalid, never a lowered gate).
    pub too_few_self_judgments: usize,
    pub solve_rates: Vec<f64>,
    /// Training groups whose totals were all equal, left out of training, per role.
    pub flat_groups: BTreeMap<String, usize>,
    /// GRM judgments without a label (`self`: a key judged once, or a tie among the others;
    /// `rule`: the generator's self-judgments), which do not train.
    pub unlabelled_judgments: usize,
    pub orphan_judgments: usize,
    pub unjudged_attempts: usize,
    /// Attempts the verifier called correct whose answer is in none of the results they read
    /// (`grounded_answers`): scored wrong.
    pub unread_answers: usize,
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
        let flat: Vec<String> = self
            .flat_groups
            .iter()
            .map(|(role, n)| format!("{role} {n}"))
            .collect();
        let mut s = format!(
            "{}/{} tasks valid ({} rejected by the self-check, {} with fewer than v_min self-judgments), solve rate {solve:.2}; mean reward: {}; flat groups left out: {}",
            self.valid_tasks,
            self.tasks,
            self.self_check_rejected,
            self.too_few_self_judgments,
            roles.join(", "),
            if flat.is_empty() {
                "none".to_string()
            } else {
                flat.join(", ")
            }
        );
        if self.unlabelled_judgments > 0 {
            s.push_str(&format!(
                "; {} GRM judgments without a label (not trained)",
                self.unlabelled_judgments
            ));
        }
        if self.orphan_judgments > 0 {
            s.push_str(&format!(
                "; {} judgments without a matching trajectory",
                self.orphan_judgments
            ));
        }
        if self.unread_answers > 0 {
            s.push_str(&format!(
                "; {} attempts passed with an answer in none of the results they read (scored wrong)",
                self.unread_answers
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
        (true, Some(t)) => format_bonus_of_text(
            &crate::roles::tool::own_text(&t.text),
            t.turns as usize,
            t.searches > 0,
        ),
        _ => 0.0,
    }
}

/// The rewards of one round (pure: the stage only reads and writes around it). `task_rows` are
/// the round's tasks with their final validity (the self-check's output when the round has
/// one); `judgments` and `judge_runs` are every GRM judgment of the round and its trajectory.
pub(crate) fn compute(
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
    let attempt_ids: BTreeSet<&str> = attempts.iter().map(|a| a.trajectory_id.as_str()).collect();
    let mut policy_verdicts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut orphan_judgments = 0;
    for j in judgments.iter().filter(|j| j.target == "policy") {
        if attempt_ids.contains(j.target_trajectory_id.as_str()) {
            let e = policy_verdicts.entry(&j.target_trajectory_id).or_default();
            e.0 += usize::from(Verdict::says_correct(&j.verdict));
            e.1 += 1;
        } else {
            orphan_judgments += 1;
        }
    }
    let mut by_task: BTreeMap<&str, Vec<&TrajectoryRow>> = BTreeMap::new();
    for a in attempts {
        by_task.entry(&a.task_id).or_default().push(a);
    }
    let trains = |role: Role| s.roles.contains(&role);
    let mut rows: Vec<RewardRow> = Vec::new();
    let mut unjudged = 0;
    let mut unread_answers = 0;
    let mut solve_rates = Vec::new();
    let mut valid_tasks = 0;
    let (mut self_check_rejected, mut too_few_self_judgments) = (0, 0);

    // Validity as decided upstream, and the valid questions for R-Zero's repetition penalty.
    let final_validity: Vec<Option<String>> = task_rows
        .iter()
        .map(|t| (!t.valid).then(|| t.invalid_reason.clone().unwrap_or_else(|| "invalid".into())))
        .collect();
    for reason in final_validity.iter().flatten() {
        match SelfCheck::of_reason(reason) {
            Some("rejected") => self_check_rejected += 1,
            Some(_) => too_few_self_judgments += 1,
            None => {}
        }
    }
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
    // The attempts whose answer is in none of the results they read, when answers must be
    // grounded in them: wrong, and their judgments' `self` labels say wrong too.
    let unread_ids: BTreeSet<&str> = attempts
        .iter()
        .filter(|a| {
            s.grounded
                && a.answer
                    .as_deref()
                    .is_some_and(|x| unread(&results_read(&a.text), x))
        })
        .map(|a| a.trajectory_id.as_str())
        .collect();

    for (task, invalid) in task_rows.iter().zip(&final_validity) {
        let group = by_task
            .get(task.task_id.as_str())
            .cloned()
            .unwrap_or_default();
        let golds: Vec<String> = std::iter::once(task.answer.clone())
            .chain(task.answer_aliases.iter().cloned())
            .collect();
        let majority = majority_answer(group.iter().filter_map(|a| a.answer.as_deref()));
        let (correct, answered): (Vec<bool>, Vec<f64>) = group
            .iter()
            .map(|a| {
                let attempt = Attempt {
                    question: &task.question,
                    answer: a.answer.as_deref(),
                    golds: &golds,
                    majority: majority.as_deref(),
                    verdicts: policy_verdicts.get(a.trajectory_id.as_str()).copied(),
                    unread: unread_ids.contains(a.trajectory_id.as_str()),
                };
                let c = attempt_correct(s.verifier, &attempt).unwrap_or_else(|| {
                    unjudged += 1;
                    false
                });
                let unchecked = Attempt {
                    unread: false,
                    ..attempt
                };
                if attempt.unread && !c && attempt_correct(s.verifier, &unchecked) == Some(true) {
                    unread_answers += 1;
                }
                (c, answered_bonus(&attempt, c, s.answered))
            })
            .unzip();
        let p = solve_rate(&correct);
        let valid = invalid.is_none();
        let mut gen_raw = 0.0;
        if valid {
            valid_tasks += 1;
            let penalty = penalty_of.next().map(|(_, p)| p).unwrap_or(0.0);
            gen_raw = penalised_generator_reward(s.scheme, p, penalty);
            if !group.is_empty() {
                solve_rates.push(p);
            }
        }
        if let Some(gid) = &task.generator_trajectory_id {
            let run = gen_by_id.get(gid.as_str()).copied();
            // An invalid task earns nothing, format bonus included: a well-formatted invalid
            // task must never outrank a valid one.
            let bonus = if valid { bonus_of(s, run) } else { 0.0 };
            rows.push(RewardRow {
                trajectory_id: gid.clone(),
                task_id: task.task_id.clone(),
                role: Role::Generator.as_str().into(),
                group_id: Role::Generator.as_str().into(),
                scheme: s.scheme.row_name().into(),
                reward: gen_raw as f32,
                format_bonus: bonus as f32,
                total: (gen_raw + bonus) as f32,
                advantage: 0.0,
                label: Some(match invalid {
                    None => "valid".to_string(),
                    Some(r) => format!("invalid: {r}"),
                }),
                train: trains(Role::Generator) && run.is_some(),
            });
        }
        let labelled = task.template == "labelled";
        let in_band = p >= s.band.0 && p <= s.band.1;
        let policy_trains = trains(Role::Policy) && valid && in_band && (labelled || gen_raw > 0.0);
        for ((a, &c), answered) in group.iter().zip(&correct).zip(answered) {
            let reward = policy_reward(c);
            let total = reward + bonus_of(s, Some(a)) + answered;
            rows.push(RewardRow {
                trajectory_id: a.trajectory_id.clone(),
                task_id: task.task_id.clone(),
                role: Role::Policy.as_str().into(),
                group_id: task.task_id.clone(),
                scheme: s.verifier.row_name().into(),
                reward: reward as f32,
                format_bonus: (total - reward) as f32,
                total: total as f32,
                advantage: 0.0,
                label: Some(Verdict::from_correct(c).name().into()),
                train: policy_trains,
            });
        }
    }

    let grm = grm_rows(s, seed, judgments, &judge_by_id, task_rows, &unread_ids);
    let unlabelled_judgments = grm.iter().filter(|r| r.label.is_none()).count();
    rows.extend(grm);

    // Advantages over the training rows of each group, one role at a time (a batch scale is the
    // spread of that role's rows alone: the policy's 0/1 rewards are not scaled by how many
    // entropy rewards the generator has this round); other rows keep 0. A flat group (every
    // total equal) has no learning signal: exactly 0, and out of the step.
    let mut by_role: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate().filter(|(_, r)| r.train) {
        by_role.entry(row.role.clone()).or_default().push(i);
    }
    let mut flat_groups: BTreeMap<String, usize> = BTreeMap::new();
    for (role, members) in by_role {
        let totals: Vec<f64> = members.iter().map(|&i| f64::from(rows[i].total)).collect();
        let groups: Vec<String> = members.iter().map(|&i| rows[i].group_id.clone()).collect();
        let adv = advantages(&totals, &groups, s.scale);
        let mut flat: BTreeSet<&str> = BTreeSet::new();
        for (k, &i) in members.iter().enumerate() {
            rows[i].advantage = adv.values[k] as f32;
            if adv.flat[k] {
                rows[i].train = false;
                flat.insert(&groups[k]);
            }
        }
        if !flat.is_empty() {
            flat_groups.insert(role, flat.len());
        }
    }

    let mut unparsable = BTreeMap::new();
    unparsable.insert(
        Role::Policy.as_str().to_string(),
        attempts.iter().filter(|a| !a.parsed).count(),
    );
    unparsable.insert(
        Role::Generator.as_str().to_string(),
        generator_runs.iter().filter(|a| !a.parsed).count(),
    );
    unparsable.insert(
        Role::Grm.as_str().to_string(),
        judge_runs.iter().filter(|a| !a.parsed).count(),
    );
    Computed {
        rows,
        tasks: task_rows.len(),
        valid_tasks,
        self_check_rejected,
        too_few_self_judgments,
        solve_rates,
        flat_groups,
        unlabelled_judgments,
        orphan_judgments,
        unjudged_attempts: unjudged,
        unread_answers,
        unparsable,
    }
}

/// The GRM's rows: one per judgment the GRM actually ran (self-check and judge alike).
fn grm_rows(
    s: &Settings,
    seed: u64,
    judgments: &[JudgmentRow],
    judge_by_id: &BTreeMap<&str, &TrajectoryRow>,
    task_rows: &[TaskRow],
    unread_ids: &BTreeSet<&str>,
) -> Vec<RewardRow> {
    let aliases: BTreeMap<&str, &TaskRow> =
        task_rows.iter().map(|t| (t.task_id.as_str(), t)).collect();
    let ran: Vec<&JudgmentRow> = judgments
        .iter()
        .filter(|j| judge_by_id.contains_key(j.judge_trajectory_id.as_str()))
        .collect();
    let golds: Vec<Vec<String>> = ran
        .iter()
        .map(|j| {
            let mut golds = vec![j.reference_answer.clone()];
            if let Some(t) = aliases.get(j.task_id.as_str()) {
                golds.extend(t.answer_aliases.iter().cloned());
            }
            golds
        })
        .collect();
    let judged: Vec<Judgment> = ran
        .iter()
        .zip(&golds)
        .map(|(j, golds)| Judgment {
            question: &j.task_id,
            candidate: j.candidate_answer.as_deref().unwrap_or(""),
            parsed: j.parsed,
            said_correct: Verdict::says_correct(&j.verdict),
            judged: if j.target == VERIFICATION {
                Judged::Verification {
                    gold: &j.reference_answer,
                }
            } else if j.target == SELF_CHECK_TARGET {
                Judged::SelfCheck
            } else {
                Judged::Attempt {
                    golds,
                    unread: unread_ids.contains(j.target_trajectory_id.as_str()),
                }
            },
        })
        .collect();
    let labels = grm_labels(s.labels, &judged);
    let kept = grm_trains(s.labels, s.balance, &judged, &labels, |i| {
        stable_u64(&[&seed.to_string(), &ran[i].judgment_id])
    });
    let trains = s.roles.contains(&Role::Grm);
    ran.iter()
        .zip(&judged)
        .enumerate()
        .map(|(i, (j, judgment))| {
            let run = judge_by_id[j.judge_trajectory_id.as_str()];
            let label = labels[i];
            let reward = match label {
                Some(l) if j.parsed => grm_reward(judgment.said_correct, l),
                _ => 0.0,
            };
            let bonus = bonus_of(s, Some(run));
            RewardRow {
                trajectory_id: j.judge_trajectory_id.clone(),
                task_id: j.task_id.clone(),
                role: Role::Grm.as_str().into(),
                group_id: s.grm_group.group_id(judgment),
                scheme: s.labels.row_name(&judgment.judged).into(),
                reward: reward as f32,
                format_bonus: bonus as f32,
                total: (reward + bonus) as f32,
                advantage: 0.0,
                label: label.map(|l| Verdict::from_correct(l).name().to_string()),
                train: trains && kept[i],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::rows::fixtures::{task, trajectory as traj};

    fn settings(verifier: Verifier, scheme: GeneratorScheme, labels: LabelMode) -> Settings {
        Settings {
            verifier,
            scheme,
            labels,
            balance: GrmBalance::Question,
            grm_group: GrmGroup::Round,
            bonus: false,
            answered: 0.0,
            grounded: false,
            repetition_threshold: 0.5,
            band: (0.0, 1.0),
            roles: Role::ALL.to_vec(),
            scale: Scale::Group,
        }
    }

    /// A trajectory whose format bonus is 5/12: three turns, two opening with a think block,
    /// and a search ((2/3 + 1) / 4).
    fn five_twelfths(id: &str, task: &str, role: &str, answer: Option<&str>) -> TrajectoryRow {
        TrajectoryRow {
            text: "<think>a</think><search>q</search><think>b</think><search>r</search>\
                   so <answer>x</answer>"
                .into(),
            turns: 3,
            searches: 2,
            ..traj(id, task, role, answer)
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

    /// The GRM trajectory of every judgment.
    /// The GRM rows that train when only the GRM trains, under `labels` and `balance` (seed 9):
    /// (judgment trajectory id, label), sorted.
    fn trained_grm_rows(
        labels: LabelMode,
        balance: GrmBalance,
        tasks: &[TaskRow],
        attempts: &[TrajectoryRow],
        judgments: &[JudgmentRow],
    ) -> Vec<(String, String)> {
        let mut s = settings(Verifier::Grm, GeneratorScheme::Entropy, labels);
        s.roles = vec![Role::Grm];
        s.balance = balance;
        let c = compute(&s, 9, tasks, &[], attempts, judgments, &runs_of(judgments));
        let mut rows: Vec<(String, String)> = c
            .rows
            .iter()
            .filter(|r| r.train)
            .map(|r| (r.trajectory_id.clone(), r.label.clone().unwrap_or_default()))
            .collect();
        rows.sort();
        rows
    }

    fn runs_of(judgments: &[JudgmentRow]) -> Vec<TrajectoryRow> {
        judgments
            .iter()
            .map(|j| traj(&j.judge_trajectory_id, &j.task_id, "grm", Some(&j.verdict)))
            .collect()
    }

    fn row<'a>(c: &'a Computed, id: &str) -> &'a RewardRow {
        c.rows.iter().find(|r| r.trajectory_id == id).unwrap()
    }

    /// `judge.samples = 4` with `grm_group = answer`: the verdicts on one answer to the task are
    /// one group. p0's 3 correct / 1 wrong: the policy's reward takes the majority (correct);
    /// p3 gave the same answer ("paris" normalised) and four correct verdicts, so the eight
    /// verdicts are one group, every leave-one-out label says correct, the seven agreeing
    /// verdicts gain and the dissenter loses. p1's four correct verdicts agree with their
    /// labels: a flat group, out of the step. p2's 2/2 tie: wrong for the policy, and its labels
    /// (each the others' 2-1 majority, the opposite verdict) pay none of its verdicts, so it is
    /// flat too. Grouped by `round`, the same rows are one group and p1's verdicts gain too.
    #[test]
    fn sampled_verdicts_are_grouped_by_the_answer_they_judge() {
        let tasks = vec![task("t1", "What is the capital of France?", "Paris")];
        let mut attempts = Vec::new();
        let mut judgments = Vec::new();
        let answers = ["Paris", "Lyon", "Nice", "paris."];
        let verdicts = [
            ["correct", "correct", "wrong", "correct"],
            ["correct"; 4],
            ["correct", "wrong", "wrong", "correct"],
            ["correct"; 4],
        ];
        for (k, (answer, vs)) in answers.iter().zip(verdicts).enumerate() {
            let id = format!("t1-p{k}");
            attempts.push(traj(&id, "t1", "policy", Some(answer)));
            for (sample, v) in vs.iter().enumerate() {
                let mut j = judgment(&id, "t1", "policy", v, sample as u32);
                j.candidate_answer = Some(answer.to_string());
                judgments.push(j);
            }
        }
        let runs = runs_of(&judgments);
        let mut s = settings(
            Verifier::Grm,
            GeneratorScheme::Entropy,
            LabelMode::SelfVerdict,
        );
        s.balance = GrmBalance::None;
        s.grm_group = GrmGroup::Answer;
        let c = compute(&s, 1, &tasks, &[], &attempts, &judgments, &runs);
        let labels: Vec<&str> = (0..3)
            .map(|k| row(&c, &format!("t1-p{k}")).label.as_deref().unwrap())
            .collect();
        assert_eq!(labels, ["correct", "correct", "wrong"]);
        let paris: Vec<&RewardRow> = [0, 3]
            .iter()
            .flat_map(|k| (0..4).map(move |j| format!("t1-p{k}-j{j}")))
            .map(|id| row(&c, &id))
            .collect();
        assert!(
            paris
                .iter()
                .all(|r| r.group_id == "grm/t1/paris" && r.train)
        );
        assert!(paris.iter().all(|r| r.label.as_deref() == Some("correct")));
        assert_eq!(paris[2].reward, 0.0);
        assert!(paris[2].advantage < 0.0);
        assert!((0..8).filter(|&j| j != 2).all(|j| paris[j].advantage > 0.0));
        let sum: f32 = paris.iter().map(|r| r.advantage).sum();
        assert!(sum.abs() < 1e-5, "centred within the answer: {sum}");
        for k in [1, 2] {
            for j in 0..4 {
                let r = row(&c, &format!("t1-p{k}-j{j}"));
                assert_eq!((r.advantage, r.train), (0.0, false), "t1-p{k}-j{j}");
            }
        }
        assert_eq!(c.flat_groups.get("grm"), Some(&2));

        s.grm_group = GrmGroup::Round;
        let c = compute(&s, 1, &tasks, &[], &attempts, &judgments, &runs);
        let r = row(&c, "t1-p1-j0");
        assert_eq!(r.group_id, "grm");
        assert!(r.train && r.advantage > 0.0);
    }

    /// Task t1: 4 attempts, the GRM accepts 2 → p = ½, entropy ln 2, advantages ±1/(½+ε)·½.
    /// Task t2: every attempt accepted → p = 1, entropy 0, and no policy training on it.
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
        let runs: Vec<TrajectoryRow> = runs_of(&judgments)
            .into_iter()
            .filter(|t| !t.trajectory_id.starts_with("nobody"))
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
        assert!(c.flat_groups.is_empty(), "{:?}", c.flat_groups);
        assert_eq!(c.orphan_judgments, 1);
        assert_eq!(c.valid_tasks, 2);
        assert!(c.rows.iter().all(|r| r.advantage.is_finite()));
        // Rule labels: every candidate was "Paris" against reference "Paris" → label correct,
        // so a "wrong" verdict earns 0 and a "correct" one 1.
        assert_eq!(row(&c, "t1-p1-j0").reward, 0.0);
        assert_eq!(row(&c, "t1-p0-j0").reward, 1.0);
    }

    /// `rule` labels: the generator's self-judgments have no independent reference, so they get
    /// no label and do not train (SubEM against its own answer would say correct every time);
    /// attempts' judgments keep their SubEM label.
    #[test]
    fn rule_labels_leave_the_generators_self_judgments_out() {
        let tasks = vec![task("t1", "What is the capital of France?", "Paris")];
        let gens = vec![traj("t1-g", "t1", "generator", Some("q"))];
        let attempts = vec![
            traj("t1-p0", "t1", "policy", Some("Paris")),
            traj("t1-p1", "t1", "policy", Some("Lyon")),
        ];
        let mut lyon = judgment("t1-p1", "t1", "policy", "correct", 0);
        lyon.candidate_answer = Some("Lyon".into());
        let judgments = vec![
            judgment("t1-g", "t1", "generator", "correct", 0),
            judgment("t1-g", "t1", "generator", "wrong", 1),
            judgment("t1-p0", "t1", "policy", "correct", 0),
            lyon,
        ];
        let s = settings(Verifier::Grm, GeneratorScheme::Entropy, LabelMode::Rule);
        let c = compute(
            &s,
            1,
            &tasks,
            &gens,
            &attempts,
            &judgments,
            &runs_of(&judgments),
        );
        for id in ["t1-g-j0", "t1-g-j1"] {
            let r = row(&c, id);
            assert_eq!(
                (r.label.as_deref(), r.train, r.reward),
                (None, false, 0.0),
                "{id}"
            );
        }
        assert_eq!(row(&c, "t1-p0-j0").label.as_deref(), Some("correct"));
        assert_eq!(row(&c, "t1-p1-j0").label.as_deref(), Some("wrong"));
        assert_eq!(row(&c, "t1-p1-j0").reward, 0.0);
        assert!(row(&c, "t1-p0-j0").train && row(&c, "t1-p1-j0").train);
        assert_eq!(c.unlabelled_judgments, 2);
    }

    /// `self` labels are leave-one-out: the generator's answer "Paris" judged correct, correct,
    /// wrong by the self-check and correct on one attempt → key (t1, paris) has 3 of 4 correct:
    /// each correct verdict sees 2 of 3 others correct (label correct, reward 1), the wrong one
    /// 3 of 3 (label correct, reward 0). The attempt answering "Lyon" is judged once: a single
    /// vote has no label and does not train (the old rule labelled it with its own verdict).
    #[test]
    fn self_labels_are_leave_one_out_and_a_single_vote_does_not_train() {
        let tasks = vec![task("t1", "What is the capital of France?", "Paris")];
        let gens = vec![traj("t1-g", "t1", "generator", Some("q"))];
        let attempts = vec![
            traj("t1-p0", "t1", "policy", Some("Paris")),
            traj("t1-p1", "t1", "policy", Some("Lyon")),
        ];
        let mut lyon = judgment("t1-p1", "t1", "policy", "correct", 0);
        lyon.candidate_answer = Some("Lyon".into());
        let judgments = vec![
            judgment("t1-g", "t1", "generator", "correct", 0),
            judgment("t1-g", "t1", "generator", "correct", 1),
            judgment("t1-g", "t1", "generator", "wrong", 2),
            judgment("t1-p0", "t1", "policy", "correct", 0),
            lyon,
        ];
        let mut s = settings(
            Verifier::Grm,
            GeneratorScheme::Entropy,
            LabelMode::SelfVerdict,
        );
        s.roles = vec![Role::Grm];
        let c = compute(
            &s,
            1,
            &tasks,
            &gens,
            &attempts,
            &judgments,
            &runs_of(&judgments),
        );
        for id in ["t1-g-j0", "t1-g-j1", "t1-p0-j0"] {
            let r = row(&c, id);
            assert_eq!(
                (r.label.as_deref(), r.reward),
                (Some("correct"), 1.0),
                "{id}"
            );
        }
        let wrong = row(&c, "t1-g-j2");
        assert_eq!(
            (wrong.label.as_deref(), wrong.reward),
            (Some("correct"), 0.0)
        );
        let single = row(&c, "t1-p1-j0");
        assert_eq!((single.label.as_deref(), single.train), (None, false));
        assert_eq!(c.unlabelled_judgments, 1);
        // Per-question balance: question t1 has 4 labels, all correct → no disagreement, so
        // nothing of it trains (the seed drops such questions).
        assert!(c.rows.iter().filter(|r| r.role == "grm").all(|r| !r.train));
    }

    /// Balancing is per question, the self-check's judgments apart from the judge's: question
    /// a's judge labels are wrong ×1 / correct ×3 → its wrong one and one correct train; its
    /// self-check labels are all correct → none trains (balanced together with the judge's, they
    /// taught the judge to say "correct" whenever it sees no reference: bl20); question b's
    /// labels are all correct → none trains, even though batch-wide balancing could have kept
    /// one of b's.
    #[test]
    fn self_labels_are_class_balanced_per_question() {
        let tasks = vec![
            task("a", "What is the capital of France?", "Paris"),
            task("b", "Which river flows through Rome?", "Tiber"),
        ];
        // Question a: the self-check's "Paris" judged c, c, c → LOO labels c, c, c; the
        // attempts' "Lyon" judged w, w, c → the two w's see 1 w + 1 c (a tie: no label), the c
        // sees w, w → label wrong; their "Paris" judged c, c, c → each sees 5 c of 5 (the
        // self-check's votes count: the same answer to the same question) → label correct.
        // (The label-wrong row said correct and earns 0, the label-correct rows earn 1: not a
        // flat group.)
        let mut judgments = Vec::new();
        for k in 0..3 {
            judgments.push(judgment("a-g", "a", "generator", "correct", k));
        }
        for (k, v) in ["wrong", "wrong", "correct"].iter().enumerate() {
            let mut j = judgment(&format!("a-p{k}"), "a", "policy", v, 0);
            j.candidate_answer = Some("Lyon".into());
            judgments.push(j);
        }
        for k in 3..6 {
            judgments.push(judgment(&format!("a-p{k}"), "a", "policy", "correct", 0));
        }
        for k in 0..3 {
            let mut j = judgment("b-g", "b", "generator", "correct", k);
            j.candidate_answer = Some("Tiber".into());
            judgments.push(j);
        }
        let attempts: Vec<TrajectoryRow> = (0..6)
            .map(|k| {
                let answer = if k < 3 { "Lyon" } else { "Paris" };
                traj(&format!("a-p{k}"), "a", "policy", Some(answer))
            })
            .collect();
        let mut s = settings(
            Verifier::Grm,
            GeneratorScheme::Entropy,
            LabelMode::SelfVerdict,
        );
        s.roles = vec![Role::Grm];
        let c = compute(
            &s,
            9,
            &tasks,
            &[],
            &attempts,
            &judgments,
            &runs_of(&judgments),
        );
        let label = |id: &str| row(&c, id).label.clone();
        assert_eq!(label("a-p2-j0").as_deref(), Some("wrong"));
        assert_eq!((label("a-p0-j0"), label("a-p1-j0")), (None, None));
        let trained: Vec<&str> = c
            .rows
            .iter()
            .filter(|r| r.train)
            .map(|r| r.trajectory_id.as_str())
            .collect();
        // Question a: its wrong label (a-p2) and one of its three correct judge labels.
        assert_eq!(trained.len(), 2, "{trained:?}");
        assert!(trained.contains(&"a-p2-j0"));
        assert!(
            trained.iter().all(|id| id.starts_with("a-p")),
            "{trained:?}"
        );
    }

    /// `grm_balance = round` balances over the round, the self-check's judgments apart: the
    /// judge's one wrong label (a-p2) and one of its three correct ones; the self-check's six
    /// labels are all correct, so none of them trains. `none` trains all ten labelled judgments.
    #[test]
    fn self_labels_balance_over_the_round_or_not_at_all() {
        let tasks = vec![
            task("a", "What is the capital of France?", "Paris"),
            task("b", "Which river flows through Rome?", "Tiber"),
        ];
        let mut judgments = Vec::new();
        for k in 0..3 {
            judgments.push(judgment("a-g", "a", "generator", "correct", k));
        }
        for (k, v) in ["wrong", "wrong", "correct"].iter().enumerate() {
            let mut j = judgment(&format!("a-p{k}"), "a", "policy", v, 0);
            j.candidate_answer = Some("Lyon".into());
            judgments.push(j);
        }
        for k in 3..6 {
            judgments.push(judgment(&format!("a-p{k}"), "a", "policy", "correct", 0));
        }
        for k in 0..3 {
            let mut j = judgment("b-g", "b", "generator", "correct", k);
            j.candidate_answer = Some("Tiber".into());
            judgments.push(j);
        }
        let attempts: Vec<TrajectoryRow> = (0..6)
            .map(|k| {
                let answer = if k < 3 { "Lyon" } else { "Paris" };
                traj(&format!("a-p{k}"), "a", "policy", Some(answer))
            })
            .collect();
        let trained = |balance| {
            trained_grm_rows(
                LabelMode::SelfVerdict,
                balance,
                &tasks,
                &attempts,
                &judgments,
            )
        };
        let round = trained(GrmBalance::Round);
        assert_eq!(round.len(), 2, "{round:?}");
        assert!(round.contains(&("a-p2-j0".to_string(), "wrong".to_string())));
        assert_eq!(round.iter().filter(|(_, l)| l == "correct").count(), 1);
        assert!(
            round.iter().all(|(id, _)| id.starts_with("a-p")),
            "{round:?}"
        );
        let all = trained(GrmBalance::None);
        assert_eq!(all.len(), 10, "{all:?}");
        assert_eq!(all.iter().filter(|(_, l)| l == "wrong").count(), 1);
    }

    /// `rule` labels are class-balanced as `self` labels are: a round of one right attempt and
    /// three wrong ones trains the right one and one seeded wrong one over the `round`, the two
    /// of question a (the only one with both labels) per `question`, and all four with `none`.
    #[test]
    fn rule_labels_are_class_balanced() {
        let tasks = vec![
            task("a", "What is the capital of France?", "Paris"),
            task("b", "Which river flows through Rome?", "Tiber"),
        ];
        let attempts = vec![
            traj("a-p0", "a", "policy", Some("Paris")),
            traj("a-p1", "a", "policy", Some("Lyon")),
            traj("b-p0", "b", "policy", Some("Arno")),
            traj("b-p1", "b", "policy", Some("Po")),
        ];
        let judgments: Vec<JudgmentRow> = attempts
            .iter()
            .map(|a| {
                let mut j = judgment(&a.trajectory_id, &a.task_id, "policy", "correct", 0);
                j.candidate_answer = a.answer.clone();
                j
            })
            .collect();
        let trained =
            |balance| trained_grm_rows(LabelMode::Rule, balance, &tasks, &attempts, &judgments);
        let round = trained(GrmBalance::Round);
        assert_eq!(round.len(), 2, "{round:?}");
        assert!(round.contains(&("a-p0-j0".to_string(), "correct".to_string())));
        assert_eq!(round.iter().filter(|(_, l)| l == "wrong").count(), 1);
        let per_question = trained(GrmBalance::Question);
        let ids: Vec<&str> = per_question.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["a-p0-j0", "a-p1-j0"]);
        assert_eq!(trained(GrmBalance::None).len(), 4);
    }

    /// An invalid task (here: the self-check rejected it upstream, or it had too few
    /// self-judgments) earns exactly 0, format bonus included, and the summary counts both kinds.
    #[test]
    fn invalid_tasks_get_no_format_bonus_and_self_check_failures_are_counted() {
        use crate::rl::rewards::{SelfCheck, self_check};
        let mut rejected = task("t1", "What is the capital of France?", "Paris");
        rejected.valid = false;
        rejected.invalid_reason = self_check(1, 3, 2).reason();
        let mut few = task("t2", "Which river flows through Rome?", "Tiber");
        few.valid = false;
        few.invalid_reason = self_check(1, 1, 2).reason();
        let ok = task("t3", "Who wrote the novel Dune?", "Frank Herbert");
        let tasks = vec![rejected, few, ok];
        let gens: Vec<TrajectoryRow> = ["t1", "t2", "t3"]
            .iter()
            .map(|t| five_twelfths(&format!("{t}-g"), t, "generator", Some("q")))
            .collect();
        let mut s = settings(Verifier::Rule, GeneratorScheme::Entropy, LabelMode::Rule);
        s.bonus = true;
        let c = compute(&s, 1, &tasks, &gens, &[], &[], &[]);
        for id in ["t1-g", "t2-g"] {
            let r = row(&c, id);
            assert_eq!(
                (
                    r.reward.to_bits(),
                    r.format_bonus.to_bits(),
                    r.total.to_bits()
                ),
                (0, 0, 0),
                "{id}: {r:?}"
            );
            assert!(
                r.label
                    .as_deref()
                    .unwrap()
                    .starts_with("invalid: self-check")
            );
        }
        // The valid task keeps its bonus (and its entropy, 0 with no attempts).
        assert!((row(&c, "t3-g").total - 5.0 / 12.0).abs() < 1e-6);
        assert!(row(&c, "t3-g").total > row(&c, "t1-g").total);
        assert_eq!((c.self_check_rejected, c.too_few_self_judgments), (1, 1));
        assert_eq!(c.valid_tasks, 1);
        assert!(
            c.summary()
                .contains("1 rejected by the self-check, 1 with fewer than v_min"),
            "{}",
            c.summary()
        );
        assert!(matches!(
            self_check(1, 1, 2),
            SelfCheck::TooFewJudgments { .. }
        ));
    }

    /// Eight attempts that all earn 0 + a format bonus of 5/12: a flat group (decided from
    /// max − min; the float residue case is `rl::advantages`' test). Its advantages are exactly
    /// 0 under every scale, it leaves training, and the summary counts it per role.
    #[test]
    fn a_flat_group_of_eight_five_twelfths_is_exactly_zero_and_left_out() {
        let mut t = task("t1", "What is the capital of France?", "Paris");
        t.template = "labelled".into();
        t.generator_trajectory_id = None;
        let mut u = task("t2", "Which river flows through Rome?", "Tiber");
        u.template = "labelled".into();
        u.generator_trajectory_id = None;
        let mut attempts: Vec<TrajectoryRow> = (0..8)
            .map(|k| five_twelfths(&format!("t1-p{k}"), "t1", "policy", Some("Lyon")))
            .collect();
        attempts.push(traj("t2-p0", "t2", "policy", Some("Tiber")));
        attempts.push(traj("t2-p1", "t2", "policy", Some("Po")));
        let mut s = settings(Verifier::Rule, GeneratorScheme::Entropy, LabelMode::Rule);
        s.bonus = true;
        s.roles = vec![Role::Policy];
        for scale in [Scale::Group, Scale::Batch, Scale::None] {
            s.scale = scale;
            let c = compute(&s, 1, &[t.clone(), u.clone()], &[], &attempts, &[], &[]);
            for k in 0..8 {
                let r = row(&c, &format!("t1-p{k}"));
                assert!((f64::from(r.total) - 5.0 / 12.0).abs() < 1e-6);
                assert_eq!(r.advantage.to_bits(), 0, "{scale:?}: {r:?}");
                assert!(!r.train, "a flat group is left out of training");
            }
            assert!(row(&c, "t2-p0").train && row(&c, "t2-p0").advantage > 0.0);
            assert_eq!(c.flat_groups.get("policy"), Some(&1), "{scale:?}");
            assert!(c.summary().contains("flat groups left out: policy 1"));
        }
    }

    /// Under `advantage_scale = batch` a role is scaled by its own rows' spread: training the
    /// generator beside the policy leaves the policy's advantages as they are.
    #[test]
    fn a_batch_scale_is_each_roles_own() {
        let tasks = vec![
            task("t1", "What is the capital of France?", "Paris"),
            task("t2", "Which river flows through Rome?", "Tiber"),
        ];
        let mut attempts = Vec::new();
        for (t, right, answers) in [("t1", "Paris", 2), ("t2", "Tiber", 1)] {
            for k in 0..4 {
                let a = if k < answers { right } else { "Lyon" };
                attempts.push(traj(&format!("{t}-p{k}"), t, "policy", Some(a)));
            }
        }
        let gens = vec![
            traj("t1-g", "t1", "generator", Some("q")),
            traj("t2-g", "t2", "generator", Some("q")),
        ];
        let mut s = settings(Verifier::Rule, GeneratorScheme::Entropy, LabelMode::Rule);
        s.scale = Scale::Batch;
        s.roles = vec![Role::Policy, Role::Generator];
        let both = compute(&s, 1, &tasks, &gens, &attempts, &[], &[]);
        assert!(row(&both, "t1-g").train && row(&both, "t1-g").advantage != 0.0);
        s.roles = vec![Role::Policy];
        let alone = compute(&s, 1, &tasks, &gens, &attempts, &[], &[]);
        for a in &attempts {
            let id = &a.trajectory_id;
            assert_eq!(row(&both, id).advantage, row(&alone, id).advantage, "{id}");
        }
        // And the policy's scale is the spread of its 8 rewards (3 of 8 right).
        let std = (3.0f64 / 8.0 * 5.0 / 8.0).sqrt();
        let want = (1.0 - 0.5) / (std + crate::rl::advantages::EPS);
        assert!((f64::from(row(&alone, "t1-p0").advantage) - want).abs() < 1e-5);
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
        assert_eq!(c.unparsable["policy"], 1);
    }

    /// Search-R1's format term: under the rule, the wrong answer earns 0.2 over the attempt
    /// with no answer and the one that answers with the question, the correct one exactly 1,
    /// and the reward column stays the verdict.
    #[test]
    fn answered_score_puts_a_wrong_answer_above_no_answer() {
        let tasks = vec![task("t1", "Who wrote Dune, the novel?", "Frank Herbert")];
        let answers = [
            Some("Frank Herbert"),
            Some("Asimov"),
            None,
            Some("Who wrote Dune, the novel?"),
        ];
        let attempts: Vec<TrajectoryRow> = answers
            .iter()
            .enumerate()
            .map(|(k, a)| traj(&format!("t1-p{k}"), "t1", "policy", *a))
            .collect();
        let s = Settings {
            answered: 0.2,
            ..settings(Verifier::Rule, GeneratorScheme::Entropy, LabelMode::Rule)
        };
        let c = compute(&s, 1, &tasks, &[], &attempts, &[], &[]);
        let totals: Vec<f32> = (0..4).map(|k| row(&c, &format!("t1-p{k}")).total).collect();
        assert_eq!(totals, vec![1.0, 0.2, 0.0, 0.0]);
        assert_eq!(row(&c, "t1-p1").reward, 0.0);
        assert!((row(&c, "t1-p1").format_bonus - 0.2).abs() < 1e-7);
        let adv = |k: usize| row(&c, &format!("t1-p{k}")).advantage;
        assert!(adv(0) > adv(1) && adv(1) > adv(2) && adv(2) == adv(3));
    }

    /// `grounded_answers`: the judge passes every attempt, but the two misspelt answers are in
    /// none of the results their attempts read, so they are wrong and the summary counts them;
    /// the one that copied the passage stays right. Without the check all three are right. The
    /// judge's `self` labels on the two say wrong; the third, judged once, has none.
    /// `grounded_answers` belongs to the label-free verifiers: with the rule it is refused.
    #[test]
    fn grounded_answers_under_the_rule_verifier_is_refused() {
        let with = |verifier: &str| {
            let mut p = crate::params::resolve("reward", &RewardStage.params(), None, &[]).unwrap();
            p.insert("grounded_answers".to_string(), true.into());
            p.insert("verifier".to_string(), verifier.into());
            RewardStage.check(&p).map_err(|e| e.to_string())
        };
        assert!(with("grm").is_ok());
        assert!(with("majority").is_ok());
        let err = with("rule").unwrap_err();
        assert!(err.contains("reward.grounded_answers"), "{err}");
    }

    #[test]
    fn grounded_answers_score_an_answer_the_attempt_did_not_read_wrong() {
        let tasks = vec![task(
            "t1",
            "Which genus has more than 1,000 species?",
            "Impatiens",
        )];
        let read = "<search>genus</search>\n\n<information>Doc 1 (Title: Impatiens) Impatiens \
                    is a genus</information>\n\n";
        let attempts: Vec<TrajectoryRow> = ["Ipatiens", "Impatien", "Impatiens"]
            .iter()
            .enumerate()
            .map(|(k, a)| TrajectoryRow {
                text: format!("{read}<answer>{a}</answer>"),
                searches: 1,
                ..traj(&format!("t1-p{k}"), "t1", "policy", Some(a))
            })
            .collect();
        let judgments: Vec<JudgmentRow> = attempts
            .iter()
            .map(|a| JudgmentRow {
                candidate_answer: a.answer.clone(),
                ..judgment(&a.trajectory_id, "t1", "policy", "correct", 0)
            })
            .collect();
        let judge_runs = runs_of(&judgments);
        let off = settings(
            Verifier::Grm,
            GeneratorScheme::Entropy,
            LabelMode::SelfVerdict,
        );
        let rewards = |s: &Settings| {
            let c = compute(s, 1, &tasks, &[], &attempts, &judgments, &judge_runs);
            let r: Vec<f32> = (0..3)
                .map(|k| row(&c, &format!("t1-p{k}")).reward)
                .collect();
            let labels: Vec<Option<String>> = (0..3)
                .map(|k| row(&c, &format!("t1-p{k}-j0")).label.clone())
                .collect();
            (r, labels, c.unread_answers, c.summary())
        };
        let (r, labels, unread, summary) = rewards(&off);
        assert_eq!((r, unread), (vec![1.0, 1.0, 1.0], 0));
        assert_eq!(labels, vec![None, None, None]);
        assert!(!summary.contains("results they read"));
        let on = Settings {
            grounded: true,
            ..off
        };
        let (r, labels, unread, summary) = rewards(&on);
        assert_eq!((r, unread), (vec![0.0, 0.0, 1.0], 2));
        let wrong = Some("wrong".to_string());
        assert_eq!(labels, vec![wrong.clone(), wrong, None]);
        assert!(summary.contains("2 attempts passed with an answer in none of the results"));
    }
}
