//! Stage `judge`: the Generative Reward Model judges every policy attempt (with the task's
//! reference shown when `show_reference`, the default) and, from `real_from_round` on,
//! `real_items` labelled verification pairs (a gold answer and a plausible wrong one) whose
//! labels are known: the late injection of real data (SPEC §2). The generator's own answers are
//! judged before any rollout, by `selfcheck`. `show_reference` is also what `eval` follows when
//! it measures the GRM (its `grm_reference = "judge"`), so the GRM is measured on the task
//! it is trained on.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::agent::{
    Agent, Request, Role, TrajectoryIds, judge_checkpoint_upstream, judge_model_spec,
    sampling_specs, search_upstream, tool_format,
};
use super::kit::{VERIFICATION, dev_trains_grm, tasks, trajectories};
use super::{Stage, StageContext, StageOutput, Upstream};
use crate::error::{Error, Result};
use crate::model::sample::seq_seed;
use crate::params::{ParamSpec, Params, ParamsExt};
use crate::rl::metrics::exact_match;
use crate::roles::grm;
use crate::seed::stable_u64;
use crate::shards::rows::{JudgmentRow, QaRow, TaskRow, TrajectoryRow};
use crate::shards::{ShardKind, read_rows, shard_path, write_rows};

pub(crate) struct JudgeStage;

/// The judge's own settings (sampling and search are the agent's), read when the pipeline loads.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// Show the generator's reference answer with each attempt.
    show_reference: bool,
    /// Labelled verification questions judged per round (a gold and a wrong answer each).
    real_items: usize,
    /// The first round that judges them.
    real_from_round: u32,
    /// Verdicts sampled per policy attempt, each with its own seed.
    samples: u32,
}

impl Settings {
    fn from_params(params: &Params) -> Result<Settings> {
        let real_from_round = u32::try_from(params.u64("real_from_round")).map_err(|_| {
            Error::param(
                "judge.real_from_round",
                format!("{} is not a round number", params.u64("real_from_round")),
            )
        })?;
        // At least 1 is the spec's range, checked when params resolve.
        let samples = u32::try_from(params.u64("samples")).map_err(|_| {
            Error::param(
                "judge.samples",
                format!(
                    "{} verdicts per attempt is more than {}",
                    params.u64("samples"),
                    u32::MAX
                ),
            )
        })?;
        Ok(Settings {
            show_reference: params.bool("show_reference"),
            real_items: params.u64("real_items") as usize,
            real_from_round,
            samples,
        })
    }
}

/// One answer to judge.
struct Item {
    task_id: String,
    target: &'static str,
    target_trajectory_id: String,
    sample: u32,
    question: String,
    reference: String,
    candidate: Option<String>,
    show_reference: bool,
}

impl Stage for JudgeStage {
    /// 2: guided decoding completes a closing tag the budget cuts.
    /// 3: `searches` counts results read; a call the last turn leaves unanswered is not one;
    ///    a call close sharing its token with the next character (`</search><`) still calls;
    ///    a search result that would overflow the context ends the sequence unappended;
    ///    a verification pair's wrong answer is one the rule calls wrong (normalised);
    ///    SQuAD normalisation deletes punctuation instead of spacing it ("U.S." = "US").
    /// 4: verification pairs come from the half of dev that eval never scores (`dev_trains_grm`);
    ///    a sampled sequence whose every token was its truncated distribution's only one keeps
    ///    behaviour log-probs of 0 (they were the scored ones, as for a greedy pick).
    /// 5: a decoding step's attention (one query row) rounds as the few-row kernels do, not `gemm`.
    fn version(&self) -> u32 {
        5
    }

    fn splits(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "judge"
    }

    fn check(&self, params: &Params) -> Result<()> {
        super::agent::check_agent_params(params, "judge")?;
        Settings::from_params(params).map(|_| ())
    }

    fn about(&self) -> &'static str {
        "the GRM judges every policy attempt and injected verification data"
    }

    fn qa_splits_read(&self, params: &Params) -> Vec<(String, String)> {
        if Settings::from_params(params).is_ok_and(|s| s.real_items > 0) {
            vec![("judge.real_items".into(), "dev".into())]
        } else {
            Vec::new()
        }
    }

    fn params(&self) -> Vec<ParamSpec> {
        let mut specs = vec![
            ParamSpec::new(
                "show_reference",
                true,
                "show the generator's reference answer to the GRM when it judges an attempt",
            ),
            ParamSpec::new(
                "real_items",
                0,
                "labelled verification questions judged per round (each with a gold and a wrong answer), from the half of dev eval never scores",
            ),
            ParamSpec::new(
                "real_from_round",
                1,
                "first round that judges verification items",
            ),
            ParamSpec::new(
                "samples",
                1,
                "verdicts the GRM samples per policy attempt, each with its own seed: the policy's reward takes their majority (a tie is wrong) and the GRM's `self` labels have other verdicts on the same answer to learn from (the seed samples its judge's verdicts in groups; with 1, an answer has another verdict only when another attempt gave it)",
            )
            .at_least(1.0),
            judge_model_spec(),
        ];
        specs.extend(sampling_specs(256, 2, 1.0));
        specs
    }

    fn upstream(&self, params: &Params) -> Vec<Upstream> {
        let mut up = vec![Upstream::needs("generate"), Upstream::needs("rollout")];
        up.extend(search_upstream(params));
        up.extend(judge_checkpoint_upstream(params));
        if Settings::from_params(params).is_ok_and(|s| s.real_items > 0) {
            up.push(Upstream::needs("qa"));
        }
        up.dedup();
        up
    }

    fn external_inputs(&self, _params: &Params) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }

    fn run(&self, ctx: &StageContext) -> Result<StageOutput> {
        let task_rows = tasks(ctx.input_files(Upstream::needs("generate"))?)?;
        let by_id: BTreeMap<&str, &TaskRow> =
            task_rows.iter().map(|t| (t.task_id.as_str(), t)).collect();
        let attempts = trajectories(ctx.input_files(Upstream::needs("rollout"))?)?;
        let settings = Settings::from_params(ctx.params)?;
        let (mut items, orphans) = attempt_items(&attempts, &by_id, &settings);
        items.extend(verification_items(ctx, &settings)?);

        let mut requests = Vec::new();
        let tools = tool_format(ctx.params, "judge")?;
        let mut owned = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if !ctx.shard.owns(i) {
                continue;
            }
            owned.push(item);
            if let Some(candidate) = &item.candidate {
                let reference = item.show_reference.then_some(item.reference.as_str());
                let seed = seq_seed(
                    ctx.seed,
                    stable_u64(&[&item.target_trajectory_id]),
                    u64::from(item.sample),
                );
                requests.push(Request {
                    messages: grm::prompt(&item.question, candidate, reference, tools),
                    seed,
                });
            }
        }
        // Nothing to judge (every task failed the self-check, say): no model to load.
        let (completions, spent) = if requests.is_empty() {
            (Vec::new(), None)
        } else {
            let agent = Agent::load(ctx, "judge")?;
            let completions = agent.run(&requests, "judge", Role::Grm)?;
            (completions, Some(agent.spent()))
        };
        let mut completions = completions.into_iter().zip(requests.iter().map(|r| r.seed));
        let mut judgments = Vec::with_capacity(owned.len());
        let mut grm_rows = Vec::new();
        let mut unjudged = 0;
        let mut unparsable = 0;
        let mut verdicts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for item in owned {
            let judgment_id = format!("{}-j{}", item.target_trajectory_id, item.sample);
            let (verdict, parsed, parse_error, judge_trajectory_id) = match &item.candidate {
                None => {
                    unjudged += 1;
                    (
                        grm::Verdict::Wrong,
                        false,
                        Some("the attempt has no answer to judge".to_string()),
                        String::new(),
                    )
                }
                Some(_) => {
                    let (c, seed) = completions.next().expect("one completion per request");
                    let out = grm::parse(&c.out.text);
                    unparsable += usize::from(!out.parsed);
                    grm_rows.push(c.row(
                        TrajectoryIds {
                            trajectory_id: judgment_id.clone(),
                            task_id: item.task_id.clone(),
                            role: Role::Grm.as_str(),
                            attempt: item.sample,
                            seed,
                        },
                        match &out.error {
                            None => Ok(out.verdict.name().to_string()),
                            Some(e) => Err(e.clone()),
                        },
                    ));
                    (out.verdict, out.parsed, out.error, judgment_id.clone())
                }
            };
            let e = verdicts.entry(item.target).or_default();
            e.0 += usize::from(verdict == grm::Verdict::Correct);
            e.1 += 1;
            judgments.push(JudgmentRow {
                judgment_id,
                task_id: item.task_id.clone(),
                target_trajectory_id: item.target_trajectory_id.clone(),
                target: item.target.to_string(),
                sample: item.sample,
                question: item.question.clone(),
                reference_answer: item.reference.clone(),
                candidate_answer: item.candidate.clone(),
                verdict: verdict.name().to_string(),
                parsed,
                parse_error,
                judge_trajectory_id,
            });
        }
        let judgments_path = shard_path(&ctx.out_dir, ShardKind::Judgments, ctx.shard.index);
        let traj_path = shard_path(&ctx.out_dir, ShardKind::Trajectories, ctx.shard.index);
        let written = write_rows(&judgments_path, &judgments)?;
        write_rows(&traj_path, &grm_rows)?;
        let balance: Vec<String> = verdicts
            .iter()
            .map(|(t, (c, n))| format!("{t} {c}/{n} correct"))
            .collect();
        let mut summary = format!(
            "{written} judgments ({}); {unparsable} unparsable verdicts, {unjudged} attempts without an answer",
            balance.join(", ")
        );
        if orphans > 0 {
            summary.push_str(&format!(
                "; {orphans} attempts without a matching task skipped"
            ));
        }
        if let Some(spent) = spent {
            summary.push_str(&format!("; {spent}"));
        }
        Ok(crate::stages::StageOutput {
            files: vec![judgments_path, traj_path],
            summary,
        })
    }
}

/// The policy attempts to judge, `samples` verdicts each (an attempt without an answer once: it
/// is judged wrong without sampling), and how many attempts have no task.
fn attempt_items(
    attempts: &[TrajectoryRow],
    tasks: &BTreeMap<&str, &TaskRow>,
    settings: &Settings,
) -> (Vec<Item>, usize) {
    let mut items = Vec::new();
    let mut orphans = 0;
    for a in attempts {
        let Some(task) = tasks.get(a.task_id.as_str()) else {
            orphans += 1;
            continue;
        };
        let samples = if a.answer.is_some() {
            settings.samples
        } else {
            1
        };
        items.extend((0..samples).map(|sample| Item {
            task_id: task.task_id.clone(),
            target: "policy",
            target_trajectory_id: a.trajectory_id.clone(),
            sample,
            question: task.question.clone(),
            reference: task.answer.clone(),
            candidate: a.answer.clone(),
            show_reference: settings.show_reference,
        }));
    }
    (items, orphans)
}

/// Labelled verification pairs for this round: dev questions (of the half eval does not score)
/// with their gold answer and with the gold answer of another question of the same sample
/// (plausible, and wrong).
fn verification_items(ctx: &StageContext, settings: &Settings) -> Result<Vec<Item>> {
    let n = settings.real_items;
    if n == 0 || ctx.round < settings.real_from_round {
        return Ok(Vec::new());
    }
    let qa = read_rows::<QaRow>(ctx.input_files(Upstream::needs("qa"))?)?;
    Ok(verification_pairs(qa, n, ctx.seed, ctx.round))
}

/// [`verification_items`] from the run's questions: `n` questions of dev's training half,
/// ordered by `seed`.
fn verification_pairs(qa: Vec<QaRow>, n: usize, seed: u64, round: u32) -> Vec<Item> {
    let mut qa: Vec<QaRow> = qa
        .into_iter()
        .filter(|q| q.split == "dev" && !q.answers.is_empty() && dev_trains_grm(q))
        .collect();
    qa.sort_by_key(|q| stable_u64(&[&seed.to_string(), &q.id]));
    qa.truncate(n.saturating_add(1));
    let mut items = Vec::new();
    for i in 0..qa.len().saturating_sub(1) {
        let (q, other) = (&qa[i], &qa[i + 1]);
        let wrong = &other.answers[0];
        let pairs = [("gold", q.answers[0].clone()), ("wrong", wrong.clone())];
        for (kind, candidate) in pairs {
            // Not wrong when the rule calls it right ("Beatles" for "The Beatles"), as the
            // verification labels are.
            if kind == "wrong" && exact_match(wrong, &q.answers) > 0.0 {
                continue;
            }
            items.push(Item {
                task_id: q.id.clone(),
                target: VERIFICATION,
                target_trajectory_id: format!("r{round:03}-v{i:04}-{kind}"),
                sample: 0,
                question: q.question.clone(),
                reference: q.answers[0].clone(),
                candidate: Some(candidate),
                show_reference: false,
            });
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::rows::fixtures::{task, trajectory};

    fn row(id: &str, split: &str, answer: &str) -> QaRow {
        QaRow {
            id: id.into(),
            question: format!("Question {id}?"),
            answers: vec![answer.into()],
            split: split.into(),
            source: "wiki".into(),
            source_doc_id: Some(format!("article of {id}")),
        }
    }

    /// `judge.samples = 3`: an answered attempt gets three items with samples 0, 1, 2 (the
    /// sample number goes into the seed and the judgment id: the integration test
    /// `sampled_verdicts_run_a_round_grouped_by_answer` checks both); one without an answer gets
    /// one; an attempt without a task gets none and is counted.
    #[test]
    fn every_answered_attempt_is_judged_samples_times() {
        let task = task("t1", "Q?", "Paris");
        let attempts = [
            trajectory("t1-p0", "t1", "policy", Some("Paris")),
            trajectory("t1-p1", "t1", "policy", None),
            trajectory("t9-p0", "t9", "policy", Some("Rome")),
        ];
        let tasks = BTreeMap::from([("t1", &task)]);
        let settings = Settings {
            show_reference: true,
            real_items: 0,
            real_from_round: 1,
            samples: 3,
        };
        let (items, orphans) = attempt_items(&attempts, &tasks, &settings);
        let got: Vec<(&str, u32, bool)> = items
            .iter()
            .map(|i| {
                (
                    i.target_trajectory_id.as_str(),
                    i.sample,
                    i.candidate.is_some(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("t1-p0", 0, true),
                ("t1-p0", 1, true),
                ("t1-p0", 2, true),
                ("t1-p1", 0, false)
            ]
        );
        assert!(
            items
                .iter()
                .all(|i| i.show_reference && i.reference == "Paris")
        );
        assert_eq!(orphans, 1);
    }

    /// Injected verification pairs: dev questions of the half eval never scores, each with its
    /// gold (labelled right) and the next question's gold (labelled wrong) unless the rule
    /// calls that one right too.
    #[test]
    fn verification_pairs_read_the_training_half_of_dev_and_wrong_answers_are_wrong() {
        let mut qa: Vec<QaRow> = (0..200)
            .map(|i| {
                row(
                    &format!("q{i}"),
                    if i % 5 == 0 { "train" } else { "dev" },
                    &format!("answer {i}"),
                )
            })
            .collect();
        let items = verification_pairs(qa.clone(), 20, 9, 3);
        assert_eq!(items.len(), 40);
        let by_id: BTreeMap<&str, &QaRow> = qa.iter().map(|q| (q.id.as_str(), q)).collect();
        for item in &items {
            let q = by_id[item.task_id.as_str()];
            assert!(q.split == "dev" && dev_trains_grm(q), "{}", q.id);
            let gold = item.target_trajectory_id.ends_with("-gold");
            assert_eq!(
                item.candidate.as_deref() == Some(q.answers[0].as_str()),
                gold
            );
            assert!(item.target_trajectory_id.starts_with("r003-v"));
            assert_eq!(item.target, VERIFICATION);
        }
        // A wrong answer the rule calls right ("Beatles" for "The Beatles") is left out.
        let training: Vec<&mut QaRow> = qa
            .iter_mut()
            .filter(|q| q.split == "dev" && dev_trains_grm(q))
            .collect();
        for q in training {
            q.answers = vec![
                if q.id.len() % 2 == 0 {
                    "The Beatles"
                } else {
                    "Beatles"
                }
                .into(),
            ];
        }
        let items = verification_pairs(qa, 20, 9, 3);
        assert!(
            items
                .iter()
                .all(|i| i.target_trajectory_id.ends_with("-gold"))
        );
        assert_eq!(items.len(), 20);
    }
}
